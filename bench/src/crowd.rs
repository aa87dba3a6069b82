//! Many subscribers at once, and what the bench reaches with no broker in the way.
//!
//! A thousand subscribers cannot each have a thread and a libzmq context on 2 cores: a
//! [`Crowd`] spreads its SUB sockets over a few reader threads, each with its own context (so its
//! own I/O thread) and polling its share of the sockets with `zmq::poll`. The ceilings measure
//! the bench's own side alone: the load generator into a sink, and subscribers reading a bare
//! libzmq PUB the bench feeds itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::load::{
    embedded_t, now_ns, subscriber, Frame, Generator, JsonTemplate, Needles, Transport,
};

/// Sockets per reader thread (and context): libzmq allows 1,023 sockets per context by default.
const SOCKETS_PER_READER: usize = 250;
/// A reader that has its target gives the stragglers this long after the last frame.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Many SUB sockets on a few reader threads; stop it with [`Crowd::finish`].
pub(crate) struct Crowd {
    synced: Arc<AtomicUsize>,
    /// Updates each socket must see before its reader may stop; `u64::MAX` while sending.
    target: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    size: usize,
    readers: Vec<JoinHandle<anyhow::Result<Part>>>,
}

/// What one reader thread saw.
struct Part {
    counts: Vec<u64>,
    latencies: Vec<u64>,
}

/// What a crowd saw: updates per socket and the latencies of the sampled sockets, in ns.
#[derive(Debug, Default)]
pub(crate) struct CrowdSeen {
    pub(crate) counts: Vec<u64>,
    pub(crate) latencies: Vec<u64>,
}

impl Crowd {
    /// Connects `size` SUB sockets to `url`, counting updates under `prefix`; about `sampled` of
    /// them, spread evenly, record every update's end-to-end latency.
    pub(crate) fn start(url: &str, prefix: &str, size: usize, sampled: usize) -> Crowd {
        let synced = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let every = (size / sampled.max(1)).max(1);
        let readers = (0..size)
            .step_by(SOCKETS_PER_READER)
            .map(|first| {
                let share = first..(first + SOCKETS_PER_READER).min(size);
                let sampled: Vec<bool> = share.clone().map(|i| i % every == 0).collect();
                let (url, synced, target, stop) =
                    (url.to_owned(), synced.clone(), target.clone(), stop.clone());
                let needles = Needles::new(prefix);
                std::thread::spawn(move || {
                    read_share(&url, &needles, &sampled, &synced, &target, &stop)
                })
            })
            .collect();
        Crowd {
            synced,
            target,
            stop,
            size,
            readers,
        }
    }

    /// Sockets that have seen a probe.
    pub(crate) fn synced(&self) -> usize {
        self.synced.load(Ordering::Relaxed)
    }

    /// Sockets in the crowd.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Waits until every socket has `sent` updates, or nothing came for a second (or 60 s
    /// passed), and returns what each saw.
    pub(crate) fn finish(self, sent: u64) -> anyhow::Result<CrowdSeen> {
        self.target.store(sent, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = CrowdSeen::default();
        for r in self.readers {
            let part = r
                .join()
                .map_err(|_| anyhow::anyhow!("a crowd reader panicked"))??;
            seen.counts.extend(part.counts);
            seen.latencies.extend(part.latencies);
        }
        Ok(seen)
    }
}

/// One reader thread: its own context and sockets, polled together until its sockets all have
/// the target (or went quiet after it was set, or `stop`).
fn read_share(
    url: &str,
    needles: &Needles,
    sampled: &[bool],
    synced: &AtomicUsize,
    target: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<Part> {
    let ctx = zmq::Context::new();
    let sockets = sampled
        .iter()
        .map(|_| {
            let s = ctx.socket(zmq::SUB)?;
            s.set_subscribe(b"")?;
            s.set_rcvhwm(0)?;
            s.set_linger(0)?;
            s.connect(url)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, zmq::Error>>()
        .with_context(|| format!("crowd: connecting SUB sockets to {url}"))?;
    let mut counts = vec![0u64; sockets.len()];
    let mut probed = vec![false; sockets.len()];
    let mut latencies = Vec::new();
    let mut msg = zmq::Message::new();
    let mut last_frame = Instant::now();
    let mut items: Vec<zmq::PollItem> = sockets
        .iter()
        .map(|s| s.as_poll_item(zmq::POLLIN))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let want = target.load(Ordering::Relaxed);
        if want != u64::MAX
            && (counts.iter().all(|c| *c >= want) || last_frame.elapsed() > DRAIN_IDLE)
        {
            break;
        }
        if zmq::poll(&mut items, 10)? == 0 {
            continue;
        }
        for (i, item) in items.iter().enumerate() {
            if !item.is_readable() {
                continue;
            }
            while sockets[i].recv(&mut msg, zmq::DONTWAIT).is_ok() {
                match needles.classify(&msg) {
                    Frame::Update => {
                        counts[i] += 1;
                        if sampled[i] {
                            if let Some(t) = embedded_t(&msg) {
                                latencies.push(now_ns().saturating_sub(t));
                            }
                        }
                    }
                    Frame::Probe if !probed[i] => {
                        probed[i] = true;
                        synced.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            last_frame = Instant::now();
        }
    }
    drop(items);
    drop(sockets);
    Ok(Part { counts, latencies })
}

/// A bare libzmq PUB in the bench, bound on loopback, that one thread feeds: what subscribers
/// reach with nothing but libzmq between them and the sender.
pub(crate) struct BarePub {
    socket: zmq::Socket,
    pub(crate) url: String,
    json: JsonTemplate,
    sync: JsonTemplate,
    sync_n: u64,
}

impl BarePub {
    /// Binds a PUB (its own context) on 127.0.0.1, dropping above `hwm` queued per subscriber
    /// as a broker does.
    pub(crate) fn bind(prefix: &str, hwm: i32) -> anyhow::Result<BarePub> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::PUB)?;
        socket.set_sndhwm(hwm)?;
        socket.set_linger(0)?;
        socket.bind("tcp://127.0.0.1:*")?;
        let url = socket
            .get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("the bare PUB's endpoint is not UTF-8"))?;
        Ok(BarePub {
            socket,
            url,
            json: JsonTemplate::new(prefix),
            sync: JsonTemplate::new("sync"),
            sync_n: 0,
        })
    }

    /// Sends one `sync.*` probe.
    pub(crate) fn probe(&mut self) {
        self.sync_n += 1;
        let _ = self
            .socket
            .send(self.sync.fill(0, self.sync_n, now_ns()), zmq::DONTWAIT);
    }

    /// Sends at `rate` per second (unthrottled when infinite) for `duration`; returns how many
    /// were sent and how long it took.
    pub(crate) fn run(&mut self, rate: f64, duration: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            let due = if rate.is_finite() {
                (start.elapsed().as_secs_f64() * rate) as u64
            } else {
                sent + 1024
            };
            if sent >= due {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            while sent < due {
                let _ = self
                    .socket
                    .send(self.json.fill(sent % 1000, sent, now_ns()), zmq::DONTWAIT);
                sent += 1;
            }
        }
        (sent, start.elapsed())
    }
}

/// Sends probes from `send` until `ready` holds, or fails after `wait`.
pub(crate) fn await_probes(
    what: &str,
    wait: Duration,
    mut send: impl FnMut(),
    ready: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what}: probes never reached every subscriber within {wait:?}");
        }
        send();
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The load generator's own ceiling: one thread sending unthrottled for `duration` into a bare
/// SUB sink in the bench (its own context and thread), no broker in the way. In msg/s sent.
pub(crate) fn generator_ceiling(ctx: &zmq::Context, duration: Duration) -> anyhow::Result<f64> {
    let sink_ctx = zmq::Context::new();
    let sink = sink_ctx.socket(zmq::SUB)?;
    sink.set_subscribe(b"")?;
    sink.set_rcvhwm(0)?;
    sink.bind("tcp://127.0.0.1:*")?;
    let url = sink
        .get_last_endpoint()?
        .map_err(|_| anyhow::anyhow!("the sink's endpoint is not UTF-8"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let probed = Arc::new(AtomicBool::new(false));
    let drain = {
        let (stop, probed) = (stop.clone(), probed.clone());
        std::thread::spawn(move || {
            let mut msg = zmq::Message::new();
            while !stop.load(Ordering::Relaxed) {
                if sink.recv(&mut msg, zmq::DONTWAIT).is_ok() {
                    probed.store(true, Ordering::Relaxed);
                } else {
                    let _ = sink.poll(zmq::POLLIN, 10);
                }
            }
        })
    };
    let unused = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let mut g = Generator::new(ctx, Transport::Zmq, &url, unused, "bench", None);
    // Until the sink's subscription arrives a PUB drops everything, which costs nothing.
    await_probes(
        "generator ceiling",
        Duration::from_secs(10),
        || g.probe(),
        || probed.load(Ordering::Relaxed),
    )?;
    let (sent, took) = g.run(f64::INFINITY, duration, u64::MAX, 1000);
    drop(g);
    stop.store(true, Ordering::Relaxed);
    drain
        .join()
        .map_err(|_| anyhow::anyhow!("the sink thread panicked"))?;
    Ok(sent as f64 / took.as_secs_f64())
}

/// The subscribers' own ceiling: `n` subscribers as the scenarios start them (each its own
/// context and thread) read from a [`BarePub`] that one bench thread feeds unthrottled for
/// `duration` (high-water mark 100,000 like the brokers'; what a slow subscriber misses is
/// dropped). In msg/s: the least any subscriber received, over its own first-to-last span.
pub(crate) fn subscribers_ceiling(n: usize, duration: Duration) -> anyhow::Result<f64> {
    let mut publisher = BarePub::bind("bench", 100_000)?;
    let subs: Vec<_> = (0..n)
        .map(|_| subscriber(&publisher.url, "bench", false, None))
        .collect();
    await_probes(
        "subscribers' ceiling",
        Duration::from_secs(15),
        || publisher.probe(),
        || subs.iter().all(|s| s.synced() > 0),
    )?;
    publisher.run(f64::INFINITY, duration);
    let least = crate::load::SubscriberHandle::finish_all(subs)
        .into_iter()
        .map(|seen| match (seen.first_at, seen.last_at) {
            (Some(a), Some(b)) if b > a => seen.updates as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        })
        .fold(f64::INFINITY, f64::min);
    Ok(if least.is_finite() { least } else { 0.0 })
}

/// The same crowd as a scenario's, reading a [`BarePub`] the bench feeds at `rate` for
/// `duration`: what the bench's readers reach with nothing but libzmq in the way. Returns the
/// least fraction any socket received and the p99 of the sampled sockets, in ms.
pub(crate) fn crowd_ceiling(
    size: usize,
    sampled: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut publisher = BarePub::bind("bench", 100_000)?;
    let crowd = Crowd::start(&publisher.url, "bench", size, sampled);
    await_probes(
        &format!("the crowd of {size} alone"),
        Duration::from_secs(60),
        || publisher.probe(),
        || crowd.synced() == crowd.size(),
    )?;
    let (sent, _) = publisher.run(rate, duration);
    let seen = crowd.finish(sent)?;
    let least = seen.counts.iter().copied().min().unwrap_or(0);
    let mut lat = seen.latencies;
    Ok((
        least as f64 / sent.max(1) as f64,
        crate::load::percentile_ms(&mut lat, 99.0),
    ))
}

/// Raises this process's soft limit on open files to the hard limit (as the broker's binary
/// does): a crowd of 1,000 subscribers needs more than the usual 1,024 (a socket and a mailbox
/// each). Returns the limit now in force.
pub(crate) fn raise_open_files() -> Option<u64> {
    match thingsbus_broker::raise_open_file_limit() {
        thingsbus_broker::OpenFiles::Kept(limit)
        | thingsbus_broker::OpenFiles::Raised { to: limit, .. } => limit,
        thingsbus_broker::OpenFiles::Refused { from, error } => {
            eprintln!(
                "thingsbus-bench: could not raise the open-file limit to the hard limit: {error}"
            );
            Some(from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_over_several_readers_counts_every_update_on_every_socket() {
        let mut publisher = BarePub::bind("bench", 100_000).expect("binds");
        // 2 readers: the second holds the sockets beyond the first 250.
        let crowd = Crowd::start(&publisher.url, "bench", SOCKETS_PER_READER + 3, 4);
        await_probes(
            "test crowd",
            Duration::from_secs(30),
            || publisher.probe(),
            || crowd.synced() == crowd.size(),
        )
        .expect("every socket synced");
        let (sent, _) = publisher.run(2000.0, Duration::from_millis(100));
        assert!(sent > 0);
        let seen = crowd.finish(sent).expect("finishes");
        assert_eq!(seen.counts.len(), SOCKETS_PER_READER + 3);
        assert!(seen.counts.iter().all(|c| *c == sent), "{:?}", seen.counts);
        // 4 sampled sockets (0, 63, 126, 189, 252 of 253: every 63rd) record every update.
        assert_eq!(seen.latencies.len() as u64, 5 * sent);
    }

    #[test]
    fn a_crowd_missing_updates_still_finishes_and_shows_the_shortfall() {
        let mut publisher = BarePub::bind("bench", 100_000).expect("binds");
        let crowd = Crowd::start(&publisher.url, "bench", 2, 1);
        await_probes(
            "test crowd",
            Duration::from_secs(10),
            || publisher.probe(),
            || crowd.synced() == 2,
        )
        .expect("synced");
        let (sent, _) = publisher.run(1000.0, Duration::from_millis(50));
        let started = Instant::now();
        let seen = crowd.finish(sent + 10).expect("finishes");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(seen.counts.iter().all(|c| *c == sent), "{:?}", seen.counts);
    }
}
