//! A real, in-process authoritative DNS server on 127.0.0.1 for tests that exercise SRV/A
//! discovery, built on `hickory-server`.
//!
//! [`DnsServer::start`] binds UDP and TCP on the same ephemeral port *before* it returns, so the
//! server is ready at once: queries sent meanwhile wait in the kernel's socket buffers (UDP) or
//! listen backlog (TCP) until the server's own thread picks them up. No sleeping needed.
//!
//! The zone holds exactly: an SOA and an NS record at the apex (NS target `ns1.<zone>.`, which has
//! no address record unless the caller adds one), plus the caller's SRV, A and TXT records, all with a
//! TTL of [`TTL`] seconds. Negative answers follow hickory-server's authoritative logic:
//!
//! * a name in the zone with no records at or below it answers `NXDOMAIN`, SOA in authority;
//! * a name that has records of other types, or only has records below it (an "empty
//!   non-terminal" such as `_tcp.example.org` when `_thingsbus._tcp.example.org` exists),
//!   answers `NOERROR` with no answers (NODATA), SOA in authority;
//! * a name outside the zone answers `REFUSED`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, NS, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::sync::oneshot;

/// TTL, in seconds, of every record served (and the SOA minimum, i.e. the negative-cache TTL).
pub const TTL: u32 = 1;

/// Zone serial number (never changes: the zone is fixed for the server's lifetime).
const SERIAL: u32 = 1;

/// How long a TCP client may stay idle before the server closes its connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection buffer of outgoing TCP responses.
const TCP_RESPONSE_BUFFER: usize = 32;

/// How many ephemeral UDP ports to try before giving up finding one whose TCP twin is free.
const PORT_ATTEMPTS: usize = 64;

/// How long `Drop` waits for the server's tasks to wind down before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One SRV record to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Owner name, e.g. `_thingsbus._tcp.example.org` (with or without trailing dot); must be
    /// inside the served zone.
    pub name: String,
    /// Priority: lower is tried first.
    pub priority: u16,
    /// Weight among records of equal priority.
    pub weight: u16,
    /// Port of the service on `target`.
    pub port: u16,
    /// Target host, e.g. `broker1.example.org.` (with or without trailing dot, always taken as
    /// absolute), or `.` for the RFC 2782 "service decidedly not available" target.
    pub target: String,
}

/// An authoritative DNS server for one zone, on 127.0.0.1, UDP and TCP on the same ephemeral port.
/// Runs on its own thread with its own tokio runtime; dropping it stops it and frees the port.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `zone` (e.g. "example.org") with the given SRV records and A records (host -> IPv4).
    /// Names inside the zone that have no records at all answer NXDOMAIN; a name that exists
    /// but lacks the asked type answers NOERROR with no answers (NODATA), as real servers do.
    ///
    /// All names are absolute, with or without a trailing dot. Several records with the same
    /// name and type form one RRset. Panics, saying why, on a malformed name, on a record
    /// outside `zone`, or if no port pair can be bound.
    pub fn start(zone: &str, srv: &[SrvRecord], a: &[(&str, Ipv4Addr)]) -> DnsServer {
        DnsServer::start_with_txt(zone, srv, a, &[])
    }

    /// [`DnsServer::start`] with TXT records too: each `(name, strings)` is one TXT record (the
    /// strings are its character-strings), e.g. the brokers' key,
    /// `("_thingsbus._tcp.example.org", &["curve=<Z85>"])`.
    pub fn start_with_txt(
        zone: &str,
        srv: &[SrvRecord],
        a: &[(&str, Ipv4Addr)],
        txt: &[(&str, &[&str])],
    ) -> DnsServer {
        let origin = absolute(zone);
        assert!(
            !origin.is_root(),
            "DnsServer needs a real zone, not the root: {zone:?}"
        );
        let handler = build_zone(&origin, srv, a, txt);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![handler]);

        let (udp, tcp) = bind_pair();
        let addr = udp
            .local_addr()
            .expect("bound UDP socket has a local address");
        udp.set_nonblocking(true)
            .expect("DNS UDP socket can be made non-blocking");
        tcp.set_nonblocking(true)
            .expect("DNS TCP listener can be made non-blocking");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime for the DNS server builds");
        // Register the sockets now, on this thread, so that start() fails loudly here rather than
        // on the server thread; the current-thread runtime only runs them once the server thread
        // enters block_on, but the sockets are already bound, so nothing sent meanwhile is lost.
        let mut server = {
            let _in_runtime = runtime.enter();
            let udp = tokio::net::UdpSocket::from_std(udp)
                .expect("DNS UDP socket registers with the tokio reactor");
            let tcp = tokio::net::TcpListener::from_std(tcp)
                .expect("DNS TCP listener registers with the tokio reactor");
            let mut server = Server::new(catalog);
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
            server
        };

        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("dns-server-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    // Either an explicit stop or the DnsServer being dropped (sender gone).
                    let _ = stopped.await;
                    match tokio::time::timeout(SHUTDOWN_GRACE, server.shutdown_gracefully()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("dns server on {addr}: stopped with error: {e}"),
                        Err(_) => eprintln!(
                            "dns server on {addr}: tasks still running after {SHUTDOWN_GRACE:?}, \
                             dropping them"
                        ),
                    }
                });
                // Dropping the runtime here aborts any leftover task and closes the sockets.
                drop(runtime);
            })
            .expect("DNS server thread spawns");

        DnsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address to send queries to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The receiver is only gone if the server thread already ended; nothing to stop then.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never panic in drop (it may run during unwinding); just report.
            if thread.join().is_err() {
                eprintln!("dns server on {}: server thread panicked", self.addr);
            }
        }
    }
}

/// Parses `name` as an absolute domain name, with or without its trailing dot; `.` or "" is root.
fn absolute(name: &str) -> Name {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Name::root();
    }
    Name::from_ascii(format!("{trimmed}."))
        .unwrap_or_else(|e| panic!("{name:?} is not a valid DNS name: {e}"))
}

/// Parses `name` like [`absolute`] and checks it lies inside `origin`.
fn in_zone(name: &str, origin: &Name) -> Name {
    let parsed = absolute(name);
    assert!(
        origin.zone_of(&parsed),
        "record name {name:?} is outside the served zone {origin}"
    );
    parsed
}

/// Builds the zone: SOA and NS at the apex, then the caller's SRV and A records.
fn build_zone(
    origin: &Name,
    srv: &[SrvRecord],
    a: &[(&str, Ipv4Addr)],
    txt: &[(&str, &[&str])],
) -> Arc<dyn ZoneHandler> {
    let mut handler: InMemoryZoneHandler =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);

    let child = |label: &str| {
        Name::from_ascii(label)
            .and_then(|l| l.append_domain(origin))
            .unwrap_or_else(|e| panic!("{label}.{origin} is not a valid DNS name: {e}"))
    };
    let ns_host = child("ns1");
    let soa = SOA::new(
        ns_host.clone(),
        child("hostmaster"),
        SERIAL,
        TTL as i32, // refresh
        TTL as i32, // retry
        60,         // expire
        TTL,        // minimum: the TTL of negative answers
    );
    let mut insert = |record: Record, what: &dyn std::fmt::Display| {
        assert!(
            handler.upsert_mut(record, SERIAL),
            "hickory refused to add {what} to zone {origin}"
        );
    };
    insert(
        Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)),
        &"the SOA record",
    );
    insert(
        Record::from_rdata(origin.clone(), TTL, RData::NS(NS(ns_host))),
        &"the NS record",
    );
    for r in srv {
        let rdata = SRV::new(r.priority, r.weight, r.port, absolute(&r.target));
        insert(
            Record::from_rdata(in_zone(&r.name, origin), TTL, RData::SRV(rdata)),
            &format_args!("SRV {r:?}"),
        );
    }
    for (host, ip) in a {
        insert(
            Record::from_rdata(in_zone(host, origin), TTL, RData::A(A(*ip))),
            &format_args!("A {host} {ip}"),
        );
    }
    for (name, strings) in txt {
        let rdata = TXT::new(strings.iter().map(|t| (*t).to_owned()).collect());
        insert(
            Record::from_rdata(in_zone(name, origin), TTL, RData::TXT(rdata)),
            &format_args!("TXT {name} {strings:?}"),
        );
    }
    Arc::new(handler)
}

/// Binds a UDP socket on an ephemeral 127.0.0.1 port and a TCP listener on the same port,
/// retrying with a fresh port when that TCP port is already taken.
fn bind_pair() -> (UdpSocket, TcpListener) {
    let mut last_err = None;
    for _ in 0..PORT_ATTEMPTS {
        let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("an ephemeral UDP port on 127.0.0.1 is available");
        let port = udp
            .local_addr()
            .expect("bound UDP socket has a local address")
            .port();
        match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!(
        "no 127.0.0.1 port free for both UDP and TCP after {PORT_ATTEMPTS} tries; last error: {:?}",
        last_err
    );
}
