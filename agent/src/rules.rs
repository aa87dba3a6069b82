//! Rules: the pure state of one rule ([`RuleState`]: `for`, edges, hysteresis, rate limit) and
//! the evaluation of every rule against the client's mirror.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use thingsbus_adaptor::Adaptor;
use thingsbus_client::Client;

use crate::config::{Action, Rule, RuleKind};
use crate::expr::resolve;
use crate::health::Health;
use crate::web::Web;

/// What an evaluation asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do.
    Nothing,
    /// The rule became true: run `then`.
    Then,
    /// The rule became false: run `else`.
    Else,
    /// A derived value changed: publish it.
    Publish(Value),
    /// A firing was due but `min_interval` has not passed since the last one; it is tried again
    /// at a later evaluation.
    RateLimited,
}

/// One rule's memory between evaluations.
#[derive(Debug, Clone, Default)]
pub struct RuleState {
    /// True once `then` fired, until `else` fires.
    pub active: bool,
    since: Option<Instant>,
    last_fire: Option<Instant>,
    last_value: Option<Value>,
}

impl RuleState {
    fn may_fire(&self, min_interval: Duration, now: Instant) -> bool {
        self.last_fire
            .is_none_or(|t| now.saturating_duration_since(t) >= min_interval)
    }

    /// A `when` rule: `when` is the condition now, `until` the release condition (hysteresis)
    /// when the rule has one.
    pub fn condition(
        &mut self,
        when: bool,
        until: Option<bool>,
        hold: Duration,
        min_interval: Duration,
        now: Instant,
    ) -> Step {
        if !self.active {
            if !when {
                self.since = None;
                return Step::Nothing;
            }
            let since = *self.since.get_or_insert(now);
            if now.saturating_duration_since(since) < hold {
                return Step::Nothing;
            }
            if !self.may_fire(min_interval, now) {
                return Step::RateLimited;
            }
            self.active = true;
            self.last_fire = Some(now);
            Step::Then
        } else {
            let release = until.unwrap_or(!when);
            if !release {
                return Step::Nothing;
            }
            if !self.may_fire(min_interval, now) {
                return Step::RateLimited;
            }
            self.active = false;
            self.since = None;
            self.last_fire = Some(now);
            Step::Else
        }
    }

    /// A derived value: published when it differs from the last one published.
    pub fn derived(&mut self, value: Value, min_interval: Duration, now: Instant) -> Step {
        if self.last_value.as_ref() == Some(&value) {
            return Step::Nothing;
        }
        if !self.may_fire(min_interval, now) {
            return Step::RateLimited;
        }
        self.last_value = Some(value.clone());
        self.last_fire = Some(now);
        Step::Publish(value)
    }
}

/// The rules of a running agent and their states.
pub struct Engine {
    rules: Vec<(Rule, RuleState)>,
    client: Client,
    adaptor: Adaptor,
    health: Arc<Health>,
    web: Web,
}

impl Engine {
    /// An engine over `rules`.
    pub fn new(
        rules: Vec<Rule>,
        client: Client,
        adaptor: Adaptor,
        health: Arc<Health>,
        web: Web,
    ) -> Engine {
        for r in &rules {
            health.rule(&r.name, |_| {});
        }
        Engine {
            rules: rules
                .into_iter()
                .map(|r| (r, RuleState::default()))
                .collect(),
            client,
            adaptor,
            health,
            web,
        }
    }

    /// Evaluates every rule once and starts the actions due.
    pub fn evaluate(&mut self, now: Instant) {
        let client = self.client.clone();
        let lookup = |name: &str| {
            resolve(name, |ns| {
                client
                    .get(ns)
                    .filter(|t| !t.stale && &*t.data != "null")
                    .map(|t| t.value())
            })
        };
        for (rule, state) in &mut self.rules {
            let step = match &rule.kind {
                RuleKind::Condition {
                    when, until, hold, ..
                } => {
                    let w = when.eval_bool(lookup);
                    let u = match until {
                        Some(u) if state.active => Some(u.eval_bool(lookup)),
                        _ => None,
                    };
                    match (w, u.transpose()) {
                        (Ok(w), Ok(u)) => state.condition(w, u, *hold, rule.min_interval, now),
                        (Err(e), _) | (_, Err(e)) => {
                            self.health.rule_failed(&rule.name, &e);
                            continue;
                        }
                    }
                }
                RuleKind::Derived { value, .. } => match value.eval(lookup) {
                    Ok(v) => state.derived(v, rule.min_interval, now),
                    Err(e) => {
                        self.health.rule_failed(&rule.name, &e);
                        continue;
                    }
                },
            };
            let action = match (&step, &rule.kind) {
                (Step::Nothing, _) => continue,
                (Step::RateLimited, _) => {
                    self.health.rule(&rule.name, |h| h.rate_limited += 1);
                    continue;
                }
                (Step::Then, RuleKind::Condition { then, .. }) => then.clone(),
                (Step::Else, RuleKind::Condition { otherwise, .. }) => otherwise.clone(),
                (Step::Publish(v), RuleKind::Derived { ns, .. }) => {
                    if let Err(e) = self.adaptor.send_to(ns.as_str(), v, None) {
                        self.health
                            .rule_failed(&rule.name, &format!("publishing {ns}: {e}"));
                    }
                    None
                }
                _ => None,
            };
            let active = state.active;
            self.health.rule(&rule.name, |h| {
                h.fired += 1;
                h.active = active;
            });
            if let Some(action) = action {
                act(
                    &self.client,
                    &self.adaptor,
                    &self.health,
                    &self.web,
                    &rule.name,
                    action,
                    &lookup,
                );
            }
        }
    }
}

fn act(
    client: &Client,
    adaptor: &Adaptor,
    health: &Arc<Health>,
    web: &Web,
    name: &str,
    action: Action,
    lookup: &dyn Fn(&str) -> Option<Value>,
) {
    {
        let health = health.clone();
        let name = name.to_owned();
        match action {
            Action::Command { ns, data, timeout } => {
                let client = client.clone();
                tokio::spawn(async move {
                    match client.command(ns.as_str(), &data, timeout).await {
                        Ok(reply) => health.rule(&name, |h| h.last_outcome = Some(reply)),
                        Err(e) => health.rule_failed(&name, &format!("command to {ns}: {e}")),
                    }
                });
            }
            Action::Publish { ns, value } => match value.eval(lookup) {
                Ok(v) => {
                    if let Err(e) = adaptor.send_to(ns.as_str(), &v, None) {
                        health.rule_failed(&name, &format!("publishing {ns}: {e}"));
                    }
                }
                Err(e) => health.rule_failed(&name, &e),
            },
            Action::Webhook { url, data, timeout } => {
                let web = web.clone();
                tokio::task::spawn_blocking(move || match web.post_json(&url, &data, timeout) {
                    Ok((status, _)) => {
                        health.rule(&name, |h| h.last_outcome = Some(Value::from(status)));
                    }
                    Err(e) => health.rule_failed(&name, &e),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn fires_once_on_each_edge() {
        let t0 = Instant::now();
        let mut s = RuleState::default();
        assert_eq!(
            s.condition(true, None, Duration::ZERO, Duration::ZERO, t0),
            Step::Then
        );
        assert_eq!(
            s.condition(true, None, Duration::ZERO, Duration::ZERO, t0),
            Step::Nothing
        );
        assert_eq!(
            s.condition(false, None, Duration::ZERO, Duration::ZERO, t0),
            Step::Else
        );
        assert_eq!(
            s.condition(false, None, Duration::ZERO, Duration::ZERO, t0),
            Step::Nothing
        );
    }

    #[test]
    fn waits_for_its_duration_and_starts_again_when_broken() {
        let t0 = Instant::now();
        let mut s = RuleState::default();
        let hold = 3 * S;
        assert_eq!(
            s.condition(true, None, hold, Duration::ZERO, t0),
            Step::Nothing
        );
        assert_eq!(
            s.condition(true, None, hold, Duration::ZERO, t0 + 2 * S),
            Step::Nothing
        );
        assert_eq!(
            s.condition(false, None, hold, Duration::ZERO, t0 + 2 * S),
            Step::Nothing
        );
        assert_eq!(
            s.condition(true, None, hold, Duration::ZERO, t0 + 4 * S),
            Step::Nothing
        );
        assert_eq!(
            s.condition(true, None, hold, Duration::ZERO, t0 + 7 * S),
            Step::Then
        );
    }

    #[test]
    fn hysteresis_releases_on_until_only() {
        let t0 = Instant::now();
        let mut s = RuleState::default();
        let z = Duration::ZERO;
        assert_eq!(s.condition(true, None, z, z, t0), Step::Then);
        // `when` false but `until` not yet true: still active.
        assert_eq!(s.condition(false, Some(false), z, z, t0), Step::Nothing);
        assert_eq!(s.condition(false, Some(true), z, z, t0), Step::Else);
    }

    #[test]
    fn rate_limit_delays_a_firing() {
        let t0 = Instant::now();
        let mut s = RuleState::default();
        let z = Duration::ZERO;
        assert_eq!(s.condition(true, None, z, S, t0), Step::Then);
        assert_eq!(s.condition(false, None, z, S, t0), Step::RateLimited);
        assert!(s.active);
        assert_eq!(s.condition(false, None, z, S, t0 + S), Step::Else);
    }

    #[test]
    fn derived_values_publish_on_change_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut s = RuleState::default();
        assert_eq!(s.derived(json!(1), S, t0), Step::Publish(json!(1)));
        assert_eq!(s.derived(json!(1), S, t0 + 2 * S), Step::Nothing);
        assert_eq!(s.derived(json!(2), S, t0 + 2 * S), Step::Publish(json!(2)));
        assert_eq!(s.derived(json!(3), S, t0 + 2 * S), Step::RateLimited);
        assert_eq!(s.derived(json!(3), S, t0 + 3 * S), Step::Publish(json!(3)));
    }
}
