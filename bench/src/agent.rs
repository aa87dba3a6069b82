//! The `agent` scenario: a `thingsbus-agent` with 1,000 rules (in this process, on our broker in
//! its own): the update rate it keeps up with, and the time from a thing's update to the command
//! a rule sends reaching its server, beside a plain command's round trip to the same server.
//!
//! 998 rules are conditions over the input that never hold (each one is evaluated on every
//! change, as a real file's would be); one derived rule echoes the input to `bench.out.echo`
//! (its latency and count show what the agent keeps up with); one condition toggles
//! `bench.target` through a command on each edge of `bench.src.trigger`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, SubscribeOptions};

use crate::load::percentile_ms;
use crate::scenarios::Bench;
use crate::servers::{Kind, Options, Server};

/// Rules in the file, as the issue asks.
const RULES: usize = 1_000;

/// The agent file: the broker's endpoints and [`RULES`] rules.
fn agent_file(server: &Server) -> String {
    let mut text = format!(
        "base = \"benchagent\"\nhealth_every = \"1h\"\n\
         [broker]\nurl = \"{}\"\ninput_url = \"{}\"\n",
        server.directory, server.input
    );
    if let Some(s) = &server.snapshot {
        let _ = writeln!(text, "snapshot_url = \"{s}\"");
    }
    if let Some(c) = &server.command {
        let _ = writeln!(text, "command_url = \"{c}\"");
    }
    for i in 0..RULES - 2 {
        let _ = write!(
            text,
            "\n[[rule]]\nname = \"never{i}\"\nwhen = \"bench.src.v < -{i}.0\"\n\
             then = {{ publish = \"bench.out.never{i}\", value = \"1\" }}\n"
        );
    }
    text.push_str(
        "\n[[rule]]\nname = \"echo\"\npublish = \"bench.out.echo\"\nvalue = \"bench.src.v\"\n\
         min_interval = \"1ms\"\n\
         \n[[rule]]\nname = \"toggle\"\nwhen = \"bench.src.trigger > 0.5\"\nmin_interval = \"1ms\"\n\
         then = { command = \"bench.target\", data = { on = true } }\n\
         else = { command = \"bench.target\", data = { on = false } }\n",
    );
    text
}

impl Bench {
    pub(crate) fn agent(&mut self) -> anyhow::Result<()> {
        eprintln!(
            "agent: {RULES} rules: the update rate it keeps up with, update → rule → command"
        );
        let server = Server::start(Kind::Ours, Options::default())?;
        let config = thingsbus_agent::config::Config::parse(&agent_file(&server))
            .map_err(|e| anyhow::anyhow!("the bench's agent file: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let rates: &[f64] = if self.smoke {
            &[1_000.0, 5_000.0]
        } else {
            &[1_000.0, 10_000.0, 50_000.0]
        };
        let secs = self.seconds;
        let (echo, command) = runtime.block_on(async {
            let target_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
            let target = Adaptor::builder("bench.target")
                .url(&server.input)
                .command_url(server.command.as_deref().context("a command endpoint")?)
                .connect()
                .await?;
            let arrivals = target_at.clone();
            target.serve("", move |_, _, _| {
                arrivals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Instant::now());
                async { Ok(json!("done")) }
            })?;
            let agent = thingsbus_agent::run::Agent::start(config).await?;
            let input = Adaptor::builder("bench.src")
                .url(&server.input)
                .connect()
                .await?;
            let mut client = Client::builder().url(&server.directory);
            if let Some(s) = &server.snapshot {
                client = client.snapshot_url(s);
            }
            if let Some(c) = &server.command {
                client = client.command_url(c);
            }
            let client = client.connect().await?;
            client.wait_filled(Duration::from_secs(10)).await;
            // The trigger exists before the rules run, so the toggle rule is not a missing thing.
            input.send_to("trigger", &json!(0), None)?;
            let echo = echo_runs(&input, &client, rates, secs).await?;
            let command = command_latency(&input, &client, &target_at).await?;
            drop(agent);
            anyhow::Ok((echo, command))
        })?;
        for e in echo {
            let label = format!("{RULES} rules, input at {:.0}/s", e.rate);
            self.report.add(
                "agent",
                &format!("{label}: echoes per second"),
                Kind::Ours,
                e.per_second,
                "/s",
            );
            self.report.add(
                "agent",
                &format!("{label}: update → echo p50"),
                Kind::Ours,
                e.p50,
                "ms",
            );
            self.report.add(
                "agent",
                &format!("{label}: update → echo p99"),
                Kind::Ours,
                e.p99,
                "ms",
            );
            self.report.note(format!(
                "agent at {:.0}/s: {} of {} input values echoed (the agent evaluates once per batch \
                 of changes, so it skips values, never falls behind), the last one {}",
                e.rate,
                e.echoed,
                e.sent,
                if e.caught_up { "echoed" } else { "NOT echoed within 5 s: it fell behind" }
            ));
        }
        let (rule, plain) = command;
        self.report.add(
            "agent",
            "update → rule → command at its server, p50",
            Kind::Ours,
            rule.0,
            "ms",
        );
        self.report.add(
            "agent",
            "update → rule → command at its server, p99",
            Kind::Ours,
            rule.1,
            "ms",
        );
        self.report.add(
            "agent",
            "plain command round trip, p50",
            Kind::Ours,
            plain.0,
            "ms",
        );
        self.report.add(
            "agent",
            "plain command round trip, p99",
            Kind::Ours,
            plain.1,
            "ms",
        );
        Ok(())
    }
}

struct Echo {
    rate: f64,
    sent: u64,
    echoed: usize,
    per_second: f64,
    p50: f64,
    p99: f64,
    caught_up: bool,
}

/// Publishes 1, 2, 3, … to `bench.src.v` at each rate for `secs` and times each value's echo.
async fn echo_runs(
    input: &Adaptor,
    client: &Client,
    rates: &[f64],
    secs: f64,
) -> anyhow::Result<Vec<Echo>> {
    let mut out = Vec::new();
    let mut next = 1u64;
    for &rate in rates {
        let mut sub = client.subscribe("bench.out.echo", SubscribeOptions::new())?;
        let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let first = next;
        let publisher = {
            let input = input.clone();
            let sent_at = sent_at.clone();
            tokio::spawn(async move {
                let interval = Duration::from_secs_f64(1.0 / rate);
                let start = Instant::now();
                let end = start + Duration::from_secs_f64(secs);
                let mut due = start;
                let mut v = first;
                while Instant::now() < end {
                    while due <= Instant::now() {
                        sent_at
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(v, Instant::now());
                        let _ = input.send_to("v", &json!(v), None);
                        v += 1;
                        due += interval;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                v
            })
        };
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut last_seen = 0u64;
        while !publisher.is_finished() {
            if let Ok(Some(Ok(e))) =
                tokio::time::timeout(Duration::from_millis(50), sub.next()).await
            {
                record(&e, &sent_at, &mut latencies, &mut last_seen);
            }
        }
        let last = publisher.await? - 1;
        // Keeping up: the last value sent is echoed soon after the load ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        while last_seen < last && Instant::now() < deadline {
            if let Ok(Some(Ok(e))) =
                tokio::time::timeout(Duration::from_millis(100), sub.next()).await
            {
                record(&e, &sent_at, &mut latencies, &mut last_seen);
            }
        }
        let caught_up = last_seen >= last;
        let took = started.elapsed().as_secs_f64();
        let sent = last + 1 - first;
        next = first + sent;
        let echoed = latencies.len();
        out.push(Echo {
            rate,
            sent,
            echoed,
            per_second: echoed as f64 / took.max(1e-9),
            p50: percentile_ms(&mut latencies, 50.0),
            p99: percentile_ms(&mut latencies, 99.0),
            caught_up,
        });
    }
    Ok(out)
}

/// An echo of value `v`: its latency from when `v` was sent.
fn record(
    e: &thingsbus_client::Event,
    sent_at: &Mutex<HashMap<u64, Instant>>,
    latencies: &mut Vec<u64>,
    last_seen: &mut u64,
) {
    let Some(v) = e.thing.value().as_f64() else {
        return;
    };
    let v = v as u64;
    let at = sent_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&v);
    if let Some(at) = at {
        latencies.push(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX));
        *last_seen = (*last_seen).max(v);
    }
}

/// 100 edges of `bench.src.trigger` (each a command from the rule) and 100 plain commands:
/// (p50, p99) of each, in ms.
async fn command_latency(
    input: &Adaptor,
    client: &Client,
    target_at: &Mutex<Vec<Instant>>,
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let mut rule = Vec::new();
    for i in 0..100u32 {
        let before = target_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        let sent = Instant::now();
        input.send_to("trigger", &json!(if i % 2 == 0 { 1 } else { 0 }), None)?;
        let deadline = sent + Duration::from_secs(5);
        loop {
            let arrived = target_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(before)
                .copied();
            if let Some(at) = arrived {
                rule.push(u64::try_from((at - sent).as_nanos()).unwrap_or(u64::MAX));
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "edge {i} sent no command within 5 s"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Past the rule's min_interval, so the next edge is not held back.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut plain = Vec::new();
    for _ in 0..100 {
        let sent = Instant::now();
        client
            .command("bench.target", &json!({"on": true}), Duration::from_secs(5))
            .await
            .context("a plain command to bench.target")?;
        plain.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    Ok((
        (
            percentile_ms(&mut rule, 50.0),
            percentile_ms(&mut rule, 99.0),
        ),
        (
            percentile_ms(&mut plain, 50.0),
            percentile_ms(&mut plain, 99.0),
        ),
    ))
}
