//! What CURVE costs: our broker with CURVE on every endpoint (`--curve-secret-file`) beside the
//! same broker without it, in one run, on ingest, fan-out and a late join. The load generator
//! and the subscribers speak CURVE too, so both ends of every connection pay for it.

use thingsbus_protocol::keys::KeyPair;

use crate::load::Transport;
use crate::scenarios::{join_time_with, Bench};
use crate::servers::{Kind, Options, Server};

/// Below this share of the plain rate, CURVE costs more than the issue allows.
const AIM: f64 = 0.5;

impl Bench {
    pub(crate) fn curve(&mut self) -> anyhow::Result<()> {
        eprintln!("curve: ingest, fan-out and late join with CURVE beside the same broker without");
        let keys = KeyPair::generate()?;
        let with = |curve: Option<KeyPair>| Options {
            curve,
            ..Options::default()
        };
        // The floor (libzmq forwarding, nothing parsed) with and without CURVE shows what the
        // encryption alone costs on this machine: no broker can keep a better share than it.
        for (subs, metric) in [
            (1, "ingest ZMQ+JSON, 1 subscriber"),
            (10, "fan-out ZMQ+JSON, to each of 10"),
        ] {
            for kind in [Kind::Ours, Kind::Floor] {
                let mut rates = [0.0; 2];
                for (i, (label, curve)) in [("plain", None), ("CURVE", Some(keys.clone()))]
                    .into_iter()
                    .enumerate()
                {
                    rates[i] = self
                        .max_rate_with(kind, with(curve), Transport::Zmq, subs)?
                        .map_or(0.0, |s| s.rate);
                    self.report.add(
                        "curve",
                        &format!("{metric}, {label}"),
                        kind,
                        rates[i],
                        "msg/s",
                    );
                }
                let ratio = if rates[0] > 0.0 {
                    rates[1] / rates[0]
                } else {
                    0.0
                };
                self.report.note(format!(
                    "curve: {metric}: {} with CURVE at {ratio:.2} of plain ({}aim at least {AIM})",
                    kind.label(),
                    match (kind, ratio >= AIM) {
                        (Kind::Ours, true) => "met; ",
                        (Kind::Ours, false) => "NOT met; ",
                        _ => "the most a libzmq broker keeps here; ",
                    }
                ));
            }
        }
        let n: u64 = if self.smoke { 20_000 } else { 100_000 };
        for (label, curve) in [("plain", None), ("CURVE", Some(keys.clone()))] {
            let server = Server::start(Kind::Ours, with(curve))?;
            self.fill(&server, n, Self::fill_rate(Kind::Ours), "late")?;
            // The median of five joins, as the latejoin scenario takes it.
            let mut runs = (0..5)
                .map(|_| {
                    join_time_with(
                        &server.directory,
                        server.snapshot.as_deref(),
                        "late",
                        n,
                        server.keys.clone(),
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            runs.sort();
            self.report.add(
                "curve",
                &format!("late join {n} things, instant snapshot, {label}"),
                Kind::Ours,
                runs[2].as_secs_f64() * 1e3,
                "ms",
            );
        }
        Ok(())
    }
}
