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
//!
//! The decisions live in [`routing::RoutingTable`], which takes each message and the time and
//! returns what to send; this file owns the sockets and carries those actions out.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use thingsbus_protocol::command::{self, CommandMessage};
use thingsbus_protocol::{Namespace, Timestamp};

use crate::access::AllowList;
use crate::log_limit::LogLimiter;
use crate::mailbox::Mailbox;
use crate::stats::{self, CommandStats, Stats};

mod routing;

use routing::{epoch_secs, Action, Count, Now, Peer, RoutingTable};
// Named in the docs of the cluster's relay.
#[allow(unused_imports)]
pub(crate) use routing::REMOTE_ROUTE_TTL;

/// Largest message on the command port.
pub(crate) const MAX_COMMAND_BYTES: i64 = 256 * 1024;
/// Messages handled per wake-up before timers get their turn.
const BUDGET: usize = 1024;

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

/// How often a broker announces what it serves (and at once when that changes).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// A `serve`/`command`/`command_reply` datagram, passed on by the ingest thread.
pub(crate) struct Datagram {
    pub(crate) from: SocketAddr,
    pub(crate) message: Value,
    /// The board that signed it (checked by ingest); `None` for an unsigned datagram.
    pub(crate) board: Option<String>,
}

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
    /// With `--auth-file`: the rights in force.
    pub(crate) auth: Option<Arc<crate::auth::AuthCell>>,
    /// The boards' replay state (ingest checks their datagrams with it): commands to a board
    /// that signs are signed with its current boot.
    pub(crate) board_auth: Arc<std::sync::Mutex<crate::board_auth::BoardAuth>>,
}

/// One message from the command port: its frames (identity first), the sender's address, and
/// the name of its key (the ZAP handler's `User-Id`; empty for none).
struct Received {
    frames: Vec<Vec<u8>>,
    addr: Option<IpAddr>,
    key: String,
}

impl CommandRouter {
    pub(crate) fn configure(router: &zmq::Socket) -> zmq::Result<()> {
        router.set_router_mandatory(true)?;
        router.set_maxmsgsize(MAX_COMMAND_BYTES)?;
        router.set_sndhwm(10_000)?;
        router.set_rcvhwm(10_000)?;
        router.set_linger(0)
    }

    /// Receives, asks the routing table what to do, does it; until `stop`.
    pub(crate) fn run(self) {
        let mut table = RoutingTable::new(
            self.allow_command.clone(),
            self.allow_serve.clone(),
            Instant::now(),
        );
        let mut out = Vec::new();
        let mut log = LogLimiter::new(Duration::from_secs(10), 20);
        let heart = self.stats.health.beat("thingsbus-commands");
        let mut auth_seen = None;
        while !self.stop.load(Ordering::Relaxed) {
            heart.beat();
            if let Some(cell) = &self.auth {
                // Read again only after a reload.
                let generation = Some(cell.generation());
                if generation != auth_seen {
                    auth_seen = generation;
                    table.set_auth(Some(cell.current()));
                }
            }
            let timeout = i64::try_from(
                table
                    .wake_at()
                    .saturating_duration_since(Instant::now())
                    .as_millis(),
            )
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
                    let Some(received) = self.recv_message() else {
                        break;
                    };
                    self.on_zmq(&mut table, received, &mut out, &mut log);
                    self.carry_out(&mut table, &mut out, &mut log);
                }
            }
            for d in self.datagrams.drain() {
                self.on_udp(&mut table, d, &mut out, &mut log);
                self.carry_out(&mut table, &mut out, &mut log);
            }
            if let Some(r) = &self.relay {
                for m in r.from.drain() {
                    self.on_relay(&mut table, m, &mut out, &mut log);
                    self.carry_out(&mut table, &mut out, &mut log);
                }
            }
            table.tick(Instant::now(), &mut out);
            self.carry_out(&mut table, &mut out, &mut log);
        }
    }

    fn cstats(&self) -> &CommandStats {
        &self.stats.commands
    }

    /// One whole message (identity first), with the sender's IP address and key name, which
    /// libzmq gives as the `Peer-Address` and `User-Id` properties of what it received over TCP.
    fn recv_message(&self) -> Option<Received> {
        let mut frames = Vec::new();
        loop {
            let mut msg = zmq::Message::new();
            if self.router.recv(&mut msg, zmq::DONTWAIT).is_err() {
                // EAGAIN between messages; a message arrives whole, so never mid-way.
                return (!frames.is_empty()).then_some(Received {
                    frames,
                    addr: None,
                    key: String::new(),
                });
            }
            if msg.get_more() {
                frames.push(msg.to_vec());
                continue;
            }
            let addr = msg.gets("Peer-Address").and_then(|a| a.parse().ok());
            let key = msg.gets("User-Id").unwrap_or_default().to_owned();
            frames.push(msg.to_vec());
            return Some(Received { frames, addr, key });
        }
    }

    fn on_zmq(
        &self,
        table: &mut RoutingTable,
        received: Received,
        out: &mut Vec<Action>,
        log: &mut LogLimiter,
    ) {
        let Received {
            mut frames,
            addr,
            key,
        } = received;
        if frames.len() < 2 {
            return;
        }
        let caller = routing::Caller {
            addr,
            key: (!key.is_empty()).then_some(key.as_str()),
            board: None,
        };
        let identity = frames.remove(0);
        // A REQ socket puts an empty delimiter first; the last frame is the message.
        let body = frames.pop().unwrap_or_default();
        let peer = Peer::Zmq(identity);
        match command::decode_json(&body) {
            Ok(m) => table.handle_from(Now::current(), peer, caller, m, out),
            Err(bad) => Self::bad(&peer, bad, out, log),
        }
    }

    fn on_udp(
        &self,
        table: &mut RoutingTable,
        d: Datagram,
        out: &mut Vec<Action>,
        log: &mut LogLimiter,
    ) {
        // A board that signed is known by its name: its commands are signed back, and only
        // its signed replies answer them.
        let peer = match &d.board {
            Some(name) => Peer::Board(d.from, name.as_str().into()),
            None => Peer::Udp(d.from),
        };
        let caller = routing::Caller {
            addr: Some(d.from.ip()),
            key: None,
            board: d.board.as_deref(),
        };
        match command::from_value(d.message) {
            Ok(m) => table.handle_from(Now::current(), peer, caller, m, out),
            Err(bad) => Self::bad(&peer, bad, out, log),
        }
    }

    fn on_relay(
        &self,
        table: &mut RoutingTable,
        m: FromRelay,
        out: &mut Vec<Action>,
        log: &mut LogLimiter,
    ) {
        match m {
            FromRelay::Routes { node, served } => {
                table.remote_routes(Instant::now(), &node, served, out);
            }
            FromRelay::Command { reply_to, message } => match command::decode_json(&message) {
                Ok(m) => table.forwarded(Now::current(), reply_to, m, out),
                Err(bad) => Self::bad(&Peer::Relay(reply_to), bad, out, log),
            },
            FromRelay::Reply {
                node,
                broker_id,
                message,
            } => {
                tracing::debug!(%node, broker_id, answered = message.is_some(), "reply from another broker");
                match message.map(|m| command::decode_json(&m)) {
                    Some(Ok(m @ CommandMessage::Reply { .. })) => {
                        table.handle(Now::current(), Peer::Broker(node), None, m, out);
                    }
                    Some(_) => out.push(Action::Count(Count::BadRequest)),
                    None => table.broker_unreachable(node, broker_id, out),
                }
            }
        }
    }

    fn bad(peer: &Peer, bad: command::BadCommand, out: &mut Vec<Action>, log: &mut LogLimiter) {
        if log.allow(Instant::now(), |n| {
            tracing::warn!(suppressed = n, "more bad messages on the command endpoint")
        }) {
            tracing::warn!(detail = %bad.detail, ?peer, "bad message on the command endpoint");
        }
        RoutingTable::bad(peer, bad, out);
    }

    /// Does what the table decided, in order. A command its server cannot be sent goes back to
    /// the table, which answers it.
    fn carry_out(&self, table: &mut RoutingTable, out: &mut Vec<Action>, log: &mut LogLimiter) {
        let mut more = Vec::new();
        while !out.is_empty() {
            for action in out.drain(..) {
                match action {
                    Action::Send { to, message } => {
                        self.send(&to, &message);
                    }
                    Action::Deliver {
                        to,
                        broker_id,
                        message,
                    } => {
                        if self.send(&to, &message) {
                            stats::add(&self.cstats().routed, 1);
                            if matches!(to, Peer::Broker(_)) {
                                stats::add(&self.cstats().forwarded, 1);
                            }
                        } else {
                            // The server's connection is gone (or its queue, or the relay's,
                            // is full): it cannot be reached now.
                            table.undeliverable(broker_id, &mut more);
                        }
                    }
                    Action::Count(c) => stats::add(self.counter(c), 1),
                    Action::ServeRefused(peer) => {
                        if log.allow(Instant::now(), |_| {}) {
                            tracing::warn!(?peer, "serve refused: address not in --allow-serve");
                        }
                    }
                    Action::NotPermitted(who) => {
                        self.stats
                            .refuse_by(&who, crate::Reason::NotPermitted.as_str());
                    }
                    Action::RoutesChanged => self.update_gauges(table),
                }
            }
            std::mem::swap(out, &mut more);
        }
        stats::set(&self.cstats().in_flight, table.in_flight() as u64);
    }

    fn counter(&self, c: Count) -> &AtomicU64 {
        let s = self.cstats();
        match c {
            Count::RepliedOk => &s.replied_ok,
            Count::RepliedError => &s.replied_error,
            Count::NoRoute => &s.no_route,
            Count::Timeout => &s.timeout,
            Count::Gone => &s.gone,
            Count::Busy => &s.busy,
            Count::BadRequest => &s.bad_request,
            Count::NotAllowed => &s.not_allowed,
            Count::LateReply => &s.late_replies,
            Count::FromBrokers => &s.from_brokers,
            Count::TakeoverRefused => &s.takeover_refused,
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
            Peer::Board(addr, board) => {
                let Some(auth) = &self.auth else {
                    return false;
                };
                let auth = auth.current();
                let sealed = self
                    .board_auth
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .seal_command(board, &m.to_msgpack(), Timestamp::now(), |n| {
                        auth.board(n).map(|b| b.secret.clone())
                    });
                match sealed {
                    Ok(datagram) => self.udp.send_to(&datagram, addr).is_ok(),
                    Err(e) => {
                        // Not sent: the command is answered `gone`.
                        tracing::warn!(%board, error = %e, "a command to a board could not be signed");
                        false
                    }
                }
            }
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

    fn update_gauges(&self, table: &mut RoutingTable) {
        let c = self.cstats();
        let g = table.gauges();
        stats::set(&c.registrations, g.local as u64);
        stats::set(&c.remote_routes, g.remote as u64);
        *c.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = g.served;
        if self.relay.is_some() {
            if let Some(local) = table.announcement() {
                if self.to_relay(ToRelay::Routes(local.clone())) {
                    table.announced(local);
                }
            }
        }
    }
}
