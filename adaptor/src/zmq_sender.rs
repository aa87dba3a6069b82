//! The ZMQ side of an adaptor: a bounded queue drained by a thread that owns an XPUB socket.
//!
//! XPUB rather than PUB because it hears the broker's subscription: updates wait in the queue
//! until a broker is connected (PUB would silently drop them), which covers both the start-up
//! race and broker restarts.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thingsbus_protocol::transport;

use crate::Error;

/// Counters shared between the handle and the thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

struct Shared {
    queue: Mutex<VecDeque<Vec<u8>>>,
    emptied: Condvar,
    capacity: usize,
    counters: Arc<Counters>,
    closing: AtomicBool,
    connected: AtomicBool,
    close_deadline: Mutex<Option<Instant>>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        // A panic while holding this lock leaves a valid queue behind; keep going.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct ZmqSender {
    shared: Arc<Shared>,
    wake: UnixDatagram,
    thread: transport::Worker,
}

impl ZmqSender {
    /// Connects to the first of `urls`; with several, moves to the next when a broker stays
    /// unreachable for `failover_timeout`.
    pub(crate) fn start(
        urls: Vec<String>,
        failover_timeout: Duration,
        capacity: usize,
        counters: Arc<Counters>,
        curve: Option<&transport::ClientKeys>,
    ) -> Result<Self, Error> {
        let url = urls.first().cloned().ok_or(Error::NoTarget)?;
        let ctx = zmq::Context::new();
        let socket = ctx
            .socket(zmq::XPUB)
            .map_err(transport::doing("creating the socket"))?;
        socket
            .set_sndhwm(i32::try_from(capacity).unwrap_or(i32::MAX))
            .map_err(transport::doing("setting the high-water mark"))?;
        socket
            .set_ipv6(true)
            .map_err(transport::doing("enabling IPv6"))?;
        // Only completed connections get a pipe, and a lost connection ends its pipe, so the
        // broker's going away shows up as an unsubscription: updates then wait in our own
        // queue (drop-oldest, counted) instead of libzmq's (drop-newest, silent).
        socket
            .set_immediate(true)
            .map_err(transport::doing("setting ZMQ_IMMEDIATE"))?;
        socket
            .set_reconnect_ivl_max(5_000)
            .map_err(transport::doing("setting the reconnect interval"))?;
        if let Some(keys) = curve {
            transport::curve_client(&socket, keys)?;
        }
        transport::connect(&socket, "broker input", &url)?;
        let (wake, wake_rx) = UnixDatagram::pair().map_err(Error::Thread)?;
        wake.set_nonblocking(true).map_err(Error::Thread)?;
        wake_rx.set_nonblocking(true).map_err(Error::Thread)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            emptied: Condvar::new(),
            capacity,
            counters,
            closing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            close_deadline: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("thingsbus-adaptor".into())
            .spawn(move || run(socket, ctx, wake_rx, thread_shared, urls, failover_timeout))
            .map_err(Error::Thread)?;
        Ok(ZmqSender {
            shared,
            wake,
            thread: transport::Worker::new(thread),
        })
    }

    pub(crate) fn push(&self, msg: Vec<u8>) -> Result<(), Error> {
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let was_empty = {
            let mut q = self.shared.queue();
            if q.len() >= self.shared.capacity {
                q.pop_front();
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(msg);
            q.len() == 1
        };
        if was_empty {
            // Non-blocking; if the socket buffer is full the thread has wake-ups pending anyway.
            let _ = self.wake.send(&[1]);
        }
        Ok(())
    }

    pub(crate) fn queued(&self) -> usize {
        self.shared.queue().len()
    }

    pub(crate) fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Waits until the queue is empty (every update handed to libzmq), at most `timeout`.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.queue();
        while !q.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .shared
                .emptied
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    /// Stops taking updates, delivers what is queued for at most `timeout`, and stops the thread.
    /// Returns true when nothing was left undelivered.
    pub(crate) fn close(&self, timeout: Duration) -> bool {
        *self
            .shared
            .close_deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + timeout);
        self.shared.closing.store(true, Ordering::Relaxed);
        let _ = self.wake.send(&[1]);
        self.thread.join();
        self.shared.queue().is_empty()
    }
}

impl Drop for ZmqSender {
    fn drop(&mut self) {
        self.close(Duration::from_secs(1));
    }
}

fn run(
    socket: zmq::Socket,
    ctx: zmq::Context,
    wake: UnixDatagram,
    shared: Arc<Shared>,
    urls: Vec<String>,
    failover_timeout: Duration,
) {
    let mut buf = [0u8; 64];
    let mut current = 0;
    let mut url = urls[0].clone();
    let mut unreachable_since = Some(Instant::now());
    loop {
        if urls.len() > 1 && unreachable_since.is_some_and(|t| t.elapsed() > failover_timeout) {
            let _ = socket.disconnect(&url);
            current = (current + 1) % urls.len();
            let next = urls[current].clone();
            tracing::warn!(from = %url, to = %next, "broker unreachable; moving to the next one in the SRV list");
            if let Err(e) = socket.connect(&next) {
                tracing::error!(to = %next, error = %e, "cannot connect");
            }
            url = next;
            unreachable_since = Some(Instant::now());
        }

        let closing = shared.closing.load(Ordering::Relaxed);
        let deadline = *shared
            .close_deadline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if closing && (shared.queue().is_empty() || deadline.is_none_or(|d| Instant::now() >= d)) {
            break;
        }
        let timeout_ms = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(100) as i64,
            None => 100,
        };
        let mut items = [
            socket.as_poll_item(zmq::POLLIN),
            zmq::PollItem::from_fd(wake.as_raw_fd(), zmq::POLLIN),
        ];
        if let Err(e) = zmq::poll(&mut items, timeout_ms) {
            if e != zmq::Error::EINTR {
                tracing::error!(error = %e, "adaptor poll failed; stopping");
                break;
            }
        }
        while wake.recv(&mut buf).is_ok() {}
        // Subscription messages: 1 = a broker subscribed, 0 = it went away.
        while let Ok(msg) = socket.recv_bytes(zmq::DONTWAIT) {
            let now_connected = msg.first() == Some(&1);
            let was = shared.connected.swap(now_connected, Ordering::Relaxed);
            if now_connected != was {
                unreachable_since = (!now_connected).then(Instant::now);
                if now_connected {
                    tracing::debug!(%url, "broker connected");
                } else {
                    tracing::info!(%url, "broker went away; queueing updates until it is back");
                }
            }
        }
        if shared.connected.load(Ordering::Relaxed) {
            let mut q = shared.queue();
            while let Some(msg) = q.pop_front() {
                // XPUB does not block; at its high-water mark it drops, which the queue bound
                // makes unlikely.
                match socket.send(msg, zmq::DONTWAIT) {
                    Ok(()) => {
                        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "adaptor send failed");
                    }
                }
            }
            shared.emptied.notify_all();
        }
    }
    // Give libzmq the rest of the close deadline to put queued bytes on the wire.
    let linger = shared
        .close_deadline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
    let _ = socket.set_linger(i32::try_from(linger.as_millis()).unwrap_or(i32::MAX));
    drop(socket);
    drop(ctx);
}
