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
    /// A PostgreSQL control plane shared by several nodes (`None`: SQLite in `data_dir`).
    pub database_url: Option<String>,
    /// Redis for what nodes share besides the control plane: instances' key-value
    /// stores and login limits (`None`: each node keeps them itself).
    pub redis_url: Option<String>,
    /// A bearer token Prometheus may scrape `GET /metrics` with, besides an
    /// operator's credential (`None`: operators only).
    pub metrics_token: Option<String>,
    /// With a PostgreSQL control plane: connections to instance databases this
    /// node opens at most.
    pub instance_connections: usize,
    /// With a PostgreSQL control plane: connections this node opens to it at
    /// most (besides the one it listens for changes on).
    pub control_plane_connections: u32,
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
    /// How long an instance's databases stay open after its last call.
    pub database_idle: Duration,
    /// How often the dashboard's history takes a point (it keeps 360).
    pub history_interval: Duration,
    /// Append each request's usage to a local journal before counting it
    /// (default), so a killed node loses none; `false` keeps it in memory
    /// until the next flush (for comparison benchmarks).
    pub usage_journal: bool,
    /// How long a deleted instance stays restorable before its data (files,
    /// schema and role, key-value entries, jobs) is destroyed.
    pub deletion_grace: Duration,
    /// Create this platform operator at start if there is none; its API key is
    /// returned once (and printed by `wharf serve --init-admin`).
    pub init_admin: Option<String>,
    /// Who may join, what they may claim, and how much they may hold.
    pub trust: TrustConfig,
    /// The job queue and this node's workers.
    pub jobs: JobsConfig,
    /// Billing: its clock, and when invoices close.
    pub billing: BillingConfig,
    /// How often a node unloads versions nothing uses any more.
    pub unload_interval: Duration,
}

/// Billing settings of a node.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    /// Let operators move the billing clock forward (tests, demos).
    pub settable_clock: bool,
    /// How long after its period an invoice closes by itself (usage of the
    /// period's last moments is flushed meanwhile).
    pub invoice_grace: Duration,
    /// How often a node closes due invoices and checks spending limits.
    pub interval: Duration,
    /// How often the node running the passes looks again at the
    /// subscriptions of the instances changed since (a safety net: every
    /// change records its own event at once).
    pub sync_interval: Duration,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            settable_clock: false,
            invoice_grace: Duration::from_secs(3600),
            interval: Duration::from_secs(5),
            // Often enough that the change log (4,096 changes) still has
            // every change since the last look on a busy platform.
            sync_interval: Duration::from_secs(5),
        }
    }
}

/// Who may register, which hostnames tenants may claim, and the quotas.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// The platform's own domains: instance `forum` of tenant `acme` answers at
    /// `forum.acme.<domain>` for each, with nothing to prove.
    pub domains: Vec<String>,
    /// Names of the node itself (besides `localhost` and the machine's hostname),
    /// which no tenant may claim.
    pub node_names: Vec<String>,
    /// How long a released hostname stays reserved to its tenant.
    pub hostname_reservation: Duration,
    /// Where HTTP challenges connect instead of the name's own address (a load
    /// balancer in front, or, with port 0, this node's own ingress).
    pub challenge_connect: Option<SocketAddr>,
    /// The addresses a name must resolve to for its HTTP challenge to count when
    /// `challenge_connect` is set (default: that address's IP).
    pub platform_addresses: Vec<std::net::IpAddr>,
    /// DNS server for TXT challenges, and for resolving names checked through
    /// `challenge_connect` (default: the system's resolvers).
    pub dns_server: Option<SocketAddr>,
    /// Who may create an account.
    pub registration: Registration,
    /// Who may create tenants.
    pub tenant_creation: TenantCreation,
    /// Default quotas; operators override them per tenant or user.
    pub quotas: QuotaDefaults,
    /// How long an invitation can be accepted.
    pub invitation_lifetime: Duration,
    /// Base URL of the admin API as invitees reach it (default: the admin address).
    pub public_url: Option<String>,
    /// Send invitations by SMTP (`smtp://host:25`, `smtps://user:pass@host`).
    pub smtp_url: Option<String>,
    /// Sender of invitation emails.
    pub mail_from: String,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR blocks).
    pub trusted_proxies: Vec<IpBlock>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            node_names: Vec::new(),
            hostname_reservation: Duration::from_secs(30 * 86_400),
            challenge_connect: None,
            platform_addresses: Vec::new(),
            dns_server: None,
            registration: Registration::Invite,
            tenant_creation: TenantCreation::Anyone,
            quotas: QuotaDefaults::default(),
            invitation_lifetime: Duration::from_secs(7 * 86_400),
            public_url: None,
            smtp_url: None,
            mail_from: "wharf@localhost".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone (their address is unproven until they accept an invitation).
    Open,
    /// Only with an invitation sent to their address (operators may always add users).
    Invite,
    /// Nobody but operators.
    Closed,
}

/// Who may create tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantCreation {
    /// Any signed-in user, within their tenants quota.
    Anyone,
    /// Operators only.
    Operators,
}

/// The quotas every tenant (and user) has unless an operator overrides them.
#[derive(Debug, Clone, Copy)]
pub struct QuotaDefaults {
    pub tenants_per_user: i64,
    pub instances_per_tenant: i64,
    pub hostnames_per_tenant: i64,
    pub database_bytes_per_tenant: i64,
    pub pending_jobs_per_tenant: i64,
    pub job_bytes_per_tenant: i64,
}

impl Default for QuotaDefaults {
    fn default() -> Self {
        Self {
            tenants_per_user: 5,
            instances_per_tenant: 20,
            hostnames_per_tenant: 50,
            database_bytes_per_tenant: 1 << 30,
            pending_jobs_per_tenant: 100_000,
            job_bytes_per_tenant: 256 << 20,
        }
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpBlock {
    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(block), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(block) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(block), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(block) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpBlock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or CIDR block (like 10.0.0.0/8 or ::1)");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
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
            database_url: None,
            redis_url: None,
            metrics_token: None,
            instance_connections: 16,
            control_plane_connections: 8,
            ingress_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            limits: GuestLimits::default(),
            pool: PoolConfig::default(),
            edges: EdgeLimits::default(),
            db_threads: 4,
            shutdown_grace: Duration::from_secs(30),
            usage_flush_interval: Duration::from_secs(1),
            database_idle: Duration::from_secs(300),
            history_interval: Duration::from_secs(10),
            usage_journal: true,
            deletion_grace: Duration::from_secs(7 * 86_400),
            init_admin: None,
            trust: TrustConfig::default(),
            jobs: JobsConfig::default(),
            billing: BillingConfig::default(),
            unload_interval: Duration::from_secs(60),
        }
    }
}

/// Settings of the queue and the workers of one node.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Jobs this node runs at once (0: it runs none).
    pub concurrency: usize,
    /// Wall-clock limit of one attempt.
    pub timeout: Duration,
    /// How long a claim holds a job: longer than `timeout`, so a live worker
    /// always finishes (or gives up) first. After it, another worker may take it.
    pub lease: Duration,
    /// First retry delay; doubles with each attempt.
    pub backoff: Duration,
    /// Attempts unless the job says otherwise.
    pub max_attempts: u32,
    /// Fuel of one attempt.
    pub fuel: u64,
    /// How often an idle worker looks for jobs other nodes queued (or that
    /// became due): on one node, or on the node running the platform's passes.
    pub poll: Duration,
    /// The same on the other nodes of a PostgreSQL fleet, which are also woken
    /// when a node finds more jobs ready than it can take.
    pub fleet_poll: Duration,
    /// Finished (succeeded, cancelled) jobs are deleted after this long; dead
    /// ones are kept until someone retries or cancels them.
    pub retention: Duration,
    /// Finished jobs kept per tenant besides the retention: only its newest
    /// this many (a tenant running jobs without pause fills no disk).
    pub kept_finished: i64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            timeout: Duration::from_secs(60),
            lease: Duration::from_secs(90),
            backoff: Duration::from_secs(1),
            max_attempts: 5,
            // Ten requests' worth at the default request budget; a node sets
            // it to ten times its own (`NodeConfig::limits`).
            fuel: 20_000_000_000,
            poll: Duration::from_millis(200),
            fleet_poll: Duration::from_secs(5),
            retention: Duration::from_secs(7 * 86_400),
            kept_finished: 10_000,
        }
    }
}
