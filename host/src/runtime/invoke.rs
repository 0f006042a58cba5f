//! One request through one guest: a fresh store from the version's `ProxyPre`, the
//! budget set, the handler called, and the outcome classified for the client, the
//! log and the usage counters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::ProxyPre;
use tracing::Instrument;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use super::guest::{GuestState, RequestIdentity};
use super::reuse::{Keeper, Kept, Reuse, Sandbox};
use super::Runtime;

/// Why a guest did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFailure {
    /// The request used its whole fuel budget.
    OutOfFuel,
    /// The request ran past its wall-clock deadline.
    Timeout,
    /// The guest tried to grow its memory past the cap and then failed.
    MemoryLimit,
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    Trap(String),
    /// Every instance slot of the node is busy.
    AtCapacity,
    /// The guest returned without ever setting a response.
    NoResponse,
    /// The host failed to set up the request (a bug, not the guest's fault).
    Host(String),
    /// The client went away before the guest finished; it was stopped.
    Abandoned,
}

impl GuestFailure {
    /// The status the client gets, with a short body that explains it.
    pub fn status_and_message(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode as S;
        match self {
            Self::OutOfFuel => (S::SERVICE_UNAVAILABLE, "the service used up its compute budget for this request\n"),
            Self::Timeout => (S::GATEWAY_TIMEOUT, "the service did not answer in time\n"),
            Self::MemoryLimit => (S::INTERNAL_SERVER_ERROR, "the service exceeded its memory limit\n"),
            Self::Trap(_) => (S::INTERNAL_SERVER_ERROR, "the service failed while handling the request\n"),
            Self::AtCapacity => (S::SERVICE_UNAVAILABLE, "the node is at capacity, retry shortly\n"),
            Self::NoResponse => (S::INTERNAL_SERVER_ERROR, "the service returned no response\n"),
            Self::Host(_) => (S::INTERNAL_SERVER_ERROR, "internal error\n"),
            Self::Abandoned => (S::BAD_REQUEST, "the client went away\n"),
        }
    }
}

/// What one guest run cost and how it ended; reported once the guest finishes,
/// which for a streamed body is after the response started.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Fuel the request consumed.
    pub fuel: u64,
    /// `None` when the guest ran to completion.
    pub failure: Option<GuestFailure>,
}

/// The result of [`Runtime::handle`]: the response (or the failure that prevented
/// one) and a handle to the final outcome.
pub enum Handled {
    /// The guest set a response; its body may still be streaming.
    Response(hyper::Response<HyperOutgoingBody>),
    /// The guest failed before answering.
    Failed(GuestFailure),
}

/// How a guest is told heavy from light without a system call per poll: its
/// polls on the request threads are timed with the monotonic clock (read in user
/// space), and only a guest whose polls add up to [`SUSPECT_AFTER_NANOS`] of wall
/// time has its following polls timed with the thread's CPU clock (a system
/// call), so a light guest the kernel happened to preempt is not mistaken for a
/// heavy one. Past [`DEMOTE_AFTER_CPU_NANOS`] of CPU measured that way, it moves
/// to the low-priority threads: a hello uses tens of microseconds in all.
/// (Fuel would do, but compiled code keeps its fuel counter in a register,
/// where the epoch callback cannot read it.)
const SUSPECT_AFTER_NANOS: u64 = 1_000_000;
const DEMOTE_AFTER_CPU_NANOS: u64 = 1_000_000;

impl Runtime {
    /// Run `pre`'s guest on `req`. `on_done` receives the outcome once the guest has
    /// finished, whether or not the response was already sent, and even when the
    /// client went away first.
    #[allow(clippy::too_many_arguments)]
    pub async fn handle<B>(
        &self,
        pre: &ProxyPre,
        who: RequestIdentity,
        context: super::GuestContext,
        req: hyper::Request<B>,
        recent: &Arc<crate::sched::RecentUse>,
        reuse: Option<Reuse>,
        on_done: impl FnOnce(&RequestIdentity, Outcome) + Send + 'static,
    ) -> Handled
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let budget = self.limits.fuel_per_request;
        let timeout = self.limits.request_timeout;
        let deadline = Instant::now() + timeout;
        // A sandbox this instance left behind, made this request's; or a fresh one.
        let (mut store, reused, served) = match reuse.as_ref().and_then(|r| self.sandboxes.take(r)) {
            Some(sandbox) => {
                let Sandbox { mut store, proxy, served, .. } = sandbox;
                store.data_mut().begin_request(&who, deadline, context);
                if let Err(e) = store.set_fuel(budget) {
                    return Handled::Failed(GuestFailure::Host(format!("failed to set fuel: {e:#}")));
                }
                store.set_epoch_deadline(1);
                (store, Some(proxy), served)
            }
            None => match self.store_for(pre, &who, context, deadline) {
                Ok(store) => (store, None, 0),
                Err(failure) => return Handled::Failed(failure),
            },
        };
        let abandoned = store.data().abandoned.clone();
        let demote = Arc::new(tokio::sync::Notify::new());

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| -> wasmtime::Result<_> {
            let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(pair) => pair,
            Err(e) => return Handled::Failed(GuestFailure::Host(format!("{e:#}"))),
        };

        let pre = pre.clone();
        let keeper = reuse.as_ref().map(|_| Arc::new(Keeper::new(self.sandboxes.clone())));
        let keeps = keeper.clone();
        // The guest's span is current whenever it runs: platform calls nest in it.
        let span = who.span.clone();
        span.record("wharf.reused", reused.is_some());
        let starts = self.starts.clone();
        let guest = async move {
            // The tokio timeout also covers time spent blocked in host calls, where
            // epochs cannot interrupt.
            let run = tokio::time::timeout(timeout, async {
                let proxy = match reused {
                    Some(proxy) => {
                        starts.reused.fetch_add(1, Ordering::Relaxed);
                        proxy
                    }
                    None => {
                        let started = Instant::now();
                        let proxy = pre
                            .instantiate_async(&mut store)
                            .instrument(crate::telemetry::child_span!("instantiate"))
                            .await?;
                        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        starts.fresh.fetch_add(1, Ordering::Relaxed);
                        starts.fresh_nanos.fetch_add(nanos, Ordering::Relaxed);
                        proxy
                    }
                };
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await?;
                wasmtime::Result::Ok(proxy)
            })
            .await;
            // Host-call fuel the store could not take (past the budget) is billed
            // too, up to the budget.
            let owed = store.data().host_fuel_debt;
            let fuel = budget.saturating_sub(store.get_fuel().unwrap_or(0)).saturating_add(owed).min(budget);
            let (failure, proxy) = match run {
                Ok(Ok(proxy)) => (None, Some(proxy)),
                Ok(Err(e)) => (Some(classify(&e, store.data().limiter.hit)), None),
                Err(_elapsed) => (Some(GuestFailure::Timeout), None),
            };
            let failure = match failure {
                Some(_) if store.data().abandoned.load(Ordering::Relaxed) => Some(GuestFailure::Abandoned),
                other => other,
            };
            store.data_mut().end_request();
            // Only a sandbox whose request ended well, never near its memory
            // cap, and whose guest answered, serves its instance again.
            if let (Some(reuse), Some(keeper), Some(proxy), None) = (reuse, keeps, proxy, &failure) {
                if !store.data().limiter.hit {
                    keeper.finished(Kept { reuse, tenant: who.tenant.clone(), store, proxy, served: served + 1 });
                }
            }
            let outcome = Outcome { fuel, failure };
            on_done(&who, outcome.clone());
            outcome
        }
        .instrument(span);

        // Run the guest on this task: most guests answer and finish in one go, and
        // staying here saves a cross-thread hand-off per request. A guest still
        // streaming its body after answering moves to a task of its own; one that
        // computes past `SUSPECT_AFTER_NANOS` + `DEMOTE_AFTER_CPU_NANOS` moves to
        // the low-priority threads. Its time inside polls, on whichever
        // threads, counts toward its instance's share of the node's.
        let guest = crate::sched::Charged::new(guest, recent.clone(), self.guest_time.clone());
        let guest = GuestTask {
            future: Some(Box::pin(guest)),
            abandoned,
            wall_nanos: 0,
            cpu_nanos: None,
            demote: Some(demote.clone()),
        };
        self.drive(guest, receiver, demote, recent, keeper).await
    }

    /// A store for one request: its budget, its memory limits, and its
    /// deadline checked at every epoch tick.
    fn store_for(
        &self,
        pre: &ProxyPre,
        who: &RequestIdentity,
        context: super::GuestContext,
        deadline: Instant,
    ) -> Result<Store<GuestState>, GuestFailure> {
        let mut store =
            Store::new(pre.engine(), GuestState::new(who, &self.limits, self.memory.clone(), deadline, context));
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(self.limits.fuel_per_request)
            .map_err(|e| GuestFailure::Host(format!("failed to set fuel: {e:#}")))?;
        // At every tick: past the deadline (or with nobody waiting), interrupt;
        // otherwise yield, so a guest that never calls the host still lets other
        // requests run. (Fuel cannot be changed here: compiled code keeps its fuel
        // counter across this callback. Host-call time is charged when each
        // platform call returns, see `platform`.)
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline || state.abandoned.load(Ordering::Relaxed) {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    /// Run the guest until it answers (or fails first); a guest still running
    /// after answering goes on in a task of its own.
    async fn drive(
        &self,
        mut guest: GuestTask,
        mut receiver: tokio::sync::oneshot::Receiver<Result<hyper::Response<HyperOutgoingBody>, ErrorCode>>,
        demote: Arc<tokio::sync::Notify>,
        recent: &crate::sched::RecentUse,
        keeper: Option<Arc<Keeper>>,
    ) -> Handled {
        let answered = || {
            if let Some(keeper) = &keeper {
                keeper.answered();
            }
        };
        let mut moved = false;
        // An instance whose requests were CPU-heavy lately starts there at once.
        if recent.is_heavy() {
            if let Some(heavy) = &self.heavy {
                guest.move_to(heavy);
                moved = true;
            }
        }
        loop {
            tokio::select! {
                biased;
                outcome = &mut guest => return match receiver.try_recv() {
                    Ok(Ok(response)) => {
                        answered();
                        Handled::Response(response)
                    }
                    Ok(Err(code)) => Handled::Failed(GuestFailure::Trap(format!("guest answered with error {code:?}"))),
                    Err(_) => Handled::Failed(outcome.failure.unwrap_or(GuestFailure::NoResponse)),
                },
                answer = &mut receiver => return match answer {
                    Ok(Ok(response)) => {
                        answered();
                        tokio::spawn(guest);
                        Handled::Response(response)
                    }
                    Ok(Err(code)) => {
                        tokio::spawn(guest);
                        Handled::Failed(GuestFailure::Trap(format!("guest answered with error {code:?}")))
                    }
                    // The outparam was dropped unset: the guest failed or returned early.
                    Err(_) => Handled::Failed(guest.await.failure.unwrap_or(GuestFailure::NoResponse)),
                },
                _ = demote.notified() => {
                    recent.mark_heavy();
                    if !moved {
                        moved = true;
                        if let Some(heavy) = &self.heavy {
                            guest.move_to(heavy);
                        }
                    }
                }
            }
        }
    }
}

/// A guest's run, owned by the request that waits for it. Dropped before it
/// finished (the client went away), it is not cancelled mid-call: it is told to
/// stop at the next tick and finishes on a task of its own, so its usage is still
/// recorded and its database calls end cleanly.
struct GuestTask {
    future: Option<Pin<Box<dyn Future<Output = Outcome> + Send>>>,
    abandoned: Arc<AtomicBool>,
    /// Wall time inside this task's polls on the request threads.
    wall_nanos: u64,
    /// CPU time inside its polls since `wall_nanos` passed [`SUSPECT_AFTER_NANOS`].
    cpu_nanos: Option<u64>,
    /// Told once `cpu_nanos` passes [`DEMOTE_AFTER_CPU_NANOS`].
    demote: Option<Arc<tokio::sync::Notify>>,
}

impl GuestTask {
    /// Continue the run on the heavy guests' threads.
    fn move_to(&mut self, heavy: &super::heavy::Heavy) {
        self.demote = None;
        if let Some(future) = self.future.take() {
            let outcome = heavy.spawn(future);
            self.future = Some(Box::pin(async move {
                outcome.await.unwrap_or_else(|_| Outcome {
                    fuel: 0,
                    failure: Some(GuestFailure::Host("the guest's task ended without an outcome".into())),
                })
            }));
        }
    }
}

impl Future for GuestTask {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let metered = this.demote.is_some();
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(Outcome {
                fuel: 0,
                failure: Some(GuestFailure::Host("polled after completion".into())),
            });
        };
        let polled = if !metered {
            future.as_mut().poll(cx)
        } else if let Some(cpu) = this.cpu_nanos {
            let started = crate::sched::thread_cpu_nanos();
            let polled = future.as_mut().poll(cx);
            let cpu = cpu + crate::sched::thread_cpu_nanos().saturating_sub(started);
            this.cpu_nanos = Some(cpu);
            if cpu >= DEMOTE_AFTER_CPU_NANOS {
                if let Some(demote) = this.demote.take() {
                    demote.notify_one();
                }
            }
            polled
        } else {
            let started = Instant::now();
            let polled = future.as_mut().poll(cx);
            this.wall_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if this.wall_nanos >= SUSPECT_AFTER_NANOS {
                this.cpu_nanos = Some(0);
            }
            polled
        };
        let outcome = std::task::ready!(polled);
        this.future = None;
        Poll::Ready(outcome)
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            self.abandoned.store(true, Ordering::Relaxed);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(future);
            }
        }
    }
}

pub(crate) fn classify(err: &wasmtime::Error, memory_cap_hit: bool) -> GuestFailure {
    if err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return GuestFailure::AtCapacity;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => GuestFailure::OutOfFuel,
        Some(Trap::Interrupt) => GuestFailure::Timeout,
        _ if memory_cap_hit => GuestFailure::MemoryLimit,
        _ => GuestFailure::Trap(format!("{err:?}")),
    }
}
