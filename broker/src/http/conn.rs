//! Connections of the HTTP side: accepted here, wrapped so that a write stuck for the write
//! timeout fails (a client that does not read is dropped, and all it pinned with it), and with
//! `--http-tls-cert` put through a TLS handshake first, off the accept loop.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::stats::Stats;

/// A TLS handshake must end within this, or the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once; connections beyond wait in the kernel's backlog.
const HANDSHAKES: usize = 256;
/// Connections open at once; more wait in the kernel's backlog. Well below the usual limit of
/// 1,024 open files, so that HTTP clients cannot take the descriptors the broker's other
/// sockets need.
const CONNECTIONS: usize = 512;

/// A socket whose writes fail with `TimedOut` once one has waited for `timeout`: a peer that
/// stops reading fills its window and then this, instead of holding the connection forever.
pub(super) struct Timed {
    io: TcpStream,
    timeout: Duration,
    /// Armed while a write waits.
    stuck: Option<Pin<Box<Sleep>>>,
    stats: Arc<Stats>,
    /// Its place among [`CONNECTIONS`], given back when it closes.
    _place: OwnedSemaphorePermit,
}

impl Timed {
    fn new(
        io: TcpStream,
        timeout: Duration,
        stats: Arc<Stats>,
        place: OwnedSemaphorePermit,
    ) -> Timed {
        Timed {
            io,
            timeout,
            stuck: None,
            stats,
            _place: place,
        }
    }

    /// What a write that returned `r` leaves: progress disarms the timer, waiting arms it (once),
    /// and a wait beyond the timeout becomes an error.
    fn judge<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stuck = None;
            return r;
        }
        let timeout = self.timeout;
        let timer = self
            .stuck
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats
                    .http_write_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!("closing an HTTP connection whose client does not read");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for the write timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.judge(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.judge(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.judge(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One accepted connection: plain, or TLS over the timed socket.
pub(super) enum Io {
    Plain(Timed),
    Tls(Box<TlsStream<Timed>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The listener axum serves from: connections come from a task that accepts and, with TLS,
/// hands each to its own handshake task, so a slow handshake holds up nobody else.
pub(super) struct Listener {
    ready: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl Listener {
    /// Starts accepting on `tcp` (on the current runtime).
    pub(super) fn start(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        write_timeout: Duration,
        stats: Arc<Stats>,
    ) -> io::Result<Listener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, write_timeout, stats, tx));
        Ok(Listener { ready, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    write_timeout: Duration,
    stats: Arc<Stats>,
    tx: mpsc::Sender<(Io, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    let places = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = match tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "HTTP endpoint could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let timed = Timed::new(socket, write_timeout, stats.clone(), place);
        match &tls {
            None => {
                if tx.send((Io::Plain(timed), peer)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let done =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(timed)).await;
                    drop(permit);
                    match done {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Io::Tls(Box::new(stream)), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended with the runtime: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The address of the peer of a request (axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer(pub(super) SocketAddr);

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Reads `--http-tls-cert` and `--http-tls-key` into a TLS acceptor (ring provider).
pub(super) fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    tls_acceptor_for(cert, key, "--http")
}

/// Reads a certificate chain and its key (PEM), given with `<flags>-tls-cert` and
/// `<flags>-tls-key` (which the errors name), into a TLS acceptor (ring provider).
///
/// # Errors
/// A file that cannot be read, holds no PEM certificate or key, or a key that does not fit.
pub fn tls_acceptor_for(
    cert: &std::path::Path,
    key: &std::path::Path,
    flags: &str,
) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{flags}-tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{flags}-tls-cert {}: no PEM certificate in it (it should hold -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{flags}-tls-key {}: no PEM private key read: {e}",
            key.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("{flags}-tls-cert and {flags}-tls-key do not fit together: {e}"))?;
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
