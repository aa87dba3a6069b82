//! The CoAP gateway as plain state: a datagram, a command or the clock comes in with `now`, and
//! out come [`Action`]s — datagrams to send, things to publish, commands to answer. The owner of
//! the socket ([`super::serve`]) only carries them out.
//!
//! Rules (pyaiot's node protocol over RFC 7252):
//! - requests from nodes: `POST /alive` and `POST /server` are handled, other methods on them
//!   are 4.05, other paths 4.04, an unknown critical option 4.02; a confirmable request is
//!   answered with a piggybacked ACK, and a repeated one (same source, same message id, within
//!   [`DEDUP_FOR`](super::exchange::DEDUP_FOR)) gets the same bytes again and is not handled twice;
//! - a node that is new, reset or back from offline is asked for `/.well-known/core`, then each
//!   resource it lists is read (observed when the link says `obs`);
//! - our requests are confirmable and retransmitted ([`Exchange`]); empty ACK and RST find them
//!   by message id, responses by token; a confirmable response is ACKed;
//! - notifications of an observed resource publish its value;
//! - a command to `<node>.<resource>` is a PUT of the data as text.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{json, Value};

use super::exchange::{Dedup, Exchange, Failure, Step};
use super::node::{Alive, Nodes, Update};
use super::protocol::{self, code_text};

crate::counters! {
    /// What the CoAP gateway counted, logged every `--report-interval` and on exit.
    pub struct CoapCounts {
        datagrams: "CoAP datagrams received",
        malformed: "datagrams that are not CoAP, or requests with a payload that does not parse",
        bad_option: "requests refused for an unknown critical option",
        duplicates: "repeated confirmable requests answered again",
        alives: "alive messages",
        values: "resource values published",
        unknown_node: "values from an address no alive came from",
        refused_nodes: "alives from new nodes beyond --max-nodes",
        commands_ok: "commands the node confirmed",
        commands_failed: "commands the node refused or did not answer",
        resource_errors: "discoveries and resource reads that failed",
    }
}

/// How long discovery and each resource read may take.
const READ_FOR: Duration = Duration::from_secs(60);

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The port nodes serve their resources on.
    pub node_port: u16,
    /// True when the socket is IPv6 (`[::]`): IPv4 nodes are then reached at their mapped
    /// address.
    pub ipv6_socket: bool,
    /// Nodes kept at most.
    pub max_nodes: usize,
    /// Resources kept per node at most.
    pub max_resources: usize,
    /// Silence after which a node is offline.
    pub max_time: Duration,
}

/// Something for the socket owner to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a datagram.
    Send {
        /// The encoded CoAP message.
        bytes: Vec<u8>,
        /// Where to.
        to: SocketAddr,
    },
    /// Publish a thing below the base namespace.
    Publish(Update),
    /// Answer the command [`Gateway::command`] was given with `id`.
    Reply {
        /// The command's id.
        id: u64,
        /// Its reply data, or why it failed.
        result: Result<Value, String>,
    },
}

/// Why a request of ours is out, so its outcome goes where it belongs.
#[derive(Debug)]
enum Purpose {
    Discover {
        uid: String,
    },
    Read {
        uid: String,
        path: String,
        observe: bool,
    },
    Command {
        id: u64,
        data: Value,
    },
}

#[derive(Debug)]
struct Pending {
    exchange: Exchange,
    bytes: Vec<u8>,
    mid: u16,
    to: SocketAddr,
    purpose: Purpose,
}

/// The gateway's whole state; see the module docs for its rules.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    nodes: Nodes<IpAddr>,
    /// Our requests in flight, by token; their message ids map to tokens.
    pending: HashMap<Vec<u8>, Pending>,
    mids: HashMap<u16, Vec<u8>>,
    /// Observations: token → (node uid, resource name).
    observing: HashMap<Vec<u8>, (String, String)>,
    dedup: Dedup,
    next_mid: u16,
    next_token: u64,
    counts: CoapCounts,
    out: Vec<Action>,
    /// Nodes to ask for their resources once the request at hand is answered.
    to_discover: Vec<(String, IpAddr)>,
}

impl Gateway {
    /// A gateway with no nodes; message ids and tokens start from `seed` (the process id, so a
    /// restarted gateway does not reuse the last one's).
    pub fn new(config: Config, seed: u32) -> Gateway {
        Gateway {
            nodes: Nodes::new(config.max_nodes, config.max_resources),
            config,
            pending: HashMap::new(),
            mids: HashMap::new(),
            observing: HashMap::new(),
            dedup: Dedup::default(),
            next_mid: seed as u16,
            next_token: u64::from(seed) << 16,
            counts: CoapCounts::default(),
            out: Vec::new(),
            to_discover: Vec::new(),
        }
    }

    /// What was counted so far.
    pub fn counts(&self) -> &CoapCounts {
        &self.counts
    }

    /// The nodes.
    pub fn nodes(&self) -> &Nodes<IpAddr> {
        &self.nodes
    }

    /// When [`Gateway::tick`] has work: the earliest retransmission or deadline.
    pub fn next_wake(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.exchange.wake_at()).min()
    }

    /// A datagram from `from` at `now` (`wall`: the same instant in seconds since 1970).
    pub fn datagram(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
        wall: f64,
    ) -> Vec<Action> {
        self.counts.datagrams.inc();
        let Some(p) = protocol::well_formed(bytes) else {
            self.counts.malformed.inc();
            tracing::debug!(%from, "malformed CoAP datagram dropped");
            return self.take();
        };
        match p.header.code {
            MessageClass::Empty => self.empty(&p, now),
            MessageClass::Response(_) => self.response(p, from, now),
            MessageClass::Request(method) => self.request(&p, method, from, now, wall),
            MessageClass::Reserved(_) => self.counts.malformed.inc(),
        }
        self.take()
    }

    /// A command to `<node>.<resource>` (relative to the base namespace), to be answered by
    /// `deadline`: a PUT of `data` as text.
    pub fn command(
        &mut self,
        id: u64,
        rel: &str,
        data: Value,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Action> {
        let target = match rel.split_once('.') {
            None => Err(format!("{rel:?} is not <node>.<resource>")),
            Some((node, resource)) => self
                .nodes
                .target(node, resource)
                .ok_or_else(|| format!("no node resource {rel}")),
        };
        match target {
            Ok((ip, resource)) => {
                let payload = protocol::put_payload(&data).into_bytes();
                self.start(
                    ip,
                    RequestType::Put,
                    &resource,
                    payload,
                    false,
                    deadline,
                    now,
                    Purpose::Command { id, data },
                );
            }
            Err(e) => self.out.push(Action::Reply { id, result: Err(e) }),
        }
        self.take()
    }

    /// The clock: retransmissions and deadlines due by `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let due: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, p)| p.exchange.wake_at() <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for token in due {
            let Some(p) = self.pending.get_mut(&token) else {
                continue;
            };
            let step = p.exchange.timer(now);
            self.step(&token, step, now);
        }
        self.take()
    }

    /// Marks nodes silent past `--max-time` offline.
    pub fn sweep(&mut self, now: Instant) -> Vec<Action> {
        for u in self.nodes.sweep(now, self.config.max_time) {
            self.out.push(Action::Publish(u));
        }
        self.take()
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, p: &Packet, to: SocketAddr) -> Vec<u8> {
        match p.to_bytes() {
            Ok(bytes) => {
                self.out.push(Action::Send {
                    bytes: bytes.clone(),
                    to,
                });
                bytes
            }
            Err(e) => {
                tracing::warn!(error = ?e, "CoAP message not encodable");
                Vec::new()
            }
        }
    }

    fn node_addr(&self, ip: IpAddr) -> SocketAddr {
        let ip = match ip {
            IpAddr::V4(v4) if self.config.ipv6_socket => IpAddr::V6(v4.to_ipv6_mapped()),
            ip => ip,
        };
        SocketAddr::new(ip, self.config.node_port)
    }

    fn mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = m.wrapping_add(1);
        m
    }

    /// Sends a confirmable request to a node and keeps it until it ends.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        ip: IpAddr,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        observe: bool,
        deadline: Instant,
        now: Instant,
        purpose: Purpose,
    ) {
        let token = self.next_token.to_be_bytes()[4..].to_vec();
        self.next_token = self.next_token.wrapping_add(1);
        let mid = self.mid();
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = mid;
        p.set_token(token.clone());
        if observe {
            p.add_option(CoapOption::Observe, Vec::new());
        }
        for part in path.split('/').filter(|s| !s.is_empty()) {
            p.add_option(CoapOption::UriPath, part.as_bytes().to_vec());
        }
        p.payload = payload;
        let to = self.node_addr(ip);
        let (exchange, step) = Exchange::start(now, deadline);
        let bytes = self.send(&p, to);
        self.mids.insert(mid, token.clone());
        self.pending.insert(
            token.clone(),
            Pending {
                exchange,
                bytes,
                mid,
                to,
                purpose,
            },
        );
        self.step(
            &token,
            Step {
                send: false,
                ..step
            },
            now,
        );
    }

    /// Carries out an exchange's step: a retransmission, or its end.
    fn step(&mut self, token: &[u8], step: Step, now: Instant) {
        if step.send {
            if let Some(p) = self.pending.get(token) {
                self.out.push(Action::Send {
                    bytes: p.bytes.clone(),
                    to: p.to,
                });
            }
        }
        if let Some(failure) = step.end {
            if let Some(p) = self.finish(token) {
                let node = p.to.ip().to_canonical();
                let error = failure.describe(node);
                self.ended(p.purpose, Err(error), node, now);
            }
        }
    }

    fn finish(&mut self, token: &[u8]) -> Option<Pending> {
        let p = self.pending.remove(token)?;
        self.mids.remove(&p.mid);
        Some(p)
    }

    /// An empty message: the ACK or RST of one of our requests.
    fn empty(&mut self, p: &Packet, now: Instant) {
        let Some(token) = self.mids.get(&p.header.message_id).cloned() else {
            return;
        };
        if p.header.get_type() == MessageType::Reset {
            self.step(
                &token,
                Step {
                    send: false,
                    end: Some(Failure::Reset),
                },
                now,
            );
        } else if let Some(pending) = self.pending.get_mut(&token) {
            let step = pending.exchange.acked(now);
            self.step(&token, step, now);
        }
    }

    /// A response: to one of our requests, or a notification of an observed resource.
    fn response(&mut self, p: Packet, from: SocketAddr, now: Instant) {
        if p.header.get_type() == MessageType::Confirmable {
            let mut a = Packet::new();
            a.header.set_type(MessageType::Acknowledgement);
            a.header.code = MessageClass::Empty;
            a.header.message_id = p.header.message_id;
            self.send(&a, from);
        }
        let token = p.get_token().to_vec();
        // Looked up before the exchange ends: the response that starts an observation is
        // published as the read's outcome, not a second time as a notification.
        let observed = self.observing.get(&token).cloned();
        let notification = p.get_option(CoapOption::Observe).is_some();
        let body = String::from_utf8_lossy(&p.payload).into_owned();
        if let Some(pending) = self.finish(&token) {
            self.ended(pending.purpose, Ok(p), pending.to.ip().to_canonical(), now);
        }
        if let (Some((uid, resource)), true) = (observed, notification) {
            self.value(&uid, &resource, &body);
        }
    }

    /// What becomes of an exchange's outcome.
    fn ended(
        &mut self,
        purpose: Purpose,
        result: Result<Packet, String>,
        ip: IpAddr,
        now: Instant,
    ) {
        match purpose {
            Purpose::Discover { uid } => match result {
                Ok(r) => self.read_links(&uid, ip, &String::from_utf8_lossy(&r.payload), now),
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "resource discovery failed");
                    self.counts.resource_errors.inc();
                }
            },
            Purpose::Read { uid, path, observe } => match result {
                Ok(r) if r.header.code == MessageClass::Response(ResponseType::Content) => {
                    if observe && r.get_option(CoapOption::Observe).is_some() {
                        self.observing
                            .insert(r.get_token().to_vec(), (uid.clone(), path.clone()));
                    }
                    self.value(&uid, &path, &String::from_utf8_lossy(&r.payload));
                }
                Ok(r) => {
                    self.counts.resource_errors.inc();
                    tracing::debug!(%uid, resource = %path, code = %code_text(r.header.code), "resource not read");
                }
                Err(e) => {
                    self.counts.resource_errors.inc();
                    tracing::debug!(%uid, resource = %path, error = %e, "resource not read");
                }
            },
            Purpose::Command { id, data } => {
                let result = match result {
                    Ok(r)
                        if matches!(
                            r.header.code,
                            MessageClass::Response(ResponseType::Created | ResponseType::Changed)
                        ) =>
                    {
                        self.counts.commands_ok.inc();
                        Ok(json!({"code": code_text(r.header.code), "value": data}))
                    }
                    Ok(r) => {
                        self.counts.commands_failed.inc();
                        Err(format!("the node answered {}", code_text(r.header.code)))
                    }
                    Err(e) => {
                        self.counts.commands_failed.inc();
                        Err(e)
                    }
                };
                self.out.push(Action::Reply { id, result });
            }
        }
    }

    /// The node's link-format document came: read each of its resources, each on its own
    /// exchange, so one that fails does not stop the others.
    fn read_links(&mut self, uid: &str, ip: IpAddr, links: &str, now: Instant) {
        let max = self.nodes.max_resources();
        for link in protocol::parse_links(links).into_iter().take(max) {
            let path = link.path.clone();
            self.start(
                ip,
                RequestType::Get,
                &path,
                Vec::new(),
                link.observable,
                now + READ_FOR,
                now,
                Purpose::Read {
                    uid: uid.to_owned(),
                    path: link.path,
                    observe: link.observable,
                },
            );
        }
    }

    /// Publishes a resource's value, adding the resource if it is new.
    fn value(&mut self, uid: &str, resource: &str, text: &str) {
        let updates = self.nodes.value(uid, resource, protocol::parse_value(text));
        if updates.is_empty() {
            return;
        }
        self.counts.values.inc();
        self.out.extend(updates.into_iter().map(Action::Publish));
    }

    /// A request from a node.
    fn request(
        &mut self,
        p: &Packet,
        method: RequestType,
        from: SocketAddr,
        now: Instant,
        wall: f64,
    ) {
        let confirmable = p.header.get_type() == MessageType::Confirmable;
        if confirmable {
            if let Some(reply) = self.dedup.answered(from, p.header.message_id, now) {
                let bytes = reply.to_vec();
                self.counts.duplicates.inc();
                self.out.push(Action::Send { bytes, to: from });
                return;
            }
        }
        let response = if protocol::has_unknown_critical_option(p) {
            self.counts.bad_option.inc();
            ResponseType::BadOption
        } else {
            match (method, protocol::uri_path(p).as_str()) {
                (RequestType::Post, "alive") => self.alive(&p.payload, from, now, wall),
                (RequestType::Post, "server") => self.server(&p.payload, from),
                (_, "alive" | "server") => ResponseType::MethodNotAllowed,
                _ => ResponseType::NotFound,
            }
        };
        let mut r = Packet::new();
        r.header.code = MessageClass::Response(response);
        r.set_token(p.get_token().to_vec());
        if confirmable {
            r.header.set_type(MessageType::Acknowledgement);
            r.header.message_id = p.header.message_id;
        } else {
            r.header.set_type(MessageType::NonConfirmable);
            r.header.message_id = self.mid();
        }
        let sent = self.send(&r, from);
        if confirmable {
            self.dedup.remember(from, p.header.message_id, now, sent);
        }
        for (uid, ip) in std::mem::take(&mut self.to_discover) {
            self.start(
                ip,
                RequestType::Get,
                ".well-known/core",
                Vec::new(),
                false,
                now + READ_FOR,
                now,
                Purpose::Discover { uid },
            );
        }
    }

    fn alive(&mut self, payload: &[u8], from: SocketAddr, now: Instant, wall: f64) -> ResponseType {
        let Some(alive) = std::str::from_utf8(payload)
            .ok()
            .and_then(protocol::parse_alive)
        else {
            self.counts.malformed.inc();
            return ResponseType::BadRequest;
        };
        self.counts.alives.inc();
        let (uid, reset) = match alive {
            protocol::Alive::Alive(u) => (u, false),
            protocol::Alive::Reset(u) => (u, true),
        };
        match self.nodes.alive(&uid, reset, from.ip(), now, wall) {
            Alive::Refused => {
                self.counts.refused_nodes.inc();
                ResponseType::ServiceUnavailable
            }
            Alive::Accepted {
                update,
                discover,
                evicted,
            } => {
                // Observations end with their node: when it is forgotten, and when it rebooted
                // (it forgot them too).
                if let Some(gone) = &evicted {
                    tracing::info!(uid = %gone, "offline node forgotten to make room (--max-nodes)");
                    self.observing.retain(|_, (u, _)| u != gone);
                }
                if reset {
                    self.observing.retain(|_, (u, _)| *u != uid);
                }
                self.out.push(Action::Publish(update));
                if discover {
                    tracing::info!(%uid, address = %from.ip().to_canonical(), reset, "node alive; discovering its resources");
                    self.to_discover.push((uid, from.ip()));
                }
                ResponseType::Changed
            }
        }
    }

    fn server(&mut self, payload: &[u8], from: SocketAddr) -> ResponseType {
        let Some((resource, value)) = std::str::from_utf8(payload)
            .ok()
            .and_then(protocol::parse_server)
        else {
            self.counts.malformed.inc();
            return ResponseType::BadRequest;
        };
        match self.nodes.uid_at(&from.ip()).map(str::to_owned) {
            Some(uid) => self.value(&uid, resource, value),
            None => self.counts.unknown_node.inc(),
        }
        ResponseType::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn node() -> SocketAddr {
        "10.0.0.5:40000".parse().unwrap()
    }

    fn gateway(ipv6_socket: bool) -> Gateway {
        Gateway::new(
            Config {
                node_port: 5683,
                ipv6_socket,
                max_nodes: 2,
                max_resources: 8,
                max_time: Duration::from_secs(120),
            },
            7,
        )
    }

    fn request(
        t: MessageType,
        method: RequestType,
        path: &str,
        payload: &str,
        mid: u16,
    ) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(t);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = mid;
        p.set_token(vec![0xaa, 0xbb]);
        for part in path.split('/') {
            p.add_option(CoapOption::UriPath, part.as_bytes().to_vec());
        }
        p.payload = payload.as_bytes().to_vec();
        p.to_bytes().unwrap()
    }

    fn post(path: &str, payload: &str, mid: u16) -> Vec<u8> {
        request(
            MessageType::Confirmable,
            RequestType::Post,
            path,
            payload,
            mid,
        )
    }

    /// The datagrams among the actions, decoded, with where they go.
    fn sent(actions: &[Action]) -> Vec<(Packet, SocketAddr)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { bytes, to } => Some((Packet::from_bytes(bytes).unwrap(), *to)),
                _ => None,
            })
            .collect()
    }

    fn published(actions: &[Action]) -> Vec<&Update> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn replies(actions: &[Action]) -> Vec<(u64, Result<Value, String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { id, result } => Some((*id, result.clone())),
                _ => None,
            })
            .collect()
    }

    fn response(to: &Packet, t: MessageType, code: ResponseType, payload: &str) -> Vec<u8> {
        let mut r = Packet::new();
        r.header.set_type(t);
        r.header.code = MessageClass::Response(code);
        r.header.message_id = if t == MessageType::Acknowledgement {
            to.header.message_id
        } else {
            9000
        };
        r.set_token(to.get_token().to_vec());
        r.payload = payload.as_bytes().to_vec();
        r.to_bytes().unwrap()
    }

    fn empty(t: MessageType, mid: u16) -> Vec<u8> {
        let mut e = Packet::new();
        e.header.set_type(t);
        e.header.code = MessageClass::Empty;
        e.header.message_id = mid;
        e.to_bytes().unwrap()
    }

    fn code(p: &Packet) -> MessageClass {
        p.header.code
    }

    /// A gateway that knows node `n1` at 10.0.0.5 with the resource `temp`; the time after.
    fn with_node(g: &mut Gateway, t0: Instant) -> Instant {
        let a = g.datagram(&post("alive", "Alive:1", 1), node(), t0, 100.0);
        let (discovery, _) = sent(&a).pop().unwrap();
        let a = g.datagram(
            &response(
                &discovery,
                MessageType::Acknowledgement,
                ResponseType::Content,
                "</temp>",
            ),
            node(),
            t0,
            100.0,
        );
        let (read, _) = sent(&a).pop().unwrap();
        g.datagram(
            &response(
                &read,
                MessageType::Acknowledgement,
                ResponseType::Content,
                "21",
            ),
            node(),
            t0,
            100.0,
        );
        t0
    }

    #[test]
    fn an_alive_is_acknowledged_published_and_starts_discovery_at_the_node_port() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let a = g.datagram(&post("alive", "Alive:1234", 77), node(), t0, 100.0);
        let out = sent(&a);
        assert_eq!(out.len(), 2);
        let (ack, to) = &out[0];
        assert_eq!(*to, node(), "the answer goes to the source port");
        assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(ack.header.message_id, 77);
        assert_eq!(ack.get_token(), [0xaa, 0xbb]);
        assert_eq!(code(ack), MessageClass::Response(ResponseType::Changed));
        let (get, to) = &out[1];
        assert_eq!(
            *to,
            "10.0.0.5:5683".parse().unwrap(),
            "requests go to the node port"
        );
        assert_eq!(get.header.get_type(), MessageType::Confirmable);
        assert_eq!(code(get), MessageClass::Request(RequestType::Get));
        assert_eq!(protocol::uri_path(get), ".well-known/core");
        assert_eq!(published(&a)[0].sub, "n1234");
        assert_eq!(g.counts().alives.get(), 1);
        assert_eq!(g.next_wake(), Some(t0 + 2 * S));
    }

    #[test]
    fn an_ipv6_socket_reaches_ipv4_nodes_at_their_mapped_address() {
        let mut g = gateway(true);
        let a = g.datagram(&post("alive", "Alive:1", 1), node(), Instant::now(), 1.0);
        assert_eq!(sent(&a)[1].1, "[::ffff:10.0.0.5]:5683".parse().unwrap());
    }

    #[test]
    fn a_repeated_confirmable_request_gets_the_same_answer_and_is_handled_once() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let first = g.datagram(&post("alive", "Alive:1", 5), node(), t0, 1.0);
        let again = g.datagram(&post("alive", "Alive:1", 5), node(), t0 + S, 2.0);
        assert_eq!(sent(&again), sent(&first)[..1]);
        assert!(published(&again).is_empty());
        assert_eq!(g.counts().duplicates.get(), 1);
        assert_eq!(g.counts().alives.get(), 1);
        let later = g.datagram(&post("alive", "Alive:1", 5), node(), t0 + 61 * S, 3.0);
        assert_eq!(
            published(&later).len(),
            1,
            "past the dedup window: a new request"
        );
    }

    #[test]
    fn a_non_confirmable_request_gets_a_non_confirmable_answer_and_no_dedup() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let bytes = request(
            MessageType::NonConfirmable,
            RequestType::Post,
            "alive",
            "Alive:1",
            5,
        );
        let a = g.datagram(&bytes, node(), t0, 1.0);
        let (r, _) = &sent(&a)[0];
        assert_eq!(r.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(code(r), MessageClass::Response(ResponseType::Changed));
        assert_ne!(r.header.message_id, 5);
        g.datagram(&bytes, node(), t0, 1.0);
        assert_eq!(g.counts().duplicates.get(), 0);
        assert_eq!(g.counts().alives.get(), 2);
    }

    #[test]
    fn bad_requests_get_their_error_codes_and_are_counted() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let answer =
            |g: &mut Gateway, bytes: &[u8]| code(&sent(&g.datagram(bytes, node(), t0, 1.0))[0].0);
        let bad = |r: ResponseType| MessageClass::Response(r);
        assert_eq!(
            answer(&mut g, &post("alive", "hello", 1)),
            bad(ResponseType::BadRequest)
        );
        assert_eq!(
            answer(&mut g, &post("server", "nocolon", 2)),
            bad(ResponseType::BadRequest)
        );
        assert_eq!(g.counts().malformed.get(), 2);
        let get = request(MessageType::Confirmable, RequestType::Get, "alive", "", 3);
        assert_eq!(answer(&mut g, &get), bad(ResponseType::MethodNotAllowed));
        assert_eq!(
            answer(&mut g, &post("other", "", 4)),
            bad(ResponseType::NotFound)
        );
        let mut p = Packet::from_bytes(&post("alive", "Alive:1", 5)).unwrap();
        p.add_option(CoapOption::Unknown(9), vec![1]);
        assert_eq!(
            answer(&mut g, &p.to_bytes().unwrap()),
            bad(ResponseType::BadOption)
        );
        assert_eq!(g.counts().bad_option.get(), 1);
        assert_eq!(
            g.counts().alives.get(),
            0,
            "a bad option is refused before the path"
        );
        assert!(g.datagram(b"\x00garbage", node(), t0, 1.0).is_empty());
        assert_eq!(g.counts().malformed.get(), 3);
        assert_eq!(g.counts().datagrams.get(), 6);
    }

    #[test]
    fn new_nodes_beyond_the_limit_are_refused() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        g.datagram(&post("alive", "Alive:a", 1), node(), t0, 1.0);
        g.datagram(
            &post("alive", "Alive:b", 2),
            "10.0.0.6:1".parse().unwrap(),
            t0,
            1.0,
        );
        let a = g.datagram(
            &post("alive", "Alive:c", 3),
            "10.0.0.7:1".parse().unwrap(),
            t0,
            1.0,
        );
        assert_eq!(
            code(&sent(&a)[0].0),
            MessageClass::Response(ResponseType::ServiceUnavailable)
        );
        assert!(published(&a).is_empty());
        assert_eq!(g.counts().refused_nodes.get(), 1);
    }

    #[test]
    fn server_values_are_known_by_the_senders_address() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let a = g.datagram(&post("server", "temp:21°C", 1), node(), t0, 1.0);
        assert_eq!(
            code(&sent(&a)[0].0),
            MessageClass::Response(ResponseType::Changed)
        );
        assert_eq!(g.counts().unknown_node.get(), 1);
        g.datagram(&post("alive", "Alive:1", 2), node(), t0, 1.0);
        let other_port: SocketAddr = "10.0.0.5:999".parse().unwrap();
        let a = g.datagram(&post("server", "temp:21°C", 3), other_port, t0, 1.0);
        let p = published(&a);
        assert_eq!(p.len(), 2, "a new resource: the node, then the value");
        assert_eq!(p[1].sub, "n1.temp");
        assert_eq!(p[1].data, json!({"value": 21, "unit": "°C"}));
        assert_eq!(g.counts().values.get(), 1);
    }

    #[test]
    fn discovery_reads_each_resource_and_observes_those_that_say_obs() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let a = g.datagram(&post("alive", "Alive:1", 1), node(), t0, 1.0);
        let (discovery, _) = sent(&a).pop().unwrap();
        let links = "</temp>;obs,</led>,<http://x>;rel=\"impl-info\"";
        let a = g.datagram(
            &response(
                &discovery,
                MessageType::Acknowledgement,
                ResponseType::Content,
                links,
            ),
            node(),
            t0,
            1.0,
        );
        let reads = sent(&a);
        assert_eq!(reads.len(), 2);
        assert_eq!(protocol::uri_path(&reads[0].0), "temp");
        assert!(reads[0].0.get_option(CoapOption::Observe).is_some());
        assert_eq!(protocol::uri_path(&reads[1].0), "led");
        assert!(reads[1].0.get_option(CoapOption::Observe).is_none());
        assert_ne!(reads[0].0.get_token(), reads[1].0.get_token());

        // The observed resource answers with Observe: its value, once.
        let mut first = Packet::from_bytes(&response(
            &reads[0].0,
            MessageType::Acknowledgement,
            ResponseType::Content,
            "21",
        ))
        .unwrap();
        first.add_option(CoapOption::Observe, vec![1]);
        let a = g.datagram(&first.to_bytes().unwrap(), node(), t0, 1.0);
        let p = published(&a);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].sub.as_str(), &p[1].data), ("n1.temp", &json!(21)));
        // A led that cannot be read is counted.
        let a = g.datagram(
            &response(
                &reads[1].0,
                MessageType::Acknowledgement,
                ResponseType::NotFound,
                "",
            ),
            node(),
            t0,
            1.0,
        );
        assert!(published(&a).is_empty());
        assert_eq!(g.counts().resource_errors.get(), 1);
        assert_eq!(g.next_wake(), None, "nothing in flight");

        // A confirmable notification is ACKed and published.
        let mut note = Packet::from_bytes(&response(
            &reads[0].0,
            MessageType::Confirmable,
            ResponseType::Content,
            "22",
        ))
        .unwrap();
        note.add_option(CoapOption::Observe, vec![2]);
        let a = g.datagram(&note.to_bytes().unwrap(), node(), t0, 1.0);
        let (ack, _) = &sent(&a)[0];
        assert_eq!(
            (ack.header.get_type(), ack.header.message_id),
            (MessageType::Acknowledgement, 9000)
        );
        assert_eq!(code(ack), MessageClass::Empty);
        assert_eq!(published(&a)[0].data, json!(22));
        // Without the Observe option a response on that token is no notification.
        let plain = response(
            &reads[0].0,
            MessageType::NonConfirmable,
            ResponseType::Content,
            "23",
        );
        assert!(published(&g.datagram(&plain, node(), t0, 1.0)).is_empty());
        assert_eq!(g.counts().values.get(), 2);

        // The node reboots: its observations end with it, and a late notification on the old
        // token is no value any more.
        g.datagram(&post("alive", "Reset:1", 2), node(), t0, 2.0);
        assert!(g.observing.is_empty());
        let mut stale = Packet::from_bytes(&response(
            &reads[0].0,
            MessageType::NonConfirmable,
            ResponseType::Content,
            "24",
        ))
        .unwrap();
        stale.add_option(CoapOption::Observe, vec![3]);
        let a = g.datagram(&stale.to_bytes().unwrap(), node(), t0, 2.0);
        assert!(published(&a).iter().all(|u| u.data != json!(24)));
    }

    #[test]
    fn unanswered_requests_are_retransmitted_on_the_clock_then_counted_as_failed() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let a = g.datagram(&post("alive", "Alive:1", 1), node(), t0, 1.0);
        let (discovery, _) = sent(&a).pop().unwrap();
        assert!(g.tick(t0 + S).is_empty(), "not due yet");
        let again = g.tick(t0 + 2 * S);
        assert_eq!(sent(&again)[0].0, discovery, "the same message, same id");
        for at in [6, 14, 30] {
            assert_eq!(sent(&g.tick(t0 + at * S)).len(), 1);
        }
        assert!(g.tick(t0 + 60 * S).is_empty());
        assert_eq!(
            g.counts().resource_errors.get(),
            1,
            "the 60 s of a discovery are up"
        );
        assert_eq!(g.next_wake(), None);
    }

    #[test]
    fn an_empty_ack_stops_retransmissions_and_a_reset_ends_the_exchange() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let a = g.datagram(&post("alive", "Alive:1", 1), node(), t0, 1.0);
        let (discovery, _) = sent(&a).pop().unwrap();
        assert!(g
            .datagram(
                &empty(MessageType::Acknowledgement, discovery.header.message_id),
                node(),
                t0,
                1.0
            )
            .is_empty());
        assert_eq!(g.next_wake(), Some(t0 + 60 * S));
        // The separate response, confirmable: ACKed, and the resources are read.
        let a = g.datagram(
            &response(
                &discovery,
                MessageType::Confirmable,
                ResponseType::Content,
                "</temp>",
            ),
            node(),
            t0 + S,
            1.0,
        );
        let out = sent(&a);
        assert_eq!(code(&out[0].0), MessageClass::Empty);
        assert_eq!(protocol::uri_path(&out[1].0), "temp");
        let reset = g.datagram(
            &empty(MessageType::Reset, out[1].0.header.message_id),
            node(),
            t0 + S,
            1.0,
        );
        assert!(reset.is_empty());
        assert_eq!(g.counts().resource_errors.get(), 1);
        assert_eq!(g.next_wake(), None);
        // An ACK nobody waits for changes nothing.
        assert!(g
            .datagram(&empty(MessageType::Acknowledgement, 4242), node(), t0, 1.0)
            .is_empty());
    }

    #[test]
    fn commands_are_puts_and_their_outcome_is_the_reply() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        let t = with_node(&mut g, t0);
        assert_eq!(
            replies(&g.command(1, "n1", json!(1), t + 5 * S, t)),
            [(1, Err("\"n1\" is not <node>.<resource>".to_owned()))]
        );
        assert_eq!(
            replies(&g.command(2, "n1.led", json!(1), t + 5 * S, t)),
            [(2, Err("no node resource n1.led".to_owned()))]
        );
        let a = g.command(3, "n1.temp", json!("on"), t + 5 * S, t);
        let (put, to) = sent(&a).pop().unwrap();
        assert_eq!(to, "10.0.0.5:5683".parse().unwrap());
        assert_eq!(code(&put), MessageClass::Request(RequestType::Put));
        assert_eq!(put.payload, b"on");
        let a = g.datagram(
            &response(
                &put,
                MessageType::Acknowledgement,
                ResponseType::Changed,
                "",
            ),
            node(),
            t,
            1.0,
        );
        assert_eq!(
            replies(&a),
            [(3, Ok(json!({"code": "2.04", "value": "on"})))]
        );
        let a = g.command(4, "n1.temp", json!(1), t + 5 * S, t);
        let (put, _) = sent(&a).pop().unwrap();
        let a = g.datagram(
            &response(
                &put,
                MessageType::Acknowledgement,
                ResponseType::BadRequest,
                "",
            ),
            node(),
            t,
            1.0,
        );
        assert_eq!(replies(&a), [(4, Err("the node answered 4.00".to_owned()))]);
        g.command(5, "n1.temp", json!(1), t + 3 * S, t);
        g.tick(t + 2 * S);
        assert_eq!(
            replies(&g.tick(t + 3 * S)),
            [(5, Err("no answer from 10.0.0.5 in time".to_owned()))]
        );
        assert_eq!(
            (
                g.counts().commands_ok.get(),
                g.counts().commands_failed.get()
            ),
            (1, 2)
        );
    }

    #[test]
    fn silent_nodes_are_published_offline_by_the_sweep() {
        let t0 = Instant::now();
        let mut g = gateway(false);
        with_node(&mut g, t0);
        assert!(g.sweep(t0 + 120 * S).is_empty());
        let a = g.sweep(t0 + 121 * S);
        assert_eq!(published(&a)[0].data["online"], false);
        assert!(!g.nodes().get("1").is_some_and(|n| n.online));
    }
}
