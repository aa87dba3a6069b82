//! The command endpoint (PROTOCOL.md Part 3): a ROUTER on `P + 3`, plus the `serve` and
//! `command_reply` datagrams that the UDP input hands over. One thread owns the routing table and
//! the commands in flight, so every command gets exactly one reply: whichever of the server's
//! reply, the deadline, or the lapse of its registration comes first removes it from the table,
//! and only that one answers.
//!
//! With `--cluster`, the table also holds the prefixes other brokers serve (they announce them
//! through NATS): a command whose longest prefix is served elsewhere is forwarded to that broker
//! as a NATS request, which routes it to its own adaptor only (never further, so no loops) and
//! answers through NATS. Longest prefix, newest registration and the error replies work as on
//! one broker; `gone` also answers a command whose broker stopped announcing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use thingsbus_protocol::command::{self, error_reply, errors, CommandMessage};
use thingsbus_protocol::Namespace;

use crate::access::AllowList;
use crate::log_limit::LogLimiter;
use crate::mailbox::Mailbox;
use crate::stats::{self, CommandStats, Stats};

/// Commands in flight through the broker at once; more get `busy`.
pub(crate) const MAX_IN_FLIGHT: usize = 10_000;
/// Commands in flight from one caller at once.
pub(crate) const MAX_PER_CALLER: usize = 1_000;
/// Registrations one peer may hold.
const MAX_REGISTRATIONS_PER_PEER: usize = 256;
/// Registrations in all.
const MAX_REGISTRATIONS: usize = 16_384;
/// Largest message on the command port.
pub(crate) const MAX_COMMAND_BYTES: i64 = 256 * 1024;
/// Messages handled per wake-up before timers get their turn.
const BUDGET: usize = 1024;

/// Where a message came from and where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// A DEALER on the command port, by its ROUTER identity.
    Zmq(Vec<u8>),
    /// A board on the UDP input.
    Udp(SocketAddr),
    /// Another broker of the cluster, by node name: the prefixes it serves.
    Broker(String),
    /// Another broker's caller, answered on this NATS reply subject.
    Relay(String),
}

/// From the command thread to the cluster's NATS relay (read only with the `cluster` feature).
#[derive(Debug)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum ToRelay {
    /// The prefixes served here now, each with the epoch second of its registration.
    Routes(Vec<(String, f64)>),
    /// A command for a prefix that `node` serves (the message carries this broker's id).
    Forward {
        node: String,
        broker_id: u64,
        message: Vec<u8>,
        timeout: Duration,
    },
    /// The answer to a command that another broker forwarded here.
    Answer { reply_to: String, message: Vec<u8> },
}

/// From the cluster's NATS relay to the command thread (made only with the `cluster` feature).
#[derive(Debug)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum FromRelay {
    /// All that `node` serves now (an empty list when it stops).
    Routes {
        node: String,
        served: Vec<(Namespace, f64)>,
    },
    /// A command from another broker, for a server connected here.
    Command { reply_to: String, message: Vec<u8> },
    /// What `node` answered to a forwarded command; `None` when it could not be reached.
    Reply {
        node: String,
        broker_id: u64,
        message: Option<Vec<u8>>,
    },
}

/// The command thread's end of the relay.
pub(crate) struct RelayLink {
    pub(crate) to: tokio::sync::mpsc::Sender<ToRelay>,
    pub(crate) from: Mailbox<FromRelay>,
}

/// A prefix announced by another broker lapses after this long without a new announcement.
pub(crate) const REMOTE_ROUTE_TTL: Duration = Duration::from_secs(15);
/// How often a broker announces what it serves (and at once when that changes).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// A `serve`/`command`/`command_reply` datagram, passed on by the ingest thread.
pub(crate) struct Datagram {
    pub(crate) from: SocketAddr,
    pub(crate) message: Value,
}

struct Registration {
    peer: Peer,
    expires: Instant,
    /// Epoch second of the first registration: between equal prefixes the newest wins, across
    /// brokers too.
    since: f64,
    /// Order of arrival here, between registrations of the same `since`.
    order: u64,
}

struct InFlight {
    caller: Peer,
    caller_id: Value,
    server: Peer,
    prefix: Namespace,
}

/// Served prefixes listed in the broker's thing at most.
pub(crate) const SERVED_LISTED: usize = 256;

pub(crate) struct CommandRouter {
    pub(crate) router: zmq::Socket,
    pub(crate) udp: UdpSocket,
    /// `serve`/`command`/`command_reply` datagrams, from ingest.
    pub(crate) datagrams: Mailbox<Datagram>,
    pub(crate) allow_command: AllowList,
    pub(crate) allow_serve: AllowList,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<AtomicBool>,
    /// With `--cluster`: other brokers' routes and commands.
    pub(crate) relay: Option<RelayLink>,
}

struct State {
    registrations: HashMap<Namespace, Vec<Registration>>,
    per_peer: HashMap<Peer, usize>,
    in_flight: HashMap<u64, InFlight>,
    per_caller: HashMap<Peer, usize>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_id: u64,
    next_order: u64,
    next_lapse: Instant,
    /// The local prefixes as last announced, and when to announce again.
    announced: Vec<(String, f64)>,
}

fn epoch_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl CommandRouter {
    pub(crate) fn configure(router: &zmq::Socket) -> zmq::Result<()> {
        router.set_router_mandatory(true)?;
        router.set_maxmsgsize(MAX_COMMAND_BYTES)?;
        router.set_sndhwm(10_000)?;
        router.set_rcvhwm(10_000)?;
        router.set_linger(0)
    }

    pub(crate) fn run(self) {
        let mut st = State {
            registrations: HashMap::new(),
            per_peer: HashMap::new(),
            in_flight: HashMap::new(),
            per_caller: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 1,
            next_order: 0,
            next_lapse: Instant::now() + Duration::from_secs(1),
            announced: Vec::new(),
        };
        let mut log = LogLimiter::new(Duration::from_secs(10), 20);
        let heart = self.stats.health.beat("thingsbus-commands");
        while !self.stop.load(Ordering::Relaxed) {
            heart.beat();
            let now = Instant::now();
            let next_deadline = st.deadlines.peek().map(|Reverse((at, _))| *at);
            let wake_at = next_deadline.map_or(st.next_lapse, |d| d.min(st.next_lapse));
            let timeout = i64::try_from(wake_at.saturating_duration_since(now).as_millis())
                .unwrap_or(50)
                .clamp(0, 50);
            let zmq_ready = {
                let mut items = vec![
                    self.router.as_poll_item(zmq::POLLIN),
                    self.datagrams.poll_item(),
                ];
                if let Some(r) = &self.relay {
                    items.push(r.from.poll_item());
                }
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => items[0].is_readable(),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "command endpoint poll failed; stopping it");
                        return;
                    }
                }
            };
            if zmq_ready {
                for _ in 0..BUDGET {
                    let Some((frames, addr)) = self.recv_message() else {
                        break;
                    };
                    self.on_zmq(&mut st, frames, addr, &mut log);
                }
            }
            for d in self.datagrams.drain() {
                self.on_udp(&mut st, d, &mut log);
            }
            if let Some(r) = &self.relay {
                for m in r.from.drain() {
                    self.on_relay(&mut st, m, &mut log);
                }
            }
            self.timers(&mut st);
        }
    }

    fn cstats(&self) -> &CommandStats {
        &self.stats.commands
    }

    /// One whole message (identity first) and the sender's IP address, which libzmq gives as
    /// the `Peer-Address` property of what it received over TCP.
    fn recv_message(&self) -> Option<(Vec<Vec<u8>>, Option<IpAddr>)> {
        let mut frames = Vec::new();
        loop {
            let mut msg = zmq::Message::new();
            if self.router.recv(&mut msg, zmq::DONTWAIT).is_err() {
                // EAGAIN between messages; a message arrives whole, so never mid-way.
                return (!frames.is_empty()).then_some((frames, None));
            }
            let more = msg.get_more();
            let addr = (!more)
                .then(|| msg.gets("Peer-Address").and_then(|a| a.parse().ok()))
                .flatten();
            frames.push(msg.to_vec());
            if !more {
                return Some((frames, addr));
            }
        }
    }

    fn on_zmq(
        &self,
        st: &mut State,
        mut frames: Vec<Vec<u8>>,
        addr: Option<IpAddr>,
        log: &mut LogLimiter,
    ) {
        if frames.len() < 2 {
            return;
        }
        let identity = frames.remove(0);
        // A REQ socket puts an empty delimiter first; the last frame is the message.
        let body = frames.pop().unwrap_or_default();
        let peer = Peer::Zmq(identity);
        match command::decode_json(&body) {
            Ok(m) => self.handle(st, peer, addr, m, log),
            Err(bad) => self.bad(&peer, bad, log),
        }
    }

    fn on_udp(&self, st: &mut State, d: Datagram, log: &mut LogLimiter) {
        let peer = Peer::Udp(d.from);
        match command::from_value(d.message) {
            Ok(m) => self.handle(st, peer, Some(d.from.ip()), m, log),
            Err(bad) => self.bad(&peer, bad, log),
        }
    }

    fn on_relay(&self, st: &mut State, m: FromRelay, log: &mut LogLimiter) {
        match m {
            FromRelay::Routes { node, served } => self.remote_routes(st, &node, served),
            FromRelay::Command { reply_to, message } => {
                let peer = Peer::Relay(reply_to);
                match command::decode_json(&message) {
                    Ok(m @ CommandMessage::Command { .. }) => {
                        stats::add(&self.cstats().from_brokers, 1);
                        self.handle(st, peer, None, m, log);
                    }
                    Ok(_) => stats::add(&self.cstats().bad_request, 1),
                    Err(bad) => self.bad(&peer, bad, log),
                }
            }
            FromRelay::Reply {
                node,
                broker_id,
                message,
            } => {
                tracing::debug!(%node, broker_id, answered = message.is_some(), "reply from another broker");
                let peer = Peer::Broker(node);
                match message.map(|m| command::decode_json(&m)) {
                    Some(Ok(CommandMessage::Reply { id, result })) => {
                        self.reply(st, &peer, &id, result);
                    }
                    Some(_) => stats::add(&self.cstats().bad_request, 1),
                    None => {
                        if st
                            .in_flight
                            .get(&broker_id)
                            .is_some_and(|f| f.server == peer)
                        {
                            self.gone(st, broker_id, "the broker serving it cannot be reached");
                        }
                    }
                }
            }
        }
    }

    /// Replaces what `node` serves: prefixes it no longer announces lapse at once.
    fn remote_routes(&self, st: &mut State, node: &str, served: Vec<(Namespace, f64)>) {
        let now = Instant::now();
        let peer = Peer::Broker(node.to_owned());
        for regs in st.registrations.values_mut() {
            for r in regs.iter_mut().filter(|r| r.peer == peer) {
                r.expires = now;
            }
        }
        for (prefix, since) in served.into_iter().take(MAX_REGISTRATIONS_PER_PEER) {
            let regs = st.registrations.entry(prefix).or_default();
            if let Some(r) = regs.iter_mut().find(|r| r.peer == peer) {
                r.expires = now + REMOTE_ROUTE_TTL;
                r.since = since;
                continue;
            }
            st.next_order += 1;
            regs.push(Registration {
                peer: peer.clone(),
                expires: now + REMOTE_ROUTE_TTL,
                since,
                order: st.next_order,
            });
        }
        self.lapse(st, now);
        self.update_gauges(st);
    }

    fn bad(&self, peer: &Peer, bad: command::BadCommand, log: &mut LogLimiter) {
        stats::add(&self.cstats().bad_request, 1);
        if log.allow(Instant::now(), |n| {
            tracing::warn!(suppressed = n, "more bad messages on the command endpoint")
        }) {
            tracing::warn!(detail = %bad.detail, ?peer, "bad message on the command endpoint");
        }
        if bad.was_command {
            self.send(
                peer,
                &error_reply(bad.id, errors::BAD_REQUEST, Some(bad.detail)),
            );
        }
    }

    fn send(&self, peer: &Peer, m: &CommandMessage) -> bool {
        match peer {
            Peer::Zmq(identity) => self
                .router
                .send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)
                .and_then(|()| self.router.send(m.to_json(), zmq::DONTWAIT))
                .is_ok(),
            Peer::Udp(addr) => self.udp.send_to(&m.to_msgpack(), addr).is_ok(),
            Peer::Broker(node) => {
                let CommandMessage::Command {
                    id,
                    deadline: Some(deadline),
                    ..
                } = m
                else {
                    return false;
                };
                let timeout = Duration::from_secs_f64(
                    (deadline - epoch_secs(SystemTime::now())).clamp(0.0, command::MAX_SECONDS),
                );
                self.to_relay(ToRelay::Forward {
                    node: node.clone(),
                    broker_id: id.as_u64().unwrap_or_default(),
                    message: m.to_json(),
                    timeout,
                })
            }
            Peer::Relay(reply_to) => self.to_relay(ToRelay::Answer {
                reply_to: reply_to.clone(),
                message: m.to_json(),
            }),
        }
    }

    /// False when there is no relay or its queue is full.
    fn to_relay(&self, m: ToRelay) -> bool {
        let Some(r) = &self.relay else { return false };
        match r.to.try_send(m) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "the cluster relay cannot take a message");
                false
            }
        }
    }

    fn handle(
        &self,
        st: &mut State,
        peer: Peer,
        addr: Option<IpAddr>,
        m: CommandMessage,
        log: &mut LogLimiter,
    ) {
        match m {
            CommandMessage::Serve { ns, ttl } => self.serve(st, peer, addr, ns, ttl, log),
            CommandMessage::Command {
                id,
                ns,
                data,
                timeout,
                deadline,
            } => self.command(st, peer, addr, id, ns, data, timeout, deadline),
            CommandMessage::Reply { id, result } => self.reply(st, &peer, &id, result),
            CommandMessage::Serving { .. } => {
                stats::add(&self.cstats().bad_request, 1);
            }
        }
    }

    fn serve(
        &self,
        st: &mut State,
        peer: Peer,
        addr: Option<IpAddr>,
        prefixes: Vec<Namespace>,
        ttl: Option<f64>,
        log: &mut LogLimiter,
    ) {
        if addr.is_some_and(|a| !self.allow_serve.allows(a)) {
            stats::add(&self.cstats().not_allowed, 1);
            if log.allow(Instant::now(), |_| {}) {
                tracing::warn!(?peer, "serve refused: address not in --allow-input");
            }
            return;
        }
        let ttl = ttl.unwrap_or(command::DEFAULT_TTL);
        let expires = Instant::now() + Duration::from_secs_f64(ttl);
        let mut accepted = Vec::new();
        let total: usize = st.per_peer.values().sum();
        for prefix in prefixes {
            let regs = st.registrations.entry(prefix.clone()).or_default();
            if let Some(r) = regs.iter_mut().find(|r| r.peer == peer) {
                r.expires = expires;
                accepted.push(prefix);
                continue;
            }
            let held = st.per_peer.get(&peer).copied().unwrap_or(0);
            if held >= MAX_REGISTRATIONS_PER_PEER || total + accepted.len() >= MAX_REGISTRATIONS {
                continue;
            }
            st.next_order += 1;
            regs.push(Registration {
                peer: peer.clone(),
                expires,
                since: epoch_secs(SystemTime::now()),
                order: st.next_order,
            });
            *st.per_peer.entry(peer.clone()).or_insert(0) += 1;
            accepted.push(prefix);
        }
        self.update_gauges(st);
        self.send(&peer, &CommandMessage::Serving { ns: accepted, ttl });
    }

    /// The registration that serves `ns`: longest prefix, then the newest. With `local_only`
    /// (a command another broker forwarded), registrations of other brokers do not count.
    fn route(st: &State, ns: &Namespace, local_only: bool) -> Option<(Namespace, Peer)> {
        let now = Instant::now();
        let mut candidate = Some(ns.clone());
        while let Some(prefix) = candidate {
            if let Some(regs) = st.registrations.get(&prefix) {
                if let Some(r) = regs
                    .iter()
                    .filter(|r| r.expires > now)
                    .filter(|r| !(local_only && matches!(r.peer, Peer::Broker(_))))
                    .max_by(|a, b| a.since.total_cmp(&b.since).then(a.order.cmp(&b.order)))
                {
                    return Some((prefix, r.peer.clone()));
                }
            }
            candidate = prefix.parent();
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn command(
        &self,
        st: &mut State,
        caller: Peer,
        addr: Option<IpAddr>,
        id: Value,
        ns: Namespace,
        data: Value,
        timeout: Option<f64>,
        deadline: Option<f64>,
    ) {
        let refuse = |this: &Self, error: &str, detail: String, counter: &AtomicU64| {
            stats::add(counter, 1);
            this.send(&caller, &error_reply(id.clone(), error, Some(detail)));
        };
        let c = self.cstats();
        // Another broker checked its own caller; brokers of one cluster trust each other.
        let from_broker = matches!(caller, Peer::Relay(_));
        if !from_broker && !addr.is_some_and(|a| self.allow_command.allows(a)) {
            return refuse(
                self,
                errors::NOT_ALLOWED,
                "this address may not send commands (see the broker's --allow-command)".into(),
                &c.not_allowed,
            );
        }
        let Some((prefix, server)) = Self::route(st, &ns, from_broker) else {
            return refuse(
                self,
                errors::NO_ROUTE,
                format!("nobody serves {ns} or a prefix of it"),
                &c.no_route,
            );
        };
        let mine = st.per_caller.get(&caller).copied().unwrap_or(0);
        if st.in_flight.len() >= MAX_IN_FLIGHT || mine >= MAX_PER_CALLER {
            return refuse(
                self,
                errors::BUSY,
                format!("too many commands in flight (at most {MAX_IN_FLIGHT}, {MAX_PER_CALLER} per caller)"),
                &c.busy,
            );
        }
        // A forwarded command keeps its caller's deadline.
        let timeout = match (timeout, deadline) {
            (Some(t), _) => t,
            (None, Some(d)) if from_broker => {
                (d - epoch_secs(SystemTime::now())).clamp(0.0, command::MAX_SECONDS)
            }
            (None, _) => command::DEFAULT_TIMEOUT,
        };
        let timeout = Duration::from_secs_f64(timeout);
        let broker_id = st.next_id;
        st.next_id += 1;
        let forward = CommandMessage::Command {
            id: Value::from(broker_id),
            ns,
            data,
            timeout: None,
            deadline: Some(epoch_secs(SystemTime::now() + timeout)),
        };
        if !self.send(&server, &forward) {
            // The server's connection is gone (or its queue full): it cannot be reached now.
            // (The relay's queue full counts the same.)
            return refuse(
                self,
                errors::GONE,
                "the serving adaptor cannot be reached".into(),
                &c.gone,
            );
        }
        stats::add(&c.routed, 1);
        if matches!(server, Peer::Broker(_)) {
            stats::add(&c.forwarded, 1);
        }
        *st.per_caller.entry(caller.clone()).or_insert(0) += 1;
        st.in_flight.insert(
            broker_id,
            InFlight {
                caller,
                caller_id: id,
                server,
                prefix,
            },
        );
        st.deadlines
            .push(Reverse((Instant::now() + timeout, broker_id)));
        stats::set(&c.in_flight, st.in_flight.len() as u64);
    }

    /// Answers a command in flight `gone`, with the reason.
    fn gone(&self, st: &mut State, broker_id: u64, why: &str) {
        if let Some(f) = self.finish(st, broker_id) {
            stats::add(&self.cstats().gone, 1);
            self.send(
                &f.caller,
                &error_reply(f.caller_id, errors::GONE, Some(why.into())),
            );
        }
    }

    /// Takes a command out of the table: from here on nothing else can answer it.
    fn finish(&self, st: &mut State, broker_id: u64) -> Option<InFlight> {
        let f = st.in_flight.remove(&broker_id)?;
        if let Some(n) = st.per_caller.get_mut(&f.caller) {
            *n -= 1;
            if *n == 0 {
                st.per_caller.remove(&f.caller);
            }
        }
        stats::set(&self.cstats().in_flight, st.in_flight.len() as u64);
        Some(f)
    }

    fn reply(
        &self,
        st: &mut State,
        from: &Peer,
        id: &Value,
        result: Result<Value, (String, Option<String>)>,
    ) {
        let Some(broker_id) = id.as_u64() else {
            stats::add(&self.cstats().bad_request, 1);
            return;
        };
        // Only the server the command went to may answer it.
        if st
            .in_flight
            .get(&broker_id)
            .is_none_or(|f| f.server != *from)
        {
            stats::add(&self.cstats().late_replies, 1);
            return;
        }
        let Some(f) = self.finish(st, broker_id) else {
            return;
        };
        let counter = if result.is_ok() {
            &self.cstats().replied_ok
        } else {
            &self.cstats().replied_error
        };
        stats::add(counter, 1);
        self.send(
            &f.caller,
            &CommandMessage::Reply {
                id: f.caller_id,
                result,
            },
        );
    }

    fn timers(&self, st: &mut State) {
        let now = Instant::now();
        while let Some(Reverse((at, broker_id))) = st.deadlines.peek().copied() {
            if at > now {
                break;
            }
            st.deadlines.pop();
            if let Some(f) = self.finish(st, broker_id) {
                stats::add(&self.cstats().timeout, 1);
                self.send(
                    &f.caller,
                    &error_reply(
                        f.caller_id,
                        errors::TIMEOUT,
                        Some("no reply from the serving adaptor by the deadline".into()),
                    ),
                );
            }
        }
        if now >= st.next_lapse {
            st.next_lapse = now + Duration::from_millis(200);
            self.lapse(st, now);
        }
    }

    /// Drops registrations not renewed in time; their commands in flight get `gone`.
    fn lapse(&self, st: &mut State, now: Instant) {
        let mut lapsed: Vec<(Namespace, Peer)> = Vec::new();
        st.registrations.retain(|prefix, regs| {
            regs.retain(|r| {
                let keep = r.expires > now;
                if !keep {
                    lapsed.push((prefix.clone(), r.peer.clone()));
                }
                keep
            });
            !regs.is_empty()
        });
        if lapsed.is_empty() {
            return;
        }
        for (_, peer) in &lapsed {
            if let Some(n) = st.per_peer.get_mut(peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.per_peer.remove(peer);
                }
            }
        }
        let orphans: Vec<u64> = st
            .in_flight
            .iter()
            .filter(|(_, f)| lapsed.iter().any(|(p, s)| *p == f.prefix && *s == f.server))
            .map(|(id, _)| *id)
            .collect();
        for broker_id in orphans {
            self.gone(st, broker_id, "the serving adaptor's registration lapsed");
        }
        self.update_gauges(st);
    }

    fn update_gauges(&self, st: &mut State) {
        let remote = |r: &&Registration| matches!(r.peer, Peer::Broker(_));
        let all: usize = st.registrations.values().map(Vec::len).sum();
        let n_remote = st.registrations.values().flatten().filter(remote).count();
        stats::set(&self.cstats().registrations, (all - n_remote) as u64);
        stats::set(&self.cstats().remote_routes, n_remote as u64);
        let mut served: Vec<String> = st
            .registrations
            .keys()
            .map(|p| p.as_str().to_owned())
            .collect();
        served.sort_unstable();
        served.truncate(SERVED_LISTED);
        *self
            .cstats()
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = served;
        if self.relay.is_some() {
            // What other brokers should send here: each local prefix, with its newest
            // registration's time.
            let mut local: Vec<(String, f64)> = st
                .registrations
                .iter()
                .filter_map(|(prefix, regs)| {
                    regs.iter()
                        .filter(|r| !matches!(r.peer, Peer::Broker(_)))
                        .map(|r| r.since)
                        .max_by(f64::total_cmp)
                        .map(|since| (prefix.as_str().to_owned(), since))
                })
                .collect();
            local.sort_by(|a, b| a.0.cmp(&b.0));
            if local != st.announced && self.to_relay(ToRelay::Routes(local.clone())) {
                st.announced = local;
            }
        }
    }
}
