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
//! other request first. An unprivileged process cannot raise a thread's priority back,
//! so a lowered thread retires after its job and a fresh one takes its place.

use std::cell::Cell;
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

thread_local! {
    static DEMOTED: Cell<bool> = const { Cell::new(false) };
}

/// Lower the calling database thread's priority for the rest of its job (once).
pub(crate) fn demote_current_thread() {
    if DEMOTED.with(|d| d.replace(true)) {
        return;
    }
    crate::sched::lower_current_thread();
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
    /// Start `threads` worker threads (at least two).
    pub fn start(threads: usize) -> std::io::Result<Arc<Self>> {
        let threads = threads.max(2);
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..threads {
            spawn_worker(receiver.clone())?;
        }
        Ok(Arc::new(Self {
            sender: Mutex::new(Some(sender)),
            per_tenant: (threads / 2).max(1),
            tenants: DashMap::new(),
            quota: std::sync::atomic::AtomicU64::new(u64::MAX),
            quotas: DashMap::new(),
        }))
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

fn spawn_worker(receiver: Arc<Mutex<Receiver<Job>>>) -> std::io::Result<()> {
    std::thread::Builder::new().name("wharf-db".into()).spawn(move || work(receiver)).map(drop)
}

fn work(receiver: Arc<Mutex<Receiver<Job>>>) {
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
                if DEMOTED.with(Cell::get) {
                    // Hand this place to a thread at normal priority.
                    if let Err(e) = spawn_worker(receiver.clone()) {
                        tracing::error!("failed to replace a database thread: {e}");
                        DEMOTED.with(|d| d.set(false));
                        continue;
                    }
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
