//! Accepting connections within caps: node-wide and per client address, a header
//! timeout, and a graceful drain. Both listeners (ingress and admin API) use it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The addresses a node listens on (with the ports actually bound).
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
}

/// How many connections a listener holds open.
#[derive(Clone)]
pub struct ConnectionCaps {
    total: Arc<Semaphore>,
    per_ip: usize,
    by_ip: Arc<DashMap<IpAddr, usize>>,
    header_timeout: Duration,
}

impl ConnectionCaps {
    /// At most `total` connections, `per_ip` from one address, each given
    /// `header_timeout` to send a request's headers.
    pub fn new(total: usize, per_ip: usize, header_timeout: Duration) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_ip: per_ip.max(1),
            by_ip: Arc::new(DashMap::new()),
            header_timeout,
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        {
            let mut count = self.by_ip.entry(ip).or_insert(0);
            if *count >= self.per_ip {
                return None;
            }
            *count += 1;
        }
        Some(Admitted { _permit: permit, by_ip: self.by_ip.clone(), ip })
    }
}

/// One admitted connection; gives its place back when dropped.
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    by_ip: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.by_ip.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Serve HTTP/1 connections from `listener` until `shutdown` turns true, then let
/// in-flight requests finish (up to `grace`). Connections beyond `caps` are
/// closed at once.
pub async fn serve<S, B>(
    name: &'static str,
    listener: TcpListener,
    caps: ConnectionCaps,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    service: impl Fn(SocketAddr, Arc<AfterFlush>) -> S,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(admitted) = caps.admit(peer.ip()) else {
            tracing::debug!(listener = name, %peer, "connection refused: at the connection cap");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let after_flush = Arc::new(AfterFlush::default());
        let io = FlushIo { inner: TokioIo::new(stream), after_flush: after_flush.clone() };
        let conn = http1::Builder::new()
            .keep_alive(true)
            // A client gets this long to send a request's headers (slowloris).
            .timer(TokioTimer::new())
            .header_read_timeout(caps.header_timeout)
            .serve_connection(io, service(peer, after_flush));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %peer, "connection ended: {e}");
            }
            drop(admitted);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = name, "drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(listener = name, "shutdown grace period elapsed with requests in flight"),
    }
}

/// What to do once everything a connection has written so far has been handed
/// to the kernel (hyper flushes after each response): the ingress counts a
/// request's usage there, so a node killed before a response left bills
/// nothing for it. What is still pending when the connection ends runs then.
#[derive(Default)]
pub struct AfterFlush {
    pending: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl AfterFlush {
    /// Run `work` after the connection's next flush.
    pub fn push(&self, work: Box<dyn FnOnce() + Send>) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(work);
    }

    fn run(&self) {
        let work = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for w in work {
            w();
        }
    }
}

impl Drop for AfterFlush {
    fn drop(&mut self) {
        self.run();
    }
}

/// A connection's IO that runs its [`AfterFlush`] work on every completed flush.
struct FlushIo<T> {
    inner: T,
    after_flush: Arc<AfterFlush>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for FlushIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for FlushIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, std::task::Poll::Ready(Ok(()))) {
            self.after_flush.run();
        }
        flushed
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
