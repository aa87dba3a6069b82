//! The `commands` scenario: a command's round trip caller → broker → serving adaptor → caller,
//! beside the floor, a direct DEALER ↔ ROUTER echo with no broker, measured in the same run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::load::percentile_ms;
use crate::scenarios::Bench;
use crate::servers::{Kind, Options, Server};

type Encode = Box<dyn Fn(u64) -> Vec<u8>>;
type Decode = Box<dyn Fn(&[u8]) -> Option<u64>>;

/// What one system does with a command.
struct Path {
    caller: zmq::Socket,
    encode: Encode,
    decode: Decode,
}

struct Figures {
    p50: f64,
    p99: f64,
    rate: f64,
}

/// Sends at `rate` per second (or keeps `window` in flight when `rate` is None) for `seconds`.
fn drive(path: &Path, rate: Option<f64>, window: usize, seconds: f64) -> anyhow::Result<Figures> {
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut rtts: Vec<u64> = Vec::new();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut next_id = 0u64;
    let mut next_send = started;
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    loop {
        let now = Instant::now();
        if now >= end && sent_at.is_empty() {
            break;
        }
        if now > end + Duration::from_secs(10) {
            bail!("{} commands never answered", sent_at.len());
        }
        if now < end {
            match interval {
                Some(iv) => {
                    while next_send <= now {
                        path.caller.send((path.encode)(next_id), 0)?;
                        sent_at.insert(next_id, Instant::now());
                        next_id += 1;
                        next_send += iv;
                    }
                }
                None => {
                    while sent_at.len() < window {
                        path.caller.send((path.encode)(next_id), 0)?;
                        sent_at.insert(next_id, Instant::now());
                        next_id += 1;
                    }
                }
            }
        }
        let wait = match interval {
            Some(_) => next_send.saturating_duration_since(Instant::now()),
            None => Duration::from_millis(10),
        };
        let ms = i64::try_from(wait.as_millis()).unwrap_or(10).min(10);
        if path.caller.poll(zmq::POLLIN, ms)? > 0 {
            while let Ok(reply) = path.caller.recv_bytes(zmq::DONTWAIT) {
                let id = (path.decode)(&reply).context("a reply without our id")?;
                if let Some(t) = sent_at.remove(&id) {
                    rtts.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let answered = rtts.len() as f64;
    Ok(Figures {
        p50: percentile_ms(&mut rtts, 50.0),
        p99: percentile_ms(&mut rtts, 99.0),
        rate: answered / took,
    })
}

impl Bench {
    pub(crate) fn commands(&mut self) -> anyhow::Result<()> {
        eprintln!(
            "commands: round trip caller -> broker -> adaptor -> caller, and the most per second"
        );
        // The floor: a ROUTER that echoes, on a thread of its own.
        let echo = self.zmq.socket(zmq::ROUTER)?;
        echo.bind("tcp://127.0.0.1:*")?;
        let echo_url = echo
            .get_last_endpoint()?
            .map_err(|_| anyhow::anyhow!("endpoint"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let echo_stop = stop.clone();
        let echo_thread = std::thread::spawn(move || {
            while !echo_stop.load(std::sync::atomic::Ordering::Relaxed) {
                if echo.poll(zmq::POLLIN, 50).unwrap_or(0) > 0 {
                    while let Ok(frames) = echo.recv_multipart(zmq::DONTWAIT) {
                        let _ = echo.send_multipart(frames, 0);
                    }
                }
            }
        });
        let floor_caller = self.zmq.socket(zmq::DEALER)?;
        floor_caller.set_sndhwm(0)?;
        floor_caller.connect(&echo_url)?;
        let floor = Path {
            caller: floor_caller,
            encode: Box::new(|id| id.to_le_bytes().to_vec()),
            decode: Box::new(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))),
        };

        // Ours: the broker in its own process, the adaptor library serving an echo here.
        let server = Server::start(Kind::Ours, Options::default())?;
        let command_url = server
            .command
            .clone()
            .context("the broker's command endpoint")?;
        let adaptor = thingsbus_adaptor::Adaptor::builder("bench")
            .url(&server.input)
            .command_url(&command_url)
            .connect_blocking()?;
        adaptor.serve("echo", |_, data, _| async move { Ok(data) })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !adaptor.is_serving() {
            if Instant::now() > deadline {
                bail!("the adaptor never registered");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let ours_caller = self.zmq.socket(zmq::DEALER)?;
        ours_caller.set_sndhwm(0)?;
        ours_caller.connect(&command_url)?;
        let ours = Path {
            caller: ours_caller,
            encode: Box::new(|id| {
                json!({"type": "command", "id": id, "ns": "bench.echo.x", "data": id, "timeout": 10.0})
                    .to_string()
                    .into_bytes()
            }),
            decode: Box::new(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).ok()?;
                if v["ok"] != true {
                    return None;
                }
                v["id"].as_u64()
            }),
        };

        for (kind, path) in [(Kind::Floor, &floor), (Kind::Ours, &ours)] {
            // Warm up the connection first.
            drive(path, Some(1000.0), 1, 0.2)?;
            let f = drive(path, Some(1000.0), 1, self.seconds)?;
            self.report
                .add("commands", "round trip @ 1,000/s p50", kind, f.p50, "ms");
            self.report
                .add("commands", "round trip @ 1,000/s p99", kind, f.p99, "ms");
            let f = drive(path, None, 256, self.seconds)?;
            self.report.add(
                "commands",
                "most per second, 256 in flight",
                kind,
                f.rate,
                "/s",
            );
            self.report.add(
                "commands",
                "round trip p99, 256 in flight",
                kind,
                f.p99,
                "ms",
            );
        }
        self.report.note(
            "commands: the caller is a raw DEALER in the bench process; ours goes through the broker \
             process and the thingsbus-adaptor library serving an echo handler (its JSON, its runtime); \
             the floor is a DEALER talking straight to an echoing ROUTER thread",
        );
        drop(adaptor);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = echo_thread.join();
        Ok(())
    }
}
