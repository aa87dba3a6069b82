//! Commands between brokers, over NATS core request/reply (no JetStream: a command is never
//! stored or repeated).
//!
//! Subjects, under `thingsbus.<bucket>`:
//! - `.routes`: every broker announces what it serves, `{"node": "a", "serve": [["shop.led",
//!   1764400000.5], ...]}` (prefix, epoch second of its registration), at once when that changes
//!   and every few seconds; an empty list when it stops. Announcements lapse after
//!   [`REMOTE_ROUTE_TTL`](crate::commands::REMOTE_ROUTE_TTL).
//! - `.hello`: a broker that (re)connects asks the others to announce at once.
//! - `.cmd.<node>`: requests to one broker; the payload is the command as the broker sends it to
//!   an adaptor (its own `id`, a `deadline`), the reply is the `command_reply`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use thingsbus_protocol::Namespace;

use crate::commands::{FromRelay, RelayLink, ToRelay, ANNOUNCE_EVERY};
use crate::mailbox::Post;
use crate::stats;

/// The relay's ends: commands from the command thread, and back to it (waking it up).
pub(crate) struct RelayEnds {
    pub(crate) from_commands: tokio::sync::mpsc::Receiver<ToRelay>,
    pub(crate) to_commands: Post<FromRelay>,
}

/// With `--cluster`, the two ends of the relay: the command thread's and the relay's own.
pub(crate) fn link(
    ctx: &zmq::Context,
    config: &crate::Config,
) -> Result<(Option<RelayLink>, Option<RelayEnds>), crate::Error> {
    if config.cluster.is_none() {
        return Ok((None, None));
    }
    let (to_tx, to_rx) = tokio::sync::mpsc::channel(4096);
    let (from_post, from) = crate::mailbox::mailbox(ctx, "relay", 4096)?;
    Ok((
        Some(RelayLink { to: to_tx, from }),
        Some(RelayEnds {
            from_commands: to_rx,
            to_commands: from_post,
        }),
    ))
}

/// Routes one announcement may carry at most; more are refused (the command thread holds at
/// most this many per broker too).
pub(crate) const MAX_ROUTES_PER_NODE: usize = 256;

/// What the relay believes of other brokers' announcements.
#[derive(Debug, Clone)]
pub(crate) struct RoutePolicy {
    /// The brokers whose announcements are accepted (`--cluster-accept-nodes`); `None`: all.
    pub(crate) accept_nodes: Option<Vec<String>>,
    /// How far a registration time may be ahead of our clock (`--max-clock-skew`).
    pub(crate) max_clock_skew: Duration,
}

/// What becomes of one announcement.
#[derive(Debug, PartialEq)]
enum Admit {
    /// This broker's own, come back.
    Own,
    /// From a broker not in the accept list: ignored (and counted).
    NotAccepted(String),
    /// The routes that can be believed, and how many were refused.
    Routes {
        node: String,
        served: Vec<(Namespace, f64)>,
        refused: usize,
    },
}

/// Decides what of `a` to believe at `now` (epoch seconds): nothing from this broker itself
/// or from one outside the accept list; of the rest, at most [`MAX_ROUTES_PER_NODE`] routes
/// with a valid prefix and a registration time that is finite and not beyond `now` plus the
/// configured `--max-clock-skew` (a time from the future would make that broker's route win
/// the recency rule until then). Such a route is refused rather than clamped to `now`: its
/// broker announces it again every few seconds, and a clock that far off is worth seeing in the
/// counters.
fn admit(a: Announcement, own: &str, policy: &RoutePolicy, now: f64) -> Admit {
    if a.node == own {
        return Admit::Own;
    }
    if policy
        .accept_nodes
        .as_ref()
        .is_some_and(|nodes| !nodes.contains(&a.node))
    {
        return Admit::NotAccepted(a.node);
    }
    let latest = now + policy.max_clock_skew.as_secs_f64();
    let offered = a.serve.len();
    let served: Vec<(Namespace, f64)> = a
        .serve
        .into_iter()
        .filter(|(_, since)| since.is_finite() && *since <= latest)
        .filter_map(|(p, since)| Namespace::new(&p).ok().map(|p| (p, since)))
        .take(MAX_ROUTES_PER_NODE)
        .collect();
    Admit::Routes {
        node: a.node,
        refused: offered - served.len(),
        served,
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Announcement {
    node: String,
    serve: Vec<(String, f64)>,
}

/// A NATS subject token for a node name: itself when it is plain, else `x` and its hex.
fn token(node: &str) -> String {
    if !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        node.to_owned()
    } else {
        let hex: String = node.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

/// What the relay works with, besides its connection.
pub(crate) struct Relay {
    pub(crate) bucket: String,
    pub(crate) node: String,
    pub(crate) policy: RoutePolicy,
    pub(crate) ends: RelayEnds,
    /// The connection's events (bounded; see `cluster::start_relay`).
    pub(crate) events: tokio::sync::mpsc::Receiver<async_nats::Event>,
    pub(crate) stats: Arc<crate::Stats>,
    pub(crate) stop: Arc<AtomicBool>,
}

pub(crate) async fn run(client: async_nats::Client, relay: Relay) {
    if let Err(e) = serve(&client, relay).await {
        tracing::error!(error = %e, "the cluster's command relay stopped; commands between brokers are off");
    }
}

async fn serve(client: &async_nats::Client, relay: Relay) -> Result<(), String> {
    let Relay {
        bucket,
        node,
        policy,
        ends,
        mut events,
        stats,
        stop,
    } = relay;
    let (bucket, node) = (bucket.as_str(), node.as_str());
    let RelayEnds {
        mut from_commands,
        to_commands,
    } = ends;
    let to_commands = Arc::new(to_commands);
    let base = format!("thingsbus.{bucket}");
    let routes_subject = format!("{base}.routes");
    let hello_subject = format!("{base}.hello");
    let sub_err = |e: async_nats::SubscribeError| format!("cannot subscribe: {e}");
    let mut routes = client
        .subscribe(routes_subject.clone())
        .await
        .map_err(sub_err)?;
    let mut hello = client
        .subscribe(hello_subject.clone())
        .await
        .map_err(sub_err)?;
    let mut commands = client
        .subscribe(format!("{base}.cmd.{}", token(node)))
        .await
        .map_err(sub_err)?;
    let deliver = {
        let to_commands = to_commands.clone();
        move |m: FromRelay| {
            // The command thread's queue is bounded: when it is full the message is dropped
            // (a route comes again with the next announcement; a command then times out).
            let _ = to_commands.try_send(m);
        }
    };
    let mut served: Vec<(String, f64)> = Vec::new();
    let announce = |served: &[(String, f64)]| {
        let a = Announcement {
            node: node.to_owned(),
            serve: served.to_vec(),
        };
        let body = serde_json::to_vec(&a).unwrap_or_default();
        let client = client.clone();
        let subject = routes_subject.clone();
        async move {
            let _ = client.publish(subject, body.into()).await;
        }
    };
    let _ = client
        .publish(hello_subject.clone(), node.to_owned().into())
        .await;
    let mut every = tokio::time::interval(ANNOUNCE_EVERY);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let withdraw = || async {
        // Others stop sending here at once.
        announce(&[]).await;
        let _ = client.flush().await;
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            withdraw().await;
            return Ok(());
        }
        tokio::select! {
            m = from_commands.recv() => match m {
                // The command thread has stopped.
                None => {
                    withdraw().await;
                    return Ok(());
                }
                Some(ToRelay::Routes(now_served)) => {
                    served = now_served;
                    announce(&served).await;
                }
                Some(ToRelay::Answer { reply_to, message }) => {
                    let _ = client.publish(reply_to, message.into()).await;
                }
                Some(ToRelay::Forward { node: to, broker_id, message, timeout }) => {
                    let client = client.clone();
                    let subject = format!("{base}.cmd.{}", token(&to));
                    let deliver = deliver.clone();
                    tokio::spawn(async move {
                        // A little past the deadline: the other broker answers `timeout` itself
                        // at the deadline, and this broker does too if that answer is lost.
                        let request = async_nats::Request::new()
                            .payload(message.into())
                            .timeout(Some(timeout + Duration::from_millis(500)));
                        let message = match client.send_request(subject, request).await {
                            Ok(reply) => Some(reply.payload.to_vec()),
                            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => return,
                            Err(e) => {
                                tracing::debug!(error = %e, node = %to, "command to another broker failed");
                                None
                            }
                        };
                        deliver(FromRelay::Reply { node: to, broker_id, message });
                    });
                }
            },
            Some(m) = routes.next() => {
                let Ok(a) = serde_json::from_slice::<Announcement>(&m.payload) else {
                    tracing::debug!("unreadable route announcement");
                    continue;
                };
                match admit(a, node, &policy, epoch_now()) {
                    Admit::Own => {}
                    Admit::NotAccepted(other) => {
                        stats::add(&stats.cluster.announcements_ignored, 1);
                        tracing::debug!(node = %other, "route announcement from a broker not in --cluster-accept-nodes, ignored");
                    }
                    Admit::Routes { node, served, refused } => {
                        stats::add(&stats.cluster.routes_refused, refused as u64);
                        deliver(FromRelay::Routes { node, served });
                    }
                }
            }
            Some(m) = hello.next() => {
                if m.payload != node.as_bytes() {
                    announce(&served).await;
                }
            }
            Some(m) = commands.next() => {
                if let Some(reply_to) = m.reply {
                    deliver(FromRelay::Command {
                        reply_to: reply_to.to_string(),
                        message: m.payload.to_vec(),
                    });
                }
            }
            Some(e) = events.recv() => {
                // Back after a disconnection: the others may have forgotten this broker.
                if matches!(e, async_nats::Event::Connected) {
                    let _ = client.publish(hello_subject.clone(), node.to_owned().into()).await;
                    announce(&served).await;
                }
            }
            _ = every.tick() => announce(&served).await,
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_764_400_000.0;

    fn policy(accept: Option<&[&str]>) -> RoutePolicy {
        RoutePolicy {
            accept_nodes: accept.map(|a| a.iter().map(|&n| n.to_owned()).collect()),
            max_clock_skew: Duration::from_secs(30),
        }
    }

    fn from(node: &str, serve: Vec<(&str, f64)>) -> Announcement {
        Announcement {
            node: node.into(),
            serve: serve.into_iter().map(|(p, t)| (p.to_owned(), t)).collect(),
        }
    }

    fn routes(admit: Admit) -> (Vec<String>, usize) {
        match admit {
            Admit::Routes {
                served, refused, ..
            } => (served.iter().map(|(p, _)| p.to_string()).collect(), refused),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_beyond_the_configured_skew_or_with_bad_prefixes_are_refused() {
        let a = from(
            "b",
            vec![
                ("shop.led", NOW - 5.0),
                ("shop.ahead", NOW + 29.0),
                // Within the default skew (300 s), beyond the configured one (30 s).
                ("shop.later", NOW + 60.0),
                ("shop.far", 1e300),
                ("shop.nan", f64::NAN),
                ("shop.inf", f64::INFINITY),
                ("Bad..prefix", NOW),
            ],
        );
        let (names, refused) = routes(admit(a, "a", &policy(None), NOW));
        assert_eq!(names, ["shop.led", "shop.ahead"]);
        assert_eq!(refused, 5);
    }

    #[test]
    fn one_broker_announces_a_bounded_number_of_routes() {
        let many: Vec<(String, f64)> = (0..MAX_ROUTES_PER_NODE + 10)
            .map(|i| (format!("p.n{i}"), NOW))
            .collect();
        let a = Announcement {
            node: "b".into(),
            serve: many,
        };
        let (names, refused) = routes(admit(a, "a", &policy(None), NOW));
        assert_eq!(names.len(), MAX_ROUTES_PER_NODE);
        assert_eq!(refused, 10);
    }

    #[test]
    fn only_accepted_brokers_are_believed_and_our_own_is_skipped() {
        let accept = policy(Some(&["b", "c"]));
        assert_eq!(
            admit(from("x", vec![("shop", NOW)]), "a", &accept, NOW),
            Admit::NotAccepted("x".into())
        );
        let (names, _) = routes(admit(from("c", vec![("shop", NOW)]), "a", &accept, NOW));
        assert_eq!(names, ["shop"]);
        assert_eq!(
            admit(from("a", vec![("shop", NOW)]), "a", &accept, NOW),
            Admit::Own
        );
        // Without a list, every other broker is believed.
        let (names, _) = routes(admit(
            from("x", vec![("shop", NOW)]),
            "a",
            &policy(None),
            NOW,
        ));
        assert_eq!(names, ["shop"]);
        // An empty list believes no one.
        assert!(matches!(
            admit(from("b", vec![("shop", NOW)]), "a", &policy(Some(&[])), NOW),
            Admit::NotAccepted(_)
        ));
    }

    #[test]
    fn node_names_become_subject_tokens() {
        assert_eq!(token("broker-1_a"), "broker-1_a");
        assert_eq!(token("host.example"), "x686f73742e6578616d706c65");
        assert_eq!(token(""), "x");
    }
}
