//! CPU shared by recent use: threads running work that has computed for more
//! than a few milliseconds (CPU-heavy guests, long SQL statements) are lowered to
//! `SCHED_IDLE`, so the kernel runs every light request first and gives heavy
//! work the cycles nobody else wants.
//!
//! `SCHED_IDLE` rather than nice 19: both have a tiny share under contention, but
//! a waking normal thread preempts an idle-policy thread at once, while under
//! EEVDF a nice-19 thread keeps the core until its slice ends (measured here: a
//! canary's p99 went from 0.4 ms to 3.5 ms beside three spinning guests at nice
//! 19). An unprivileged process cannot raise a thread back, so lowered threads
//! are either dedicated to heavy work or retire when their job ends.

/// Keep large allocations (SQLite's megabyte values, result buffers) in the
/// allocator's arenas instead of a fresh `mmap`/`munmap` each: every map and
/// unmap takes the process's memory-map lock for writing, and a lowered thread
/// preempted while holding it stalls the request threads behind it (priority
/// inversion). Call once, before threads start.
pub fn keep_large_allocations_in_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocation thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// Lower the calling thread to `SCHED_IDLE` (nice 19 where that is refused).
pub fn lower_current_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls only change the calling thread's scheduling (on Linux,
    // pid 0 / PRIO_PROCESS 0 name the calling thread); `param` outlives the call.
    let lowered = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0
        || unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == 0;
    if !lowered {
        tracing::warn!("failed to lower the priority of a thread running heavy work");
    }
}

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long work that turned out heavy marks its instance: its next requests
/// (and statements) start on lowered threads instead of proving themselves
/// heavy again on the request threads.
pub const HEAVY_MEMORY: Duration = Duration::from_secs(1);

/// Milliseconds since the process started.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An instance's recent CPU use: whether its work lately turned out heavy.
#[derive(Debug, Default)]
pub struct RecentUse {
    heavy_until_ms: AtomicU64,
}

impl RecentUse {
    /// Remember that work of this instance just turned out heavy.
    pub fn mark_heavy(&self) {
        let until = now_ms().saturating_add(HEAVY_MEMORY.as_millis() as u64);
        self.heavy_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether work of this instance turned out heavy in the last [`HEAVY_MEMORY`].
    pub fn is_heavy(&self) -> bool {
        self.heavy_until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// CPU time of the calling thread, in nanoseconds: work done, whatever the
/// thread waited for (a core, a lock) meanwhile.
pub fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}
