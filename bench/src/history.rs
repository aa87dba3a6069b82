//! What `--history` costs: ingest at a fixed rate over 10,000 things into a broker with `--http`
//! and `--history` beside the same broker with `--http` alone; the store's bytes per series and
//! day in each tier; and `/api/history` for a 90-day chart on a store filled beforehand.
//! Figures are printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use thingsbus_broker::history::{Point, Store};

use crate::load::Transport;
use crate::scenarios::Bench;
use crate::servers::{Kind, Options, Server};

const DAY_MS: i64 = 86_400_000;

fn scratch() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("thingsbus-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
    Ok(dir)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

/// Fills `store` with `series` series of one point per `every_ms` from `from` to `to`.
fn fill(
    store: &mut Store,
    series: usize,
    from: i64,
    to: i64,
    every_ms: i64,
) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut batch = Vec::with_capacity(100_000);
    let mut t = from;
    while t < to {
        for i in 0..series {
            batch.push(Point {
                ns: format!("bench.room{}", i / 4),
                field: format!("f{}", i % 4),
                t_ms: t,
                v: ((t / every_ms) as f64 / 60.0).sin() * 10.0 + i as f64,
            });
        }
        if batch.len() >= 100_000 {
            n += store.write(&batch)? as u64;
            batch.clear();
        }
        t += every_ms;
    }
    n += store.write(&batch)? as u64;
    Ok(n)
}

impl Bench {
    pub(crate) fn history(&mut self) -> anyhow::Result<()> {
        eprintln!("history: ingest with and without --history, store size, a 90-day chart");
        let dir = scratch()?;
        self.history_ingest(&dir)?;
        self.history_size(&dir)?;
        self.history_chart(&dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A fixed rate over 10,000 things, one subscriber, with `--http` both times.
    fn history_ingest(&mut self, dir: &Path) -> anyhow::Result<()> {
        let rate = if self.smoke { 20_000.0 } else { 100_000.0 };
        let things = 10_000;
        let mut delivered = [0.0; 2];
        let mut cpu = [0.0; 2];
        for (i, (label, history)) in [
            ("without --history", None),
            ("with --history", Some(dir.join("ingest.db"))),
        ]
        .into_iter()
        .enumerate()
        {
            let recording = history.is_some();
            let mut server = Server::start(
                Kind::Ours,
                Options {
                    http: true,
                    history,
                    ..Options::default()
                },
            )?;
            let before = server.cpu_seconds();
            let s = self.step_over(&server, &server, Transport::Zmq, 1, rate, false, things)?;
            let used = server.cpu_seconds() - before;
            delivered[i] = s.achieved * (1.0 - s.loss);
            let updates = delivered[i] * self.seconds;
            cpu[i] = if updates > 0.0 {
                used / updates * 1e6
            } else {
                0.0
            };
            let metric = format!("{rate:.0}/s over {things} things, {label}");
            self.report.add(
                "history",
                &format!("{metric}: delivered"),
                Kind::Ours,
                delivered[i],
                "msg/s",
            );
            self.report.add(
                "history",
                &format!("{metric}: broker CPU"),
                Kind::Ours,
                cpu[i],
                "µs/update",
            );
            if recording {
                // The writer writes every second: let it take the last window.
                std::thread::sleep(Duration::from_millis(1500));
                let st = server.stats()?;
                self.report.note(format!(
                    "history: {} points written, {} conflated (a point a series a second at most: \
                     {things} series over {:.1} s)",
                    st["history_points"], st["history_conflated"], self.seconds
                ));
            }
        }
        if delivered[0] > 0.0 && cpu[0] > 0.0 {
            self.report.note(format!(
                "history: with --history, delivered {:.3} of the rate without (aim: within 5 %), \
                 broker CPU per update {:.2} times",
                delivered[1] / delivered[0],
                cpu[1] / cpu[0]
            ));
        }
        Ok(())
    }

    /// Bytes per series and day: raw points at 1 s, and the minute and hour rows they fold into.
    fn history_size(&mut self, dir: &Path) -> anyhow::Result<()> {
        let series = if self.smoke { 2 } else { 20 };
        let path = dir.join("size.db");
        let mut store = Store::open(&path, 1_000, u64::MAX)?;
        let t0 = (now_ms() / DAY_MS - 10) * DAY_MS;
        fill(&mut store, series, t0, t0 + DAY_MS, 1_000)?;
        let raw = store.used_bytes()?;
        let folded = store.maintain(t0 + DAY_MS + 10_000)?;
        let both = store.used_bytes()?;
        let per = |bytes: u64| bytes as f64 / series as f64;
        self.report.add(
            "history",
            "store: raw points at 1 s, per series per day",
            Kind::Ours,
            per(raw) / 1e6,
            "MB",
        );
        let rows = (folded.minutes + folded.hours) as f64;
        let folded_bytes = both.saturating_sub(raw) as f64;
        let row = if rows > 0.0 { folded_bytes / rows } else { 0.0 };
        self.report.add(
            "history",
            "store: minute tier, per series per day",
            Kind::Ours,
            row * 1440.0 / 1e3,
            "kB",
        );
        self.report.add(
            "history",
            "store: hour tier, per series per day",
            Kind::Ours,
            row * 24.0 / 1e3,
            "kB",
        );
        self.report.note(format!(
            "history: {:.1} bytes a raw point, {row:.1} bytes a minute or hour row ({series} series, \
             a day at 1 s)",
            raw as f64 / (series as f64 * 86_400.0)
        ));
        Ok(())
    }

    /// 90 days of one series at a point a minute (folded into minutes and hours), then
    /// `/api/history` for the whole span: the median of 11 requests per step.
    fn history_chart(&mut self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("chart.db");
        let now = now_ms();
        {
            let mut store = Store::open(&path, 1_000, u64::MAX)?;
            fill(&mut store, 1, now - 90 * DAY_MS, now, 60_000)?;
            store.maintain(now)?;
        }
        let server = Server::start(
            Kind::Ours,
            Options {
                http: true,
                history: Some(path),
                ..Options::default()
            },
        )?;
        let http = server
            .http
            .clone()
            .context("the broker did not say where HTTP is")?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        for (label, query) in [
            ("default step (12 h, hour tier)", "since=90d"),
            ("1 h steps (hour tier)", "since=90d&step=1h"),
            (
                "10 min steps (minute tier, 12,960 points)",
                "since=90d&step=10m",
            ),
        ] {
            let url = format!("{http}/api/history/bench.room0?field=f0&{query}");
            let mut times = Vec::new();
            let mut points = 0;
            for _ in 0..11 {
                let start = Instant::now();
                let body = agent
                    .get(&url)
                    .call()
                    .with_context(|| format!("GET {url}"))?
                    .into_string()?;
                times.push(start.elapsed());
                let v: serde_json::Value = serde_json::from_str(&body)?;
                points = v["points"].as_array().map_or(0, Vec::len);
            }
            times.sort();
            self.report.add(
                "history",
                &format!("/api/history 90-day chart, {label}, {points} points"),
                Kind::Ours,
                times[5].as_secs_f64() * 1e3,
                "ms",
            );
        }
        Ok(())
    }
}
