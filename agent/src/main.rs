//! `thingsbus-agent`: a node's sensors, actions and rules from one config file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use thingsbus_agent::config::Config;
use thingsbus_agent::run::Agent;

/// Polls files, programs and HTTP APIs into things, serves commands with programs and file
/// writes, and runs rules over the bus, all from one TOML file (see README, "thingsbus-agent").
///
///   thingsbus-agent check agent.toml   # check the file: exit 0, or 1 with every error and its line
///   thingsbus-agent run agent.toml     # run it (also: thingsbus-agent agent.toml); SIGHUP reloads
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// `check` or `run`, or the file itself (then: run).
    #[arg(value_name = "check|run|FILE")]
    first: String,
    /// The agent's file, after `check` or `run`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less logging (errors only).
    #[arg(short, long)]
    quiet: bool,
    /// Log as JSON lines.
    #[arg(long, value_name = "text|json", default_value = "text")]
    log_format: String,
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (check, file) = match (cli.first.as_str(), &cli.file) {
        ("check", Some(f)) => (true, f.clone()),
        ("run", Some(f)) => (false, f.clone()),
        (other, Some(_)) => {
            eprintln!(
                "thingsbus-agent: {other:?} is not a command: use `check FILE` or `run FILE`"
            );
            return std::process::ExitCode::from(2);
        }
        (f, None) => (false, PathBuf::from(f)),
    };
    if check {
        return match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} polls, {} served, {} rules)",
                    file.display(),
                    c.polls.len(),
                    c.serves.len(),
                    c.rules.len()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", file.display());
                }
                std::process::ExitCode::from(1)
            }
        };
    }
    init_logging(&cli);
    match run(file) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thingsbus-agent: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(file: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&file).map_err(|e| anyhow::anyhow!("{}:\n{e}", file.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut agent = Agent::start(config).await?;
        tracing::info!(file = %file.display(), "agent running");
        let (mut reloads, mut failures) = (0, 0);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = hup.recv() => match Config::load(&file) {
                    Ok(new) => {
                        agent.stop();
                        agent = Agent::start(new).await?;
                        reloads += 1;
                        agent.health().set_reloads(reloads, failures, last_error.as_deref());
                        tracing::info!(file = %file.display(), "reloaded");
                    }
                    Err(e) => {
                        failures += 1;
                        last_error = Some(e.to_string());
                        agent.health().set_reloads(reloads, failures, last_error.as_deref());
                        tracing::error!("{}: not reloaded, the running configuration stays:\n{e}", file.display());
                    }
                },
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        agent.stop();
        Ok(())
    })
}
