//! One job through one guest: a fresh store, the job's fuel and deadline, and a
//! call of the service's `wharf:platform/worker` export (`run` or `seed`).
//! Jobs run on the node's job threads (one per core, lowered: see `sched`):
//! background work uses idle cores and never takes one from a request.

use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::{Store, UpdateDeadline};

use super::guest::{GuestState, RequestIdentity};
use super::invoke::GuestFailure;
use super::Runtime;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wharf:platform/job-runner",
        exports: { default: async },
        require_store_data_send: true,
    });
}

pub use bindings::exports::wharf::platform::worker::Job as GuestJob;

/// A service version's job entry points, ready for one store per job.
pub type WorkerPre = bindings::JobRunnerPre<GuestState>;

/// What to call.
#[derive(Debug, Clone)]
pub enum JobCall {
    /// `worker.run(job)`.
    Run(GuestJob),
    /// `worker.seed()`.
    Seed,
}

/// How one job run ended, and what it used.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub fuel: u64,
    /// `Ok` when the guest returned `ok`; the guest's error, or why it stopped.
    pub result: Result<(), String>,
}

impl Runtime {
    /// The job entry points of a prepared component, if it exports them.
    pub fn prepare_worker(&self, pre: &super::ProxyPre) -> Option<WorkerPre> {
        WorkerPre::new(pre.instance_pre().clone()).ok()
    }

    /// Run `call` on a fresh instance of `worker`, with `fuel` and `timeout`,
    /// on the calling task (workers call it on the job threads: [`Runtime::spawn_job`]).
    pub async fn run_job(
        &self,
        worker: &WorkerPre,
        who: RequestIdentity,
        context: super::GuestContext,
        call: JobCall,
        fuel: u64,
        timeout: Duration,
    ) -> JobOutcome {
        let deadline = Instant::now() + timeout;
        let mut store =
            Store::new(worker.engine(), GuestState::new(&who, &self.limits, self.memory.clone(), deadline, context));
        store.limiter(|state| &mut state.limiter);
        if let Err(e) = store.set_fuel(fuel) {
            return JobOutcome { fuel: 0, result: Err(format!("failed to set fuel: {e:#}")) };
        }
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
        let called = tokio::time::timeout(timeout, async {
            let instance =
                worker.instantiate_async(&mut store).instrument(crate::telemetry::child_span!("instantiate")).await?;
            let guest = instance.wharf_platform_worker();
            match &call {
                JobCall::Run(job) => guest.call_run(&mut store, job).await,
                JobCall::Seed => guest.call_seed(&mut store).await,
            }
        })
        .instrument(who.span.clone())
        .await;
        let owed = store.data().host_fuel_debt;
        let used = fuel.saturating_sub(store.get_fuel().unwrap_or(0)).saturating_add(owed).min(fuel);
        who.span.record("wharf.fuel", i64::try_from(used).unwrap_or(i64::MAX));
        let result = match called {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(guest_error))) => Err(super::truncate(&guest_error, 2000)),
            Ok(Err(e)) => Err(describe(&super::invoke::classify(&e, store.data().limiter.hit))),
            Err(_elapsed) => Err(describe(&GuestFailure::Timeout)),
        };
        JobOutcome { fuel: used, result }
    }

    /// Run `work` on the job threads (one per core, lowered: see `sched`).
    pub fn spawn_job<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.jobs {
            Some(jobs) => jobs.spawn(work),
            None => tokio::spawn(work),
        }
    }
}

fn describe(failure: &GuestFailure) -> String {
    match failure {
        GuestFailure::OutOfFuel => "the job used up its fuel".into(),
        GuestFailure::Timeout => "the job ran past its deadline".into(),
        GuestFailure::MemoryLimit => "the job exceeded its memory limit".into(),
        GuestFailure::Trap(trap) => format!("the job trapped: {}", super::truncate(trap, 1000)),
        GuestFailure::AtCapacity => "the node was at capacity".into(),
        other => format!("{other:?}"),
    }
}
