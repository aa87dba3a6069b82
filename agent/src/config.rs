//! The agent's file (`agent.toml`): parsed once, checked whole, every error naming its line and
//! the fix. What comes out is ready to run: durations are `Duration`s, namespaces are
//! `Namespace`s, expressions are compiled.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thingsbus_protocol::Namespace;
use toml::Spanned;

use crate::expr::Expr;
use crate::pick::Pick;
use crate::template::Template;

/// Where the bus is: the keys the `thingsbus` tool takes as flags.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker's directory URL, e.g. `tcp://127.0.0.1:7954` (input is port + 1, snapshots
    /// + 2, commands + 3).
    pub url: Option<String>,
    /// A zone whose `_thingsbus._tcp` SRV record names the broker.
    pub zone: Option<String>,
    /// The input URL, when it is not the directory port + 1.
    pub input_url: Option<String>,
    /// The snapshot URL, when it is not the directory port + 2.
    pub snapshot_url: Option<String>,
    /// The command URL, when it is not the directory port + 3.
    pub command_url: Option<String>,
    /// A DNS server to ask for the SRV record, as IP:PORT.
    pub nameserver: Option<SocketAddr>,
    /// The broker's CURVE public key (40 Z85 characters), for a broker started with
    /// `--curve-secret-file`: everything then goes encrypted.
    pub server_key: Option<String>,
    /// A file with this agent's CURVE secret key (`thingsbus keygen --secret-file`); with
    /// `server_key` only. Without it, a new key pair for each run.
    pub key_file: Option<std::path::PathBuf>,
}

impl BrokerConfig {
    /// The CURVE keys the agent's adaptor and client use, when `server_key` is given.
    ///
    /// # Errors
    /// A message naming what is wrong: no CURVE in this build, a bad key, an unreadable file,
    /// a key file without a server key.
    pub fn curve(&self) -> Result<Option<thingsbus_protocol::transport::ClientKeys>, String> {
        match (&self.server_key, &self.key_file) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                Err("broker.key_file needs broker.server_key (the broker's public key)".into())
            }
            (Some(server), file) => {
                thingsbus_protocol::transport::ClientKeys::from_user(server, file.as_deref())
                    .map(Some)
                    .map_err(|e| format!("broker.server_key / broker.key_file: {e}"))
            }
        }
    }
}

/// What a poll reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// A number in a file, multiplied by `scale`.
    File {
        /// The file.
        path: PathBuf,
        /// The factor (1 when not given).
        scale: f64,
    },
    /// A program's standard output: JSON, else a number, else text.
    Command {
        /// Program and arguments, run without a shell.
        argv: Vec<String>,
    },
    /// An HTTP GET whose JSON reply is narrowed by `pick`.
    Http {
        /// The URL.
        url: String,
        /// The selection (jq), or the whole reply.
        pick: Option<Pick>,
    },
}

/// One `[[poll]]`.
#[derive(Debug, Clone)]
pub struct Poll {
    /// The thing, below the base.
    pub ns: Namespace,
    /// The interval between readings.
    pub every: Duration,
    /// Up to this fraction of `every` is added or taken at random from each wait.
    pub jitter: f64,
    /// How long a reading may take.
    pub timeout: Duration,
    /// What is read.
    pub source: Source,
    /// The line in the file, for messages.
    pub line: usize,
}

/// What a served command does.
#[derive(Debug, Clone)]
pub enum ServeAction {
    /// Runs a program: each argument a template filled from the command's data.
    Command(Vec<Template>),
    /// Writes the filled template to a file (a sysfs GPIO value, for example).
    File {
        /// The file.
        path: PathBuf,
        /// What is written.
        write: Template,
    },
    /// POSTs the command's data (JSON) to a URL; the reply's body is the command's reply.
    Http(String),
}

/// One `[[serve]]`.
#[derive(Debug, Clone)]
pub struct Serve {
    /// The thing (and its subtree), below the base.
    pub ns: Namespace,
    /// What a command does.
    pub action: ServeAction,
    /// How long the action may take.
    pub timeout: Duration,
    /// How many commands may run at once; more are refused as busy.
    pub concurrency: usize,
    /// The line in the file, for messages.
    pub line: usize,
}

/// What a rule does when it fires.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sends a command to a thing.
    Command {
        /// The thing (a full namespace).
        ns: Namespace,
        /// The command's data.
        data: serde_json::Value,
        /// How long to wait for the reply.
        timeout: Duration,
    },
    /// Publishes a thing.
    Publish {
        /// The thing (a full namespace).
        ns: Namespace,
        /// Its value: an expression over the bus.
        value: Expr,
    },
    /// POSTs JSON to a URL.
    Webhook {
        /// The URL.
        url: String,
        /// The body.
        data: serde_json::Value,
        /// How long the call may take.
        timeout: Duration,
    },
}

/// What a rule is.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per file, built once
pub enum RuleKind {
    /// `when` / `for` / `then` / `else`.
    Condition {
        /// When it holds.
        when: Expr,
        /// With hysteresis: the rule holds until this is true (instead of until `when` is false).
        until: Option<Expr>,
        /// How long `when` must hold before `then` fires.
        hold: Duration,
        /// Fired once when the rule becomes true.
        then: Option<Action>,
        /// Fired once when it becomes false again.
        otherwise: Option<Action>,
    },
    /// A derived thing: `publish` = `value`, published whenever the value changes.
    Derived {
        /// The thing (a full namespace).
        ns: Namespace,
        /// Its value.
        value: Expr,
    },
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name in the health thing (`name`, else `rule<line>`).
    pub name: String,
    /// What it is.
    pub kind: RuleKind,
    /// The least time between two firings (loops between rules cannot spin faster).
    pub min_interval: Duration,
    /// The line in the file, for messages.
    pub line: usize,
}

/// A whole, checked agent file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the bus is.
    pub broker: BrokerConfig,
    /// The base namespace of the node's things.
    pub base: Namespace,
    /// The polls.
    pub polls: Vec<Poll>,
    /// The served things.
    pub serves: Vec<Serve>,
    /// The rules.
    pub rules: Vec<Rule>,
    /// How often the health thing is published at least.
    pub health_every: Duration,
    /// PEM certificate authorities trusted for `https://` (polls, serves, webhooks), besides
    /// the system's: a home server's own CA or a self-signed certificate.
    pub ca_file: Option<PathBuf>,
}

/// An error in the file: where and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What was wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// All the errors of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// The file as written.

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    broker: Option<BrokerConfig>,
    base: S<String>,
    health_every: Option<S<String>>,
    ca_file: Option<S<String>>,
    #[serde(default)]
    poll: Vec<S<RawPoll>>,
    #[serde(default)]
    serve: Vec<S<RawServe>>,
    #[serde(default)]
    rule: Vec<S<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    ns: S<String>,
    every: S<String>,
    jitter: Option<S<f64>>,
    timeout: Option<S<String>>,
    file: Option<String>,
    scale: Option<S<f64>>,
    command: Option<Vec<String>>,
    http: Option<String>,
    pick: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    ns: S<String>,
    command: Option<S<Vec<String>>>,
    file: Option<String>,
    write: Option<S<String>>,
    http: Option<String>,
    timeout: Option<S<String>>,
    concurrency: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    when: Option<S<String>>,
    until: Option<S<String>>,
    #[serde(rename = "for")]
    hold: Option<S<String>>,
    then: Option<S<RawAction>>,
    #[serde(rename = "else")]
    otherwise: Option<S<RawAction>>,
    publish: Option<S<String>>,
    value: Option<S<String>>,
    min_interval: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    command: Option<String>,
    publish: Option<String>,
    value: Option<String>,
    webhook: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
    timeout: Option<String>,
}

/// Turns a byte offset into a 1-based line.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A duration as the file writes it: `500ms`, `1s`, `10m`, `2h`, or a number of seconds.
///
/// # Errors
/// A text saying what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale < 1e7 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "{s:?} is not a duration: write a positive number with a unit, e.g. \"500ms\", \"1s\", \"10m\", \"2h\""
        )),
    }
}

struct Checker<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        line_of(self.text, s.span().start)
    }

    fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: Some(line),
            message: message.into(),
        });
    }

    fn duration(&mut self, s: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                let l = self.line(s);
                self.error(l, format!("{key}: {e}"));
                None
            }
        }
    }

    fn opt_duration(
        &mut self,
        s: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        match s {
            Some(s) => self.duration(s, key).unwrap_or(default),
            None => default,
        }
    }

    /// A namespace below `base` (relative), or the full namespace with `absolute`.
    fn namespace(&mut self, s: &str, line: usize, key: &str) -> Option<Namespace> {
        match Namespace::new(s) {
            Ok(ns) if !ns.is_root() => Some(ns),
            Ok(_) => {
                self.error(
                    line,
                    format!("{key}: the namespace is empty: name a thing, e.g. \"fridge.temp\""),
                );
                None
            }
            Err(e) => {
                self.error(
                    line,
                    format!("{key}: {e}; each dot-separated part is a lower-case letter, then up to 63 of a-z, 0-9, _ and -"),
                );
                None
            }
        }
    }

    fn expr(&mut self, s: &Spanned<String>, key: &str) -> Option<Expr> {
        match Expr::compile(s.get_ref()) {
            Ok(e) => Some(e),
            Err(e) => {
                let l = self.line(s);
                self.error(l, format!("{key}: {e}"));
                None
            }
        }
    }

    fn action(&mut self, a: &Spanned<RawAction>, key: &str) -> Option<Action> {
        let line = self.line(a);
        let raw = a.get_ref();
        let timeout = match &raw.timeout {
            Some(t) => match parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.error(line, format!("{key}.timeout: {e}"));
                    return None;
                }
            },
            None => Duration::from_secs(5),
        };
        match (&raw.command, &raw.publish, &raw.webhook) {
            (Some(c), None, None) => {
                if raw.value.is_some() {
                    self.error(
                        line,
                        format!("{key}: `value` goes with `publish`; a command takes `data`"),
                    );
                }
                let ns = self.namespace(c, line, &format!("{key}.command"))?;
                Some(Action::Command {
                    ns,
                    data: raw.data.clone(),
                    timeout,
                })
            }
            (None, Some(p), None) => {
                let ns = self.namespace(p, line, &format!("{key}.publish"))?;
                let Some(v) = &raw.value else {
                    self.error(
                        line,
                        format!(
                            "{key}: `publish` needs `value`, an expression, e.g. value = \"true\""
                        ),
                    );
                    return None;
                };
                match Expr::compile(v) {
                    Ok(value) => Some(Action::Publish { ns, value }),
                    Err(e) => {
                        self.error(line, format!("{key}.value: {e}"));
                        None
                    }
                }
            }
            (None, None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.error(
                        line,
                        format!("{key}.webhook: {url:?} is not an http:// or https:// URL"),
                    );
                    return None;
                }
                Some(Action::Webhook {
                    url: url.clone(),
                    data: raw.data.clone(),
                    timeout,
                })
            }
            _ => {
                self.error(
                    line,
                    format!("{key}: give exactly one of `command` (a thing to command, with `data`), `publish` (with `value`) or `webhook` (a URL, with `data`)"),
                );
                None
            }
        }
    }
}

impl Config {
    /// Reads and checks a file.
    ///
    /// # Errors
    /// Every error found, each with its line.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Checks the text of a file.
    ///
    /// # Errors
    /// Every error found, each with its line.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![ConfigError {
                line,
                message: hint(e.message()),
            }])
        })?;
        let mut c = Checker {
            text,
            errors: Vec::new(),
        };
        let broker = raw.broker.unwrap_or_default();
        if broker.zone.is_some() && (broker.url.is_some() || broker.input_url.is_some()) {
            c.errors.push(ConfigError {
                line: Some(1),
                message: "broker: give either `zone` or `url`, not both".into(),
            });
        }
        if let Err(message) = broker.curve() {
            c.errors.push(ConfigError {
                line: Some(1),
                message,
            });
        }
        let base_line = c.line(&raw.base);
        let base = c.namespace(raw.base.get_ref(), base_line, "base");
        let health_every =
            c.opt_duration(&raw.health_every, "health_every", Duration::from_secs(10));

        let mut seen = BTreeSet::new();
        let mut polls = Vec::new();
        for p in &raw.poll {
            let line = c.line(p);
            let p = p.get_ref();
            let ns_line = c.line(&p.ns);
            let ns = c.namespace(p.ns.get_ref(), ns_line, "poll.ns");
            if let Some(ns) = &ns {
                if !seen.insert(ns.as_str().to_owned()) {
                    c.error(
                        ns_line,
                        format!("poll.ns: {ns} is polled twice: give each poll its own thing"),
                    );
                }
            }
            let every = c.duration(&p.every, "every");
            let timeout = c.opt_duration(&p.timeout, "timeout", Duration::from_secs(10));
            let jitter = match &p.jitter {
                Some(j) if !(0.0..=1.0).contains(j.get_ref()) => {
                    let l = c.line(j);
                    c.error(l, "jitter: a fraction of `every` between 0 and 1, e.g. 0.1");
                    0.0
                }
                Some(j) => *j.get_ref(),
                None => 0.1,
            };
            if p.scale.is_some() && p.file.is_none() {
                let l = p.scale.as_ref().map_or(line, |s| c.line(s));
                c.error(l, "scale: only a `file` poll is scaled; remove `scale`");
            }
            if p.pick.is_some() && p.http.is_none() {
                let l = p.pick.as_ref().map_or(line, |s| c.line(s));
                c.error(
                    l,
                    "pick: only an `http` poll has a JSON reply to pick from; remove `pick`",
                );
            }
            let source = match (&p.file, &p.command, &p.http) {
                (Some(f), None, None) => Some(Source::File {
                    path: PathBuf::from(f),
                    scale: p.scale.as_ref().map_or(1.0, |s| *s.get_ref()),
                }),
                (None, Some(argv), None) => {
                    if argv.is_empty() || argv[0].is_empty() {
                        c.error(
                            line,
                            "command: name the program first, e.g. command = [\"df\", \"/\"]",
                        );
                        None
                    } else {
                        Some(Source::Command { argv: argv.clone() })
                    }
                }
                (None, None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        c.error(
                            line,
                            format!("http: {url:?} is not an http:// or https:// URL"),
                        );
                    }
                    let pick = match &p.pick {
                        Some(s) => match Pick::compile(s.get_ref()) {
                            Ok(pk) => Some(pk),
                            Err(e) => {
                                let l = c.line(s);
                                c.error(l, format!("pick: {e}"));
                                None
                            }
                        },
                        None => None,
                    };
                    Some(Source::Http {
                        url: url.clone(),
                        pick,
                    })
                }
                _ => {
                    c.error(
                        line,
                        "poll: give exactly one source: `file`, `command` or `http`",
                    );
                    None
                }
            };
            if let (Some(ns), Some(every), Some(source)) = (ns, every, source) {
                polls.push(Poll {
                    ns,
                    every,
                    jitter,
                    timeout,
                    source,
                    line,
                });
            }
        }

        let mut serves = Vec::new();
        for s in &raw.serve {
            let line = c.line(s);
            let s = s.get_ref();
            let ns_line = c.line(&s.ns);
            let ns = c.namespace(s.ns.get_ref(), ns_line, "serve.ns");
            let timeout = c.opt_duration(&s.timeout, "timeout", Duration::from_secs(10));
            let concurrency = match &s.concurrency {
                Some(n) if !(1..=256).contains(n.get_ref()) => {
                    let l = c.line(n);
                    c.error(l, "concurrency: between 1 and 256");
                    1
                }
                Some(n) => usize::try_from(*n.get_ref()).unwrap_or(1),
                None => 4,
            };
            let action = match (&s.command, &s.file, &s.http) {
                (None, None, Some(url)) => {
                    if url.starts_with("http://") || url.starts_with("https://") {
                        Some(ServeAction::Http(url.clone()))
                    } else {
                        c.error(
                            line,
                            format!("http: {url:?} is not an http:// or https:// URL"),
                        );
                        None
                    }
                }
                (Some(argv), None, None) => {
                    let l = c.line(argv);
                    if s.write.is_some() {
                        c.error(
                            l,
                            "write: goes with `file`; a command's arguments are its template",
                        );
                    }
                    let argv = argv.get_ref();
                    if argv.is_empty() || argv[0].is_empty() {
                        c.error(l, "command: name the program first, e.g. command = [\"/usr/local/bin/alarm\", \"{on}\"]");
                        None
                    } else if argv[0].contains('{') {
                        c.error(l, "command: the program itself cannot come from the command's data; fill only its arguments");
                        None
                    } else {
                        let mut parts = Vec::new();
                        for a in argv {
                            match Template::parse(a) {
                                Ok(t) => parts.push(t),
                                Err(e) => c.error(l, format!("command: {e}")),
                            }
                        }
                        (parts.len() == argv.len()).then_some(ServeAction::Command(parts))
                    }
                }
                (None, Some(f), None) => match &s.write {
                    Some(w) => match Template::parse(w.get_ref()) {
                        Ok(write) => Some(ServeAction::File {
                            path: PathBuf::from(f),
                            write,
                        }),
                        Err(e) => {
                            let l = c.line(w);
                            c.error(l, format!("write: {e}"));
                            None
                        }
                    },
                    None => {
                        c.error(line, "file: say what to write, e.g. write = \"{value}\"");
                        None
                    }
                },
                _ => {
                    c.error(line, "serve: give exactly one action: `command` (argv template), `file` (with `write`) or `http` (a URL to POST the data to)");
                    None
                }
            };
            if let (Some(ns), Some(action)) = (ns, action) {
                serves.push(Serve {
                    ns,
                    action,
                    timeout,
                    concurrency,
                    line,
                });
            }
        }

        let mut rules = Vec::new();
        for r in &raw.rule {
            let line = c.line(r);
            let r = r.get_ref();
            let name = r.name.clone().unwrap_or_else(|| format!("rule{line}"));
            let min_interval =
                c.opt_duration(&r.min_interval, "min_interval", Duration::from_secs(1));
            let kind = match (&r.when, &r.publish) {
                (Some(when), None) => {
                    if r.value.is_some() {
                        c.error(line, "value: goes with `publish` (a derived thing); a `when` rule acts through `then`/`else`");
                    }
                    let when = c.expr(when, "when");
                    let until = r.until.as_ref().and_then(|u| c.expr(u, "until"));
                    let hold = match &r.hold {
                        Some(h) => c.duration(h, "for"),
                        None => Some(Duration::ZERO),
                    };
                    let then = r.then.as_ref().and_then(|a| c.action(a, "then"));
                    let otherwise = r.otherwise.as_ref().and_then(|a| c.action(a, "else"));
                    if r.then.is_none() && r.otherwise.is_none() {
                        c.error(line, "rule: a `when` rule needs `then` and/or `else`, e.g. then = { command = \"kitchen.alarm\", data = { on = true } }");
                    }
                    match (when, hold) {
                        (Some(when), Some(hold)) => Some(RuleKind::Condition {
                            when,
                            until,
                            hold,
                            then,
                            otherwise,
                        }),
                        _ => None,
                    }
                }
                (None, Some(p)) => {
                    for (present, key) in [
                        (r.then.is_some(), "then"),
                        (r.otherwise.is_some(), "else"),
                        (r.hold.is_some(), "for"),
                        (r.until.is_some(), "until"),
                    ] {
                        if present {
                            c.error(line, format!("{key}: goes with `when`; a derived thing has `publish` and `value` only"));
                        }
                    }
                    let pl = c.line(p);
                    let ns = c.namespace(p.get_ref(), pl, "publish");
                    let value = match &r.value {
                        Some(v) => c.expr(v, "value"),
                        None => {
                            c.error(line, "publish: needs `value`, an expression, e.g. value = \"kitchen.fridge.temp * 2\"");
                            None
                        }
                    };
                    match (ns, value) {
                        (Some(ns), Some(value)) => Some(RuleKind::Derived { ns, value }),
                        _ => None,
                    }
                }
                _ => {
                    c.error(line, "rule: give `when` (with `then`/`else`) or `publish` (with `value`), not both or neither");
                    None
                }
            };
            if let Some(kind) = kind {
                rules.push(Rule {
                    name,
                    kind,
                    min_interval,
                    line,
                });
            }
        }

        if !c.errors.is_empty() {
            c.errors.sort_by_key(|e| e.line);
            return Err(ConfigErrors(c.errors));
        }
        let Some(base) = base else {
            return Err(ConfigErrors(vec![ConfigError {
                line: Some(base_line),
                message: "base: a namespace is needed".into(),
            }]));
        };
        Ok(Config {
            broker,
            base,
            polls,
            serves,
            rules,
            health_every,
            ca_file: raw.ca_file.map(|f| PathBuf::from(f.into_inner())),
        })
    }
}

/// toml's message with the fix for the common cases.
fn hint(message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove it or fix its spelling (see README, \"thingsbus-agent\")")
    } else if message.starts_with("missing field") {
        format!("{message}; add it")
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        match Config::parse(text) {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0s", "-1s", "soon", "", "1x", "nan", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_key_names_its_line() {
        let e = errors("base = \"kitchen\"\n[[poll]]\nns = \"a\"\nevery = \"1s\"\nfiel = \"/x\"\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, Some(5));
        assert!(
            e[0].message.contains("unknown field `fiel`"),
            "{}",
            e[0].message
        );
        assert!(e[0].message.contains("remove it or fix its spelling"));
    }

    #[test]
    fn a_bad_duration_names_its_line_and_the_fix() {
        let e =
            errors("base = \"kitchen\"\n[[poll]]\nns = \"a\"\nevery = \"1 sec\"\nfile = \"/x\"\n");
        assert_eq!(e[0].line, Some(4));
        assert!(e[0].message.contains("\"10m\""), "{}", e[0].message);
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = errors("base = \"kitchen\"\n[[poll]]\nns = \"a\"\nfile = \"/x\"\n");
        // (toml names the first spanned field of the table rather than the missing one.)
        assert!(e[0].message.contains("missing field"), "{}", e[0].message);
        assert!(e[0].line.is_some(), "{:?}", e[0]);
        let e = errors("\n");
        assert!(e[0].message.contains("`base`"), "{}", e[0].message);
    }

    #[test]
    fn a_bad_namespace_says_what_a_part_is() {
        let e = errors("base = \"Kitchen\"\n");
        assert_eq!(e[0].line, Some(1));
        assert!(
            e[0].message.contains("lower-case letter"),
            "{}",
            e[0].message
        );
        let e = errors("base = \"k\"\n\n[[serve]]\nns = \"a..b\"\ncommand = [\"x\"]\n");
        assert_eq!(e[0].line, Some(4));
    }

    #[test]
    fn a_poll_has_exactly_one_source() {
        let e = errors("base = \"k\"\n[[poll]]\nns = \"a\"\nevery = \"1s\"\n");
        assert_eq!(e[0].line, Some(2));
        assert!(e[0].message.contains("exactly one source"));
        let e = errors("base = \"k\"\n[[poll]]\nns = \"a\"\nevery = \"1s\"\nfile = \"/x\"\nhttp = \"http://h/\"\n");
        assert!(e[0].message.contains("exactly one source"));
    }

    #[test]
    fn pick_scale_and_expressions_are_checked() {
        let e = errors("base = \"k\"\n[[poll]]\nns = \"a\"\nevery = \"1s\"\nhttp = \"http://h/\"\npick = \".a[\"\n");
        assert_eq!(e[0].line, Some(6));
        assert!(e[0].message.starts_with("pick:"));
        let e = errors(
            "base = \"k\"\n[[poll]]\nns = \"a\"\nevery = \"1s\"\ncommand = [\"x\"]\nscale = 2.0\n",
        );
        assert_eq!(e[0].line, Some(6));
        let e = errors("base = \"k\"\n[[rule]]\nwhen = \"k.a >\"\nthen = { command = \"k.b\" }\n");
        assert_eq!(e[0].line, Some(3));
        assert!(e[0].message.starts_with("when:"));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let e = errors("base = \"k\"\n[[poll]]\nns = \"A\"\nevery = \"x\"\nfile = \"/x\"\n[[rule]]\npublish = \"k.b\"\n");
        let lines: Vec<_> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(3), Some(4), Some(6)], "{e:?}");
    }

    #[test]
    fn serve_templates_cannot_name_the_program() {
        let e = errors("base = \"k\"\n[[serve]]\nns = \"a\"\ncommand = [\"{prog}\", \"x\"]\n");
        assert!(
            e[0].message.contains("the program itself"),
            "{}",
            e[0].message
        );
        let e = errors("base = \"k\"\n[[serve]]\nns = \"a\"\ncommand = [\"x\", \"{on\"]\n");
        assert_eq!(e[0].line, Some(4));
    }

    #[test]
    fn the_issue_file_parses_as_written() {
        let text = include_str!("../tests/data/agent.toml");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.base.as_str(), "kitchen");
        assert_eq!(c.broker.url.as_deref(), Some("tcp://127.0.0.1:7954"));
        assert_eq!(c.polls.len(), 3);
        assert_eq!(c.polls[0].every, Duration::from_secs(1));
        assert!(
            matches!(c.polls[0].source, Source::File { scale, .. } if (scale - 0.001).abs() < 1e-12)
        );
        assert_eq!(c.polls[1].every, Duration::from_secs(600));
        assert!(matches!(
            c.polls[1].source,
            Source::Http { pick: Some(_), .. }
        ));
        assert!(matches!(&c.polls[2].source, Source::Command { argv } if argv.len() == 3));
        assert_eq!(c.serves.len(), 1);
        assert_eq!(c.serves[0].timeout, Duration::from_secs(5));
        assert_eq!(c.rules.len(), 2);
        assert!(
            matches!(&c.rules[0].kind, RuleKind::Condition { hold, then: Some(_), otherwise: Some(_), .. } if *hold == Duration::from_secs(3))
        );
        assert!(
            matches!(&c.rules[1].kind, RuleKind::Derived { ns, .. } if ns.as_str() == "house.fridge_double")
        );
    }
}
