//! `--auth-file`: what peers without a key may do, reloads, and who may take over a served
//! prefix. (Keys need CURVE; their tests are with the CURVE ones.)

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use thingsbus_broker::Reason;
use thingsbus_protocol::command::{self, CommandMessage};
use thingsbus_protocol::Namespace;
use thingsbus_tests::*;

/// A directory of its own for this test's files, removed first.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("thingsbus-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn auth_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("auth.toml");
    std::fs::write(&path, text).expect("write the auth file");
    path
}

fn with_auth(path: PathBuf) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.stats_interval = Duration::ZERO;
        c.auth_file = Some(path);
    }
}

fn not_permitted(broker: &Broker) -> u64 {
    broker
        .stats()
        .rejected_by_reason()
        .find(|(r, _)| *r == Reason::NotPermitted)
        .map_or(0, |(_, n)| n)
}

#[test]
fn anonymous_peers_publish_only_the_namespaces_the_file_gives_them() {
    let dir = scratch("publish");
    let path = auth_file(
        &dir,
        "[anonymous]\nread = true\npublish = [\"garden\", \"test.probe\"]\n",
    );
    let broker = spawn_broker(with_auth(path));
    let sub = Subscriber::connect(&broker);
    let zmq = ZmqInput::connect(&broker);
    let udp = UdpInput::new(&broker);
    sync(&sub, &zmq);
    sync(&sub, &udp);

    zmq.send_json(&json!(["kitchen.door", null, "open", null]));
    sub.assert_no_update_before_probe("kitchen.door", &zmq);
    udp.send_msgpack(&json!(["kitchen.light", null, true, null]));
    sub.assert_no_update_before_probe("kitchen.light", &udp);
    assert_eq!(not_permitted(&broker), 2, "both counted as not_permitted");
    assert_eq!(broker.stats().refused_by("anonymous", "not_permitted"), 2);

    zmq.send_json(&json!(["garden.rain", null, true, null]));
    assert_eq!(sub.update_for("garden.rain")["data"], true);
    udp.send_msgpack(&json!(["garden.temp.soil", null, 12.5, null]));
    assert_eq!(sub.update_for("garden.temp.soil")["data"], 12.5);
    assert_eq!(not_permitted(&broker), 2, "what the file gives passes");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn without_an_anonymous_table_a_peer_without_a_key_is_refused_at_connect() {
    let dir = scratch("nobody");
    let path = auth_file(&dir, "# nobody without a key\n");
    let broker = spawn_broker(with_auth(path));
    let _sub = Subscriber::connect(&broker);
    let zmq = ZmqInput::connect(&broker);
    zmq.send_json(&json!(["x", null, 1, null]));
    // The subscriber and the input are each turned away by the ZAP handler (libzmq retries).
    eventually(DEADLINE, "both connections refused", || {
        (broker.stats().refused_by("anonymous", "connect_refused") >= 2).then_some(())
    });
    assert_eq!(
        broker
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_reload_changes_the_rights_and_a_file_with_a_mistake_keeps_them() {
    let dir = scratch("reload");
    // Anonymous peers may publish but not read: the subscriber is refused.
    let path = auth_file(&dir, "[anonymous]\npublish = [\"*\"]\n");
    let broker = spawn_broker(with_auth(path.clone()));
    let sub = Subscriber::connect(&broker);
    let zmq = ZmqInput::connect(&broker);
    eventually(DEADLINE, "the subscriber refused", || {
        (broker.stats().refused_by("anonymous", "connect_refused") >= 1).then_some(())
    });
    zmq.send_json(&json!(["before.reload", null, 1, null]));
    assert!(
        sub.recv_json(Duration::from_millis(300)).is_none(),
        "a refused subscriber receives nothing"
    );

    std::fs::write(&path, "[anonymous\nread = true\n").expect("write");
    let e = broker.reload_auth().expect_err("a file with a mistake");
    assert!(e.to_string().contains("auth.toml"), "{e}");
    // The old rights stay: a new subscriber is refused too. (libzmq does not retry a
    // connection refused at the handshake: a refused peer comes back when it is restarted.)
    let refused = broker.stats().refused_by("anonymous", "connect_refused");
    let _second = Subscriber::connect(&broker);
    eventually(DEADLINE, "a new subscriber refused", || {
        (broker.stats().refused_by("anonymous", "connect_refused") > refused).then_some(())
    });

    std::fs::write(&path, "[anonymous]\nread = true\npublish = [\"*\"]\n").expect("write");
    broker.reload_auth().expect("reload");
    let third = Subscriber::connect(&broker);
    sync(&third, &zmq);
    drop(sub);
    std::fs::remove_dir_all(&dir).ok();
}

/// A DEALER on the command port, connected from the source address `src`.
fn dealer_from(src: &str, broker: &Broker) -> zmq::Socket {
    let s = ctx().socket(zmq::DEALER).expect("dealer");
    s.set_linger(0).expect("linger");
    let dst = broker
        .endpoints()
        .command
        .trim_start_matches("tcp://")
        .to_owned();
    s.connect(&format!("tcp://{src}:0;{dst}"))
        .expect("connect from a source address");
    s
}

fn send(s: &zmq::Socket, m: &CommandMessage) {
    s.send(m.to_json(), 0).expect("send");
}

fn recv(s: &zmq::Socket) -> Option<CommandMessage> {
    (s.poll(zmq::POLLIN, 5_000).expect("poll") > 0)
        .then(|| command::decode_json(&s.recv_bytes(0).expect("recv")).expect("a command message"))
}

fn serve(s: &zmq::Socket, prefix: &str) -> Vec<Namespace> {
    let ns = vec![Namespace::new(prefix).expect("ns")];
    send(
        s,
        &CommandMessage::Serve {
            ns,
            ttl: Some(30.0),
        },
    );
    match recv(s) {
        Some(CommandMessage::Serving { ns, .. }) => ns,
        other => panic!("expected serving, got {other:?}"),
    }
}

#[test]
fn a_second_host_cannot_take_over_a_prefix_while_it_is_served() {
    let broker = spawn_broker(|c| c.stats_interval = Duration::ZERO);
    let first = dealer_from("127.0.0.1", &broker);
    assert_eq!(serve(&first, "door").len(), 1, "the first host serves door");
    // Another host (127.0.0.2 is another address) asks for the same prefix: refused.
    let intruder = dealer_from("127.0.0.2", &broker);
    assert!(serve(&intruder, "door").is_empty(), "the takeover refused");
    assert_eq!(
        broker
            .stats()
            .commands
            .takeover_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A command to the door still reaches the first host.
    let caller = dealer_from("127.0.0.1", &broker);
    send(
        &caller,
        &CommandMessage::Command {
            id: json!("open-1"),
            ns: Namespace::new("door.front").expect("ns"),
            data: json!("open"),
            timeout: Some(5.0),
            deadline: None,
        },
    );
    match recv(&first) {
        Some(CommandMessage::Command { ns, id, .. }) => {
            assert_eq!(ns.as_str(), "door.front");
            // The broker's own id: not a small counter anyone could guess.
            let id = id.as_u64().expect("a number");
            assert!(id > 1 << 20 && id < 1 << 53, "id {id}");
        }
        other => panic!("expected the command at the first host, got {other:?}"),
    }
    assert_eq!(
        intruder.poll(zmq::POLLIN, 200).expect("poll"),
        0,
        "nothing at the intruder"
    );
    // The same host may serve it again from a new connection (an adaptor restarting).
    let restarted = dealer_from("127.0.0.1", &broker);
    assert_eq!(serve(&restarted, "door").len(), 1);
}

#[test]
fn over_udp_a_board_without_a_key_serves_only_what_the_anonymous_rights_give() {
    // (From beyond loopback it may serve nothing unsigned: addresses beyond loopback cannot be
    // used on this machine, so that rule is a unit test of the routing table.)
    let dir = scratch("udp-serve");
    let path = auth_file(
        &dir,
        "[anonymous]\nread = true\npublish = [\"*\"]\nserve = [\"garden\"]\n",
    );
    let broker = spawn_broker(with_auth(path));
    let board = UdpSocket::bind("127.0.0.1:0").expect("udp");
    board
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ask = |prefix: &str| -> Value {
        let m = CommandMessage::Serve {
            ns: vec![Namespace::new(prefix).expect("ns")],
            ttl: Some(30.0),
        };
        board
            .send_to(&m.to_msgpack(), broker.endpoints().udp)
            .expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = board.recv_from(&mut buf).expect("a serving reply");
        rmp_serde::from_slice(&buf[..n]).expect("msgpack")
    };
    assert_eq!(ask("garden.pump")["ns"], json!(["garden.pump"]));
    assert_eq!(ask("kitchen.door")["ns"], json!([]), "outside its rights");
    assert_eq!(broker.stats().refused_by("anonymous", "not_permitted"), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_board_that_signs_publishes_what_its_table_gives_and_nothing_is_replayed() {
    use thingsbus_protocol::signed::{seal_to_vec, BoardSecret, Direction};
    let dir = scratch("boards");
    let secret = [0x42u8; 32];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Anonymous peers may read but publish nothing: only the signed board gets in over UDP.
    let path = auth_file(
        &dir,
        &format!(
            "[anonymous]\nread = true\npublish = [\"test.probe\"]\n\
             [boards.garden-esp]\nsecret = \"{hex}\"\npublish = [\"garden\"]\n"
        ),
    );
    let broker = spawn_broker(with_auth(path));
    let sub = Subscriber::connect(&broker);
    let udp = UdpInput::new(&broker);
    sync(&sub, &udp);
    let key = BoardSecret::from_bytes(secret);
    let signed = |name: &str, counter: u32, ns: &str, key: &BoardSecret| {
        let payload = rmp_serde::to_vec(&json!([ns, null, counter, null])).expect("msgpack");
        seal_to_vec(Direction::ToBroker, name, 7, counter, &payload, key).expect("seal")
    };
    let stats = broker.stats();

    udp.send(&signed("garden-esp", 1, "garden.rain", &key));
    assert_eq!(
        sub.update_for("garden.rain")["data"],
        1,
        "signed, in its rights"
    );
    let first = signed("garden-esp", 2, "garden.rain", &key);
    udp.send(&first);
    assert_eq!(sub.update_for("garden.rain")["data"], 2);
    udp.send(&first);
    sub.assert_no_update_before_probe("garden.rain", &udp);
    assert_eq!(
        stats.refused_by("garden-esp", "replayed"),
        1,
        "the replay refused"
    );

    udp.send(&signed("garden-esp", 3, "kitchen.door", &key));
    sub.assert_no_update_before_probe("kitchen.door", &udp);
    assert_eq!(stats.refused_by("garden-esp", "not_permitted"), 1);

    let wrong = BoardSecret::from_bytes([0x43; 32]);
    udp.send(&signed("garden-esp", 4, "garden.rain", &wrong));
    sub.assert_no_update_before_probe("garden.rain", &udp);
    assert_eq!(stats.refused_by("garden-esp", "bad_mac"), 1);
    udp.send(&signed("stranger", 1, "garden.rain", &key));
    sub.assert_no_update_before_probe("garden.rain", &udp);
    assert_eq!(stats.refused_by("(unknown board)", "unknown_board"), 1);

    // The same update unsigned: anonymous peers may not publish garden.
    udp.send_msgpack(&json!(["garden.rain", null, 99, null]));
    sub.assert_no_update_before_probe("garden.rain", &udp);
    assert_eq!(stats.refused_by("anonymous", "not_permitted"), 1);
    let bad = stats
        .rejected_by_reason()
        .find(|(r, _)| r.as_str() == "bad_signature")
        .map_or(0, |(_, n)| n);
    assert_eq!(bad, 3, "replayed, bad MAC and unknown board");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_signing_board_serves_by_its_name_gets_signed_commands_and_only_its_signed_reply_counts() {
    use thingsbus_protocol::signed::{open, seal_to_vec, BoardSecret, Direction};
    let dir = scratch("board-commands");
    let secret = [0x17u8; 32];
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let path = auth_file(
        &dir,
        &format!(
            "[anonymous]\nread = true\ncommand = [\"porch\"]\n\
             [boards.porch-esp]\nsecret = \"{hex}\"\nserve = [\"porch\"]\n"
        ),
    );
    // No address may serve unsigned: the signature alone lets the board in.
    let broker = spawn_broker(move |c| {
        with_auth(path)(c);
        c.allow_serve = Vec::new();
    });
    let key = BoardSecret::from_bytes(secret);
    let board = UdpSocket::bind("127.0.0.1:0").expect("udp");
    board
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let to_broker = broker.endpoints().udp;
    let mut counter = 0;
    let mut signed = |m: &CommandMessage| {
        counter += 1;
        seal_to_vec(
            Direction::ToBroker,
            "porch-esp",
            3,
            counter,
            &m.to_msgpack(),
            &key,
        )
        .expect("seal")
    };
    // What the broker sends the board: signed for it, or refused here.
    let receive = || -> (Vec<u8>, CommandMessage) {
        let mut buf = [0u8; 1500];
        let (n, _) = board
            .recv_from(&mut buf)
            .expect("a datagram from the broker");
        let sealed = open(&buf[..n], Direction::ToBoard, |name| {
            (name == "porch-esp").then(|| BoardSecret::from_bytes(secret))
        })
        .expect("signed for the board with its secret");
        assert_eq!(sealed.boot, 3, "with the board's current boot");
        let v: Value = rmp_serde::from_slice(sealed.payload).expect("msgpack");
        (
            buf[..n].to_vec(),
            command::from_value(v).expect("a command message"),
        )
    };
    let serve = CommandMessage::Serve {
        ns: vec![Namespace::new("porch.light").expect("ns")],
        ttl: Some(30.0),
    };
    // Unsigned from the same socket: refused (no address may serve, no anonymous serve right).
    board.send_to(&serve.to_msgpack(), to_broker).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = board.recv_from(&mut buf).expect("a serving reply");
    let v: Value = rmp_serde::from_slice(&buf[..n]).expect("msgpack");
    assert_eq!(v["ns"], json!([]), "unsigned serve refused: {v}");
    // Signed: served, and the broker's answer is signed.
    board.send_to(&signed(&serve), to_broker).expect("send");
    match receive().1 {
        CommandMessage::Serving { ns, .. } => assert_eq!(ns[0].as_str(), "porch.light"),
        other => panic!("expected serving, got {other:?}"),
    }
    // A caller's command reaches the board signed; a forged unsigned reply from the board's own
    // address does not answer it, the board's signed one does.
    let caller = dealer_from("127.0.0.1", &broker);
    send(
        &caller,
        &CommandMessage::Command {
            id: json!("c-1"),
            ns: Namespace::new("porch.light").expect("ns"),
            data: json!({"on": true}),
            timeout: Some(5.0),
            deadline: None,
        },
    );
    let (sealed, command) = receive();
    let CommandMessage::Command { id, data, .. } = command else {
        panic!("expected the command, got {command:?}");
    };
    assert_eq!(data, json!({"on": true}));
    let reply = |data: Value| CommandMessage::Reply {
        id: id.clone(),
        result: Ok(data),
    };
    board
        .send_to(&reply(json!("forged")).to_msgpack(), to_broker)
        .expect("send");
    board
        .send_to(&signed(&reply(json!("done"))), to_broker)
        .expect("send");
    match recv(&caller) {
        Some(CommandMessage::Reply { result, .. }) => assert_eq!(result, Ok(json!("done"))),
        other => panic!("expected the board's reply, got {other:?}"),
    }
    // A command recorded on the way is no datagram the broker takes back.
    board.send_to(&sealed, to_broker).expect("send");
    eventually(DEADLINE, "the reflected command refused", || {
        (broker.stats().refused_by("porch-esp", "malformed") == 1).then_some(())
    });
    std::fs::remove_dir_all(&dir).ok();
}
