//! The broker's counters, declared once, and the two views generated from that declaration:
//! the broker's own thing (`thingsbus.broker`) and the Prometheus text of `/metrics`.
//!
//! A counter is one line in a [`counters!`] block: its doc comment is its help text, then its
//! kind, its key in the broker's thing (`group.key` nests it under `group`) and its metric name
//! (with labels, `{outcome="ok"}`, for one sample of a family; `""` keeps it out of `/metrics`).
//! Adding a counter is adding that line and counting with it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use thingsbus_protocol::Rejection;

use crate::reason::Reason;

/// The reserved namespace of the broker's own thing.
pub(crate) const BROKER_NS: &str = "thingsbus.broker";
/// Documentation of the broker's own thing.
pub(crate) const BROKER_DOC: &str = "https://github.com/thingsbus/thingsbus#the-broker-as-a-thing";

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A total since start.
    Counter,
    /// A level now.
    Gauge,
    /// 0 or 1; `false` or `true` in the broker's thing.
    Flag,
}

/// One declared counter.
pub(crate) struct Row {
    /// Where it shows in the broker's thing: `key`, or `group.key`.
    pub(crate) thing: &'static str,
    /// Its Prometheus name, with the labels of its sample; empty when it has none.
    pub(crate) metric: &'static str,
    pub(crate) kind: Kind,
    /// Its doc comment.
    pub(crate) help: &'static str,
    pub(crate) get: fn(&Stats) -> &AtomicU64,
}

/// Declares a struct of `AtomicU64` counters (plus `also` fields of other types) and its rows.
/// `in field` names the [`Stats`] field that holds the struct (none for `Stats` itself).
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(in $via:ident)? {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $kind:ident, $thing:literal, $metric:literal;
            )*
        }
        $(also {
            $( $(#[$ameta:meta])* $avis:vis $afield:ident: $aty:ty, )*
        })?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: AtomicU64, )*
            $($( $(#[$ameta])* $avis $afield: $aty, )*)?
        }

        impl $name {
            /// Its counters, as declared.
            pub(crate) const ROWS: &'static [Row] = &[
                $(Row {
                    thing: $thing,
                    metric: $metric,
                    kind: Kind::$kind,
                    help: concat!($($doc),*),
                    get: |s: &Stats| &$name::within(s).$field,
                },)*
            ];

            /// This group within all the broker's counters.
            fn within(s: &Stats) -> &Self {
                counters!(@within s $($via)?)
            }
        }
    };
    (@within $s:ident) => { $s };
    (@within $s:ident $via:ident) => { &$s.$via };
}

counters! {
    /// Counters kept by the broker, shared read-only with whoever wants to look (tests, metrics).
    /// All are totals since start except the gauges.
    pub struct Stats {
        /// Updates accepted and republished.
        accepted: Counter, "accepted", "thingsbus_updates_accepted_total";
        /// Input bytes received (ZMQ frames and UDP datagrams).
        bytes_in: Counter, "bytes_in", "thingsbus_received_bytes_total";
        /// Bytes handed to the directory output (updates and snapshot chunks).
        bytes_out: Counter, "bytes_out", "thingsbus_sent_bytes_total";
        /// Messages handed to the directory output.
        messages_out: Counter, "messages_out", "thingsbus_sent_messages_total";
        /// Things held by the broker.
        things: Gauge, "things", "thingsbus_things";
        /// Encoded bytes of every thing's last value, summed: what `--max-bytes` limits.
        bytes_held: Gauge, "bytes_held", "thingsbus_held_bytes";
        /// `--max-things`: new things beyond it are dropped as `too_many_things`.
        max_things: Gauge, "max_things", "thingsbus_max_things";
        /// `--max-bytes`: updates that would hold more are dropped as `too_many_bytes`.
        max_bytes: Gauge, "max_bytes", "thingsbus_max_bytes";
        /// Things removed because their last `ts` was older than `forget_after`.
        forgotten: Counter, "forgotten", "thingsbus_forgotten_total";
        /// Periodic snapshots published.
        snapshots: Counter, "snapshots", "thingsbus_snapshots_total";
        /// Snapshot chunks published.
        snapshot_chunks: Counter, "snapshot_chunks", "thingsbus_snapshot_chunks_total";
        /// Snapshot entries left out because a newer live update for the thing went out while
        /// the snapshot was being sent.
        snapshot_entries_superseded: Counter, "snapshot_entries_superseded",
            "thingsbus_snapshot_entries_superseded_total";
        /// ZMQ input connections open now.
        input_connections: Gauge, "input_connections", "thingsbus_input_connections";
        /// ZMQ input connections closed, by the peer or by libzmq (for example after a frame
        /// larger than `max_message_bytes`, which libzmq refuses before reading it).
        input_disconnects: Counter, "input_disconnects", "thingsbus_input_disconnects_total";
        /// Directory subscribers connected now.
        subscribers: Gauge, "subscribers", "thingsbus_subscribers";
        /// Snapshot requests accepted on the snapshot endpoint.
        snapshot_requests: Counter, "snapshot_requests", "thingsbus_snapshot_requests_total";
        /// Snapshot requests refused (malformed, or too many at once).
        snapshot_request_errors: Counter, "snapshot_request_errors",
            "thingsbus_snapshot_request_errors_total";
        /// Snapshot replies sent completely.
        snapshot_replies: Counter, "snapshot_replies", "thingsbus_snapshot_replies_total";
        /// Snapshot replies abandoned (client gone, or not read within 30 s).
        snapshot_replies_dropped: Counter, "snapshot_replies_dropped",
            "thingsbus_snapshot_replies_dropped_total";
        /// Total time from request to last chunk sent, over all replies, in microseconds (the
        /// broker's thing shows the average, `snapshot_reply_ms_avg`).
        snapshot_reply_micros: Counter, "", "";
        /// `thing_expired` events published.
        expired: Counter, "expired", "thingsbus_expired_total";
        /// UDP datagrams the kernel dropped because the input socket's buffer was full (the
        /// broker was behind); read from `/proc/net/udp` on Linux, 0 elsewhere.
        udp_drops: Counter, "udp_drops", "thingsbus_udp_kernel_drops_total";
        /// With `--state-file`: the `seq` up to which the state file is known durable (fsynced).
        journal_synced_seq: Gauge, "journal.synced_seq", "thingsbus_journal_synced_seq";
        /// With `--state-file`: its size in bytes.
        journal_bytes: Gauge, "journal.bytes", "thingsbus_journal_bytes";
        /// With `--state-file`: updates appended to it.
        journal_records: Counter, "journal.records", "thingsbus_journal_records_total";
        /// With `--state-file`: times it was rewritten from the directory.
        journal_compactions: Counter, "journal.compactions", "thingsbus_journal_compactions_total";
        /// With `--state-file`: writes or syncs that failed (disk full, I/O error).
        journal_errors: Counter, "journal.errors", "thingsbus_journal_errors_total";
        /// With `--state-file`: batches not journaled because the writer fell behind (the next
        /// compaction makes up for them).
        journal_dropped: Counter, "journal.dropped", "thingsbus_journal_dropped_total";
        /// With `--state-file`: true while the file misses what the broker accepted (a write
        /// failed, or batches were dropped), until a compaction rewrites it; `/healthz` says why.
        journal_failing: Flag, "journal.failing", "thingsbus_journal_failing";
        /// With `--http`: connections closed because a write made no progress for the write
        /// timeout (a client that does not read).
        http_write_timeouts: Counter, "http_write_timeouts", "thingsbus_http_write_timeouts_total";
        /// With `--http`: event streams dropped because more events waited for them than their
        /// queue holds (in bytes or in events).
        http_streams_dropped: Counter, "http_streams_dropped", "thingsbus_http_streams_dropped_total";
        /// With `--http`: times the HTTP side's copy of the directory was loaded afresh because it
        /// held too many things the directory had forgotten.
        http_mirror_reloads: Counter, "http_mirror_reloads", "thingsbus_http_mirror_reloads_total";
        /// With `--history`: points written to the history file.
        history_points: Counter, "history.points", "thingsbus_history_points_total";
        /// With `--history`: points not written because recording fell behind (a newer value
        /// took the place of one not yet written, the HTTP side's feed lagged, or more series
        /// than the store keeps).
        history_conflated: Counter, "history.conflated", "thingsbus_history_conflated_total";
        /// With `--history`: writes or maintenance of the history file that failed.
        history_errors: Counter, "history.errors", "thingsbus_history_errors_total";
        /// With `--history`: bytes of the history file in use.
        history_bytes: Gauge, "history.bytes", "thingsbus_history_bytes";
        /// With `--history`: series recorded (a number thing, or one field of an object thing).
        history_series: Gauge, "history.series", "thingsbus_history_series";
    }
    also {
        /// Input messages dropped, indexed like [`Reason::all`].
        rejected: [AtomicU64; 32],
        /// The command endpoint's counters.
        pub commands: CommandStats,
        /// The cluster link's counters (with `--cluster`).
        pub cluster: ClusterStats,
        /// The inode of the UDP input socket, to find it in `/proc/net/udp`.
        udp_inode: AtomicU64,
        /// Whether every part of the broker is alive and well.
        pub health: crate::health::Health,
        /// With `--auth-file`: refusals by the sender's name (a key, a board or `anonymous`)
        /// and reason.
        refused_by_key: std::sync::Mutex<RefusedByKey>,
    }
}

/// Refusals by sender and reason; names come from the auth file, at most [`MAX_NAMES`].
type RefusedByKey =
    std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>>;

/// Senders counted by name at most; beyond it they count as `(other)`.
const MAX_NAMES: usize = 4096;

counters! {
    /// Counters of the command endpoint.
    pub struct CommandStats in commands {
        /// Commands forwarded to a serving adaptor.
        routed: Counter, "commands.routed", "thingsbus_commands_routed_total";
        /// Replies from servers passed to callers, ok.
        replied_ok: Counter, "commands.replied_ok", "thingsbus_commands_total{outcome=\"ok\"}";
        /// Replies from servers passed to callers, refusing (`ok: false`).
        replied_error: Counter, "commands.replied_error",
            "thingsbus_commands_total{outcome=\"refused\"}";
        /// Commands answered `no_route`.
        no_route: Counter, "commands.no_route", "thingsbus_commands_total{outcome=\"no_route\"}";
        /// Commands answered `timeout`.
        timeout: Counter, "commands.timeout", "thingsbus_commands_total{outcome=\"timeout\"}";
        /// Commands answered `gone`.
        gone: Counter, "commands.gone", "thingsbus_commands_total{outcome=\"gone\"}";
        /// Commands answered `busy`.
        busy: Counter, "commands.busy", "thingsbus_commands_total{outcome=\"busy\"}";
        /// Messages answered `bad_request`, or dropped as unreadable.
        bad_request: Counter, "commands.bad_request",
            "thingsbus_commands_total{outcome=\"bad_request\"}";
        /// Commands refused because the caller's address is not allowed.
        not_allowed: Counter, "commands.not_allowed",
            "thingsbus_commands_total{outcome=\"not_allowed\"}";
        /// `serve` requests refused because another owner (another host, or another key) holds
        /// the prefix until it lapses.
        takeover_refused: Counter, "commands.takeover_refused",
            "thingsbus_command_takeovers_refused_total";
        /// Replies that came after their command was answered (deadline passed), dropped.
        late_replies: Counter, "commands.late_replies", "thingsbus_command_late_replies_total";
        /// Command registrations held now.
        registrations: Gauge, "commands.registrations", "thingsbus_command_registrations";
        /// Commands in flight now.
        in_flight: Gauge, "commands.in_flight", "thingsbus_commands_in_flight";
        /// Commands forwarded to another broker of the cluster.
        forwarded: Counter, "commands.forwarded",
            "thingsbus_commands_between_brokers_total{direction=\"out\"}";
        /// Commands that other brokers forwarded here.
        from_brokers: Counter, "commands.from_brokers",
            "thingsbus_commands_between_brokers_total{direction=\"in\"}";
        /// Prefixes other brokers of the cluster serve, known here.
        remote_routes: Gauge, "commands.remote_routes", "thingsbus_command_remote_routes";
    }
    also {
        /// The prefixes served now, sorted (at most 256 of them), for the broker's
        /// thing: bridges learn from it which things obey commands.
        pub served: std::sync::Mutex<Vec<String>>,
    }
}

counters! {
    /// Counters of the cluster link (shown in the broker's thing with `--cluster` only).
    pub struct ClusterStats in cluster {
        /// Values written to the bucket (after conflation).
        writes: Counter, "cluster.writes", "thingsbus_cluster_writes_total";
        /// Local updates that a newer value of the same thing replaced before they were written.
        conflated: Counter, "cluster.conflated", "thingsbus_cluster_conflated_total";
        /// Writes that failed (and are retried).
        write_errors: Counter, "cluster.write_errors", "thingsbus_cluster_write_errors_total";
        /// Things waiting to be written now.
        pending: Gauge, "cluster.pending", "thingsbus_cluster_pending";
        /// Values from other brokers applied here.
        applied: Counter, "cluster.applied", "thingsbus_cluster_applied_total";
        /// Values (from other brokers, or local ones) not applied because the value here is
        /// newer.
        older: Counter, "cluster.older", "thingsbus_cluster_older_total";
        /// Whether the broker is connected to NATS.
        connected: Flag, "cluster.connected", "thingsbus_cluster_connected";
        /// Times the whole bucket was loaded again because it was younger than what this broker
        /// had seen (NATS lost its storage).
        reloads: Counter, "cluster.reloads", "thingsbus_cluster_reloads_total";
        /// Route announcements ignored: from a broker not in `--cluster-accept-nodes`.
        announcements_ignored: Counter, "cluster.announcements_ignored", "thingsbus_cluster_announcements_ignored_total";
        /// Announced routes refused: a bad prefix, a registration time beyond now plus
        /// `--max-clock-skew`, or beyond the routes one broker may announce.
        routes_refused: Counter, "cluster.routes_refused", "thingsbus_cluster_routes_refused_total";
        /// Hand-overs ingest put off because the conflate thread was behind (the things stay
        /// marked in the directory and go with a later one).
        behind: Counter, "cluster.behind", "thingsbus_cluster_behind_total";
        /// NATS connection events dropped because the relay had not taken the earlier ones.
        events_dropped: Counter, "cluster.events_dropped", "thingsbus_cluster_events_dropped_total";
    }
}

/// Every counter, in the order the views show them.
pub(crate) fn rows() -> impl Iterator<Item = &'static Row> {
    [Stats::ROWS, CommandStats::ROWS, ClusterStats::ROWS]
        .into_iter()
        .flatten()
}

/// Help of the metric families whose samples are several rows (a row's own help describes one
/// sample).
const FAMILY_HELP: &[(&str, &str)] = &[
    ("thingsbus_commands_total", "Commands by outcome."),
    (
        "thingsbus_commands_between_brokers_total",
        "Commands forwarded through the cluster, by direction.",
    ),
];

const _: () = assert!(
    Rejection::ALL.len() + Reason::POLICY.len() <= 32,
    "grow Stats::rejected"
);

/// What the broker's thing shows beside the counters.
pub(crate) struct StatusExtra {
    /// Seconds since start.
    pub(crate) uptime_s: u64,
    /// Whether the cluster group is shown (`--cluster`).
    pub(crate) cluster: bool,
    /// Whether the journal group is shown (`--state-file`).
    pub(crate) journal: bool,
}

impl Stats {
    /// Counts one dropped input message.
    pub fn reject(&self, reason: impl Into<Reason>) {
        if let Some(c) = self.rejected.get(reason.into().index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one refusal of what `who` (a name from the auth file, or `anonymous`) sent or
    /// asked, for `reason` (a [`Reason`] label, or `connect_refused`).
    pub(crate) fn refuse_by(&self, who: &str, reason: &'static str) {
        let Ok(mut by) = self.refused_by_key.lock() else {
            return;
        };
        let who = if by.len() >= MAX_NAMES && !by.contains_key(who) {
            "(other)"
        } else {
            who
        };
        *by.entry(who.to_owned())
            .or_default()
            .entry(reason)
            .or_insert(0) += 1;
    }

    /// Refusals counted by [`Stats::refuse_by`] for `who` and `reason`.
    pub fn refused_by(&self, who: &str, reason: &str) -> u64 {
        self.refused_by_key
            .lock()
            .ok()
            .and_then(|by| by.get(who).and_then(|r| r.get(reason)).copied())
            .unwrap_or(0)
    }

    /// Input messages dropped for `reason`.
    pub fn rejected(&self, reason: impl Into<Reason>) -> u64 {
        self.rejected
            .get(reason.into().index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Input messages dropped for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Every reason with its count.
    pub fn rejected_by_reason(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::all().map(|r| (r, self.rejected(r)))
    }

    /// Names the UDP input socket, whose kernel drops `udp_drops` follows.
    pub(crate) fn watch_udp_drops(&self, socket: &std::net::UdpSocket) {
        if let Some(inode) = crate::udp_drops::inode(socket) {
            set(&self.udp_inode, inode);
        }
    }

    /// Reads `udp_drops` anew from the kernel (both views call it before they show it).
    pub(crate) fn refresh_udp_drops(&self) {
        let inode = self.udp_inode.load(Ordering::Relaxed);
        if let Some(drops) = (inode != 0)
            .then(|| crate::udp_drops::kernel_drops(inode))
            .flatten()
        {
            set(&self.udp_drops, drops);
        }
    }

    /// The data of the broker's own thing: every counter at its key, and what `extra` adds.
    pub(crate) fn status(&self, extra: &StatusExtra) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        self.refresh_udp_drops();
        let mut data = Map::new();
        for row in rows() {
            let (group, key) = match row.thing.split_once('.') {
                _ if row.thing.is_empty() => continue,
                Some(("cluster", _)) if !extra.cluster => continue,
                Some(("journal", _)) if !extra.journal => continue,
                Some((group, key)) => (Some(group), key),
                None => (None, row.thing),
            };
            let n = (row.get)(self).load(Ordering::Relaxed);
            let value = match row.kind {
                Kind::Flag => Value::Bool(n == 1),
                Kind::Counter | Kind::Gauge => n.into(),
            };
            let map = match group {
                Some(group) => match data
                    .entry(group)
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(m) => m,
                    _ => continue,
                },
                None => &mut data,
            };
            map.insert(key.to_owned(), value);
        }
        let replies = self.snapshot_replies.load(Ordering::Relaxed);
        let reply_micros = self.snapshot_reply_micros.load(Ordering::Relaxed);
        let by_reason: Map<String, Value> = self
            .rejected_by_reason()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str().to_owned(), n.into()))
            .collect();
        let served = self
            .commands
            .served
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        data.insert("uptime_s".into(), extra.uptime_s.into());
        data.insert("rejected".into(), self.rejected_total().into());
        data.insert("rejected_by_reason".into(), by_reason.into());
        data.insert(
            "snapshot_reply_ms_avg".into(),
            json!(if replies == 0 {
                0.0
            } else {
                reply_micros as f64 / replies as f64 / 1e3
            }),
        );
        if let Some(Value::Object(commands)) = data.get_mut("commands") {
            commands.insert("served".into(), served.into());
        }
        if let Ok(by) = self.refused_by_key.lock() {
            if !by.is_empty() {
                data.insert("refused_by_key".into(), json!(*by));
            }
        }
        Value::Object(data)
    }

    /// Appends every counter to `out` in Prometheus' text format, families together.
    pub(crate) fn write_metrics(&self, out: &mut String) {
        self.refresh_udp_drops();
        // Name, first row (help and kind), samples.
        type Family<'a> = (&'a str, &'a Row, Vec<(&'a str, u64)>);
        let mut families: Vec<Family<'_>> = Vec::new();
        for row in rows().filter(|r| !r.metric.is_empty()) {
            let (name, labels) = row
                .metric
                .find('{')
                .map_or((row.metric, ""), |i| row.metric.split_at(i));
            let n = (row.get)(self).load(Ordering::Relaxed);
            match families.iter_mut().find(|(f, _, _)| *f == name) {
                Some((_, _, samples)) => samples.push((labels, n)),
                None => families.push((name, row, vec![(labels, n)])),
            }
        }
        let rejected: Vec<(String, u64)> = self
            .rejected_by_reason()
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.as_str()), n))
            .collect();
        write_family(
            out,
            "thingsbus_updates_rejected_total",
            Kind::Counter,
            "Input messages dropped, by reason.",
            rejected.iter().map(|(l, n)| (l.as_str(), *n)),
        );
        let by_key: Vec<(String, u64)> = self
            .refused_by_key
            .lock()
            .map(|by| {
                by.iter()
                    .flat_map(|(who, reasons)| {
                        reasons.iter().map(move |(reason, n)| {
                            let who = who.replace('\\', "\\\\").replace('"', "\\\"");
                            (format!("{{key=\"{who}\",reason=\"{reason}\"}}"), *n)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !by_key.is_empty() {
            write_family(
                out,
                "thingsbus_refused_by_key_total",
                Kind::Counter,
                "With --auth-file: messages and connections refused, by sender (key, board or anonymous) and reason.",
                by_key.iter().map(|(l, n)| (l.as_str(), *n)),
            );
        }
        for (name, first, samples) in families {
            let help = FAMILY_HELP
                .iter()
                .find(|(f, _)| *f == name)
                .map_or(first.help, |(_, h)| h);
            write_family(out, name, first.kind, help, samples.into_iter());
        }
    }
}

/// Appends one metric family: its help, its type and its samples.
pub(crate) fn write_family<'a>(
    out: &mut String,
    name: &str,
    kind: Kind,
    help: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) {
    // Doc comments come in lines with a leading space each; help is one line.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge | Kind::Flag => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Ordering::Relaxed);
}

pub(crate) fn dec(gauge: &AtomicU64) {
    // Saturating: a disconnect seen without its accept must not wrap the gauge.
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_unique_key_and_metric_sample() {
        let mut things = std::collections::HashSet::new();
        let mut metrics = std::collections::HashSet::new();
        for row in rows() {
            assert!(!row.help.trim().is_empty(), "{} has no help", row.thing);
            if !row.thing.is_empty() {
                assert!(things.insert(row.thing), "two counters at {}", row.thing);
            }
            if !row.metric.is_empty() {
                assert!(metrics.insert(row.metric), "two counters as {}", row.metric);
                let name = row.metric.split('{').next().unwrap_or_default();
                assert_eq!(
                    name.ends_with("_total"),
                    row.kind == Kind::Counter,
                    "{name}: counters and only counters end in _total"
                );
            }
        }
    }

    #[test]
    fn the_broker_thing_nests_groups_and_hides_those_not_in_use() {
        let st = Stats::default();
        add(&st.accepted, 3);
        add(&st.commands.routed, 2);
        set(&st.cluster.connected, 1);
        add(&st.journal_records, 5);
        add(&st.snapshot_replies, 2);
        add(&st.snapshot_reply_micros, 3000);
        st.reject(Rejection::TooLarge);
        let extra = |cluster, journal| StatusExtra {
            uptime_s: 7,
            cluster,
            journal,
        };
        let plain = st.status(&extra(false, false));
        assert_eq!(plain["accepted"], 3);
        assert_eq!(plain["uptime_s"], 7);
        assert_eq!(plain["commands"]["routed"], 2);
        assert_eq!(plain["commands"]["served"], serde_json::json!([]));
        assert_eq!(plain["rejected"], 1);
        assert_eq!(plain["rejected_by_reason"][Rejection::TooLarge.as_str()], 1);
        assert_eq!(plain["snapshot_reply_ms_avg"], 1.5);
        assert!(plain.get("cluster").is_none() && plain.get("journal").is_none());
        assert!(plain.get("snapshot_reply_micros").is_none());
        let all = st.status(&extra(true, true));
        assert_eq!(all["cluster"]["connected"], true);
        assert_eq!(all["cluster"]["writes"], 0);
        assert_eq!(all["journal"]["records"], 5);
    }

    #[test]
    fn metrics_show_each_family_once_with_all_its_samples() {
        let st = Stats::default();
        add(&st.commands.replied_ok, 4);
        add(&st.commands.gone, 1);
        st.reject(Rejection::TooLarge);
        let mut out = String::new();
        st.write_metrics(&mut out);
        assert_eq!(
            out.matches("# TYPE thingsbus_commands_total counter")
                .count(),
            1
        );
        assert!(out.contains("# HELP thingsbus_commands_total Commands by outcome.\n"));
        assert!(out.contains("thingsbus_commands_total{outcome=\"ok\"} 4\n"));
        assert!(out.contains("thingsbus_commands_total{outcome=\"gone\"} 1\n"));
        assert!(out.contains(&format!(
            "thingsbus_updates_rejected_total{{reason=\"{}\"}} 1\n",
            Rejection::TooLarge.as_str()
        )));
        assert!(out.contains("# TYPE thingsbus_cluster_connected gauge\n"));
        // A help that spans lines in the doc comment is one line here.
        assert!(out.contains(
            "# HELP thingsbus_input_disconnects_total ZMQ input connections closed, by the peer \
             or by libzmq (for example after a frame larger than `max_message_bytes`, which \
             libzmq refuses before reading it).\n"
        ));
        assert!(!out.contains("micros"));
        for (i, block) in out.split("# HELP ").enumerate().skip(1) {
            let name = block.split(' ').next().unwrap_or_default();
            assert_eq!(
                out.matches(&format!("# HELP {name} ")).count(),
                1,
                "family {i} ({name}) shown twice"
            );
        }
    }
}
