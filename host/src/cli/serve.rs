//! `wharf serve`: its options, turned into a node's configuration, and running
//! a node until SIGTERM or Ctrl-C.

use super::*;

/// Options of `wharf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory for the database, components and compiled cache.
    #[arg(long, env = "WHARF_DATA", default_value = "./wharf-data")]
    pub data: PathBuf,
    /// A PostgreSQL control plane (postgres://user@host:5432/db) that several
    /// nodes share; instances' SQL databases then live there too (a schema and a
    /// role each; the user needs CREATEROLE). Default: SQLite in the data directory.
    #[arg(long, env = "WHARF_DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database: Option<String>,
    /// With --database: connections this node opens to instance databases at
    /// most (four per instance; idle ones close after 30 s).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub instance_connections: u16,
    /// With --database: connections this node opens to the control plane at
    /// most, besides the one it listens for changes on (a fleet of N nodes
    /// needs N × (this + 1) of the server's `max_connections`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub control_plane_connections: u32,
    /// Jobs this node runs at once (0: this node runs none, only serves).
    #[arg(long, default_value_t = 16)]
    pub job_workers: usize,
    /// Wall-clock limit of one job attempt, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub job_timeout: u64,
    /// Seconds a worker holds a job: past it, a job whose worker died runs
    /// again elsewhere. At least the job timeout + 1 (default: timeout + 30).
    #[arg(long)]
    pub job_lease: Option<u64>,
    /// First retry delay of a failed job, in milliseconds; doubles per attempt.
    #[arg(long, default_value_t = 1000)]
    pub job_backoff_ms: u64,
    /// Attempts of a job unless it says otherwise.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_attempts: u32,
    /// Let operators move the billing clock forward (`wharf clock set`), to
    /// simulate months in seconds. For tests and demos, never production.
    #[arg(long)]
    pub settable_clock: bool,
    /// Keep usage in memory until the once-a-second flush instead of
    /// appending it to the journal first: a SIGKILL then loses up to a second
    /// of usage. For measuring what the journal costs, not for production.
    #[arg(long)]
    pub no_usage_journal: bool,
    /// How often this node writes the usage it counted to the control plane, in
    /// seconds (one transaction each; the journal keeps what is not written yet).
    /// A large fleet writes less often to spare the control plane.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub usage_flush_secs: u64,
    /// Seconds an instance's databases stay open after its last call (its
    /// connections, its line on the database threads); the next call opens
    /// them again. Idle instances cost a node a few hundred bytes each.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub database_idle_secs: u64,
    /// Seconds a deleted instance stays restorable before its data is
    /// destroyed (default 7 days; operators may delete at once).
    #[arg(long, default_value_t = 7 * 86_400)]
    pub deletion_grace: u64,
    /// Seconds after its month ends that an invoice closes by itself.
    #[arg(long, default_value_t = 3600)]
    pub invoice_grace: u64,
    /// Redis (redis://host:6379) for instances' key-value stores and login limits
    /// shared by several nodes; default: each node keeps them itself.
    #[arg(long, env = "WHARF_REDIS_URL", hide_env_values = true, value_name = "URL")]
    pub redis: Option<String>,
    /// A token Prometheus scrapes `GET /metrics` on the admin listener with
    /// (`Authorization: Bearer …`), besides an operator's credential; at least
    /// 32 characters.
    #[arg(long, env = "WHARF_METRICS_TOKEN", hide_env_values = true, value_name = "TOKEN",
          value_parser = parse_metrics_token)]
    pub metrics_token: Option<String>,
    /// How log lines look on stderr: `text` for people, `json` (one object per
    /// line, the event's fields at the top level) for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WHARF_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Export traces over OTLP/HTTP to this collector: its base URL
    /// (http://127.0.0.1:4318, `/v1/traces` is added) or its traces URL. Each
    /// request and job is a span tree: ingress, auth, guest, each platform call
    /// with its backend. Default: no traces (and no cost).
    #[arg(long, env = "WHARF_OTLP_ENDPOINT", value_name = "URL", value_parser = crate::telemetry::traces_url)]
    pub otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: the bodies' encoding.
    #[arg(long, value_enum, default_value_t = OtlpProtocol::HttpProtobuf, env = "WHARF_OTLP_PROTOCOL")]
    pub otlp_protocol: OtlpProtocol,
    /// With --otlp-endpoint: the share of traces exported, 0 to 1, chosen by
    /// trace id (the same choice on every node; a client's `traceparent`
    /// flags cannot force it).
    #[arg(long, default_value_t = 1.0, env = "WHARF_TRACE_SAMPLE_RATIO", value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,
    /// Ingress address (requests routed by Host).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin: SocketAddr,
    /// Fuel each request may consume.
    #[arg(long, default_value_t = 2_000_000_000)]
    pub fuel: u64,
    /// Largest linear memory of a guest, in MiB.
    #[arg(long, default_value_t = 128)]
    pub max_memory_mib: usize,
    /// Wall-clock limit of one request, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Guests that may run at once (pooling allocator slots).
    #[arg(long, default_value_t = 1000)]
    pub max_instances: u32,
    /// Create this platform operator if none exists, and print its API key once.
    #[arg(long, value_name = "EMAIL")]
    pub init_admin: Option<String>,
    /// Bytes of linear memory kept resident between requests, in KiB.
    #[arg(long, default_value_t = 4096)]
    pub keep_resident_kib: usize,
    /// Allocate guest memory on demand instead of from the pool (slower per request,
    /// reserves no address space up front).
    #[arg(long)]
    pub no_pooling: bool,
    /// Guests one tenant may run at once (default: a quarter of --max-instances).
    #[arg(long)]
    pub max_guests_per_tenant: Option<u32>,
    /// Guests one instance may run at once (default: as many as its tenant).
    #[arg(long)]
    pub max_guests_per_instance: Option<u32>,
    /// Open ingress connections, node-wide.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open ingress connections from one IP address.
    #[arg(long, default_value_t = 2_048)]
    pub max_connections_per_ip: usize,
    /// Longest pause in a request's headers or body, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub client_timeout_ms: u64,
    /// Bytes of stdout/stderr one request may write to the log, in KiB.
    #[arg(long, default_value_t = 64)]
    pub output_kib: usize,
    /// Linear memory of all guests together, in MiB (default: half the machine's).
    #[arg(long)]
    pub max_guest_memory_mib: Option<usize>,
    /// Threads running instance database work; a tenant uses at most half.
    #[arg(long, default_value_t = 4)]
    pub db_threads: usize,
    /// A platform domain (repeatable): instance <name> of tenant <t> answers at
    /// <name>.<t>.<domain> with nothing to prove.
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// A name of this node that no tenant may claim (repeatable; `localhost` and
    /// the machine's hostname are always refused).
    #[arg(long = "node-name", value_name = "NAME")]
    pub node_names: Vec<String>,
    /// Who may create an account: open, invite (with an invitation) or closed
    /// (operators only).
    #[arg(long, value_enum, default_value = "invite")]
    pub registration: crate::config::Registration,
    /// Who may create tenants.
    #[arg(long, value_enum, default_value = "anyone")]
    pub tenant_creation: crate::config::TenantCreation,
    /// Days a released hostname stays reserved to its tenant.
    #[arg(long, default_value_t = 30)]
    pub hostname_reservation_days: u64,
    /// Connect HTTP hostname challenges to this address instead of the name's
    /// (a load balancer in front; port 0: this node's own ingress). The name
    /// must still resolve to a platform address (--platform-address).
    #[arg(long, value_name = "ADDR")]
    pub challenge_connect: Option<SocketAddr>,
    /// A public address of the platform (repeatable): with --challenge-connect,
    /// an HTTP proof counts only for a name that resolves to one of these
    /// (default: the --challenge-connect address's IP).
    #[arg(long = "platform-address", value_name = "IP")]
    pub platform_addresses: Vec<std::net::IpAddr>,
    /// DNS server for TXT hostname challenges and for resolving names checked
    /// through --challenge-connect (default: the system's).
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<SocketAddr>,
    /// Tenants one user may create (default quota).
    #[arg(long, default_value_t = 5)]
    pub quota_tenants: i64,
    /// Instances per tenant (default quota).
    #[arg(long, default_value_t = 20)]
    pub quota_instances: i64,
    /// Custom hostnames per tenant (default quota).
    #[arg(long, default_value_t = 50)]
    pub quota_hostnames: i64,
    /// Database MiB per tenant, all its instances together (default quota).
    #[arg(long, default_value_t = 1024)]
    pub quota_database_mib: i64,
    /// Jobs a tenant may have unfinished at once: queued, running, waiting to
    /// retry or dead (default quota).
    #[arg(long, default_value_t = 100_000)]
    pub quota_pending_jobs: i64,
    /// MiB of job payloads kept for a tenant (default quota).
    #[arg(long, default_value_t = 256)]
    pub quota_job_mib: i64,
    /// Days an invitation can be accepted.
    #[arg(long, default_value_t = 7)]
    pub invitation_days: u64,
    /// The admin API's URL as invitees reach it, for invitation links.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Send invitations by SMTP: smtp://host:25 (plain), smtps://user:pass@host
    /// (TLS); without it, invitation links are returned and logged.
    #[arg(long, env = "WHARF_SMTP_URL", hide_env_values = true, value_name = "URL")]
    pub smtp_url: Option<String>,
    /// Sender address of invitation emails.
    #[arg(long, default_value = "wharf@localhost")]
    pub mail_from: String,
    /// A proxy whose X-Forwarded-For is believed (address or CIDR, repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub trusted_proxies: Vec<crate::config::IpBlock>,
}

impl ServeArgs {
    /// The node configuration these options describe.
    pub fn config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(&self.data);
        config.database_url = self.database.clone();
        config.redis_url = self.redis.clone();
        config.metrics_token = self.metrics_token.clone();
        config.instance_connections = usize::from(self.instance_connections);
        config.control_plane_connections = self.control_plane_connections;
        config.ingress_addr = self.listen;
        config.admin_addr = self.admin;
        config.limits.fuel_per_request = self.fuel;
        config.limits.max_memory_bytes = self.max_memory_mib << 20;
        config.limits.request_timeout = Duration::from_millis(self.timeout_ms);
        config.pool.max_instances = self.max_instances;
        config.pool.keep_resident_bytes = self.keep_resident_kib << 10;
        config.pool.pooling = !self.no_pooling;
        config.init_admin = self.init_admin.clone();
        config.limits.output_bytes = self.output_kib << 10;
        config.edges.max_guests_per_tenant = self.max_guests_per_tenant;
        config.edges.max_guests_per_instance = self.max_guests_per_instance;
        config.edges.max_connections = self.max_connections;
        config.edges.max_connections_per_ip = self.max_connections_per_ip;
        config.edges.header_timeout = Duration::from_millis(self.client_timeout_ms);
        config.edges.body_idle_timeout = Duration::from_millis(self.client_timeout_ms);
        config.db_threads = self.db_threads;
        config.jobs.concurrency = self.job_workers;
        config.jobs.timeout = Duration::from_secs(self.job_timeout);
        config.jobs.lease = Duration::from_secs(self.job_lease.unwrap_or(self.job_timeout + 30));
        config.jobs.backoff = Duration::from_millis(self.job_backoff_ms.max(1));
        config.jobs.max_attempts = self.job_attempts;
        config.billing.settable_clock = self.settable_clock;
        config.usage_journal = !self.no_usage_journal;
        config.usage_flush_interval = std::time::Duration::from_secs(self.usage_flush_secs);
        config.database_idle = Duration::from_secs(self.database_idle_secs);
        config.deletion_grace = Duration::from_secs(self.deletion_grace);
        config.billing.invoice_grace = Duration::from_secs(self.invoice_grace);
        config.limits.max_total_memory_bytes = self.max_guest_memory_mib.map(|mib| mib << 20);
        let trust = &mut config.trust;
        trust.domains = self.domains.clone();
        trust.node_names = self.node_names.clone();
        trust.registration = self.registration;
        trust.tenant_creation = self.tenant_creation;
        trust.hostname_reservation = Duration::from_secs(self.hostname_reservation_days * 86_400);
        trust.challenge_connect = self.challenge_connect;
        trust.platform_addresses = self.platform_addresses.clone();
        trust.dns_server = self.dns_server;
        trust.quotas = crate::config::QuotaDefaults {
            tenants_per_user: self.quota_tenants,
            instances_per_tenant: self.quota_instances,
            hostnames_per_tenant: self.quota_hostnames,
            database_bytes_per_tenant: self.quota_database_mib.saturating_mul(1 << 20),
            pending_jobs_per_tenant: self.quota_pending_jobs,
            job_bytes_per_tenant: self.quota_job_mib.saturating_mul(1 << 20),
        };
        trust.invitation_lifetime = Duration::from_secs(self.invitation_days * 86_400);
        trust.public_url = self.public_url.clone();
        trust.smtp_url = self.smtp_url.clone();
        trust.mail_from = self.mail_from.clone();
        trust.trusted_proxies = self.trusted_proxies.clone();
        config
    }
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let otlp = args.otlp_endpoint.as_ref().map(|endpoint| crate::telemetry::Otlp {
        endpoint: endpoint.clone(),
        json: args.otlp_protocol == OtlpProtocol::HttpJson,
        sample_ratio: args.trace_sample_ratio,
        node: uuid::Uuid::new_v4().to_string(),
    });
    // Flushes the spans still queued when the node stops.
    let _exporting = init_logging_with(args.log_format, otlp.as_ref())?;
    let running = crate::Node::start(args.config()).await?;
    if let (Some(key), Some(email)) = (&running.initial_admin_key, &args.init_admin) {
        // Shown once: only its hash is stored.
        println!("operator {email} created; its API key is shown only now:");
        println!("WHARF_TOKEN={key}");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The encoding of OTLP/HTTP bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("give a share between 0 and 1, e.g. 0.01 for one trace in a hundred".into()),
    }
}

/// Log text to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_logging() {
    let _ = init_logging_with(LogFormat::Text, None);
}

/// Log to stderr in `format` (`RUST_LOG` overrides the default `info`), and
/// export traces to `otlp` if given: the returned guard flushes them when
/// dropped. Spans are never logged.
pub fn init_logging_with(
    format: LogFormat,
    otlp: Option<&crate::telemetry::Otlp>,
) -> anyhow::Result<Option<crate::telemetry::Exporting>> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(format!("{}=off", crate::telemetry::TARGET).parse()?);
    let logger = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logger = match format {
        LogFormat::Text => logger.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => logger.json().flatten_event(true).with_current_span(false).with_span_list(false).boxed(),
    };
    let (traces, exporting) = match otlp {
        Some(otlp) => {
            let (layer, exporting) = crate::telemetry::exporter(otlp)?;
            (Some(layer), Some(exporting))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(logger.with_filter(filter)).with(traces).try_init();
    Ok(exporting)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A scrape token long enough not to be guessed.
fn parse_metrics_token(token: &str) -> Result<String, String> {
    if token.len() < 32 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("use at least 32 printable characters without spaces, e.g. `openssl rand -hex 32`".into());
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scrape_token_must_be_long_and_printable() {
        assert!(super::parse_metrics_token(&"a".repeat(32)).is_ok());
        let short = super::parse_metrics_token("secret").unwrap_err();
        assert!(short.contains("at least 32"), "{short}");
        assert!(super::parse_metrics_token(&format!("{} x", "a".repeat(32))).is_err(), "no spaces");
    }

    #[test]
    fn fleet_settings_reach_the_node_within_their_bounds() {
        use clap::Parser as _;
        let parse = |args: &[&str]| crate::cli::Cli::try_parse_from([&["wharf", "serve"], args].concat());
        let cli = parse(&["--control-plane-connections", "3", "--usage-flush-secs", "5", "--database-idle-secs", "7"])
            .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else { panic!("not serve") };
        let config = args.config();
        assert_eq!(config.control_plane_connections, 3);
        assert_eq!(config.usage_flush_interval, std::time::Duration::from_secs(5));
        assert_eq!(config.database_idle, std::time::Duration::from_secs(7));
        assert!(parse(&["--database-idle-secs", "0"]).is_err());
        assert!(parse(&["--control-plane-connections", "1"]).is_err(), "one connection is no pool");
        assert!(parse(&["--usage-flush-secs", "0"]).is_err());
        assert!(parse(&["--usage-flush-secs", "61"]).is_err());
    }

    #[test]
    fn a_sample_ratio_is_a_share() {
        assert_eq!(super::parse_ratio("0.25"), Ok(0.25));
        assert!(super::parse_ratio("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(super::parse_ratio("NaN").is_err());
        assert!(super::parse_ratio("-0.1").is_err());
    }
}
