//! The scenarios. Each starts its servers, drives them, and adds rows to the report.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::load::{percentile_ms, subscriber, subscriber_to, Generator, Transport};
use crate::report::Report;
use crate::servers::{Kind, Options, Server};
use crate::udp_send::kernel_drops;
use thingsbus_protocol::codec::UPDATE_PREFIX;

/// Loss above this fails a step.
const MAX_LOSS: f64 = 0.001;
/// p99 above this fails a step.
const MAX_P99_MS: f64 = 50.0;

/// What one run shares.
pub(crate) struct Bench {
    pub(crate) zmq: zmq::Context,
    pub(crate) seconds: f64,
    pub(crate) against: Vec<Kind>,
    pub(crate) report: Report,
    /// True with --seconds < 2: smaller directories, shorter soaks (a smoke run).
    pub(crate) smoke: bool,
    /// Highest sustained ZMQ rate per system, found by `ingest`.
    pub(crate) max_zmq: Vec<(Kind, f64)>,
    /// Steps' subscribers take only the messages that start with this (ZMQ's subscription
    /// prefix): empty for everything.
    pub(crate) subscription: &'static [u8],
}

/// One fixed-rate step.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) rate: f64,
    pub(crate) achieved: f64,
    pub(crate) loss: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    /// Datagrams the kernel dropped on the server's UDP input during the step (its receive
    /// queue was full): `/proc/net/udp`. Always 0 over ZMQ.
    pub(crate) kernel_drops: u64,
}

impl Step {
    fn passes(&self) -> bool {
        self.loss < MAX_LOSS
            && self.p99 < MAX_P99_MS
            && self.achieved >= self.rate * 0.97
            && self.kernel_drops == 0
    }
}

impl Bench {
    pub(crate) fn systems(&self) -> Vec<Kind> {
        let mut v = vec![Kind::Ours];
        v.extend(self.against.iter().copied().filter(|k| *k != Kind::Ours));
        v
    }

    fn secs(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// Connects `subs` subscribers and a generator, waits until probes reach every subscriber,
    /// sends at `rate` for the step's duration, and measures.
    pub(crate) fn step(
        &self,
        server: &Server,
        transport: Transport,
        subs: usize,
        rate: f64,
        latency: bool,
    ) -> anyhow::Result<Step> {
        self.step_between(server, server, transport, subs, rate, latency)
    }

    /// A step whose updates go in at `input` and are seen at `output` (another broker of a
    /// cluster, or the same).
    pub(crate) fn step_between(
        &self,
        input: &Server,
        output: &Server,
        transport: Transport,
        subs: usize,
        rate: f64,
        latency: bool,
    ) -> anyhow::Result<Step> {
        self.step_over(input, output, transport, subs, rate, latency, 1000)
    }

    /// [`Bench::step_between`], cycling over `things` namespaces.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step_over(
        &self,
        input: &Server,
        output: &Server,
        transport: Transport,
        subs: usize,
        rate: f64,
        latency: bool,
        things: u64,
    ) -> anyhow::Result<Step> {
        let server = output;
        let handles: Vec<_> = (0..subs)
            .map(|i| {
                subscriber_to(
                    &output.directory,
                    self.subscription,
                    "bench",
                    latency && i == 0,
                    output.keys.as_ref(),
                )
            })
            .collect();
        let mut generator = Generator::new(
            &self.zmq,
            transport,
            &input.input,
            input.udp,
            "bench",
            input.keys.as_ref(),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while handles.iter().any(|h| h.synced() == 0) {
            if Instant::now() > deadline {
                bail!(
                    "{}: probes never reached the subscribers",
                    server.kind.label()
                );
            }
            generator.probe();
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = self.secs();
        let udp_drops = || {
            (transport == Transport::Udp)
                .then(|| kernel_drops(input.udp.port()))
                .flatten()
        };
        let drops_before = udp_drops();
        let (sent, took) = std::thread::scope(|s| {
            s.spawn(|| generator.run(rate, secs, u64::MAX, things))
                .join()
        })
        .map_err(|_| anyhow::anyhow!("generator panicked"))?;
        let seen = crate::load::SubscriberHandle::finish_all(handles);
        let kernel_drops = match (drops_before, udp_drops()) {
            (Some(before), Some(after)) => after.saturating_sub(before),
            _ => 0,
        };
        let min_received = seen.iter().map(|s| s.updates).min().unwrap_or(0);
        let mut lat = seen
            .first()
            .map(|s| s.latencies.clone())
            .unwrap_or_default();
        let loss = if sent == 0 {
            1.0
        } else {
            1.0 - (min_received.min(sent) as f64 / sent as f64)
        };
        let (p50, p99, max) = if latency {
            (
                percentile_ms(&mut lat, 50.0),
                percentile_ms(&mut lat, 99.0),
                percentile_ms(&mut lat, 100.0),
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        Ok(Step {
            rate,
            achieved: sent as f64 / took.as_secs_f64(),
            loss,
            p50,
            p99,
            max,
            kernel_drops,
        })
    }

    /// The highest rate that passes, searched up and down by factors then refined by bisection.
    fn max_rate(
        &self,
        kind: Kind,
        transport: Transport,
        subs: usize,
    ) -> anyhow::Result<Option<Step>> {
        self.max_rate_with(kind, Options::default(), transport, subs)
    }

    pub(crate) fn max_rate_with(
        &self,
        kind: Kind,
        opts: Options,
        transport: Transport,
        subs: usize,
    ) -> anyhow::Result<Option<Step>> {
        let server = Server::start(kind, opts)?;
        let mut rate = 20_000.0;
        if self.smoke {
            // A smoke run proves each path still works: one step at the first rate, no search.
            let s = self.step(&server, transport, subs, rate, true)?;
            eprintln!(
                "    {} {} x{subs} @ {rate:.0}/s (smoke: one step): loss {:.4}%, p99 {:.2} ms{}",
                kind.label(),
                transport.label(),
                s.loss * 100.0,
                s.p99,
                drops_note(transport, &s),
            );
            return Ok(Some(s));
        }
        let mut best: Option<Step> = None;
        let mut fail: Option<f64> = None;
        for _ in 0..16 {
            let mut s = self.step(&server, transport, subs, rate, true)?;
            if !s.passes() {
                // One noisy step on a shared machine must not end the search: try again.
                s = self.step(&server, transport, subs, rate, true)?;
            }
            eprintln!(
                "    {} {} x{subs} @ {:.0}/s: loss {:.4}%, p99 {:.2} ms, achieved {:.0}/s{}",
                kind.label(),
                transport.label(),
                rate,
                s.loss * 100.0,
                s.p99,
                s.achieved,
                drops_note(transport, &s),
            );
            if s.passes() {
                best = Some(s);
                if fail.is_some() {
                    break;
                }
                rate *= 1.5;
            } else {
                fail = Some(rate);
                if best.is_some() {
                    break;
                }
                rate *= 0.6;
                if rate < 500.0 {
                    break;
                }
            }
        }
        if let (Some(b), Some(f)) = (best.clone(), fail) {
            let (mut lo, mut hi) = (b.rate, f);
            for _ in 0..2 {
                let mid = (lo + hi) / 2.0;
                let mut s = self.step(&server, transport, subs, mid, true)?;
                if !s.passes() {
                    s = self.step(&server, transport, subs, mid, true)?;
                }
                if s.passes() {
                    lo = mid;
                    best = Some(s);
                } else {
                    hi = mid;
                }
            }
        }
        Ok(best)
    }

    pub(crate) fn ingest(&mut self) -> anyhow::Result<()> {
        eprintln!("ingest: highest sustained rate to 1 subscriber (loss < 0.1 %, p99 < 50 ms)");
        for transport in [Transport::Zmq, Transport::Udp] {
            for kind in self.systems() {
                let metric = format!("{} sustained, 1 subscriber", transport.label());
                match self.max_rate(kind, transport, 1)? {
                    Some(s) => {
                        self.report.add("ingest", &metric, kind, s.rate, "msg/s");
                        if transport == Transport::Zmq {
                            self.max_zmq.push((kind, s.rate));
                        }
                    }
                    None => self.report.add("ingest", &metric, kind, 0.0, "msg/s"),
                }
            }
        }
        self.ceilings("ingest", 1)?;
        // Over UDP: unthrottled into a socket nobody reads (the kernel drops what does not fit),
        // so the figure is the generator's own, with no server taking a core from it.
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").context("binding a UDP sink")?;
        let mut g = Generator::new(
            &self.zmq,
            Transport::Udp,
            "",
            sink.local_addr()?,
            "bench",
            None,
        );
        let (sent, took) = g.run(f64::INFINITY, self.secs(), u64::MAX, 1000);
        self.report.ceiling(
            "ingest",
            &format!(
                "load generator alone (one thread, UDP sendmmsg batches of {}, unthrottled into \
                 an unread socket)",
                crate::udp_send::BATCH
            ),
            sent as f64 / took.as_secs_f64(),
            "msg/s",
        );
        self.report.note(
            "a UDP step passes only with no datagram dropped by the kernel on the server's \
             input (/proc/net/udp drops), besides loss < 0.1 % at the subscriber"
                .to_owned(),
        );
        Ok(())
    }

    /// The bench's own ceilings, recorded under `scenario`: the load generator unthrottled into
    /// a sink, and `subs` subscribers reading a bare libzmq PUB the bench feeds unthrottled.
    fn ceilings(&mut self, scenario: &str, subs: usize) -> anyhow::Result<()> {
        let generator = crate::crowd::generator_ceiling(&self.zmq, self.secs())?;
        self.report.ceiling(
            scenario,
            "load generator alone (one thread, ZMQ+JSON, unthrottled into a bare SUB sink)",
            generator,
            "msg/s",
        );
        let reading = crate::crowd::subscribers_ceiling(subs, self.secs())?;
        self.report.ceiling(
            scenario,
            &format!(
                "{subs} subscriber{} alone (each its own context, reading a bare libzmq PUB one \
                 bench thread feeds unthrottled; the least any received)",
                if subs == 1 { "" } else { "s" }
            ),
            reading,
            "msg/s",
        );
        Ok(())
    }

    pub(crate) fn fanout(&mut self) -> anyhow::Result<()> {
        eprintln!("fanout: highest sustained rate delivered to each of 10 subscribers");
        for kind in self.systems() {
            let rate = self
                .max_rate(kind, Transport::Zmq, 10)?
                .map_or(0.0, |s| s.rate);
            self.report.add(
                "fanout",
                "ZMQ+JSON sustained, to each of 10",
                kind,
                rate,
                "msg/s",
            );
        }
        self.ceilings("fanout", 10)?;
        Ok(())
    }

    /// Many subscribers at 1,000 updates/s, ours and the floor: every subscriber must receive
    /// every update; p99 sampled from ten subscribers; the server's CPU per delivered message.
    pub(crate) fn fanout_many(&mut self) -> anyhow::Result<()> {
        let sizes: &[usize] = if self.smoke { &[10, 100] } else { &[100, 1000] };
        let rate = 1000.0;
        eprintln!(
            "fanout-many: {sizes:?} subscribers at {rate:.0} updates/s, each must get every one"
        );
        let limit = crate::crowd::raise_open_files();
        let scenario = "fanout-many @ 1,000/s";
        for &n in sizes {
            for kind in self
                .systems()
                .into_iter()
                .filter(|k| matches!(k, Kind::Ours | Kind::Floor))
            {
                let server = Server::start(kind, Options::default())?;
                let crowd = crate::crowd::Crowd::start(&server.directory, "bench", n, 10);
                let mut generator = Generator::new(
                    &self.zmq,
                    Transport::Zmq,
                    &server.input,
                    server.udp,
                    "bench",
                    None,
                );
                crate::crowd::await_probes(
                    &format!("{} with {n} subscribers", kind.label()),
                    Duration::from_secs(60),
                    || generator.probe(),
                    || crowd.synced() == crowd.size(),
                )
                .with_context(|| format!("open files: {limit:?}"))?;
                let cpu = server.cpu_seconds();
                let (sent, took) = generator.run(rate, self.secs(), u64::MAX, 1000);
                let seen = crowd.finish(sent)?;
                let cpu = server.cpu_seconds() - cpu;
                let least = seen.counts.iter().copied().min().unwrap_or(0);
                let short = seen.counts.iter().filter(|c| **c < sent).count();
                let fraction = if sent == 0 {
                    0.0
                } else {
                    least as f64 / sent as f64
                };
                let mut lat = seen.latencies;
                let samples = lat.len();
                let p99 = percentile_ms(&mut lat, 99.0);
                self.report.add(
                    scenario,
                    &format!("{n} subscribers: least fraction of updates received"),
                    kind,
                    fraction,
                    "fraction",
                );
                self.report.add(
                    scenario,
                    &format!("{n} subscribers: p99 (10 sampled subscribers)"),
                    kind,
                    p99,
                    "ms",
                );
                self.report.add(
                    scenario,
                    &format!("{n} subscribers: server CPU per delivered message"),
                    kind,
                    cpu * 1e9 / (sent as f64 * n as f64),
                    "ns",
                );
                eprintln!(
                    "    {} x{n}: sent {sent} in {:.2} s, least received {least}, {samples} latency samples, server CPU {cpu:.2} s",
                    kind.label(),
                    took.as_secs_f64()
                );
                if short > 0 {
                    self.report.note(format!(
                        "FAILED fanout-many, {} with {n} subscribers: {short} subscribers missed \
                         updates (the least got {least} of {sent})",
                        kind.label()
                    ));
                }
            }
            let (fraction, p99) = crate::crowd::crowd_ceiling(n, 10, rate, self.secs())?;
            self.report.ceiling(
                scenario,
                &format!(
                    "{n} subscribers alone (the same reader threads, reading a bare libzmq PUB \
                     the bench feeds at 1,000/s): p99 of 10 sampled"
                ),
                p99,
                "ms",
            );
            self.report.ceiling(
                scenario,
                &format!("{n} subscribers alone: least fraction of updates received"),
                fraction,
                "fraction",
            );
        }
        self.report.note(
            "fanout-many: subscribers are SUB sockets spread over reader threads of the bench \
             (250 per thread, each thread its own libzmq context), polled with zmq_poll; CPU per \
             delivered message = the server process's CPU time while sending and draining / \
             (updates sent × subscribers)",
        );
        Ok(())
    }

    fn max_for(&mut self, kind: Kind) -> anyhow::Result<f64> {
        if let Some((_, r)) = self.max_zmq.iter().find(|(k, _)| *k == kind) {
            return Ok(*r);
        }
        let r = self
            .max_rate(kind, Transport::Zmq, 1)?
            .map_or(0.0, |s| s.rate);
        self.max_zmq.push((kind, r));
        Ok(r)
    }

    pub(crate) fn latency(&mut self) -> anyhow::Result<()> {
        eprintln!("latency: end to end, adaptor send to subscriber receive");
        for kind in self.systems() {
            let server = Server::start(kind, Options::default())?;
            let s = self.step(&server, Transport::Zmq, 1, 1000.0, true)?;
            self.report
                .add("latency @ 1,000/s", "p50", kind, s.p50, "ms");
            self.report
                .add("latency @ 1,000/s", "p99", kind, s.p99, "ms");
            self.report
                .add("latency @ 1,000/s", "max", kind, s.max, "ms");
            drop(server);
            let half = self.max_for(kind)? / 2.0;
            if half > 0.0 {
                let server = Server::start(kind, Options::default())?;
                let s = self.step(&server, Transport::Zmq, 1, half, true)?;
                self.report
                    .add("latency @ 50 % of max", "p50", kind, s.p50, "ms");
                self.report
                    .add("latency @ 50 % of max", "p99", kind, s.p99, "ms");
                self.report
                    .add("latency @ 50 % of max", "max", kind, s.max, "ms");
            }
        }
        Ok(())
    }

    /// Sends `n` distinct things and waits until a subscriber has seen them all.
    pub(crate) fn fill(
        &self,
        server: &Server,
        n: u64,
        rate: f64,
        prefix: &str,
    ) -> anyhow::Result<()> {
        let sub = subscriber(&server.directory, prefix, false, server.keys.as_ref());
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &server.input,
            server.udp,
            prefix,
            server.keys.as_ref(),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while sub.synced() == 0 {
            if Instant::now() > deadline {
                bail!("fill: probes never arrived");
            }
            g.probe();
            std::thread::sleep(Duration::from_millis(20));
        }
        let (sent, _) = g.run(rate, Duration::from_secs(600), n, n);
        let seen = sub.finish();
        if seen.updates < sent {
            bail!(
                "fill: {} of {} things arrived; lower the fill rate",
                seen.updates,
                sent
            );
        }
        Ok(())
    }

    pub(crate) fn fill_rate(kind: Kind) -> f64 {
        match kind {
            Kind::Python => 8_000.0,
            _ => 150_000.0,
        }
    }

    pub(crate) fn latejoin(&mut self) -> anyhow::Result<()> {
        eprintln!("latejoin: time from connect until a new client's mirror holds every thing");
        let interval = 2.0;
        let sizes: &[u64] = if self.smoke {
            &[1_000, 20_000]
        } else {
            &[1_000, 100_000, 1_000_000]
        };
        for kind in self.systems().into_iter().filter(|k| *k != Kind::Floor) {
            // Python 0.2.1 fills at ~8,000 things/s and sends a million in one message: a
            // million things is ours alone.
            for &n in sizes
                .iter()
                .filter(|&&n| kind == Kind::Ours || n <= 100_000)
            {
                let server = Server::start(
                    kind,
                    Options {
                        snapshot_interval_s: interval,
                        ..Options::default()
                    },
                )?;
                self.fill(&server, n, Self::fill_rate(kind), "late")?;
                // A million things take longer to send than the 2 s interval: the periodic
                // path is measured up to 100,000.
                let mut paths = if n <= 100_000 {
                    vec![("periodic snapshot every 2 s", None)]
                } else {
                    Vec::new()
                };
                if let Some(url) = &server.snapshot {
                    paths.insert(0, ("instant snapshot request", Some(url.clone())));
                }
                for (label, snapshot) in paths {
                    // The instant path is quick: the median of five joins, so one scheduling
                    // hiccup on a shared machine does not make the figure.
                    let took = if snapshot.is_some() {
                        let mut runs = (0..5)
                            .map(|_| join_time(&server.directory, snapshot.as_deref(), n))
                            .collect::<anyhow::Result<Vec<_>>>()?;
                        runs.sort();
                        self.report.note(format!(
                            "latejoin {n} things, {} ({}): five joins, {:.1}–{:.1} ms",
                            label,
                            kind.label(),
                            runs[0].as_secs_f64() * 1e3,
                            runs[4].as_secs_f64() * 1e3
                        ));
                        runs[2]
                    } else {
                        join_time(&server.directory, snapshot.as_deref(), n)?
                    };
                    self.report.add(
                        "latejoin",
                        &format!("{n} things, {label}"),
                        kind,
                        took.as_secs_f64() * 1e3,
                        "ms",
                    );
                }
                if let Some(url) = &server.snapshot {
                    let took = ls_json_time(&server.directory, url, n)?;
                    self.report.add(
                        "latejoin",
                        &format!("{n} things, `thingsbus ls --json` to /dev/null"),
                        kind,
                        took.as_secs_f64() * 1e3,
                        "ms",
                    );
                }
            }
        }
        self.report.note(
            "latejoin: a fresh thingsbus-client (Rust) connects, asks for the snapshot (or, on the periodic \
             path, waits for the next one: uniform over the interval) and has every thing in its mirror",
        );
        Ok(())
    }

    pub(crate) fn snapshot_stall(&mut self) -> anyhow::Result<()> {
        let sizes: &[u64] = if self.smoke {
            &[20_000]
        } else {
            &[100_000, 1_000_000]
        };
        for &n in sizes {
            self.snapshot_stall_at(n)?;
        }
        Ok(())
    }

    fn snapshot_stall_at(&mut self, n: u64) -> anyhow::Result<()> {
        eprintln!(
            "snapshot-stall: live-update latency while a {n}-thing snapshot goes out every second"
        );
        let systems = self
            .systems()
            .into_iter()
            .filter(|k| *k != Kind::Floor && (*k == Kind::Ours || n <= 100_000));
        for kind in systems.collect::<Vec<_>>() {
            // The second step's latency subscriber takes only live updates (our broker writes each
            // with the same prefix; ours only), so what it measures is the broker's stall, not
            // its own reading of every snapshot chunk queued in front of an update.
            let steps: [(&str, f64, &'static [u8]); 3] = [
                ("snapshots every 1 s", 1.0, b""),
                (
                    "snapshots every 1 s, subscriber to live updates only",
                    1.0,
                    UPDATE_PREFIX,
                ),
                ("no snapshots (baseline)", 3600.0, b""),
            ];
            let steps = steps
                .into_iter()
                .filter(|(_, _, subscription)| kind == Kind::Ours || subscription.is_empty());
            for (label, interval, subscription) in steps {
                let server = Server::start(
                    kind,
                    Options {
                        snapshot_interval_s: interval,
                        ..Options::default()
                    },
                )?;
                self.fill(&server, n, Self::fill_rate(kind), "big")?;
                let saved = self.seconds;
                self.seconds = (saved * 2.0).max(3.0);
                self.subscription = subscription;
                let s = self.step(&server, Transport::Zmq, 1, 1000.0, true);
                self.seconds = saved;
                self.subscription = b"";
                let s = s?;
                let scenario = format!("snapshot-stall ({n} things, live 1,000/s)");
                self.report
                    .add(&scenario, &format!("p99, {label}"), kind, s.p99, "ms");
                self.report
                    .add(&scenario, &format!("max, {label}"), kind, s.max, "ms");
            }
        }
        Ok(())
    }

    pub(crate) fn memory(&mut self) -> anyhow::Result<()> {
        eprintln!("memory: resident memory by directory size, and with a stuck subscriber");
        let big: u64 = if self.smoke { 200_000 } else { 1_000_000 };
        let server = Server::start(Kind::Ours, Options::default())?;
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = server.rss_kib();
        self.fill(&server, 100_000, 150_000.0, "mem")?;
        let rss100k = server.rss_kib();
        self.fill(&server, big, 150_000.0, "mem")?;
        let rss_big = server.rss_kib();
        // Payload as stored: the update as published (ns, data, ts, url, seq), about this long.
        let sample = crate::load::JsonTemplate::new("mem").fill(1, 1, 1).len() as f64;
        self.report.add(
            "memory",
            "RSS, empty",
            Kind::Ours,
            rss0 as f64 / 1024.0,
            "MiB",
        );
        self.report.add(
            "memory",
            "RSS, 100,000 things",
            Kind::Ours,
            rss100k as f64 / 1024.0,
            "MiB",
        );
        self.report.add(
            "memory",
            &format!("RSS, {big} things"),
            Kind::Ours,
            rss_big as f64 / 1024.0,
            "MiB",
        );
        let per_thing = (rss_big.saturating_sub(rss0) as f64 * 1024.0) / big as f64;
        self.report.add(
            "memory",
            "bytes per thing beyond the payload",
            Kind::Ours,
            per_thing - sample,
            "B",
        );
        self.report.note(format!(
            "bytes per thing = (RSS at {big} − RSS empty) / {big} − {sample:.0} B of payload (the update as received)"
        ));
        drop(server);

        // A stuck subscriber under full load.
        let soak = Duration::from_secs_f64(if self.smoke { 3.0 } else { 30.0 });
        let rate = self.max_for(Kind::Ours)?.max(20_000.0) * 0.8;
        let server = Server::start(
            Kind::Ours,
            Options {
                subscriber_hwm: 10_000,
                ..Options::default()
            },
        )?;
        let stuck = self.zmq.socket(zmq::SUB)?;
        stuck.set_subscribe(b"")?;
        stuck.set_rcvhwm(1)?;
        stuck.set_rcvbuf(4096)?;
        stuck.connect(&server.directory)?;
        let reader = subscriber(&server.directory, "stuck", false, None);
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &server.input,
            server.udp,
            "stuck",
            None,
        );
        while reader.synced() == 0 {
            g.probe();
            std::thread::sleep(Duration::from_millis(20));
        }
        let rss_start = server.rss_kib();
        let mut rss_max = rss_start;
        let started = Instant::now();
        std::thread::scope(|s| {
            let gen = s.spawn(|| g.run(rate, soak, u64::MAX, 1000));
            while !gen.is_finished() {
                rss_max = rss_max.max(server.rss_kib());
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let rss_end = server.rss_kib();
        let seen = reader.finish();
        self.report.add(
            "memory, stuck subscriber",
            "RSS at start",
            Kind::Ours,
            rss_start as f64 / 1024.0,
            "MiB",
        );
        self.report.add(
            "memory, stuck subscriber",
            &format!(
                "RSS after {:.0} s at {:.0}/s",
                started.elapsed().as_secs_f64(),
                rate
            ),
            Kind::Ours,
            rss_end as f64 / 1024.0,
            "MiB",
        );
        self.report.add(
            "memory, stuck subscriber",
            "RSS max",
            Kind::Ours,
            rss_max as f64 / 1024.0,
            "MiB",
        );
        self.report.add(
            "memory, stuck subscriber",
            "updates the other subscriber got",
            Kind::Ours,
            seen.updates as f64,
            "msgs",
        );
        drop(stuck);
        Ok(())
    }
}

/// Checks the Python broker can run, or says why it is skipped.
pub(crate) fn python_available() -> anyhow::Result<()> {
    crate::servers::python()
        .map(|_| ())
        .context("python 0.2.1 not installed: run scripts/python-peers.sh (it installs thingsbus==0.2.1 into target/py02)")
}

/// Connects a fresh client and returns how long until its mirror holds `n` things under `late`.
/// What `thingsbus ls --json > /dev/null` does, in process: connect asking for stale things
/// too, wait for the directory, walk it and write the JSON through a 64 KiB buffer.
fn ls_json_time(directory: &str, snapshot: &str, n: u64) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        let client = thingsbus_client::Client::builder()
            .url(directory)
            .snapshot_url(snapshot)
            .include_stale(true)
            .connect()
            .await?;
        if !client.wait_filled(Duration::from_secs(60)).await {
            bail!("client never filled");
        }
        let things = client.walk("");
        let mut out =
            std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create("/dev/null")?);
        thingsbus_adaptors_generic::listing::write_json(&mut out, &things)?;
        out.flush()?;
        let took = started.elapsed();
        if (things.len() as u64) < n {
            bail!("ls listed {} of {n} things", things.len());
        }
        Ok(took)
    })
}

fn join_time(directory: &str, snapshot: Option<&str>, n: u64) -> anyhow::Result<Duration> {
    join_time_under(directory, snapshot, "late", n)
}

/// Connects a fresh client and returns how long until its mirror holds `n` things under `prefix`.
pub(crate) fn join_time_under(
    directory: &str,
    snapshot: Option<&str>,
    prefix: &str,
    n: u64,
) -> anyhow::Result<Duration> {
    join_time_with(directory, snapshot, prefix, n, None)
}

/// [`join_time_under`], the client speaking CURVE with `keys` when given.
pub(crate) fn join_time_with(
    directory: &str,
    snapshot: Option<&str>,
    prefix: &str,
    n: u64,
    keys: Option<thingsbus_protocol::transport::ClientKeys>,
) -> anyhow::Result<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let started = Instant::now();
        let builder = thingsbus_client::Client::builder().url(directory);
        let builder = match snapshot {
            Some(url) => builder.snapshot_url(url),
            None => builder.instant_snapshot(false),
        };
        let builder = match keys {
            Some(keys) => builder.curve(keys),
            None => builder,
        };
        let client = builder.connect().await?;
        if !client.wait_filled(Duration::from_secs(60)).await {
            bail!("client never filled");
        }
        let took = started.elapsed();
        let got = client.walk(prefix).len() as u64;
        if got < n {
            bail!("client has {got} of {n} things");
        }
        Ok(took)
    })
}

/// `, kernel drops N` for a UDP step's progress line.
fn drops_note(transport: Transport, s: &Step) -> String {
    if transport == Transport::Udp {
        format!(", kernel drops {}", s.kernel_drops)
    } else {
        String::new()
    }
}
