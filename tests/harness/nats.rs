//! `nats-server -js` processes on 127.0.0.1, for the cluster tests and the cluster benchmark: one
//! server, or several routed to each other as one cluster, each killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{on_cpus, Process, Stream};

/// How long a server may take to listen.
const START: Duration = Duration::from_secs(10);

/// The `nats-server` the tests run: Debian's (2.9.10, the oldest supported) unless
/// `THINGSBUS_NATS_SERVER` names another.
pub fn binary() -> PathBuf {
    std::env::var_os("THINGSBUS_NATS_SERVER").map_or_else(|| "nats-server".into(), Into::into)
}

/// How to start one server.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The program ([`binary`] by default).
    pub binary: PathBuf,
    /// The client port (a free one by default).
    pub port: Option<u16>,
    /// The JetStream store (a temporary folder named for the port by default).
    pub dir: Option<PathBuf>,
    /// More arguments (`--auth TOKEN`, cluster routes).
    pub args: Vec<String>,
    /// Run on these CPUs only (`taskset -c CPUS`).
    pub cpus: Option<String>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            binary: binary(),
            port: None,
            dir: None,
            args: Vec::new(),
            cpus: None,
        }
    }
}

/// A running `nats-server`, killed on drop.
pub struct Nats {
    process: Process,
    port: u16,
    dir: PathBuf,
    /// The folder is this server's alone (a configured server): removed on drop.
    remove_dir: bool,
}

impl Nats {
    /// `nats-server -js` on `port` (a free one if `None`) storing in `dir`; panics when it does
    /// not start.
    pub fn start(port: Option<u16>, dir: Option<PathBuf>) -> Nats {
        Nats::start_with(port, dir, &[])
    }

    /// Like [`Nats::start`], with more arguments.
    pub fn start_with(port: Option<u16>, dir: Option<PathBuf>, extra: &[&str]) -> Nats {
        Nats::start_binary(&binary(), port, dir, extra)
    }

    /// Like [`Nats::start_with`], with another `nats-server` program.
    pub fn start_binary(
        binary: &Path,
        port: Option<u16>,
        dir: Option<PathBuf>,
        extra: &[&str],
    ) -> Nats {
        Nats::try_start(NatsOptions {
            binary: binary.to_owned(),
            port,
            dir,
            args: extra.iter().map(|&a| a.to_owned()).collect(),
            cpus: None,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server as `options` say and waits until it listens.
    ///
    /// # Errors
    /// When the program cannot be started (the message names the Debian package) or does not
    /// listen within 10 s.
    pub fn try_start(options: NatsOptions) -> Result<Nats, String> {
        let port = match options.port {
            Some(p) => p,
            None => free_ports(1)?[0],
        };
        let dir = options.dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("thingsbus-nats-{}-{port}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut command = on_cpus(&options.binary, options.cpus.as_deref());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(&dir)
            .args(&options.args);
        Ok(Nats {
            process: listening(&mut command, port)?,
            port,
            dir,
            remove_dir: false,
        })
    }

    /// A server from a configuration (`listen` is added; `STORE` stands for a folder of its
    /// own, removed on drop); panics when it does not start.
    pub fn configured(name: &str, port: u16, conf: &str) -> Nats {
        let dir =
            std::env::temp_dir().join(format!("thingsbus-{name}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder for the configuration");
        let file = dir.join("nats.conf");
        let conf = conf.replace("STORE", &dir.join("js").display().to_string());
        std::fs::write(&file, format!("listen: 127.0.0.1:{port}\n{conf}")).expect("conf");
        let mut command = Command::new(binary());
        command.arg("-c").arg(&file);
        Nats {
            process: listening(&mut command, port).unwrap_or_else(|e| panic!("{e}")),
            port,
            dir,
            remove_dir: true,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL) and reaps it; its store stays.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// CPU seconds it has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.process.cpu_seconds()
    }

    /// What the server logged so far (its stderr).
    pub fn log(&self) -> String {
        self.process.stderr()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.process.kill();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Several `nats-server -js` routed to each other as one cluster (or one alone), each with a
/// store of its own, removed on drop.
pub struct NatsCluster {
    servers: Vec<Nats>,
}

impl NatsCluster {
    /// `n` servers named `n0` … in the cluster `name`, all started before any is waited for.
    ///
    /// # Errors
    /// When one cannot be started or does not listen within 10 s.
    pub fn try_start(n: usize, name: &str, template: &NatsOptions) -> Result<NatsCluster, String> {
        let ports = free_ports(2 * n)?;
        let (client, route) = ports.split_at(n);
        let routes: Vec<String> = route
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut starting = Vec::new();
        for i in 0..n {
            let dir = std::env::temp_dir().join(format!(
                "thingsbus-nats-{name}-{}-{}",
                std::process::id(),
                client[i]
            ));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut command = on_cpus(&template.binary, template.cpus.as_deref());
            command
                .args(["-js", "-a", "127.0.0.1", "-p", &client[i].to_string()])
                .arg("-sd")
                .arg(&dir)
                .args(&template.args);
            if n > 1 {
                command
                    .args(["-n", &format!("n{i}"), "--cluster_name", name])
                    .args(["--cluster", &routes[i], "--routes", &routes.join(",")]);
            }
            let process = start(&mut command)?;
            starting.push(Nats {
                process,
                port: client[i],
                dir,
                remove_dir: true,
            });
        }
        for s in &mut starting {
            s.process.wait_listening(s.port, START)?;
        }
        Ok(NatsCluster { servers: starting })
    }

    /// Three servers as the cluster `thingsbus-test`; panics when they do not start.
    pub fn start() -> NatsCluster {
        NatsCluster::try_start(3, "thingsbus-test", &NatsOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The servers' `nats://` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Nats::url).collect()
    }

    /// Kills server `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// CPU seconds the servers have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.servers.iter().filter_map(Nats::cpu_seconds).sum()
    }
}

fn start(command: &mut Command) -> Result<Process, String> {
    Process::build(command)
        .name("nats-server")
        .stdout(Stream::Discard)
        .try_start()
        .map_err(|e| format!("{e} (Debian package nats-server; scripts/test installs it)"))
}

fn listening(command: &mut Command, port: u16) -> Result<Process, String> {
    let mut process = start(command)?;
    process.wait_listening(port, START)?;
    Ok(process)
}

/// `n` distinct ports free on 127.0.0.1 now.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("no free port: {e}"))
}
