//! `thingsbus-agent`: a node's sensors, actions and rules from one config file.
//!
//! The agent reads `agent.toml` ([`config::Config`]): `[[poll]]` tables become things read from
//! files, programs and HTTP APIs, `[[serve]]` tables turn commands to things into programs run or
//! files written, and `[[rule]]` tables watch any things on the bus (through a client mirror)
//! and act. Its own health is the thing `<base>.agent`.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let config = thingsbus_agent::config::Config::load(std::path::Path::new("agent.toml"))?;
//! let agent = thingsbus_agent::run::Agent::start(config).await?;
//! # drop(agent); Ok(()) }
//! ```

pub mod config;
pub mod expr;
pub mod health;
pub mod pick;
pub mod poll;
pub mod rules;
pub mod run;
pub mod serve;
pub mod template;
pub mod web;
