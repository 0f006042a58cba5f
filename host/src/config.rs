//! Settings of one node: where it listens, where it keeps state, and the limits
//! every guest runs under.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `wharf serve` needs to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Directory holding the control-plane database, components and the compiled cache.
    pub data_dir: PathBuf,
    /// Public listener: requests are routed to instances by their `Host`.
    pub ingress_addr: SocketAddr,
    /// Admin API listener (JSON).
    pub admin_addr: SocketAddr,
    /// Limits applied to every guest.
    pub limits: GuestLimits,
    /// Pooling allocator sizing.
    pub pool: PoolConfig,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// How often usage counters are written to the database.
    pub usage_flush_interval: Duration,
    /// Create this platform operator at start if there is none; its API key is
    /// returned once (and printed by `wharf serve --init-admin`).
    pub init_admin: Option<String>,
}

/// The budget every request's guest gets.
#[derive(Debug, Clone)]
pub struct GuestLimits {
    /// Fuel (roughly, wasm instructions) one request may consume.
    pub fuel_per_request: u64,
    /// Largest linear memory a guest may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock time one request may take, guest code and waits included.
    pub request_timeout: Duration,
    /// Largest wasm stack, in bytes; deeper recursion traps.
    pub max_wasm_stack: usize,
}

/// Sizing of wasmtime's pooling instance allocator.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Use the pooling allocator (the default). Off, every instance maps and
    /// unmaps its memory on demand: slower, but reserves no address space up front.
    pub pooling: bool,
    /// Guests that may run at once; more concurrent requests answer 503.
    pub max_instances: u32,
    /// Bytes of each linear memory kept resident (and zeroed with memset) between
    /// uses, instead of being returned to the kernel. Returning pages costs page-table
    /// work and TLB shootdowns on every request, which dominates small requests.
    pub keep_resident_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            fuel_per_request: 2_000_000_000,
            max_memory_bytes: 128 << 20,
            request_timeout: Duration::from_secs(30),
            max_wasm_stack: 512 << 10,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { pooling: true, max_instances: 1000, keep_resident_bytes: 4 << 20 }
    }
}

impl NodeConfig {
    /// A configuration with defaults, keeping its state under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ingress_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            limits: GuestLimits::default(),
            pool: PoolConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            usage_flush_interval: Duration::from_secs(1),
            init_admin: None,
        }
    }
}
