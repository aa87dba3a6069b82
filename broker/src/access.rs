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

/// Tokens per source: `rate` per second, bursts up to `rate` (at least 1).
pub(crate) struct RateLimiter {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    last_sweep: Instant,
}

/// Sources remembered at most; beyond it idle ones are forgotten early.
const MAX_SOURCES: usize = 65_536;

impl RateLimiter {
    pub(crate) fn new(rate: f64) -> Self {
        RateLimiter {
            rate,
            buckets: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let burst = self.rate.max(1.0);
        if self.buckets.len() >= MAX_SOURCES
            || now.duration_since(self.last_sweep) > Duration::from_secs(60)
        {
            // A full bucket is the same as no bucket: drop those.
            let rate = self.rate;
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            self.last_sweep = now;
            if self.buckets.len() >= MAX_SOURCES {
                self.buckets.clear();
            }
        }
        let (tokens, at) = self
            .buckets
            .entry(ip.to_canonical())
            .or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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
}
