//! Several brokers, one directory (`--cluster nats://...`): every accepted update is written to a
//! NATS JetStream key-value bucket (key = the thing's namespace), conflated per thing within a
//! flush interval; every broker watches the bucket and applies what other brokers wrote as
//! ordinary updates with its own `seq`. Newest `ts` wins.
//!
//! The bucket's stream is created explicitly with the key-value settings (`KV_<bucket>`,
//! subjects `$KV.<bucket>.>`, one message per subject, rollups allowed, deletes denied) and then
//! opened as a bucket: that works on Debian's nats-server 2.9 as on current ones. A value is
//! `{"o": "<node name>", "u": <the update as published>}`; a broker skips its own.
//!
//! NATS slow or away costs the local broker nothing: writes wait in a map with the newest value
//! per thing (memory bounded by the number of things) and go out when NATS acknowledges; a failed
//! write is retried unless a newer value of the thing came meanwhile.
//!
//! Commands between brokers go through NATS core request/reply: see [`relay`].

pub(crate) mod relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::value::RawValue;

use crate::config::{ClusterAuth, ClusterConfig};
use crate::stats;

/// What ingest hands over: the namespace and the update as published.
pub(crate) type Outgoing = (String, Arc<[u8]>);

/// The ingest thread's end: local updates out, other brokers' updates in.
pub(crate) struct ClusterLink {
    pub(crate) out: Sender<Vec<Outgoing>>,
    pub(crate) incoming: Receiver<Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct Value<'a> {
    o: &'a str,
    #[serde(borrow)]
    u: &'a RawValue,
}

/// Credentials as read at start: a file that cannot be read stops the start with a clear error
/// instead of a retry loop.
#[derive(Clone)]
enum Secret {
    None,
    Token(String),
    UserPassword(String, String),
    Creds(String),
    Nkey(String),
}

fn read_secret(auth: &ClusterAuth) -> std::io::Result<Secret> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot read the NATS {what} file {}: {e}", p.display()),
            )
        })
    };
    Ok(match auth {
        ClusterAuth::None => Secret::None,
        ClusterAuth::Token(t) => Secret::Token(t.clone()),
        ClusterAuth::UserPassword(u, p) => Secret::UserPassword(u.clone(), p.clone()),
        ClusterAuth::CredsFile(p) => {
            let creds = read("credentials", p)?;
            // Parsed once here, so that a damaged file is reported at start.
            async_nats::ConnectOptions::new()
                .credentials(&creds)
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the NATS credentials file {} is not usable: {e}",
                            p.display()
                        ),
                    )
                })?;
            Secret::Creds(creds)
        }
        ClusterAuth::NkeyFile(p) => Secret::Nkey(read("NKey seed", p)?.trim().to_owned()),
    })
}

fn connect_options(secret: &Secret, node: &str) -> async_nats::ConnectOptions {
    let o = async_nats::ConnectOptions::new()
        .name(format!("thingsbus-broker {node}"))
        .connection_timeout(Duration::from_secs(2));
    match secret {
        Secret::None => o,
        Secret::Token(t) => o.token(t.clone()),
        Secret::UserPassword(u, p) => o.user_and_password(u.clone(), p.clone()),
        // Checked by `read_secret`.
        Secret::Creds(c) => o
            .credentials(c)
            .unwrap_or_else(|_| async_nats::ConnectOptions::new()),
        Secret::Nkey(seed) => o.nkey(seed.clone()),
    }
}

fn server_addrs(urls: &[String]) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.iter()
        .map(|u| u.parse().map_err(|e| format!("{u}: {e}")))
        .collect()
}

/// Starts the cluster thread. Returns the link for ingest, the updates of the whole bucket as it
/// is now (to load before serving; empty when NATS could not be reached within `load_timeout`),
/// and the thread.
pub(crate) fn start(
    config: ClusterConfig,
    stats: Arc<crate::Stats>,
    stop: Arc<AtomicBool>,
    wake: zmq::Socket,
    forget_after: Duration,
    load_timeout: Duration,
    relay: Option<relay::RelayEnds>,
) -> std::io::Result<(ClusterLink, Vec<Vec<u8>>, std::thread::JoinHandle<()>)> {
    let secret = read_secret(&config.auth)?;
    let addrs = server_addrs(&config.urls)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<Outgoing>>();
    let (in_tx, in_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(65_536);
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Vec<Vec<u8>>>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("thingsbus-cluster")
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("thingsbus-cluster".into())
        .spawn(move || {
            let pending: Arc<Mutex<HashMap<String, Arc<[u8]>>>> = Arc::default();
            // Local updates are merged into `pending` as they come, never waiting for NATS.
            let merger = {
                let pending = pending.clone();
                let stats = stats.clone();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("thingsbus-conflate".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(batch) = out_rx.recv_timeout(Duration::from_millis(100)) else {
                                continue;
                            };
                            let mut p = pending
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            for (ns, bytes) in batch {
                                if p.insert(ns, bytes).is_some() {
                                    stats::add(&stats.cluster.conflated, 1);
                                }
                            }
                            stats::set(&stats.cluster.pending, p.len() as u64);
                        }
                    })
            };
            let relay = relay.map(|ends| {
                runtime.spawn(start_relay(
                    config.clone(),
                    secret.clone(),
                    addrs,
                    ends,
                    stop.clone(),
                ))
            });
            let bucket = Bucket {
                config,
                secret,
                stats,
                stop,
                pending,
                incoming: in_tx,
                wake: Mutex::new(wake),
                forget_after,
            };
            runtime.block_on(bucket.run(loaded_tx));
            if let Ok(m) = merger {
                let _ = m.join();
            }
            // The relay withdraws this broker's routes before it goes.
            if let Some(relay) = relay {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
                });
            }
            runtime.shutdown_timeout(Duration::from_millis(200));
        })?;
    let loaded = loaded_rx.recv_timeout(load_timeout).unwrap_or_else(|_| {
        tracing::warn!("the cluster could not be loaded in time; serving locally and catching up when NATS answers");
        Vec::new()
    });
    Ok((
        ClusterLink {
            out: out_tx,
            incoming: in_rx,
        },
        loaded,
        thread,
    ))
}

/// The relay's own connection: it lives as long as the broker (the client reconnects by itself),
/// apart from the bucket's sessions, which restart on errors.
async fn start_relay(
    config: ClusterConfig,
    secret: Secret,
    addrs: Vec<async_nats::ServerAddr>,
    ends: relay::RelayEnds,
    stop: Arc<AtomicBool>,
) {
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let client = connect_options(&secret, &config.node_name)
        .retry_on_initial_connect()
        .event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(addrs)
        .await;
    match client {
        Ok(client) => {
            relay::run(
                client,
                config.bucket,
                config.node_name,
                ends,
                events_rx,
                stop,
            )
            .await;
        }
        Err(e) => tracing::error!(error = %e, "cannot connect the cluster's command relay"),
    }
}

/// The bucket's side of the cluster thread: what every session (one NATS connection) shares.
struct Bucket {
    config: ClusterConfig,
    secret: Secret,
    stats: Arc<crate::Stats>,
    stop: Arc<AtomicBool>,
    /// Newest unwritten value per thing.
    pending: Arc<Mutex<HashMap<String, Arc<[u8]>>>>,
    /// Other brokers' updates, to ingest (woken through `wake`).
    incoming: SyncSender<Vec<u8>>,
    wake: Mutex<zmq::Socket>,
    forget_after: Duration,
}

impl Bucket {
    /// Sessions, one after the other, until the broker stops. `loaded` takes the bucket as the
    /// first session finds it.
    async fn run(self, loaded: Sender<Vec<Vec<u8>>>) {
        let mut loaded = Some(loaded);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.session(&mut loaded).await {
                stats::set(&self.stats.cluster.connected, 0);
                tracing::warn!(error = %e, "cluster link down; serving locally, retrying in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// One connection to NATS: set up the bucket, load it, then write and watch until it fails.
    async fn session(&self, loaded: &mut Option<Sender<Vec<Vec<u8>>>>) -> Result<(), String> {
        let Bucket {
            config,
            secret,
            stats,
            stop,
            pending,
            incoming,
            wake,
            forget_after,
        } = self;
        let forget_after = *forget_after;
        let addrs = server_addrs(&config.urls)?;
        let client = connect_options(secret, &config.node_name)
            .connect(addrs)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", config.urls.join(",")))?;
        let js = async_nats::jetstream::new(client);
        let bucket = &config.bucket;
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: forget_after,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            num_replicas: config.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the bucket's stream KV_{bucket}: {e}"))?;
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| format!("cannot open the bucket {bucket}: {e}"))?;
        stats::set(&stats.cluster.connected, 1);
        tracing::info!(bucket = %bucket, node = %config.node_name, "cluster link up");

        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| format!("cannot watch the bucket: {e}"))?;
        // Into ingest's bounded queue; when it is full, wait for ingest to take some (nothing that
        // other brokers wrote is dropped here).
        let deliver = |bytes: Vec<u8>| async move {
            let mut bytes = bytes;
            loop {
                let sent = incoming.try_send(bytes);
                {
                    let w = wake
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let _ = w.send(&b"c"[..], zmq::DONTWAIT);
                }
                match sent {
                    Ok(()) | Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                    Err(std::sync::mpsc::TrySendError::Full(b)) => {
                        bytes = b;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        };
        let others = |e: &async_nats::jetstream::kv::Entry| -> Option<Vec<u8>> {
            if e.operation != async_nats::jetstream::kv::Operation::Put {
                return None;
            }
            let v: Value<'_> = serde_json::from_slice(&e.value).ok()?;
            (v.o != config.node_name).then(|| v.u.get().as_bytes().to_vec())
        };
        // First the bucket as it is: before this broker serves, if it is starting.
        let status = kv
            .status()
            .await
            .map_err(|e| format!("bucket status: {e}"))?;
        let mut initial = Vec::new();
        if status.values() > 0 {
            while let Some(entry) = watch.next().await {
                let e = entry.map_err(|e| format!("watch: {e}"))?;
                if let Some(u) = others(&e) {
                    initial.push(u);
                }
                if e.delta == 0 || e.seen_current {
                    break;
                }
            }
        }
        // Before the broker serves, the load goes to its start; later (a reconnect, or a start that
        // gave up waiting) it goes to ingest like any other update.
        let initial = match loaded.take() {
            Some(tx) => tx.send(initial).err().map(|e| e.0).unwrap_or_default(),
            None => initial,
        };
        for u in initial {
            deliver(u).await;
        }

        // Every value starts the same: `{"o":"<node>","u":`.
        let value_head = format!(
            r#"{{"o":{},"u":"#,
            serde_json::Value::String(config.node_name.clone())
        );
        let mut flush = tokio::time::interval(config.flush.max(Duration::from_millis(1)));
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(e)) => {
                        if let Some(u) = others(&e) {
                            deliver(u).await;
                        }
                    }
                    Some(Err(e)) => return Err(format!("watch: {e}")),
                    None => return Err("the watch ended".into()),
                },
                _ = flush.tick() => {
                    let batch: Vec<(String, Arc<[u8]>)> = {
                        let mut p = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        p.drain().collect()
                    };
                    for (i, (ns, bytes)) in batch.iter().enumerate() {
                        let mut value = Vec::with_capacity(value_head.len() + bytes.len() + 1);
                        value.extend_from_slice(value_head.as_bytes());
                        value.extend_from_slice(bytes);
                        value.push(b'}');
                        if let Err(e) = kv.put(ns, value.into()).await {
                            stats::add(&stats.cluster.write_errors, 1);
                            // Keep what did not go out, unless a newer value came meanwhile.
                            let mut p = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            for (ns, bytes) in batch.into_iter().skip(i) {
                                p.entry(ns).or_insert(bytes);
                            }
                            stats::set(&stats.cluster.pending, p.len() as u64);
                            return Err(format!("write failed: {e}"));
                        }
                        stats::add(&stats.cluster.writes, 1);
                    }
                    let left = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
                    stats::set(&stats.cluster.pending, left as u64);
                }
            }
        }
    }
}
