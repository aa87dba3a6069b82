//! The nodes a gateway knows, as plain state: who is alive, at which address, with which
//! resources, and what each change publishes. Pure: times come in as arguments. The CoAP
//! adaptor, the MQTT bridge's `--pyaiot-nodes` and the WebSocket adaptor keep their nodes here,
//! so a node's thing looks the same whichever gateway it came through.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::value::{node_part, resource_part};

/// Where a gateway reaches a node: an IP address (CoAP), a connection, or nothing beyond its
/// uid (MQTT).
pub trait Address: Clone + PartialEq + std::fmt::Debug {
    /// The address as the node's thing shows it (`"address"`), if it shows one.
    fn shown(&self) -> Option<String>;
}

impl Address for IpAddr {
    fn shown(&self) -> Option<String> {
        Some(self.to_canonical().to_string())
    }
}

/// MQTT nodes: reached through the MQTT broker by their uid alone.
impl Address for () {
    fn shown(&self) -> Option<String> {
        None
    }
}

/// A thing update to publish, below the gateway's base namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// `<node>` or `<node>.<resource>`.
    pub sub: String,
    /// The thing's data.
    pub data: Value,
}

/// One node.
#[derive(Debug, Clone)]
pub struct Node<A> {
    /// Its uid, as it says in its alives.
    pub uid: String,
    /// The uid as a namespace part.
    pub part: String,
    /// Where it is reached (CoAP: its IP address, at the node port, never at a message's
    /// source port).
    pub addr: A,
    /// Its last alive, seconds since 1970.
    pub last_alive: f64,
    /// Its last alive, for `--max-time`.
    pub last_alive_at: Instant,
    /// False once it was silent past `--max-time`.
    pub online: bool,
    /// Resource name → namespace part.
    pub resources: BTreeMap<String, String>,
}

impl<A: Address> Node<A> {
    /// The node's own thing: `uid`, `address` (where the gateway shows one), `online`,
    /// `last_alive` and `resources`.
    pub fn update(&self) -> Update {
        let resources: Vec<&String> = self.resources.keys().collect();
        let mut data = Map::new();
        data.insert("uid".into(), json!(self.uid));
        if let Some(a) = self.addr.shown() {
            data.insert("address".into(), json!(a));
        }
        data.insert("online".into(), json!(self.online));
        data.insert("last_alive".into(), json!(self.last_alive));
        data.insert("resources".into(), json!(resources));
        Update {
            sub: self.part.clone(),
            data: Value::Object(data),
        }
    }
}

/// What an alive did.
#[derive(Debug, Clone, PartialEq)]
pub enum Alive {
    /// A new node beyond `--max-nodes`: ignored.
    Refused,
    /// The node's thing changed; `discover` when its resources are to be (re)discovered: it is
    /// new, reset, or back from offline.
    Accepted {
        /// The node's thing.
        update: Update,
        /// Ask the node for its resources.
        discover: bool,
        /// The offline node forgotten to make room for a new one (`--max-nodes`), by uid.
        evicted: Option<String>,
    },
}

/// Every node, by uid, within the limits of the flags.
#[derive(Debug)]
pub struct Nodes<A> {
    nodes: HashMap<String, Node<A>>,
    max_nodes: usize,
    max_resources: usize,
}

impl<A: Address> Nodes<A> {
    /// No nodes yet; at most `max_nodes`, each with at most `max_resources`.
    pub fn new(max_nodes: usize, max_resources: usize) -> Nodes<A> {
        Nodes {
            nodes: HashMap::new(),
            max_nodes,
            max_resources,
        }
    }

    /// A node by uid.
    pub fn get(&self, uid: &str) -> Option<&Node<A>> {
        self.nodes.get(uid)
    }

    /// The resources of one node kept at most.
    pub fn max_resources(&self) -> usize {
        self.max_resources
    }

    /// An alive (`reset` after a reboot: its resources are forgotten) from `addr`, at `now`
    /// (`wall`: the same instant in seconds since 1970).
    pub fn alive(&mut self, uid: &str, reset: bool, addr: A, now: Instant, wall: f64) -> Alive {
        let known = self.nodes.contains_key(uid);
        let mut evicted = None;
        if !known && self.nodes.len() >= self.max_nodes {
            // Room is made by forgetting the node offline the longest; with every node online
            // (alive within --max-time), a new one waits.
            let Some(oldest) = self
                .nodes
                .values()
                .filter(|n| !n.online)
                .min_by_key(|n| n.last_alive_at)
                .map(|n| n.uid.clone())
            else {
                return Alive::Refused;
            };
            self.nodes.remove(&oldest);
            evicted = Some(oldest);
        }
        let node = self.nodes.entry(uid.to_owned()).or_insert_with(|| Node {
            part: node_part(uid),
            uid: uid.to_owned(),
            addr: addr.clone(),
            last_alive: wall,
            last_alive_at: now,
            online: false,
            resources: BTreeMap::new(),
        });
        let was_online = node.online;
        node.addr = addr;
        node.last_alive = wall;
        node.last_alive_at = now;
        node.online = true;
        if reset {
            node.resources.clear();
        }
        Alive::Accepted {
            update: node.update(),
            discover: !known || reset || !was_online,
            evicted,
        }
    }

    /// The uid of the node at `addr` (CoAP: its POSTs may come from any source port).
    pub fn uid_at(&self, addr: &A) -> Option<&str> {
        self.nodes
            .values()
            .find(|n| n.addr == *addr)
            .map(|n| n.uid.as_str())
    }

    /// A resource's value (text as the node sent it): the node's thing first when the resource
    /// is new, then the resource's. Nothing for an unknown node, or a new resource beyond
    /// `--max-resources`.
    pub fn value(&mut self, uid: &str, resource: &str, value: Value) -> Vec<Update> {
        let Some(node) = self.nodes.get_mut(uid) else {
            return Vec::new();
        };
        let known = node.resources.contains_key(resource);
        if !known && node.resources.len() >= self.max_resources {
            return Vec::new();
        }
        let part = node
            .resources
            .entry(resource.to_owned())
            .or_insert_with(|| resource_part(resource))
            .clone();
        let mut out = Vec::with_capacity(2);
        if !known {
            out.push(node.update());
        }
        out.push(Update {
            sub: format!("{}.{part}", node.part),
            data: value,
        });
        out
    }

    /// Marks the nodes silent for longer than `max_time` offline: their updated things.
    pub fn sweep(&mut self, now: Instant, max_time: Duration) -> Vec<Update> {
        let mut out = Vec::new();
        for n in self.nodes.values_mut() {
            if n.online && now.saturating_duration_since(n.last_alive_at) > max_time {
                n.online = false;
                tracing::info!(uid = %n.uid, "node silent past --max-time: offline");
                out.push(n.update());
            }
        }
        out
    }

    /// Marks one node offline at once (its connection closed): its updated thing, if it was
    /// online.
    pub fn offline(&mut self, uid: &str) -> Option<Update> {
        let n = self.nodes.get_mut(uid)?;
        if !n.online {
            return None;
        }
        n.online = false;
        Some(n.update())
    }

    /// The node and the resource name a command to `<node part>.<resource part>` goes to.
    pub fn find(&self, node_part: &str, resource_part: &str) -> Option<(&Node<A>, &str)> {
        self.nodes
            .values()
            .find(|n| n.part == node_part)
            .and_then(|n| {
                n.resources
                    .iter()
                    .find(|(_, p)| *p == resource_part)
                    .map(|(name, _)| (n, name.as_str()))
            })
    }

    /// The node address and resource name a command to `<node part>.<resource part>` goes to.
    pub fn target(&self, node_part: &str, resource_part: &str) -> Option<(A, String)> {
        self.find(node_part, resource_part)
            .map(|(n, name)| (n.addr.clone(), name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 6));

    fn accepted(a: Alive) -> (Update, bool) {
        match a {
            Alive::Accepted {
                update, discover, ..
            } => (update, discover),
            Alive::Refused => panic!("refused"),
        }
    }

    #[test]
    fn a_new_node_is_published_and_discovered_a_known_one_only_published() {
        let t0 = Instant::now();
        let mut n = Nodes::<IpAddr>::new(10, 10);
        let (u, discover) = accepted(n.alive("1234", false, IP, t0, 100.0));
        assert!(discover);
        assert_eq!(u.sub, "n1234");
        assert_eq!(
            u.data,
            json!({"uid": "1234", "address": "10.0.0.5", "online": true, "last_alive": 100.0, "resources": []})
        );
        let (u, discover) = accepted(n.alive("1234", false, OTHER, t0, 130.0));
        assert!(!discover, "known and online");
        assert_eq!(u.data["address"], "10.0.0.6", "the newest address wins");
        assert_eq!(n.uid_at(&OTHER), Some("1234"));
        assert_eq!(n.uid_at(&IP), None);
    }

    #[test]
    fn a_reset_forgets_the_resources_and_discovers_again() {
        let t0 = Instant::now();
        let mut n = Nodes::<IpAddr>::new(10, 10);
        n.alive("a", false, IP, t0, 1.0);
        n.value("a", "temp", json!(1));
        let (u, discover) = accepted(n.alive("a", true, IP, t0, 2.0));
        assert!(discover);
        assert_eq!(u.data["resources"], json!([]));
    }

    #[test]
    fn nodes_beyond_the_limit_are_refused_known_ones_still_heard() {
        let t0 = Instant::now();
        let mut n = Nodes::<IpAddr>::new(1, 10);
        accepted(n.alive("a", false, IP, t0, 1.0));
        assert_eq!(n.alive("b", false, OTHER, t0, 1.0), Alive::Refused);
        accepted(n.alive("a", false, IP, t0, 2.0));
    }

    #[test]
    fn a_full_table_forgets_the_node_offline_longest_for_a_new_one() {
        let t0 = Instant::now();
        let max = Duration::from_secs(120);
        let mut n = Nodes::<IpAddr>::new(3, 10);
        for (uid, at) in [("a", 0), ("b", 10), ("c", 20)] {
            accepted(n.alive(uid, false, IP, t0 + Duration::from_secs(at), 1.0));
        }
        // All online: the newcomer waits.
        assert_eq!(
            n.alive("d", false, OTHER, t0 + Duration::from_secs(30), 1.0),
            Alive::Refused
        );
        // a and b go offline (silent past --max-time); c stays online.
        let later = t0 + Duration::from_secs(135);
        accepted(n.alive("c", false, IP, later, 2.0));
        assert_eq!(n.sweep(later, max).len(), 2);
        match n.alive("d", false, OTHER, later, 3.0) {
            Alive::Accepted { evicted, .. } => assert_eq!(evicted.as_deref(), Some("a")),
            Alive::Refused => panic!("refused"),
        }
        assert!(n.get("a").is_none() && n.get("b").is_some() && n.get("d").is_some());
    }

    #[test]
    fn a_new_resource_republishes_the_node_then_its_value() {
        let t0 = Instant::now();
        let mut n = Nodes::<IpAddr>::new(10, 1);
        assert!(n.value("nobody", "temp", json!(1)).is_empty());
        n.alive("a", false, IP, t0, 1.0);
        let u = n.value("a", "Temp/C", json!(21));
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].data["resources"], json!(["Temp/C"]));
        assert_eq!(
            u[1],
            Update {
                sub: "a.temp-c".into(),
                data: json!(21)
            }
        );
        assert_eq!(
            n.value("a", "Temp/C", json!(22)).len(),
            1,
            "known resource: its value only"
        );
        assert!(
            n.value("a", "led", json!(1)).is_empty(),
            "beyond --max-resources"
        );
        assert_eq!(n.target("a", "temp-c"), Some((IP, "Temp/C".into())));
        assert_eq!(n.target("a", "led"), None);
        assert_eq!(n.target("b", "temp-c"), None);
        assert_eq!(n.max_resources(), 1);
    }

    #[test]
    fn silent_nodes_go_offline_once_and_an_alive_brings_them_back_with_discovery() {
        let t0 = Instant::now();
        let max = Duration::from_secs(120);
        let mut n = Nodes::<IpAddr>::new(10, 10);
        n.alive("a", false, IP, t0, 1.0);
        assert!(n.sweep(t0 + max, max).is_empty(), "not past --max-time yet");
        let off = n.sweep(t0 + max + Duration::from_millis(1), max);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].data["online"], false);
        assert!(n.sweep(t0 + 2 * max, max).is_empty(), "offline once");
        assert!(!n.get("a").is_some_and(|x| x.online));
        let (_, discover) = accepted(n.alive("a", false, IP, t0 + 2 * max, 9.0));
        assert!(discover, "back from offline");
    }

    #[test]
    fn a_node_without_an_address_shows_none() {
        let mut n = Nodes::<()>::new(10, 10);
        let (u, discover) = accepted(n.alive("mqtt_test_node", false, (), Instant::now(), 5.0));
        assert!(discover);
        assert_eq!(u.sub, "mqtt_test_node");
        assert_eq!(
            u.data,
            json!({"uid": "mqtt_test_node", "online": true, "last_alive": 5.0, "resources": []})
        );
        n.value("mqtt_test_node", "led", json!("0"));
        let (node, name) = n.find("mqtt_test_node", "led").expect("found");
        assert_eq!((node.uid.as_str(), name), ("mqtt_test_node", "led"));
    }

    #[test]
    fn a_closed_node_goes_offline_at_once_and_once() {
        let t0 = Instant::now();
        let mut n = Nodes::<IpAddr>::new(10, 10);
        assert!(n.offline("a").is_none(), "unknown");
        n.alive("a", false, IP, t0, 1.0);
        let u = n.offline("a").expect("was online");
        assert_eq!(u.data["online"], false);
        assert!(n.offline("a").is_none(), "already offline");
        let (_, discover) = accepted(n.alive("a", false, IP, t0, 2.0));
        assert!(discover, "back: discovered again");
    }
}
