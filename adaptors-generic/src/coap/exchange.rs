//! The message layer of RFC 7252, as plain state: one confirmable request of ours until it is
//! answered, refused or given up ([`Exchange`], §4.2), and the requests nodes sent us lately, so
//! a retransmission gets the same answer again instead of being handled twice ([`Dedup`], §4.5).
//! Pure: `now` comes in, what to do goes out.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 ACK_TIMEOUT: the first wait for an answer; it doubles after each try.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// RFC 7252 MAX_RETRANSMIT: tries after the first.
pub const MAX_RETRANSMIT: u32 = 4;
/// How long a request from a node is remembered for duplicate detection (EXCHANGE_LIFETIME is
/// 247 s; nodes retransmit within 45 s).
pub const DEDUP_FOR: Duration = Duration::from_secs(60);
/// Above this many remembered requests, the stale ones are forgotten.
/// Requests remembered at most: beyond it the oldest is forgotten even within [`DEDUP_FOR`].
pub const DEDUP_MAX: usize = 10_000;

/// Why an exchange ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Every try went unanswered.
    NoAnswer {
        /// How many times the request was sent.
        tries: u32,
    },
    /// The deadline came first.
    Late,
    /// The node answered with a reset.
    Reset,
}

impl Failure {
    /// The failure in words, naming the node: `no answer from 10.0.0.5 after 5 tries`.
    pub fn describe(self, node: impl fmt::Display) -> String {
        match self {
            Failure::NoAnswer { tries } => format!("no answer from {node} after {tries} tries"),
            Failure::Late => format!("no answer from {node} in time"),
            Failure::Reset => "the node reset the exchange".to_owned(),
        }
    }
}

/// What an exchange wants done after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Send the request (again) now.
    pub send: bool,
    /// The exchange is over, unanswered.
    pub end: Option<Failure>,
}

/// One confirmable request of ours: retransmitted after 2, 4, 8, 16 s until a response, a
/// reset, [`MAX_RETRANSMIT`] retransmissions or its deadline; an empty ACK stops the
/// retransmissions and the exchange waits for the separate response until the deadline.
#[derive(Debug, Clone)]
pub struct Exchange {
    deadline: Instant,
    wait: Duration,
    tries: u32,
    acked: bool,
    wake_at: Instant,
}

impl Exchange {
    /// Starts an exchange at `now`: the request is sent at once (`send` is always true); it
    /// ends at once if `deadline` has passed already.
    pub fn start(now: Instant, deadline: Instant) -> (Exchange, Step) {
        let mut x = Exchange {
            deadline,
            wait: ACK_TIMEOUT,
            tries: 1,
            acked: false,
            wake_at: now,
        };
        let end = x.schedule(now);
        (x, Step { send: true, end })
    }

    /// When [`Exchange::timer`] is due.
    pub fn wake_at(&self) -> Instant {
        self.wake_at
    }

    /// How many times the request was sent so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// The wait ran out: send again (not after an ACK), or give up.
    pub fn timer(&mut self, now: Instant) -> Step {
        if now < self.wake_at {
            return Step {
                send: false,
                end: None,
            };
        }
        self.wait *= 2;
        let mut send = false;
        if !self.acked {
            if self.tries > MAX_RETRANSMIT {
                return Step {
                    send: false,
                    end: Some(Failure::NoAnswer { tries: self.tries }),
                };
            }
            send = true;
            self.tries += 1;
        }
        Step {
            send,
            end: self.schedule(now),
        }
    }

    /// An empty ACK: the node has the request and answers later; no more retransmissions.
    pub fn acked(&mut self, now: Instant) -> Step {
        self.acked = true;
        Step {
            send: false,
            end: self.schedule(now),
        }
    }

    /// Sets the next wake-up, or says the deadline has passed.
    fn schedule(&mut self, now: Instant) -> Option<Failure> {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Some(Failure::Late);
        }
        self.wake_at = now
            + if self.acked {
                left
            } else {
                self.wait.min(left)
            };
        None
    }
}

/// The requests nodes sent lately (by source address and message id) with the bytes of our
/// answer: each forgotten [`DEDUP_FOR`] after it came, or sooner when [`DEDUP_MAX`] are held.
/// Forgetting is in arrival order, so it costs O(1) per request.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<(SocketAddr, u16), (Instant, Vec<u8>)>,
    /// Arrivals, oldest first (a request remembered again also stays at its older place, and
    /// is only forgotten there if it was not remembered since).
    order: std::collections::VecDeque<(Instant, SocketAddr, u16)>,
}

impl Dedup {
    /// Our earlier answer to the same request, if it came within [`DEDUP_FOR`].
    pub fn answered(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<&[u8]> {
        self.forget(now, DEDUP_MAX);
        self.seen
            .get(&(from, mid))
            .filter(|(at, _)| now.duration_since(*at) < DEDUP_FOR)
            .map(|(_, reply)| reply.as_slice())
    }

    /// Remembers the answer to a request.
    pub fn remember(&mut self, from: SocketAddr, mid: u16, now: Instant, reply: Vec<u8>) {
        self.forget(now, DEDUP_MAX - 1);
        self.seen.insert((from, mid), (now, reply));
        self.order.push_back((now, from, mid));
    }

    /// Forgets what is older than [`DEDUP_FOR`], and the oldest beyond `keep`.
    fn forget(&mut self, now: Instant, keep: usize) {
        while let Some(&(at, from, mid)) = self.order.front() {
            if now.duration_since(at) < DEDUP_FOR && self.seen.len() <= keep {
                break;
            }
            self.order.pop_front();
            if self
                .seen
                .get(&(from, mid))
                .is_some_and(|(held, _)| *held == at)
            {
                self.seen.remove(&(from, mid));
            }
        }
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn idle() -> Step {
        Step {
            send: false,
            end: None,
        }
    }

    fn resend() -> Step {
        Step {
            send: true,
            end: None,
        }
    }

    #[test]
    fn unanswered_requests_are_sent_five_times_with_doubling_waits_then_given_up() {
        let t0 = Instant::now();
        let (mut x, first) = Exchange::start(t0, t0 + 600 * S);
        assert_eq!(first, resend());
        let mut sent_at = vec![0];
        let mut at = t0;
        let end = loop {
            assert_eq!(x.timer(at), idle(), "nothing before the wake-up");
            at = x.wake_at();
            let step = x.timer(at);
            if let Some(end) = step.end {
                assert!(!step.send);
                break end;
            }
            assert!(step.send);
            sent_at.push(at.duration_since(t0).as_secs());
        };
        assert_eq!(sent_at, [0, 2, 6, 14, 30]);
        assert_eq!(at.duration_since(t0), 62 * S);
        assert_eq!(end, Failure::NoAnswer { tries: 5 });
        assert_eq!(
            end.describe("10.0.0.5"),
            "no answer from 10.0.0.5 after 5 tries"
        );
    }

    #[test]
    fn the_deadline_cuts_the_waits_short() {
        let t0 = Instant::now();
        let (mut x, _) = Exchange::start(t0, t0 + 3 * S);
        assert_eq!(x.wake_at(), t0 + 2 * S);
        assert_eq!(x.timer(t0 + 2 * S), resend());
        assert_eq!(
            x.wake_at(),
            t0 + 3 * S,
            "the wait of 4 s ends at the deadline"
        );
        let step = x.timer(t0 + 3 * S);
        // At the deadline the request goes out once more, then the exchange is over.
        assert_eq!(
            step,
            Step {
                send: true,
                end: Some(Failure::Late)
            }
        );
        assert_eq!(Failure::Late.describe("n"), "no answer from n in time");
    }

    #[test]
    fn a_deadline_already_past_ends_the_exchange_after_one_send() {
        let t0 = Instant::now();
        let (_, step) = Exchange::start(t0, t0);
        assert_eq!(
            step,
            Step {
                send: true,
                end: Some(Failure::Late)
            }
        );
    }

    #[test]
    fn an_ack_stops_retransmissions_and_waits_until_the_deadline() {
        let t0 = Instant::now();
        let (mut x, _) = Exchange::start(t0, t0 + 60 * S);
        assert_eq!(x.acked(t0 + S), idle());
        assert_eq!(x.wake_at(), t0 + 60 * S);
        assert_eq!(x.timer(t0 + 30 * S), idle());
        assert_eq!(
            x.timer(t0 + 60 * S),
            Step {
                send: false,
                end: Some(Failure::Late)
            }
        );
        assert_eq!(x.tries(), 1);
    }

    #[test]
    fn an_ack_after_the_deadline_ends_the_exchange() {
        let t0 = Instant::now();
        let (mut x, _) = Exchange::start(t0, t0 + S);
        assert_eq!(x.acked(t0 + S).end, Some(Failure::Late));
        assert_eq!(Failure::Reset.describe("n"), "the node reset the exchange");
    }

    #[test]
    fn a_repeated_request_gets_the_same_answer_within_the_dedup_window() {
        let t0 = Instant::now();
        let a: SocketAddr = "[::1]:5683".parse().unwrap();
        let b: SocketAddr = "[::1]:5684".parse().unwrap();
        let mut d = Dedup::default();
        assert_eq!(d.answered(a, 7, t0), None);
        d.remember(a, 7, t0, vec![1, 2]);
        assert_eq!(d.answered(a, 7, t0 + S), Some(&[1u8, 2][..]));
        assert_eq!(d.answered(a, 8, t0 + S), None, "another message id");
        assert_eq!(d.answered(b, 7, t0 + S), None, "another source port");
        assert_eq!(d.answered(a, 7, t0 + DEDUP_FOR), None, "too old");
    }

    #[test]
    fn stale_requests_are_forgotten_and_at_most_dedup_max_are_held() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:5683".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5684".parse().unwrap();
        let mut d = Dedup::default();
        // A flood of fresh requests: held up to the cap, the oldest going first.
        for i in 0..(DEDUP_MAX as u32 + 500) {
            let (from, mid) = if i < 65_536 {
                (a, i as u16)
            } else {
                (b, i as u16)
            };
            d.remember(from, mid, t0, Vec::new());
        }
        assert_eq!(d.len(), DEDUP_MAX);
        assert!(d.answered(a, 0, t0).is_none(), "the oldest went first");
        assert!(d.answered(a, 600, t0).is_some());
        // Remembered again: kept at its new time, not forgotten at its old place.
        d.remember(a, 600, t0 + S, vec![1]);
        let later = t0 + DEDUP_FOR;
        assert_eq!(d.answered(a, 600, later), Some(&[1u8][..]));
        assert_eq!(d.len(), 1, "everything older than DEDUP_FOR is gone");
        assert!(d.order.len() <= 2);
        assert!(!d.is_empty());
    }
}
