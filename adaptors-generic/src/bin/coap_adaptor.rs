//! `thingsbus-coap-adaptor`: constrained devices speaking pyaiot's CoAP node protocol become
//! things, and obey commands.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{json, Value};
use thingsbus_adaptor::Adaptor;
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::coap::{self, Alive};
use thingsbus_adaptors_generic::flags::positive_secs;
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const EXAMPLE: &str = "\
Example: RIOT boards flashed for pyaiot's CoAP gateway, on the bus under home.coap:

  thingsbus-coap-adaptor -z example.org --ns home.coap

A board that POSTs Alive:1234 to /alive becomes home.coap.n1234 (its uid, address, online, last
alive); its resources, found through /.well-known/core, become home.coap.n1234.temperature and so
on, with values as JSON, numbers, {\"value\": 23, \"unit\": \"°C\"} or text. Then

  thingsbus call home.coap.n1234.led 1

PUTs \"1\" to the board's /led. Names become namespace parts: lower-cased, characters outside
a-z, 0-9, '_' and '-' as '-', and 'n' (nodes) or 'r' (resources) in front of one that does not
start with a letter; the original names stay in the data.";

/// Brings CoAP nodes (RIOT boards, pyaiot nodes) onto the bus as things, and turns commands to
/// those things into CoAP PUTs.
///
/// Speaks pyaiot's node protocol: POST /alive (Alive:<uid> or reset:<uid>), POST /server
/// (<resource>:<value>), discovery through /.well-known/core, PUT to act. Resources whose link
/// carries `obs` are observed (RFC 7641).
#[derive(Debug, Parser)]
#[command(name = "thingsbus-coap-adaptor", version, after_long_help = EXAMPLE)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,

    /// Where nodes send to (UDP); [::] takes IPv4 and IPv6.
    #[arg(long, default_value = "[::]:5683")]
    coap_bind: SocketAddr,

    /// Base namespace of the nodes.
    #[arg(long, default_value = "coap")]
    ns: String,

    /// The port nodes serve their resources on.
    #[arg(long, default_value_t = 5683)]
    node_port: u16,

    /// Seconds without an alive before a node is offline.
    #[arg(long, default_value_t = 120.0, value_parser = positive_secs)]
    max_time: f64,

    /// Nodes kept at most; alives from more are ignored and counted.
    #[arg(long, default_value_t = 1000)]
    max_nodes: usize,

    /// Resources kept per node at most.
    #[arg(long, default_value_t = 64)]
    max_resources: usize,

    /// Documentation URL sent with every update.
    #[arg(short, long = "documentation", value_name = "URL")]
    documentation_url: Option<String>,

    /// How long to wait for DNS and the bus, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    timeout: f64,

    /// Seconds between the info lines that count what happened.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    report_interval: f64,

    #[command(flatten)]
    log: LogArgs,
}

/// RFC 7252 transmission parameters.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;
/// How long a message id is remembered for duplicate detection (EXCHANGE_LIFETIME is 247 s;
/// nodes retransmit within 45 s).
const DEDUP_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Counts {
    datagrams: AtomicU64,
    malformed: AtomicU64,
    bad_option: AtomicU64,
    duplicates: AtomicU64,
    alives: AtomicU64,
    values: AtomicU64,
    unknown_node: AtomicU64,
    refused_nodes: AtomicU64,
    commands_ok: AtomicU64,
    commands_failed: AtomicU64,
    resource_errors: AtomicU64,
}

impl Counts {
    fn log(&self, what: &str) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            datagrams = l(&self.datagrams),
            malformed = l(&self.malformed),
            bad_option = l(&self.bad_option),
            duplicates = l(&self.duplicates),
            alives = l(&self.alives),
            values = l(&self.values),
            unknown_node = l(&self.unknown_node),
            refused_nodes = l(&self.refused_nodes),
            commands_ok = l(&self.commands_ok),
            commands_failed = l(&self.commands_failed),
            resource_errors = l(&self.resource_errors),
            "{what}"
        );
    }
}

struct Node {
    uid: String,
    part: String,
    ip: IpAddr,
    last_alive: SystemTime,
    last_alive_at: Instant,
    online: bool,
    /// Resource name → namespace part.
    resources: BTreeMap<String, String>,
}

/// What an outgoing request hears back.
enum Heard {
    /// An empty ACK: the node got it and will answer separately.
    Ack,
    /// A reset: the node refuses the exchange.
    Reset,
    /// The response.
    Response(Box<Packet>),
}

/// When a request from a node was answered, and the bytes of the answer.
type Answered = (Instant, Vec<u8>);

struct Shared {
    socket: UdpSocket,
    adaptor: Adaptor,
    nodes: Mutex<HashMap<String, Node>>,
    /// Our requests in flight, by token; their message ids map to tokens.
    pending: Mutex<HashMap<Vec<u8>, mpsc::Sender<Heard>>>,
    mids: Mutex<HashMap<u16, Vec<u8>>>,
    /// Observations: token → (node uid, resource name).
    observing: Mutex<HashMap<Vec<u8>, (String, String)>>,
    /// Requests from nodes seen recently, for duplicate detection, with the reply sent.
    seen: Mutex<HashMap<(SocketAddr, u16), Answered>>,
    next_mid: AtomicU16,
    next_token: AtomicU64,
    node_port: u16,
    max_nodes: usize,
    max_resources: usize,
    counts: Counts,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn code_text(c: MessageClass) -> String {
    let raw: u8 = c.into();
    format!("{}.{:02}", raw >> 5, raw & 0x1f)
}

/// Options this adaptor understands; an unknown critical (odd) one makes a request unusable.
fn known_option(n: u16) -> bool {
    matches!(
        n,
        1 | 3 | 4 | 5 | 6 | 7 | 8 | 11 | 12 | 14 | 15 | 17 | 20 | 23 | 27 | 28 | 35 | 39 | 60 | 258
    )
}

/// A CoAP message, if it is one: the codec's checks plus what RFC 7252 also requires (version
/// 1; a payload marker is followed by a payload).
fn well_formed(bytes: &[u8]) -> Option<Packet> {
    if bytes.first().is_none_or(|b| b >> 6 != 1) {
        return None;
    }
    let p = Packet::from_bytes(bytes).ok()?;
    if p.payload.is_empty() && bytes.len() > 4 + p.get_token().len() && bytes.last() == Some(&0xff)
    {
        return None;
    }
    Some(p)
}

fn uri_path(p: &Packet) -> String {
    p.get_option(CoapOption::UriPath)
        .map(|parts| {
            parts
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

impl Shared {
    fn node_addr(&self, ip: IpAddr) -> SocketAddr {
        // A socket bound to [::] reaches IPv4 nodes through their mapped address.
        let ip = match (self.socket.local_addr().map(|a| a.is_ipv6()), ip) {
            (Ok(true), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (_, ip) => ip,
        };
        SocketAddr::new(ip, self.node_port)
    }

    async fn send(&self, p: &Packet, to: SocketAddr) -> Vec<u8> {
        match p.to_bytes() {
            Ok(bytes) => {
                if let Err(e) = self.socket.send_to(&bytes, to).await {
                    tracing::debug!(%to, error = %e, "CoAP send failed");
                }
                bytes
            }
            Err(e) => {
                tracing::warn!(error = ?e, "CoAP message not encodable");
                Vec::new()
            }
        }
    }

    fn publish(&self, sub: &str, data: &Value) {
        if let Err(e) = self.adaptor.send_to(sub, data, None) {
            tracing::warn!(thing = %sub, error = %e, "update not sent");
        }
    }

    fn publish_node(&self, n: &Node) {
        let resources: Vec<&String> = n.resources.keys().collect();
        self.publish(
            &n.part,
            &json!({
                "uid": n.uid,
                "address": n.ip.to_canonical().to_string(),
                "online": n.online,
                "last_alive": epoch(n.last_alive),
                "resources": resources,
            }),
        );
    }

    /// A CoAP request to a node, confirmable, retransmitted per RFC 7252 until `deadline`.
    async fn request(
        &self,
        ip: IpAddr,
        method: RequestType,
        path: &str,
        payload: Vec<u8>,
        observe: bool,
        deadline: Instant,
    ) -> Result<Packet, String> {
        let token = self
            .next_token
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes()[4..]
            .to_vec();
        let mid = self.next_mid.fetch_add(1, Ordering::Relaxed);
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
        let (tx, mut rx) = mpsc::channel(8);
        lock(&self.pending).insert(token.clone(), tx);
        lock(&self.mids).insert(mid, token.clone());
        let to = self.node_addr(ip);
        let result = async {
            let mut wait = ACK_TIMEOUT;
            let mut acked = false;
            let mut tries = 0;
            loop {
                if !acked {
                    if tries > MAX_RETRANSMIT {
                        return Err(format!(
                            "no answer from {} after {tries} tries",
                            to.ip().to_canonical()
                        ));
                    }
                    self.send(&p, to).await;
                    tries += 1;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("no answer from {} in time", to.ip().to_canonical()));
                }
                let step = if acked { left } else { wait.min(left) };
                match tokio::time::timeout(step, rx.recv()).await {
                    Ok(Some(Heard::Response(r))) => return Ok(*r),
                    Ok(Some(Heard::Ack)) => acked = true,
                    Ok(Some(Heard::Reset)) => return Err("the node reset the exchange".into()),
                    Ok(None) => return Err("request abandoned".into()),
                    Err(_) => wait *= 2,
                }
            }
        }
        .await;
        lock(&self.mids).remove(&mid);
        if !(observe && result.is_ok()) {
            lock(&self.pending).remove(&token);
        }
        result
    }

    async fn handle(self: &Arc<Self>, bytes: &[u8], from: SocketAddr) {
        self.counts.datagrams.fetch_add(1, Ordering::Relaxed);
        let Some(p) = well_formed(bytes) else {
            self.counts.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "malformed CoAP datagram dropped");
            return;
        };
        let code = p.header.code;
        let mtype = p.header.get_type();
        // Empty messages: ACK and RST of our confirmable requests.
        if code == MessageClass::Empty {
            let token = lock(&self.mids).get(&p.header.message_id).cloned();
            if let Some(tx) = token.and_then(|t| lock(&self.pending).get(&t).cloned()) {
                let heard = if mtype == MessageType::Reset {
                    Heard::Reset
                } else {
                    Heard::Ack
                };
                let _ = tx.try_send(heard);
            }
            return;
        }
        if let MessageClass::Response(_) = code {
            if mtype == MessageType::Confirmable {
                self.ack(&p, from).await;
            }
            let token = p.get_token().to_vec();
            if let Some(tx) = lock(&self.pending).get(&token).cloned() {
                let _ = tx.try_send(Heard::Response(Box::new(p.clone())));
            }
            let observed = lock(&self.observing).get(&token).cloned();
            if let (Some((uid, resource)), true) =
                (observed, p.get_option(CoapOption::Observe).is_some())
            {
                self.value_of(&uid, &resource, &String::from_utf8_lossy(&p.payload));
            }
            return;
        }
        let MessageClass::Request(method) = code else {
            self.counts.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Duplicates of a confirmable request get the same answer again.
        if mtype == MessageType::Confirmable {
            let again = {
                let now = Instant::now();
                let mut seen = lock(&self.seen);
                if seen.len() > 10_000 {
                    seen.retain(|_, (at, _)| now.duration_since(*at) < DEDUP_FOR);
                }
                seen.get(&(from, p.header.message_id))
                    .filter(|(at, _)| now.duration_since(*at) < DEDUP_FOR)
                    .map(|(_, reply)| reply.clone())
            };
            if let Some(reply) = again {
                self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                let _ = self.socket.send_to(&reply, from).await;
                return;
            }
        }
        let bad_option = p.options().any(|(n, _)| n % 2 == 1 && !known_option(*n));
        let response = if bad_option {
            self.counts.bad_option.fetch_add(1, Ordering::Relaxed);
            ResponseType::BadOption
        } else {
            match (method, uri_path(&p).as_str()) {
                (RequestType::Post, "alive") => self.alive(&p.payload, from),
                (RequestType::Post, "server") => self.server(&p.payload, from),
                (_, "alive" | "server") => ResponseType::MethodNotAllowed,
                _ => ResponseType::NotFound,
            }
        };
        let mut r = Packet::new();
        r.header.code = MessageClass::Response(response);
        r.set_token(p.get_token().to_vec());
        if mtype == MessageType::Confirmable {
            r.header.set_type(MessageType::Acknowledgement);
            r.header.message_id = p.header.message_id;
        } else {
            r.header.set_type(MessageType::NonConfirmable);
            r.header.message_id = self.next_mid.fetch_add(1, Ordering::Relaxed);
        }
        let sent = self.send(&r, from).await;
        if mtype == MessageType::Confirmable {
            lock(&self.seen).insert((from, p.header.message_id), (Instant::now(), sent));
        }
    }

    async fn ack(&self, p: &Packet, to: SocketAddr) {
        let mut a = Packet::new();
        a.header.set_type(MessageType::Acknowledgement);
        a.header.code = MessageClass::Empty;
        a.header.message_id = p.header.message_id;
        self.send(&a, to).await;
    }

    fn alive(self: &Arc<Self>, payload: &[u8], from: SocketAddr) -> ResponseType {
        let Some(alive) = std::str::from_utf8(payload)
            .ok()
            .and_then(coap::parse_alive)
        else {
            self.counts.malformed.fetch_add(1, Ordering::Relaxed);
            return ResponseType::BadRequest;
        };
        self.counts.alives.fetch_add(1, Ordering::Relaxed);
        let (uid, reset) = match alive {
            Alive::Alive(u) => (u, false),
            Alive::Reset(u) => (u, true),
        };
        let mut nodes = lock(&self.nodes);
        let known = nodes.contains_key(&uid);
        if !known && nodes.len() >= self.max_nodes {
            self.counts.refused_nodes.fetch_add(1, Ordering::Relaxed);
            return ResponseType::ServiceUnavailable;
        }
        let node = nodes.entry(uid.clone()).or_insert_with(|| Node {
            part: coap::node_part(&uid),
            uid: uid.clone(),
            ip: from.ip(),
            last_alive: SystemTime::now(),
            last_alive_at: Instant::now(),
            online: false,
            resources: BTreeMap::new(),
        });
        let was_online = node.online;
        // Reach the node at its address and the node port, never at this message's source port.
        node.ip = from.ip();
        node.last_alive = SystemTime::now();
        node.last_alive_at = Instant::now();
        node.online = true;
        if reset {
            node.resources.clear();
        }
        self.publish_node(node);
        drop(nodes);
        if !known || reset || !was_online {
            tracing::info!(%uid, address = %from.ip().to_canonical(), reset, "node alive; discovering its resources");
            let me = self.clone();
            tokio::spawn(async move { me.discover(uid).await });
        }
        ResponseType::Changed
    }

    fn server(&self, payload: &[u8], from: SocketAddr) -> ResponseType {
        let Some((resource, value)) = std::str::from_utf8(payload)
            .ok()
            .and_then(coap::parse_server)
        else {
            self.counts.malformed.fetch_add(1, Ordering::Relaxed);
            return ResponseType::BadRequest;
        };
        // A node is known by its address (its POSTs may come from any source port).
        let uid = lock(&self.nodes)
            .values()
            .find(|n| n.ip == from.ip())
            .map(|n| n.uid.clone());
        match uid {
            Some(uid) => {
                self.value_of(&uid, resource, value);
                ResponseType::Changed
            }
            None => {
                self.counts.unknown_node.fetch_add(1, Ordering::Relaxed);
                ResponseType::Changed
            }
        }
    }

    /// Publishes a resource's value, adding the resource if it is new.
    fn value_of(&self, uid: &str, resource: &str, text: &str) {
        let mut nodes = lock(&self.nodes);
        let Some(node) = nodes.get_mut(uid) else {
            return;
        };
        let known = node.resources.contains_key(resource);
        if !known && node.resources.len() >= self.max_resources {
            return;
        }
        let part = node
            .resources
            .entry(resource.to_owned())
            .or_insert_with(|| coap::resource_part(resource))
            .clone();
        let sub = format!("{}.{part}", node.part);
        if !known {
            self.publish_node(node);
        }
        drop(nodes);
        self.counts.values.fetch_add(1, Ordering::Relaxed);
        self.publish(&sub, &coap::parse_value(text));
    }

    async fn discover(self: Arc<Self>, uid: String) {
        let Some(ip) = lock(&self.nodes).get(&uid).map(|n| n.ip) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let links = match self
            .request(
                ip,
                RequestType::Get,
                ".well-known/core",
                Vec::new(),
                false,
                deadline,
            )
            .await
        {
            Ok(r) => coap::parse_links(&String::from_utf8_lossy(&r.payload)),
            Err(e) => {
                tracing::warn!(%uid, error = %e, "resource discovery failed");
                self.counts.resource_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        for link in links.into_iter().take(self.max_resources) {
            // One resource that fails must not stop the others: each has its own task.
            let me = self.clone();
            let uid = uid.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                match me
                    .request(
                        ip,
                        RequestType::Get,
                        &link.path,
                        Vec::new(),
                        link.observable,
                        deadline,
                    )
                    .await
                {
                    Ok(r)
                        if matches!(
                            r.header.code,
                            MessageClass::Response(ResponseType::Content)
                        ) =>
                    {
                        if link.observable && r.get_option(CoapOption::Observe).is_some() {
                            lock(&me.observing)
                                .insert(r.get_token().to_vec(), (uid.clone(), link.path.clone()));
                        }
                        me.value_of(&uid, &link.path, &String::from_utf8_lossy(&r.payload));
                    }
                    Ok(r) => {
                        me.counts.resource_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%uid, resource = %link.path, code = %code_text(r.header.code), "resource not read");
                    }
                    Err(e) => {
                        me.counts.resource_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%uid, resource = %link.path, error = %e, "resource not read");
                    }
                }
            });
        }
    }

    /// Marks silent nodes offline.
    fn sweep(&self, max_time: Duration) {
        let mut nodes = lock(&self.nodes);
        for n in nodes.values_mut() {
            if n.online && n.last_alive_at.elapsed() > max_time {
                n.online = false;
                tracing::info!(uid = %n.uid, "node silent past --max-time: offline");
                self.publish_node(n);
            }
        }
    }

    /// A command on `<base>.<node>.<resource>`: a PUT of the data as text.
    async fn command(&self, rel: &str, data: Value, deadline: SystemTime) -> Result<Value, String> {
        let (node_part, resource_part) = rel
            .split_once('.')
            .ok_or_else(|| format!("{rel:?} is not <node>.<resource>"))?;
        let target = lock(&self.nodes)
            .values()
            .find(|n| n.part == node_part)
            .and_then(|n| {
                n.resources
                    .iter()
                    .find(|(_, p)| *p == resource_part)
                    .map(|(name, _)| (n.ip, name.clone()))
            });
        let (ip, resource) = target.ok_or_else(|| format!("no node resource {rel}"))?;
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .saturating_sub(Duration::from_millis(100));
        let r = self
            .request(
                ip,
                RequestType::Put,
                &resource,
                coap::put_payload(&data).into_bytes(),
                false,
                Instant::now() + left,
            )
            .await;
        match r {
            Ok(r)
                if matches!(
                    r.header.code,
                    MessageClass::Response(ResponseType::Created | ResponseType::Changed)
                ) =>
            {
                self.counts.commands_ok.fetch_add(1, Ordering::Relaxed);
                Ok(json!({"code": code_text(r.header.code), "value": data}))
            }
            Ok(r) => {
                self.counts.commands_failed.fetch_add(1, Ordering::Relaxed);
                Err(format!("the node answered {}", code_text(r.header.code)))
            }
            Err(e) => {
                self.counts.commands_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let socket = UdpSocket::bind(args.coap_bind)
        .await
        .with_context(|| format!("cannot bind the CoAP socket {}", args.coap_bind))?;
    let bound = socket.local_addr()?;
    let mut builder = args.bus.adaptor(&args.ns, false, timeout)?;
    if let Some(d) = &args.documentation_url {
        builder = builder.documentation_url(d);
    }
    let adaptor = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", args.bus.describe()))?;
    let shared = Arc::new(Shared {
        socket,
        adaptor: adaptor.clone(),
        nodes: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        mids: Mutex::new(HashMap::new()),
        observing: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        next_mid: AtomicU16::new(std::process::id() as u16),
        next_token: AtomicU64::new(u64::from(std::process::id()) << 16),
        node_port: args.node_port,
        max_nodes: args.max_nodes,
        max_resources: args.max_resources,
        counts: Counts::default(),
    });
    {
        let me = shared.clone();
        adaptor.serve("", move |ns, data, deadline| {
            let me = me.clone();
            async move {
                let base = me.adaptor.namespace().as_str().to_owned();
                let rel = ns
                    .as_str()
                    .strip_prefix(&base)
                    .map(|r| r.trim_start_matches('.'))
                    .unwrap_or_default()
                    .to_owned();
                me.command(&rel, data, deadline).await
            }
        })?;
    }
    tracing::info!(coap = %bound, ns = %args.ns, "listening for CoAP nodes");
    let receiver = {
        let me = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match me.socket.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let bytes = buf[..n].to_vec();
                        // Answering never waits for a PUT that is out: each datagram on its own.
                        let me = me.clone();
                        tokio::spawn(async move { me.handle(&bytes, from).await });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "CoAP receive error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
    };
    let max_time = Duration::from_secs_f64(args.max_time);
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut report = tokio::time::interval(Duration::from_secs_f64(args.report_interval.max(0.1)));
    report.tick().await;
    let signal = logging::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            s = &mut signal => {
                tracing::info!(signal = s.unwrap_or("?"), "stopping");
                break;
            }
            _ = sweep.tick() => shared.sweep(max_time),
            _ = report.tick() => shared.counts.log("coap report"),
        }
    }
    receiver.abort();
    shared.counts.log("coap adaptor stopped");
    adaptor.close(Duration::from_secs(1));
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    logging::main_with_runtime("thingsbus-coap-adaptor", run(args))
}
