//! `thingsbus-bench`: our broker against the libzmq floor and the Python 0.2.1 broker, in one run.
//!
//! ```text
//! cargo run --release -p thingsbus-bench -- all --seconds 2
//! cargo run --release -p thingsbus-bench -- ingest --against floor
//! cargo run --release -p thingsbus-bench -- fanout --against floor --json new.json
//! cargo run --release -p thingsbus-bench -- compare old.json new.json
//! ```

mod agent;
mod cluster;
mod commands;
mod crowd;
mod curve;
mod history;
mod limits;
mod load;
mod report;
mod scenarios;
mod servers;
mod udp_send;

use std::process::ExitCode;

use clap::Parser;

use crate::scenarios::{python_available, Bench};
use crate::servers::{Kind, Serve};

/// Benchmark the thingsbus broker against the libzmq floor and the Python 0.2.1 broker.
///
/// Every server runs in its own process on 127.0.0.1 with ephemeral ports; load generators and
/// subscribers are threads of this process (each subscriber its own libzmq context). Prints a
/// Markdown table, then the same report as one JSON line (and, with --json, into a file).
#[derive(Parser)]
#[command(
    name = "thingsbus-bench",
    after_help = "Examples:\n  thingsbus-bench all --seconds 2\n  thingsbus-bench ingest --against floor\n  \
                  thingsbus-bench fanout --against floor --json new.json\n  \
                  thingsbus-bench compare old.json new.json"
)]
struct Args {
    /// What to measure.
    #[command(subcommand)]
    scenario: Scenario,
    /// Seconds per measurement step; below 2 the directory sizes and soaks shrink (a smoke run).
    #[arg(long, default_value_t = 2.0, global = true)]
    seconds: f64,
    /// Baselines to measure in the same run, comma-separated (python is skipped, with a note,
    /// when scripts/python-peers.sh has not installed it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,python",
        global = true
    )]
    against: Vec<Kind>,
    /// Also write the report as JSON to this file (one object per scenario; what `compare`
    /// reads).
    #[arg(long, value_name = "FILE", global = true)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
enum Scenario {
    /// Highest sustained ZMQ and UDP input rate to one subscriber.
    Ingest,
    /// Highest sustained rate delivered to each of 10 subscribers.
    Fanout,
    /// 100 and 1,000 subscribers at 1,000 updates/s (ours and the floor): the least fraction any
    /// subscriber received, p99, and the server's CPU per delivered message.
    FanoutMany,
    /// End-to-end latency, adaptor send to subscriber receive.
    Latency,
    /// Time from connect until a new client's mirror holds every thing.
    Latejoin,
    /// Live-update latency while a large snapshot goes out every second.
    SnapshotStall,
    /// Resident memory by directory size, and with a stuck subscriber.
    Memory,
    /// Command round trips (caller, broker, adaptor, caller) and the most per second.
    Commands,
    /// Brokers sharing a NATS JetStream bucket (`--cluster`), beside NATS alone.
    Cluster,
    /// What the bounds cost: CPU per update refused at `--max-things` beside one accepted, and
    /// ingest with the journal on a disk another writer keeps busy.
    Limits,
    /// What CURVE costs: ingest and fan-out with CURVE on every endpoint beside the same broker
    /// without it, and a late join with CURVE.
    Curve,
    /// A thingsbus-agent with 1,000 rules: the update rate it keeps up with, and an update → rule
    /// → command beside a plain command round trip.
    Agent,
    /// What `--history` costs: ingest at a fixed rate over 10,000 things with and without it,
    /// the store's size per series and day for each tier, and `/api/history` for a 90-day chart.
    History,
    /// Every scenario above, in that order.
    All,
    /// Two reports written with --json side by side: old and new value, new / old, and ours /
    /// floor in each, as a Markdown table.
    Compare {
        /// The earlier report.
        old: std::path::PathBuf,
        /// The later report.
        new: std::path::PathBuf,
    },
    /// Our broker as a server process of the bench (started by the bench itself): endpoints as
    /// one JSON line on stdout, then serves until stdin closes.
    #[command(hide = true)]
    ServeBroker(Serve),
    /// The libzmq floor as a server process of the bench, like `serve-broker`.
    #[command(hide = true)]
    ServeFloor(Serve),
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Bench and server modes alike: 1,000 subscribers are 1,000 connections on each side.
    crowd::raise_open_files();
    if let Scenario::Compare { old, new } = &args.scenario {
        return match compare_files(old, new) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("thingsbus-bench compare: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let served = match &args.scenario {
        Scenario::ServeBroker(serve) => Some(servers::serve_broker(serve)),
        Scenario::ServeFloor(serve) => Some(servers::serve_floor(serve)),
        _ => None,
    };
    if let Some(r) = served {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("thingsbus-bench server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    match run(&args, &command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thingsbus-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `compare OLD NEW`: both reports read, the table of [`report::compare`].
fn compare_files(old: &std::path::Path, new: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let read = |path: &std::path::Path| -> anyhow::Result<report::Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not JSON: write reports with `thingsbus-bench ... --json FILE`",
                path.display()
            )
        })?;
        let (r, command) =
            report::Report::from_json(&v).with_context(|| format!("reading {}", path.display()))?;
        eprintln!("{}: {command}", path.display());
        Ok(r)
    };
    Ok(report::compare(&read(old)?, &read(new)?))
}

/// One scenario's measurements.
type Step = fn(&mut Bench) -> anyhow::Result<()>;

fn run(args: &Args, command: &str) -> anyhow::Result<()> {
    let mut against = args.against.clone();
    if against.contains(&Kind::Python) {
        if let Err(e) = python_available() {
            eprintln!("skipping python: {e:#}");
            against.retain(|k| *k != Kind::Python);
        }
    }
    let mut bench = Bench {
        zmq: zmq::Context::new(),
        seconds: args.seconds.max(0.2),
        against,
        report: report::Report::default(),
        smoke: args.seconds < 2.0,
        max_zmq: Vec::new(),
        subscription: b"",
    };
    if !bench.against.contains(&Kind::Python) && args.against.contains(&Kind::Python) {
        bench
            .report
            .note("python 0.2.1 skipped: not installed (scripts/python-peers.sh)");
    }
    let started = std::time::Instant::now();
    let steps: [(Scenario, Step); 13] = [
        (Scenario::Ingest, Bench::ingest),
        (Scenario::Fanout, Bench::fanout),
        (Scenario::FanoutMany, Bench::fanout_many),
        (Scenario::Latency, Bench::latency),
        (Scenario::Latejoin, Bench::latejoin),
        (Scenario::SnapshotStall, Bench::snapshot_stall),
        (Scenario::Memory, Bench::memory),
        (Scenario::Commands, Bench::commands),
        (Scenario::Cluster, Bench::cluster),
        (Scenario::Limits, Bench::limits),
        (Scenario::Curve, Bench::curve),
        (Scenario::Agent, Bench::agent),
        (Scenario::History, Bench::history),
    ];
    for (scenario, step) in steps {
        if args.scenario == Scenario::All || args.scenario == scenario {
            step(&mut bench)?;
        }
    }
    bench.report.note(format!(
        "{} cores, run took {:.0} s, {} s per step{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64(),
        bench.seconds,
        if bench.smoke { " (smoke sizes)" } else { "" }
    ));
    println!("{}", bench.report.markdown());
    let json = bench.report.to_json(&format!("thingsbus-bench {command}"));
    println!("{json}");
    if let Some(path) = &args.json {
        use anyhow::Context as _;
        std::fs::write(path, format!("{json:#}\n"))
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        eprintln!("JSON report written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(line: &str) -> Args {
        Args::try_parse_from(line.split_whitespace()).expect("parses")
    }

    #[test]
    fn the_flags_are_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn a_scenario_alone_measures_against_both_baselines_for_2_s_steps() {
        let a = parse("thingsbus-bench ingest");
        assert_eq!(a.scenario, Scenario::Ingest);
        assert_eq!(a.seconds, 2.0);
        assert_eq!(a.against, [Kind::Floor, Kind::Python]);
    }

    #[test]
    fn flags_go_after_the_scenario_or_before_it() {
        for line in [
            "thingsbus-bench all --seconds 1 --against floor",
            "thingsbus-bench --seconds 1 --against floor all",
        ] {
            let a = parse(line);
            assert_eq!(a.scenario, Scenario::All, "{line}");
            assert_eq!(a.seconds, 1.0, "{line}");
            assert_eq!(a.against, [Kind::Floor], "{line}");
        }
        let a = parse("thingsbus-bench snapshot-stall --against floor,python,ours");
        assert_eq!(a.scenario, Scenario::SnapshotStall);
        assert_eq!(a.against, [Kind::Floor, Kind::Python, Kind::Ours]);
    }

    #[test]
    fn json_and_compare_parse() {
        let a = parse("thingsbus-bench fanout-many --seconds 0.5 --json /tmp/r.json");
        assert_eq!(a.scenario, Scenario::FanoutMany);
        assert_eq!(a.json, Some(std::path::PathBuf::from("/tmp/r.json")));
        let a = parse("thingsbus-bench compare old.json new.json");
        assert_eq!(
            a.scenario,
            Scenario::Compare {
                old: "old.json".into(),
                new: "new.json".into()
            }
        );
        assert!(Args::try_parse_from(["thingsbus-bench", "compare", "old.json"]).is_err());
    }

    #[test]
    fn unknown_scenarios_and_baselines_are_usage_errors() {
        assert!(Args::try_parse_from(["thingsbus-bench", "throughput"]).is_err());
        assert!(Args::try_parse_from(["thingsbus-bench", "ingest", "--against", "redis"]).is_err());
        assert!(Args::try_parse_from(["thingsbus-bench"]).is_err());
    }

    #[test]
    fn the_server_modes_are_hidden_from_help() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("snapshot-stall"), "{help}");
        assert!(!help.contains("serve-broker"), "{help}");
        let a = parse("thingsbus-bench serve-floor --hwm 5");
        let Scenario::ServeFloor(serve) = a.scenario else {
            panic!("serve-floor parses as itself");
        };
        assert_eq!(serve.hwm, 5);
    }
}
