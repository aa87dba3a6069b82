//! SRV discovery against a real DNS server on 127.0.0.1.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use thingsbus_protocol::discovery::{Discovery, DiscoveryError, SeededRandom};
use thingsbus_tests::dns::{DnsServer, SrvRecord};

fn srv(name: &str, priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
    SrvRecord {
        name: name.into(),
        priority,
        weight,
        port,
        target: target.into(),
    }
}

fn server() -> DnsServer {
    DnsServer::start(
        "example.org",
        &[
            srv(
                "_thingsbus._tcp.prio.example.org",
                20,
                0,
                2000,
                "late.example.org.",
            ),
            srv(
                "_thingsbus._tcp.prio.example.org",
                10,
                0,
                1000,
                "early.example.org.",
            ),
            srv(
                "_thingsbus._tcp.prio.example.org",
                30,
                5,
                3000,
                "last.example.org.",
            ),
            srv(
                "_thingsbus._tcp.weighted.example.org",
                0,
                1,
                7954,
                "one.example.org.",
            ),
            srv(
                "_thingsbus._tcp.weighted.example.org",
                0,
                3,
                7954,
                "three.example.org.",
            ),
            srv("_thingsbus._tcp.none.example.org", 0, 0, 0, "."),
        ],
        &[
            ("early.example.org", Ipv4Addr::LOCALHOST),
            ("_thingsbus._tcp.nodata.example.org", Ipv4Addr::LOCALHOST),
        ],
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn priority_order_and_trailing_dot() {
    let dns = server();
    let d = Discovery::new().nameserver(dns.addr());
    let brokers = rt()
        .block_on(d.brokers("prio.example.org"))
        .expect("brokers");
    let hosts: Vec<&str> = brokers.iter().map(|b| b.host.as_str()).collect();
    assert_eq!(
        hosts,
        ["early.example.org", "late.example.org", "last.example.org"]
    );
    // A target with an A record at the same name server is resolved there; one without is left
    // for the system resolver.
    let first = &brokers[0];
    assert_eq!(first.ip, Some(Ipv4Addr::LOCALHOST.into()));
    assert_eq!(first.directory_url(), "tcp://127.0.0.1:1000");
    assert_eq!(first.input_url(), "tcp://127.0.0.1:1001");
    assert_eq!(first.udp_addr(), "127.0.0.1:1001");
    assert_eq!(brokers[1].ip, None);
    assert_eq!(brokers[1].directory_url(), "tcp://late.example.org:2000");
    // A zone written with a trailing dot works the same.
    let again = rt()
        .block_on(d.brokers("prio.example.org."))
        .expect("brokers");
    assert_eq!(again[0].host, "early.example.org");
}

#[test]
fn weights_share_the_first_pick() {
    let dns = server();
    let d = Discovery::new().nameserver(dns.addr());
    let rt = rt();
    let mut rng = SeededRandom::new(2782);
    let mut first: HashMap<String, u32> = HashMap::new();
    let draws = 400;
    for _ in 0..draws {
        let brokers = rt
            .block_on(d.brokers_with("weighted.example.org", &mut rng))
            .expect("brokers");
        assert_eq!(brokers.len(), 2);
        *first.entry(brokers[0].host.clone()).or_default() += 1;
    }
    // Weights 1 and 3: "three" first three times in four (the draw 0..=4 picks "one" for 0 and 1).
    let three = f64::from(first["three.example.org"]) / f64::from(draws);
    assert!((three - 0.6).abs() < 0.08, "{first:?}");
    // Seeded: the same seed gives the same sequence.
    let mut a = SeededRandom::new(9);
    let mut b = SeededRandom::new(9);
    let x = rt
        .block_on(d.brokers_with("weighted.example.org", &mut a))
        .expect("a");
    let y = rt
        .block_on(d.brokers_with("weighted.example.org", &mut b))
        .expect("b");
    assert_eq!(x, y);
}

#[test]
fn missing_records_are_clear_errors() {
    let dns = server();
    let d = Discovery::new().nameserver(dns.addr());
    let rt = rt();
    let err = rt
        .block_on(d.brokers("nothing.example.org"))
        .expect_err("NXDOMAIN");
    assert!(matches!(err, DiscoveryError::NxDomain { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("_thingsbus._tcp.nothing.example.org") && msg.contains("NXDOMAIN"),
        "{msg}"
    );

    let err = rt
        .block_on(d.brokers("nodata.example.org"))
        .expect_err("no SRV");
    assert!(matches!(err, DiscoveryError::NoSrv { .. }), "{err:?}");
    assert!(err.to_string().contains("has no SRV record"), "{err}");

    let err = rt
        .block_on(d.brokers("none.example.org"))
        .expect_err("no service");
    assert!(matches!(err, DiscoveryError::NoService { .. }), "{err:?}");
    assert!(err.to_string().contains("no thingsbus service"), "{err}");

    let err = rt
        .block_on(d.brokers("bad zone"))
        .expect_err("invalid zone");
    assert!(matches!(err, DiscoveryError::InvalidZone { .. }), "{err:?}");
}

#[test]
fn silent_nameserver_times_out() {
    // Something that takes queries and never answers, on UDP and TCP. The UDP port's number
    // may be taken on TCP by another test's socket: then another pair is tried.
    let (_udp, _tcp, addr) = (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
            let addr = udp.local_addr().expect("addr");
            let tcp = std::net::TcpListener::bind(addr).ok()?;
            Some((udp, tcp, addr))
        })
        .expect("a port free on both UDP and TCP");
    let d = Discovery::new()
        .nameserver(addr)
        .timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = rt()
        .block_on(d.brokers("example.org"))
        .expect_err("time-out");
    assert!(matches!(err, DiscoveryError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
