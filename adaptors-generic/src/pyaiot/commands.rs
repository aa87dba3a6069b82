//! Commands to pyaiot nodes: the adaptor's serve handler hands each one to the gateway's task
//! ([`accept`]), and the MQTT and WebSocket gateways, whose nodes answer a command only by
//! reporting the resource again, keep them [`Waiting`] for that report or their deadline.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use thingsbus_adaptor::Adaptor;
use tokio::sync::{mpsc, oneshot};

/// A command for a gateway's task, from the adaptor's serve handler.
#[derive(Debug)]
pub struct Command {
    /// `<node>.<resource>`, relative to the gateway's base namespace.
    pub rel: String,
    /// The command's data.
    pub data: Value,
    /// When the caller stops waiting.
    pub deadline: SystemTime,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Value, String>>,
}

impl Command {
    /// The deadline as an [`Instant`], a little before the caller's, so the reply is still
    /// wanted when it comes.
    pub fn deadline_at(&self, now: Instant) -> Instant {
        let left = self
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .saturating_sub(Duration::from_millis(100));
        now + left
    }
}

/// Serves every thing below `adaptor`'s namespace: each command arrives on the returned
/// channel (at most 64 queued; callers wait when it is full). `gateway` names the gateway in
/// the reply when its task has stopped.
///
/// # Errors
/// When the handler cannot be registered with the adaptor.
pub fn accept(adaptor: &Adaptor, gateway: &'static str) -> anyhow::Result<mpsc::Receiver<Command>> {
    let (tx, rx) = mpsc::channel::<Command>(64);
    let base = adaptor.namespace().as_str().to_owned();
    adaptor.serve("", move |ns, data, deadline| {
        let tx = tx.clone();
        let rel = ns
            .as_str()
            .strip_prefix(&base)
            .map(|r| r.trim_start_matches('.'))
            .unwrap_or_default()
            .to_owned();
        async move {
            let (reply, answer) = oneshot::channel();
            let stopped = || format!("the {gateway} stopped");
            tx.send(Command {
                rel,
                data,
                deadline,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
    })?;
    Ok(rx)
}

/// One command waiting for its node's next report of a resource.
#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    uid: String,
    resource: String,
    deadline: Instant,
}

/// Commands waiting for the next report of their resource, or their deadline. Pure.
#[derive(Debug)]
pub struct Waiting {
    entries: Vec<Entry>,
    max: usize,
}

/// The error of a command whose node did not report in time: the protocol's own `timeout`,
/// which clients show as such.
pub const TIMEOUT: &str = thingsbus_protocol::command::errors::TIMEOUT;

impl Waiting {
    /// Nothing waiting; at most `max` at once.
    pub fn new(max: usize) -> Waiting {
        Waiting {
            entries: Vec::new(),
            max,
        }
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Command `id` waits for `uid`'s next report of `resource` until `deadline`.
    ///
    /// # Errors
    /// When `max` commands already wait: the reply for the caller.
    pub fn add(
        &mut self,
        id: u64,
        uid: &str,
        resource: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        if self.entries.len() >= self.max {
            return Err(format!(
                "{} commands already wait for their nodes: try again later",
                self.max
            ));
        }
        self.entries.push(Entry {
            id,
            uid: uid.to_owned(),
            resource: resource.to_owned(),
            deadline,
        });
        Ok(())
    }

    /// `uid` reported `resource`: the commands it answers, by id.
    pub fn report(&mut self, uid: &str, resource: &str) -> Vec<u64> {
        self.take(|e| e.uid == uid && e.resource == resource)
    }

    /// The commands whose deadline has come, by id.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        self.take(|e| e.deadline <= now)
    }

    /// The commands waiting for `uid`, which is gone, by id.
    pub fn node_gone(&mut self, uid: &str) -> Vec<u64> {
        self.take(|e| e.uid == uid)
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.deadline).min()
    }

    fn take(&mut self, pick: impl Fn(&Entry) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        self.entries.retain(|e| {
            let picked = pick(e);
            if picked {
                out.push(e.id);
            }
            !picked
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_answers_every_command_waiting_for_it_and_only_those() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut w = Waiting::new(10);
        w.add(1, "a", "led", later).expect("room");
        w.add(2, "a", "led", later).expect("room");
        w.add(3, "a", "temp", later).expect("room");
        w.add(4, "b", "led", later).expect("room");
        assert_eq!(w.report("a", "led"), [1, 2]);
        assert!(w.report("a", "led").is_empty(), "answered once");
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn deadlines_expire_in_time_and_the_earliest_is_known() {
        let t0 = Instant::now();
        let mut w = Waiting::new(10);
        assert_eq!(w.next_deadline(), None);
        w.add(1, "a", "led", t0 + Duration::from_secs(2))
            .expect("room");
        w.add(2, "a", "led", t0 + Duration::from_secs(1))
            .expect("room");
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(w.expire(t0).is_empty());
        assert_eq!(w.expire(t0 + Duration::from_secs(1)), [2]);
        assert_eq!(w.expire(t0 + Duration::from_secs(3)), [1]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_table_refuses_and_a_gone_node_ends_its_commands() {
        let t0 = Instant::now();
        let mut w = Waiting::new(2);
        w.add(1, "a", "led", t0).expect("room");
        w.add(2, "b", "led", t0).expect("room");
        let e = w.add(3, "a", "x", t0).expect_err("full");
        assert!(e.contains("2 commands already wait"), "{e}");
        assert_eq!(w.node_gone("a"), [1]);
        w.add(3, "a", "x", t0).expect("room again");
    }
}
