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
    nodes: Nodes,
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
        }
    }

    /// What was counted so far.
    pub fn counts(&self) -> &CoapCounts {
        &self.counts
    }

    /// The nodes.
    pub fn nodes(&self) -> &Nodes {
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
            Alive::Accepted { update, discover } => {
                self.out.push(Action::Publish(update));
                if discover {
                    tracing::info!(%uid, address = %from.ip().to_canonical(), reset, "node alive; discovering its resources");
                    self.start(
                        from.ip(),
                        RequestType::Get,
                        ".well-known/core",
                        Vec::new(),
                        false,
                        now + READ_FOR,
                        now,
                        Purpose::Discover { uid },
                    );
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
        match self.nodes.uid_at(from.ip()).map(str::to_owned) {
            Some(uid) => self.value(&uid, resource, value),
            None => self.counts.unknown_node.inc(),
        }
        ResponseType::Changed
    }
}
