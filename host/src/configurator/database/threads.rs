//! The threads instance databases run on. SQLite calls block, so they never run on
//! the async workers: each statement is a job on one of a fixed number of threads
//! made for it, and the request that asked for it waits asynchronously.
//!
//! Two bounds keep one tenant from holding the database threads: an instance has
//! one connection, so it runs at most one job at a time, and a tenant runs at most
//! half the threads at once (its other requests wait, then hear "busy").
//!
//! CPU is shared by use, as for guests: a statement that runs past
//! [`DEMOTE_AFTER`] lowers its thread ([`crate::sched`]), so the kernel runs every
//! other request first. An unprivileged process cannot raise a thread's priority back,
//! so a lowered thread retires after its job and a fresh one takes its place.

use std::cell::Cell;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;

/// A unit of blocking database work.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Jobs waiting for a thread, across the node. Each instance queues at most one
/// (its connection lock is held while queued), so this is only reached with
/// thousands of busy instances; beyond it, callers hear "busy".
const QUEUE: usize = 4096;

/// How long a statement runs at normal priority before its thread is lowered.
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
    threads: usize,
    per_tenant: usize,
    tenants: DashMap<Arc<str>, Arc<Semaphore>>,
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
            threads,
            per_tenant: (threads / 2).max(1),
            tenants: DashMap::new(),
        }))
    }

    /// How many threads run database work.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How many of them one tenant may use at once.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    /// The permits bounding `tenant`'s concurrent database work.
    pub(crate) fn tenant(&self, tenant: &str) -> Arc<Semaphore> {
        if let Some(permits) = self.tenants.get(tenant) {
            return permits.clone();
        }
        self.tenants.entry(Arc::from(tenant)).or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))).clone()
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
