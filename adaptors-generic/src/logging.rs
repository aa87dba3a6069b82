//! Logging set-up shared by the binaries: stderr, `RUST_LOG` wins, `-v`/`-q` adjust the default.

use tracing_subscriber::EnvFilter;

/// Log format on stderr.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The log flags every daemon-like tool takes: `-v`, `-q`, `--log-format`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// More log output (-v debug, -vv trace). RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber, at info level by default.
    pub fn init(&self) {
        init("info", self.verbose, self.quiet, self.log_format);
    }
}

/// Runs a tool's async `run` on a two-worker runtime and turns its outcome into an exit code,
/// printing an error as one line prefixed with the tool's `name`.
pub fn main_with_runtime<F>(name: &str, run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the global subscriber. `base` is the level with neither `-v` nor `-q`; each `-v`
/// goes one level up (debug, trace), each `-q` one down (warn, error).
pub fn init(base: &str, verbose: u8, quiet: u8, format: LogFormat) {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = LEVELS.iter().position(|l| *l == base).unwrap_or(2);
    let level = (base + usize::from(verbose)).saturating_sub(usize::from(quiet));
    let level = LEVELS[level.min(LEVELS.len() - 1)];
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
///
/// # Errors
/// When a handler cannot be installed.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
