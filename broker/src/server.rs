//! Starting and stopping a broker: binds every endpoint, then runs the ingest and publish threads.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::commands::CommandRouter;
use crate::config::Config;
use crate::ingest::{Ingest, IngestLinks, IngestSockets};
use crate::publish::{Output, Publisher};
use crate::snapshot_server::SnapshotServer;
use crate::stats::Stats;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint's address is taken.
    #[error(
        "{what} {endpoint} is already in use (is another broker running?); choose another port"
    )]
    AddressInUse {
        /// Which endpoint.
        what: &'static str,
        /// The address that was asked for.
        endpoint: String,
    },
    /// An endpoint could not be bound for another reason.
    #[error("cannot bind {what} {endpoint}: {reason}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// The address that was asked for.
        endpoint: String,
        /// What the system said.
        reason: String,
    },
    /// The configuration asks for something this build left out.
    #[error(
        "{flag} needs the `{feature}` feature, which this broker was built without; build it \
         with `cargo build --release -p thingsbus-broker --features {feature}`"
    )]
    FeatureMissing {
        /// The flag (or configuration field) that asked for it.
        flag: &'static str,
        /// The Cargo feature.
        feature: &'static str,
    },
    /// Setting up a ZeroMQ socket failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The state file could not be read or written.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] io::Error),
}

/// Where a running broker can be reached.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Directory output, e.g. `tcp://127.0.0.1:7954`: clients connect a SUB socket here.
    pub directory: String,
    /// ZMQ input, e.g. `tcp://127.0.0.1:7955`: adaptors connect a PUB socket here.
    pub input: String,
    /// UDP input: adaptors send MessagePack datagrams here.
    pub udp: SocketAddr,
    /// The directory output port that was bound.
    pub directory_port: u16,
    /// The input port (ZMQ and UDP) that was bound.
    pub input_port: u16,
    /// Snapshot requests, e.g. `tcp://127.0.0.1:7956`: late joiners connect a DEALER socket here.
    pub snapshot: String,
    /// The snapshot endpoint port that was bound.
    pub snapshot_port: u16,
    /// Commands to things, e.g. `tcp://127.0.0.1:7957`: callers and serving adaptors connect a
    /// DEALER socket here.
    pub command: String,
    /// The command endpoint port that was bound.
    pub command_port: u16,
    /// The HTTP side's address, when it runs.
    pub http: Option<SocketAddr>,
}

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

fn zmq_endpoint(addr: IpAddr, port: u16) -> String {
    let port = if port == 0 {
        "*".to_owned()
    } else {
        port.to_string()
    };
    match addr {
        IpAddr::V4(a) => format!("tcp://{a}:{port}"),
        IpAddr::V6(a) => format!("tcp://[{a}]:{port}"),
    }
}

/// TCP keepalive finds peers that vanished without closing the connection (a board unplugged, a
/// laptop suspended), so their queues are freed. Chosen over ZMTP heartbeats, which send PING
/// commands that peers on libzmq older than 4.2 do not know.
fn set_keepalive(socket: &zmq::Socket) -> Result<(), Error> {
    socket.set_tcp_keepalive(1)?;
    socket.set_tcp_keepalive_idle(60)?;
    socket.set_tcp_keepalive_intvl(10)?;
    socket.set_tcp_keepalive_cnt(3)?;
    Ok(())
}

fn bound_port(socket: &zmq::Socket) -> Result<u16, Error> {
    let last = socket
        .get_last_endpoint()?
        .map_err(|_| Error::Zmq(zmq::Error::EINVAL))?;
    last.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(Error::Zmq(zmq::Error::EINVAL))
}

fn bind_zmq(
    socket: &zmq::Socket,
    what: &'static str,
    addr: IpAddr,
    port: u16,
) -> Result<u16, Error> {
    let endpoint = zmq_endpoint(addr, port);
    match socket.bind(&endpoint) {
        Ok(()) => bound_port(socket),
        Err(zmq::Error::EADDRINUSE) => Err(Error::AddressInUse { what, endpoint }),
        Err(e) => Err(Error::Bind {
            what,
            endpoint,
            reason: e.to_string(),
        }),
    }
}

fn bind_udp(config: &Config, port: u16) -> Result<UdpSocket, io::Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(config.bind, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Bursts from many boards must not overflow the kernel queue; the kernel caps the value.
    if let Err(e) = socket.set_recv_buffer_size(config.udp_recv_buffer) {
        tracing::debug!(error = %e, "could not raise the UDP receive buffer");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn udp_error(e: io::Error, config: &Config, port: u16) -> Error {
    let endpoint = SocketAddr::new(config.bind, port).to_string();
    if e.kind() == io::ErrorKind::AddrInUse {
        Error::AddressInUse {
            what: "UDP input",
            endpoint,
        }
    } else {
        Error::Bind {
            what: "UDP input",
            endpoint,
            reason: e.to_string(),
        }
    }
}

fn input_sockets(
    ctx: &zmq::Context,
    config: &Config,
) -> Result<(zmq::Socket, UdpSocket, u16), Error> {
    let make_sub = || -> Result<zmq::Socket, Error> {
        let sub = ctx.socket(zmq::SUB)?;
        sub.set_ipv6(config.bind.is_ipv6())?;
        sub.set_maxmsgsize(i64::try_from(config.max_message_bytes).unwrap_or(i64::MAX))?;
        sub.set_rcvhwm(config.input_hwm)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        set_keepalive(&sub)?;
        if !config.allow_input.is_empty() {
            // Every new input connection is put to the ZAP handler (NULL mechanism).
            sub.set_zap_domain(crate::access::ZAP_DOMAIN)?;
        }
        Ok(sub)
    };
    let wanted = match config.input_port {
        Some(p) => p,
        None if config.port == 0 => 0,
        None => config.port.checked_add(1).ok_or_else(|| Error::Bind {
            what: "input",
            endpoint: zmq_endpoint(config.bind, config.port),
            reason: "the input port (port + 1) does not exist; pass --input-port".into(),
        })?,
    };
    if wanted != 0 {
        let sub = make_sub()?;
        let port = bind_zmq(&sub, "ZMQ input", config.bind, wanted)?;
        let udp = bind_udp(config, port).map_err(|e| udp_error(e, config, port))?;
        return Ok((sub, udp, port));
    }
    // A free port for ZMQ, then the same number for UDP; retry if UDP has it taken.
    let mut last_err = None;
    for _ in 0..20 {
        let sub = make_sub()?;
        let port = bind_zmq(&sub, "ZMQ input", config.bind, 0)?;
        match bind_udp(config, port) {
            Ok(udp) => return Ok((sub, udp, port)),
            Err(e) => last_err = Some(udp_error(e, config, port)),
        }
    }
    Err(last_err.expect("the loop ran at least once"))
}

fn monitor(ctx: &zmq::Context, socket: &zmq::Socket, name: &str) -> Result<zmq::Socket, Error> {
    let endpoint = format!("inproc://thingsbus-monitor-{name}");
    let events = zmq::SocketEvent::ACCEPTED.to_raw() | zmq::SocketEvent::DISCONNECTED.to_raw();
    socket.monitor(&endpoint, i32::from(events))?;
    let pair = ctx.socket(zmq::PAIR)?;
    pair.connect(&endpoint)?;
    Ok(pair)
}

impl Broker {
    /// Binds every endpoint and starts serving.
    ///
    /// # Errors
    /// [`Error::AddressInUse`] when a port is taken, other variants when the system refuses.
    pub fn start(config: Config) -> Result<Broker, Error> {
        let ctx = zmq::Context::new();
        // The ZAP handler must listen before the input socket binds.
        let zap = if config.allow_input.is_empty() {
            None
        } else {
            let rep = ctx.socket(zmq::REP)?;
            rep.set_linger(0)?;
            rep.bind("inproc://zeromq.zap.01")?;
            Some(rep)
        };
        let publisher = ctx.socket(zmq::PUB)?;
        publisher.set_ipv6(config.bind.is_ipv6())?;
        publisher.set_sndhwm(config.subscriber_hwm)?;
        publisher.set_linger(100)?;
        set_keepalive(&publisher)?;
        let directory_port = bind_zmq(&publisher, "directory output", config.bind, config.port)?;
        let (sub, udp, input_port) = input_sockets(&ctx, &config)?;
        let input_monitor = monitor(&ctx, &sub, "input")?;
        let output_monitor = monitor(&ctx, &publisher, "output")?;
        let router = ctx.socket(zmq::ROUTER)?;
        router.set_ipv6(config.bind.is_ipv6())?;
        SnapshotServer::configure(&router)?;
        let wanted_snapshot_port = match config.snapshot_port {
            Some(p) => p,
            None if config.port == 0 => 0,
            None => config.port.checked_add(2).ok_or_else(|| Error::Bind {
                what: "snapshot endpoint",
                endpoint: zmq_endpoint(config.bind, config.port),
                reason: "the snapshot port (port + 2) does not exist; pass --snapshot-port".into(),
            })?,
        };
        let snapshot_port = bind_zmq(
            &router,
            "snapshot endpoint",
            config.bind,
            wanted_snapshot_port,
        )?;
        let command_router = ctx.socket(zmq::ROUTER)?;
        command_router.set_ipv6(config.bind.is_ipv6())?;
        CommandRouter::configure(&command_router)?;
        let wanted_command_port = match config.command_port {
            Some(p) => p,
            None if config.port == 0 => 0,
            None => config.port.checked_add(3).ok_or_else(|| Error::Bind {
                what: "command endpoint",
                endpoint: zmq_endpoint(config.bind, config.port),
                reason: "the command port (port + 3) does not exist; pass --command-port".into(),
            })?,
        };
        let command_port = bind_zmq(
            &command_router,
            "command endpoint",
            config.bind,
            wanted_command_port,
        )?;
        let command_wake_ingest = ctx.socket(zmq::PAIR)?;
        command_wake_ingest.bind("inproc://thingsbus-command-wake")?;
        let command_wake = ctx.socket(zmq::PAIR)?;
        command_wake.connect("inproc://thingsbus-command-wake")?;
        let wake_ingest = ctx.socket(zmq::PAIR)?;
        wake_ingest.bind("inproc://thingsbus-snapshot-wake")?;
        let wake_server = ctx.socket(zmq::PAIR)?;
        wake_server.connect("inproc://thingsbus-snapshot-wake")?;

        let connect_host = if config.bind.is_unspecified() {
            match config.bind {
                IpAddr::V4(_) => "127.0.0.1".to_owned(),
                IpAddr::V6(_) => "[::1]".to_owned(),
            }
        } else {
            match config.bind {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            }
        };
        let endpoints = Endpoints {
            directory: format!("tcp://{connect_host}:{directory_port}"),
            input: format!("tcp://{connect_host}:{input_port}"),
            udp: udp.local_addr()?,
            directory_port,
            input_port,
            snapshot: format!("tcp://{connect_host}:{snapshot_port}"),
            snapshot_port,
            command: format!("tcp://{connect_host}:{command_port}"),
            command_port,
            http: None,
        };
        let command_udp = udp.try_clone()?;

        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Bounded: if publishing ever fell behind, ingest waits and libzmq's input queues (not
        // this process's heap) absorb the difference.
        let (tx, rx) = mpsc::sync_channel(256);
        let (views_tx, views_rx) = mpsc::channel();
        let snapshot_server = SnapshotServer {
            router,
            wake: wake_server,
            views: views_rx,
            stats: stats.clone(),
            stop: stop.clone(),
            chunk_bytes: config.snapshot_chunk_bytes,
        };

        let mut threads = Vec::new();
        let (datagrams_tx, datagrams_rx) = mpsc::sync_channel(4096);
        // With --cluster, commands also travel between brokers, through the cluster's relay.
        #[cfg(feature = "cluster")]
        let (relay_link, relay_ends) = if config.cluster.is_some() {
            let (to_tx, to_rx) = tokio::sync::mpsc::channel(4096);
            let (from_tx, from_rx) = mpsc::sync_channel(4096);
            let wake_commands = ctx.socket(zmq::PAIR)?;
            wake_commands.bind("inproc://thingsbus-relay-wake")?;
            let wake_relay = ctx.socket(zmq::PAIR)?;
            wake_relay.connect("inproc://thingsbus-relay-wake")?;
            (
                Some(crate::commands::RelayLink {
                    to: to_tx,
                    from: from_rx,
                    wake: wake_commands,
                }),
                Some(crate::cluster::relay::RelayEnds {
                    from_commands: to_rx,
                    to_commands: from_tx,
                    wake: wake_relay,
                }),
            )
        } else {
            (None, None)
        };
        #[cfg(not(feature = "cluster"))]
        let relay_link = None;
        let router = CommandRouter {
            router: command_router,
            udp: command_udp,
            datagrams: datagrams_rx,
            wake: command_wake,
            allow_command: crate::access::AllowList::new(config.allow_command.clone()),
            allow_serve: crate::access::AllowList::new(config.allow_input.clone()),
            stats: stats.clone(),
            stop: stop.clone(),
            relay: relay_link,
        };
        threads.push(
            std::thread::Builder::new()
                .name("thingsbus-commands".into())
                .spawn(move || router.run())?,
        );
        if let Some(socket) = zap {
            let handler = crate::access::ZapHandler {
                socket,
                allow: crate::access::AllowList::new(config.allow_input.clone()),
                stats: stats.clone(),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name("thingsbus-zap".into())
                    .spawn(move || handler.run())?,
            );
        }
        let (dir, journal) = match &config.state_file {
            None => (thingsbus_protocol::Directory::new(), None),
            Some(path) => {
                let state_error = |e: io::Error| Error::State {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                let dir = crate::journal::restore(
                    path,
                    thingsbus_protocol::Timestamp::now(),
                    config.live_window.as_secs_f64(),
                    config.forget_after.as_secs_f64(),
                    crate::ingest::BROKER_NS,
                )
                .map_err(state_error)?;
                crate::stats::set(&stats.things, dir.len() as u64);
                let (journal, thread) = crate::journal::Journal::start(
                    path.clone(),
                    config.fsync_interval,
                    &dir,
                    crate::ingest::BROKER_NS,
                    stats.clone(),
                )
                .map_err(state_error)?;
                threads.push(thread);
                (dir, Some(journal))
            }
        };
        let cluster_wake_ingest = ctx.socket(zmq::PAIR)?;
        cluster_wake_ingest.bind("inproc://thingsbus-cluster-wake")?;
        let cluster_wake = ctx.socket(zmq::PAIR)?;
        cluster_wake.connect("inproc://thingsbus-cluster-wake")?;
        #[cfg_attr(not(feature = "cluster"), allow(unused_mut))]
        let mut dir = dir;
        #[cfg(feature = "cluster")]
        let cluster = match &config.cluster {
            None => None,
            Some(cc) => {
                // The whole cluster's directory is loaded before anything serves.
                let (link, loaded, thread) = crate::cluster::start(
                    cc.clone(),
                    stats.clone(),
                    stop.clone(),
                    cluster_wake,
                    config.forget_after,
                    std::time::Duration::from_secs(10),
                    relay_ends,
                )?;
                threads.push(thread);
                let now = thingsbus_protocol::Timestamp::now();
                let mut applied = 0;
                for bytes in &loaded {
                    applied += usize::from(crate::ingest::apply_remote_update(
                        &mut dir, bytes, now, &stats,
                    ));
                }
                crate::stats::set(&stats.things, dir.len() as u64);
                tracing::info!(things = applied, "loaded the cluster's directory");
                Some(link)
            }
        };
        #[cfg(not(feature = "cluster"))]
        {
            drop(cluster_wake);
            if config.cluster.is_some() {
                stop.store(true, Ordering::Relaxed);
                return Err(Error::FeatureMissing {
                    flag: "--cluster",
                    feature: "cluster",
                });
            }
        }
        let output = Arc::new(Output::new(publisher, stats.clone()));
        let publish = Publisher::new(
            output.clone(),
            rx,
            stats.clone(),
            config.snapshot_chunk_bytes,
        );
        let ingest = Ingest::new(
            &config,
            IngestSockets {
                sub,
                udp,
                input_monitor,
                output_monitor,
                snapshot_wake: wake_ingest,
                command_wake: command_wake_ingest,
                cluster_wake: cluster_wake_ingest,
            },
            IngestLinks {
                tx,
                output,
                views: views_tx,
                datagrams: datagrams_tx,
                stats: stats.clone(),
                stop: stop.clone(),
            },
            dir,
            journal,
            #[cfg(feature = "cluster")]
            cluster,
        );
        threads.push(
            std::thread::Builder::new()
                .name("thingsbus-snapshots".into())
                .spawn(move || snapshot_server.run())?,
        );

        threads.push(
            std::thread::Builder::new()
                .name("thingsbus-publish".into())
                .spawn(move || publish.run())?,
        );
        let ingest_thread = std::thread::Builder::new()
            .name("thingsbus-ingest".into())
            .spawn(move || {
                ingest.run();
                // Sockets are closed by now; the context can end.
                drop(ctx);
            });
        match ingest_thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
        #[cfg_attr(not(feature = "http"), allow(unused_mut))]
        let mut endpoints = endpoints;
        if let Some(addr) = config.http {
            #[cfg(feature = "http")]
            match crate::http::start(
                addr,
                &endpoints,
                stats.clone(),
                stop.clone(),
                config.http_thing_metrics,
            ) {
                Ok((thread, bound)) => {
                    threads.push(thread);
                    endpoints.http = Some(bound);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
            #[cfg(not(feature = "http"))]
            {
                stop.store(true, Ordering::Relaxed);
                return Err(Error::Bind {
                    what: "HTTP endpoint",
                    endpoint: addr.to_string(),
                    reason: "this broker was built without the http feature".into(),
                });
            }
        }
        Ok(Broker {
            endpoints,
            stats,
            stop,
            threads,
        })
    }

    /// Where the broker listens, with the ports it actually got.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
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

#[cfg(all(test, not(feature = "cluster")))]
mod tests {
    use super::*;

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
