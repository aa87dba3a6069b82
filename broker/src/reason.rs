//! Why the broker dropped an input message: the protocol's reasons (the message itself is
//! malformed, see [`Rejection`]) and the broker's own policy (who may publish, how fast, what
//! time it may claim). Each has a `snake_case` label, the key under which the broker's thing
//! and `/metrics` count it.

use std::fmt;

use thingsbus_protocol::{Refused, Rejection};

/// Why an input message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The message breaks the protocol.
    Malformed(Rejection),
    /// The source address is outside `--allow-input` (a UDP datagram, or a refused ZMQ
    /// connection).
    NotAllowed,
    /// The source is over its `--rate-limit`.
    RateLimited,
    /// The update's `ts` is further in the future than `--max-clock-skew` allows: the sender's
    /// clock is wrong, and such a value would win over every later one ("newest wins") and never
    /// expire.
    FutureTs,
    /// A new thing, and the broker holds `--max-things` already.
    TooManyThings,
    /// The update would take the values held beyond `--max-bytes`.
    TooManyBytes,
    /// The sender's key (or an anonymous sender) may not publish this namespace (`--auth-file`).
    NotPermitted,
    /// A signed datagram whose envelope, board, tag or freshness did not check out
    /// (`refused_by_key` says which).
    BadSignature,
}

impl Reason {
    /// The broker's own reasons, in a fixed order (after the protocol's when counted).
    pub const POLICY: &'static [Reason] = &[
        Reason::NotAllowed,
        Reason::RateLimited,
        Reason::FutureTs,
        Reason::TooManyThings,
        Reason::TooManyBytes,
        Reason::NotPermitted,
        Reason::BadSignature,
    ];

    /// A short `snake_case` label, used for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed(r) => r.as_str(),
            Reason::NotAllowed => "not_allowed",
            Reason::RateLimited => "rate_limited",
            Reason::FutureTs => "future_ts",
            Reason::TooManyThings => "too_many_things",
            Reason::TooManyBytes => "too_many_bytes",
            Reason::NotPermitted => "not_permitted",
            Reason::BadSignature => "bad_signature",
        }
    }

    /// Every reason: the protocol's, then the broker's.
    pub fn all() -> impl Iterator<Item = Reason> {
        Rejection::ALL
            .iter()
            .map(|r| Reason::Malformed(*r))
            .chain(Reason::POLICY.iter().copied())
    }

    /// The reason a directory refusal drops the input for; `None` for [`Refused::Older`],
    /// which is no fault of the input (newest `ts` wins, counted as the cluster's `older`).
    pub(crate) fn of_refusal(r: Refused) -> Option<Reason> {
        match r {
            Refused::Older => None,
            Refused::TooManyThings => Some(Reason::TooManyThings),
            Refused::TooManyBytes => Some(Reason::TooManyBytes),
        }
    }

    /// Its place in [`Reason::all`].
    pub(crate) fn index(self) -> usize {
        // Exhaustive on purpose: a new reason must be given its own place here and in
        // `POLICY` (a test checks they agree), or it would be counted as another.
        let policy = match self {
            Reason::Malformed(r) => {
                return Rejection::ALL.iter().position(|x| *x == r).unwrap_or(0)
            }
            Reason::NotAllowed => 0,
            Reason::RateLimited => 1,
            Reason::FutureTs => 2,
            Reason::TooManyThings => 3,
            Reason::TooManyBytes => 4,
            Reason::NotPermitted => 5,
            Reason::BadSignature => 6,
        };
        Rejection::ALL.len() + policy
    }
}

impl From<Rejection> for Reason {
    fn from(r: Rejection) -> Reason {
        Reason::Malformed(r)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed(r) => r.fmt(f),
            Reason::NotAllowed => f.write_str("source address outside --allow-input"),
            Reason::RateLimited => f.write_str("source over its --rate-limit"),
            Reason::FutureTs => f.write_str("ts further in the future than --max-clock-skew"),
            Reason::TooManyThings => f.write_str("a new thing beyond --max-things"),
            Reason::TooManyBytes => f.write_str("the values held would exceed --max-bytes"),
            Reason::NotPermitted => {
                f.write_str("namespace outside the sender's rights in --auth-file")
            }
            Reason::BadSignature => f.write_str(
                "signed datagram refused (malformed, unknown board, bad MAC or replayed)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_index_and_label() {
        let all: Vec<Reason> = Reason::all().collect();
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let labels: std::collections::HashSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len(), "two reasons share a label");
        assert!(all.len() <= 32, "the broker keeps 32 counters of reasons");
        assert_eq!(Reason::from(Rejection::TooLarge).as_str(), "too_large");
        for (i, r) in Reason::POLICY.iter().enumerate() {
            assert_eq!(r.index(), Rejection::ALL.len() + i, "{r:?} out of place");
        }
    }
}
