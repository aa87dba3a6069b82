//! Who may publish: `--allow-input` address ranges (checked on every UDP datagram, and on every
//! ZMQ connection through libzmq's ZAP handler), and an optional per-source token bucket
//! (`--rate-limit`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The ZAP handler (RFC 27) for the input socket: accepts a connection when its peer address
/// is allowed. Runs on its own thread with a REP socket on `inproc://zeromq.zap.01`.
pub(crate) struct ZapHandler {
    pub(crate) socket: zmq::Socket,
    pub(crate) allow: AllowList,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// The ZAP domain the input socket asks about.
pub(crate) const ZAP_DOMAIN: &str = "thingsbus-input";

impl ZapHandler {
    pub(crate) fn run(self) {
        let mut log = LogLimiter::new(Duration::from_secs(10), 10);
        let heart = self.stats.health.beat("thingsbus-zap");
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
            let text = |i: usize| {
                frames
                    .get(i)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
            };
            let request_id = frames.get(1).cloned().unwrap_or_default();
            let address = text(3).unwrap_or_default();
            let ok = address
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.allow.allows(ip));
            if !ok {
                self.stats.reject(crate::Reason::NotAllowed);
                if log.allow(Instant::now(), |n| {
                    tracing::warn!(suppressed = n, "more input connections refused")
                }) {
                    tracing::warn!(peer = %address, "input connection refused: address not in --allow-input");
                }
            }
            let (code, reason): (&[u8], &[u8]) = if ok {
                (b"200", b"OK")
            } else {
                (b"400", b"address not allowed")
            };
            let reply: [&[u8]; 6] = [b"1.0", &request_id, code, reason, b"", b""];
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
}
