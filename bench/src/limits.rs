//! The `limits` scenario: what the broker's bounds cost. Refusing an update at `--max-things`
//! must be no dearer than accepting one (a full broker under a flood of new names keeps its
//! pace), and a journal on a disk busy with another writer must not slow ingest (the journal
//! falls behind instead, and says by how much).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::load::{Generator, Transport};
use crate::scenarios::Bench;
use crate::servers::{Kind, Options, Server};

/// A counter from [`Server::stats`].
fn counter(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// Waits until `done(stats)` holds (the broker took in what was sent), at most 30 s.
fn drained(server: &mut Server, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = server.stats()?;
        if done(&s) {
            return Ok(s);
        }
        if Instant::now() > end {
            bail!("the broker did not take in what was sent within 30 s: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes and syncs 8 MiB at a time in `dir` until `stop`: another program keeping the disk
/// busy, as a backup or a database would.
fn busy_disk(dir: PathBuf, stop: &AtomicBool) -> anyhow::Result<u64> {
    let path = dir.join("disk-hog");
    let chunk = vec![0x5au8; 8 << 20];
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut f = std::fs::File::create(&path).context("disk hog file")?;
        for _ in 0..32 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            f.write_all(&chunk)?;
            f.sync_data()?;
            written += chunk.len() as u64;
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(written)
}

impl Bench {
    pub(crate) fn limits(&mut self) -> anyhow::Result<()> {
        let cap: u64 = if self.smoke { 10_000 } else { 100_000 };
        let rate = if self.smoke { 20_000.0 } else { 40_000.0 };
        eprintln!("limits: ingest at --max-things {cap}, and with the journal on a busy disk");
        self.at_the_cap(cap, rate)?;
        self.journal_on_a_busy_disk(rate)?;
        Ok(())
    }

    /// CPU per update accepted (room left) and refused (`--max-things` reached, every update a
    /// new thing), at the same rate.
    fn at_the_cap(&mut self, cap: u64, rate: f64) -> anyhow::Result<()> {
        let secs = Duration::from_secs_f64(self.seconds.max(1.0));
        // Room: updates cycle over `cap` things, all accepted.
        let mut room = Server::start(
            Kind::Ours,
            Options {
                max_things: Some(cap * 2),
                ..Options::default()
            },
        )?;
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &room.input,
            room.udp,
            "room",
            None,
        );
        let before = drained(&mut room, |_| true)?;
        let connected = Instant::now() + Duration::from_secs(10);
        while counter(&room.stats()?, "accepted") <= counter(&before, "accepted") {
            if Instant::now() > connected {
                bail!("limits: the generator never connected");
            }
            g.probe();
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = drained(&mut room, |_| true)?;
        let cpu0 = room.cpu_seconds();
        let (sent, _) = g.run(rate, secs, u64::MAX, cap);
        let want = counter(&start, "accepted") + sent;
        drained(&mut room, |s| counter(s, "accepted") >= want)?;
        let accept_us = (room.cpu_seconds() - cpu0) / sent as f64 * 1e6;
        drop(room);

        // Full: `cap` things held, then only new names.
        let mut full = Server::start(
            Kind::Ours,
            Options {
                // Room for the cap, the probe thing and the broker's own thing.
                max_things: Some(cap + 2),
                ..Options::default()
            },
        )?;
        self.fill(&full, cap, 150_000.0, "held")?;
        let held = drained(&mut full, |_| true)?;
        let mut g = Generator::new(
            &self.zmq,
            Transport::Zmq,
            &full.input,
            full.udp,
            "new",
            None,
        );
        // The generator's connection is up once its first new name is refused.
        let connected = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while counter(&full.stats()?, "too_many_things") == counter(&held, "too_many_things") {
            if Instant::now() > connected {
                bail!("limits: nothing was refused at the cap");
            }
            g.run(f64::INFINITY, Duration::from_secs(1), 1, 1);
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = drained(&mut full, |_| true)?;
        let cpu0 = full.cpu_seconds();
        // Names the fill did not use: `new.t…` over ten million of them.
        let (sent, _) = g.run(rate, secs, u64::MAX, 9_999_999);
        let want = counter(&start, "too_many_things") + sent;
        let end = drained(&mut full, |s| counter(s, "too_many_things") >= want)?;
        let refuse_us = (full.cpu_seconds() - cpu0) / sent as f64 * 1e6;
        if counter(&end, "things") > cap + 2 {
            bail!(
                "limits: the broker holds {} things beyond its cap",
                counter(&end, "things")
            );
        }
        let scenario = format!("limits (--max-things {cap}, {rate:.0}/s)");
        self.report.add(
            &scenario,
            "CPU per update accepted",
            Kind::Ours,
            accept_us,
            "µs",
        );
        self.report.add(
            &scenario,
            "CPU per update refused at the cap",
            Kind::Ours,
            refuse_us,
            "µs",
        );
        self.report.note(format!(
            "at --max-things a refusal costs {:.2}× an accept ({} new names refused, {n} to connect)",
            refuse_us / accept_us.max(f64::MIN_POSITIVE),
            sent
        ));
        Ok(())
    }

    /// The same fixed-rate step without a journal (disk idle, then busy) and with one on the
    /// busy disk, so that what the busy disk costs by itself (CPU, page cache) is told apart from
    /// what the journal adds; then how far the journal was behind when the step ended.
    fn journal_on_a_busy_disk(&mut self, rate: f64) -> anyhow::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("thingsbus-bench-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("the journal's directory")?;
        let scenario = format!("limits, journal on a busy disk ({rate:.0}/s)");
        let plain = Server::start(Kind::Ours, Options::default())?;
        let idle = self.step(&plain, Transport::Zmq, 1, rate, true)?;
        let stop = AtomicBool::new(false);
        let (busy, _) = std::thread::scope(|scope| {
            let hog = scope.spawn(|| busy_disk(dir.clone(), &stop));
            let step = self.step(&plain, Transport::Zmq, 1, rate, true);
            stop.store(true, Ordering::Relaxed);
            (step, hog.join())
        });
        let busy = busy?;
        drop(plain);
        for (label, s) in [
            ("no journal, disk idle", &idle),
            ("no journal, disk busy", &busy),
        ] {
            self.report
                .add(&scenario, &format!("p99, {label}"), Kind::Ours, s.p99, "ms");
            self.report.add(
                &scenario,
                &format!("loss, {label}"),
                Kind::Ours,
                s.loss * 100.0,
                "%",
            );
        }

        let mut journaled = Server::start(
            Kind::Ours,
            Options {
                state_file: Some(dir.join("state")),
                ..Options::default()
            },
        )?;
        let stop = AtomicBool::new(false);
        let (step, written, behind) = std::thread::scope(|scope| {
            let hog = scope.spawn(|| busy_disk(dir.clone(), &stop));
            let step = self.step(&journaled, Transport::Zmq, 1, rate, true);
            // How far behind the journal is as the load ends, and how long it takes to catch up.
            let behind = journaled.stats().map(|s| {
                let accepted = counter(&s, "accepted");
                (
                    accepted,
                    accepted.saturating_sub(counter(&s, "journal_synced_seq")),
                )
            });
            stop.store(true, Ordering::Relaxed);
            let written = hog.join().map_err(|_| anyhow::anyhow!("disk hog panicked"));
            (step, written, behind)
        });
        let (step, written, (accepted, behind)) = (step?, written??, behind?);
        let caught_up = Instant::now();
        drained(&mut journaled, |s| {
            counter(s, "journal_synced_seq") >= accepted
        })?;
        let catch_up_ms = caught_up.elapsed().as_secs_f64() * 1e3;
        drop(journaled);
        let _ = std::fs::remove_dir_all(&dir);
        self.report.add(
            &scenario,
            "p99, journal, disk busy",
            Kind::Ours,
            step.p99,
            "ms",
        );
        self.report.add(
            &scenario,
            "loss, journal, disk busy",
            Kind::Ours,
            step.loss * 100.0,
            "%",
        );
        self.report.add(
            &scenario,
            "journal behind as the load ended",
            Kind::Ours,
            behind as f64,
            "updates",
        );
        self.report.add(
            &scenario,
            "journal caught up after",
            Kind::Ours,
            catch_up_ms,
            "ms",
        );
        self.report.note(format!(
            "busy disk: another writer synced {} MiB in 8 MiB writes during the step, beside the journal",
            written >> 20
        ));
        Ok(())
    }
}
