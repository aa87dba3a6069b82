//! Finding brokers through the DNS SRV record `_thingsbus._tcp.<zone>` (RFC 2782).
//!
//! The record's port is the directory port P; the input (ZMQ and UDP) is P + 1 and the snapshot
//! endpoint P + 2.
//!
//! A broker that speaks CURVE can publish its public key beside the SRV record, in a TXT record
//! on the same name holding `curve=<40-character Z85 key>`, so that a zone stays the only thing a
//! client needs ([`BrokerAddr::server_key`]). The brokers of one zone share that key. DNS without
//! DNSSEC can be forged: a key given by hand (`--server-key`) always wins over the TXT record.
//!
//! ```no_run
//! # async fn demo() -> Result<(), thingsbus_protocol::discovery::DiscoveryError> {
//! use thingsbus_protocol::discovery::Discovery;
//! let brokers = Discovery::new().brokers("example.org").await?;
//! println!("clients connect to {}", brokers[0].directory_url());
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;

/// The service label in front of the zone.
pub const SRV_PREFIX: &str = "_thingsbus._tcp";

/// What a TXT string on the SRV name starts with when it holds the brokers' CURVE public key.
pub const TXT_CURVE_KEY: &str = "curve=";

/// The TXT record a zone publishes for brokers whose public key is `z85`, as a zone file line.
pub fn txt_record(zone: &str, z85: &str) -> String {
    format!("{}. TXT \"{TXT_CURVE_KEY}{z85}\"", srv_name(zone))
}

/// One broker found in DNS, in the order it should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name (trailing dot stripped) or IP address.
    pub host: String,
    /// The host's address, when it was resolved through the same name server as the SRV record
    /// (so split-horizon and test name servers work); URLs use it when present.
    pub ip: Option<IpAddr>,
    /// The directory port P.
    pub port: u16,
    /// SRV priority (lower first).
    pub priority: u16,
    /// SRV weight within a priority.
    pub weight: u16,
    /// The broker's CURVE public key in Z85, when the zone publishes one (a TXT record
    /// `curve=<key>` on the SRV name); checked to be 40 Z85 characters.
    pub server_key: Option<String>,
}

impl BrokerAddr {
    /// A broker at `host:port` given by hand (priority and weight 0).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerAddr {
            host: host.into(),
            ip: None,
            port,
            priority: 0,
            weight: 0,
            server_key: None,
        }
    }

    fn url_host(&self) -> String {
        match self.ip {
            Some(IpAddr::V4(ip)) => ip.to_string(),
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            None if self.host.contains(':') && !self.host.starts_with('[') => {
                format!("[{}]", self.host)
            }
            None => self.host.clone(),
        }
    }

    fn port_plus(&self, n: u16) -> u16 {
        self.port.saturating_add(n)
    }

    /// `tcp://host:P`: where clients connect a SUB socket.
    pub fn directory_url(&self) -> String {
        format!("tcp://{}:{}", self.url_host(), self.port)
    }

    /// `tcp://host:P+1`: where adaptors connect a PUB socket.
    pub fn input_url(&self) -> String {
        format!("tcp://{}:{}", self.url_host(), self.port_plus(1))
    }

    /// `host:P+1`: where adaptors send UDP datagrams.
    pub fn udp_addr(&self) -> String {
        format!("{}:{}", self.url_host(), self.port_plus(1))
    }

    /// `tcp://host:P+2`: the snapshot request endpoint.
    pub fn snapshot_url(&self) -> String {
        format!("tcp://{}:{}", self.url_host(), self.port_plus(2))
    }

    /// `tcp://host:P+3`: the command endpoint.
    pub fn command_url(&self) -> String {
        format!("tcp://{}:{}", self.url_host(), self.port_plus(3))
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{}:{} ({ip})", self.host, self.port),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Why no broker could be found.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The zone is not a valid DNS name.
    #[error("invalid zone {zone:?}: {reason}")]
    InvalidZone {
        /// The zone as given.
        zone: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The SRV name does not exist.
    #[error("{name} does not exist (NXDOMAIN from {nameserver}): check the zone, or publish an SRV record there")]
    NxDomain {
        /// The name looked up.
        name: String,
        /// Who answered.
        nameserver: String,
    },
    /// The name exists but has no SRV record.
    #[error("{name} has no SRV record (asked {nameserver}); publish one, e.g. `{name}. SRV 0 0 7954 broker.example.org.`")]
    NoSrv {
        /// The name looked up.
        name: String,
        /// Who answered.
        nameserver: String,
    },
    /// The zone says explicitly that there is no service (a single SRV target of `.`).
    #[error("{name} says there is no thingsbus service here (SRV target \".\")")]
    NoService {
        /// The name looked up.
        name: String,
    },
    /// No answer in time.
    #[error("no answer for {name} from {nameserver} within {timeout:?}")]
    Timeout {
        /// The name looked up.
        name: String,
        /// Who was asked.
        nameserver: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// A TXT record on the SRV name that says `curve=` but holds no usable key, or two
    /// different keys.
    #[error("{name} TXT {text:?}: {reason}; publish one `{TXT_CURVE_KEY}<40-character Z85 public key>` (thingsbus keygen prints it)")]
    BadKey {
        /// The name looked up.
        name: String,
        /// The TXT string.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other resolver failure.
    #[error("looking up {name} via {nameserver} failed: {message}")]
    Resolver {
        /// The name looked up.
        name: String,
        /// Who was asked.
        nameserver: String,
        /// What the resolver said.
        message: String,
    },
}

/// A source of uniform random numbers, injectable so that tests are deterministic.
pub trait RandomSource {
    /// A uniform random number in `0..=max`.
    fn up_to(&mut self, max: u32) -> u32;
}

/// A small deterministic generator (SplitMix64) for tests and reproducible runs.
#[derive(Debug, Clone)]
pub struct SeededRandom(u64);

impl SeededRandom {
    /// Starts from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Seeded from the process's random hasher keys: different in every process.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, RandomState};
        SeededRandom(RandomState::new().hash_one(std::time::SystemTime::now()))
    }
}

impl RandomSource for SeededRandom {
    fn up_to(&mut self, max: u32) -> u32 {
        // The modulo bias over a 64-bit draw is far below anything SRV weights can express.
        (self.next_u64() % (u64::from(max) + 1)) as u32
    }
}

/// Orders SRV records as RFC 2782 says: lowest priority first; within a priority, repeatedly
/// pick a record with probability proportional to its weight (weight-0 records placed first, so
/// they have a small chance when others have weight).
pub fn rfc2782_order(mut records: Vec<BrokerAddr>, rng: &mut impl RandomSource) -> Vec<BrokerAddr> {
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(same);
        let mut unordered: Vec<BrokerAddr> = group.to_vec();
        // Weight 0 at the beginning; stable so the order within is the order given.
        unordered.sort_by_key(|r| r.weight != 0);
        while !unordered.is_empty() {
            let sum: u32 = unordered.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.up_to(sum);
            let mut running = 0u32;
            let idx = unordered
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(unordered.remove(idx));
        }
        rest = tail;
    }
    ordered
}

/// How to look brokers up: the system's resolver, or one given name server.
#[derive(Debug, Clone)]
pub struct Discovery {
    nameserver: Option<SocketAddr>,
    timeout: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            nameserver: None,
            timeout: Duration::from_secs(3),
        }
    }
}

impl Discovery {
    /// The system's resolver (`/etc/resolv.conf`), 3 s timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask this name server (`IP:PORT`) instead of the system's.
    #[must_use]
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// Give up on a name server after this long.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn nameserver_label(&self) -> String {
        self.nameserver
            .map_or_else(|| "the system resolver".to_owned(), |a| a.to_string())
    }

    /// The brokers of `zone`, in the order to try them (RFC 2782, random within a priority).
    ///
    /// # Errors
    /// [`DiscoveryError`] naming the zone and what failed.
    pub async fn brokers(&self, zone: &str) -> Result<Vec<BrokerAddr>, DiscoveryError> {
        self.brokers_with(zone, &mut SeededRandom::from_entropy())
            .await
    }

    /// [`Discovery::brokers`] with a given random source.
    ///
    /// # Errors
    /// [`DiscoveryError`] naming the zone and what failed.
    pub async fn brokers_with(
        &self,
        zone: &str,
        rng: &mut impl RandomSource,
    ) -> Result<Vec<BrokerAddr>, DiscoveryError> {
        let records = self.srv_records(zone).await?;
        Ok(rfc2782_order(records, rng))
    }

    /// [`Discovery::brokers`] for code without a tokio runtime (it starts a small one).
    ///
    /// # Errors
    /// [`DiscoveryError`] naming the zone and what failed.
    pub fn brokers_blocking(&self, zone: &str) -> Result<Vec<BrokerAddr>, DiscoveryError> {
        let name = srv_name(zone);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DiscoveryError::Resolver {
                name,
                nameserver: self.nameserver_label(),
                message: format!("cannot start a runtime: {e}"),
            })?;
        runtime.block_on(self.brokers(zone))
    }

    async fn srv_records(&self, zone: &str) -> Result<Vec<BrokerAddr>, DiscoveryError> {
        let zone = zone.trim().trim_end_matches('.');
        if zone.is_empty() || zone.contains(char::is_whitespace) || zone.contains("..") {
            return Err(DiscoveryError::InvalidZone {
                zone: zone.to_owned(),
                reason: "expected a DNS name such as example.org".into(),
            });
        }
        let name = srv_name(zone);
        let nameserver = self.nameserver_label();
        let resolver_error = |message: String| DiscoveryError::Resolver {
            name: name.clone(),
            nameserver: nameserver.clone(),
            message,
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = self.timeout;
        opts.attempts = 1;
        let resolver = match self.nameserver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![server]);
                Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                    .with_options(opts)
                    .build()
            }
            None => Resolver::builder_tokio().and_then(|mut b| {
                let o = b.options_mut();
                o.timeout = self.timeout;
                b.build()
            }),
        }
        .map_err(|e| resolver_error(e.to_string()))?;
        // Fully qualified, so no search domain is tried.
        let fqdn = format!("{name}.");
        // The TXT record (the brokers' CURVE key) asked at the same time: no added round trip.
        let (srv, txt) = tokio::join!(
            resolver.srv_lookup(fqdn.as_str()),
            resolver.txt_lookup(fqdn.as_str())
        );
        let lookup = match srv {
            Ok(l) => l,
            Err(e) => return Err(classify(e, &name, &nameserver, self.timeout)),
        };
        let records: Vec<BrokerAddr> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(BrokerAddr {
                    host: srv.target.to_utf8().trim_end_matches('.').to_owned(),
                    ip: None,
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                    server_key: None,
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(DiscoveryError::NoSrv { name, nameserver });
        }
        // RFC 2782: a single record with target "." means "decidedly not available".
        if records.len() == 1 && records[0].host.is_empty() {
            return Err(DiscoveryError::NoService { name });
        }
        let server_key = match txt {
            Ok(txt) => curve_key(
                &name,
                txt.answers().iter().filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(txt.txt_data.iter()),
                    _ => None,
                }),
            )?,
            // No TXT record (or a name server that will not say): brokers without a key.
            Err(_) => None,
        };
        let mut records: Vec<BrokerAddr> = records
            .into_iter()
            .filter(|r| !r.host.is_empty())
            .map(|r| BrokerAddr {
                server_key: server_key.clone(),
                ..r
            })
            .collect();
        for r in &mut records {
            r.ip = match r.host.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                // Unresolved here, the name is left to the system resolver when connecting.
                Err(_) => resolver
                    .lookup_ip(format!("{}.", r.host))
                    .await
                    .ok()
                    .and_then(|found| {
                        let ips: Vec<IpAddr> = found.iter().collect();
                        ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
                    }),
            };
        }
        Ok(records)
    }
}

/// The brokers' key from the TXT strings on the SRV name: the one `curve=` string (the same key
/// may appear more than once); strings without that prefix are someone else's and left alone.
fn curve_key<'a>(
    name: &str,
    records: impl Iterator<Item = impl Iterator<Item = &'a Box<[u8]>>>,
) -> Result<Option<String>, DiscoveryError> {
    let mut found: Option<String> = None;
    for text in records.flatten() {
        let text = String::from_utf8_lossy(text);
        let Some(key) = text.trim().strip_prefix(TXT_CURVE_KEY) else {
            continue;
        };
        let bad = |reason: String| DiscoveryError::BadKey {
            name: name.to_owned(),
            text: text.clone().into_owned(),
            reason,
        };
        let key = key.trim();
        if key.len() != 40 || !key.bytes().all(is_z85) {
            return Err(bad(format!(
                "a CURVE public key is 40 Z85 characters, this is {:?}",
                key
            )));
        }
        match &found {
            Some(other) if other != key => {
                return Err(bad(format!(
                    "a second, different key (the first was {other}): the brokers of a zone share one key"
                )))
            }
            _ => found = Some(key.to_owned()),
        }
    }
    Ok(found)
}

/// A character of Z85's alphabet (ZeroMQ RFC 32).
fn is_z85(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-:+=^!/*?&<>()[]{}@%$#".contains(&b)
}

fn srv_name(zone: &str) -> String {
    format!("{SRV_PREFIX}.{}", zone.trim().trim_end_matches('.'))
}

fn classify(e: NetError, name: &str, nameserver: &str, timeout: Duration) -> DiscoveryError {
    let (name, nameserver) = (name.to_owned(), nameserver.to_owned());
    if e.is_nx_domain() {
        DiscoveryError::NxDomain { name, nameserver }
    } else if e.is_no_records_found() {
        DiscoveryError::NoSrv { name, nameserver }
    } else if matches!(e, NetError::Timeout) || e.to_string().contains("timed out") {
        DiscoveryError::Timeout {
            name,
            nameserver,
            timeout,
        }
    } else {
        DiscoveryError::Resolver {
            name,
            nameserver,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, priority: u16, weight: u16) -> BrokerAddr {
        BrokerAddr {
            host: host.into(),
            ip: None,
            port: 7954,
            priority,
            weight,
            server_key: None,
        }
    }

    fn txt(strings: &[&str]) -> Vec<Vec<Box<[u8]>>> {
        vec![strings
            .iter()
            .map(|s| s.as_bytes().to_vec().into_boxed_slice())
            .collect()]
    }

    fn key_of(strings: &[&str]) -> Result<Option<String>, DiscoveryError> {
        let records = txt(strings);
        curve_key(
            "_thingsbus._tcp.example.org",
            records.iter().map(|r| r.iter()),
        )
    }

    #[test]
    fn the_txt_key_is_the_one_curve_string() {
        let key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
        assert_eq!(key_of(&[]).expect("no key"), None);
        assert_eq!(key_of(&["v=spf1 -all"]).expect("no key"), None);
        assert_eq!(
            key_of(&[
                "v=spf1 -all",
                &format!("curve={key}"),
                &format!("curve= {key}")
            ])
            .expect("one key"),
            Some(key.to_owned())
        );
        let short = key_of(&["curve=abc"]).expect_err("a short key");
        assert!(short.to_string().contains("40 Z85 characters"), "{short}");
        let other = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
        let two =
            key_of(&[&format!("curve={key}"), &format!("curve={other}")]).expect_err("two keys");
        assert!(two.to_string().contains("share one key"), "{two}");
        assert_eq!(
            txt_record("example.org.", key),
            format!("_thingsbus._tcp.example.org. TXT \"curve={key}\"")
        );
    }

    #[test]
    fn urls_follow_the_port_rule() {
        let b = BrokerAddr::new("broker.example.org", 7954);
        assert_eq!(b.directory_url(), "tcp://broker.example.org:7954");
        assert_eq!(b.input_url(), "tcp://broker.example.org:7955");
        assert_eq!(b.udp_addr(), "broker.example.org:7955");
        assert_eq!(b.snapshot_url(), "tcp://broker.example.org:7956");
        assert_eq!(BrokerAddr::new("::1", 1).directory_url(), "tcp://[::1]:1");
    }

    #[test]
    fn priority_first() {
        let mut rng = SeededRandom::new(1);
        let order = rfc2782_order(
            vec![rec("c", 20, 5), rec("a", 10, 0), rec("b", 10, 0)],
            &mut rng,
        );
        assert_eq!(order[2].host, "c");
        assert!(order[..2].iter().all(|r| r.priority == 10));
    }

    #[test]
    fn weights_drive_the_first_pick() {
        let mut rng = SeededRandom::new(42);
        let mut first = std::collections::HashMap::new();
        let n = 20_000;
        for _ in 0..n {
            let order = rfc2782_order(
                vec![rec("w1", 0, 1), rec("w3", 0, 3), rec("w0", 0, 0)],
                &mut rng,
            );
            assert_eq!(order.len(), 3);
            *first.entry(order[0].host.clone()).or_insert(0) += 1;
        }
        let share = |h: &str| f64::from(first.get(h).copied().unwrap_or(0)) / f64::from(n);
        // Expected: w1 1/4, w3 3/4, w0 only when the draw is exactly 0 (1/5).
        assert!((share("w3") - 0.6).abs() < 0.03, "{first:?}");
        assert!((share("w1") - 0.2).abs() < 0.03, "{first:?}");
        assert!((share("w0") - 0.2).abs() < 0.03, "{first:?}");
    }

    #[test]
    fn all_zero_weights_keep_every_record() {
        let mut rng = SeededRandom::new(7);
        let order = rfc2782_order(
            vec![rec("a", 0, 0), rec("b", 0, 0), rec("c", 0, 0)],
            &mut rng,
        );
        let mut hosts: Vec<_> = order.iter().map(|r| r.host.as_str()).collect();
        hosts.sort_unstable();
        assert_eq!(hosts, ["a", "b", "c"]);
    }
}
