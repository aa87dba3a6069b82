//! Starting and stopping a broker: binds every endpoint, connects the threads through
//! mailboxes, restores the directory, and starts each thread. Dropping the broker stops it.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use thingsbus_protocol::transport::{self, Event};
use thingsbus_protocol::{Caps, Directory, Timestamp};

use crate::access::Door;
use crate::auth::AuthCell;
use crate::commands::CommandRouter;
use crate::config::Config;
use crate::endpoints::{bind_zmq, derived_port, input_sockets, set_keepalive, Endpoints};
use crate::error::Error;
use crate::ingest::{Ingest, IngestLinks, IngestSockets};
use crate::journal::Journal;
use crate::mailbox::mailbox;
use crate::publish::{Output, Publisher};
use crate::snapshot_server::SnapshotServer;
use crate::stats::{self, Stats, BROKER_NS};

/// A running broker. Dropping it stops it and waits for its threads.
///
/// ```no_run
/// use thingsbus_broker::{Broker, Config};
/// let broker = Broker::start(Config::default())?;
/// println!("clients connect to {}", broker.endpoints().directory);
/// broker.join(); // runs until another handle calls shutdown(); see Broker::stopper
/// # Ok::<(), thingsbus_broker::Error>(())
/// ```
#[derive(Debug)]
pub struct Broker {
    endpoints: Endpoints,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    auth: Option<Arc<AuthCell>>,
}

/// Stops a broker from another thread (for example a signal handler).
#[derive(Debug, Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// Asks the broker to stop; it does within about 50 ms.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Every socket the broker binds to the network, bound.
struct Bound {
    /// Directory output (PUB).
    publisher: zmq::Socket,
    /// ZMQ input (SUB) and UDP input, on one port number.
    sub: zmq::Socket,
    udp: UdpSocket,
    /// Snapshot requests (ROUTER).
    snapshots: zmq::Socket,
    /// Commands (ROUTER).
    commands: zmq::Socket,
    endpoints: Endpoints,
}

impl Bound {
    fn bind(ctx: &zmq::Context, config: &Config) -> Result<Bound, Error> {
        let mut publisher = ctx.socket(zmq::PUB)?;
        publisher.set_ipv6(config.bind.is_ipv6())?;
        publisher.set_sndhwm(config.subscriber_hwm)?;
        publisher.set_linger(100)?;
        set_keepalive(&publisher)?;
        crate::access::guard(&mut publisher, config, Door::Directory)?;
        let directory_port = bind_zmq(&publisher, "directory output", config.bind, config.port)?;
        let (sub, udp, input_port) = input_sockets(ctx, config)?;
        let (snapshots, snapshot_port) = bind_router(
            ctx,
            config,
            (SnapshotServer::configure, Door::Snapshot),
            (config.snapshot_port, 2),
            ("snapshot endpoint", "--snapshot-port"),
        )?;
        let (commands, command_port) = bind_router(
            ctx,
            config,
            (CommandRouter::configure, Door::Command),
            (config.command_port, 3),
            ("command endpoint", "--command-port"),
        )?;
        let endpoints = Endpoints::new(
            config,
            directory_port,
            input_port,
            udp.local_addr()?,
            snapshot_port,
            command_port,
        );
        Ok(Bound {
            publisher,
            sub,
            udp,
            snapshots,
            commands,
            endpoints,
        })
    }
}

/// A ROUTER set up by `configure` and bound on its port: the one `given`, or the directory
/// port plus `offset`. `names` are the endpoint's and its flag's, for errors.
fn bind_router(
    ctx: &zmq::Context,
    config: &Config,
    (configure, door): (fn(&zmq::Socket) -> zmq::Result<()>, Door),
    (given, offset): (Option<u16>, u16),
    (what, flag): (&'static str, &'static str),
) -> Result<(zmq::Socket, u16), Error> {
    let mut router = ctx.socket(zmq::ROUTER)?;
    router.set_ipv6(config.bind.is_ipv6())?;
    configure(&router)?;
    crate::access::guard(&mut router, config, door)?;
    let port = derived_port(config, given, offset, what, flag)?;
    let port = bind_zmq(&router, what, config.bind, port)?;
    Ok((router, port))
}

/// The broker's threads while it starts: when starting fails half-way, the threads already
/// running are stopped and joined. Each thread is supervised: one that ends or panics while the
/// broker runs stops the broker, with one log line and [`crate::Health::failure`] saying why.
struct Threads {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    handles: Vec<JoinHandle<()>>,
    /// See [`Config::fault`].
    fault: Option<String>,
}

impl Threads {
    fn spawn(&mut self, name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        // Registered now, so that a loop that never turns is seen as such.
        let _ = self.stats.health.beat(name);
        let fault = fault_for(self.fault.as_deref(), name);
        let handle = supervised(name, self.stats.clone(), self.stop.clone(), fault, run)?;
        self.handles.push(handle);
        Ok(())
    }

    /// The broker started: its threads are its own from now on.
    fn running(mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.handles)
    }
}

/// Runs `run` on a thread called `name`, supervised: should it end or panic while the broker
/// runs (`stop` not set), the broker stops, with one log line and [`crate::Health::failure`]
/// saying why. `fault` (debug builds, [`fault_for`]) makes it fail as asked.
pub(crate) fn supervised(
    name: &str,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    fault: Option<String>,
    run: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if inject(fault, &stop) {
                    run();
                }
            }));
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let cause = match ended {
                Ok(()) => format!("{thread} stopped"),
                Err(panic) => format!("{thread} panicked: {}", panic_text(&*panic)),
            };
            tracing::error!(cause, "a broker thread ended; the broker stops");
            stats.health.fail(cause);
            stop.store(true, Ordering::Relaxed);
        })
}

/// For a supervised thread whose input closed: the thread feeding it ended, and that thread's
/// supervisor is about to stop the broker saying why. Waits (a second at most) for the stop
/// before the thread returns, so that the cause recorded is the thread that ended first, not
/// this one (which once read "thingsbus-publish stopped" for an ingest that ended).
pub(crate) fn upstream_gone(stop: &AtomicBool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The fault [`Config::fault`] (`THREAD=FAULT`) asks of thread `name`, in debug builds only.
pub(crate) fn fault_for(fault: Option<&str>, name: &str) -> Option<String> {
    let (thread, fault) = fault?.split_once('=')?;
    (cfg!(debug_assertions) && thread == name).then(|| fault.to_owned())
}

/// Carries out a fault asked for by [`Config::fault`]: `panic` panics, `exit` returns at once,
/// `wedge` hangs (until the broker stops) without the thread's loop ever turning. True when
/// the thread's own work is to run.
fn inject(fault: Option<String>, stop: &AtomicBool) -> bool {
    match fault.as_deref() {
        Some("panic") => panic!("fault injected"),
        Some("exit") => false,
        Some("wedge") => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            false
        }
        _ => true,
    }
}

/// The message a panic was raised with.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Drop for Threads {
    fn drop(&mut self) {
        if self.handles.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }
}

/// With `--allow-input` or `--auth-file`, the ZAP handler's socket: it must listen before the
/// guarded sockets bind.
fn zap_socket(ctx: &zmq::Context, config: &Config) -> Result<Option<zmq::Socket>, Error> {
    if !crate::access::any_guarded(config) {
        return Ok(None);
    }
    let rep = ctx.socket(zmq::REP)?;
    rep.set_linger(0)?;
    rep.bind("inproc://zeromq.zap.01")?;
    Ok(Some(rep))
}

/// The directory from the state file, and the journal that keeps it from now on.
fn restore(
    config: &Config,
    stats: &Arc<Stats>,
    threads: &mut Threads,
) -> Result<(Directory, Option<Journal>), Error> {
    let Some(path) = &config.state_file else {
        return Ok((Directory::new(), None));
    };
    let state_error = |e: io::Error| Error::State {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let dir = crate::journal::restore(
        path,
        Timestamp::now(),
        config.live_window.as_secs_f64(),
        config.forget_after.as_secs_f64(),
        BROKER_NS,
    )
    .map_err(state_error)?;
    crate::stats::set(&stats.things, dir.len() as u64);
    let (journal, writer) = Journal::start(
        path.clone(),
        config.fsync_interval,
        &dir,
        BROKER_NS,
        stats.clone(),
        threads.stop.clone(),
    )
    .map_err(state_error)?;
    // Supervised like every loop: a writer that dies stops the broker (see Journal::start).
    threads.spawn("thingsbus-journal", move || writer.run())?;
    Ok((dir, Some(journal)))
}

impl Broker {
    /// Binds every endpoint and starts serving.
    ///
    /// # Errors
    /// [`Error::AddressInUse`] when a port is taken, [`Error::FeatureMissing`] when the
    /// configuration asks for what this build left out, other variants when the system refuses.
    pub fn start(config: Config) -> Result<Broker, Error> {
        if config.history.is_some() && config.http.is_none() {
            return Err(Error::History(
                "--history records what the HTTP side sees: add --http ADDR:PORT (e.g. --http \
                 127.0.0.1:8080)"
                    .into(),
            ));
        }
        if config.curve.is_some() {
            // Never run unprotected because this build cannot protect.
            thingsbus_protocol::transport::require_curve()?;
        }
        let auth = config
            .auth_file
            .as_deref()
            .map(AuthCell::open)
            .transpose()?
            .map(Arc::new);
        let ctx = zmq::Context::new();
        let zap = zap_socket(&ctx, &config)?;
        let Bound {
            publisher,
            sub,
            udp,
            snapshots,
            commands,
            mut endpoints,
        } = Bound::bind(&ctx, &config)?;
        let stats = Arc::new(Stats::default());
        stats.watch_udp_drops(&udp);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Threads {
            stop: stop.clone(),
            stats: stats.clone(),
            handles: Vec::new(),
            fault: config.fault.clone(),
        };
        // How the threads hand each other work.
        let (datagrams_post, datagrams) = mailbox(&ctx, "datagrams", 4096)?;
        let (want_view_post, want_view) = mailbox(&ctx, "view-wanted", 16)?;
        let (views_post, views) = mailbox(&ctx, "views", 16)?;
        let (remote_post, remote) = mailbox::<Vec<u8>>(&ctx, "remote", 65_536)?;
        // Bounded: if publishing ever fell behind, ingest waits and libzmq's input queues (not
        // this process's heap) absorb the difference.
        let (publish_tx, publish_rx) = mpsc::sync_channel(256);

        let (relay_link, relay_ends) = crate::cluster::relay::link(&ctx, &config)?;
        // Ingest checks the boards' signed datagrams; the command thread signs what it sends
        // them: one replay state between them.
        let board_auth = Arc::new(std::sync::Mutex::new(crate::board_auth::BoardAuth::new(
            4096,
        )));
        let commands = CommandRouter {
            router: commands,
            udp: udp.try_clone()?,
            datagrams,
            allow_command: crate::access::AllowList::new(config.allow_command.clone()),
            allow_serve: crate::access::AllowList::new(config.allow_serve.clone()),
            stats: stats.clone(),
            stop: stop.clone(),
            relay: relay_link,
            auth: auth.clone(),
            board_auth: board_auth.clone(),
        };
        threads.spawn("thingsbus-commands", move || commands.run())?;
        // The HTTP side reads through the broker's own endpoints: under CURVE with a key pair
        // made for this run, which the ZAP handler lets in whatever the auth file says.
        let http_keys = match (&config.curve, config.http) {
            (Some(own), Some(_)) => Some(
                transport::ClientKeys::new(own.public, None)
                    .map_err(|e| Error::Http(format!("making the HTTP side's CURVE key: {e}")))?,
            ),
            _ => None,
        };
        if let Some(socket) = zap {
            let handler = crate::access::ZapHandler {
                socket,
                allow: crate::access::AllowList::new(config.allow_input.clone()),
                auth: auth.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                internal: http_keys.as_ref().map(|k| *k.own.public.as_bytes()),
            };
            threads.spawn("thingsbus-zap", move || handler.run())?;
        }

        let (dir, journal) = restore(&config, &stats, &mut threads)?;
        let (dir, cluster) = crate::cluster::join(
            &config,
            dir,
            &stats,
            &stop,
            remote_post,
            relay_ends,
            &mut threads.handles,
        )?;

        let mut dir = dir;
        dir.set_caps(Caps {
            things: config.max_things,
            bytes: config.max_bytes,
        });
        stats::set(&stats.max_things, config.max_things as u64);
        stats::set(&stats.max_bytes, config.max_bytes as u64);
        let snapshots = SnapshotServer {
            router: snapshots,
            want_view: want_view_post,
            views,
            stats: stats.clone(),
            stop: stop.clone(),
            chunk_bytes: config.snapshot_chunk_bytes,
        };
        threads.spawn("thingsbus-snapshots", move || snapshots.run())?;
        // Peers connecting and leaving, for the gauges.
        let watched = [Event::Accepted, Event::Disconnected];
        let input_monitor = transport::monitor(&ctx, &sub, "input", &watched)?;
        let output_monitor = transport::monitor(&ctx, &publisher, "output", &watched)?;
        let output = Arc::new(Output::new(publisher, stats.clone()));
        let publish = Publisher::new(
            output.clone(),
            publish_rx,
            stats.clone(),
            stop.clone(),
            config.snapshot_chunk_bytes,
        );
        threads.spawn("thingsbus-publish", move || publish.run())?;
        let ingest = Ingest::new(
            &config,
            IngestSockets {
                sub,
                udp,
                input_monitor,
                output_monitor,
            },
            IngestLinks {
                tx: publish_tx,
                output,
                want_view,
                views: views_post,
                datagrams: datagrams_post,
                remote,
                stats: stats.clone(),
                stop: stop.clone(),
            },
            dir,
            journal,
            cluster,
        );
        let ingest = ingest.with_auth(auth.clone(), board_auth);
        threads.spawn("thingsbus-ingest", move || {
            ingest.run();
            // Sockets are closed by now; the context can end.
            drop(ctx);
        })?;

        if let Some(addr) = config.http {
            let (thread, bound) = crate::http::start(
                addr,
                &endpoints,
                stats.clone(),
                stop.clone(),
                &config,
                http_keys,
            )?;
            threads.handles.push(thread);
            endpoints.http = Some(bound);
        }
        Ok(Broker {
            endpoints,
            stats,
            stop,
            threads: threads.running(),
            auth,
        })
    }

    /// Reads the `--auth-file` again (the binary does on SIGHUP). Connections already in keep
    /// going, and every message from now on is checked against the new rights.
    ///
    /// # Errors
    /// [`Error::AuthFile`] when the file cannot be read or is wrong: the rights in force stay.
    /// Without an auth file there is nothing to read and nothing happens.
    pub fn reload_auth(&self) -> Result<(), Error> {
        match &self.auth {
            Some(cell) => cell.reload(),
            None => Ok(()),
        }
    }

    /// Where the broker listens, with the ports it actually got.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Whether the broker has stopped, or is stopping: asked to, or by itself (see
    /// [`crate::Health::failure`]).
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A handle that stops this broker from elsewhere.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Asks the broker to stop (returns at once; [`Broker::join`] waits).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until the broker has stopped.
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a broker thread panicked");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown();
        self.join_threads();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_fails_half_way_stops_the_threads_it_started() {
        // The command thread holds the command port: it is free again once that thread ends.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut config = Config::ephemeral();
        config.command_port = Some(port);
        // The command thread is running by the time the state file is opened.
        config.state_file = Some("/proc/thingsbus-cannot-write-here/state".into());
        let e = Broker::start(config).expect_err("the state file cannot be written");
        assert!(matches!(e, Error::State { .. }), "{e}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command port {port} is still bound after the failed start: {e}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[cfg(not(feature = "cluster"))]
    #[test]
    fn cluster_without_the_feature_is_refused_naming_the_feature() {
        let mut config = Config::ephemeral();
        config.cluster = Some(crate::config::ClusterConfig::new(
            vec!["nats://127.0.0.1:4222".into()],
            "a",
        ));
        let e = Broker::start(config).expect_err("refused");
        assert!(
            matches!(
                e,
                Error::FeatureMissing {
                    feature: "cluster",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--features cluster"), "{e}");
    }
}
