//! Where a broker listens: the ports it derives from one number, the sockets it binds and the
//! addresses it tells clients.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::config::Config;
use crate::error::Error;

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
    /// The broker's CURVE public key when every ZMQ endpoint speaks CURVE
    /// (`--curve-secret-file`); clients need it to connect.
    pub server_key: Option<thingsbus_protocol::keys::PublicKey>,
}

impl Endpoints {
    /// The addresses clients use for what was bound: this machine's loopback when the broker
    /// binds every address.
    pub(crate) fn new(
        config: &Config,
        directory_port: u16,
        input_port: u16,
        udp: SocketAddr,
        snapshot_port: u16,
        command_port: u16,
    ) -> Endpoints {
        let host = match config.bind {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_owned(),
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Endpoints {
            directory: format!("tcp://{host}:{directory_port}"),
            input: format!("tcp://{host}:{input_port}"),
            udp,
            directory_port,
            input_port,
            snapshot: format!("tcp://{host}:{snapshot_port}"),
            snapshot_port,
            command: format!("tcp://{host}:{command_port}"),
            command_port,
            http: None,
            server_key: config.curve.as_ref().map(|k| k.public),
        }
    }
}

/// The port of an endpoint that follows the directory port at `offset` (input + 1, snapshots
/// + 2, commands + 3) unless configured; 0 (any free port) when the directory port is 0.
pub(crate) fn derived_port(
    config: &Config,
    configured: Option<u16>,
    offset: u16,
    what: &'static str,
    flag: &str,
) -> Result<u16, Error> {
    match configured {
        Some(p) => Ok(p),
        None if config.port == 0 => Ok(0),
        None => config.port.checked_add(offset).ok_or_else(|| Error::Bind {
            what,
            endpoint: zmq_endpoint(config.bind, config.port),
            reason: format!("the {what} port (port + {offset}) does not exist; pass {flag}"),
        }),
    }
}

pub(crate) fn zmq_endpoint(addr: IpAddr, port: u16) -> String {
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
pub(crate) fn set_keepalive(socket: &zmq::Socket) -> Result<(), Error> {
    socket.set_tcp_keepalive(1)?;
    socket.set_tcp_keepalive_idle(60)?;
    socket.set_tcp_keepalive_intvl(10)?;
    socket.set_tcp_keepalive_cnt(3)?;
    Ok(())
}

pub(crate) fn bound_port(socket: &zmq::Socket) -> Result<u16, Error> {
    let last = socket
        .get_last_endpoint()?
        .map_err(|_| Error::Zmq(zmq::Error::EINVAL))?;
    last.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(Error::Zmq(zmq::Error::EINVAL))
}

pub(crate) fn bind_zmq(
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

pub(crate) fn bind_udp(config: &Config, port: u16) -> Result<UdpSocket, io::Error> {
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

pub(crate) fn udp_error(e: io::Error, config: &Config, port: u16) -> Error {
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

pub(crate) fn input_sockets(
    ctx: &zmq::Context,
    config: &Config,
) -> Result<(zmq::Socket, UdpSocket, u16), Error> {
    let make_sub = || -> Result<zmq::Socket, Error> {
        let mut sub = ctx.socket(zmq::SUB)?;
        sub.set_ipv6(config.bind.is_ipv6())?;
        sub.set_maxmsgsize(i64::try_from(config.max_message_bytes).unwrap_or(i64::MAX))?;
        sub.set_rcvhwm(config.input_hwm)?;
        sub.set_linger(0)?;
        sub.set_subscribe(b"")?;
        set_keepalive(&sub)?;
        // With --allow-input or --auth-file, every new connection is put to the ZAP handler.
        crate::access::guard(&mut sub, config, crate::access::Door::Input)?;
        Ok(sub)
    };
    let wanted = derived_port(config, config.input_port, 1, "input", "--input-port")?;
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
