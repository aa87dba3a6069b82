//! `thingsbus-coap-adaptor`'s gateway: constrained devices speaking pyaiot's CoAP node protocol
//! become things, and obey commands.
//!
//! - [`protocol`]: the node protocol's payloads and names (pure);
//! - [`exchange`]: retransmission of our requests and duplicate detection of theirs (pure);
//! - [`node`]: the nodes and what their changes publish (pure; [`crate::pyaiot::nodes`], shared
//!   with the other pyaiot gateways);
//! - [`gateway`]: all of it together, datagram in, actions out (pure);
//! - [`serve`]: the one task that owns the socket and the gateway and carries the actions out.

pub mod exchange;
pub mod gateway;
pub mod protocol;

pub use crate::pyaiot::nodes as node;
pub use protocol::*;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use thingsbus_adaptor::Adaptor;
use tokio::net::UdpSocket;

use gateway::{Action, Config, Gateway};

/// Runs the gateway on `socket`, publishing through `adaptor` (whose namespace is the nodes'
/// base) and serving commands below it, until `shutdown` resolves; logs the counts every
/// `report_every` and on the way out, then closes the adaptor.
///
/// # Errors
/// When the command handler cannot be registered with the adaptor.
pub async fn serve<S>(
    socket: UdpSocket,
    adaptor: Adaptor,
    config: Config,
    report_every: Duration,
    shutdown: S,
) -> anyhow::Result<()>
where
    S: Future<Output = std::io::Result<&'static str>>,
{
    let mut commands = crate::pyaiot::commands::accept(&adaptor, "CoAP gateway")?;
    let mut gateway = Gateway::new(config, std::process::id());
    let mut replies = std::collections::HashMap::new();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; 65_536];
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut report = tokio::time::interval(report_every);
    report.tick().await;
    tokio::pin!(shutdown);
    loop {
        let wake = gateway.next_wake();
        let actions = tokio::select! {
            s = &mut shutdown => {
                tracing::info!(signal = s.unwrap_or("?"), "stopping");
                break;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => gateway.datagram(&buf[..n], from, Instant::now(), crate::pyaiot::epoch(SystemTime::now())),
                Err(e) => {
                    tracing::debug!(error = %e, "CoAP receive error");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(c) = commands.recv() => {
                next_id += 1;
                let now = Instant::now();
                let deadline = c.deadline_at(now);
                replies.insert(next_id, c.reply);
                gateway.command(next_id, &c.rel, c.data, deadline, now)
            }
            () = sleep_until(wake) => gateway.tick(Instant::now()),
            _ = sweep.tick() => gateway.sweep(Instant::now()),
            _ = report.tick() => {
                gateway.counts().log("coap report");
                continue;
            }
        };
        for action in actions {
            match action {
                Action::Send { bytes, to } => send(&socket, &bytes, to).await,
                Action::Publish(u) => {
                    if let Err(e) = adaptor.send_to(&u.sub, &u.data, None) {
                        tracing::warn!(thing = %u.sub, error = %e, "update not sent");
                    }
                }
                Action::Reply { id, result } => {
                    if let Some(reply) = replies.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }
    gateway.counts().log("coap adaptor stopped");
    adaptor.close(Duration::from_secs(1));
    Ok(())
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, to).await {
        tracing::debug!(%to, error = %e, "CoAP send failed");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
