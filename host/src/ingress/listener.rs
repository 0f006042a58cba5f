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
    service: impl Fn(SocketAddr) -> S,
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
        let conn = http1::Builder::new()
            .keep_alive(true)
            // A client gets this long to send a request's headers (slowloris).
            .timer(TokioTimer::new())
            .header_read_timeout(caps.header_timeout)
            .serve_connection(TokioIo::new(stream), service(peer));
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
