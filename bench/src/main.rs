//! `thingsbus-bench`: our broker against the libzmq floor and the Python 0.2.1 broker, in one run.
//!
//! ```text
//! cargo run --release -p thingsbus-bench -- all --seconds 2
//! cargo run --release -p thingsbus-bench -- ingest --against floor
//! ```

mod cluster;
mod commands;
mod load;
mod report;
mod scenarios;
mod servers;

use std::process::ExitCode;

use clap::Parser;

use crate::scenarios::{python_available, Bench};
use crate::servers::Kind;

/// Benchmark the thingsbus broker. Every server runs in its own process on 127.0.0.1 with
/// ephemeral ports; load generators and subscribers are threads of this process. Prints a
/// Markdown table, then one JSON line.
#[derive(Parser)]
#[command(name = "thingsbus-bench")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Seconds per measurement step; below 2 the directory sizes and soaks shrink (a smoke run).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Baselines to run in the same run.
    #[arg(long, value_delimiter = ',', default_value = "floor,python")]
    against: Vec<Kind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Ingest,
    Fanout,
    Latency,
    Latejoin,
    SnapshotStall,
    Memory,
    Commands,
    Cluster,
    All,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let hidden = match argv.get(1).map(String::as_str) {
        Some("serve-broker") => Some(servers::serve_broker(&argv[2..])),
        Some("serve-floor") => Some(servers::serve_floor(&argv[2..])),
        _ => None,
    };
    if let Some(r) = hidden {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("thingsbus-bench server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(&args, &argv[1..].join(" ")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thingsbus-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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
    };
    if !bench.against.contains(&Kind::Python) && args.against.contains(&Kind::Python) {
        bench
            .report
            .note("python 0.2.1 skipped: not installed (scripts/python-peers.sh)");
    }
    let started = std::time::Instant::now();
    let all = args.scenario == Scenario::All;
    if all || args.scenario == Scenario::Ingest {
        bench.ingest()?;
    }
    if all || args.scenario == Scenario::Fanout {
        bench.fanout()?;
    }
    if all || args.scenario == Scenario::Latency {
        bench.latency()?;
    }
    if all || args.scenario == Scenario::Latejoin {
        bench.latejoin()?;
    }
    if all || args.scenario == Scenario::SnapshotStall {
        bench.snapshot_stall()?;
    }
    if all || args.scenario == Scenario::Memory {
        bench.memory()?;
    }
    if all || args.scenario == Scenario::Commands {
        bench.commands()?;
    }
    if all || args.scenario == Scenario::Cluster {
        bench.cluster()?;
    }
    bench.report.note(format!(
        "{} cores, run took {:.0} s, {} s per step{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64(),
        bench.seconds,
        if bench.smoke { " (smoke sizes)" } else { "" }
    ));
    println!("{}", bench.report.markdown());
    println!(
        "{}",
        bench
            .report
            .json_line(&format!("thingsbus-bench {command}"))
    );
    Ok(())
}
