//! The `cluster` scenario (`--cluster`, NATS JetStream key-value), each figure beside NATS alone
//! (a plain key-value put → watch through the same servers) measured in the same run:
//! - propagation from an update at broker A to a subscriber of broker B, at 1,000 updates/s;
//! - distinct-thing updates per second the cluster absorbs with 3 replicas (A's input to B's
//!   subscriber; NATS alone: pipelined puts to a watcher);
//! - how long a new broker takes to serve with 100,000 things in the bucket;
//! - local ingest of a broker with `--cluster` on while its writes keep NATS busy, beside the
//!   same broker without it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt as _;

use thingsbus_tests::nats::{NatsCluster, NatsOptions};

use crate::load::{now_ns, percentile_ms, subscriber, Generator, Transport};
use crate::scenarios::Bench;
use crate::servers::{ClusterOptions, Kind, Options, Server};

/// `n` `nats-server -js` on 127.0.0.1 (one alone, or several as one cluster), on the CPUs `cpus`
/// only when given (`taskset -c`); killed on drop.
fn nats_servers(n: usize, cpus: Option<&str>) -> anyhow::Result<NatsCluster> {
    let options = NatsOptions {
        binary: "nats-server".into(),
        cpus: cpus.map(str::to_owned),
        ..NatsOptions::default()
    };
    NatsCluster::try_start(n, "bench", &options).map_err(anyhow::Error::msg)
}

fn nats_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn clustered(urls: &[String], node: &str, flush_ms: f64, replicas: usize) -> Options {
    Options {
        cluster: Some(ClusterOptions {
            urls: urls.to_vec(),
            node: node.into(),
            flush_ms,
            replicas,
        }),
        ..Options::default()
    }
}

/// Opens (creating it with the broker's settings: one value per key) a bucket, retrying while
/// a new cluster elects its leaders.
async fn bucket(
    urls: &[String],
    name: &str,
    replicas: usize,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let addrs: Vec<async_nats::ServerAddr> =
        urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    let client = async_nats::connect(addrs).await?;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let made = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: format!("KV_{name}"),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => return Ok(js.get_key_value(name).await?),
            Err(e) if Instant::now() > deadline => bail!("bucket {name}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// NATS alone: puts at `rate` per second (keys cycling over 1,000) with the send time inside,
/// a watcher measuring each one's delay. Returns (p50, p99) in ms.
async fn nats_propagation(urls: &[String], rate: f64, seconds: f64) -> anyhow::Result<(f64, f64)> {
    let kv = bucket(urls, "bench_alone", 1).await?;
    let mut watch = kv.watch(">").await?;
    let watcher = tokio::spawn(async move {
        let mut lat = Vec::new();
        while let Ok(Some(Ok(e))) =
            tokio::time::timeout(Duration::from_millis(500), watch.next()).await
        {
            if let Some(t) = std::str::from_utf8(&e.value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                lat.push(now_ns().saturating_sub(t));
            }
        }
        lat
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            kv.put(format!("p.t{}", sent % 1000), now_ns().to_string().into())
                .await?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut lat = watcher.await?;
    if lat.is_empty() {
        bail!("the NATS watcher saw nothing");
    }
    Ok((percentile_ms(&mut lat, 50.0), percentile_ms(&mut lat, 99.0)))
}

/// NATS alone with `urls` as one cluster: `n` distinct keys put with 256 in flight until a
/// watcher has them all (puts/s), then a fresh watcher loading them all (s).
async fn nats_absorb_and_load(
    urls: &[String],
    n: u64,
    replicas: usize,
) -> anyhow::Result<(f64, f64)> {
    let kv = bucket(urls, "bench_alone3", replicas).await?;
    let mut watch = kv.watch(">").await?;
    let value = UPDATE_VALUE.to_vec();
    let started = Instant::now();
    let puts = futures_util::stream::iter(0..n)
        .map(|i| {
            let kv = kv.clone();
            let value = value.clone();
            async move {
                kv.put(format!("absorb.t{i}"), value.into())
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>();
    let seen = async {
        let mut seen = 0u64;
        while seen < n {
            match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                Ok(Some(Ok(_))) => seen += 1,
                _ => break,
            }
        }
        seen
    };
    let (results, seen) = tokio::join!(puts, seen);
    let took = started.elapsed().as_secs_f64();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        bail!("a NATS put failed: {e}");
    }
    if seen < n {
        bail!("the NATS watcher saw {seen} of {n}");
    }
    let absorb = n as f64 / took;
    let started = Instant::now();
    let mut watch = kv.watch_with_history(">").await?;
    let mut loaded = 0u64;
    while let Some(Ok(e)) = watch.next().await {
        loaded += 1;
        if e.delta == 0 {
            break;
        }
    }
    let load = started.elapsed().as_secs_f64();
    if loaded < n {
        bail!("a fresh NATS watcher loaded {loaded} of {n}");
    }
    Ok((absorb, load))
}

/// A value the size of a typical update as the broker writes it.
const UPDATE_VALUE: &[u8] = br#"{"o":"a","u":{"type":"thing_update","ns":"absorb.t0000001","ts":1764400000.123,"data":{"n":1,"t":12345678901},"documentation_url":null,"seq":1}}"#;

impl Bench {
    /// The highest sustained ZMQ ingest of our broker started with `opts`; in a smoke run, one
    /// step at 20,000/s only (the search takes minutes).
    fn ingest_rate(&self, opts: Options) -> anyhow::Result<f64> {
        if self.smoke {
            let server = Server::start(Kind::Ours, opts)?;
            let s = self.step_between(&server, &server, Transport::Zmq, 1, 20_000.0, true)?;
            return Ok(if s.loss < 0.001 { s.achieved } else { 0.0 });
        }
        Ok(self
            .max_rate_with(Kind::Ours, opts, Transport::Zmq, 1)?
            .map_or(0.0, |s| s.rate))
    }

    /// Our broker's CPU time per update delivered, in microseconds, at a fixed `rate` for one
    /// step: steadier than a maximum-rate search for comparing two configurations.
    fn cpu_per_update(&self, opts: Options, rate: f64) -> anyhow::Result<f64> {
        let server = Server::start(Kind::Ours, opts)?;
        let before = server.cpu_seconds();
        let s = self.step_between(&server, &server, Transport::Zmq, 1, rate, false)?;
        let used = server.cpu_seconds() - before;
        let updates = s.achieved * self.seconds * (1.0 - s.loss);
        Ok(if updates > 0.0 {
            used / updates * 1e6
        } else {
            0.0
        })
    }

    pub(crate) fn cluster(&mut self) -> anyhow::Result<()> {
        eprintln!("cluster: brokers sharing a NATS JetStream bucket, beside NATS alone");
        if !nats_installed() {
            self.report
                .note("cluster skipped: nats-server not installed (apt install nats-server)");
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        self.propagation(&rt)?;
        self.absorb_load_ingest(&rt)?;
        if !self.smoke {
            self.million()?;
        }
        Ok(())
    }

    /// A million things through the cluster (one NATS server, one replica: the bucket's own
    /// speed is measured above): broker A takes them in, broker B shows they are all in the
    /// bucket, then a new broker C starts on it. Reports C's start until a client of C holds
    /// them all, and C's resident memory then.
    fn million(&mut self) -> anyhow::Result<()> {
        let n: u64 = 1_000_000;
        let nats = nats_servers(1, None)?;
        let urls = nats.urls();
        let a = Server::start(Kind::Ours, clustered(&urls, "a", 50.0, 1))?;
        let b = Server::start(Kind::Ours, clustered(&urls, "b", 50.0, 1))?;
        let sub = subscriber(&b.directory, "million", false, b.keys.as_ref());
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &a.input,
            a.udp,
            "million",
            a.keys.as_ref(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while sub.synced() == 0 {
            if Instant::now() > deadline {
                bail!("cluster, a million: probes never went from A to B");
            }
            g.probe();
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let (sent, _) = g.run(100_000.0, Duration::from_secs(600), n, n);
        let deadline = Instant::now() + Duration::from_secs(600);
        while sub.updates() < sent {
            if Instant::now() > deadline {
                bail!(
                    "cluster, a million: B saw {} of {sent} things",
                    sub.updates()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let absorbed = n as f64 / started.elapsed().as_secs_f64();
        drop(sub.finish());
        drop((a, b));
        self.report.add(
            "cluster",
            "1,000,000 distinct things, 1 replica, absorbed",
            Kind::Ours,
            absorbed,
            "msg/s",
        );
        let started = Instant::now();
        let c = Server::start(Kind::Ours, clustered(&urls, "c", 50.0, 1))?;
        let ready = started.elapsed();
        let joined =
            crate::scenarios::join_time_under(&c.directory, c.snapshot.as_deref(), "million", n)?;
        self.report.add(
            "cluster",
            "new broker: start → a client holds 1,000,000 things",
            Kind::Ours,
            (ready + joined).as_secs_f64() * 1e3,
            "ms",
        );
        self.report.add(
            "cluster",
            "new broker holding 1,000,000 things: RSS",
            Kind::Ours,
            c.rss_kib() as f64 / 1024.0,
            "MiB",
        );
        Ok(())
    }

    fn propagation(&mut self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let nats = nats_servers(1, None)?;
        let urls = nats.urls();
        let rate = 1_000.0;
        for flush_ms in [1.0, 50.0] {
            let a = Server::start(Kind::Ours, clustered(&urls, "a", flush_ms, 1))?;
            let b = Server::start(Kind::Ours, clustered(&urls, "b", flush_ms, 1))?;
            let s = self.step_between(&a, &b, Transport::Zmq, 1, rate, true)?;
            if s.loss > 0.001 {
                self.report.note(format!(
                    "cluster propagation (flush {flush_ms} ms): {:.2} % lost",
                    s.loss * 100.0
                ));
            }
            for (p, v) in [("p50", s.p50), ("p99", s.p99)] {
                self.report.add(
                    "cluster",
                    &format!("propagation A → B at 1,000/s, {p} (--cluster-flush {flush_ms} ms)"),
                    Kind::Ours,
                    v,
                    "ms",
                );
            }
        }
        let (p50, p99) = rt.block_on(nats_propagation(&urls, rate, self.seconds))?;
        for (p, v) in [("p50", p50), ("p99", p99)] {
            self.report.add(
                "cluster",
                &format!("propagation A → B at 1,000/s, {p} (--cluster-flush 1 ms)"),
                Kind::Nats,
                v,
                "ms",
            );
        }
        Ok(())
    }

    fn absorb_load_ingest(&mut self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let n: u64 = if self.smoke { 10_000 } else { 100_000 };
        let nats = nats_servers(3, None)?;
        let urls = nats.urls();
        // The brokers wait (and retry) while the new cluster elects its leaders.
        let a = Server::start(Kind::Ours, clustered(&urls, "a", 50.0, 3))?;
        let b = Server::start(Kind::Ours, clustered(&urls, "b", 50.0, 3))?;
        let sub = subscriber(&b.directory, "absorb", false, b.keys.as_ref());
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &a.input,
            a.udp,
            "absorb",
            a.keys.as_ref(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while sub.synced() == 0 {
            if Instant::now() > deadline {
                bail!("cluster: probes never went from A to B");
            }
            g.probe();
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let (sent, _) = g.run(f64::INFINITY, Duration::from_secs(600), n, n);
        let deadline = Instant::now() + Duration::from_secs(120);
        while sub.updates() < sent {
            if Instant::now() > deadline {
                bail!("cluster: B saw {} of {sent} things", sub.updates());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = started.elapsed().as_secs_f64();
        drop(sub.finish());
        let metric = format!("{n} distinct things, 3 replicas, absorbed");
        self.report
            .add("cluster", &metric, Kind::Ours, n as f64 / took, "msg/s");

        // A new broker: from its start until a client of it has every thing.
        let started = Instant::now();
        let c = Server::start(Kind::Ours, clustered(&urls, "c", 50.0, 3))?;
        let ready = started.elapsed();
        let joined =
            crate::scenarios::join_time_under(&c.directory, c.snapshot.as_deref(), "absorb", n)?;
        let load_metric = format!("new broker: start → a client holds {n} things");
        self.report.add(
            "cluster",
            &load_metric,
            Kind::Ours,
            (ready + joined).as_secs_f64() * 1e3,
            "ms",
        );

        let (absorb, load) = rt.block_on(nats_absorb_and_load(&urls, n, 3))?;
        self.report
            .add("cluster", &metric, Kind::Nats, absorb, "msg/s");
        self.report
            .add("cluster", &load_metric, Kind::Nats, load * 1e3, "ms");
        drop((a, b, c));

        // Local ingest with --cluster on and its writes keeping NATS busy, beside none, and
        // beside NATS unreachable (what the broker's own side of the cluster costs).
        let (cpu0, wall0) = (nats.cpu_seconds(), Instant::now());
        let with = self.ingest_rate(clustered(&urls, "ingest", 50.0, 3))?;
        let nats_cores = (nats.cpu_seconds() - cpu0) / wall0.elapsed().as_secs_f64();
        let away = self.ingest_rate(clustered(
            &["nats://127.0.0.1:1".to_owned()],
            "away",
            50.0,
            1,
        ))?;
        let without = self.ingest_rate(Options::default())?;
        self.report.add(
            "cluster",
            "local ZMQ ingest, --cluster on (3 replicas, 1,000 things)",
            Kind::Ours,
            with,
            "msg/s",
        );
        self.report.add(
            "cluster",
            "local ZMQ ingest, --cluster on, NATS unreachable",
            Kind::Ours,
            away,
            "msg/s",
        );
        self.report.add(
            "cluster",
            "local ZMQ ingest, no --cluster",
            Kind::Ours,
            without,
            "msg/s",
        );
        // What the broker itself spends per local update, at one fixed rate, with --cluster on
        // (NATS busy with its writes) and without: the cost of the cluster to local service.
        let rate = if self.smoke { 20_000.0 } else { 200_000.0 };
        let cpu_with = self.cpu_per_update(clustered(&urls, "cpu", 50.0, 3), rate)?;
        let cpu_without = self.cpu_per_update(Options::default(), rate)?;
        for (metric, v) in [
            (
                "broker CPU per local update at a fixed rate, --cluster on (NATS busy)",
                cpu_with,
            ),
            (
                "broker CPU per local update at a fixed rate, no --cluster",
                cpu_without,
            ),
        ] {
            self.report.add("cluster", metric, Kind::Ours, v, "µs");
        }
        self.report.note(format!(
            "cluster: at {:.0} k updates/s the broker spent {cpu_with:.2} µs of CPU per local update with \
             --cluster on and {cpu_without:.2} µs without ({:+.0} %): all its threads, the cluster's included",
            rate / 1e3,
            if cpu_without > 0.0 { (cpu_with / cpu_without - 1.0) * 100.0 } else { 0.0 }
        ));
        // The same, the broker on CPU 0 and three NATS servers (busy with its writes) on CPU 1:
        // what the broker's own side costs when NATS does not take its CPU, as on a deployment
        // where NATS runs elsewhere.
        drop(nats);
        let pinned_nats = nats_servers(3, Some("1"))?;
        let on_cpu0 = |cluster: Option<&NatsCluster>| Options {
            cpus: Some("0"),
            ..cluster.map_or_else(Options::default, |n| {
                clustered(&n.urls(), "pinned", 50.0, 3)
            })
        };
        let pinned_with = self.ingest_rate(on_cpu0(Some(&pinned_nats)))?;
        let pinned_without = self.ingest_rate(on_cpu0(None))?;
        self.report.add(
            "cluster",
            "local ZMQ ingest, broker on CPU 0, --cluster on, 3 NATS servers busy on CPU 1",
            Kind::Ours,
            pinned_with,
            "msg/s",
        );
        self.report.add(
            "cluster",
            "local ZMQ ingest, broker on CPU 0, no --cluster",
            Kind::Ours,
            pinned_without,
            "msg/s",
        );
        self.report.note(format!(
            "cluster: with the broker and NATS on separate CPUs, local ingest with --cluster on is {:.0} % of the same broker without it",
            if pinned_without > 0.0 { pinned_with / pinned_without * 100.0 } else { 0.0 }
        ));
        let pct = |v: f64| {
            if without > 0.0 {
                v / without * 100.0
            } else {
                0.0
            }
        };
        self.report.note(format!(
            "cluster: local ingest is {:.0} % of the same broker without --cluster while its writes keep \
             3 NATS servers busy on the same cores (they used {nats_cores:.2} cores meanwhile), and {:.0} % \
             with NATS unreachable{}",
            pct(with),
            pct(away),
            if self.smoke {
                " (smoke run: one step at 20,000/s each, not a search)"
            } else {
                ""
            }
        ));
        Ok(())
    }
}
