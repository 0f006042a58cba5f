//! One request through one guest: a fresh store from the version's `ProxyPre`, the
//! budget set, the handler called, and the outcome classified for the client, the
//! log and the usage counters.

use std::time::Instant;

use super::ProxyPre;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use super::guest::{GuestState, RequestIdentity};
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

impl Runtime {
    /// Run `pre`'s guest on `req`. `on_done` receives the outcome once the guest has
    /// finished, whether or not the response was already sent.
    pub async fn handle<B>(
        &self,
        pre: &ProxyPre,
        who: RequestIdentity,
        context: super::GuestContext,
        req: hyper::Request<B>,
        on_done: impl FnOnce(&RequestIdentity, Outcome) + Send + 'static,
    ) -> Handled
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let budget = self.limits.fuel_per_request;
        let timeout = self.limits.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut store =
            Store::new(pre.engine(), GuestState::new(&who, self.limits.max_memory_bytes, deadline, context));
        store.limiter(|state| &mut state.limiter);
        if let Err(e) = store.set_fuel(budget) {
            return Handled::Failed(GuestFailure::Host(format!("failed to set fuel: {e:#}")));
        }
        // At every tick: past the deadline, interrupt; otherwise yield, so a guest
        // that never calls the host still lets other requests run.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

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
        let guest = async move {
            // The tokio timeout also covers time spent blocked in host calls, where
            // epochs cannot interrupt.
            let run = tokio::time::timeout(timeout, async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            })
            .await;
            let fuel = budget.saturating_sub(store.get_fuel().unwrap_or(0));
            let failure = match run {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(classify(&e, store.data().limiter.hit)),
                Err(_elapsed) => Some(GuestFailure::Timeout),
            };
            let outcome = Outcome { fuel, failure };
            on_done(&who, outcome.clone());
            outcome
        };

        // Run the guest on this task: most guests answer and finish in one go, and
        // staying here saves a cross-thread hand-off per request. A guest still
        // streaming its body after answering moves to a task of its own.
        let mut guest = Box::pin(guest);
        let mut receiver = receiver;
        tokio::select! {
            biased;
            outcome = &mut guest => match receiver.try_recv() {
                Ok(Ok(response)) => Handled::Response(response),
                Ok(Err(code)) => Handled::Failed(GuestFailure::Trap(format!("guest answered with error {code:?}"))),
                Err(_) => Handled::Failed(outcome.failure.unwrap_or(GuestFailure::NoResponse)),
            },
            answer = &mut receiver => match answer {
                Ok(Ok(response)) => {
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
        }
    }
}

fn classify(err: &wasmtime::Error, memory_cap_hit: bool) -> GuestFailure {
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
