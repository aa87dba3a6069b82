//! `thingsbus-mqtt-bridge`: every thing on the bus as retained MQTT topics (with Home Assistant
//! discovery), and MQTT topics as things.

use std::collections::{BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use thingsbus_adaptor::Adaptor;
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::flags::positive_secs;
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use thingsbus_adaptors_generic::mqtt::{self, Import, ImportSkip, Topics};
use thingsbus_client::{Client, EventKind, SubscribeOptions, Thing};

const EXAMPLES: &str = "\
Examples:
  # Every thing on the bus of this machine as retained topics thingsbus/<ns>/..., with Home
  # Assistant discovery (sensors and binary sensors appear by themselves):
  thingsbus-mqtt-bridge --mqtt mqtt://127.0.0.1:1883 --homeassistant --flatten

  # Also bring Zigbee2MQTT devices onto the bus as things home.z2m.<device>...:
  thingsbus-mqtt-bridge -z example.org --mqtt mqtt://mqtt.lan:1883 \\
      --import 'zigbee2mqtt/#=home.z2m' --username bridge --password-file /etc/thingsbus/mqtt.pw

Topics: <prefix>/<ns with dots as slashes> holds {\"data\": ..., \"ts\": ...}; with --flatten each
field of object data also has <topic>/<field>; <topic>/availability is online or offline (the
thing stopped reporting). Imported topic levels become namespace parts, lower-cased, other
characters as '_'; a level that does not start with a letter is skipped and counted. Topics under
the bridge's own prefixes are never imported, so nothing loops.";

/// Bridges thingsbus and MQTT in both directions: things become retained MQTT topics (with Home
/// Assistant discovery), and MQTT topics given with --import become things.
///
/// The bus is found as for the `thingsbus` tool (-z/--zone or -u/--url; with neither, this
/// machine). Both sides are reconnected by themselves; after the MQTT broker comes back, every
/// thing is published again (a broker without persistence forgets retained topics).
#[derive(Debug, Parser)]
#[command(name = "thingsbus-mqtt-bridge", version, after_long_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    bus: BusArgs,

    /// The MQTT broker, mqtt://HOST[:PORT] (port 1883 by default).
    #[arg(long, env = "THINGSBUS_MQTT", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,

    /// MQTT user name.
    #[arg(long, env = "THINGSBUS_MQTT_USERNAME")]
    username: Option<String>,

    /// MQTT password (prefer --password-file or the environment: a command line is visible to
    /// every user of the machine).
    #[arg(long, env = "THINGSBUS_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,

    /// A file holding the MQTT password.
    #[arg(long, value_name = "PATH", conflicts_with = "password")]
    password_file: Option<std::path::PathBuf>,

    /// MQTT client id (default thingsbus-bridge-<host>-<pid>).
    #[arg(long)]
    client_id: Option<String>,

    /// Topic prefix for things.
    #[arg(long, default_value = "thingsbus")]
    prefix: String,

    /// Also publish each field of object data on its own retained topic.
    #[arg(long)]
    flatten: bool,

    /// Announce numeric and boolean fields to Home Assistant (MQTT discovery).
    #[arg(long)]
    homeassistant: bool,

    /// Home Assistant's discovery prefix.
    #[arg(long, default_value = "homeassistant")]
    discovery_prefix: String,

    /// Bring MQTT topics onto the bus: FILTER=NS, e.g. 'zigbee2mqtt/#=home.z2m'. Repeatable.
    #[arg(long = "import", value_name = "FILTER=NS", value_parser = Import::parse)]
    imports: Vec<Import>,

    /// Turn messages on <prefix>/<ns>/set into commands to the thing <ns>; the outcome goes to
    /// <prefix>/<ns>/set/result as {"ok": true, "data": ...} or {"ok": false, "error": ...}.
    #[arg(long)]
    commands: bool,

    /// How long to wait for DNS and the bus, and for a command's reply, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    timeout: f64,

    /// Seconds between the info lines that count what was bridged.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    report_interval: f64,

    #[command(flatten)]
    log: LogArgs,
}

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    imported: AtomicU64,
    skipped_own: AtomicU64,
    skipped_bad_level: AtomicU64,
    skipped_not_text: AtomicU64,
    skipped_bad_namespace: AtomicU64,
    skipped_send: AtomicU64,
    mqtt_connects: AtomicU64,
    commands: AtomicU64,
}

impl Counts {
    fn log(&self, what: &str) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tracing::info!(
            published = l(&self.published),
            dropped = l(&self.dropped),
            expired = l(&self.expired),
            imported = l(&self.imported),
            skipped_own = l(&self.skipped_own),
            skipped_bad_level = l(&self.skipped_bad_level),
            skipped_not_text = l(&self.skipped_not_text),
            skipped_bad_namespace = l(&self.skipped_bad_namespace),
            skipped_send = l(&self.skipped_send),
            mqtt_connects = l(&self.mqtt_connects),
            commands = l(&self.commands),
            "{what}"
        );
    }
}

fn mqtt_options(args: &Args) -> anyhow::Result<MqttOptions> {
    let rest = args
        .mqtt
        .strip_prefix("mqtt://")
        .or_else(|| args.mqtt.strip_prefix("tcp://"))
        .with_context(|| format!("{:?}: expected mqtt://HOST[:PORT]", args.mqtt))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .with_context(|| format!("{:?}: the port must be a number", args.mqtt))?,
        ),
        _ => (rest, 1883),
    };
    if host.is_empty() {
        anyhow::bail!("{:?}: no host", args.mqtt);
    }
    let id = args.client_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("thingsbus-bridge-{}-{}", host.trim(), std::process::id())
    });
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(user) = &args.username {
        opts.set_credentials(user.clone(), password.unwrap_or_default());
    }
    Ok(opts)
}

/// Bus → MQTT.
struct Outbound {
    mqtt: AsyncClient,
    topics: Topics,
    flatten: bool,
    homeassistant: bool,
    counts: Arc<Counts>,
    online: HashMap<String, bool>,
    announced: HashMap<String, BTreeSet<String>>,
    /// Prefixes an adaptor serves (from the broker's thing): their booleans are switches.
    served: Vec<String>,
}

impl Outbound {
    fn publish(&self, topic: String, payload: String) {
        match self
            .mqtt
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
        {
            Ok(()) => self.counts.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counts.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn thing(&mut self, t: &Thing, client: &Client) {
        let ns = t.ns.as_str();
        if ns == "thingsbus.broker" && self.homeassistant {
            let served: Vec<String> = t.value()["commands"]["served"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if served != self.served {
                self.served = served;
                // Which things obey commands changed: announce everything again.
                self.republish_all(client);
            }
        }
        self.publish(self.topics.state(ns), mqtt::state_payload(&t.data, t.ts));
        let value = t.value();
        if self.flatten {
            if let Some(fields) = mqtt::fields(&value) {
                for (k, v) in fields {
                    self.publish(self.topics.field(ns, k), mqtt::field_payload(v));
                }
            }
        }
        if self.homeassistant {
            let known = self.announced.entry(ns.to_owned()).or_default();
            let names: BTreeSet<String> = match &value {
                serde_json::Value::Object(m) => m.keys().cloned().collect(),
                _ => BTreeSet::from(["value".to_owned()]),
            };
            if !names.is_subset(known) {
                known.extend(names);
                let commandable = self
                    .served
                    .iter()
                    .any(|p| thingsbus_protocol::namespace::is_within_str(ns, p));
                for (topic, config) in self.topics.discovery(ns, &value, commandable) {
                    self.publish(topic, config);
                }
            }
        }
        let online = !t.stale;
        if self.online.insert(ns.to_owned(), online) != Some(online) {
            let state = if online { "online" } else { "offline" };
            self.publish(self.topics.availability(ns), state.to_owned());
        }
    }

    fn expired(&mut self, ns: &str) {
        self.counts.expired.fetch_add(1, Ordering::Relaxed);
        self.online.insert(ns.to_owned(), false);
        self.publish(self.topics.availability(ns), "offline".to_owned());
    }

    /// After the MQTT broker came back: everything again (it may have lost retained topics).
    fn republish_all(&mut self, client: &Client) {
        self.online.clear();
        self.announced.clear();
        for t in client.walk("") {
            if t.ns.as_str() != "thingsbus.broker" {
                self.thing(&t, client);
            }
        }
    }
}

/// MQTT → bus.
fn import(
    imports: &[Import],
    topics: &Topics,
    adaptor: &Adaptor,
    counts: &Counts,
    topic: &str,
    payload: &[u8],
) {
    if topics.is_own(topic) {
        counts.skipped_own.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for i in imports {
        let Some(levels) = i.levels(topic) else {
            continue;
        };
        match i.convert(&levels, payload) {
            Ok((ns, data)) => match adaptor.send_to(ns.as_str(), &data, None) {
                Ok(()) => {
                    counts.imported.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "import not sent");
                    counts.skipped_send.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(skip) => {
                tracing::debug!(%topic, ?skip, "MQTT message not imported");
                let c = match skip {
                    ImportSkip::BadLevel(_) => &counts.skipped_bad_level,
                    ImportSkip::NotText => &counts.skipped_not_text,
                    ImportSkip::BadNamespace(_) => &counts.skipped_bad_namespace,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let topics = Topics {
        prefix: args.prefix.trim_end_matches('/').to_owned(),
        discovery_prefix: args.discovery_prefix.trim_end_matches('/').to_owned(),
    };
    let opts = mqtt_options(&args)?;
    let (mqtt, mut eventloop) = AsyncClient::new(opts, 10_000);

    let mut builder = args.bus.client(timeout);
    let mut sub = builder.subscribe(
        "",
        SubscribeOptions::new()
            .tree(true)
            .snapshots(true)
            .capacity(65_536),
    )?;
    let client = builder
        .connect()
        .await
        .with_context(|| format!("cannot reach the bus at {}", args.bus.describe()))?;
    let adaptor = if args.imports.is_empty() {
        None
    } else {
        Some(
            args.bus
                .adaptor("", false, timeout)?
                .connect()
                .await
                .with_context(|| format!("cannot publish to the bus at {}", args.bus.describe()))?,
        )
    };
    tracing::info!(bus = %args.bus.describe(), mqtt = %args.mqtt, imports = args.imports.len(), "bridging");

    let counts = Arc::new(Counts::default());
    let resync = Arc::new(AtomicBool::new(false));
    let mut outbound = Outbound {
        mqtt: mqtt.clone(),
        topics: topics.clone(),
        flatten: args.flatten,
        homeassistant: args.homeassistant,
        counts: counts.clone(),
        online: HashMap::new(),
        announced: HashMap::new(),
        served: Vec::new(),
    };

    // The MQTT side: connection, reconnection, subscriptions, imports.
    let mqtt_task = {
        let counts = counts.clone();
        let resync = resync.clone();
        let imports = args.imports.clone();
        let mqtt = mqtt.clone();
        let commands = args.commands.then(|| client.clone());
        let set_filter = format!("{}/#", topics.prefix);
        tokio::spawn(async move {
            let mut connected_once = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        counts.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("connected to the MQTT broker");
                        let mut filters: Vec<String> =
                            imports.iter().map(|i| i.filter.clone()).collect();
                        if commands.is_some() {
                            filters.push(set_filter.clone());
                        }
                        for f in filters {
                            if let Err(e) = mqtt.try_subscribe(f.clone(), QoS::AtMostOnce) {
                                tracing::warn!(filter = %f, error = %e, "cannot subscribe");
                            }
                        }
                        if connected_once {
                            resync.store(true, Ordering::Relaxed);
                        }
                        connected_once = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // A bus thing that itself ends in `.set` shows up on the same topic:
                        // that is the bridge's own publication, not a command.
                        let target = topics.set_target(&p.topic).filter(|ns| {
                            commands
                                .as_ref()
                                .is_some_and(|c| !c.exists(&format!("{ns}.set")))
                        });
                        if let (Some(c), Some(ns)) = (&commands, target) {
                            counts.commands.fetch_add(1, Ordering::Relaxed);
                            let (c, mqtt) = (c.clone(), mqtt.clone());
                            let result_topic = format!("{}/result", p.topic);
                            let data = std::str::from_utf8(&p.payload)
                                .map_or(serde_json::Value::Null, mqtt::payload_value);
                            tokio::spawn(async move {
                                let outcome = match c.command(ns.as_str(), &data, timeout).await {
                                    Ok(reply) => serde_json::json!({"ok": true, "data": reply}),
                                    Err(e) => {
                                        serde_json::json!({"ok": false, "error": e.to_string()})
                                    }
                                };
                                let _ = mqtt
                                    .publish(
                                        result_topic,
                                        QoS::AtLeastOnce,
                                        false,
                                        outcome.to_string(),
                                    )
                                    .await;
                            });
                            continue;
                        }
                        if let Some(a) = &adaptor {
                            import(&imports, &topics, a, &counts, &p.topic, &p.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT connection lost; retrying in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    };

    let report_every = Duration::from_secs_f64(args.report_interval.max(0.1));
    let mut report = tokio::time::interval(report_every);
    report.tick().await;
    let mut resync_check = tokio::time::interval(Duration::from_millis(200));
    let signal = logging::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            s = &mut signal => {
                tracing::info!(signal = s.unwrap_or("?"), "stopping");
                break;
            }
            _ = report.tick() => counts.log("bridge report"),
            _ = resync_check.tick() => {
                if resync.swap(false, Ordering::Relaxed) {
                    tracing::info!("MQTT broker back: publishing every thing again");
                    outbound.republish_all(&client);
                }
            }
            e = sub.next() => match e {
                Some(Ok(e)) => match e.kind {
                    EventKind::Expired => outbound.expired(e.thing.ns.as_str()),
                    _ => outbound.thing(&e.thing, &client),
                },
                Some(Err(lagged)) => {
                    tracing::warn!(%lagged, "the MQTT side fell behind the bus; publishing everything again");
                    outbound.republish_all(&client);
                }
                None => break,
            },
        }
    }
    counts.log("bridge stopped");
    let _ = mqtt.disconnect().await;
    mqtt_task.abort();
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    logging::main_with_runtime("thingsbus-mqtt-bridge", run(args))
}
