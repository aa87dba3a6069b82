//! What pyaiot's three node gateways share: the CoAP adaptor ([`crate::coap`]), the MQTT
//! bridge's `--pyaiot-nodes` ([`crate::mqtt::pyaiot`]) and the WebSocket adaptor ([`crate::ws`])
//! turn a node's values and names into things the same way, and keep their nodes in the same
//! table, so a node's things look the same whichever way it joined.
//!
//! - [`value`]: value text → thing data, names → namespace parts, command data → text (pure);
//! - [`nodes`]: the nodes, alive or not, their resources, and what each change publishes (pure);
//! - [`commands`]: commands from the bus to the gateway's task, and those waiting for a node's
//!   report (pure).

pub mod commands;
pub mod nodes;
pub mod value;

/// `t` in seconds since 1970, as a node's `last_alive` shows it.
pub fn epoch(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
