//! Whether the broker is alive and well, as `/healthz` tells it: each worker loop beats a
//! heartbeat every turn (they wake at least every 50 ms, the publish thread every second), a
//! loop that ends or panics while the broker runs is a failure that stops the broker, and a
//! part that cannot do its work (the journal on a full disk) reports a fault until it can.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A loop whose last beat is older than this is taken for wedged.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(5);

/// The broker's health, shared by every thread.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Each supervised loop by thread name, with its last beat (milliseconds after `started`).
    beats: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    /// Why the broker stopped by itself, once it did.
    failure: Mutex<Option<String>>,
    /// What cannot do its work now, by part.
    faults: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            beats: Mutex::default(),
            failure: Mutex::default(),
            faults: Mutex::default(),
        }
    }
}

/// One loop's heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    started: Instant,
    at: Arc<AtomicU64>,
}

impl Beat {
    /// The loop is turning.
    pub(crate) fn beat(&self) {
        self.at
            .store(millis(self.started.elapsed()), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Health {
    /// The heartbeat of the loop on thread `name`: registered (as beating now) the first time.
    pub(crate) fn beat(&self, name: &str) -> Beat {
        let mut beats = self.beats.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match beats.iter().find(|(n, _)| n == name) {
            Some((_, at)) => at.clone(),
            None => {
                let at = Arc::new(AtomicU64::new(millis(self.started.elapsed())));
                beats.push((name.to_owned(), at.clone()));
                at
            }
        };
        Beat {
            started: self.started,
            at,
        }
    }

    /// The broker stops because of `cause` (the first cause is kept).
    pub(crate) fn fail(&self, cause: String) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(cause);
    }

    /// Why the broker stopped by itself, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `part` cannot do its work (`Some(why)`), or can again (`None`).
    pub(crate) fn set_fault(&self, part: &'static str, why: Option<String>) {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        match why {
            Some(why) => faults.insert(part, why),
            None => faults.remove(part),
        };
    }

    /// What is wrong now, a line each; empty when the broker is healthy.
    pub fn problems(&self) -> Vec<String> {
        self.problems_at(self.started.elapsed(), STALE_AFTER)
    }

    fn problems_at(&self, now: Duration, stale_after: Duration) -> Vec<String> {
        let mut out: Vec<String> = self.failure().into_iter().collect();
        let now = millis(now);
        for (name, at) in self
            .beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let silent = now.saturating_sub(at.load(Ordering::Relaxed));
            if silent > millis(stale_after) {
                out.push(format!("{name} has not turned for {} ms", silent));
            }
        }
        for (part, why) in self
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            out.push(format!("{part}: {why}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_loop_a_failure_and_a_fault_each_make_a_problem() {
        let h = Health::default();
        let stale = Duration::from_secs(5);
        let a = h.beat("thingsbus-a");
        let _b = h.beat("thingsbus-b");
        assert!(h.problems_at(Duration::ZERO, stale).is_empty());
        // b never beats again; a does.
        std::thread::sleep(Duration::from_millis(20));
        a.beat();
        let later = h.started.elapsed() + stale;
        let problems = h.problems_at(later, stale);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("thingsbus-b has not turned"),
            "{problems:?}"
        );
        // The same name is the same heartbeat.
        h.beat("thingsbus-b").beat();
        assert!(h.problems_at(h.started.elapsed(), stale).is_empty());
        h.set_fault("journal", Some("no space left on device".into()));
        h.fail("thingsbus-c panicked: boom".into());
        h.fail("a second cause is not kept".into());
        assert_eq!(
            h.problems_at(h.started.elapsed(), stale),
            [
                "thingsbus-c panicked: boom".to_owned(),
                "journal: no space left on device".to_owned()
            ]
        );
        h.set_fault("journal", None);
        assert_eq!(h.problems_at(h.started.elapsed(), stale).len(), 1);
        assert_eq!(h.failure().as_deref(), Some("thingsbus-c panicked: boom"));
    }
}
