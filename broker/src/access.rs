//! Who may connect and publish: `--allow-input` address ranges (checked on every UDP datagram,
//! and on every ZMQ connection through libzmq's ZAP handler), the rights of the `--auth-file`
//! (checked on every ZMQ connection by the ZAP handler, then per message where they name
//! namespaces), and an optional per-source token bucket (`--rate-limit`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Auth, AuthCell, AuthView, Who};
use crate::config::Config;
use crate::log_limit::LogLimiter;
use crate::stats::Stats;

/// An address range, `10.0.0.0/8`, `192.168.1.7` (one host) or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!("{s:?} is not an address range (e.g. 192.168.1.0/24 or fd00::/8)")
        })?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The ranges allowed to publish; empty means everyone (0.2.x behaviour).
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowList(Vec<Cidr>);

impl AllowList {
    pub(crate) fn new(ranges: Vec<Cidr>) -> Self {
        AllowList(ranges)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        self.is_open() || self.0.iter().any(|c| c.contains(ip))
    }
}

/// What a rate limit counts by: an IPv4 address, or an IPv6 /64 (one host or one network's
/// hosts: an IPv6 sender rotating through its /64 is still one source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(std::net::Ipv4Addr),
    V6Net(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => Source::V6Net((u128::from(a) >> 64) as u64),
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Used again since it was added or the evictor last looked (a second chance).
    used: bool,
}

/// Tokens per source: `rate` per second, bursts up to `rate` (at least 1). At most
/// [`MAX_SOURCES`] are remembered; beyond it the least recently used one is forgotten, one at a
/// time, so a sender rotating addresses cannot reset the buckets of sources that keep sending.
pub(crate) struct RateLimiter {
    rate: f64,
    max_sources: usize,
    buckets: HashMap<Source, Bucket>,
    /// Sources in the order the evictor visits them (oldest first; a used one goes round again).
    order: std::collections::VecDeque<Source>,
    last_sweep: Instant,
}

/// Sources remembered at most.
const MAX_SOURCES: usize = 65_536;

impl RateLimiter {
    pub(crate) fn new(rate: f64) -> Self {
        RateLimiter::with_max_sources(rate, MAX_SOURCES)
    }

    fn with_max_sources(rate: f64, max_sources: usize) -> Self {
        RateLimiter {
            rate,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            order: std::collections::VecDeque::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Takes one token for `ip`'s source; false when its bucket is empty.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let burst = self.rate.max(1.0);
        if now.duration_since(self.last_sweep) > Duration::from_secs(60) {
            self.sweep(now, burst);
        }
        let source = Source::of(ip);
        let known = self.buckets.contains_key(&source);
        if !known {
            if self.buckets.len() >= self.max_sources {
                self.evict_one();
            }
            self.order.push_back(source);
        }
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
            used: false,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(burst);
        b.at = now;
        // A source seen once is the first to go; one that comes back earns its second chance.
        b.used |= known;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets the least recently used source (second chance: one used since the last visit
    /// goes round once more). Amortised O(1).
    fn evict_one(&mut self) {
        while let Some(source) = self.order.pop_front() {
            match self.buckets.get_mut(&source) {
                Some(b) if b.used => {
                    b.used = false;
                    self.order.push_back(source);
                }
                Some(_) => {
                    self.buckets.remove(&source);
                    return;
                }
                None => {}
            }
        }
    }

    /// Once a minute: a full bucket is the same as no bucket, so those are dropped.
    fn sweep(&mut self, now: Instant, burst: f64) {
        let rate = self.rate;
        self.buckets
            .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        let buckets = &self.buckets;
        self.order.retain(|s| buckets.contains_key(s));
        self.last_sweep = now;
    }
}

/// The broker's ZMQ endpoints, as the ZAP handler tells them apart (by ZAP domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// The directory output (PUB): reading.
    Directory,
    /// The ZMQ input (SUB): publishing.
    Input,
    /// The snapshot endpoint (ROUTER): reading.
    Snapshot,
    /// The command endpoint (ROUTER): serving and commanding.
    Command,
}

impl Door {
    const ALL: [Door; 4] = [Door::Directory, Door::Input, Door::Snapshot, Door::Command];

    /// Its ZAP domain.
    pub(crate) fn domain(self) -> &'static str {
        match self {
            Door::Directory => "thingsbus-directory",
            Door::Input => "thingsbus-input",
            Door::Snapshot => "thingsbus-snapshot",
            Door::Command => "thingsbus-command",
        }
    }

    fn of(domain: &[u8]) -> Option<Door> {
        Door::ALL
            .into_iter()
            .find(|d| d.domain().as_bytes() == domain)
    }
}

/// Whether connections through `door` are put to the ZAP handler: all of them with an auth
/// file, the input's with `--allow-input`.
pub(crate) fn guarded(config: &Config, door: Door) -> bool {
    config.auth_file.is_some() || (door == Door::Input && !config.allow_input.is_empty())
}

/// Makes `socket` a CURVE server when the broker has a key pair, and puts its new connections
/// to the ZAP handler when `door` is [`guarded`]. Set before `bind`.
///
/// # Errors
/// What libzmq says when an option cannot be set.
pub(crate) fn guard(socket: &mut zmq::Socket, config: &Config, door: Door) -> zmq::Result<()> {
    if let Some(keys) = &config.curve {
        thingsbus_protocol::transport::curve_server(socket, keys).map_err(|f| f.source)?;
    }
    if guarded(config, door) {
        socket.set_zap_domain(door.domain())?;
        // Refused when the ZAP handler does not answer: a dead handler must not let everyone
        // in (libzmq's default admits a peer when no handler is bound to inproc://zeromq.zap.01).
        thingsbus_protocol::transport::set_zap_enforce_domain(socket, true)
            .map_err(|f| f.source)?;
    }
    Ok(())
}

/// Whether a ZAP handler is needed at all.
pub(crate) fn any_guarded(config: &Config) -> bool {
    Door::ALL.into_iter().any(|d| guarded(config, d))
}

/// What a connection asks the ZAP handler (RFC 27), as far as the decision needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ZapRequest<'a> {
    pub(crate) domain: &'a [u8],
    pub(crate) addr: Option<IpAddr>,
    pub(crate) mechanism: &'a [u8],
    /// The first credentials frame: the client's public key (32 bytes) under CURVE.
    pub(crate) credentials: Option<&'a [u8]>,
    /// The credentials are the key of the broker's own HTTP side (made for this run).
    pub(crate) internal: bool,
}

/// The ZAP handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ZapAnswer {
    /// In, with this `User-Id` on every message (the key's name; empty without a key).
    Admit(String),
    /// Out: who asked (for counts), why (for the log), and whether it was the address list.
    Refuse {
        who: String,
        why: &'static str,
        by_address: bool,
    },
}

/// Decides one ZAP request: the input's address list first, then, with an auth file, the
/// rights of the key (CURVE) or of anonymous peers (NULL) for the endpoint asked.
pub(crate) fn decide(
    req: ZapRequest<'_>,
    allow_input: &AllowList,
    auth: Option<&Auth>,
) -> ZapAnswer {
    let refuse = |who: &str, why| ZapAnswer::Refuse {
        who: who.to_owned(),
        why,
        by_address: false,
    };
    let Some(door) = Door::of(req.domain) else {
        return refuse("?", "unknown ZAP domain");
    };
    if door == Door::Input && !req.addr.is_some_and(|a| allow_input.allows(a)) {
        return ZapAnswer::Refuse {
            who: crate::auth::ANONYMOUS.to_owned(),
            why: "address not in --allow-input",
            by_address: true,
        };
    }
    if req.internal && req.mechanism == b"CURVE" {
        // The broker's own HTTP side: it reads, and its commands were checked by its tokens.
        return ZapAnswer::Admit(crate::auth::INTERNAL.to_owned());
    }
    let Some(auth) = auth else {
        return ZapAnswer::Admit(String::new());
    };
    // Under CURVE every peer has a key: one not in the file counts as anonymous (it knows the
    // broker's public key, nothing more), and is refused under its own label.
    let (who, label) = match req.mechanism {
        b"NULL" => (Who::Anonymous, crate::auth::ANONYMOUS),
        b"CURVE" => match req.credentials.and_then(|k| auth.key_name(k)) {
            Some(name) => (Who::Key(name), name),
            None => (Who::Anonymous, "(unknown key)"),
        },
        _ => return refuse("?", "mechanism not used by thingsbus"),
    };
    let Some(rights) = auth.rights(who) else {
        return refuse(
            label,
            if req.mechanism == b"CURVE" && who == Who::Anonymous {
                "key not in the auth file, and no [anonymous] rights"
            } else {
                "no rights in the auth file"
            },
        );
    };
    let may = match door {
        Door::Directory | Door::Snapshot => rights.read,
        Door::Input => !rights.publish.is_empty(),
        Door::Command => !rights.serve.is_empty() || !rights.command.is_empty(),
    };
    if !may {
        return refuse(
            label,
            match door {
                Door::Directory | Door::Snapshot => "may not read (auth file: read = false)",
                Door::Input => "may not publish anything (auth file: publish = [])",
                Door::Command => "may neither serve nor command (auth file)",
            },
        );
    }
    ZapAnswer::Admit(match who {
        Who::Key(name) => name.to_owned(),
        Who::Anonymous | Who::Board(_) => String::new(),
    })
}

/// The ZAP handler (RFC 27): decides every guarded connection with [`decide`]. Runs on its own
/// thread with a REP socket on `inproc://zeromq.zap.01`.
pub(crate) struct ZapHandler {
    pub(crate) socket: zmq::Socket,
    pub(crate) allow: AllowList,
    pub(crate) auth: Option<Arc<AuthCell>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<AtomicBool>,
    /// The public key of the broker's own HTTP side, when it connects with CURVE.
    pub(crate) internal: Option<[u8; 32]>,
}

impl ZapHandler {
    pub(crate) fn run(self) {
        let mut log = LogLimiter::new(Duration::from_secs(10), 10);
        let heart = self.stats.health.beat("thingsbus-zap");
        let mut auth = self.auth.clone().map(AuthView::new);
        while !self.stop.load(Ordering::Relaxed) {
            heart.beat();
            match self.socket.poll(zmq::POLLIN, 50) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "ZAP handler poll failed");
                    return;
                }
            }
            let Ok(frames) = self.socket.recv_multipart(zmq::DONTWAIT) else {
                continue;
            };
            // version, request id, domain, address, identity, mechanism, credentials...
            let frame = |i: usize| frames.get(i).map(Vec::as_slice);
            let request_id = frame(1).unwrap_or_default();
            let address = String::from_utf8_lossy(frame(3).unwrap_or_default()).into_owned();
            let request = ZapRequest {
                domain: frame(2).unwrap_or_default(),
                addr: address.parse().ok(),
                mechanism: frame(5).unwrap_or_default(),
                credentials: frame(6),
                internal: self.internal.is_some_and(|k| frame(6) == Some(&k[..])),
            };
            let answer = decide(request, &self.allow, auth.as_mut().map(|a| a.get()));
            let (code, reason, user): (&[u8], &[u8], Vec<u8>) = match &answer {
                ZapAnswer::Admit(user) => (b"200", b"OK", user.clone().into_bytes()),
                ZapAnswer::Refuse {
                    who,
                    why,
                    by_address,
                } => {
                    if *by_address {
                        self.stats.reject(crate::Reason::NotAllowed);
                    } else {
                        self.stats.refuse_by(who, "connect_refused");
                    }
                    if log.allow(Instant::now(), |n| {
                        tracing::warn!(suppressed = n, "more connections refused")
                    }) {
                        let domain = String::from_utf8_lossy(request.domain);
                        tracing::warn!(peer = %address, %who, %domain, "connection refused: {why}");
                    }
                    (b"400", why.as_bytes(), Vec::new())
                }
            };
            let reply: [&[u8]; 6] = [b"1.0", request_id, code, reason, &user, b""];
            if let Err(e) = self.socket.send_multipart(reply, 0) {
                tracing::warn!(error = %e, "ZAP reply not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_hold_what_they_should() {
        let lan: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(lan.contains(ip("192.168.1.77")));
        assert!(!lan.contains(ip("192.168.2.1")));
        assert!(
            lan.contains(ip("::ffff:192.168.1.5")),
            "v4-mapped v6 counts as v4"
        );
        let host: Cidr = "10.1.2.3".parse().unwrap();
        assert!(host.contains(ip("10.1.2.3")) && !host.contains(ip("10.1.2.4")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "nonsense",
            "10.0.0/8",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn allow_lists_and_buckets() {
        assert!(AllowList::default().allows(ip("1.2.3.4")));
        let l = AllowList::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(l.allows(ip("127.0.0.2")) && !l.allows(ip("10.0.0.1")));

        let mut r = RateLimiter::new(10.0);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(
            (0..20).filter(|_| r.allow(a, t0)).count(),
            10,
            "a burst of 10"
        );
        assert!(
            r.allow(ip("10.0.0.2"), t0),
            "another source has its own bucket"
        );
        assert!(!r.allow(a, t0 + Duration::from_millis(50)));
        assert!(
            r.allow(a, t0 + Duration::from_millis(150)),
            "tokens come back at 10/s"
        );
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let mut r = RateLimiter::new(1.0);
        let t0 = Instant::now();
        assert!(r.allow(ip("2001:db8:1:2::1"), t0));
        assert!(!r.allow(ip("2001:db8:1:2:ffff::9"), t0), "the same /64");
        assert!(r.allow(ip("2001:db8:1:3::1"), t0), "another /64");
        assert!(r.allow(ip("10.0.0.1"), t0));
        assert!(
            !r.allow(ip("::ffff:10.0.0.1"), t0),
            "mapped IPv4 is that IPv4"
        );
    }

    #[test]
    fn a_flood_of_new_sources_does_not_reset_one_that_keeps_sending() {
        let mut r = RateLimiter::with_max_sources(0.001, 100);
        let t0 = Instant::now();
        let busy = ip("10.0.0.1");
        assert!(r.allow(busy, t0), "its one token");
        for i in 0..10_000u32 {
            let rotating = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(r.allow(rotating, t0), "a new source has its burst");
            if i % 10 == 0 {
                assert!(!r.allow(busy, t0), "the busy source stays limited (at {i})");
            }
        }
        assert!(r.buckets.len() <= 100 && r.order.len() <= 10_100);
        // An idle source is the one forgotten.
        let mut r = RateLimiter::with_max_sources(0.001, 2);
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        assert!(r.allow(a, t0) && r.allow(b, t0));
        assert!(!r.allow(a, t0));
        r.evict_one();
        assert!(r.buckets.contains_key(&Source::of(a)) || r.buckets.contains_key(&Source::of(b)));
        assert!(r.allow(c, t0));
        assert_eq!(r.buckets.len(), 2);
    }

    fn ask<'a>(door: Door, mechanism: &'a [u8], key: Option<&'a [u8]>) -> ZapRequest<'a> {
        ZapRequest {
            domain: door.domain().as_bytes(),
            addr: Some(ip("10.0.0.7")),
            mechanism,
            credentials: key,
            internal: false,
        }
    }

    #[test]
    fn the_zap_handler_admits_by_address_then_by_rights() {
        let open = AllowList::default();
        // Without an auth file only the input's address list counts.
        assert_eq!(
            decide(ask(Door::Input, b"NULL", None), &open, None),
            ZapAnswer::Admit(String::new())
        );
        let lan = AllowList::new(vec!["192.168.0.0/16".parse().unwrap()]);
        assert!(matches!(
            decide(ask(Door::Input, b"NULL", None), &lan, None),
            ZapAnswer::Refuse {
                by_address: true,
                ..
            }
        ));
        let refused = |a: ZapAnswer| {
            matches!(
                a,
                ZapAnswer::Refuse {
                    by_address: false,
                    ..
                }
            )
        };
        let unknown = ZapRequest {
            domain: b"other",
            ..ask(Door::Input, b"NULL", None)
        };
        assert!(refused(decide(unknown, &open, None)));

        let key = [9u8; 32];
        let auth = Auth::parse(&format!(
            "[anonymous]\nread = true\n[keys.pi]\npublic = \"{}\"\npublish = [\"kitchen\"]\ncommand = [\"x\"]\n",
            zmq::z85_encode(&key).unwrap()
        ))
        .unwrap();
        let a = Some(&auth);
        assert_eq!(
            decide(ask(Door::Directory, b"NULL", None), &open, a),
            ZapAnswer::Admit(String::new())
        );
        assert_eq!(
            decide(ask(Door::Snapshot, b"NULL", None), &open, a),
            ZapAnswer::Admit(String::new())
        );
        assert!(
            refused(decide(ask(Door::Input, b"NULL", None), &open, a)),
            "anonymous publishes nothing"
        );
        assert!(refused(decide(ask(Door::Command, b"NULL", None), &open, a)));
        let pi = |d| decide(ask(d, b"CURVE", Some(&key)), &open, a);
        assert_eq!(pi(Door::Input), ZapAnswer::Admit("pi".into()));
        assert_eq!(pi(Door::Command), ZapAnswer::Admit("pi".into()));
        assert!(refused(pi(Door::Directory)), "pi may not read");
        // A key not in the file has the anonymous rights, and is refused under its own label.
        let stranger = |d| decide(ask(d, b"CURVE", Some(&[1; 32])), &open, a);
        assert_eq!(stranger(Door::Directory), ZapAnswer::Admit(String::new()));
        assert!(
            matches!(stranger(Door::Input), ZapAnswer::Refuse { ref who, .. } if who == "(unknown key)")
        );
        let nobody = Auth::parse("").unwrap();
        assert!(matches!(
            decide(ask(Door::Directory, b"CURVE", Some(&[1; 32])), &open, Some(&nobody)),
            ZapAnswer::Refuse { ref who, why, .. } if who == "(unknown key)" && why.contains("not in the auth file")
        ));
        // The broker's own HTTP side reads whatever the file says, but only under CURVE.
        let internal = |m| ZapRequest {
            internal: true,
            ..ask(Door::Directory, m, Some(&[2; 32]))
        };
        assert_eq!(
            decide(internal(b"CURVE"), &open, Some(&nobody)),
            ZapAnswer::Admit(crate::auth::INTERNAL.into())
        );
        assert!(refused(decide(internal(b"NULL"), &open, Some(&nobody))));
        assert!(refused(decide(
            ask(Door::Directory, b"PLAIN", None),
            &open,
            a
        )));
        assert!(refused(decide(
            ask(Door::Directory, b"NULL", None),
            &open,
            Some(&nobody)
        )));
    }
}
