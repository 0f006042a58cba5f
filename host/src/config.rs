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
    /// Bounds on what clients can hold at the edges: connections, slow bodies,
    /// concurrent guests per tenant.
    pub edges: EdgeLimits,
    /// Threads that run instance database work (SQL, key-value); a tenant uses
    /// at most half of them at once.
    pub db_threads: usize,
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
    /// Bytes of stdout and stderr one request may write to the node's log; the
    /// rest is dropped and counted in one line.
    pub output_bytes: usize,
    /// Linear memory of all guests together (`None`: half the machine's memory,
    /// or less when the pool cannot use that much).
    pub max_total_memory_bytes: Option<usize>,
}

impl GuestLimits {
    /// The node-wide guest memory budget for a pool of `pool` slots.
    pub fn total_memory_bytes(&self, pool: u32) -> usize {
        let most = self.max_memory_bytes.saturating_mul(pool as usize);
        self.max_total_memory_bytes.unwrap_or_else(|| half_of_physical_memory().min(most)).max(self.max_memory_bytes)
    }
}

/// Half of `MemTotal` from `/proc/meminfo` (4 GiB where it cannot be read).
fn half_of_physical_memory() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
    });
    total_kib.map(|kib| kib.saturating_mul(1024) / 2).unwrap_or(4 << 30)
}

/// What clients and tenants may hold at the edges of a node.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    /// Open connections to the ingress, node-wide; more are closed at accept.
    pub max_connections: usize,
    /// Open connections to the ingress from one IP address.
    pub max_connections_per_ip: usize,
    /// Open connections to the admin API.
    pub admin_max_connections: usize,
    /// How long a client may take to send a request's headers (both listeners).
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Slowest average rate a request body may arrive at, after the idle
    /// timeout's grace, in bytes per second.
    pub min_body_rate: u64,
    /// Bytes of a request body read before a guest is started; a client that
    /// trickles its body holds a connection, never a guest.
    pub body_prefetch_bytes: usize,
    /// Guests one tenant may run at once (`None`: a quarter of the pool).
    pub max_guests_per_tenant: Option<u32>,
    /// Guests one instance may run at once (`None`: as many as its tenant).
    pub max_guests_per_instance: Option<u32>,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 2_048,
            admin_max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            body_prefetch_bytes: 64 << 10,
            max_guests_per_tenant: None,
            max_guests_per_instance: None,
        }
    }
}

impl EdgeLimits {
    /// Guests one tenant may run at once in a pool of `pool` slots.
    pub fn guests_per_tenant(&self, pool: u32) -> u32 {
        self.max_guests_per_tenant.unwrap_or(pool / 4).clamp(1, pool.max(1))
    }

    /// Guests one instance may run at once in a pool of `pool` slots.
    pub fn guests_per_instance(&self, pool: u32) -> u32 {
        let tenant = self.guests_per_tenant(pool);
        self.max_guests_per_instance.unwrap_or(tenant).clamp(1, tenant)
    }
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
            output_bytes: 64 << 10,
            max_total_memory_bytes: None,
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
            edges: EdgeLimits::default(),
            db_threads: 4,
            shutdown_grace: Duration::from_secs(30),
            usage_flush_interval: Duration::from_secs(1),
            init_admin: None,
        }
    }
}
