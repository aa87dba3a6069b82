//! Load generators and measuring subscribers, each on its own thread.
//!
//! Messages are preformatted templates whose numbers are overwritten in place, so the generator
//! does no allocation and no formatting per message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thingsbus_protocol::transport::{curve_client, ClientKeys};

use crate::udp_send::UdpSender;

/// The bench's clock: nanoseconds since the first call, comparable across threads.
pub(crate) fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How updates reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// ZMQ PUB → input SUB, JSON.
    Zmq,
    /// UDP datagrams, MessagePack 4-list.
    Udp,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Zmq => "ZMQ+JSON",
            Transport::Udp => "UDP+MessagePack",
        }
    }
}

/// Writes `v` right-aligned in `field`, spaces before it (JSON whitespace).
fn put_json_number(field: &mut [u8], mut v: u64) {
    field.fill(b' ');
    let mut i = field.len();
    loop {
        i -= 1;
        field[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
}

/// A JSON update template: `{"type":"thing_update","ns":"bench.t00000","data":{"n":    ...,"t":  ...},"ts":null}`.
pub(crate) struct JsonTemplate {
    buf: Vec<u8>,
    ns_at: usize,
    n_at: usize,
    t_at: usize,
}

const NUM_W: usize = 20;

impl JsonTemplate {
    pub(crate) fn new(prefix: &str) -> Self {
        let head = format!("{{\"type\":\"thing_update\",\"ns\":\"{prefix}.t");
        let mut buf = head.into_bytes();
        let ns_at = buf.len();
        buf.extend_from_slice(b"0000000\",\"data\":{\"n\":");
        let n_at = buf.len();
        buf.extend_from_slice(&[b' '; NUM_W]);
        buf.extend_from_slice(b",\"t\":");
        let t_at = buf.len();
        buf.extend_from_slice(&[b' '; NUM_W]);
        buf.extend_from_slice(b"},\"ts\":null}");
        JsonTemplate {
            buf,
            ns_at,
            n_at,
            t_at,
        }
    }

    pub(crate) fn fill(&mut self, thing: u64, n: u64, t: u64) -> &[u8] {
        let mut th = thing;
        for b in self.buf[self.ns_at..self.ns_at + 7].iter_mut().rev() {
            *b = b'0' + (th % 10) as u8;
            th /= 10;
        }
        put_json_number(&mut self.buf[self.n_at..self.n_at + NUM_W], n);
        put_json_number(&mut self.buf[self.t_at..self.t_at + NUM_W], t);
        &self.buf
    }
}

/// A MessagePack 4-list template `["bench.t0000000", nil, {"n": u64, "t": u64}, nil]`.
pub(crate) struct MsgpackTemplate {
    buf: Vec<u8>,
    ns_at: usize,
    n_at: usize,
    t_at: usize,
}

impl MsgpackTemplate {
    pub(crate) fn new(prefix: &str) -> Self {
        let ns = format!("{prefix}.t0000000");
        let mut buf = vec![0x94, 0xa0 | ns.len() as u8];
        let ns_at = buf.len() + prefix.len() + 2;
        buf.extend_from_slice(ns.as_bytes());
        buf.push(0xc0);
        buf.extend_from_slice(&[0x82, 0xa1, b'n', 0xcf]);
        let n_at = buf.len();
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(&[0xa1, b't', 0xcf]);
        let t_at = buf.len();
        buf.extend_from_slice(&[0; 8]);
        buf.push(0xc0);
        MsgpackTemplate {
            buf,
            ns_at,
            n_at,
            t_at,
        }
    }

    pub(crate) fn fill(&mut self, thing: u64, n: u64, t: u64) -> &[u8] {
        let mut th = thing;
        for b in self.buf[self.ns_at..self.ns_at + 7].iter_mut().rev() {
            *b = b'0' + (th % 10) as u8;
            th /= 10;
        }
        self.buf[self.n_at..self.n_at + 8].copy_from_slice(&n.to_be_bytes());
        self.buf[self.t_at..self.t_at + 8].copy_from_slice(&t.to_be_bytes());
        &self.buf
    }
}

/// A load generator: one socket, used from one thread at a time.
pub(crate) struct Generator {
    out: Out,
    json: JsonTemplate,
    mp: MsgpackTemplate,
    sync_json: JsonTemplate,
    sync_mp: MsgpackTemplate,
    sync_n: u64,
}

enum Out {
    Zmq(zmq::Socket),
    /// Datagrams go out in batches (`sendmmsg`): [`Generator::flush`] sends what is queued.
    Udp(UdpSender),
}

impl Generator {
    /// A generator of `prefix.tNNNNNNN` updates to the server's ZMQ or UDP input.
    pub(crate) fn new(
        ctx: &zmq::Context,
        transport: Transport,
        zmq_url: &str,
        udp: SocketAddr,
        prefix: &str,
        keys: Option<&ClientKeys>,
    ) -> Self {
        let out = match transport {
            Transport::Zmq => {
                let s = ctx.socket(zmq::PUB).expect("PUB socket");
                if let Some(k) = keys {
                    curve_client(&s, k).expect("CURVE keys");
                }
                s.set_sndhwm(0).expect("unlimited hwm");
                s.set_linger(2000).expect("linger");
                s.connect(zmq_url).expect("connect");
                Out::Zmq(s)
            }
            Transport::Udp => Out::Udp(UdpSender::new(udp)),
        };
        Generator {
            out,
            json: JsonTemplate::new(prefix),
            mp: MsgpackTemplate::new(prefix),
            sync_json: JsonTemplate::new("sync"),
            sync_mp: MsgpackTemplate::new("sync"),
            sync_n: 0,
        }
    }

    fn send(&mut self, sync: bool, thing: u64, n: u64) {
        let t = now_ns();
        match &mut self.out {
            Out::Zmq(s) => {
                let bytes = if sync {
                    self.sync_json.fill(thing, n, t)
                } else {
                    self.json.fill(thing, n, t)
                };
                let _ = s.send(bytes, 0);
            }
            Out::Udp(u) => {
                let bytes = if sync {
                    self.sync_mp.fill(thing, n, t)
                } else {
                    self.mp.fill(thing, n, t)
                };
                u.push(bytes);
            }
        }
    }

    /// Sends the datagrams still queued (a no-op over ZMQ).
    fn flush(&mut self) {
        if let Out::Udp(u) = &mut self.out {
            u.flush();
        }
    }

    /// Sends one `sync.*` probe.
    pub(crate) fn probe(&mut self) {
        self.sync_n += 1;
        self.send(true, 0, self.sync_n);
        self.flush();
    }

    /// Sends at `rate` per second for `duration` (or `count` updates, whichever comes first),
    /// cycling over `things` namespaces. Returns how many were sent and how long it took.
    pub(crate) fn run(
        &mut self,
        rate: f64,
        duration: Duration,
        count: u64,
        things: u64,
    ) -> (u64, Duration) {
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= duration || sent >= count {
                break;
            }
            let due = if rate.is_finite() {
                ((elapsed.as_secs_f64() * rate) as u64).min(count)
            } else {
                (sent + 1024).min(count)
            };
            if sent >= due {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            while sent < due {
                self.send(false, sent % things.max(1), sent);
                sent += 1;
            }
            self.flush();
        }
        (sent, start.elapsed())
    }
}

/// What a subscriber saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    pub(crate) updates: u64,
    pub(crate) snapshots: u64,
    /// End-to-end latencies in ns (only with latency measuring on).
    pub(crate) latencies: Vec<u64>,
    pub(crate) first_at: Option<Instant>,
    pub(crate) last_at: Option<Instant>,
}

/// A subscriber on its own thread; stop it with [`SubscriberHandle::finish`].
pub(crate) struct SubscriberHandle {
    stop: Arc<AtomicBool>,
    synced: Arc<std::sync::atomic::AtomicU64>,
    count: Arc<std::sync::atomic::AtomicU64>,
    thread: JoinHandle<Seen>,
}

/// What one frame from a directory socket is, to a measuring subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A periodic or instant snapshot chunk.
    Snapshot,
    /// One of the measured updates (namespace under the subscriber's prefix).
    Update,
    /// A `sync.*` probe: the path is open.
    Probe,
    /// Anything else.
    Other,
}

/// The namespaces a subscriber counts: `prefix.t…` in JSON (compact, or Python's `"ns": "…`)
/// and in MessagePack.
pub(crate) struct Needles {
    json: Vec<u8>,
    mp: Vec<u8>,
}

impl Needles {
    pub(crate) fn new(prefix: &str) -> Self {
        Needles {
            json: format!("\"{prefix}.t").into_bytes(),
            mp: format!("{prefix}.t").into_bytes(),
        }
    }

    pub(crate) fn classify(&self, b: &[u8]) -> Frame {
        if b.starts_with(b"{\"type\":\"thing_snapshot\"") {
            return Frame::Snapshot;
        }
        let needle = if b.first() == Some(&b'{') {
            &self.json
        } else {
            &self.mp
        };
        if memfind(b, needle).is_some() {
            Frame::Update
        } else if memfind(b, b"sync.t").is_some() {
            Frame::Probe
        } else {
            Frame::Other
        }
    }
}

/// Starts a subscriber counting updates whose namespace starts with `prefix`; with `latency`,
/// it also records each one's end-to-end latency from the embedded send time.
///
/// Each subscriber has its own libzmq context (so its own I/O thread): subscribers sharing one
/// I/O thread with each other and the generator made the bench, not the broker, the bound of
/// fan-out figures.
pub(crate) fn subscriber(
    url: &str,
    prefix: &str,
    latency: bool,
    keys: Option<&ClientKeys>,
) -> SubscriberHandle {
    subscriber_to(url, b"", prefix, latency, keys)
}

/// [`subscriber`], taking only the messages that start with `subscription` (ZMQ's prefix
/// match; empty for all).
pub(crate) fn subscriber_to(
    url: &str,
    subscription: &[u8],
    prefix: &str,
    latency: bool,
    keys: Option<&ClientKeys>,
) -> SubscriberHandle {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::SUB).expect("SUB");
    if let Some(k) = keys {
        curve_client(&s, k).expect("CURVE keys");
    }
    s.set_subscribe(subscription).expect("subscribe");
    s.set_rcvhwm(0).expect("unlimited hwm");
    s.set_rcvbuf(8 << 20).expect("rcvbuf");
    s.connect(url).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let synced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let synced2 = synced.clone();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count2 = count.clone();
    let needles = Needles::new(prefix);
    let thread = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let mut msg = zmq::Message::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            match s.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {
                    idle_since = None;
                    let b: &[u8] = &msg;
                    match needles.classify(b) {
                        Frame::Snapshot => {
                            seen.snapshots += 1;
                            continue;
                        }
                        Frame::Probe => {
                            synced2.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Frame::Other => continue,
                        Frame::Update => {}
                    }
                    let now = Instant::now();
                    seen.first_at.get_or_insert(now);
                    seen.last_at = Some(now);
                    seen.updates += 1;
                    count2.fetch_add(1, Ordering::Relaxed);
                    if latency {
                        if let Some(t) = embedded_t(b) {
                            seen.latencies.push(now_ns().saturating_sub(t));
                        }
                    }
                }
                Err(_) => {
                    if stop2.load(Ordering::Relaxed) {
                        // Drain: finish once nothing has come for 300 ms.
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(300) {
                            break;
                        }
                    }
                    let _ = s.poll(zmq::POLLIN, 5);
                }
            }
        }
        drop(s);
        drop(ctx);
        seen
    });
    SubscriberHandle {
        stop,
        synced,
        count,
        thread,
    }
}

impl SubscriberHandle {
    /// Probes seen so far.
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Relaxed)
    }

    /// Updates seen so far.
    pub(crate) fn updates(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Lets every subscriber drain what is in flight, all at once (each waits for 300 ms of
    /// quiet: one after the other, ten would take 3 s), then returns what each saw.
    pub(crate) fn finish_all(handles: Vec<SubscriberHandle>) -> Vec<Seen> {
        for h in &handles {
            h.stop.store(true, Ordering::Relaxed);
        }
        handles.into_iter().map(SubscriberHandle::finish).collect()
    }

    /// Lets the subscriber drain what is in flight, then returns what it saw.
    pub(crate) fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("subscriber thread")
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The send time `"t": <ns>` from JSON, or from the MessagePack `t` key.
pub(crate) fn embedded_t(b: &[u8]) -> Option<u64> {
    if b.first() == Some(&b'{') {
        let at = memfind(b, b"\"t\":")? + 4;
        let digits: String = b[at..]
            .iter()
            .skip_while(|c| **c == b' ')
            .take_while(|c| c.is_ascii_digit())
            .map(|c| *c as char)
            .collect();
        digits.parse().ok()
    } else {
        let at = memfind(b, &[0xa1, b't', 0xcf])? + 3;
        Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }
}

/// p-th percentile (0..=100) of `v`, in milliseconds.
pub(crate) fn percentile_ms(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)] as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid() {
        let mut j = JsonTemplate::new("bench");
        let v: serde_json::Value =
            serde_json::from_slice(j.fill(42, 7, 123_456_789)).expect("json");
        assert_eq!(v["ns"], "bench.t0000042");
        assert_eq!(v["data"]["n"], 7);
        assert_eq!(v["data"]["t"], 123_456_789);
        assert_eq!(embedded_t(j.fill(1, 0, 99)), Some(99));
        let v: serde_json::Value = serde_json::from_slice(j.fill(0, 0, 0)).expect("json");
        assert_eq!(v["data"]["n"], 0);
        let mut m = MsgpackTemplate::new("bench");
        let b = m.fill(5, 1, 77).to_vec();
        assert_eq!(embedded_t(&b), Some(77));
        assert!(memfind(&b, b"bench.t0000005").is_some());
    }
}
