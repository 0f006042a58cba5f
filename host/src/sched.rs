//! CPU shared by recent use: threads running work that has computed for more
//! than a few milliseconds (CPU-heavy guests, long SQL statements, jobs) are
//! lowered, so the kernel runs every light request first, yet heavy work keeps
//! a bounded share of the machine and still finishes with its own outcome.
//!
//! Lowered means nice [`LOWERED_NICE`] with a 0.1 ms slice (the kernel's
//! shortest, EEVDF's custom slices since Linux 6.12): weight 110 against a
//! request thread's 1024, so about a tenth of each core when the node is
//! saturated, and a waking request thread waits at most one short slice for it.
//! Measured here with two half-busy request threads beside two lowered busy
//! loops: wakeup p99 82 µs at nice 10 with the short slice, 173 µs (p99.9 2 ms)
//! at nice 10 with the default slice, 77 µs under `SCHED_IDLE` — whose share
//! (weight 3, 0.4 %) starved a guest allocating to its memory cap into its
//! deadline while light load saturated the node. The share has a price: beside
//! three spinning or three memory-hungry guests, an open-loop canary's p99 was
//! about twice what it was under `SCHED_IDLE` (bench/neighbours.sh); nice 19
//! with the short slice cost the canary nothing measurable but its 1.4 % share
//! finished four heavy guests in anywhere from 0.3 to 4.7 s, against 0.8–0.9 s
//! at nice 10. Where the kernel has no custom slices the thread goes to
//! `SCHED_IDLE` instead (a niced thread under EEVDF keeps the core for a whole
//! default slice: a canary's p99 went from 0.4 ms to 3.5 ms beside three
//! spinning guests at nice 19). An unprivileged process cannot raise a thread
//! back, so lowered threads are dedicated to heavy work or retire when their
//! job ends.

/// The nice value of lowered threads: weight 110 of a request thread's 1024.
pub const LOWERED_NICE: i32 = 10;

/// The slice a lowered thread asks for: the shortest the kernel grants.
const LOWERED_SLICE_NANOS: u64 = 100_000;

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

/// Lower the calling thread: nice [`LOWERED_NICE`] with a short slice where the
/// kernel grants one, `SCHED_IDLE` where it does not (nice 19 where that too is
/// refused).
pub fn lower_current_thread() {
    if !lower_with_short_slice() {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: both calls only change the calling thread's scheduling (on Linux,
        // pid 0 / PRIO_PROCESS 0 name the calling thread); `param` outlives the call.
        let lowered = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0
            || unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == 0;
        if !lowered {
            tracing::warn!("failed to lower the priority of a thread running heavy work");
        }
    }
}

/// The kernel's `struct sched_attr` (the fields up to `sched_period`, the size
/// every kernel since 3.14 accepts).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `SCHED_OTHER` at [`LOWERED_NICE`] with a [`LOWERED_SLICE_NANOS`] slice;
/// false unless the kernel reads the slice back (older kernels ignore it).
fn lower_with_short_slice() -> bool {
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let attr = SchedAttr {
        size,
        policy: libc::SCHED_OTHER as u32,
        nice: LOWERED_NICE,
        runtime: LOWERED_SLICE_NANOS,
        ..SchedAttr::default()
    };
    // SAFETY: sched_setattr/getattr on the calling thread (pid 0) with a struct
    // of the size they are told; the kernel writes at most `size` bytes back.
    unsafe {
        if libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) != 0 {
            return false;
        }
        let mut now = SchedAttr::default();
        if libc::syscall(libc::SYS_sched_getattr, 0, &mut now as *mut SchedAttr, size, 0) != 0 {
            return false;
        }
        now.nice == LOWERED_NICE && now.runtime > 0 && now.runtime <= 2 * LOWERED_SLICE_NANOS
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
