//! `thingsbus-mqtt-bridge`: every thing on the bus as retained MQTT topics (with Home Assistant
//! discovery), and MQTT topics as things.
//!
//! - [`topics`]: topic names, payloads, discovery configs, import rules (pure);
//! - [`outbound`]: bus → MQTT, what each thing event publishes (pure);
//! - [`inbound`]: MQTT → bus, what each MQTT message becomes (pure);
//! - [`tls`]: `mqtts://`, the TLS configuration and what a failed handshake means;
//! - [`pyaiot`]: `--pyaiot-nodes`, pyaiot's MQTT gateway protocol (pure, and its task);
//! - [`run`]: the bus side owns the [`outbound::Outbound`] state; the MQTT side is one task
//!   that polls the connection and carries out [`inbound::Inbound`] decisions.

pub mod inbound;
pub mod outbound;
pub mod pyaiot;
pub mod tls;
pub mod topics;

pub use topics::*;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, EventKind, SubscribeOptions};
use tokio::sync::{mpsc, Notify};

use crate::bus::BusArgs;
use inbound::{Inbound, Routes};
use outbound::{Outbound, Publications, View};

crate::counters! {
    /// What the bridge counted, logged every `--report-interval` and on exit.
    pub struct BridgeCounts {
        published: "MQTT publications queued",
        dropped: "MQTT publications dropped (the client's queue was full)",
        expired: "things that left the live window",
        imported: "MQTT messages sent to the bus",
        skipped_own: "MQTT messages on the bridge's own topics, not imported",
        skipped_bad_level: "MQTT messages with a topic level that makes no namespace part",
        skipped_not_text: "MQTT messages whose payload is not UTF-8",
        skipped_bad_namespace: "MQTT messages whose namespace would be invalid",
        skipped_send: "imports the adaptor refused",
        mqtt_connects: "connections to the MQTT broker",
        commands: "set messages turned into commands",
        pyaiot_dropped: "node messages dropped: the --pyaiot-nodes gateway fell behind",
    }
}

/// Where the MQTT broker is and how to log in.
#[derive(Debug, Clone)]
pub struct Login {
    /// `mqtt://HOST[:PORT]`, or `mqtts://HOST[:PORT]` for TLS.
    pub url: String,
    /// With `mqtts://`: the CA file and the bridge's own certificate.
    pub tls: tls::TlsFiles,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// Client id (default `thingsbus-bridge-<host>-<pid>`).
    pub client_id: Option<String>,
}

/// What the bridge does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The MQTT broker.
    pub login: Login,
    /// Topics, imports and commands.
    pub routes: Routes,
    /// `--flatten`.
    pub flatten: bool,
    /// `--homeassistant`.
    pub homeassistant: bool,
    /// DNS, the bus and a command's reply.
    pub timeout: Duration,
    /// Between the counts lines.
    pub report_every: Duration,
    /// `--pyaiot-nodes`: pyaiot's MQTT nodes below a base namespace.
    pub pyaiot: Option<PyaiotNodes>,
}

/// `--pyaiot-nodes BASE` and its limits.
#[derive(Debug, Clone)]
pub struct PyaiotNodes {
    /// The nodes' base namespace (served for commands).
    pub base: String,
    /// The gateway's limits.
    pub config: pyaiot::Config,
}

/// Where the MQTT broker listens, from an `--mqtt` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port: 1883 by default, 8883 with TLS.
    pub port: u16,
    /// `mqtts://` (or `ssl://`, `tls://`): TLS.
    pub tls: bool,
}

/// `mqtt://HOST[:PORT]` (or `tcp://`; port 1883 by default) and `mqtts://HOST[:PORT]` (or
/// `ssl://`, `tls://`; port 8883 by default).
///
/// # Errors
/// Another scheme, no host, or a port that is not a number.
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let plain = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"));
    let tls = ["mqtts://", "ssl://", "tls://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme));
    let (rest, tls, default_port) = match (plain, tls) {
        (Some(rest), _) => (rest, false, 1883),
        (None, Some(rest)) => (rest, true, 8883),
        (None, None) => {
            anyhow::bail!("{url:?}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .with_context(|| format!("{url:?}: the port must be a number"))?,
        ),
        _ => (rest, default_port),
    };
    if host.is_empty() {
        anyhow::bail!("{url:?}: no host");
    }
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        tls,
    })
}

fn mqtt_options(login: &Login) -> anyhow::Result<MqttOptions> {
    let Endpoint { host, port, tls } = endpoint(&login.url)?;
    if !tls && login.tls.any() {
        anyhow::bail!(
            "--mqtt-ca-file, --mqtt-cert and --mqtt-key are for TLS: write the URL as mqtts://{host}:{port}"
        );
    }
    let id = login.client_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("thingsbus-bridge-{}-{}", host.trim(), std::process::id())
    });
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if tls {
        let config = tls::client_config(&login.tls)?;
        opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    let password = match (&login.password, &login.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    if let Some(user) = &login.username {
        opts.set_credentials(user.clone(), password.unwrap_or_default());
    }
    Ok(opts)
}

/// Bridges the bus found through `bus` and the MQTT broker until `shutdown` resolves. Both
/// sides reconnect by themselves; after the MQTT broker comes back every thing is published
/// again.
///
/// # Errors
/// Bad MQTT options, or a bus that cannot be reached at start.
pub async fn run<S>(bus: &BusArgs, options: Options, shutdown: S) -> anyhow::Result<()>
where
    S: Future<Output = std::io::Result<&'static str>>,
{
    let timeout = options.timeout;
    let (mqtt, eventloop) = AsyncClient::new(mqtt_options(&options.login)?, 10_000);
    let mut builder = bus.client(timeout);
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
        .with_context(|| format!("cannot reach the bus at {}", bus.describe()))?;
    let adaptor = if options.routes.imports.is_empty() {
        None
    } else {
        Some(
            bus.adaptor("", false, timeout)?
                .connect()
                .await
                .with_context(|| format!("cannot publish to the bus at {}", bus.describe()))?,
        )
    };
    let nodes = match &options.pyaiot {
        None => None,
        Some(p) => {
            let adaptor = bus
                .adaptor(&p.base, false, timeout)?
                .connect()
                .await
                .with_context(|| format!("cannot publish to the bus at {}", bus.describe()))?;
            let commands = crate::pyaiot::commands::accept(&adaptor, "pyaiot MQTT gateway")?;
            let (tx, rx) = mpsc::channel(1024);
            tracing::info!(base = %p.base, "pyaiot MQTT nodes: node/check, node/<id>/<resource>");
            let task = tokio::spawn(pyaiot::serve(
                pyaiot::Gateway::new(p.config.clone()),
                adaptor,
                mqtt.clone(),
                rx,
                commands,
                options.report_every,
            ));
            Some((tx, task))
        }
    };
    let (pyaiot_inbox, pyaiot_task) = nodes.unzip();
    tracing::info!(bus = %bus.describe(), mqtt = %options.login.url, imports = options.routes.imports.len(), "bridging");

    let counts = Arc::new(BridgeCounts::default());
    let resync = Arc::new(Notify::new());
    let mqtt_task = tokio::spawn(mqtt_side(MqttSide {
        eventloop,
        mqtt: mqtt.clone(),
        routes: options.routes.clone(),
        adaptor,
        client: client.clone(),
        counts: counts.clone(),
        resync: resync.clone(),
        timeout,
        pyaiot: pyaiot_inbox,
    }));

    let mut outbound = Outbound::new(
        options.routes.topics.clone(),
        options.flatten,
        options.homeassistant,
    );
    let mut out = Publications::new();
    let mut report = tokio::time::interval(options.report_every);
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            s = &mut shutdown => {
                tracing::info!(signal = s.unwrap_or("?"), "stopping");
                break;
            }
            _ = report.tick() => counts.log("bridge report"),
            () = resync.notified() => {
                tracing::info!("MQTT broker back: publishing every thing again");
                outbound.republish_all(client.walk("").iter().map(View::from), &mut out);
            }
            e = sub.next() => match e {
                Some(Ok(e)) => {
                    let t = View::from(&e.thing);
                    match e.kind {
                        EventKind::Expired => {
                            counts.expired.inc();
                            outbound.expired(t.ns, &mut out);
                        }
                        _ => {
                            if outbound.served_changed(t) {
                                outbound.republish_all(client.walk("").iter().map(View::from), &mut out);
                            }
                            outbound.thing(t, &mut out);
                        }
                    }
                }
                Some(Err(lagged)) => {
                    tracing::warn!(%lagged, "the MQTT side fell behind the bus; publishing everything again");
                    outbound.republish_all(client.walk("").iter().map(View::from), &mut out);
                }
                None => break,
            },
        }
        for (topic, payload) in out.drain(..) {
            match mqtt.try_publish(topic, QoS::AtLeastOnce, true, payload) {
                Ok(()) => counts.published.inc(),
                Err(_) => counts.dropped.inc(),
            }
        }
    }
    counts.log("bridge stopped");
    let _ = mqtt.disconnect().await;
    mqtt_task.abort();
    // The MQTT side held the gateway's inbox: with it gone, the gateway logs its counts and
    // stops.
    if let Some(task) = pyaiot_task {
        let _ = mqtt_task.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(())
}

/// The MQTT side's task: the connection, its subscriptions, and what arrives on them.
struct MqttSide {
    eventloop: EventLoop,
    mqtt: AsyncClient,
    routes: Routes,
    adaptor: Option<Adaptor>,
    client: Client,
    counts: Arc<BridgeCounts>,
    resync: Arc<Notify>,
    timeout: Duration,
    /// `--pyaiot-nodes`: where node messages go.
    pyaiot: Option<mpsc::Sender<(String, Vec<u8>)>>,
}

async fn mqtt_side(mut s: MqttSide) {
    let mut connected_once = false;
    let mut failures = Failures::default();
    loop {
        match s.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = Failures::default();
                s.counts.mqtt_connects.inc();
                tracing::info!("connected to the MQTT broker");
                for f in s.routes.filters() {
                    if let Err(e) = s.mqtt.try_subscribe(f.clone(), QoS::AtMostOnce) {
                        tracing::warn!(filter = %f, error = %e, "cannot subscribe");
                    }
                }
                if s.pyaiot.is_some() {
                    for f in pyaiot::FILTERS {
                        if let Err(e) = s.mqtt.try_subscribe(f, QoS::AtLeastOnce) {
                            tracing::warn!(filter = %f, error = %e, "cannot subscribe");
                        }
                    }
                }
                if connected_once {
                    s.resync.notify_one();
                }
                connected_once = true;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(inbox) = &s.pyaiot {
                    if p.topic.starts_with("node/")
                        && inbox
                            .try_send((p.topic.clone(), p.payload.to_vec()))
                            .is_err()
                    {
                        s.counts.pyaiot_dropped.inc();
                    }
                }
                let inbound = s
                    .routes
                    .route(&p.topic, &p.payload, |ns| s.client.exists(ns));
                carry_out(&s, &p.topic, inbound);
            }
            Ok(_) => {}
            Err(e) => {
                failures.report(&e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Connection errors as the user sees them: a TLS failure once as an error with what to do
/// about it, then again only when it changes or every minute; others as warnings.
#[derive(Default)]
struct Failures {
    last: Option<(String, std::time::Instant)>,
}

impl Failures {
    fn report(&mut self, e: &rumqttc::ConnectionError) {
        let text = e.to_string();
        let now = std::time::Instant::now();
        let repeat = self
            .last
            .as_ref()
            .is_some_and(|(t, at)| *t == text && now - *at < Duration::from_secs(60));
        match tls::hint(e) {
            Some(_) if repeat => tracing::debug!(error = %text, "MQTT TLS handshake failed again"),
            Some(hint) => tracing::error!(
                error = %text,
                "cannot connect to the MQTT broker over TLS: {hint}; retrying every second"
            ),
            None => tracing::warn!(error = %text, "MQTT connection lost; retrying in a second"),
        }
        if !repeat {
            self.last = Some((text, now));
        }
    }
}

fn carry_out(s: &MqttSide, topic: &str, inbound: Inbound) {
    let counts = &s.counts;
    match inbound {
        Inbound::Command {
            ns,
            data,
            result_topic,
        } => {
            counts.commands.inc();
            let (client, mqtt, timeout) = (s.client.clone(), s.mqtt.clone(), s.timeout);
            tokio::spawn(async move {
                let outcome = match client.command(ns.as_str(), &data, timeout).await {
                    Ok(reply) => serde_json::json!({"ok": true, "data": reply}),
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
                let _ = mqtt
                    .publish(result_topic, QoS::AtLeastOnce, false, outcome.to_string())
                    .await;
            });
        }
        Inbound::Import(ns, data) => {
            let Some(adaptor) = &s.adaptor else {
                return;
            };
            match adaptor.send_to(ns.as_str(), &data, None) {
                Ok(()) => counts.imported.inc(),
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "import not sent");
                    counts.skipped_send.inc();
                }
            }
        }
        Inbound::Skip(skip) => {
            tracing::debug!(%topic, ?skip, "MQTT message not imported");
            match skip {
                ImportSkip::BadLevel(_) => counts.skipped_bad_level.inc(),
                ImportSkip::NotText => counts.skipped_not_text.inc(),
                ImportSkip::BadNamespace(_) => counts.skipped_bad_namespace.inc(),
            }
        }
        Inbound::Own => counts.skipped_own.inc(),
        Inbound::Ignore => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_name_a_host_and_a_port() {
        let hp = |u: &str| {
            endpoint(u)
                .map(|e| (e.host, e.port, e.tls))
                .map_err(|e| e.to_string())
        };
        assert_eq!(hp("mqtt://h").unwrap(), ("h".to_owned(), 1883, false));
        assert_eq!(hp("tcp://h:1884/").unwrap(), ("h".to_owned(), 1884, false));
        assert_eq!(
            hp("mqtt://[::1]:1885").unwrap(),
            ("::1".to_owned(), 1885, false)
        );
        assert_eq!(hp("mqtts://h").unwrap(), ("h".to_owned(), 8883, true));
        assert_eq!(hp("ssl://h:8884").unwrap(), ("h".to_owned(), 8884, true));
        assert_eq!(
            hp("mqtts://[::1]:8885").unwrap(),
            ("::1".to_owned(), 8885, true)
        );
        assert!(hp("http://h")
            .unwrap_err()
            .contains("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"));
        assert!(hp("mqtt://h:x")
            .unwrap_err()
            .contains("the port must be a number"));
        assert!(hp("mqtt://").unwrap_err().contains("no host"));
        assert!(hp("mqtts://").unwrap_err().contains("no host"));
    }

    #[test]
    fn tls_files_with_a_plain_url_are_refused() {
        let login = Login {
            url: "mqtt://h".into(),
            tls: tls::TlsFiles {
                ca_file: Some("ca.pem".into()),
                ..tls::TlsFiles::default()
            },
            username: None,
            password: None,
            password_file: None,
            client_id: None,
        };
        let e = mqtt_options(&login).map(|_| ()).expect_err("refused");
        assert!(e.to_string().contains("mqtts://h:1883"), "{e}");
    }
}
