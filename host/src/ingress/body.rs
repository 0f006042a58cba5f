//! Request bodies under a clock: a client that sends its body too slowly is cut
//! off, and the first part of every body is read before a guest is started, so a
//! client that trickles holds a connection, never a guest slot.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest pause between two frames; also the grace before the rate counts.
    pub idle: Duration,
    /// Slowest average rate after the grace, in bytes per second.
    pub min_rate: u64,
}

/// A request body that fails with a timeout when the client stalls or trickles,
/// with the frames read ahead of the guest replayed first.
pub struct PacedBody {
    ahead: VecDeque<Frame<Bytes>>,
    ahead_bytes: usize,
    rest: Option<Incoming>,
    pace: BodyPace,
    started: Instant,
    received: u64,
    /// Only for a body still to arrive: a request without one (most `GET`s)
    /// arms no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl PacedBody {
    pub fn new(body: Incoming, pace: BodyPace) -> Self {
        let started = Instant::now();
        let rest = if body.is_end_stream() { None } else { Some(body) };
        let timer = rest.as_ref().map(|_| Box::pin(tokio::time::sleep_until(started + pace.idle)));
        Self { ahead: VecDeque::new(), ahead_bytes: 0, rest, pace, started, received: 0, timer }
    }

    /// When the body must have made more progress: the idle pause from now, but
    /// never later than the minimum rate allows for what has arrived.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let rate = self.pace.min_rate.max(1);
        let earned = self.started + self.pace.idle + Duration::from_millis(self.received.saturating_mul(1000) / rate);
        (now + self.pace.idle).min(earned.max(now))
    }

    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(rest) = self.rest.as_mut() else { return Poll::Ready(None) };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                let deadline = self.next_deadline();
                if let Some(timer) = self.timer.as_mut() {
                    timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.rest = None;
                Poll::Ready(Some(Err(Error::Hyper(e))))
            }
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => match self.timer.as_mut().map_or(Poll::Pending, |timer| timer.as_mut().poll(cx)) {
                Poll::Ready(()) => {
                    self.rest = None;
                    Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Read ahead until `bytes` have arrived or the body ended. `Err` when the
    /// client was too slow or the connection failed.
    pub async fn read_ahead(&mut self, bytes: usize) -> Result<(), Error> {
        while self.ahead_bytes < bytes && self.rest.is_some() {
            match std::future::poll_fn(|cx| self.poll_rest(cx)).await {
                Some(Ok(frame)) => {
                    self.ahead_bytes += frame.data_ref().map_or(0, |d| d.len());
                    self.ahead.push_back(frame);
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(frame) = self.ahead.pop_front() {
            self.ahead_bytes -= frame.data_ref().map_or(0, |d| d.len());
            return Poll::Ready(Some(Ok(frame)));
        }
        self.poll_rest(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead_bytes as u64;
        match &self.rest {
            None => SizeHint::with_exact(ahead),
            Some(rest) => {
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(ahead));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(ahead));
                }
                hint
            }
        }
    }
}
