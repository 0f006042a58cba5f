//! The threads instance databases run on. SQLite calls block, so they never run on
//! the async workers: each statement is a job on one of a fixed number of threads
//! made for it, and the request that asked for it waits asynchronously.
//!
//! Two bounds keep one tenant from holding the database threads: an instance's
//! jobs run one after another on one thread (it has one connection), and a
//! tenant's instances run on at most half the threads at once; the others wait
//! their turn in the tenant's line (their callers hear "busy" if it is too long).
//!
//! CPU is shared by use, as for guests: a statement that runs past
//! [`DEMOTE_AFTER`] lowers its thread ([`crate::sched`]), so the kernel runs every
//! other request first. Like a heavy guest, it runs under `SCHED_IDLE` first,
//! watched with the heavy guests' idle threads, and moves on to a lowered
//! thread (nice 10, a bounded share) when they are starved: light load
//! saturates the node, and a statement under `SCHED_IDLE` would barely run
//! into its time limit. A statement cannot leave its thread, so the thread
//! itself is raised, which the kernel allows only a process with
//! `CAP_SYS_NICE` or an `RLIMIT_NICE` reaching nice 10; without either, heavy
//! statements are lowered from the start. A process cannot take a thread back
//! to normal priority, so a lowered thread retires after its job and a fresh
//! one takes its place.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::VecDeque;

use dashmap::DashMap;

/// A unit of blocking database work.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Jobs waiting for a thread, across the node. Each instance queues at most one
/// (its connection lock is held while queued), so this is only reached with
/// thousands of busy instances; beyond it, callers hear "busy".
const QUEUE: usize = 4096;

/// CPU time a statement uses at normal priority before its thread is lowered.
pub const DEMOTE_AFTER: Duration = Duration::from_millis(5);

/// Where a database thread runs its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Normal,
    /// Under `SCHED_IDLE`, watched; raised to lowered if it starves.
    Idle,
    Lowered,
}

thread_local! {
    static PRIORITY: Cell<Priority> = const { Cell::new(Priority::Normal) };
    /// The pool's lowering, on its threads.
    static LOWERING: std::cell::RefCell<Option<Arc<Lowering>>> = const { std::cell::RefCell::new(None) };
}

/// How a pool's heavy statements are lowered, and how many were.
#[derive(Debug)]
pub(crate) struct Lowering {
    /// The heavy guests' idle threads, whose starvation moves statements on.
    tier: Arc<crate::sched::IdleTier>,
    /// Each tenant's share of the node's work, which statements count in.
    time: Arc<crate::sched::GuestTime>,
    /// Whether statements run under `SCHED_IDLE` first (the process may raise them).
    idle_first: bool,
    heavy: AtomicU64,
    rescued: AtomicU64,
}

/// Lower the calling database thread's priority for the rest of its job (once).
pub(crate) fn demote_current_thread() {
    if PRIORITY.with(Cell::get) != Priority::Normal {
        return;
    }
    let lowering = LOWERING.with(|l| l.borrow().clone());
    let idle = lowering.as_ref().is_some_and(|l| {
        l.heavy.fetch_add(1, Ordering::Relaxed);
        // Once starved, the node is saturated: straight to a bounded share.
        l.idle_first
            && !l.tier.starved()
            && crate::sched::idle_current_thread_rescuably()
            && l.tier.watch_current_thread()
    });
    if idle {
        PRIORITY.with(|p| p.set(Priority::Idle));
    } else {
        crate::sched::lower_current_thread();
        PRIORITY.with(|p| p.set(Priority::Lowered));
    }
}

/// Charge a job's `nanos` of CPU on this database thread to its instance's
/// tenant's share of the node's work: a tenant flooding the node with
/// statements each too short to be heavy is marked like one flooding it with
/// light requests, and its next statements start lowered.
pub(crate) fn charge(recent: &crate::sched::RecentUse, nanos: u64) {
    LOWERING.with(|l| {
        if let Some(lowering) = l.borrow().as_ref() {
            lowering.time.charge(recent, nanos);
        }
    });
}

/// A statement under `SCHED_IDLE` moves on to a lowered thread when the idle
/// threads are starved (called from its progress handler).
pub(crate) fn rescue_if_starved() {
    if PRIORITY.with(Cell::get) != Priority::Idle {
        return;
    }
    LOWERING.with(|l| {
        let lowering = l.borrow();
        let Some(lowering) = lowering.as_ref().filter(|l| l.tier.starved()) else { return };
        if crate::sched::raise_to_lowered() {
            lowering.rescued.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!("failed to raise a starved database thread from SCHED_IDLE");
        }
        // Either way, asked once.
        PRIORITY.with(|p| p.set(Priority::Lowered));
    });
}

/// A fixed pool of threads for database work.
pub struct DbThreads {
    sender: Mutex<Option<SyncSender<Job>>>,
    per_tenant: usize,
    /// The tenants whose instances opened their databases on this node.
    tenants: DashMap<Arc<str>, Arc<TenantSlots>>,
    /// Database quotas: every tenant's, and those set apart (a tenant's entry
    /// takes its quota from here when it is made).
    quota: std::sync::atomic::AtomicU64,
    quotas: DashMap<Arc<str>, u64>,
    lowering: Arc<Lowering>,
}

/// How many of a tenant's instances run now, and the runs waiting for a place.
pub(crate) struct TenantSlots {
    max: usize,
    state: Mutex<(usize, VecDeque<Job>)>,
    /// The tenant's database bytes, against its quota.
    pub(crate) storage: super::storage::TenantStorage,
    /// Set once every instance of the tenant is counted in `storage` (not
    /// only those opened here).
    pub(crate) counted: tokio::sync::OnceCell<()>,
}

impl DbThreads {
    /// Start `threads` worker threads (at least two), with their own idle tier
    /// and shares.
    pub fn start(threads: usize) -> std::io::Result<Arc<Self>> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self::start_beside(threads, Arc::default(), Arc::new(crate::sched::GuestTime::new(cores)))
    }

    /// Start `threads` worker threads (at least two) whose heavy statements
    /// are watched with the heavy guests' idle threads, `tier`, and whose
    /// statements count in each tenant's share of the node's work, `time`.
    pub fn start_beside(
        threads: usize,
        tier: Arc<crate::sched::IdleTier>,
        time: Arc<crate::sched::GuestTime>,
    ) -> std::io::Result<Arc<Self>> {
        let threads = threads.max(2);
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let lowering = Arc::new(Lowering {
            tier,
            time,
            idle_first: crate::sched::idle_threads_can_be_raised(),
            heavy: AtomicU64::new(0),
            rescued: AtomicU64::new(0),
        });
        if !lowering.idle_first {
            tracing::info!(
                "heavy SQL statements run lowered from the start: this process may not raise a thread from \
                 SCHED_IDLE (give it CAP_SYS_NICE or LimitNICE=10 to run them at idle priority first)"
            );
        }
        for _ in 0..threads {
            spawn_worker(receiver.clone(), lowering.clone())?;
        }
        Ok(Arc::new(Self {
            sender: Mutex::new(Some(sender)),
            per_tenant: (threads / 2).max(1),
            tenants: DashMap::new(),
            quota: std::sync::atomic::AtomicU64::new(u64::MAX),
            quotas: DashMap::new(),
            lowering,
        }))
    }

    /// Statements that turned out heavy (their thread lowered), and of those,
    /// the ones starved under `SCHED_IDLE` and raised to a bounded share.
    pub fn heavy_statements(&self) -> (u64, u64) {
        (self.lowering.heavy.load(Ordering::Relaxed), self.lowering.rescued.load(Ordering::Relaxed))
    }

    /// The places bounding `tenant`'s concurrent database work.
    pub(crate) fn tenant(&self, tenant: &str) -> Arc<TenantSlots> {
        if let Some(slots) = self.tenants.get(tenant) {
            return slots.clone();
        }
        self.tenants
            .entry(Arc::from(tenant))
            .or_insert_with(|| {
                let slots = TenantSlots {
                    max: self.per_tenant,
                    state: Mutex::new((0, VecDeque::new())),
                    storage: Default::default(),
                    counted: Default::default(),
                };
                slots.storage.set_quota(self.quota_of(tenant));
                Arc::new(slots)
            })
            .clone()
    }

    fn quota_of(&self, tenant: &str) -> u64 {
        self.quotas.get(tenant).map(|q| *q).unwrap_or_else(|| self.quota.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Set every tenant's database quota: `bytes`, or the tenant's own in
    /// `overrides`.
    pub fn set_quotas(&self, bytes: u64, overrides: &std::collections::HashMap<String, i64>) {
        self.quota.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self.quotas.retain(|tenant, _| overrides.contains_key(&**tenant));
        for (tenant, own) in overrides {
            self.quotas.insert(Arc::from(tenant.as_str()), own.max(&0).unsigned_abs());
        }
        for slots in self.tenants.iter() {
            slots.storage.set_quota(self.quota_of(slots.key()));
        }
    }

    /// Set `tenant`'s database quota, in bytes (its own, or again every tenant's).
    pub fn set_tenant_quota(&self, tenant: &str, bytes: u64) {
        if bytes == self.quota.load(std::sync::atomic::Ordering::Relaxed) {
            self.quotas.remove(tenant);
        } else {
            self.quotas.insert(Arc::from(tenant), bytes);
        }
        if let Some(slots) = self.tenants.get(tenant) {
            slots.storage.set_quota(bytes);
        }
    }

    /// Run `run` for `tenant`: now if the tenant has a free place, else when one
    /// of its runs ends. `Err` gives it back when the pool cannot take it.
    pub(crate) fn run_for(&self, tenant: &TenantSlots, run: Job) -> Result<(), Job> {
        let Ok(mut state) = tenant.state.lock() else { return Err(run) };
        if state.0 < tenant.max {
            state.0 += 1;
            drop(state);
            self.submit(run).inspect_err(|_| {
                if let Ok(mut state) = tenant.state.lock() {
                    state.0 -= 1;
                }
            })
        } else {
            state.1.push_back(run);
            Ok(())
        }
    }

    /// A run of `tenant` ended (on this database thread): its place goes to the
    /// tenant's next waiting run, which runs right here if the pool is full.
    pub(crate) fn finish(&self, tenant: &TenantSlots) {
        let next = match tenant.state.lock() {
            Ok(mut state) => {
                let next = state.1.pop_front();
                if next.is_none() {
                    state.0 = state.0.saturating_sub(1);
                }
                next
            }
            Err(_) => None,
        };
        if let Some(next) = next {
            if let Err(next) = self.submit(next) {
                next();
            }
        }
    }

    /// Queue `job`; `Err` gives it back when the queue is full or the pool stopped.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let Ok(sender) = self.sender.lock() else { return Err(job) };
        match sender.as_ref() {
            Some(sender) => sender.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }),
            None => Err(job),
        }
    }
}

impl Drop for DbThreads {
    fn drop(&mut self) {
        // Closing the channel ends every thread once the queue is drained.
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }
}

fn spawn_worker(receiver: Arc<Mutex<Receiver<Job>>>, lowering: Arc<Lowering>) -> std::io::Result<()> {
    std::thread::Builder::new().name("wharf-db".into()).spawn(move || work(receiver, lowering)).map(drop)
}

fn work(receiver: Arc<Mutex<Receiver<Job>>>, lowering: Arc<Lowering>) {
    LOWERING.with(|l| *l.borrow_mut() = Some(lowering.clone()));
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            // A job that panics must not take the thread with it.
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a database job panicked");
                }
                if PRIORITY.with(Cell::get) != Priority::Normal {
                    // Hand this place to a thread at normal priority.
                    if let Err(e) = spawn_worker(receiver.clone(), lowering.clone()) {
                        tracing::error!("failed to replace a database thread: {e}");
                        PRIORITY.with(|p| p.set(Priority::Normal));
                        continue;
                    }
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::IdleTier;

    /// The calling thread's scheduling policy and nice value.
    fn priority() -> (i32, i32) {
        // SAFETY: both only read the calling thread's (pid 0) settings.
        unsafe { (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, 0)) }
    }

    /// Run `job` on one of `pool`'s threads and wait for what it returns.
    fn on_pool<T: Send + 'static>(pool: &DbThreads, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (sender, receiver) = std::sync::mpsc::channel();
        pool.submit(Box::new(move || sender.send(job()).unwrap())).unwrap_or_else(|_| panic!("the pool took no job"));
        receiver.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn a_heavy_statement_runs_at_idle_priority_until_the_idle_threads_starve() {
        let tier = Arc::new(IdleTier::default());
        let pool = DbThreads::start_beside(2, tier.clone(), Arc::new(crate::sched::GuestTime::new(2))).unwrap();
        let normal = (libc::SCHED_OTHER, 0);
        let lowered = (libc::SCHED_OTHER, crate::sched::LOWERED_NICE);
        let starving = tier.clone();
        let (start, heavy, still, raised) = on_pool(&pool, move || {
            let start = priority();
            demote_current_thread();
            let heavy = priority();
            rescue_if_starved();
            let still = priority();
            starving.mark_starved();
            rescue_if_starved();
            (start, heavy, still, priority())
        });
        assert_eq!(start, normal, "database threads start at normal priority");
        if crate::sched::idle_threads_can_be_raised() {
            assert_eq!(heavy, (libc::SCHED_IDLE, crate::sched::LOWERED_NICE), "idle priority first");
            assert_eq!(still, heavy, "not starved: it stays there");
            assert_eq!(raised, lowered, "starved: raised to the lowered threads' bounded share");
            assert_eq!(pool.heavy_statements(), (1, 1));
        } else {
            // Without the right to raise a thread, lowered from the start.
            assert_ne!(heavy, normal);
            assert_eq!((still, raised), (heavy, heavy));
            assert_eq!(pool.heavy_statements(), (1, 0));
        }
        // While the idle threads are starved, the next heavy statement goes
        // straight to a bounded share, on a fresh thread (the lowered one retired).
        let (start, heavy) = on_pool(&pool, || {
            let start = priority();
            demote_current_thread();
            (start, priority())
        });
        assert_eq!(start, normal, "a lowered thread retires after its job");
        if crate::sched::idle_threads_can_be_raised() {
            assert_eq!(heavy, lowered);
        }
        assert_eq!(pool.heavy_statements().0, 2);
    }
}
