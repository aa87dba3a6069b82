//! The agent's HTTP and HTTPS calls (`http` polls, `http` serves, webhooks): one ureq agent
//! for the whole file, so connections are reused, with TLS from rustls trusting the system's
//! certificate authorities and, with `ca_file`, the ones in that PEM file too (a home server's
//! own CA or a self-signed certificate).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest reply body read (a poll or a served call); a longer one is an error, not a crash.
const REPLY_BYTES: u64 = 1024 * 1024;

/// Makes HTTP(S) calls; cheap to clone.
#[derive(Clone)]
pub struct Web(ureq::Agent);

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Web")
    }
}

impl Web {
    /// Trusting the system's authorities and those in `ca_file`.
    ///
    /// # Errors
    /// A `ca_file` that cannot be read or holds no usable certificate; no authority at all.
    pub fn new(ca_file: Option<&Path>) -> Result<Web, String> {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(system.certs);
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "ca_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                    path.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "ca_file {}: a certificate is not usable: {e}",
                        path.display()
                    )
                })?;
            }
        }
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Web(ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .build()))
    }

    /// GET `url`: the reply's body as text.
    ///
    /// # Errors
    /// What failed, naming the URL: the connection, TLS, a status of 400 or more, a reply that
    /// is not text or is over 1 MiB.
    pub fn get(&self, url: &str, timeout: Duration) -> Result<String, String> {
        let reply = self
            .0
            .get(url)
            .timeout(timeout)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        body(reply).map_err(|e| format!("GET {url}: {e}"))
    }

    /// POST `data` as JSON to `url`: the status and the body as text.
    ///
    /// # Errors
    /// As [`Web::get`].
    pub fn post_json(
        &self,
        url: &str,
        data: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let reply = self
            .0
            .post(url)
            .timeout(timeout)
            .send_json(data)
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = reply.status();
        Ok((status, body(reply).map_err(|e| format!("POST {url}: {e}"))?))
    }
}

fn body(reply: ureq::Response) -> Result<String, String> {
    use std::io::Read as _;
    let mut text = String::new();
    reply
        .into_reader()
        .take(REPLY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the reply: {e}"))?;
    if text.len() as u64 > REPLY_BYTES {
        return Err(format!("the reply is over {REPLY_BYTES} bytes"));
    }
    Ok(text)
}
