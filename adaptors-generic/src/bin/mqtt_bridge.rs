//! `thingsbus-mqtt-bridge`: every thing on the bus as retained MQTT topics (with Home Assistant
//! discovery), and MQTT topics as things.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use thingsbus_adaptors_generic::bus::BusArgs;
use thingsbus_adaptors_generic::flags::{namespace, positive_secs};
use thingsbus_adaptors_generic::logging::{self, LogArgs};
use thingsbus_adaptors_generic::mqtt::{
    self, inbound::Routes, pyaiot, tls::TlsFiles, Import, Login, Options, PyaiotNodes, Topics,
};

const EXAMPLES: &str = "\
Examples:
  # Every thing on the bus of this machine as retained topics thingsbus/<ns>/..., with Home
  # Assistant discovery (sensors and binary sensors appear by themselves):
  thingsbus-mqtt-bridge --mqtt mqtt://127.0.0.1:1883 --homeassistant --flatten

  # Also bring Zigbee2MQTT devices onto the bus as things home.z2m.<device>...:
  thingsbus-mqtt-bridge -z example.org --mqtt mqtt://mqtt.lan:1883 \\
      --import 'zigbee2mqtt/#=home.z2m' --username bridge --password-file /etc/thingsbus/mqtt.pw

  # Over TLS, to a Mosquitto with require_certificate true:
  thingsbus-mqtt-bridge --mqtt mqtts://mqtt.lan:8883 --mqtt-ca-file /etc/thingsbus/mqtt-ca.pem \\
      --mqtt-cert /etc/thingsbus/bridge.pem --mqtt-key /etc/thingsbus/bridge.key

  # pyaiot's MQTT nodes (Pycom boards, pyaiot's mqtt-test-node.py) as things home.mqtt.<node>:
  thingsbus-mqtt-bridge --mqtt mqtt://127.0.0.1:1886 --pyaiot-nodes home.mqtt
  thingsbus call home.mqtt.mqtt_test_node.led '\"1\"'

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

    /// The MQTT broker, mqtt://HOST[:PORT] (port 1883 by default), or mqtts://HOST[:PORT] for
    /// TLS (port 8883 by default).
    #[arg(long, env = "THINGSBUS_MQTT", default_value = "mqtt://127.0.0.1:1883")]
    mqtt: String,

    /// With mqtts://: the certificate authorities (PEM) that signed the MQTT broker's
    /// certificate. Without it, the system's trusted authorities.
    #[arg(long, env = "THINGSBUS_MQTT_CA_FILE", value_name = "PEM")]
    mqtt_ca_file: Option<std::path::PathBuf>,

    /// With mqtts://: this bridge's certificate (PEM), for MQTT brokers that require one
    /// (Mosquitto's require_certificate). Needs --mqtt-key.
    #[arg(
        long,
        env = "THINGSBUS_MQTT_CERT",
        value_name = "PEM",
        requires = "mqtt_key"
    )]
    mqtt_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --mqtt-cert.
    #[arg(
        long,
        env = "THINGSBUS_MQTT_KEY",
        value_name = "PEM",
        requires = "mqtt_cert"
    )]
    mqtt_key: Option<std::path::PathBuf>,

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

    /// Speak pyaiot's MQTT gateway protocol to the nodes on this MQTT broker (node/check,
    /// gateway/<id>/discover, node/<id>/<resource>, gateway/<id>/<resource>/set); each node
    /// becomes the thing BASE.<node>, each resource BASE.<node>.<resource>, and commands to
    /// them are served.
    #[arg(long, value_name = "BASE", value_parser = namespace)]
    pyaiot_nodes: Option<String>,

    /// With --pyaiot-nodes: seconds without a node/check before a node is offline.
    #[arg(long, default_value_t = 120.0, value_parser = positive_secs, requires = "pyaiot_nodes")]
    max_time: f64,

    /// With --pyaiot-nodes: nodes kept at most; checks from more are ignored and counted.
    #[arg(long, default_value_t = 1000, requires = "pyaiot_nodes")]
    max_nodes: usize,

    /// With --pyaiot-nodes: resources kept per node at most.
    #[arg(long, default_value_t = 64, requires = "pyaiot_nodes")]
    max_resources: usize,

    /// With --pyaiot-nodes: the longest node message read, in bytes; longer ones are counted
    /// as malformed.
    #[arg(long, default_value_t = 65_536, requires = "pyaiot_nodes")]
    max_payload: usize,

    /// How long to wait for DNS and the bus, and for a command's reply, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    timeout: f64,

    /// Seconds between the info lines that count what was bridged.
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    report_interval: f64,

    #[command(flatten)]
    log: LogArgs,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let options = Options {
        login: Login {
            url: args.mqtt,
            tls: TlsFiles {
                ca_file: args.mqtt_ca_file,
                cert: args.mqtt_cert,
                key: args.mqtt_key,
            },
            username: args.username,
            password: args.password,
            password_file: args.password_file,
            client_id: args.client_id,
        },
        routes: Routes {
            topics: Topics {
                prefix: args.prefix.trim_end_matches('/').to_owned(),
                discovery_prefix: args.discovery_prefix.trim_end_matches('/').to_owned(),
            },
            imports: args.imports,
            commands: args.commands,
        },
        flatten: args.flatten,
        homeassistant: args.homeassistant,
        timeout: Duration::from_secs_f64(args.timeout),
        report_every: Duration::from_secs_f64(args.report_interval.max(0.1)),
        pyaiot: args.pyaiot_nodes.map(|base| PyaiotNodes {
            base,
            config: pyaiot::Config {
                max_nodes: args.max_nodes,
                max_resources: args.max_resources,
                max_time: Duration::from_secs_f64(args.max_time),
                max_payload: args.max_payload,
                max_waiting: 1024,
            },
        }),
    };
    mqtt::run(&args.bus, options, logging::shutdown_signal()).await
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init();
    logging::main_with_runtime("thingsbus-mqtt-bridge", run(args))
}
