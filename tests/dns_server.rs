//! The test DNS server in the harness answers real DNS queries, over UDP and TCP, with the SRV
//! and A records it was given, NXDOMAIN for unknown names and NODATA for a missing type.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use thingsbus_tests::dns::{DnsServer, SrvRecord, TTL};
use thingsbus_tests::DEADLINE;

const ZONE: &str = "example.org";
const SERVICE: &str = "_thingsbus._tcp.example.org";

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
    SrvRecord {
        name: SERVICE.to_string(),
        priority,
        weight,
        port,
        target: target.to_string(),
    }
}

fn start() -> DnsServer {
    DnsServer::start(
        ZONE,
        &[
            srv(10, 60, 5555, "broker1.example.org."),
            // Without the trailing dot on purpose: names are always absolute.
            srv(20, 40, 6666, "broker2.example.org"),
        ],
        &[("broker1.example.org", Ipv4Addr::new(192, 0, 2, 1))],
    )
}

/// A query message for `name`/`rtype`, encoded, with its id.
fn encode_query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    let name = Name::from_ascii(name).expect("test query name is valid");
    msg.add_query(Query::query(name, rtype));
    msg.to_vec().expect("query encodes")
}

fn decode_response(id: u16, bytes: &[u8]) -> Message {
    let msg = Message::from_vec(bytes).expect("server response decodes");
    assert_eq!(msg.metadata.id, id, "response answers our query");
    assert_eq!(msg.metadata.message_type, MessageType::Response);
    msg
}

fn query_udp(server: SocketAddr, id: u16, name: &str, rtype: RecordType) -> Message {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("client UDP socket binds");
    sock.set_read_timeout(Some(DEADLINE))
        .expect("read timeout can be set");
    sock.send_to(&encode_query(id, name, rtype), server)
        .expect("query sent");
    let mut buf = [0u8; 4096];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("DNS server answers over UDP");
    assert_eq!(from, server);
    decode_response(id, &buf[..n])
}

fn query_tcp(server: SocketAddr, id: u16, name: &str, rtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).expect("DNS server accepts TCP");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout can be set");
    let query = encode_query(id, name, rtype);
    let len = u16::try_from(query.len()).expect("query fits a TCP DNS frame");
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&query);
    stream.write_all(&frame).expect("query sent over TCP");
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .expect("DNS server answers over TCP (length prefix)");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut body)
        .expect("DNS server answers over TCP (message)");
    decode_response(id, &body)
}

/// (priority, weight, port, target) of every SRV answer, sorted by priority.
fn srv_answers(msg: &Message) -> Vec<(u16, u16, u16, String)> {
    let mut out: Vec<_> = msg
        .answers
        .iter()
        .map(|r| {
            assert_eq!(
                r.name,
                Name::from_ascii(format!("{SERVICE}.")).expect("valid")
            );
            assert_eq!(r.ttl, TTL);
            match &r.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
                other => panic!("expected only SRV answers, got {other:?}"),
            }
        })
        .collect();
    out.sort();
    out
}

fn expected_srv() -> Vec<(u16, u16, u16, String)> {
    vec![
        (10, 60, 5555, "broker1.example.org.".to_string()),
        (20, 40, 6666, "broker2.example.org.".to_string()),
    ]
}

/// A negative answer carries the zone's SOA in the authority section.
fn assert_soa_authority(msg: &Message) {
    assert!(
        msg.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA),
        "negative answer carries the SOA: {msg:?}"
    );
}

#[test]
fn srv_records_over_udp() {
    let dns = start();
    let msg = query_udp(dns.addr(), 1, SERVICE, RecordType::SRV);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative, "answer is authoritative");
    assert_eq!(srv_answers(&msg), expected_srv());
    // In-zone targets with addresses come along as additional records.
    assert!(msg.additionals.iter().any(|r| matches!(
        r.data,
        RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 1)
    )));
}

#[test]
fn srv_records_over_tcp() {
    let dns = start();
    let msg = query_tcp(dns.addr(), 2, SERVICE, RecordType::SRV);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(srv_answers(&msg), expected_srv());
    // And a second query on a fresh connection after the first one is done.
    let msg = query_tcp(dns.addr(), 3, "broker1.example.org.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(msg.answers.len(), 1);
}

#[test]
fn a_record_resolves() {
    let dns = start();
    let msg = query_udp(dns.addr(), 4, "broker1.example.org.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let ips: Vec<Ipv4Addr> = msg
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("expected an A answer, got {other:?}"),
        })
        .collect();
    assert_eq!(ips, vec![Ipv4Addr::new(192, 0, 2, 1)]);
}

#[test]
fn unknown_name_is_nxdomain() {
    let dns = start();
    for rtype in [RecordType::SRV, RecordType::A] {
        let msg = query_udp(dns.addr(), 5, "_nope._tcp.example.org.", rtype);
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
        assert!(msg.answers.is_empty());
        assert_soa_authority(&msg);
    }
    // A target named by an SRV record but without address records does not exist either.
    let msg = query_udp(dns.addr(), 6, "broker2.example.org.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn existing_name_without_the_type_is_nodata() {
    let dns = start();
    let cases = [
        // The SRV owner has no A record.
        (SERVICE, RecordType::A),
        // The A owner has no SRV record.
        ("broker1.example.org.", RecordType::SRV),
        // An empty non-terminal exists (it has a name below it).
        ("_tcp.example.org.", RecordType::SRV),
    ];
    for (id, (name, rtype)) in (10..).zip(cases) {
        let msg = query_udp(dns.addr(), id, name, rtype);
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NoError,
            "{name} {rtype}"
        );
        assert!(msg.answers.is_empty(), "{name} {rtype}: {msg:?}");
        assert_soa_authority(&msg);
    }
}

#[test]
fn name_outside_the_zone_is_refused() {
    let dns = start();
    let msg = query_udp(dns.addr(), 20, "broker1.example.net.", RecordType::A);
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn no_service_target_is_served_as_root() {
    let dns = DnsServer::start("example.org.", &[srv(0, 0, 0, ".")], &[]);
    let msg = query_udp(dns.addr(), 21, SERVICE, RecordType::SRV);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(srv_answers(&msg), vec![(0, 0, 0, ".".to_string())]);
}

#[test]
fn servers_are_independent_and_drop_frees_the_port() {
    let a = start();
    let b = DnsServer::start(
        "example.com",
        &[],
        &[("x.example.com", Ipv4Addr::LOCALHOST)],
    );
    assert_ne!(a.addr(), b.addr());
    let msg = query_udp(b.addr(), 22, "x.example.com.", RecordType::A);
    assert_eq!(msg.answers.len(), 1);
    let msg = query_udp(b.addr(), 23, SERVICE, RecordType::SRV);
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);

    // Use TCP once so that the server has had a connection, then drop it: both ports are free.
    let addr = a.addr();
    let _ = query_tcp(addr, 24, SERVICE, RecordType::SRV);
    drop(a);
    let _udp = UdpSocket::bind(addr).expect("UDP port freed by drop");
    let _tcp = TcpListener::bind(addr).expect("TCP port freed by drop");
}

#[tokio::test]
async fn usable_from_async_tests() {
    let dns = start();
    let sock = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("client UDP socket binds");
    sock.send_to(&encode_query(30, SERVICE, RecordType::SRV), dns.addr())
        .await
        .expect("query sent");
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(DEADLINE, sock.recv_from(&mut buf))
        .await
        .expect("DNS server answers in time")
        .expect("recv works");
    let msg = decode_response(30, &buf[..n]);
    assert_eq!(srv_answers(&msg), expected_srv());
    drop(dns); // dropping inside a runtime must not panic
}
