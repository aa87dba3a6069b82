//! When the receive thread asks for a snapshot and when it leaves a broker, without sockets:
//! [`Requests`] keeps the snapshot request in flight, [`Link`] whether the broker is reachable.
//!
//! The rules:
//! - a resynchronisation (after a gap or a restart) asks at most once a second, and not while a
//!   request is unanswered;
//! - a request unanswered within the snapshot timeout is given up; if the broker was reachable
//!   all along, it has no snapshot endpoint (0.2.x) and is not asked again: the client waits for
//!   the periodic snapshot;
//! - a refusal ends the request (the periodic snapshot will do);
//! - with several brokers, one unreachable for the fail-over timeout is left for the next.

use std::time::{Duration, Instant};

/// Resynchronisations are asked for at most this often.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Pending {
    id: u64,
    sent: Instant,
    answered: bool,
}

/// The snapshot requests of one client.
#[derive(Debug)]
pub(crate) struct Requests {
    timeout: Duration,
    /// False once the broker left a request unanswered while reachable (a 0.2.x broker), or
    /// when there is no snapshot endpoint to ask.
    available: bool,
    pending: Option<Pending>,
    resync_wanted: bool,
    last_request: Option<Instant>,
    next_id: u64,
}

impl Requests {
    pub(crate) fn new(available: bool, timeout: Duration) -> Self {
        Requests {
            timeout,
            available,
            pending: None,
            resync_wanted: false,
            last_request: None,
            next_id: 1,
        }
    }

    /// A snapshot endpoint is (or is not) there to ask.
    pub(crate) fn set_available(&mut self, yes: bool) {
        self.available = yes;
    }

    /// The id of a request to send now; `None` when there is no endpoint to ask.
    pub(crate) fn next(&mut self) -> Option<u64> {
        if !self.available {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// The request `id` went out.
    pub(crate) fn sent(&mut self, id: u64, now: Instant) {
        self.pending = Some(Pending {
            id,
            sent: now,
            answered: false,
        });
        self.last_request = Some(now);
        self.resync_wanted = false;
    }

    /// The mirror needs a snapshot (a gap, a restart).
    pub(crate) fn want_resync(&mut self) {
        self.resync_wanted = true;
    }

    /// A reply chunk came, for the request with this id (as JSON text).
    pub(crate) fn chunk_for(&mut self, request: &str) {
        if let Some(p) = &mut self.pending {
            if request == p.id.to_string() {
                p.answered = true;
            }
        }
    }

    /// A reply ended: the request it answered is done.
    pub(crate) fn reply_complete(&mut self) {
        if self.pending.as_ref().is_some_and(|p| p.answered) {
            self.pending = None;
        }
    }

    /// The broker refused the request, or the client left the broker it went to.
    pub(crate) fn drop_pending(&mut self) {
        self.pending = None;
    }

    /// Gives up a request unanswered for too long; true when the broker was `connected` all
    /// along, which then counts as having no snapshot endpoint.
    pub(crate) fn expire(&mut self, now: Instant, connected: bool) -> bool {
        let Some(p) = &self.pending else { return false };
        if p.answered || now.duration_since(p.sent) <= self.timeout {
            return false;
        }
        self.pending = None;
        if connected {
            self.available = false;
        }
        connected
    }

    /// True when a resynchronisation should be asked for now.
    pub(crate) fn resync_due(&self, now: Instant) -> bool {
        self.resync_wanted
            && self.pending.is_none()
            && self.available
            && self
                .last_request
                .is_none_or(|t| now.duration_since(t) >= RESYNC_EVERY)
    }
}

/// Whether the current broker is reachable, and since when not.
#[derive(Debug)]
pub(crate) struct Link {
    connected: bool,
    /// Since when the current broker has been unreachable (or since the client started on it).
    unreachable_since: Option<Instant>,
}

impl Link {
    /// Not connected yet, counting from `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Link {
            connected: false,
            unreachable_since: Some(now),
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected
    }

    pub(crate) fn up(&mut self) {
        self.connected = true;
        self.unreachable_since = None;
    }

    pub(crate) fn down(&mut self, now: Instant) {
        self.connected = false;
        self.unreachable_since = Some(now);
    }

    /// True when the broker has been unreachable for longer than `timeout` and there is
    /// another (`brokers` in all) to move to.
    pub(crate) fn failover_due(&self, now: Instant, timeout: Duration, brokers: usize) -> bool {
        brokers > 1
            && self
                .unreachable_since
                .is_some_and(|since| now.duration_since(since) > timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn ids_count_up_and_none_without_an_endpoint() {
        let mut r = Requests::new(true, TIMEOUT);
        assert_eq!((r.next(), r.next()), (Some(1), Some(2)));
        let mut r = Requests::new(false, TIMEOUT);
        assert_eq!(r.next(), None);
        r.set_available(true);
        assert_eq!(r.next(), Some(1));
    }

    #[test]
    fn a_resync_waits_for_the_pending_request_and_a_second_since_the_last() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        assert!(!r.resync_due(t0), "nothing wanted");
        let id = r.next().unwrap();
        r.sent(id, t0);
        r.want_resync();
        assert!(!r.resync_due(secs(t0, 1.5)), "a request is pending");
        r.chunk_for("1");
        r.reply_complete();
        assert!(!r.resync_due(secs(t0, 0.5)), "asked less than a second ago");
        assert!(r.resync_due(secs(t0, 1.0)));
        // Sending clears the wish.
        let id = r.next().unwrap();
        r.sent(id, secs(t0, 1.0));
        r.reply_complete();
        assert!(
            !r.resync_due(secs(t0, 5.0)),
            "still pending: its chunk never came"
        );
        r.chunk_for("2");
        r.reply_complete();
        assert!(!r.resync_due(secs(t0, 5.0)), "nothing wanted since");
    }

    #[test]
    fn a_chunk_of_another_request_does_not_answer_this_one() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        for _ in 0..2 {
            let id = r.next().unwrap();
            r.sent(id, t0);
        }
        r.chunk_for("1");
        r.reply_complete();
        r.want_resync();
        assert!(!r.resync_due(secs(t0, 1.5)), "request 2 still pending");
        assert!(!r.expire(secs(t0, 2.0), true), "not yet");
        assert!(r.expire(secs(t0, 2.5), true));
    }

    #[test]
    fn an_answered_request_never_expires() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        let id = r.next().unwrap();
        r.sent(id, t0);
        r.chunk_for("1");
        assert!(!r.expire(secs(t0, 60.0), true), "a big reply may take long");
    }

    #[test]
    fn silence_while_connected_means_no_snapshot_endpoint() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        let id = r.next().unwrap();
        r.sent(id, t0);
        assert!(r.expire(secs(t0, 2.5), true));
        r.want_resync();
        assert!(!r.resync_due(secs(t0, 10.0)));
        assert_eq!(r.next(), None, "not asked again");
    }

    #[test]
    fn silence_while_unreachable_asks_again_later() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        let id = r.next().unwrap();
        r.sent(id, t0);
        r.want_resync();
        assert!(!r.expire(secs(t0, 2.5), false), "given up, endpoint kept");
        assert!(r.resync_due(secs(t0, 2.5)));
    }

    #[test]
    fn a_refusal_ends_the_request() {
        let t0 = Instant::now();
        let mut r = Requests::new(true, TIMEOUT);
        let id = r.next().unwrap();
        r.sent(id, t0);
        r.drop_pending();
        assert!(!r.expire(secs(t0, 10.0), true), "nothing to expire");
        r.want_resync();
        assert!(r.resync_due(secs(t0, 10.0)), "the endpoint is still there");
    }

    #[test]
    fn fail_over_after_the_timeout_only_with_another_broker() {
        let t0 = Instant::now();
        let mut l = Link::new(t0);
        assert!(!l.connected());
        let timeout = Duration::from_secs(3);
        assert!(!l.failover_due(secs(t0, 3.0), timeout, 2));
        assert!(l.failover_due(secs(t0, 3.5), timeout, 2), "never reached");
        assert!(!l.failover_due(secs(t0, 3.5), timeout, 1), "nowhere to go");
        l.up();
        assert!(l.connected());
        assert!(!l.failover_due(secs(t0, 100.0), timeout, 2));
        l.down(secs(t0, 100.0));
        assert!(!l.connected());
        assert!(!l.failover_due(secs(t0, 102.0), timeout, 2));
        assert!(l.failover_due(secs(t0, 103.5), timeout, 2));
    }
}
