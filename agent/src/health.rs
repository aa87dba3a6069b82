//! The agent's own thing, `<base>.agent`: polls ok and failing, commands served, rules fired,
//! and the last errors. Every part of the agent reports here; nothing fails in silence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

/// How many recent errors the thing keeps.
const LAST_ERRORS: usize = 10;

/// One poll's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollHealth {
    /// False while the source fails.
    pub ok: bool,
    /// Readings published.
    pub readings: u64,
    /// Failures in a row (0 when ok).
    pub failures: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One served thing's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServeHealth {
    /// Commands that ran and succeeded.
    pub ok: u64,
    /// Commands refused (bad data, busy) or failed (exit code, time-out).
    pub failed: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One rule's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleHealth {
    /// True while a `when` rule holds (after its `for`).
    pub active: bool,
    /// Times it fired (`then`, `else`, or a derived value published).
    pub fired: u64,
    /// Firings held back by `min_interval`.
    pub rate_limited: u64,
    /// Evaluations that failed (a missing thing, a wrong type).
    pub errors: u64,
    /// The last evaluation or action error, if any.
    pub last_error: Option<String>,
    /// What its last action answered.
    pub last_outcome: Option<Value>,
}

#[derive(Debug, Default, Serialize)]
struct State {
    polls_ok: usize,
    polls_failing: usize,
    polls_waiting: usize,
    polls: BTreeMap<String, PollHealth>,
    serves: BTreeMap<String, ServeHealth>,
    rules: BTreeMap<String, RuleHealth>,
    last_errors: VecDeque<String>,
    reloads: u64,
    reload_failures: u64,
    last_reload_error: Option<String>,
}

/// Shared by every task of a running agent.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
    changed: AtomicBool,
}

impl Health {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = f(&mut s);
        // A poll that has not read yet is neither: it is counted in `polls_waiting`.
        s.polls_failing = s.polls.values().filter(|p| p.failures > 0).count();
        s.polls_ok = s.polls.values().filter(|p| p.ok).count();
        s.polls_waiting = s.polls.len() - s.polls_failing - s.polls_ok;
        self.changed.store(true, Ordering::Relaxed);
        r
    }

    fn note(s: &mut State, what: String) {
        tracing::warn!("{what}");
        if s.last_errors.len() == LAST_ERRORS {
            s.last_errors.pop_front();
        }
        s.last_errors.push_back(what);
    }

    /// Changes a poll's entry.
    pub fn poll(&self, ns: &str, f: impl FnOnce(&mut PollHealth)) {
        self.with(|s| {
            let p = s.polls.entry(ns.to_owned()).or_default();
            f(p);
        });
    }

    /// A poll failed.
    pub fn poll_failed(&self, ns: &str, error: &str) {
        self.with(|s| {
            let p = s.polls.entry(ns.to_owned()).or_default();
            p.ok = false;
            p.failures += 1;
            p.last_error = Some(error.to_owned());
            Self::note(s, format!("poll {ns}: {error}"));
        });
    }

    /// A served command's outcome.
    pub fn served(&self, ns: &str, outcome: Result<(), &str>) {
        self.with(|s| {
            let e = s.serves.entry(ns.to_owned()).or_default();
            match outcome {
                Ok(()) => e.ok += 1,
                Err(err) => {
                    e.failed += 1;
                    e.last_error = Some(err.to_owned());
                    Self::note(s, format!("serve {ns}: {err}"));
                }
            }
        });
    }

    /// Changes a rule's entry.
    pub fn rule(&self, name: &str, f: impl FnOnce(&mut RuleHealth)) {
        self.with(|s| f(s.rules.entry(name.to_owned()).or_default()));
    }

    /// A rule failed to evaluate or act. Repeats of the same error are counted, not logged again.
    pub fn rule_failed(&self, name: &str, error: &str) {
        self.with(|s| {
            let r = s.rules.entry(name.to_owned()).or_default();
            r.errors += 1;
            let repeat = r.last_error.as_deref() == Some(error);
            r.last_error = Some(error.to_owned());
            if !repeat {
                Self::note(s, format!("rule {name}: {error}"));
            }
        });
    }

    /// The configuration was reloaded `ok` times and refused `failed` times (the last error).
    pub fn set_reloads(&self, ok: u64, failed: u64, last_error: Option<&str>) {
        self.with(|s| {
            s.reloads = ok;
            s.reload_failures = failed;
            s.last_reload_error = last_error.map(str::to_owned);
        });
    }

    /// The thing's value; clears the "changed" mark.
    pub fn snapshot(&self) -> Value {
        self.changed.store(false, Ordering::Relaxed);
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::to_value(&*s).unwrap_or(Value::Null)
    }

    /// True when something changed since the last snapshot.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_last_errors() {
        let h = Health::default();
        h.poll("a", |p| {
            p.ok = true;
            p.readings += 1;
        });
        h.poll_failed("b", "no such file");
        h.poll("c", |_| {});
        let v = h.snapshot();
        assert_eq!(v["polls_ok"], 1);
        assert_eq!(v["polls_failing"], 1);
        // Registered, not read yet: not failing.
        assert_eq!(v["polls_waiting"], 1);
        assert_eq!(v["polls"]["b"]["last_error"], "no such file");
        assert!(!h.changed());
        for i in 0..20 {
            h.rule_failed("r", &format!("e{i}"));
        }
        h.rule_failed("r", "e19");
        let v = h.snapshot();
        assert_eq!(v["last_errors"].as_array().map(Vec::len), Some(10));
        assert_eq!(v["rules"]["r"]["errors"], 21);
    }
}
