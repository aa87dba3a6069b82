//! The command endpoint's decisions, without sockets: which registration serves a command,
//! which commands are answered by whom and when. A [`RoutingTable`] takes each message (and the
//! time) and says what to send; the command thread ([`super::CommandRouter`]) carries that out.
//!
//! The rules (PROTOCOL.md Part 3):
//! - a command goes to the registration with the longest prefix of its namespace; between
//!   equal prefixes the most recent registration wins (a restarted adaptor takes over at once);
//! - a registration not renewed within its `ttl` lapses, and its commands in flight get `gone`;
//! - a command not answered by its deadline gets `timeout`;
//! - more than [`MAX_IN_FLIGHT`] commands in flight (or [`MAX_PER_CALLER`] from one caller)
//!   get `busy`;
//! - only the server a command went to may answer it, and only once: whichever of the reply,
//!   the deadline or the lapse takes the command out of the table first answers it;
//! - the broker's ids for commands in flight are unguessable, so that a forged `command_reply`
//!   datagram cannot answer one;
//! - a live registration is replaced only by its owner: the same key, or without keys the same
//!   host (another host's `serve` of that prefix is refused until it lapses);
//! - with an auth file, a key serves and commands what its rights cover, from anywhere; a peer
//!   without a key also needs its address in `--allow-serve` / `--allow-command`, and never from
//!   beyond loopback over UDP (a source address is no proof there).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use thingsbus_protocol::command::{self, error_reply, errors, BadCommand, CommandMessage};
use thingsbus_protocol::Namespace;

use crate::access::AllowList;
use crate::auth::{Auth, Rights, Who};

/// Commands in flight through the broker at once; more get `busy`.
pub(crate) const MAX_IN_FLIGHT: usize = 10_000;
/// Commands in flight from one caller at once.
pub(crate) const MAX_PER_CALLER: usize = 1_000;
/// Registrations one peer may hold.
const MAX_REGISTRATIONS_PER_PEER: usize = 256;
/// Registrations in all.
const MAX_REGISTRATIONS: usize = 16_384;
/// Registrations one host holds at most, over all its connections.
const MAX_REGISTRATIONS_PER_HOST: usize = 1_024;
/// Prefixes other brokers serve, held at most (over all of them).
const MAX_REMOTE_ROUTES: usize = 16_384;
/// A prefix announced by another broker lapses after this long without a new announcement.
pub(crate) const REMOTE_ROUTE_TTL: Duration = Duration::from_secs(15);
/// Served prefixes listed in the broker's thing at most.
pub(crate) const SERVED_LISTED: usize = 256;
/// How often registrations are checked for lapse.
const LAPSE_EVERY: Duration = Duration::from_millis(200);

/// Where a message came from and where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// A DEALER on the command port, by its ROUTER identity.
    Zmq(Vec<u8>),
    /// A board on the UDP input.
    Udp(SocketAddr),
    /// A board on the UDP input that signs its datagrams, by its address and its name in the
    /// auth file: what is sent to it is signed.
    Board(SocketAddr, Arc<str>),
    /// Another broker of the cluster, by node name: the prefixes it serves.
    Broker(String),
    /// Another broker's caller, answered on this NATS reply subject.
    Relay(String),
}

/// The time, on both clocks a decision needs: `at` for deadlines and lapses, `wall` (seconds
/// since 1970) for what goes on the wire and for comparing registrations across brokers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) wall: f64,
}

impl Now {
    pub(crate) fn current() -> Self {
        Now {
            at: Instant::now(),
            wall: epoch_secs(SystemTime::now()),
        }
    }
}

pub(crate) fn epoch_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A counter of [`crate::CommandStats`] that a decision bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    RepliedOk,
    RepliedError,
    NoRoute,
    Timeout,
    Gone,
    Busy,
    BadRequest,
    NotAllowed,
    LateReply,
    FromBrokers,
    /// A `serve` of a prefix another owner holds, refused.
    TakeoverRefused,
}

/// Who sent a message to the command endpoint: its address when known, and the name of its
/// key when it connected with one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Caller<'a> {
    pub(crate) addr: Option<IpAddr>,
    pub(crate) key: Option<&'a str>,
    /// The board that signed the datagram (its name in the auth file).
    pub(crate) board: Option<&'a str>,
}

impl Caller<'_> {
    /// Who it is for the auth file.
    fn who(&self) -> Who<'_> {
        match (self.key, self.board) {
            (Some(key), _) => Who::Key(key),
            (None, Some(board)) => Who::Board(board),
            (None, None) => Who::Anonymous,
        }
    }

    /// Its name, when it proved one (a key or a board's signature).
    fn named(&self) -> Option<&str> {
        self.key.or(self.board)
    }
}

/// Who holds a registration: only the same owner may replace it while it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Key(Arc<str>),
    Board(Arc<str>),
    Host(IpAddr),
    /// Neither key nor address (not over TCP or UDP).
    Unknown,
}

impl Owner {
    fn of(caller: Caller<'_>) -> Owner {
        match (caller.key, caller.board, caller.addr) {
            (Some(k), _, _) => Owner::Key(k.into()),
            (None, Some(b), _) => Owner::Board(b.into()),
            (None, None, Some(a)) => Owner::Host(a.to_canonical()),
            (None, None, None) => Owner::Unknown,
        }
    }
}

/// What the command thread does for a decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send `message` to `to` (an answer or `serving`: if it cannot be sent, it is lost).
    Send { to: Peer, message: CommandMessage },
    /// Send the command `message` to the server `to`. If that fails, the command must be given
    /// back with [`RoutingTable::undeliverable`], which answers it `gone`.
    Deliver {
        to: Peer,
        broker_id: u64,
        message: CommandMessage,
    },
    /// Bump this counter.
    Count(Count),
    /// A `serve` from an address not allowed to serve was refused (worth a rate-limited log).
    ServeRefused(Peer),
    /// A message outside the rights of its sender (named as in the auth file, or
    /// `anonymous`) was refused.
    NotPermitted(String),
    /// The registrations changed: gauges, the list of served prefixes and the cluster's
    /// announcement need a new look.
    RoutesChanged,
}

struct Registration {
    peer: Peer,
    expires: Instant,
    /// Epoch second of the first registration: between equal prefixes the newest wins, across
    /// brokers too.
    since: f64,
    /// Order of arrival here, between registrations of the same `since`.
    order: u64,
    /// The address it came from, when known (counted per host).
    host: Option<IpAddr>,
    owner: Owner,
}

struct InFlight {
    caller: Peer,
    caller_id: Value,
    server: Peer,
    prefix: Namespace,
}

/// A caller's command, as it arrived.
struct Request {
    id: Value,
    ns: Namespace,
    data: Value,
    timeout: Option<f64>,
    deadline: Option<f64>,
}

/// Registrations and local-vs-remote counts, for the broker's gauges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gauges {
    /// Registrations of adaptors connected here.
    pub(crate) local: usize,
    /// Prefixes other brokers serve.
    pub(crate) remote: usize,
    /// The prefixes served now, sorted, at most [`SERVED_LISTED`].
    pub(crate) served: Vec<String>,
}

/// One less for `key`, which is forgotten at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The routing table and the commands in flight.
pub(crate) struct RoutingTable {
    allow_command: AllowList,
    allow_serve: AllowList,
    registrations: HashMap<Namespace, Vec<Registration>>,
    per_peer: HashMap<Peer, usize>,
    per_host: HashMap<IpAddr, usize>,
    in_flight: HashMap<u64, InFlight>,
    per_caller: HashMap<Peer, usize>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Counts commands; the broker's ids are this count through a keyed hash.
    next_id: u64,
    ids: std::collections::hash_map::RandomState,
    next_order: u64,
    next_lapse: Instant,
    /// The local prefixes as last announced to the cluster.
    announced: Vec<(String, f64)>,
    /// The auth file in force, when there is one.
    auth: Option<Arc<Auth>>,
}

/// Largest broker id: ids stay exact in every JSON reader (53 bits).
const MAX_BROKER_ID: u64 = (1 << 53) - 1;

impl RoutingTable {
    /// An empty table: commands from addresses in `allow_command`, registrations from those in
    /// `allow_serve` (checked when the address is known).
    pub(crate) fn new(allow_command: AllowList, allow_serve: AllowList, now: Instant) -> Self {
        RoutingTable {
            allow_command,
            allow_serve,
            registrations: HashMap::new(),
            per_peer: HashMap::new(),
            per_host: HashMap::new(),
            in_flight: HashMap::new(),
            per_caller: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 1,
            ids: std::collections::hash_map::RandomState::new(),
            next_order: 0,
            next_lapse: now + Duration::from_secs(1),
            announced: Vec::new(),
            auth: None,
        }
    }

    /// Puts the rights of an auth file in force (`None`: no auth file).
    pub(crate) fn set_auth(&mut self, auth: Option<Arc<Auth>>) {
        self.auth = auth;
    }

    /// The rights of `caller` when an auth file is in force (`Err` when there is none); `None`
    /// inside when the caller has no rights at all.
    fn rights_of(&self, caller: Caller<'_>) -> Result<Option<&Rights>, ()> {
        let auth = self.auth.as_deref().ok_or(())?;
        Ok(auth.rights(caller.who()))
    }

    /// Whether `caller` may do what `right` names for `ns`: a key by its rights alone; a peer
    /// without a key by its address in `allowed` (an unknown address passes unless
    /// `need_addr`), and with an auth file also by the anonymous rights, and never over UDP from
    /// beyond loopback.
    fn permits(
        &self,
        caller: Caller<'_>,
        peer: &Peer,
        (allowed, need_addr): (&AllowList, bool),
        right: fn(&Rights) -> &crate::auth::Patterns,
        ns: &Namespace,
    ) -> bool {
        let by_rights = |r: Option<&Rights>| r.is_some_and(|r| right(r).covers(ns.as_str()));
        let by_addr = match caller.addr {
            Some(a) => allowed.allows(a),
            None => !need_addr,
        };
        match (caller.named(), self.rights_of(caller)) {
            (Some(_), Ok(rights)) => by_rights(rights),
            // A key without an auth file: CURVE alone lets every key in, so addresses decide.
            (_, Err(())) => by_addr,
            (None, Ok(rights)) => {
                let udp_from_afar =
                    matches!(peer, Peer::Udp(a) if !a.ip().to_canonical().is_loopback());
                !udp_from_afar && by_addr && by_rights(rights)
            }
        }
    }

    /// Counts a refusal by its sender's name when an auth file is in force.
    fn not_permitted(&self, caller: Caller<'_>, out: &mut Vec<Action>) {
        if self.auth.is_some() {
            let label = caller.named().unwrap_or(crate::auth::ANONYMOUS);
            out.push(Action::NotPermitted(label.to_owned()));
        }
    }

    /// A broker id no command in flight has, and no one can guess.
    fn fresh_id(&mut self) -> u64 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            let id = self.ids.hash_one(self.next_id) & MAX_BROKER_ID;
            if id != 0 && !self.in_flight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Commands in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// When [`RoutingTable::tick`] has something to do next.
    pub(crate) fn wake_at(&self) -> Instant {
        let next_deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
        next_deadline.map_or(self.next_lapse, |d| d.min(self.next_lapse))
    }

    /// A message from `peer` (at `addr`, when known), without a key.
    pub(crate) fn handle(
        &mut self,
        now: Now,
        peer: Peer,
        addr: Option<IpAddr>,
        m: CommandMessage,
        out: &mut Vec<Action>,
    ) {
        self.handle_from(
            now,
            peer,
            Caller {
                addr,
                key: None,
                board: None,
            },
            m,
            out,
        );
    }

    /// A message from `peer`, sent by `caller`.
    pub(crate) fn handle_from(
        &mut self,
        now: Now,
        peer: Peer,
        caller: Caller<'_>,
        m: CommandMessage,
        out: &mut Vec<Action>,
    ) {
        match m {
            CommandMessage::Serve { ns, ttl } => self.serve(now, peer, caller, ns, ttl, out),
            CommandMessage::Command {
                id,
                ns,
                data,
                timeout,
                deadline,
            } => {
                let request = Request {
                    id,
                    ns,
                    data,
                    timeout,
                    deadline,
                };
                self.command(now, peer, caller, request, out);
            }
            CommandMessage::Reply { id, result } => self.reply(&peer, &id, result, out),
            CommandMessage::Serving { .. } => out.push(Action::Count(Count::BadRequest)),
        }
    }

    /// A message that another broker forwarded from its caller, to be answered on `reply_to`:
    /// only a command is expected.
    pub(crate) fn forwarded(
        &mut self,
        now: Now,
        reply_to: String,
        m: CommandMessage,
        out: &mut Vec<Action>,
    ) {
        if matches!(m, CommandMessage::Command { .. }) {
            out.push(Action::Count(Count::FromBrokers));
            self.handle(now, Peer::Relay(reply_to), None, m, out);
        } else {
            out.push(Action::Count(Count::BadRequest));
        }
    }

    /// A message that could not be read: a command among them gets `bad_request`.
    pub(crate) fn bad(peer: &Peer, bad: BadCommand, out: &mut Vec<Action>) {
        out.push(Action::Count(Count::BadRequest));
        if bad.was_command {
            out.push(Action::Send {
                to: peer.clone(),
                message: error_reply(bad.id, errors::BAD_REQUEST, Some(bad.detail)),
            });
        }
    }

    fn serve(
        &mut self,
        now: Now,
        peer: Peer,
        caller: Caller<'_>,
        prefixes: Vec<Namespace>,
        ttl: Option<f64>,
        out: &mut Vec<Action>,
    ) {
        let addr = caller.addr;
        if caller.named().is_none() && addr.is_some_and(|a| !self.allow_serve.allows(a)) {
            out.push(Action::Count(Count::NotAllowed));
            out.push(Action::ServeRefused(peer));
            return;
        }
        let ttl = ttl.unwrap_or(command::DEFAULT_TTL);
        let expires = now.at + Duration::from_secs_f64(ttl);
        let mut accepted = Vec::new();
        let total: usize = self.per_peer.values().sum();
        let owner = Owner::of(caller);
        for prefix in prefixes {
            if !self.permits(
                caller,
                &peer,
                (&self.allow_serve, false),
                |r| &r.serve,
                &prefix,
            ) {
                out.push(Action::Count(Count::NotAllowed));
                self.not_permitted(caller, out);
                continue;
            }
            let regs = self.registrations.entry(prefix.clone()).or_default();
            if let Some(r) = regs.iter_mut().find(|r| r.peer == peer) {
                r.expires = expires;
                accepted.push(prefix);
                continue;
            }
            // A live registration of another owner stays until it lapses: a second host (or
            // key) cannot take over what the first serves.
            if regs.iter().any(|r| {
                r.expires > now.at && !matches!(r.peer, Peer::Broker(_)) && r.owner != owner
            }) {
                out.push(Action::Count(Count::TakeoverRefused));
                continue;
            }
            let held = self.per_peer.get(&peer).copied().unwrap_or(0);
            let by_host = addr.map_or(0, |a| self.per_host.get(&a).copied().unwrap_or(0));
            if held >= MAX_REGISTRATIONS_PER_PEER
                || by_host >= MAX_REGISTRATIONS_PER_HOST
                || total + accepted.len() >= MAX_REGISTRATIONS
            {
                continue;
            }
            self.next_order += 1;
            regs.push(Registration {
                peer: peer.clone(),
                expires,
                since: now.wall,
                order: self.next_order,
                host: addr,
                owner: owner.clone(),
            });
            *self.per_peer.entry(peer.clone()).or_insert(0) += 1;
            if let Some(a) = addr {
                *self.per_host.entry(a).or_insert(0) += 1;
            }
            accepted.push(prefix);
        }
        out.push(Action::RoutesChanged);
        out.push(Action::Send {
            to: peer,
            message: CommandMessage::Serving { ns: accepted, ttl },
        });
    }

    /// Replaces what `node` serves: prefixes it no longer announces lapse at once.
    pub(crate) fn remote_routes(
        &mut self,
        now: Instant,
        node: &str,
        served: Vec<(Namespace, f64)>,
        out: &mut Vec<Action>,
    ) {
        let peer = Peer::Broker(node.to_owned());
        for regs in self.registrations.values_mut() {
            for r in regs.iter_mut().filter(|r| r.peer == peer) {
                r.expires = now;
            }
        }
        let mut remote = self
            .registrations
            .values()
            .flatten()
            .filter(|r| matches!(r.peer, Peer::Broker(_)) && r.expires > now)
            .count();
        for (prefix, since) in served.into_iter().take(MAX_REGISTRATIONS_PER_PEER) {
            let regs = self.registrations.entry(prefix).or_default();
            if let Some(r) = regs.iter_mut().find(|r| r.peer == peer) {
                r.expires = now + REMOTE_ROUTE_TTL;
                r.since = since;
                remote += 1;
                continue;
            }
            if remote >= MAX_REMOTE_ROUTES {
                continue;
            }
            self.next_order += 1;
            regs.push(Registration {
                peer: peer.clone(),
                expires: now + REMOTE_ROUTE_TTL,
                since,
                order: self.next_order,
                host: None,
                owner: Owner::Unknown,
            });
            remote += 1;
        }
        self.lapse(now, out);
        out.push(Action::RoutesChanged);
    }

    /// The registration that serves `ns`: longest prefix, then the newest. With `local_only`
    /// (a command another broker forwarded), registrations of other brokers do not count.
    fn route(&self, now: Instant, ns: &Namespace, local_only: bool) -> Option<(Namespace, Peer)> {
        let mut candidate = Some(ns.clone());
        while let Some(prefix) = candidate {
            if let Some(regs) = self.registrations.get(&prefix) {
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

    fn command(
        &mut self,
        now: Now,
        caller: Peer,
        from: Caller<'_>,
        r: Request,
        out: &mut Vec<Action>,
    ) {
        let from_broker = matches!(caller, Peer::Relay(_));
        // Checked before `refuse` borrows `out`; another broker checked its own caller.
        let permitted = from_broker
            || self.permits(
                from,
                &caller,
                (&self.allow_command, true),
                |r| &r.command,
                &r.ns,
            );
        let anonymous_and_afar =
            from.named().is_none() && !from.addr.is_some_and(|a| self.allow_command.allows(a));
        if !permitted {
            self.not_permitted(from, out);
        }
        let mut refuse = |error: &str, detail: String, count: Count| {
            out.push(Action::Count(count));
            out.push(Action::Send {
                to: caller.clone(),
                message: error_reply(r.id.clone(), error, Some(detail)),
            });
        };
        // Brokers of one cluster trust each other.
        if !permitted {
            let why = if anonymous_and_afar {
                "this address may not send commands (see the broker's --allow-command)".into()
            } else {
                format!(
                    "not allowed to command {} (see the broker's --auth-file)",
                    r.ns
                )
            };
            return refuse(errors::NOT_ALLOWED, why, Count::NotAllowed);
        }
        let Some((prefix, server)) = self.route(now.at, &r.ns, from_broker) else {
            return refuse(
                errors::NO_ROUTE,
                format!("nobody serves {} or a prefix of it", r.ns),
                Count::NoRoute,
            );
        };
        let mine = self.per_caller.get(&caller).copied().unwrap_or(0);
        if self.in_flight.len() >= MAX_IN_FLIGHT || mine >= MAX_PER_CALLER {
            return refuse(
                errors::BUSY,
                format!("too many commands in flight (at most {MAX_IN_FLIGHT}, {MAX_PER_CALLER} per caller)"),
                Count::Busy,
            );
        }
        // A forwarded command keeps its caller's deadline.
        let timeout = match (r.timeout, r.deadline) {
            (Some(t), _) => t,
            (None, Some(d)) if from_broker => (d - now.wall).clamp(0.0, command::MAX_SECONDS),
            (None, _) => command::DEFAULT_TIMEOUT,
        };
        let timeout = Duration::from_secs_f64(timeout);
        let broker_id = self.fresh_id();
        let message = CommandMessage::Command {
            id: Value::from(broker_id),
            ns: r.ns,
            data: r.data,
            timeout: None,
            deadline: Some(now.wall + timeout.as_secs_f64()),
        };
        *self.per_caller.entry(caller.clone()).or_insert(0) += 1;
        self.in_flight.insert(
            broker_id,
            InFlight {
                caller,
                caller_id: r.id,
                server: server.clone(),
                prefix,
            },
        );
        self.deadlines.push(Reverse((now.at + timeout, broker_id)));
        out.push(Action::Deliver {
            to: server,
            broker_id,
            message,
        });
    }

    /// A command that could not be handed to its server (its connection is gone, or a queue
    /// is full): it is answered `gone` at once.
    pub(crate) fn undeliverable(&mut self, broker_id: u64, out: &mut Vec<Action>) {
        self.gone(broker_id, "the serving adaptor cannot be reached", out);
    }

    /// Another broker could not be reached with the command `broker_id`, sent to `node`.
    pub(crate) fn broker_unreachable(
        &mut self,
        node: String,
        broker_id: u64,
        out: &mut Vec<Action>,
    ) {
        let peer = Peer::Broker(node);
        if self
            .in_flight
            .get(&broker_id)
            .is_some_and(|f| f.server == peer)
        {
            self.gone(broker_id, "the broker serving it cannot be reached", out);
        }
    }

    /// Answers a command in flight `gone`, with the reason.
    fn gone(&mut self, broker_id: u64, why: &str, out: &mut Vec<Action>) {
        if let Some(f) = self.finish(broker_id) {
            out.push(Action::Count(Count::Gone));
            out.push(Action::Send {
                to: f.caller,
                message: error_reply(f.caller_id, errors::GONE, Some(why.into())),
            });
        }
    }

    /// Takes a command out of the table: from here on nothing else can answer it.
    fn finish(&mut self, broker_id: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(&broker_id)?;
        if let Some(n) = self.per_caller.get_mut(&f.caller) {
            *n -= 1;
            if *n == 0 {
                self.per_caller.remove(&f.caller);
            }
        }
        Some(f)
    }

    fn reply(
        &mut self,
        from: &Peer,
        id: &Value,
        result: Result<Value, (String, Option<String>)>,
        out: &mut Vec<Action>,
    ) {
        let Some(broker_id) = id.as_u64() else {
            out.push(Action::Count(Count::BadRequest));
            return;
        };
        // Only the server the command went to may answer it.
        if self
            .in_flight
            .get(&broker_id)
            .is_none_or(|f| f.server != *from)
        {
            out.push(Action::Count(Count::LateReply));
            return;
        }
        let Some(f) = self.finish(broker_id) else {
            return;
        };
        out.push(Action::Count(if result.is_ok() {
            Count::RepliedOk
        } else {
            Count::RepliedError
        }));
        out.push(Action::Send {
            to: f.caller,
            message: CommandMessage::Reply {
                id: f.caller_id,
                result,
            },
        });
    }

    /// Deadlines that passed answer `timeout`; every [`LAPSE_EVERY`], registrations not renewed
    /// lapse.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(Reverse((at, broker_id))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(f) = self.finish(broker_id) {
                out.push(Action::Count(Count::Timeout));
                out.push(Action::Send {
                    to: f.caller,
                    message: error_reply(
                        f.caller_id,
                        errors::TIMEOUT,
                        Some("no reply from the serving adaptor by the deadline".into()),
                    ),
                });
            }
        }
        if now >= self.next_lapse {
            self.next_lapse = now + LAPSE_EVERY;
            self.lapse(now, out);
        }
    }

    /// Drops registrations not renewed in time; their commands in flight get `gone`.
    fn lapse(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut lapsed: Vec<(Namespace, Peer)> = Vec::new();
        let mut hosts: Vec<IpAddr> = Vec::new();
        self.registrations.retain(|prefix, regs| {
            regs.retain(|r| {
                let keep = r.expires > now;
                if !keep {
                    lapsed.push((prefix.clone(), r.peer.clone()));
                    hosts.extend(r.host);
                }
                keep
            });
            !regs.is_empty()
        });
        if lapsed.is_empty() {
            return;
        }
        for (_, peer) in &lapsed {
            decrement(&mut self.per_peer, peer);
        }
        for host in &hosts {
            decrement(&mut self.per_host, host);
        }
        let orphans: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| lapsed.iter().any(|(p, s)| *p == f.prefix && *s == f.server))
            .map(|(id, _)| *id)
            .collect();
        for broker_id in orphans {
            self.gone(broker_id, "the serving adaptor's registration lapsed", out);
        }
        out.push(Action::RoutesChanged);
    }

    /// What the broker's gauges show of the table.
    pub(crate) fn gauges(&self) -> Gauges {
        let remote = |r: &&Registration| matches!(r.peer, Peer::Broker(_));
        let all: usize = self.registrations.values().map(Vec::len).sum();
        let n_remote = self.registrations.values().flatten().filter(remote).count();
        let mut served: Vec<String> = self
            .registrations
            .keys()
            .map(|p| p.as_str().to_owned())
            .collect();
        served.sort_unstable();
        served.truncate(SERVED_LISTED);
        Gauges {
            local: all - n_remote,
            remote: n_remote,
            served,
        }
    }

    /// What other brokers should send here, when it changed since [`RoutingTable::announced`]:
    /// each local prefix with its newest registration's time, sorted.
    pub(crate) fn announcement(&self) -> Option<Vec<(String, f64)>> {
        let mut local: Vec<(String, f64)> = self
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
        (local != self.announced).then_some(local)
    }

    /// The cluster took this announcement.
    pub(crate) fn announced(&mut self, routes: Vec<(String, f64)>) {
        self.announced = routes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOCAL: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }

    fn zmq(name: &str) -> Peer {
        Peer::Zmq(name.as_bytes().to_vec())
    }

    fn broker(node: &str) -> Peer {
        Peer::Broker(node.to_owned())
    }

    /// A table and a clock: times are seconds after the start, which is 1000.0 on the wall.
    /// Peers are ZMQ peers named by a string, on 127.0.0.1.
    struct Rig {
        t0: Instant,
        t: RoutingTable,
    }

    impl Rig {
        fn new() -> Self {
            Rig::with(AllowList::default())
        }

        fn with(allow: AllowList) -> Self {
            let t0 = Instant::now();
            Rig {
                t0,
                t: RoutingTable::new(allow.clone(), allow, t0),
            }
        }

        fn now(&self, secs: f64) -> Now {
            Now {
                at: self.t0 + Duration::from_secs_f64(secs),
                wall: 1000.0 + secs,
            }
        }

        fn handle(
            &mut self,
            at: f64,
            peer: Peer,
            addr: Option<IpAddr>,
            m: CommandMessage,
        ) -> Vec<Action> {
            let mut out = Vec::new();
            self.t.handle(self.now(at), peer, addr, m, &mut out);
            out
        }

        fn serve(&mut self, at: f64, peer: &str, prefixes: &[&str], ttl: f64) -> Vec<Action> {
            let ns = prefixes.iter().map(|p| ns(p)).collect();
            self.handle(
                at,
                zmq(peer),
                LOCAL,
                CommandMessage::Serve { ns, ttl: Some(ttl) },
            )
        }

        fn command(
            &mut self,
            at: f64,
            caller: &str,
            id: &str,
            thing: &str,
            timeout: Option<f64>,
        ) -> Vec<Action> {
            self.handle(at, zmq(caller), LOCAL, command_to(id, thing, timeout))
        }

        fn reply(&mut self, at: f64, server: &str, broker_id: u64, ok: bool) -> Vec<Action> {
            let result = if ok {
                Ok(json!("done"))
            } else {
                Err(("broken".to_owned(), None))
            };
            let m = CommandMessage::Reply {
                id: json!(broker_id),
                result,
            };
            self.handle(at, zmq(server), LOCAL, m)
        }

        fn tick(&mut self, at: f64) -> Vec<Action> {
            let mut out = Vec::new();
            self.t.tick(self.now(at).at, &mut out);
            out
        }

        fn remote(&mut self, at: f64, node: &str, served: &[(&str, f64)]) -> Vec<Action> {
            let mut out = Vec::new();
            let served = served.iter().map(|(p, since)| (ns(p), *since)).collect();
            self.t
                .remote_routes(self.now(at).at, node, served, &mut out);
            out
        }

        fn forwarded(&mut self, at: f64, reply_to: &str, m: CommandMessage) -> Vec<Action> {
            let mut out = Vec::new();
            self.t
                .forwarded(self.now(at), reply_to.to_owned(), m, &mut out);
            out
        }
    }

    fn command_to(id: &str, thing: &str, timeout: Option<f64>) -> CommandMessage {
        CommandMessage::Command {
            id: json!(id),
            ns: ns(thing),
            data: json!({"on": true}),
            timeout,
            deadline: None,
        }
    }

    /// The one command delivered in `out`: to whom, and the broker's id.
    fn delivered(out: &[Action]) -> (Peer, u64) {
        let mut found = out.iter().filter_map(|a| match a {
            Action::Deliver { to, broker_id, .. } => Some((to.clone(), *broker_id)),
            _ => None,
        });
        let one = found
            .next()
            .unwrap_or_else(|| panic!("nothing delivered in {out:?}"));
        assert!(found.next().is_none(), "{out:?}");
        one
    }

    /// The deadline of the command delivered in `out`.
    fn deadline(out: &[Action]) -> f64 {
        match out.last() {
            Some(Action::Deliver {
                message:
                    CommandMessage::Command {
                        deadline: Some(d), ..
                    },
                ..
            }) => *d,
            _ => panic!("nothing delivered in {out:?}"),
        }
    }

    /// To whom an error was answered, with which caller's id and error.
    fn refusal(out: &[Action]) -> (Peer, Value, String) {
        out.iter()
            .find_map(|a| match a {
                Action::Send {
                    to,
                    message:
                        CommandMessage::Reply {
                            id,
                            result: Err((e, _)),
                        },
                } => Some((to.clone(), id.clone(), e.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no error reply in {out:?}"))
    }

    fn refused(caller: &str, id: &str, error: &str) -> (Peer, Value, String) {
        (zmq(caller), json!(id), error.to_owned())
    }

    /// The prefixes a `serving` in `out` accepted.
    fn serving(out: &[Action]) -> Vec<Namespace> {
        match out.last() {
            Some(Action::Send {
                message: CommandMessage::Serving { ns, .. },
                ..
            }) => ns.clone(),
            _ => panic!("no serving in {out:?}"),
        }
    }

    fn counted(out: &[Action], c: Count) -> bool {
        out.contains(&Action::Count(c))
    }

    #[test]
    fn serve_is_answered_serving_with_the_prefixes_and_the_ttl_in_force() {
        let mut r = Rig::new();
        let out = r.serve(0.0, "a", &["shop.led", "shop.robot"], 10.0);
        let serving = CommandMessage::Serving {
            ns: vec![ns("shop.led"), ns("shop.robot")],
            ttl: 10.0,
        };
        assert_eq!(
            out,
            [
                Action::RoutesChanged,
                Action::Send {
                    to: zmq("a"),
                    message: serving
                }
            ]
        );
        let out = r.handle(
            0.0,
            zmq("b"),
            LOCAL,
            CommandMessage::Serve {
                ns: vec![ns("x")],
                ttl: None,
            },
        );
        let default = CommandMessage::Serving {
            ns: vec![ns("x")],
            ttl: command::DEFAULT_TTL,
        };
        assert_eq!(
            out.last(),
            Some(&Action::Send {
                to: zmq("b"),
                message: default
            })
        );
    }

    #[test]
    fn the_longest_prefix_serves() {
        let mut r = Rig::new();
        r.serve(0.0, "top", &["shop"], 30.0);
        r.serve(0.0, "leds", &["shop.led"], 30.0);
        assert_eq!(
            delivered(&r.command(1.0, "c", "1", "shop.led.red", None)).0,
            zmq("leds")
        );
        assert_eq!(
            delivered(&r.command(1.0, "c", "2", "shop.led", None)).0,
            zmq("leds")
        );
        assert_eq!(
            delivered(&r.command(1.0, "c", "3", "shop.robot", None)).0,
            zmq("top")
        );
    }

    #[test]
    fn nobody_serving_a_prefix_is_no_route() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 30.0);
        let out = r.command(1.0, "c", "c-1", "shop.robot", None);
        assert!(counted(&out, Count::NoRoute));
        assert_eq!(refusal(&out), refused("c", "c-1", errors::NO_ROUTE));
        assert_eq!(r.t.in_flight(), 0);
    }

    #[test]
    fn between_equal_prefixes_the_most_recent_registration_wins() {
        let mut r = Rig::new();
        r.serve(0.0, "old", &["shop.led"], 30.0);
        r.serve(5.0, "new", &["shop.led"], 30.0);
        // Renewing does not make the old one newer: a registration keeps its first time.
        r.serve(6.0, "old", &["shop.led"], 30.0);
        assert_eq!(
            delivered(&r.command(7.0, "c", "1", "shop.led.red", None)).0,
            zmq("new")
        );
        // At the same wall time, the one that arrived later wins.
        r.serve(7.0, "same-a", &["x"], 30.0);
        r.serve(7.0, "same-b", &["x"], 30.0);
        assert_eq!(
            delivered(&r.command(7.0, "c", "2", "x", None)).0,
            zmq("same-b")
        );
    }

    #[test]
    fn the_command_sent_on_carries_the_brokers_id_and_a_deadline() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 30.0);
        let out = r.command(1.0, "c", "c-17", "shop.led.red", Some(2.0));
        let (to, broker_id) = delivered(&out);
        let sent = CommandMessage::Command {
            id: json!(broker_id),
            ns: ns("shop.led.red"),
            data: json!({"on": true}),
            timeout: None,
            deadline: Some(1003.0),
        };
        assert_eq!(
            out,
            [Action::Deliver {
                to,
                broker_id,
                message: sent
            }]
        );
        let (_, next) = delivered(&r.command(1.0, "c", "c-18", "shop.led.red", None));
        assert_ne!(next, broker_id, "each command has its own id");
    }

    #[test]
    fn the_servers_reply_goes_to_the_caller_with_the_callers_id() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 30.0);
        let (_, id) = delivered(&r.command(1.0, "c", "c-1", "shop.led.red", None));
        assert_eq!(r.t.in_flight(), 1);
        let answer = CommandMessage::Reply {
            id: json!("c-1"),
            result: Ok(json!("done")),
        };
        assert_eq!(
            r.reply(1.5, "leds", id, true),
            [
                Action::Count(Count::RepliedOk),
                Action::Send {
                    to: zmq("c"),
                    message: answer
                }
            ]
        );
        assert_eq!(r.t.in_flight(), 0);
        // A refusal from the server is passed on as such.
        let (_, id) = delivered(&r.command(2.0, "c", "c-2", "shop.led.red", None));
        let out = r.reply(2.0, "leds", id, false);
        assert!(counted(&out, Count::RepliedError));
        assert_eq!(refusal(&out), refused("c", "c-2", "broken"));
    }

    #[test]
    fn only_the_server_a_command_went_to_may_answer_it_and_only_once() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 30.0);
        let (_, id) = delivered(&r.command(1.0, "c", "c-1", "shop.led.red", None));
        assert_eq!(
            r.reply(1.0, "other", id, true),
            [Action::Count(Count::LateReply)]
        );
        assert_eq!(r.t.in_flight(), 1);
        assert!(counted(&r.reply(1.0, "leds", id, true), Count::RepliedOk));
        assert_eq!(
            r.reply(1.0, "leds", id, true),
            [Action::Count(Count::LateReply)]
        );
        assert!(
            !counted(&r.tick(100.0), Count::Timeout),
            "nor does the deadline answer again"
        );
        // An id the broker never gives is a bad request.
        let m = CommandMessage::Reply {
            id: json!("c-1"),
            result: Ok(json!(1)),
        };
        assert_eq!(
            r.handle(1.0, zmq("leds"), LOCAL, m),
            [Action::Count(Count::BadRequest)]
        );
    }

    #[test]
    fn no_reply_by_the_deadline_is_timeout_and_a_late_reply_is_dropped() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 60.0);
        let (_, id) = delivered(&r.command(1.0, "c", "c-1", "shop.led.red", Some(2.0)));
        assert_eq!(
            r.t.wake_at(),
            r.now(1.0).at,
            "the first lapse check comes first"
        );
        assert!(r.tick(1.0).is_empty());
        assert!(r.tick(2.9).is_empty());
        assert_eq!(r.t.wake_at(), r.now(3.0).at);
        let out = r.tick(3.0);
        assert!(counted(&out, Count::Timeout));
        assert_eq!(refusal(&out), refused("c", "c-1", errors::TIMEOUT));
        assert_eq!(r.t.in_flight(), 0);
        assert_eq!(
            r.reply(3.1, "leds", id, true),
            [Action::Count(Count::LateReply)]
        );
        // Without a timeout, the default one.
        let out = r.command(10.0, "c", "c-2", "shop.led.red", None);
        assert_eq!(deadline(&out), 1010.0 + command::DEFAULT_TIMEOUT);
    }

    #[test]
    fn a_registration_not_renewed_lapses_and_its_commands_get_gone() {
        let mut r = Rig::new();
        r.serve(0.0, "leds", &["shop.led"], 5.0);
        r.serve(0.0, "top", &["shop"], 60.0);
        assert_eq!(
            delivered(&r.command(1.0, "c", "c-1", "shop.led.red", Some(60.0))).0,
            zmq("leds")
        );
        // Renewed in time: still there.
        r.serve(4.0, "leds", &["shop.led"], 5.0);
        assert!(r.tick(8.0).is_empty());
        // Not renewed: gone, and the command in flight with it.
        let out = r.tick(9.0);
        assert!(counted(&out, Count::Gone));
        assert!(out.contains(&Action::RoutesChanged));
        assert_eq!(refusal(&out), refused("c", "c-1", errors::GONE));
        assert_eq!(r.t.in_flight(), 0);
        // The next command goes to the shorter prefix still served.
        assert_eq!(
            delivered(&r.command(9.0, "c", "c-2", "shop.led.red", None)).0,
            zmq("top")
        );
    }

    #[test]
    fn an_expired_registration_routes_nothing_even_before_it_is_swept() {
        let mut r = Rig::new();
        r.serve(0.0, "old", &["shop.led"], 5.0);
        r.serve(1.0, "new", &["shop.led"], 2.0);
        // `new` expired at 3.0, and no tick since: `old` serves.
        assert_eq!(
            delivered(&r.command(4.0, "c", "1", "shop.led", None)).0,
            zmq("old")
        );
        assert!(counted(
            &r.command(6.0, "c", "2", "shop.led", None),
            Count::NoRoute
        ));
    }

    #[test]
    fn a_lapse_answers_only_the_commands_of_the_lapsed_registration() {
        let mut r = Rig::new();
        r.serve(0.0, "a", &["a"], 2.0);
        r.serve(0.0, "b", &["b"], 60.0);
        r.command(1.0, "c", "to-a", "a.x", Some(60.0));
        r.command(1.0, "c", "to-b", "b.x", Some(60.0));
        let out = r.tick(2.5);
        assert_eq!(refusal(&out), refused("c", "to-a", errors::GONE));
        assert_eq!(
            out.iter()
                .filter(|a| **a == Action::Count(Count::Gone))
                .count(),
            1
        );
        assert_eq!(r.t.in_flight(), 1);
    }

    #[test]
    fn too_many_commands_in_flight_is_busy() {
        let mut r = Rig::new();
        r.serve(0.0, "s", &["x"], 600.0);
        for i in 0..MAX_PER_CALLER {
            delivered(&r.command(1.0, "greedy", &i.to_string(), "x", Some(60.0)));
        }
        let out = r.command(1.0, "greedy", "one more", "x", Some(60.0));
        assert!(counted(&out, Count::Busy));
        assert_eq!(refusal(&out), refused("greedy", "one more", errors::BUSY));
        // Other callers still get through, up to the limit of all.
        for n in 0.. {
            if r.t.in_flight() == MAX_IN_FLIGHT {
                break;
            }
            let caller = format!("c{}", n / MAX_PER_CALLER);
            delivered(&r.command(1.0, &caller, "1", "x", Some(60.0)));
        }
        assert!(counted(
            &r.command(1.0, "newcomer", "1", "x", Some(60.0)),
            Count::Busy
        ));
        // Answers make room again.
        r.tick(61.5);
        assert_eq!(r.t.in_flight(), 0);
        delivered(&r.command(61.5, "greedy", "again", "x", None));
    }

    #[test]
    fn a_command_that_cannot_be_delivered_is_gone_at_once() {
        let mut r = Rig::new();
        r.serve(0.0, "s", &["x"], 60.0);
        let (_, id) = delivered(&r.command(1.0, "c", "c-1", "x", None));
        let mut out = Vec::new();
        r.t.undeliverable(id, &mut out);
        assert!(counted(&out, Count::Gone));
        assert_eq!(refusal(&out), refused("c", "c-1", errors::GONE));
        assert_eq!(r.t.in_flight(), 0);
        assert!(
            !counted(&r.tick(100.0), Count::Timeout),
            "its deadline answers nothing"
        );
    }

    #[test]
    fn commands_and_registrations_need_an_allowed_address() {
        let mut r = Rig::with(AllowList::new(vec!["10.0.0.0/8".parse().unwrap()]));
        let ten: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        let serve = CommandMessage::Serve {
            ns: vec![ns("a")],
            ttl: None,
        };
        assert_eq!(
            r.handle(0.0, zmq("outsider"), LOCAL, serve.clone()),
            [
                Action::Count(Count::NotAllowed),
                Action::ServeRefused(zmq("outsider"))
            ]
        );
        // A serve whose address is unknown is taken.
        assert_eq!(serving(&r.handle(0.0, zmq("s"), None, serve)), [ns("a")]);
        // A command needs its address known and allowed.
        for addr in [LOCAL, None] {
            let out = r.handle(0.0, zmq("c"), addr, command_to("c-1", "a", None));
            assert!(counted(&out, Count::NotAllowed));
            assert_eq!(refusal(&out), refused("c", "c-1", errors::NOT_ALLOWED));
        }
        delivered(&r.handle(0.0, zmq("c"), ten, command_to("c-1", "a", None)));
    }

    #[test]
    fn registrations_are_bounded_per_host_over_its_connections() {
        let mut r = Rig::new();
        let names: Vec<String> = (0..MAX_REGISTRATIONS_PER_PEER)
            .map(|i| format!("p{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let per_connection = MAX_REGISTRATIONS_PER_HOST / MAX_REGISTRATIONS_PER_PEER;
        for c in 0..per_connection {
            let got = serving(&r.serve(0.0, &format!("conn{c}"), &names, 30.0)).len();
            assert_eq!(got, MAX_REGISTRATIONS_PER_PEER, "connection {c}");
        }
        // One more connection from the same host gets nothing new...
        assert!(serving(&r.serve(0.0, "one-more", &names, 30.0)).is_empty());
        // ...until registrations of that host lapse.
        let after = 31.0;
        r.tick(after);
        assert_eq!(
            serving(&r.serve(after, "one-more", &names[..5], 30.0)).len(),
            5
        );
    }

    #[test]
    fn remote_routes_are_bounded_over_all_brokers() {
        let mut r = Rig::new();
        let names: Vec<String> = (0..MAX_REGISTRATIONS_PER_PEER)
            .map(|i| format!("p{i}"))
            .collect();
        let nodes = MAX_REMOTE_ROUTES / MAX_REGISTRATIONS_PER_PEER;
        for n in 0..nodes + 3 {
            let served: Vec<(&str, f64)> = names.iter().map(|p| (p.as_str(), 1.0)).collect();
            r.remote(0.0, &format!("node{n}"), &served);
        }
        assert_eq!(r.t.gauges().remote, MAX_REMOTE_ROUTES);
        // A broker already known keeps renewing what it has.
        let served: Vec<(&str, f64)> = names.iter().map(|p| (p.as_str(), 1.0)).collect();
        r.remote(1.0, "node0", &served);
        assert_eq!(r.t.gauges().remote, MAX_REMOTE_ROUTES);
    }

    #[test]
    fn registrations_are_bounded_per_peer() {
        let mut r = Rig::new();
        let names: Vec<String> = (0..MAX_REGISTRATIONS_PER_PEER + 5)
            .map(|i| format!("p{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            serving(&r.serve(0.0, "s", &names, 30.0)).len(),
            MAX_REGISTRATIONS_PER_PEER
        );
        assert_eq!(
            serving(&r.serve(1.0, "s", &names[..3], 30.0)).len(),
            3,
            "renewals are fine"
        );
        assert_eq!(r.t.gauges().local, MAX_REGISTRATIONS_PER_PEER);
        // Others are not held back by it.
        assert_eq!(serving(&r.serve(1.0, "t", &names[..3], 30.0)).len(), 3);
    }

    #[test]
    fn unreadable_messages_count_and_a_command_among_them_gets_bad_request() {
        let bad = BadCommand {
            id: json!("c-1"),
            was_command: true,
            detail: "no ns".into(),
        };
        let mut out = Vec::new();
        RoutingTable::bad(&zmq("c"), bad.clone(), &mut out);
        assert!(counted(&out, Count::BadRequest));
        assert_eq!(refusal(&out), refused("c", "c-1", errors::BAD_REQUEST));
        let mut out = Vec::new();
        RoutingTable::bad(
            &zmq("c"),
            BadCommand {
                was_command: false,
                ..bad
            },
            &mut out,
        );
        assert_eq!(out, [Action::Count(Count::BadRequest)]);
        // `serving` is the broker's word, not a peer's.
        let m = CommandMessage::Serving {
            ns: vec![],
            ttl: 1.0,
        };
        assert_eq!(
            Rig::new().handle(0.0, zmq("c"), LOCAL, m),
            [Action::Count(Count::BadRequest)]
        );
    }

    #[test]
    fn other_brokers_routes_serve_callers_here_but_not_their_forwarded_commands() {
        let mut r = Rig::new();
        assert!(r
            .remote(0.0, "n2", &[("shop", 999.0)])
            .contains(&Action::RoutesChanged));
        assert_eq!(
            r.t.gauges(),
            Gauges {
                local: 0,
                remote: 1,
                served: vec!["shop".into()]
            }
        );
        assert_eq!(
            delivered(&r.command(1.0, "c", "1", "shop.led", None)).0,
            broker("n2")
        );
        // A command another broker forwarded goes only to a server connected here...
        let mut forwarded = command_to("7", "shop.led", None);
        if let CommandMessage::Command { deadline, .. } = &mut forwarded {
            *deadline = Some(1003.0);
        }
        let out = r.forwarded(1.0, "reply.1", forwarded.clone());
        assert!(counted(&out, Count::FromBrokers));
        assert!(counted(&out, Count::NoRoute));
        assert_eq!(refusal(&out).0, Peer::Relay("reply.1".into()));
        // ... with its caller's deadline.
        r.serve(1.0, "local", &["shop"], 30.0);
        let out = r.forwarded(1.0, "reply.2", forwarded);
        assert_eq!(delivered(&out).0, zmq("local"));
        assert!((deadline(&out) - 1003.0).abs() < 1e-9);
        // Anything but a command from another broker is a bad request.
        let serve = CommandMessage::Serve {
            ns: vec![],
            ttl: None,
        };
        assert_eq!(
            r.forwarded(1.0, "r", serve),
            [Action::Count(Count::BadRequest)]
        );
    }

    #[test]
    fn a_remote_route_lapses_when_no_longer_announced_or_not_renewed() {
        let mut r = Rig::new();
        r.remote(0.0, "n2", &[("a", 999.0), ("b", 999.0)]);
        r.command(1.0, "c", "to-a", "a", Some(60.0));
        // `a` no longer announced: it lapses at once, with its command.
        let out = r.remote(2.0, "n2", &[("b", 999.0)]);
        assert_eq!(refusal(&out), refused("c", "to-a", errors::GONE));
        assert_eq!((r.t.gauges().remote, r.t.in_flight()), (1, 0));
        // `b` not announced again within REMOTE_ROUTE_TTL lapses too.
        r.tick(2.0 + REMOTE_ROUTE_TTL.as_secs_f64());
        assert_eq!(r.t.gauges().remote, 0);
    }

    #[test]
    fn an_unreachable_broker_answers_gone_only_its_own_commands() {
        let mut r = Rig::new();
        r.remote(0.0, "n2", &[("a", 999.0)]);
        let (_, id) = delivered(&r.command(1.0, "c", "c-1", "a", None));
        let mut out = Vec::new();
        r.t.broker_unreachable("n3".into(), id, &mut out);
        assert!(out.is_empty());
        r.t.broker_unreachable("n2".into(), id, &mut out);
        assert_eq!(refusal(&out), refused("c", "c-1", errors::GONE));
    }

    #[test]
    fn between_brokers_the_newest_registration_wins_by_wall_time() {
        let mut r = Rig::new();
        r.serve(0.0, "here", &["a"], 30.0); // since 1000.0 on the wall
        r.remote(1.0, "n2", &[("a", 999.0)]);
        assert_eq!(
            delivered(&r.command(1.0, "c", "1", "a", None)).0,
            zmq("here")
        );
        r.remote(1.0, "n2", &[("a", 1000.5)]);
        assert_eq!(
            delivered(&r.command(1.0, "c", "2", "a", None)).0,
            broker("n2")
        );
    }

    #[test]
    fn the_announcement_lists_local_prefixes_when_they_change() {
        let mut r = Rig::new();
        assert_eq!(r.t.announcement(), None, "nothing to say yet");
        r.serve(0.0, "s", &["b", "a"], 30.0);
        r.serve(2.0, "s2", &["a"], 30.0);
        r.remote(0.0, "n2", &[("remote", 1.0)]);
        let a = r.t.announcement().unwrap();
        assert_eq!(
            a,
            [("a".to_owned(), 1002.0), ("b".to_owned(), 1000.0)],
            "newest time each"
        );
        r.t.announced(a);
        assert_eq!(r.t.announcement(), None);
        r.serve(3.0, "s", &["c"], 30.0);
        assert_eq!(r.t.announcement().map(|a| a.len()), Some(3));
        let g = r.t.gauges();
        assert_eq!((g.local, g.remote), (4, 1));
        assert_eq!(g.served, ["a", "b", "c", "remote"]);
    }

    fn served(out: &[Action]) -> Vec<String> {
        out.iter()
            .find_map(|a| match a {
                Action::Send {
                    message: CommandMessage::Serving { ns, .. },
                    ..
                } => Some(ns.iter().map(|n| n.as_str().to_owned()).collect()),
                _ => None,
            })
            .expect("a serving reply")
    }

    fn serve_from(
        r: &mut Rig,
        at: f64,
        peer: Peer,
        caller: Caller<'_>,
        prefix: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let m = CommandMessage::Serve {
            ns: vec![ns(prefix)],
            ttl: Some(10.0),
        };
        r.t.handle_from(r.now(at), peer, caller, m, &mut out);
        served(&out)
    }

    fn host(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_live_registration_is_replaced_only_by_its_owner() {
        let mut r = Rig::with(AllowList::default());
        let first = Caller {
            addr: host("10.0.0.1"),
            key: None,
            board: None,
        };
        let other = Caller {
            addr: host("10.0.0.2"),
            key: None,
            board: None,
        };
        assert_eq!(serve_from(&mut r, 0.0, zmq("a"), first, "door"), ["door"]);
        assert!(
            serve_from(&mut r, 1.0, zmq("b"), other, "door").is_empty(),
            "another host"
        );
        assert!(
            serve_from(&mut r, 1.0, zmq("b"), other, "door.front").len() == 1,
            "another prefix is free"
        );
        assert_eq!(
            serve_from(&mut r, 2.0, zmq("c"), first, "door"),
            ["door"],
            "the same host, a new connection"
        );
        // By key: the same key from anywhere; another key or no key is refused.
        let mut r = Rig::with(AllowList::default());
        let pi = Caller {
            addr: host("10.0.0.1"),
            key: Some("pi"),
            board: None,
        };
        let pi_moved = Caller {
            addr: host("10.0.0.9"),
            key: Some("pi"),
            board: None,
        };
        let ops = Caller {
            addr: host("10.0.0.1"),
            key: Some("ops"),
            board: None,
        };
        assert_eq!(serve_from(&mut r, 0.0, zmq("a"), pi, "door").len(), 1);
        assert!(serve_from(&mut r, 0.0, zmq("b"), ops, "door").is_empty());
        assert!(
            serve_from(&mut r, 0.0, zmq("c"), first, "door").is_empty(),
            "no key, same host"
        );
        assert_eq!(serve_from(&mut r, 0.0, zmq("d"), pi_moved, "door").len(), 1);
        // Once the owner's registrations lapse, anyone allowed may serve it.
        let mut out = Vec::new();
        r.t.tick(r.now(11.0).at, &mut out);
        assert_eq!(serve_from(&mut r, 11.0, zmq("e"), ops, "door").len(), 1);
    }

    #[test]
    fn with_an_auth_file_rights_decide_and_udp_from_afar_is_never_enough() {
        let auth = crate::auth::Auth::parse(&format!(
            "[anonymous]\nserve = [\"garden\"]\ncommand = [\"garden\"]\n\
             [keys.pi]\npublic = \"{}\"\nserve = [\"kitchen\"]\ncommand = [\"*\"]\n",
            zmq::z85_encode(&[7; 32]).unwrap()
        ))
        .unwrap();
        let mut r = Rig::with(AllowList::default());
        r.t.set_auth(Some(Arc::new(auth)));
        let anon = Caller {
            addr: LOCAL,
            key: None,
            board: None,
        };
        let pi = Caller {
            addr: host("192.168.1.5"),
            key: Some("pi"),
            board: None,
        };
        assert_eq!(
            serve_from(&mut r, 0.0, zmq("a"), anon, "garden.pump").len(),
            1
        );
        assert!(serve_from(&mut r, 0.0, zmq("a"), anon, "kitchen").is_empty());
        assert!(r.t.auth.is_some());
        assert_eq!(
            serve_from(&mut r, 0.0, zmq("p"), pi, "kitchen.door").len(),
            1
        );
        assert!(serve_from(&mut r, 0.0, zmq("p"), pi, "garden.hose").is_empty());
        // A board over UDP: on loopback the anonymous rights decide; from afar nothing unsigned.
        let near: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let far: SocketAddr = "192.168.1.9:4000".parse().unwrap();
        let via = |a: SocketAddr| Caller {
            addr: Some(a.ip()),
            key: None,
            board: None,
        };
        assert_eq!(
            serve_from(&mut r, 0.0, Peer::Udp(near), via(near), "garden.valve").len(),
            1
        );
        assert!(serve_from(&mut r, 0.0, Peer::Udp(far), via(far), "garden.light").is_empty());
        // Commands: the key's rights from any address; anonymous by its rights and address.
        let mut out = Vec::new();
        r.t.handle_from(
            r.now(1.0),
            zmq("c"),
            pi,
            command_to("c-1", "kitchen.door", None),
            &mut out,
        );
        assert_eq!(delivered(&out).0, zmq("p"));
        let mut out = Vec::new();
        r.t.handle_from(
            r.now(1.0),
            zmq("c"),
            anon,
            command_to("c-2", "kitchen.door", None),
            &mut out,
        );
        assert!(
            out.contains(&Action::NotPermitted("anonymous".into())),
            "{out:?}"
        );
        assert!(out.contains(&Action::Count(Count::NotAllowed)));
        let mut out = Vec::new();
        r.t.handle_from(
            r.now(1.0),
            Peer::Udp(far),
            via(far),
            command_to("c-3", "garden.pump", None),
            &mut out,
        );
        assert!(
            out.contains(&Action::Count(Count::NotAllowed)),
            "udp from afar: {out:?}"
        );
    }

    #[test]
    fn a_board_that_signs_serves_by_its_name_from_afar_and_owns_its_prefix() {
        let auth = crate::auth::Auth::parse(&format!(
            "[boards.porch]\nsecret = \"{}\"\nserve = [\"porch\"]\n\
             [boards.shed]\nsecret = \"{}\"\nserve = [\"shed\"]\n",
            "11".repeat(32),
            "22".repeat(32)
        ))
        .unwrap();
        let mut r = Rig::with(AllowList::default());
        r.t.set_auth(Some(Arc::new(auth)));
        let far: SocketAddr = "192.168.1.9:4000".parse().unwrap();
        let board = |name| Caller {
            addr: Some(far.ip()),
            key: None,
            board: Some(name),
        };
        let peer = |name: &str| Peer::Board(far, name.into());
        assert_eq!(
            serve_from(&mut r, 0.0, peer("porch"), board("porch"), "porch.light").len(),
            1,
            "signed, in its rights, from afar"
        );
        assert!(
            serve_from(&mut r, 0.0, peer("shed"), board("shed"), "porch.light").is_empty(),
            "outside its rights"
        );
        let unsigned = Caller {
            addr: Some(far.ip()),
            key: None,
            board: None,
        };
        assert!(
            serve_from(&mut r, 0.0, Peer::Udp(far), unsigned, "porch.light").is_empty(),
            "unsigned from the same address"
        );
        let mut out = Vec::new();
        r.t.handle_from(
            r.now(1.0),
            zmq("c"),
            Caller {
                addr: LOCAL,
                key: None,
                board: Some("porch"),
            },
            command_to("c-1", "porch.light", None),
            &mut out,
        );
        assert!(
            out.contains(&Action::NotPermitted("porch".into())),
            "a board has no command rights: {out:?}"
        );
    }

    #[test]
    fn broker_ids_are_not_a_counter() {
        let mut r = Rig::new();
        r.serve(0.0, "s", &["x"], 60.0);
        let ids: Vec<u64> = (0..100)
            .map(|i| {
                let out = r.handle(
                    0.0,
                    zmq("c"),
                    LOCAL,
                    command_to(&format!("c-{i}"), "x", None),
                );
                delivered(&out).1
            })
            .collect();
        assert!(ids.iter().all(|id| *id > 0 && *id <= MAX_BROKER_ID));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 100);
        // Consecutive ids do not follow from each other.
        assert!(
            ids.windows(2).filter(|w| w[1] == w[0] + 1).count() < 3,
            "{ids:?}"
        );
    }
}
