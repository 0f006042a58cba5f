//! The wasmtime side of a node: one engine, one linker and one epoch ticker per
//! process; a compile and an `instantiate_pre` per service version; a fresh store
//! per request, or, for a version that opts in, an instance's sandbox kept for
//! its next request ([`reuse`]).
//!
//! Every request runs under a fuel budget, a memory cap (the pooling allocator's
//! slot size and a [`wasmtime::ResourceLimiter`]) and a wall-clock deadline
//! enforced by epoch interruption. A guest that spins yields to the executor at
//! every epoch tick, and one that computes for 2 ms on the request threads moves to a pool of
//! low-priority threads ([`crate::sched`]), so the kernel runs every light request
//! before it: CPU is shared by recent use, and a tenant's spinning guests cannot
//! multiply another tenant's latency.

mod guest;
mod heavy;
mod invoke;
mod job;
mod platform;
mod reuse;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::{GuestLimits, PoolConfig};
pub use guest::{plain_body, GuestState, MemoryBudget, RequestIdentity};
pub use invoke::{GuestFailure, Handled, Outcome};
pub use job::{GuestJob, JobCall, JobOutcome, WorkerPre};
pub use platform::{
    Enqueueing, Enqueuer, Features, GuestCaller, GuestContext, InstanceJobs, JobQueue, JobRequest, JobsContext,
    HOST_CALL_FUEL_PER_MS,
};
pub use reuse::{Reuse, ReusePolicy};

/// A pre-instantiated HTTP component, ready for one store per request.
pub type ProxyPre = wasmtime_wasi_http::p2::bindings::ProxyPre<GuestState>;

/// How often the epoch advances. A spinning guest yields this often, and a
/// deadline is enforced to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The interface a component must export to be served over HTTP.
const HTTP_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// Why a component was refused at publish.
#[derive(Debug, thiserror::Error)]
pub enum InvalidComponent {
    #[error("the component file is empty")]
    Empty,
    #[error("the file is not WebAssembly (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    #[error(
        "the file is a core WebAssembly module, not a component; build it with \
         `--target wasm32-wasip2` or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the component is malformed or truncated: {0}")]
    Malformed(String),
    #[error(
        "the component is valid but needs more than this node allows: {detail}. This node gives an instance at \
         most {max_memory} of linear memory (wharf serve --max-memory-mib): raise it on every node, or \
         build the component to start with less"
    )]
    OverLimit { detail: String, max_memory: String },
    #[error(
        "the component does not export `wasi:http/incoming-handler` (it exports: {0}); \
         a service must be a wasi:http/proxy component"
    )]
    NoHttpHandler(String),
    #[error("the component imports something Wharf does not provide: {0}")]
    UnsupportedImport(String),
}

/// `bytes` as whole MiB, or as KiB where it is not a whole number of MiB.
pub(crate) fn mib_or_kib(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Guests a runtime started, for the metrics.
#[derive(Debug, Default)]
pub struct Starts {
    /// Fresh instances, and the nanoseconds their instantiation took in all.
    pub fresh: std::sync::atomic::AtomicU64,
    pub fresh_nanos: std::sync::atomic::AtomicU64,
    /// Requests served by a reused sandbox.
    pub reused: std::sync::atomic::AtomicU64,
}

/// The engine, linker and limits shared by every guest of a node.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: GuestLimits,
    ticker: Option<EpochTicker>,
    /// Where CPU-heavy guests continue (see [`invoke`] and [`heavy`]).
    heavy: Option<heavy::Heavy>,
    /// Each tenant's share of the node's guest time: a tenant flooding a
    /// saturated node beside others continues on the heavy threads too.
    guest_time: Arc<crate::sched::GuestTime>,
    /// Where jobs run: a thread per core, all lowered (see `sched`), so background
    /// work uses the cores nobody else wants, keeps a bounded share when the
    /// node is saturated, and barely delays a request.
    jobs: Option<tokio::runtime::Runtime>,
    /// Linear memory of all guests together.
    memory: Arc<MemoryBudget>,
    /// Sandboxes of instances whose version allows reuse, between requests.
    sandboxes: Arc<reuse::Sandboxes>,
    /// The heavy guests' idle-priority threads, watched for starvation.
    idle_tier: Arc<crate::sched::IdleTier>,
    /// Guests started, fresh or in a reused sandbox, and the time fresh ones took.
    pub starts: Arc<Starts>,
}

impl Runtime {
    /// Build the engine (pooling allocator, fuel, epochs) and a linker with all of
    /// WASI 0.2 and wasi:http.
    pub fn new(limits: GuestLimits, pool: &PoolConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&limits, pool))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("failed to create the wasmtime engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("failed to link WASI")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("failed to link wasi:http")?;
        platform::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("failed to link wharf:platform")?;
        // A tenant holds at most a quarter of it, as of the guest slots, but
        // always enough for one guest at its own cap.
        let total = limits.total_memory_bytes(pool.max_instances);
        let memory = MemoryBudget::new(total, (total / 4).max(limits.max_memory_bytes));
        // Idle sandboxes: a quarter of the slots and of the memory, half of a
        // tenant's share; the rest always stays for fresh ones.
        let sandboxes = Arc::new(reuse::Sandboxes::new(
            (pool.max_instances as usize / 4).max(1),
            total / 4,
            memory.per_tenant() / 2,
        ));
        let tier = Arc::new(crate::sched::IdleTier::default());
        let ticker = Some(
            EpochTicker::start(engine.clone(), sandboxes.clone(), tier.clone())
                .context("failed to start the epoch ticker thread")?,
        );
        let heavy = heavy::Heavy::start(tier.clone())?;
        let jobs = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
            .thread_name("wharf-jobs")
            .on_thread_start(crate::sched::lower_current_thread)
            .enable_all()
            .build()
            .context("failed to start the job threads")?;
        Ok(Self {
            engine,
            linker,
            limits,
            ticker,
            heavy: Some(heavy),
            // Saturation is measured against the request threads: the runtime
            // the node starts on (a thread per core, unless told otherwise).
            guest_time: Arc::new(crate::sched::GuestTime::new(
                tokio::runtime::Handle::try_current()
                    .map(|runtime| runtime.metrics().num_workers())
                    .unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
            )),
            jobs: Some(jobs),
            memory,
            sandboxes,
            idle_tier: tier,
            starts: Arc::default(),
        })
    }

    /// The engine, for compiling and deserializing components.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits every request runs under.
    pub fn limits(&self) -> &GuestLimits {
        &self.limits
    }

    /// Linear memory granted to running guests, against the node's budget.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Sandboxes waiting for their instance's next request, and the linear
    /// memory they hold.
    pub fn idle_sandboxes(&self) -> (usize, usize) {
        self.sandboxes.idle()
    }

    /// The heavy guests' idle-priority threads: work that cannot move to
    /// them (a SQL statement on its database thread) is watched with them.
    pub fn idle_tier(&self) -> &Arc<crate::sched::IdleTier> {
        &self.idle_tier
    }

    /// Each tenant's share of the node's guest time, which SQL statements count in too.
    pub fn guest_time(&self) -> &Arc<crate::sched::GuestTime> {
        &self.guest_time
    }

    /// Guest runs that turned out CPU-heavy (or whose instance's did lately) and
    /// moved to the heavy threads, and of those, the ones light load starved on
    /// the idle-priority threads, moved on to the lowered ones.
    pub fn heavy_guests(&self) -> (u64, u64) {
        self.heavy.as_ref().map(heavy::Heavy::counts).unwrap_or_default()
    }

    /// How many times an instance was sent to the heavy threads because its
    /// tenant took most of a saturated node's guest time beside others.
    pub fn flooding_marks(&self) -> u64 {
        self.guest_time.marked()
    }

    /// A fingerprint of the engine's code-generation settings; compiled artifacts
    /// are only reused by an engine with the same fingerprint.
    pub fn engine_fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Compile and fully validate a component: it must be a component, export the
    /// HTTP handler and import nothing the host does not provide.
    pub fn compile(&self, bytes: &[u8]) -> Result<Component, InvalidComponent> {
        check_header(bytes)?;
        let component = Component::new(&self.engine, bytes).map_err(|e| self.refusal(&format!("{e:#}")))?;
        self.check_exports(&component)?;
        Ok(component)
    }

    /// Why the engine refused a component: this node's limits (the pooling
    /// allocator checks every memory, table and instance count against them
    /// when a component is compiled or loaded), or its bytes.
    fn refusal(&self, error: &str) -> InvalidComponent {
        const LIMIT_PHRASES: [&str; 4] = [
            "pooling allocator",
            "exceeds the limit of",
            "exceeds the configured maximum",
            "exceeds the per-instance limit",
        ];
        if LIMIT_PHRASES.iter().any(|p| error.contains(p)) {
            InvalidComponent::OverLimit {
                detail: error.to_string(),
                max_memory: mib_or_kib(self.limits.max_memory_bytes),
            }
        } else {
            InvalidComponent::Malformed(error.to_string())
        }
    }

    /// Load a component this node compiled and serialized earlier.
    ///
    /// # Safety
    ///
    /// `path` must hold bytes written by [`Component::serialize`] of an engine with
    /// the same fingerprint, and must not be modified while loaded. The registry
    /// only passes files it wrote itself into its private cache directory.
    pub unsafe fn load_compiled(&self, path: &std::path::Path) -> anyhow::Result<Component> {
        // SAFETY: upheld by the caller, see above.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(component) => Ok(component),
            Err(e) => match self.refusal(&format!("{e:#}")) {
                over @ InvalidComponent::OverLimit { .. } => Err(anyhow::Error::from(over)),
                _ => {
                    Err(anyhow::anyhow!("{e:#}")).with_context(|| format!("failed to load compiled component {path:?}"))
                }
            },
        }
    }

    /// Link a compiled component against the host, ready to instantiate per request.
    pub fn prepare(&self, component: &Component) -> Result<ProxyPre, InvalidComponent> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| InvalidComponent::UnsupportedImport(format!("{e:#}")))?;
        ProxyPre::new(pre).map_err(|e| InvalidComponent::NoHttpHandler(format!("{e:#}")))
    }

    /// The linear memory `component` starts with: its largest memory's initial
    /// size, in bytes. Every fresh sandbox is given it and resets it when its
    /// request ends, so it is most of what a fresh request costs beyond the
    /// guest's own work (a Rust component's default 1 MiB stack, say). `None`
    /// for a component without memory, or one whose core modules are imported
    /// (their sizes are not known before instantiation).
    pub fn initial_memory_bytes(component: &Component) -> Option<u64> {
        const WASM_PAGE: u64 = 64 << 10;
        let pages = component.resources_required()?.max_initial_memory_size?;
        Some(pages.saturating_mul(WASM_PAGE))
    }

    fn check_exports(&self, component: &Component) -> Result<(), InvalidComponent> {
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        if exports.iter().any(|name| name.starts_with(HTTP_HANDLER)) {
            return Ok(());
        }
        let listed = if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
        Err(InvalidComponent::NoHttpHandler(listed))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
        // Not a blocking shutdown: this may run on an async worker.
        if let Some(heavy) = self.heavy.take() {
            heavy.shutdown_background();
        }
        if let Some(jobs) = self.jobs.take() {
            jobs.shutdown_background();
        }
    }
}

/// Refuse what is plainly not a component before handing bytes to the compiler,
/// so the error says what the file is.
fn check_header(bytes: &[u8]) -> Result<(), InvalidComponent> {
    if bytes.is_empty() {
        return Err(InvalidComponent::Empty);
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(InvalidComponent::NotWasm);
    }
    // Bytes 4..8 are the version and layer: a core module is version 1, layer 0.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(InvalidComponent::CoreModule);
    }
    Ok(())
}

fn engine_config(limits: &GuestLimits, pool: &PoolConfig) -> Config {
    let mut pooling = PoolingAllocationConfig::new();
    // A component built with Rust's std links a handful of core instances (the
    // program, libc adapters, shims); 20 leaves room without reserving much.
    let per_component = 20;
    pooling
        .total_component_instances(pool.max_instances)
        .total_core_instances(pool.max_instances.saturating_mul(per_component))
        .total_memories(pool.max_instances.saturating_mul(4))
        .total_tables(pool.max_instances.saturating_mul(per_component))
        .total_stacks(pool.max_instances)
        .max_core_instances_per_component(per_component)
        .max_memories_per_component(4)
        .max_tables_per_component(per_component)
        .max_memory_size(limits.max_memory_bytes)
        .linear_memory_keep_resident(pool.keep_resident_bytes)
        .table_keep_resident(64 << 10)
        // PAGEMAP_SCAN stays off: it is not safe between tenants. In wasmtime 48
        // (`runtime/vm/sys/unix/pagemap.rs`, `reset_with_pagemap`) the scan resets
        // only pages that are PRESENT and WRITTEN, and skips `decommit` entirely
        // when the walk reaches the end of the memory. A page the previous guest
        // wrote that is not present at that moment -- swapped out, or behind a
        // migration entry while the kernel compacts memory -- is neither reset
        // nor discarded, and the next guest in the slot reads it back. Without the
        // scan, the kept-resident prefix is reset in full and everything past it
        // is decommitted (`pagemap_disabled.rs`), whatever the pages' state.
        .pagemap_scan(wasmtime::Enabled::No);
    let mut config = Config::new();
    if pool.pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    } else {
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    }
    config.consume_fuel(true).epoch_interruption(true).max_wasm_stack(limits.max_wasm_stack).memory_init_cow(true);
    // A trap's backtrace is for the log; a guest recursing to its stack limit
    // must not make the host walk and format thousands of frames per request.
    config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    config
}

/// One thread per engine advancing the epoch every [`EPOCH_TICK`] (and, once a
/// second, dropping sandboxes idle past their time; every
/// [`crate::sched::STARVATION_CHECK`], looking whether heavy guests' idle
/// threads are starved).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl EpochTicker {
    fn start(
        engine: Engine,
        sandboxes: Arc<reuse::Sandboxes>,
        tier: Arc<crate::sched::IdleTier>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("wharf-epoch".into()).spawn(move || {
            let mut last_sweep = std::time::Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
                tier.check();
                if last_sweep.elapsed() >= Duration::from_secs(1) {
                    sandboxes.sweep();
                    last_sweep = std::time::Instant::now();
                }
            }
        })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// At most `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_memory_limit_is_named_in_the_unit_it_was_given_in() {
        assert_eq!(super::mib_or_kib(128 << 20), "128 MiB");
        assert_eq!(super::mib_or_kib(1 << 20), "1 MiB");
        assert_eq!(super::mib_or_kib(128 << 10), "128 KiB");
        assert_eq!(super::mib_or_kib(3 << 19), "1536 KiB");
    }
}
