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
//!
//! Heavy guests get both: they run under `SCHED_IDLE` first ([`IdleTier`]),
//! where they cost light requests about what any idle-priority neighbour does,
//! and only when those threads are starved (runnable, yet running less than a
//! tenth of the time: light load saturates the node) do their guests move on to
//! lowered threads, where the bounded share above lets them finish.

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
        // SAFETY: only changes the calling thread's nice value (on Linux,
        // PRIO_PROCESS 0 names the calling thread).
        let lowered = idle_current_thread() || unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == 0;
        if !lowered {
            tracing::warn!("failed to lower the priority of a thread running heavy work");
        }
    }
}

/// Put the calling thread under `SCHED_IDLE`: it runs only on cores nothing
/// else wants. False if the kernel refused.
pub fn idle_current_thread() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes only the calling thread's policy (pid 0); `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

/// Put the calling thread under `SCHED_IDLE` at [`LOWERED_NICE`], so that
/// [`raise_to_lowered`] can later move it on with no more right than to run
/// at that nice value. False if the kernel refused.
pub fn idle_current_thread_rescuably() -> bool {
    // SAFETY: only raises the calling thread's nice value (on Linux,
    // PRIO_PROCESS 0 names the calling thread), which needs no privilege.
    (unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOWERED_NICE) } == 0) && idle_current_thread()
}

/// Move the calling thread from `SCHED_IDLE` back to lowered (nice
/// [`LOWERED_NICE`] with the short slice). Leaving `SCHED_IDLE` is raising a
/// thread: the kernel allows it only to a process with `CAP_SYS_NICE` or an
/// `RLIMIT_NICE` that reaches [`LOWERED_NICE`] (systemd's `LimitNICE=10`).
pub fn raise_to_lowered() -> bool {
    lower_with_short_slice()
}

/// Whether this process may move threads from `SCHED_IDLE` on to lowered
/// ones ([`raise_to_lowered`]), tried once on a thread of its own. Where it
/// may not, work that cannot leave its thread (a SQL statement) is lowered
/// from the start rather than risk starving under `SCHED_IDLE`.
pub fn idle_threads_can_be_raised() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::Builder::new()
            .name("wharf-probe".into())
            .spawn(|| idle_current_thread_rescuably() && raise_to_lowered())
            .ok()
            .and_then(|probe| probe.join().ok())
            .unwrap_or(false)
    })
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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
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

/// An instance's recent CPU use: whether its work lately turned out heavy, and
/// its tenant's share of the node's guest time.
#[derive(Debug, Default)]
pub struct RecentUse {
    heavy_until_ms: AtomicU64,
    tenant: Arc<TenantUse>,
}

/// A tenant's guests' time in the current [`GuestTime`] window, shared by all
/// its instances: a flood spread over several instances is still one tenant's.
#[derive(Debug, Default)]
pub struct TenantUse {
    window: AtomicU64,
    guest_nanos: AtomicU64,
}

impl RecentUse {
    /// An instance of the tenant whose share `tenant` keeps.
    pub fn of_tenant(tenant: Arc<TenantUse>) -> Self {
        Self { heavy_until_ms: AtomicU64::new(0), tenant }
    }

    /// Remember that work of this instance just turned out heavy.
    pub fn mark_heavy(&self) {
        self.mark_heavy_at(now_ms());
    }

    fn mark_heavy_at(&self, now_ms: u64) {
        let until = now_ms.saturating_add(HEAVY_MEMORY.as_millis() as u64);
        self.heavy_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether work of this instance turned out heavy in the last [`HEAVY_MEMORY`].
    pub fn is_heavy(&self) -> bool {
        self.heavy_until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// How long an instance's share of the node's guest time is taken over.
const SHARE_WINDOW_MS: u64 = 100;

/// The node's guest time in the current [`SHARE_WINDOW_MS`] window, and how
/// many tenants had any: what tells a flood apart. Each request of a flood is
/// light (a failing one, a hello), so none of them is ever heavy on its own,
/// yet one tenant sending them as fast as the node answers takes the node's
/// cores from every other. A tenant whose guests (all its instances together)
/// took more than three fifths of the window's guest time, while the node's
/// guests together used more than a quarter of its request threads' time (a
/// thread per core: much of a light request's cost is outside its guest, in
/// the ingress and the kernel) and other tenants had requests too, has each
/// instance it floods from marked heavy like a CPU-heavy guest's instance,
/// while it goes on (with the node half as busy: the heavy threads slow it
/// down) and for [`HEAVY_MEMORY`] after: their next requests start on the
/// heavy-guest threads (idle priority first), so the others' light requests
/// run first and the flood keeps the cores they leave. A single busy tenant (a
/// benchmark, a node with one customer awake) is never marked: nobody waits
/// behind it. Guest time is wall time inside the guests' polls, on whichever
/// threads they ran, and the CPU time of their SQLite statements on the
/// database threads (a flood of statements each too short to be heavy).
#[derive(Debug)]
pub struct GuestTime {
    window: AtomicU64,
    nanos: AtomicU64,
    active: AtomicU64,
    /// Guest time in a window past which the node counts as saturated.
    saturated_nanos: u64,
    /// Instances marked heavy for their share.
    marked: AtomicU64,
}

impl GuestTime {
    /// For a node whose requests run on `cores` threads.
    pub fn new(cores: usize) -> Self {
        Self {
            window: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            active: AtomicU64::new(0),
            saturated_nanos: SHARE_WINDOW_MS * 1_000_000 * cores.max(1) as u64 / 4,
            marked: AtomicU64::new(0),
        }
    }

    /// Charge `nanos` of guest time to `recent`'s instance, which is marked
    /// heavy if it takes more than its share (see the type's documentation).
    pub fn charge(&self, recent: &RecentUse, nanos: u64) {
        self.charge_at(recent, nanos, now_ms());
    }

    fn charge_at(&self, recent: &RecentUse, nanos: u64, now_ms: u64) {
        // Windows count from 1: a new instance's 0 is no window.
        let window = now_ms / SHARE_WINDOW_MS + 1;
        // The first charge of a window starts it (a charge racing with that
        // can land in either window: the figures are estimates).
        let current = self.window.load(Ordering::Relaxed);
        if current < window
            && self.window.compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.nanos.store(0, Ordering::Relaxed);
            self.active.store(0, Ordering::Relaxed);
        }
        let tenant = &recent.tenant;
        if tenant.window.swap(window, Ordering::Relaxed) != window {
            tenant.guest_nanos.store(0, Ordering::Relaxed);
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        let mine = tenant.guest_nanos.fetch_add(nanos, Ordering::Relaxed).saturating_add(nanos);
        let all = self.nanos.fetch_add(nanos, Ordering::Relaxed).saturating_add(nanos);
        // Once marked, its guests run on fewer threads, after everyone else's:
        // the node looks less busy for it. Half the threshold keeps it marked
        // while it goes on, instead of letting it back every second.
        let marked = recent.heavy_until_ms.load(Ordering::Relaxed) > now_ms;
        let busy = if marked { self.saturated_nanos / 2 } else { self.saturated_nanos };
        if all > busy && mine.saturating_mul(5) > all.saturating_mul(3) && self.active.load(Ordering::Relaxed) >= 2 {
            if !marked {
                self.marked.fetch_add(1, Ordering::Relaxed);
            }
            recent.mark_heavy_at(now_ms);
        }
    }

    /// How many times an instance was marked heavy for its share.
    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// A guest's run, its time inside polls charged to its instance's share
    /// ([`GuestTime`]) on whichever thread it runs.
    pub struct Charged<F> {
        #[pin]
        run: F,
        recent: Arc<RecentUse>,
        time: Arc<GuestTime>,
    }
}

impl<F> Charged<F> {
    pub fn new(run: F, recent: Arc<RecentUse>, time: Arc<GuestTime>) -> Self {
        Self { run, recent, time }
    }
}

impl<F: Future> Future for Charged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let started = Instant::now();
        let polled = this.run.poll(cx);
        this.time.charge(this.recent, u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        polled
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

/// How often [`IdleTier::check`] looks at its threads.
pub const STARVATION_CHECK: Duration = Duration::from_millis(50);

/// How long starvation, once seen, sends heavy guests to the lowered threads.
const STARVED_MEMORY: Duration = Duration::from_secs(1);

/// The threads heavy guests run on first, under `SCHED_IDLE`, and whether they
/// are starved: then heavy guests move to threads with a bounded share (see the
/// module's documentation). Starved is read from the kernel's per-thread
/// scheduling statistics (`/proc/self/task/TID/schedstat`: time run, time
/// waiting to run): a thread that waited more than half of the last check's
/// interval and ran less than a tenth of the time it wanted. Where those
/// statistics cannot be read, or the policy cannot be set, the tier counts as
/// starved for good, and heavy guests go to the lowered threads at once.
#[derive(Debug, Default)]
pub struct IdleTier {
    /// The tier's threads, with their run and wait times at the last check.
    threads: std::sync::Mutex<Vec<(i32, Schedstat)>>,
    last_check: std::sync::Mutex<Option<Instant>>,
    starved_until_ms: AtomicU64,
    /// The tier cannot tell (no statistics, no `SCHED_IDLE`).
    blind: std::sync::atomic::AtomicBool,
}

/// A thread's nanoseconds on a core and waiting for one, since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Schedstat {
    pub ran: u64,
    pub waited: u64,
}

impl Schedstat {
    /// The first two fields of a `schedstat` file (the third counts the times
    /// the thread got a core); `None` where the kernel keeps no statistics (it
    /// prints zeros).
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let (Some(Ok(ran)), Some(Ok(waited)), Some(Ok(runs))) = (fields.next(), fields.next(), fields.next()) else {
            return None;
        };
        (runs > 0).then_some(Self { ran, waited })
    }

    fn of_thread(tid: i32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?)
    }
}

impl IdleTier {
    /// Called on each of the tier's threads as it starts: `SCHED_IDLE`, and
    /// watched from now on.
    pub fn enter(&self) {
        if !idle_current_thread() || !self.watch_current_thread() {
            // Without the policy this thread would take light requests' cores;
            // without the statistics starvation could not be seen.
            lower_current_thread();
            self.blind.store(true, Ordering::Relaxed);
            tracing::warn!("heavy guests run on lowered threads only: SCHED_IDLE or per-thread scheduling statistics are not available");
        }
    }

    /// Watch the calling thread, already under `SCHED_IDLE`: the tier's own,
    /// and a heavy SQL statement's database thread, whose starvation is the
    /// same sign that light load saturates the node. False where the kernel
    /// keeps no statistics for it.
    pub fn watch_current_thread(&self) -> bool {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        let Some(stats) = Schedstat::of_thread(tid) else { return false };
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push((tid, stats));
        true
    }

    /// Whether heavy guests should leave (or skip) this tier for the lowered threads.
    pub fn starved(&self) -> bool {
        self.blind.load(Ordering::Relaxed) || self.starved_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Take the tier for starved, as a check that saw it would.
    pub(crate) fn mark_starved(&self) {
        let until = now_ms().saturating_add(STARVED_MEMORY.as_millis() as u64);
        self.starved_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the tier cannot tell starvation (its guests go to the lowered threads at once).
    pub fn is_blind(&self) -> bool {
        self.blind.load(Ordering::Relaxed)
    }

    /// Look at the tier's threads (every [`STARVATION_CHECK`]; more often is a no-op).
    pub fn check(&self) {
        let now = Instant::now();
        let wall = {
            let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
            let wall = last.map(|at| now.duration_since(at));
            if wall.is_some_and(|w| w < STARVATION_CHECK) {
                return;
            }
            *last = Some(now);
            match wall {
                Some(wall) => wall,
                None => return,
            }
        };
        let mut starved = false;
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain_mut(|(tid, last)| {
            let Some(now) = Schedstat::of_thread(*tid) else {
                return false; // the thread ended
            };
            starved |= is_starved(*last, now, wall);
            *last = now;
            true
        });
        drop(threads);
        if starved {
            self.mark_starved();
        }
    }
}

/// Whether a thread that went from `before` to `after` over `wall` was starved:
/// it waited for a core more than half of the time, and ran less than a tenth
/// of the time it wanted one.
pub fn is_starved(before: Schedstat, after: Schedstat, wall: Duration) -> bool {
    let ran = after.ran.saturating_sub(before.ran);
    let waited = after.waited.saturating_sub(before.waited);
    let wall = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
    waited.saturating_mul(2) > wall && ran.saturating_mul(10) < ran.saturating_add(waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_flooding_a_saturated_node_beside_others_is_marked_heavy() {
        let ms = 1_000_000;
        let heavy = |r: &RecentUse, at: u64| r.heavy_until_ms.load(Ordering::Relaxed) > at;
        // Alone, it may use the whole node: nobody waits behind it.
        let time = GuestTime::new(2);
        let alone = RecentUse::default();
        for t in 0..100 {
            time.charge_at(&alone, 2 * ms, t);
        }
        assert!(!heavy(&alone, 99), "a single busy instance");
        // Beside a light one, on a node not saturated: 45 ms of 100 ms on two cores.
        let time = GuestTime::new(2);
        let (big, light) = (RecentUse::default(), RecentUse::default());
        for t in 1000..1100 {
            time.charge_at(&light, ms / 20, t);
            time.charge_at(&big, ms * 4 / 10, t);
        }
        assert!(!heavy(&big, 1099), "the node had cores to spare");
        // Beside a light one, on a saturated node: marked within the window,
        // for a second; the light one is not.
        let time = GuestTime::new(2);
        let (flood, light) = (RecentUse::default(), RecentUse::default());
        let mut marked_at = None;
        for t in 2000..2100 {
            time.charge_at(&light, ms / 10, t);
            time.charge_at(&flood, 2 * ms, t);
            if marked_at.is_none() && heavy(&flood, t) {
                marked_at = Some(t);
            }
        }
        // 24 steps of 2.1 ms: past a quarter of two cores' 100 ms each.
        assert_eq!(marked_at, Some(2023));
        assert!(!heavy(&light, 2099));
        assert!(heavy(&flood, 2099 + 999) && !heavy(&flood, 2099 + 1000), "for HEAVY_MEMORY after its last charge");
        assert_eq!(time.marked(), 1, "counted once, not at every charge");
        // On the heavy threads it gets less done: still the most of the guest
        // time, but only 30 ms of each window. It stays marked while it goes on.
        for t in (2100..4000).step_by(10) {
            time.charge_at(&light, ms / 10, t);
            time.charge_at(&flood, 3 * ms, t);
        }
        assert!(heavy(&flood, 3999) && time.marked() == 1, "kept marked, not let back every second");
        // One tenant's flood spread over two instances, each under three fifths
        // of the guest time: the tenant's share marks both.
        let time = GuestTime::new(2);
        let mallory = Arc::new(TenantUse::default());
        let (a, b) = (RecentUse::of_tenant(mallory.clone()), RecentUse::of_tenant(mallory));
        let light = RecentUse::default();
        for t in 3000..3100 {
            time.charge_at(&light, ms / 10, t);
            time.charge_at(&a, ms, t);
            time.charge_at(&b, ms, t);
        }
        assert!(heavy(&a, 3099) && heavy(&b, 3099) && !heavy(&light, 3099));
        // Two tenants sharing a saturated node evenly: neither.
        let time = GuestTime::new(2);
        let (a, b) = (RecentUse::default(), RecentUse::default());
        for t in 5000..5100 {
            time.charge_at(&a, ms, t);
            time.charge_at(&b, ms, t);
        }
        assert_eq!(time.marked(), 0);
        // A new window starts the count again.
        let time = GuestTime::new(2);
        let (flood, light) = (RecentUse::default(), RecentUse::default());
        for t in (7000..7400).step_by(5) {
            time.charge_at(&light, ms / 10, t);
            time.charge_at(&flood, 2 * ms, t);
        }
        assert!(!heavy(&flood, 7399), "42 ms of guest time in each window");
    }

    #[test]
    fn schedstat_is_read_where_the_kernel_keeps_it() {
        assert_eq!(Schedstat::parse("37400962 8978833 59\n"), Some(Schedstat { ran: 37_400_962, waited: 8_978_833 }));
        assert_eq!(Schedstat::parse("0 0 0\n"), None, "statistics off");
        assert_eq!(Schedstat::parse(""), None);
        assert_eq!(Schedstat::parse("12 x 1"), None);
        assert_eq!(Schedstat::parse("0 0 1"), Some(Schedstat { ran: 0, waited: 0 }), "a thread not yet descheduled");
    }

    #[test]
    fn a_thread_is_starved_when_it_waits_most_of_the_time_and_barely_runs() {
        let at = |ran_ms: u64, waited_ms: u64| Schedstat { ran: ran_ms * 1_000_000, waited: waited_ms * 1_000_000 };
        let wall = Duration::from_millis(100);
        // Busy beside light requests: ran 60, waited 40 of 100 ms.
        assert!(!is_starved(at(0, 0), at(60, 40), wall));
        // Idle: neither ran nor waited.
        assert!(!is_starved(at(5, 5), at(5, 5), wall));
        // Saturated by light load: waited 99 ms, ran 1.
        assert!(is_starved(at(5, 5), at(6, 104), wall));
        // Waited most of the time but ran a fair part when it could.
        assert!(!is_starved(at(0, 0), at(20, 70), wall));
    }

    #[test]
    fn this_kernel_keeps_per_thread_statistics() {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        if cfg!(target_os = "linux") {
            let stats = Schedstat::of_thread(tid);
            assert!(stats.is_some(), "no schedstat for this thread: heavy guests would skip SCHED_IDLE");
        }
    }
}
