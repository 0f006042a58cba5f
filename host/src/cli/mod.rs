//! The `wharf` command: `serve` runs a node; every other command talks to a node's
//! admin API (`--admin-url`, default `http://127.0.0.1:8081`).

mod account;
mod billing;
mod client;
mod credentials;
mod members;
mod new;
mod output;
mod rollout;
mod serve;
mod services;
mod tenants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::NodeConfig;
pub use client::read_manifest;
use client::Client;
pub use serve::{init_logging, init_logging_with, LogFormat, ServeArgs};

/// Wharf: host services written as WebAssembly components, for many tenants.
#[derive(Debug, Parser)]
#[command(name = "wharf", version, about, long_about = None)]
pub struct Cli {
    /// Admin API of the node to talk to.
    #[arg(long, global = true, env = "WHARF_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    pub admin_url: String,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Session token or API key (default: the one `wharf login` saved for this node).
    #[arg(long, global = true, env = "WHARF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: the ingress and the admin API.
    Serve(Box<ServeArgs>),
    /// Publish a service version from a directory holding wharf.toml, or the file itself.
    Publish {
        /// A service directory or its wharf.toml.
        path: PathBuf,
        /// The component to upload (default: `component` in wharf.toml).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Make this version active right away (the first version always is).
        #[arg(long)]
        activate: bool,
    },
    /// Switch the version every instance following a service runs. Atomic: new
    /// requests run the new version, in-flight ones finish on the old.
    Activate { service: String, version: String },
    /// Make every node fetch and compile a version, and wait until each reports
    /// it ready (or why not).
    Stage { service: String, version: String },
    /// Make a staged version active on every node at once; returns when every
    /// live node has switched, or names those that have not.
    Promote { service: String, version: String },
    /// Return to the version active before, the same way.
    Rollback { service: String },
    /// Per node: which versions are ready and active, requests and errors since
    /// each became active, pins and the latest promotions.
    Status { service: String },
    /// Canaries: a version on chosen instances before promoting it.
    #[command(subcommand)]
    Canary(rollout::CanaryCommand),
    /// The nodes of the platform.
    Nodes,
    /// Print the admin API's OpenAPI 3.1 description (what a node serves at
    /// GET /v1/openapi.json), e.g. to generate a client.
    Openapi,
    /// Start a service: write its manifest, a route guarded by a permission,
    /// its own table (a migration per SQL dialect), a job and a README of how
    /// to build and publish it, into DIR (default ./NAME).
    New {
        /// The service's name (lower-case letters, digits and '-').
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: new::Lang,
        /// Where to write it (must not exist or be empty).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// For Rust: the Wharf repository's `sdk/` directory, which the
        /// service depends on.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Back up this node's whole state while it serves (operators): the
    /// control plane and every instance's databases, each a consistent copy,
    /// into DIR on the node's machine (new or empty). Single nodes (SQLite);
    /// a cluster is backed up with pg_dump (README).
    Backup {
        /// Where to write it (a relative path is taken from this directory).
        dir: PathBuf,
    },
    /// Restore a backup into a new data directory (the node stopped), then
    /// `wharf serve --data-dir DIR` serves the same data. Every file is checked
    /// against the backup's digests first.
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to fill (must not hold a node's state).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Services and their versions.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Tenants: the accounts that own instances.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Instances: a tenant's copy of a service, bound to hostnames.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Create an account (email and password), with an invitation unless the
    /// platform's registration is open.
    Register {
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// The token of an invitation to this address (`whi_…`).
        #[arg(long)]
        invitation: Option<String>,
    },
    /// Accept an invitation with the account you are logged in as.
    Accept {
        /// The invitation's token (`whi_…`).
        token: String,
    },
    /// Invitations of a tenant (created by `wharf member add` for addresses
    /// without a proven account).
    #[command(subcommand)]
    Invitation(InvitationCommand),
    /// Quotas: what a tenant or user may hold, and what they use.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Custom hostnames: prove a claimed name so that it routes.
    #[command(subcommand)]
    Host(HostCommand),
    /// Log in and save the session for this node (in a 0600 credentials file).
    Login {
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the saved session.
    Logout,
    /// Who the current credential belongs to, and their tenants.
    Whoami,
    /// API keys of the current user.
    #[command(subcommand)]
    Key(KeyCommand),
    /// One's account: delete it (or, for operators, someone's).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Members of a tenant and their roles.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Grant a member a service permission, e.g. `wharf grant --tenant acme ann@x.com forum.addUsers`.
    Grant {
        #[arg(long)]
        tenant: String,
        email: String,
        permission: String,
    },
    /// Revoke a service permission from a member.
    Revoke {
        #[arg(long)]
        tenant: String,
        email: String,
        permission: String,
    },
    /// List a tenant's grants and whether each applies to the running versions.
    Grants {
        #[arg(long)]
        tenant: String,
    },
    /// The audit log: logins, keys, members, grants.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Background jobs: list, inspect, retry, cancel, queue depth, enqueue.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Prices of a service (operators set them).
    #[command(subcommand)]
    Plan(billing::PlanCommand),
    /// Invoices of a tenant: list, show (with how every line was reached), close.
    #[command(subcommand)]
    Invoice(billing::InvoiceCommand),
    /// A tenant's billing: details on its invoices, spending limit, running
    /// total, subscription events.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// Discounts (operators).
    #[command(subcommand)]
    Discount(billing::DiscountCommand),
    /// The billing clock (settable with `wharf serve --settable-clock`).
    #[command(subcommand)]
    Clock(billing::ClockCommand),
    /// Requests, fuel and errors per instance.
    Usage {
        /// Only this tenant's instances.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// queued, running, failed, succeeded, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One job, with its last error.
    Show { id: String },
    /// Queue a dead, failed or cancelled job again (its attempts start over).
    Retry { id: String },
    /// Cancel a job that is not running.
    Cancel { id: String },
    /// Queue depth, running and dead jobs, and the oldest ready job's wait, per service.
    Stats {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Queue a job for an instance (a kind its version declares under [[jobs]]).
    Enqueue {
        instance: String,
        kind: String,
        /// The payload, as text (often JSON).
        #[arg(long, default_value = "")]
        payload: String,
        /// The job version.
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// Run no sooner than this many seconds from now.
        #[arg(long, default_value_t = 0)]
        delay: u64,
        /// Queue at most one job per instance with this key.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum InvitationCommand {
    /// List a tenant's invitations.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Withdraw an open invitation.
    Cancel {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a tenant's quotas (or a user's, or your own) with usage.
    Show {
        #[arg(long, conflicts_with = "user")]
        tenant: Option<String>,
        /// A user's email (operators), for the tenants quota.
        #[arg(long)]
        user: Option<String>,
    },
    /// Set a quota (operators): `wharf quota set --tenant acme instances 50`.
    Set {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        tenant: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// instances, hostnames, database_bytes, pending_jobs or job_bytes (tenants); tenants (users).
        quota: String,
        /// The new limit, or `default` to remove the override.
        limit: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Prove a claimed hostname (HTTP challenge, then DNS TXT) and route it.
    Verify {
        /// The instance that claims the name.
        #[arg(long)]
        instance: String,
        hostname: String,
        /// Only this method: http or dns.
        #[arg(long)]
        method: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services.
    List,
    /// Show a service and its versions.
    Show { name: String },
    /// Delete a version nothing needs any more (operators): refused, saying
    /// why, while it is active, the previous or staged version, or an instance
    /// or a job needs it.
    DeleteVersion { name: String, version: String },
    /// The permissions a service declares (active version, or --version).
    Permissions {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; it is shown once.
    Create {
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List your keys (by visible prefix; secrets are never shown again).
    List,
    /// Revoke a key by id or prefix.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Delete your account (confirmed by its password): every session and key
    /// is refused at once on every node, and your memberships and grants are
    /// removed. Refused while you are the last owner of a tenant (`wharf member
    /// transfer`). Operators delete someone else's with `--user`.
    Delete {
        /// The account to delete (operators); default: your own.
        #[arg(long)]
        user: Option<String>,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a registered user to a tenant, or change their role.
    Add {
        #[arg(long)]
        tenant: String,
        email: String,
        /// owner, admin or member.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Remove a member (and their grants) from a tenant.
    Remove {
        #[arg(long)]
        tenant: String,
        email: String,
    },
    /// List a tenant's members.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Hand a tenant over: make a member its owner, and yourself its admin.
    Transfer {
        #[arg(long)]
        tenant: String,
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Tenant id: lower-case letters, digits and '-'.
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    List,
    /// Show a tenant.
    Show { id: String },
    /// Delete a tenant (its owners): its people lose access and every instance
    /// of it stops serving at once; its data is destroyed when the deletion
    /// grace ends (`wharf tenant restore` until then). Invoices are kept.
    Delete {
        id: String,
        /// Destroy its data now, without the grace (operators).
        #[arg(long)]
        now: bool,
    },
    /// Bring back a deleted tenant, with the instances deleted with it, before
    /// its grace ends (its owners, operators).
    Restore { id: String },
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Give a tenant an instance of a service, bound to hostnames.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        service: String,
        /// Name within the tenant (default: the service's): the instance answers
        /// at <name>.<tenant>.<domain> on each platform domain.
        #[arg(long)]
        name: Option<String>,
        /// A custom hostname (repeatable): routes once proven (`wharf host verify`).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Pin to this version instead of following the active one.
        #[arg(long)]
        version: Option<String>,
        /// Enable a module the service declares (repeatable).
        #[arg(long = "module")]
        modules: Vec<String>,
        /// End of a trial or prepaid period (operators): `2027-02-01` or Unix seconds.
        #[arg(long)]
        ends_at: Option<String>,
    },
    /// List instances.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show an instance.
    Show { id: String },
    /// Delete an instance: it stops serving at once, and its data is destroyed
    /// when the node's deletion grace ends (`wharf instance restore` until then).
    Delete {
        id: String,
        /// Destroy its data now, without the grace (operators).
        #[arg(long)]
        now: bool,
    },
    /// Bring back a deleted instance before its grace ends.
    Restore { id: String },
    /// Download an instance's data: a tar of `instance.json` (service,
    /// version, modules, settings), `data.sql` (its database as SQL in its
    /// dialect) and `kv.jsonl` (its key-value entries).
    Export {
        id: String,
        /// Where to write it (default: the name the node gives it).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Import an export into a new instance of the same service (operators).
    Import {
        /// The export (`wharf instance export`).
        file: PathBuf,
        #[arg(long)]
        tenant: String,
        /// Name within the tenant (default: the service's).
        #[arg(long)]
        name: Option<String>,
        /// A custom hostname (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Change an instance's hostnames, version policy, modules, state or end date.
    Update {
        id: String,
        /// Replace the hostnames (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Pin to a version, or `active` to follow the active one.
        #[arg(long)]
        version: Option<String>,
        /// Replace the enabled modules (comma-separated; `none` for none).
        #[arg(long)]
        modules: Option<String>,
        /// Disable (`false`: it answers 410, keeping its data) or enable (`true`).
        #[arg(long)]
        enabled: Option<bool>,
        /// End of a trial or prepaid period (operators): `2027-02-01`, Unix
        /// seconds, or `none`. Past it the instance answers 402.
        #[arg(long)]
        ends_at: Option<String>,
    },
}

/// Run the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(*args).await,
            Command::Openapi => {
                println!("{}", crate::admin::openapi_document());
                Ok(())
            }
            Command::New { name, lang, dir, sdk } => {
                let dir = new::create(&name, lang, dir.as_deref(), sdk.as_deref())?;
                println!("{name}: written to {} (see its README.md to build and publish it)", dir.display());
                Ok(())
            }
            Command::Restore { from, data_dir } => {
                let manifest = crate::backup::restore(&from, &data_dir)?;
                let out = output::Output { json: cli.json };
                let value = serde_json::to_value(&manifest)?;
                out.line(
                    &value,
                    &format!(
                        "restored {} files ({} instances) into {}; start it with `wharf serve --data-dir {}`",
                        manifest.files.len(),
                        manifest.instances,
                        data_dir.display(),
                        data_dir.display()
                    ),
                )
            }
            command => {
                let token = cli.token.clone().or_else(|| credentials::load(&cli.admin_url));
                let client = Client::new(&cli.admin_url, token)?;
                run_client(&client, &cli.admin_url, command, cli.json).await
            }
        }
    })
}

const JOB_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("INSTANCE", "instance"),
    ("KIND", "kind"),
    ("V", "job_version"),
    ("STATE", "state"),
    ("ATTEMPTS", "attempts"),
    ("RAN ON", "ran_version"),
    ("LAST ERROR", "last_error"),
];

async fn run_jobs(client: &Client, out: &output::Output, command: JobsCommand) -> anyhow::Result<()> {
    use serde_json::json;
    match command {
        JobsCommand::List { tenant, instance, kind, state, service, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in
                [("tenant", tenant), ("instance", instance), ("kind", kind), ("state", state), ("service", service)]
            {
                if let Some(value) = value {
                    query.push(format!("{name}={}", client::encode(&value)));
                }
            }
            out.rows(&client.get(&format!("/v1/jobs?{}", query.join("&"))).await?, "jobs", JOB_COLUMNS)
        }
        JobsCommand::Show { id } => out.job(&client.get(&format!("/v1/jobs/{}", client::encode(&id))).await?),
        JobsCommand::Retry { id } => {
            out.job(&client.post(&format!("/v1/jobs/{}/retry", client::encode(&id)), &json!({})).await?)
        }
        JobsCommand::Cancel { id } => {
            out.job(&client.post(&format!("/v1/jobs/{}/cancel", client::encode(&id)), &json!({})).await?)
        }
        JobsCommand::Stats { tenant } => {
            let path = match tenant {
                Some(t) => format!("/v1/jobs/stats?tenant={}", client::encode(&t)),
                None => "/v1/jobs/stats".to_string(),
            };
            out.rows(
                &client.get(&path).await?,
                "services",
                &[
                    ("SERVICE", "service"),
                    ("QUEUED", "queued"),
                    ("RUNNING", "running"),
                    ("DEAD", "dead"),
                    ("OLDEST READY (ms)", "oldest_ready_ms"),
                ],
            )
        }
        JobsCommand::Enqueue { instance, kind, payload, version, delay, key } => {
            let body = json!({
                "kind": kind,
                "payload": payload,
                "version": version,
                "delay_ms": delay.saturating_mul(1000),
                "idempotency_key": key,
            });
            let queued = client.post(&format!("/v1/instances/{}/jobs", client::encode(&instance)), &body).await?;
            let what = if queued.get("created").and_then(serde_json::Value::as_bool) == Some(true) {
                "queued"
            } else {
                "already queued under that key"
            };
            out.line(&queued, &format!("job {} {what}", output::s(&queued, "id")))
        }
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("failed to read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        rpassword::prompt_password("password: ").context("failed to read the password")?
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

async fn run_client(client: &Client, admin_url: &str, command: Command, json: bool) -> anyhow::Result<()> {
    let out = output::Output { json };
    match command {
        Command::Serve(_) | Command::Restore { .. } | Command::Openapi | Command::New { .. } => {
            unreachable!("handled by run")
        }
        Command::Backup { dir } => {
            let dir = std::path::absolute(&dir).context("cannot resolve the backup directory")?;
            eprintln!("backing up into {} …", dir.display());
            let taken = client.post("/v1/backup", &serde_json::json!({ "to": dir })).await?;
            let bytes: u64 =
                taken["files"].as_array().map_or(0, |f| f.iter().filter_map(|f| f["bytes"].as_u64()).sum());
            out.line(
                &taken,
                &format!(
                    "backed up the control plane and {} instances ({} files, {bytes} bytes) into {}",
                    taken["instances"],
                    taken["files"].as_array().map_or(0, Vec::len),
                    dir.display()
                ),
            )
        }
        Command::Jobs(command) => run_jobs(client, &out, command).await,
        Command::Stage { service, version } => rollout::stage(client, &out, &service, &version).await,
        Command::Promote { service, version } => rollout::promote(client, &out, &service, Some(&version)).await,
        Command::Rollback { service } => rollout::promote(client, &out, &service, None).await,
        Command::Status { service } => rollout::status(client, &out, &service).await,
        Command::Canary(command) => rollout::canary(client, &out, command).await,
        Command::Nodes => rollout::nodes(client, &out).await,
        Command::Plan(command) => billing::plan(client, &out, command).await,
        Command::Invoice(command) => billing::invoice(client, &out, command).await,
        Command::Billing(command) => billing::billing(client, &out, command).await,
        Command::Discount(command) => billing::discount(client, &out, command).await,
        Command::Clock(command) => billing::clock(client, &out, command).await,
        command @ (Command::Publish { .. } | Command::Activate { .. } | Command::Service(_)) => {
            services::run(client, &out, command).await
        }
        command @ (Command::Tenant(_)
        | Command::Instance(_)
        | Command::Host(_)
        | Command::Quota(_)
        | Command::Usage { .. }) => tenants::run(client, &out, command).await,
        command @ (Command::Register { .. }
        | Command::Accept { .. }
        | Command::Login { .. }
        | Command::Logout
        | Command::Whoami
        | Command::Key(_)
        | Command::Account(_)) => account::run(client, &out, admin_url, command).await,
        command @ (Command::Invitation(_)
        | Command::Member(_)
        | Command::Grant { .. }
        | Command::Revoke { .. }
        | Command::Grants { .. }
        | Command::Audit { .. }) => members::run(client, &out, command).await,
    }
}
