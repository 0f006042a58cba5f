//! Instance databases on this node's disk: `<data>/instances/<id>/data.sqlite`
//! for the guest's SQL and `kv.sqlite` for its key-value store. The key-value
//! file is the host's alone: no guest statement runs on its connection, so no
//! trigger, view, foreign key or rename of the guest's can reach it.
//!
//! Containment: every call is a job on the node's database threads
//! ([`DbThreads`]), never on an async worker, in the instance's own line (one
//! job at a time holds its connections). The caller waits asynchronously, at
//! most [`MAX_WAIT`] for the connection and a thread, then hears "busy". A
//! statement runs at most its call's statement limit (and never past the
//! request's deadline): the progress handler stops it from inside, and
//! `sqlite3_interrupt` from outside when the waiting request times out or goes
//! away.

mod guest;
mod session;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::threads::{self, DbThreads, TenantSlots};
use super::types::{Call, MAX_WAIT, SQLITE_HEAP_LIMIT, SQLITE_SOFT_HEAP_LIMIT};
use session::{file_bytes, open_data, open_kv, Session};

/// Cap the process's SQLite heap (once; later calls do nothing).
pub fn limit_sqlite_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: both only set a global limit; they are thread-safe and may be
        // called at any time.
        unsafe {
            rusqlite::ffi::sqlite3_soft_heap_limit64(SQLITE_SOFT_HEAP_LIMIT);
            rusqlite::ffi::sqlite3_hard_heap_limit64(SQLITE_HEAP_LIMIT);
        }
    });
}

/// SQLite memory in use by the process now and at its highest, in bytes.
pub fn sqlite_memory() -> (i64, i64) {
    // SAFETY: plain reads of SQLite's global counters.
    unsafe { (rusqlite::ffi::sqlite3_memory_used(), rusqlite::ffi::sqlite3_memory_highwater(0)) }
}

/// An instance's two connections, opened on first use.
#[derive(Default)]
pub struct Conns {
    data: Option<Connection>,
    /// The `max_page_count` last set on each connection.
    data_cap: u64,
    kv_cap: u64,
    kv: Option<Connection>,
}

impl Conns {
    fn is_open(&self) -> bool {
        self.data.is_some() || self.kv.is_some()
    }
}

type Slot = Mutex<Conns>;

/// The open connections of a node, closed oldest-first beyond a budget so that
/// thousands of instances never exhaust file descriptors. A closed one reopens on
/// its next use.
pub struct OpenDatabases {
    max: usize,
    open: AtomicUsize,
    order: Mutex<VecDeque<Weak<Slot>>>,
}

impl OpenDatabases {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), open: AtomicUsize::new(0), order: Mutex::new(VecDeque::new()) })
    }

    /// Instances with open databases now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Called on a database thread when an instance opens its first connection.
    fn opened(&self, slot: &Arc<Slot>) {
        let Ok(mut order) = self.order.lock() else { return };
        order.push_back(Arc::downgrade(slot));
        self.open.fetch_add(1, Ordering::Relaxed);
        // Close the oldest idle instances; one in use (its lock held, including
        // the one just opened) is skipped and stays open until later.
        let mut checked = 0;
        while self.open.load(Ordering::Relaxed) > self.max && checked < order.len() {
            let Some(oldest) = order.pop_front() else { break };
            checked += 1;
            let Some(slot) = oldest.upgrade() else {
                // Its instance was closed with its connections open: they
                // closed with it, and were still counted.
                self.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            };
            let closed = match slot.try_lock() {
                Ok(mut conns) => Some(std::mem::take(&mut *conns).is_open()),
                Err(_) => None,
            };
            match closed {
                Some(true) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                Some(false) => {}
                None => order.push_back(oldest),
            }
        }
    }
}

/// What one instance's jobs share: where its files are and who runs now.
struct Shared {
    dir: PathBuf,
    /// While set, the authorizer lets the host's own statements through.
    host_access: Arc<AtomicBool>,
    /// The job using the data connection now, and how to interrupt it.
    running: Mutex<Running>,
    budget: Arc<OpenDatabases>,
    slot: Weak<Slot>,
    /// Whether the instance's work lately turned out heavy.
    recent: Arc<crate::sched::RecentUse>,
    /// Jobs waiting for the instance's connection, run in order by one thread.
    queue: Mutex<Queue>,
    tenant: Arc<TenantSlots>,
    threads: Arc<DbThreads>,
}

/// An instance's waiting jobs, and whether a thread is (or will be) running them.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<QueuedJob>,
    scheduled: bool,
}

type QueuedJob = Box<dyn FnOnce(&mut Conns) + Send + 'static>;

/// A job's state: waiting, started, or given up by its caller before it started.
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const GIVEN_UP: u8 = 2;

/// Jobs one run takes from an instance before it lets other instances have the
/// thread (it continues later, at the back of the line).
const JOBS_PER_RUN: usize = 32;
/// ... or after this long.
const RUN_SLICE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Running {
    job: u64,
    interrupt: Option<rusqlite::InterruptHandle>,
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// An instance's two files and its line on the database threads: the guest's
/// SQL and key-value store when they are kept on this node.
pub struct Local {
    /// The connections; owned here, used by the thread running the instance.
    _slot: Arc<Slot>,
    shared: Arc<Shared>,
}

impl Local {
    /// The files of the instance whose directory is `dir` (not opened yet);
    /// `tenant` is the instance's tenant, whose database work `threads` bounds.
    pub fn new(
        dir: &Path,
        tenant: &str,
        threads: Arc<DbThreads>,
        budget: Arc<OpenDatabases>,
        recent: Arc<crate::sched::RecentUse>,
    ) -> Self {
        let slot = Arc::new(Mutex::new(Conns::default()));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            host_access: Arc::new(AtomicBool::new(false)),
            running: Mutex::new(Running::default()),
            budget,
            slot: Arc::downgrade(&slot),
            recent,
            queue: Mutex::new(Queue::default()),
            tenant: threads.tenant(tenant),
            threads,
        });
        shared.tenant.storage.register(dir);
        Self { _slot: slot, shared }
    }

    /// The instance's directory.
    /// The instance's recent CPU use, which its statements mark and read.
    #[cfg(test)]
    pub(crate) fn recent_use(&self) -> &Arc<crate::sched::RecentUse> {
        &self.shared.recent
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The database bytes of the instance's tenant, against its quota.
    pub(crate) fn storage(&self) -> &super::storage::TenantStorage {
        &self.shared.tenant.storage
    }

    /// Whether a job is queued or running on the instance's connections (each
    /// holds the instance's shared state until it is done).
    pub(crate) fn busy(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    /// The instance's tenant: its line on the threads and its database bytes.
    pub(crate) fn tenant_slots(&self) -> &Arc<TenantSlots> {
        &self.shared.tenant
    }

    /// Create both files now, so the instance starts with its databases in place.
    /// Blocking: call it from a blocking context.
    pub fn provision(&self) -> Result<(), String> {
        // Opened and closed: thousands of idle instances must not hold thousands
        // of open files. The first request opens them again.
        let storage = &self.shared.tenant.storage;
        let data = open_data(&self.shared)?;
        self.shared.host_access.store(true, Ordering::Relaxed);
        let data_bytes = file_bytes(&data);
        self.shared.host_access.store(false, Ordering::Relaxed);
        storage.record(&self.shared.dir.join("data.sqlite"), data_bytes.unwrap_or(0));
        let kv = open_kv(&self.shared.dir)?;
        storage.record(&self.shared.dir.join("kv.sqlite"), file_bytes(&kv).unwrap_or(0));
        Ok(())
    }

    /// Run `work` on a database thread with this instance's connections, after
    /// the instance's earlier jobs. The caller waits asynchronously: at most
    /// [`MAX_WAIT`] for the job to start ("busy" otherwise), then for the
    /// statement, never past `call`'s deadline.
    async fn run<T, F>(&self, call: &Call, work: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T, String> + Send + 'static,
    {
        let (deadline, statement_limit) = (call.deadline, call.statement_limit);
        let now = Instant::now();
        if now >= deadline {
            return Err("the request is out of time".into());
        }
        let wait_until = tokio::time::Instant::from_std((now + MAX_WAIT).min(deadline));
        let busy = || format!("the database is busy (waited {} ms); retry", MAX_WAIT.as_millis());
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(std::sync::atomic::AtomicU8::new(QUEUED));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let job: QueuedJob = {
            let (shared, state, flag, cpu) =
                (self.shared.clone(), state.clone(), cancelled.clone(), call.cpu_nanos.clone());
            Box::new(move |conns: &mut Conns| {
                if state.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    return;
                }
                let mut session = Session {
                    conns,
                    shared: &shared,
                    job: id,
                    deadline: (Instant::now() + statement_limit).min(deadline),
                    cancelled: flag,
                    data_used: false,
                    kv_used: false,
                    data_changes: 0,
                    kv_changes: 0,
                };
                let started = crate::sched::thread_cpu_nanos();
                let result = work(&mut session);
                session.finish();
                let used = crate::sched::thread_cpu_nanos().saturating_sub(started);
                cpu.fetch_add(used, Ordering::Relaxed);
                threads::charge(&shared.recent, used);
                let _ = sender.send(result);
            })
        };
        if !enqueue(&self.shared, job) {
            return Err(busy());
        }
        let mut watch = Watch { state: state.clone(), cancelled, shared: self.shared.clone(), job: id, done: false };
        let result = match tokio::time::timeout_at(wait_until, &mut receiver).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err("the database job failed".to_string()),
            Err(_) => {
                // Not started in time: give up the place in line.
                if state.compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    watch.done = true;
                    return Err(busy());
                }
                // Started: the progress handler stops it at its deadline; if it is
                // stuck where the handler does not run, interrupt it from here.
                let limit = (Instant::now() + statement_limit).min(deadline) + Duration::from_millis(100);
                match tokio::time::timeout_at(limit.into(), &mut receiver).await {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(_)) => Err("the database job failed".to_string()),
                    Err(_) => {
                        watch.interrupt();
                        match tokio::time::timeout(Duration::from_secs(1), receiver).await {
                            Ok(Ok(result)) => Ok(result),
                            _ => Err(format!("the statement ran longer than {} s", statement_limit.as_secs())),
                        }
                    }
                }
            }
        };
        watch.done = true;
        result.and_then(|r| r)
    }
}

/// Add `job` to the instance's line, and have a thread run the line if none is.
/// False when the pool cannot take it (the job is dropped).
fn enqueue(shared: &Arc<Shared>, job: QueuedJob) -> bool {
    let start = {
        let Ok(mut queue) = shared.queue.lock() else { return false };
        queue.jobs.push_back(job);
        !std::mem::replace(&mut queue.scheduled, true)
    };
    if start && shared.threads.run_for(&shared.tenant, drain_job(shared.clone())).is_err() {
        // The pool is stopped or its line is full: nothing will run these.
        if let Ok(mut queue) = shared.queue.lock() {
            queue.jobs.clear();
            queue.scheduled = false;
        }
        return false;
    }
    true
}

fn drain_job(shared: Arc<Shared>) -> threads::Job {
    Box::new(move || drain(shared))
}

/// Run an instance's waiting jobs, in order, on this database thread, for at
/// most [`JOBS_PER_RUN`] jobs or [`RUN_SLICE`]; then give the thread to the next
/// in line and, if jobs remain, queue up again.
fn drain(shared: Arc<Shared>) {
    let started = Instant::now();
    let mut more = false;
    if let Some(slot) = shared.slot.upgrade() {
        let mut conns = match slot.lock() {
            Ok(conns) => conns,
            Err(poisoned) => poisoned.into_inner(),
        };
        for ran in 1.. {
            let job = match shared.queue.lock() {
                Ok(mut queue) => match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.scheduled = false;
                        break;
                    }
                },
                Err(_) => break,
            };
            // A job that panics must not leave the instance's line stuck.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conns))).is_err() {
                tracing::error!(dir = ?shared.dir, "a database job panicked");
            }
            if ran >= JOBS_PER_RUN || started.elapsed() > RUN_SLICE {
                more = true;
                break;
            }
        }
    } else if let Ok(mut queue) = shared.queue.lock() {
        // The instance is gone: its waiting callers hear that the job failed.
        queue.jobs.clear();
        queue.scheduled = false;
    }
    shared.threads.finish(&shared.tenant);
    if more {
        if let Err(again) = shared.threads.run_for(&shared.tenant, drain_job(shared.clone())) {
            again();
        }
    }
}

/// Interrupts a job whose caller stopped waiting (timed out or went away).
struct Watch {
    state: Arc<std::sync::atomic::AtomicU8>,
    cancelled: Arc<AtomicBool>,
    shared: Arc<Shared>,
    job: u64,
    done: bool,
}

impl Watch {
    fn interrupt(&self) {
        // A job still in line never starts.
        let _ = self.state.compare_exchange(QUEUED, GIVEN_UP, Ordering::AcqRel, Ordering::Acquire);
        self.cancelled.store(true, Ordering::Relaxed);
        // Only while this job is the one running: an interrupt must never hit the
        // next request's statement.
        if let Ok(running) = self.shared.running.lock() {
            if running.job == self.job {
                if let Some(handle) = &running.interrupt {
                    handle.interrupt();
                }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.interrupt();
        }
    }
}
