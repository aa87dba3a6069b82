//! Command-line tools for thingsbus, and the pieces they share.
//!
//! - `thingsbus-zmq-adaptor` bridges any ZMQ publisher of JSON objects into the bus, with the
//!   flags of the 0.2.x `generic_zmq_adaptor` ([`bridge`] holds its rules).
//! - `thingsbus` looks at and pokes the bus from a shell: `get`, `ls`, `watch`, `send`, `call`,
//!   `srv` ([`srv`] holds its doctor), and `history` from the broker's HTTP side ([`sparkline`]
//!   draws it).
//! - `thingsbus-coap-adaptor` brings CoAP nodes onto the bus ([`coap`]: the gateway).
//! - `thingsbus-mqtt-bridge` bridges the bus and MQTT both ways ([`mqtt`]: the bridge), and
//!   speaks pyaiot's MQTT node protocol with `--pyaiot-nodes` ([`mqtt::pyaiot`]).
//! - `thingsbus-ws-adaptor` brings pyaiot's WebSocket nodes onto the bus ([`ws`]: the gateway).
//! - The pyaiot gateways share how nodes become things ([`pyaiot`]).
//! - Their counts are declared once each with [`counters!`].
//!
//! ```no_run
//! use thingsbus_adaptors_generic::bridge::{Decision, Rules};
//!
//! let rules = Rules { nskey: Some("camname".into()), ..Rules::default() };
//! match rules.decide(br#"{"camname": "door", "luminance": 31.8}"#) {
//!     Decision::Forward(f) => assert_eq!(f.sub_ns, "door"),
//!     Decision::Skip(reason, detail) => eprintln!("skipped ({reason}): {detail}"),
//! }
//! ```

pub mod bridge;
pub mod bus;
pub mod coap;
pub mod counters;
pub mod flags;
pub mod listing;
pub mod logging;
pub mod mqtt;
pub mod probe;
pub mod pyaiot;
pub mod render;
pub mod sparkline;
pub mod srv;
pub mod ws;
