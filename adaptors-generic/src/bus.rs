//! How the tools find the bus: flags shared by every `thingsbus` subcommand, turned into client
//! and adaptor builders.

use std::net::SocketAddr;
use std::time::Duration;

use thingsbus_adaptor::{Adaptor, AdaptorBuilder};
use thingsbus_client::{Client, ClientBuilder};
use thingsbus_protocol::endpoint::{connect_url, port_plus};
use thingsbus_protocol::keys::{KeyPair, PublicKey};
use thingsbus_protocol::transport::{self, ClientKeys};

/// The directory URL used when neither `--zone` nor `--url` is given: a broker on this machine.
pub const LOCAL_DIRECTORY_URL: &str = "tcp://127.0.0.1:7954";

/// Where the bus is. With neither `--zone` nor `--url`, a broker on this machine
/// (`tcp://127.0.0.1:7954`).
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// Zone whose `_thingsbus._tcp` SRV record names the broker, e.g. example.org.
    #[arg(
        short,
        long,
        global = true,
        env = "THINGSBUS_ZONE",
        conflicts_with = "url"
    )]
    pub zone: Option<String>,

    /// Broker directory URL, e.g. tcp://broker:7954 (input is port+1, snapshots port+2).
    #[arg(short, long, global = true, env = "THINGSBUS_URL")]
    pub url: Option<String>,

    /// Broker input URL, when it is not the directory port + 1.
    #[arg(
        long,
        global = true,
        env = "THINGSBUS_INPUT_URL",
        conflicts_with = "zone"
    )]
    pub input_url: Option<String>,

    /// Snapshot request URL, when it is not the directory port + 2.
    #[arg(
        long,
        global = true,
        env = "THINGSBUS_SNAPSHOT_URL",
        conflicts_with = "zone"
    )]
    pub snapshot_url: Option<String>,

    /// Command endpoint URL, when it is not the directory port + 3.
    #[arg(
        long,
        global = true,
        env = "THINGSBUS_COMMAND_URL",
        conflicts_with = "zone"
    )]
    pub command_url: Option<String>,

    /// DNS server to ask for the SRV record instead of the system's, as IP:PORT.
    #[arg(long, global = true, env = "THINGSBUS_NAMESERVER")]
    pub nameserver: Option<SocketAddr>,

    /// The broker's CURVE public key (40 Z85 characters): every connection to the broker is
    /// then encrypted and the broker authenticated. Without --key-file, a new key pair is made
    /// for this run (a broker that checks client keys will not know it). With --zone it is not
    /// needed when the zone publishes the key (TXT "curve=KEY" beside the SRV record); given,
    /// it wins over DNS.
    #[arg(long, global = true, env = "THINGSBUS_SERVER_KEY", value_name = "Z85", value_parser = server_key)]
    pub server_key: Option<PublicKey>,

    /// File with this client's CURVE secret key (as `thingsbus keygen --secret-file` writes
    /// it); needs --server-key, or a zone that publishes the broker's key.
    #[arg(long, global = true, env = "THINGSBUS_KEY_FILE", value_name = "PATH", value_parser = key_file)]
    pub key_file: Option<KeyPair>,
}

/// Parses `--server-key`: a build without CURVE refuses it.
///
/// # Errors
/// A message naming what is wrong.
pub fn server_key(text: &str) -> Result<PublicKey, String> {
    transport::require_curve().map_err(|e| e.to_string())?;
    PublicKey::from_z85(text.trim()).map_err(|e| e.to_string())
}

/// Reads `--key-file`: a build without CURVE refuses it.
///
/// # Errors
/// A message naming what is wrong.
pub fn key_file(path: &str) -> Result<KeyPair, String> {
    transport::require_curve().map_err(|e| e.to_string())?;
    KeyPair::read_file(std::path::Path::new(path)).map_err(|e| e.to_string())
}

impl BusArgs {
    /// The directory URL in force when no zone is given.
    pub fn directory_url(&self) -> &str {
        self.url.as_deref().unwrap_or(LOCAL_DIRECTORY_URL)
    }

    /// What the user pointed at, for messages: `zone example.org` or the directory URL.
    pub fn describe(&self) -> String {
        match &self.zone {
            Some(z) => format!("zone {z}"),
            None => self.directory_url().to_owned(),
        }
    }

    /// The CURVE keys given (`--server-key`, `--key-file`), with a new key pair of this client's
    /// when no key file was given.
    ///
    /// # Panics
    /// Never in practice: making a key pair fails only without CURVE, which parsing
    /// `--server-key` already refused.
    pub fn curve(&self) -> Option<ClientKeys> {
        let server = self.server_key?;
        Some(
            ClientKeys::new(server, self.key_file.clone())
                .expect("CURVE is there: --server-key was accepted"),
        )
    }

    /// A client builder for the bus (its discovery bounded by `timeout`).
    pub fn client(&self, timeout: Duration) -> ClientBuilder {
        let mut b = Client::builder().discovery_timeout(timeout);
        if let Some(keys) = self.curve() {
            b = b.curve(keys);
        } else if let Some(own) = &self.key_file {
            b = b.key_pair(own.clone());
        }
        if let Some(ns) = self.nameserver {
            b = b.nameserver(ns);
        }
        match &self.zone {
            Some(z) => b.zone(z),
            None => {
                b = b.url(self.directory_url());
                if let Some(c) = &self.command_url {
                    b = b.command_url(c);
                }
                match &self.snapshot_url {
                    Some(s) => b.snapshot_url(s),
                    None => b,
                }
            }
        }
    }

    /// An adaptor builder publishing as `ns`, over ZMQ or (`udp`) MessagePack datagrams.
    ///
    /// # Errors
    /// A directory URL whose port cannot be moved to the input port.
    pub fn adaptor(
        &self,
        ns: &str,
        udp: bool,
        timeout: Duration,
    ) -> anyhow::Result<AdaptorBuilder> {
        let mut b = Adaptor::builder(ns).discovery_timeout(timeout);
        if let Some(keys) = self.curve() {
            b = b.curve(keys);
        } else if let Some(own) = &self.key_file {
            b = b.key_pair(own.clone());
        }
        if let Some(n) = self.nameserver {
            b = b.nameserver(n);
        }
        if let Some(z) = &self.zone {
            return Ok(b.zone(z).prefer_udp(udp));
        }
        let input = match &self.input_url {
            Some(u) => u.clone(),
            None => port_plus(self.directory_url(), 1).ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot derive the input URL from {:?}: expected tcp://HOST:PORT (or give --input-url)",
                    self.directory_url()
                )
            })?,
        };
        if let Some(c) = &self.command_url {
            b = b.command_url(c);
        }
        Ok(if udp {
            b.udp(&udp_addr(&input)?)
        } else {
            b.url(&input)
        })
    }
}

/// `tcp://host:P` (ZMQ input URL) → `host:P`, the UDP address of the same input port. A `*`
/// host (0.2.x service files) means this machine.
///
/// # Errors
/// A URL that is not `tcp://HOST:PORT`.
pub fn udp_addr(input_url: &str) -> anyhow::Result<String> {
    let (url, _) = connect_url(input_url);
    let rest = url.strip_prefix("tcp://").unwrap_or(&url);
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(rest.to_owned())
        }
        _ => anyhow::bail!("{input_url:?} is not tcp://HOST:PORT, so it names no UDP address"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_udp_addresses_follow_the_p_plus_one_rule() {
        assert_eq!(
            port_plus("tcp://h:7954", 1).as_deref(),
            Some("tcp://h:7955")
        );
        assert_eq!(
            port_plus("tcp://[::1]:7954", 2).as_deref(),
            Some("tcp://[::1]:7956")
        );
        assert_eq!(port_plus("tcp://h:65535", 1), None);
        assert_eq!(port_plus("tcp://h", 1), None);
        assert_eq!(udp_addr("tcp://h:7955").unwrap(), "h:7955");
        assert_eq!(udp_addr("tcp://*:7955").unwrap(), "127.0.0.1:7955");
        assert!(udp_addr("tcp://h").is_err());
        assert!(udp_addr("ipc:///tmp/x").is_err());
    }
}
