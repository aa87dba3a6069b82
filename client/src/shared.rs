//! The state the client's handle and its threads share: the mirror, the subscriptions, the
//! counters and whether the mirror is filled. Its own file, so that the handle (`client.rs`)
//! and the threads (`driver/`) both import it and neither imports the other.

use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::mirror::Mirror;
use crate::subscription::Slot;

/// Locks, ignoring poisoning (the data stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) updates: AtomicU64,
    pub(crate) snapshot_messages: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) bad_messages: AtomicU64,
    pub(crate) seq_gaps: AtomicU64,
    pub(crate) missed_updates: AtomicU64,
    pub(crate) seq_resets: AtomicU64,
    pub(crate) last_seq: AtomicU64,
    pub(crate) snapshot_replies: AtomicU64,
    pub(crate) failovers: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) mirror: Mirror,
    pub(crate) subs: Mutex<Vec<Slot>>,
    pub(crate) counters: Counters,
    pub(crate) filled: Mutex<bool>,
    pub(crate) filled_cv: Condvar,
    pub(crate) filled_notify: tokio::sync::Notify,
    /// The directory URL in use (it changes on fail-over).
    pub(crate) current: Mutex<String>,
    /// Subscriptions open (or recently closed): events are built only when there are some.
    pub(crate) subscribers: std::sync::atomic::AtomicUsize,
}
