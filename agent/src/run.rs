//! A running agent: one adaptor (publishing and serving), one client (the mirror the rules read,
//! and their commands), and a task per poll, one for the rules and one for the health thing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use thingsbus_adaptor::Adaptor;
use thingsbus_client::{Client, SubscribeOptions};
use thingsbus_protocol::endpoint::port_plus;
use thingsbus_protocol::Namespace;
use tokio::task::JoinHandle;

use crate::config::{BrokerConfig, Config};
use crate::health::Health;
use crate::rules::Engine;
use crate::web::Web;

/// How often rules are evaluated when nothing changes on the bus (for `for` and rate limits).
const TICK: Duration = Duration::from_millis(100);
const LOCAL: &str = "tcp://127.0.0.1:7954";

fn adaptor(b: &BrokerConfig) -> anyhow::Result<thingsbus_adaptor::AdaptorBuilder> {
    let mut a = Adaptor::builder("");
    if let Some(n) = b.nameserver {
        a = a.nameserver(n);
    }
    if let Some(z) = &b.zone {
        return Ok(a.zone(z));
    }
    let url = b.url.as_deref().unwrap_or(LOCAL);
    let input = match &b.input_url {
        Some(u) => u.clone(),
        None => port_plus(url, 1)
            .with_context(|| format!("broker.url {url:?}: expected tcp://HOST:PORT"))?,
    };
    let command = match &b.command_url {
        Some(u) => u.clone(),
        None => port_plus(url, 3)
            .with_context(|| format!("broker.url {url:?}: expected tcp://HOST:PORT"))?,
    };
    Ok(a.url(&input).command_url(&command))
}

fn client(b: &BrokerConfig) -> thingsbus_client::ClientBuilder {
    let mut c = Client::builder();
    if let Some(n) = b.nameserver {
        c = c.nameserver(n);
    }
    if let Some(z) = &b.zone {
        return c.zone(z);
    }
    c = c.url(b.url.as_deref().unwrap_or(LOCAL));
    if let Some(s) = &b.snapshot_url {
        c = c.snapshot_url(s);
    }
    if let Some(u) = &b.command_url {
        c = c.command_url(u);
    }
    c
}

/// A running agent; [`Agent::stop`] ends it.
pub struct Agent {
    adaptor: Adaptor,
    tasks: Vec<JoinHandle<()>>,
    health: Arc<Health>,
}

impl Agent {
    /// Connects and starts every poll, served thing and rule of `config`.
    ///
    /// # Errors
    /// When the bus cannot be reached or a thing cannot be served.
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        let health = Arc::new(Health::default());
        let keys = config.broker.curve().map_err(anyhow::Error::msg)?;
        let mut adaptor = adaptor(&config.broker)?;
        let mut client = client(&config.broker);
        if let Some(keys) = keys {
            adaptor = adaptor.curve(keys.clone());
            client = client.curve(keys);
        }
        let adaptor = adaptor
            .connect()
            .await
            .context("connecting the adaptor to the broker")?;
        let client = client
            .connect()
            .await
            .context("connecting the client to the broker")?;
        let mut agent = Agent {
            adaptor: adaptor.clone(),
            tasks: Vec::new(),
            health: health.clone(),
        };
        let runtime = tokio::runtime::Handle::current();
        let web = Web::new(config.ca_file.as_deref()).map_err(anyhow::Error::msg)?;
        for s in &config.serves {
            crate::serve::install(
                &adaptor,
                &config.base,
                s,
                health.clone(),
                web.clone(),
                runtime.clone(),
            )
            .with_context(|| format!("serving {}.{} (line {})", config.base, s.ns, s.line))?;
        }
        for (i, p) in config.polls.iter().enumerate() {
            let seed =
                (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
            agent.tasks.push(tokio::spawn(crate::poll::run(
                p.clone(),
                config.base.clone(),
                adaptor.clone(),
                health.clone(),
                web.clone(),
                seed,
            )));
        }
        if !config.rules.is_empty() {
            let mut sub = client
                .subscribe("", SubscribeOptions::new().tree(true).snapshots(true))
                .context("subscribing to the bus")?;
            let mut engine = Engine::new(
                config.rules.clone(),
                client.clone(),
                adaptor.clone(),
                health.clone(),
                web.clone(),
            );
            agent.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        e = sub.next() => {
                            if e.is_none() {
                                break;
                            }
                            // Take what else is queued, then evaluate once.
                            while sub.try_next().is_some() {}
                        }
                        _ = tick.tick() => {}
                    }
                    engine.evaluate(Instant::now());
                }
            }));
        }
        let ns = config
            .base
            .join("agent")
            .unwrap_or_else(|_| Namespace::root());
        let every = config.health_every;
        let h = health.clone();
        let a = adaptor.clone();
        agent.tasks.push(tokio::spawn(async move {
            let mut last = Instant::now();
            let _ = a.send_to(ns.as_str(), &h.snapshot(), None);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if h.changed() || last.elapsed() >= every {
                    let _ = a.send_to(ns.as_str(), &h.snapshot(), None);
                    last = Instant::now();
                }
            }
        }));
        Ok(agent)
    }

    /// The health state.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Stops every task and closes the adaptor (its served things are released).
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.adaptor.close(Duration::from_secs(1));
    }
}
