//! `mqtts://`: the TLS configuration the bridge gives rumqttc, built here from PEM files with
//! rustls and its `ring` provider, and what a failed handshake means in words a user can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The PEM files of an `mqtts://` connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The certificate authorities trusted to sign the MQTT broker's certificate
    /// (`--mqtt-ca-file`); without it, the system's.
    pub ca_file: Option<PathBuf>,
    /// The bridge's own certificate, for brokers that require one (`--mqtt-cert`).
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (`--mqtt-key`).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file was given.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// The rustls client configuration for `files`.
///
/// # Errors
/// A file that cannot be read or holds no certificate (or no key), a certificate without its
/// key, or no trusted authority at all.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<ClientConfig> {
    let roots = match &files.ca_file {
        Some(path) => ca_roots(path)?,
        None => system_roots()?,
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("the TLS provider offers no protocol version")?
            .with_root_certificates(roots);
    match (&files.cert, &files.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "--mqtt-cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow::anyhow!(
                    "--mqtt-key {}: no usable private key (PEM, PKCS#8, PKCS#1 or SEC1): {e}",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "--mqtt-cert {} and --mqtt-key: the key does not fit the certificate",
                    cert.display()
                )
            })
        }
        _ => anyhow::bail!("--mqtt-cert and --mqtt-key go together: give both or neither"),
    }
}

fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certs)
}

fn ca_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "--mqtt-ca-file")? {
        roots.add(cert).with_context(|| {
            format!(
                "--mqtt-ca-file {}: a certificate is not usable",
                path.display()
            )
        })?;
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none installed".to_owned(), ToString::to_string);
        anyhow::bail!(
            "mqtts:// without --mqtt-ca-file trusts the system's certificate authorities, and none \
             could be loaded ({why}): give --mqtt-ca-file with the CA that signed the MQTT broker"
        );
    }
    Ok(roots)
}

/// What to tell the user about a connection error, beyond the error itself: `None` when it is
/// not about TLS.
pub fn hint(error: &rumqttc::ConnectionError) -> Option<&'static str> {
    // rumqttc wraps what rustls said: directly during the handshake, inside an io::Error (as
    // tokio-rustls reports it) inside its own errors after it. The chain is walked; an
    // io::Error's inner error is looked at by hand, since its `source` skips it.
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return hint_for(tls);
        }
        next = e.source();
    }
    None
}

fn hint_for(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, Error};
    Some(match error {
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => {
            "the MQTT broker's certificate is not signed by an authority this bridge trusts: \
             give --mqtt-ca-file with the CA that signed it"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the MQTT broker's certificate is not made out to the host in --mqtt: use the name \
             (or address) the certificate names"
        }
        Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "the MQTT broker's certificate is expired or not valid yet (check both clocks)",
        Error::InvalidCertificate(_) => "the MQTT broker's certificate was refused",
        Error::AlertReceived(Alert::CertificateRequired | Alert::HandshakeFailure) => {
            "the MQTT broker wants a client certificate: give --mqtt-cert and --mqtt-key"
        }
        Error::AlertReceived(
            Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateUnknown
            | Alert::AccessDenied,
        ) => {
            "the MQTT broker refused this bridge's certificate (--mqtt-cert): it is not signed \
             by a CA the broker trusts, or not for client use"
        }
        Error::AlertReceived(_) => "the MQTT broker ended the TLS handshake",
        Error::InvalidMessage(_) | Error::InappropriateHandshakeMessage { .. } => {
            "the MQTT broker does not speak TLS on this port (mqtts:// needs a TLS listener; \
             for a plain one use mqtt://)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, Error};

    #[test]
    fn each_handshake_failure_says_what_to_do() {
        let says = |e: Error, needle: &str| {
            let h = hint_for(&e).unwrap_or_else(|| panic!("no hint for {e:?}"));
            assert!(h.contains(needle), "{e:?}: {h}");
        };
        says(
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "--mqtt-ca-file",
        );
        says(
            Error::InvalidCertificate(CertificateError::NotValidForName),
            "not made out to the host",
        );
        says(
            Error::InvalidCertificate(CertificateError::Expired),
            "expired",
        );
        says(
            Error::AlertReceived(AlertDescription::CertificateRequired),
            "--mqtt-cert and --mqtt-key",
        );
        says(
            Error::AlertReceived(AlertDescription::UnknownCA),
            "refused this bridge's certificate",
        );
        says(
            Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            "does not speak TLS",
        );
        assert_eq!(hint_for(&Error::HandshakeNotComplete), None);
    }

    #[test]
    fn the_hint_is_found_inside_io_errors_too() {
        // tokio-rustls reports an alert that comes after the handshake as an io::Error.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let h = hint(&rumqttc::ConnectionError::Io(io));
        assert!(h.is_some_and(|h| h.contains("client certificate")), "{h:?}");
        // As Mosquitto's refusal really arrives: while reading the CONNACK.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let state = rumqttc::StateError::Deserialization(rumqttc::Error::Io(io));
        let h = hint(&rumqttc::ConnectionError::MqttState(state));
        assert!(h.is_some_and(|h| h.contains("client certificate")), "{h:?}");
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(hint(&rumqttc::ConnectionError::Io(plain)), None);
    }

    #[test]
    fn files_that_are_not_pem_or_half_a_pair_are_refused_with_the_flag_named() {
        let dir = std::env::temp_dir().join(format!("thingsbus-mqtt-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let err = |files: TlsFiles| {
            client_config(&files)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
                .expect_err("refused")
        };
        let e = err(TlsFiles {
            ca_file: Some(junk.clone()),
            ..TlsFiles::default()
        });
        assert!(
            e.contains("--mqtt-ca-file") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(TlsFiles {
            ca_file: Some(dir.join("missing.pem")),
            ..TlsFiles::default()
        });
        assert!(
            e.contains("--mqtt-ca-file") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(TlsFiles {
            cert: Some(junk.clone()),
            ..TlsFiles::default()
        });
        assert!(e.contains("go together"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
