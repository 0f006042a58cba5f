//! Instance databases on PostgreSQL, for a platform whose control plane is
//! PostgreSQL (several nodes): every instance gets its own schema and its own
//! login role, created in the transaction that creates the instance, and its
//! guest's statements run on connections logged in as that role. What keeps one
//! instance from another is PostgreSQL's privilege system, not a parser:
//!
//! - the role owns its schema and nothing else, is a member of no role (so
//!   `SET ROLE`, `RESET ROLE` and `set_config('role', …)` cannot become anyone
//!   else), has no `CREATE`/`TEMPORARY` on the database and no `USAGE` on any
//!   other schema (`search_path` can name another schema, but nothing in it can
//!   be read), and is capped at [`ROLE_CONNECTION_LIMIT`] connections;
//! - the catalog's paths to other instances' *rows* are closed by PostgreSQL
//!   itself (`pg_statistic` is superuser-only, `pg_stats` shows only readable
//!   columns, `pg_stat_activity` hides other roles' queries). The catalog does
//!   show that other schemas exist, with their table and column names (never
//!   their rows); schema names are random instance ids.
//!
//! Each call runs in its own transaction opened by the host with
//! `SET LOCAL statement_timeout`, as exactly one statement (the extended protocol
//! refuses several), and ends with `RESET ALL` and the release of advisory
//! locks, so nothing a guest sets outlives its call. Statements that would change
//! the session or privileges (`SET`, `BEGIN`, `GRANT`, `LISTEN`, `COPY`, …) are
//! refused before they reach the server, with a message saying why.
//!
//! Guests write `?1`, `?2` … as on SQLite; they become `$1`, `$2` outside
//! strings, identifiers and comments. Values convert by the types the server
//! infers for each parameter and reports for each column.
//!
//! Connections are pooled per node: at most [`PER_INSTANCE`] per instance and
//! `max` in all, idle ones closed after [`IDLE_TIMEOUT`] (or sooner, when
//! another instance needs the room). No backend message larger than
//! [`MAX_MESSAGE_BYTES`] is ever held: the connection's reader refuses it.

mod instance;
mod stream;
#[cfg(test)]
mod tests;
mod values;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::pin_mut;
use tokio_postgres::{Client, NoTls};

use super::types::{MAX_RESULT_BYTES, MAX_WAIT, STATEMENT_TIMEOUT};
use crate::store::Db;

pub use instance::{PgInstance, PgSql};
use stream::{Bounded, Stream};

/// Most connections one instance holds on one node.
pub const PER_INSTANCE: usize = 4;
/// Prepared statements kept per connection (then the cache starts over).
const STATEMENT_CACHE: usize = 64;
/// Most connections one instance's role may hold across all nodes.
pub const ROLE_CONNECTION_LIMIT: i32 = 16;
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message the server may send (one result row): a row larger than a
/// whole result may be is refused before it is held.
pub const MAX_MESSAGE_BYTES: usize = MAX_RESULT_BYTES + (1 << 20);

/// The node's connections to instance databases.
pub struct PgDatabases {
    admin: Db,
    base: tokio_postgres::Config,
    max: usize,
    pool: Mutex<PoolState>,
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct PoolState {
    open: usize,
    per_instance: HashMap<Arc<str>, usize>,
    /// Oldest first.
    idle: VecDeque<(Arc<str>, Instant, Conn)>,
}

struct Conn {
    client: Client,
    /// Statements prepared on this connection, by their text: a repeated
    /// statement costs no Parse round trip.
    statements: Mutex<HashMap<String, tokio_postgres::Statement>>,
    /// Set when the server sent a message larger than [`MAX_MESSAGE_BYTES`].
    oversize: Arc<AtomicBool>,
    /// Where to send a cancel request.
    address: Address,
}

impl Conn {
    /// `sql` prepared, from the cache when this connection has seen it.
    async fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.statements.lock().ok().and_then(|cache| cache.get(sql).cloned()) {
            return Ok(stmt);
        }
        let stmt = self.client.prepare(sql).await?;
        if let Ok(mut cache) = self.statements.lock() {
            if cache.len() >= STATEMENT_CACHE {
                cache.clear();
            }
            cache.insert(sql.to_string(), stmt.clone());
        }
        Ok(stmt)
    }

    fn forget_statements(&self) {
        if let Ok(mut cache) = self.statements.lock() {
            cache.clear();
        }
    }
}

#[derive(Clone)]
enum Address {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// A read-only transaction on an instance's schema (see
/// [`PgDatabases::snapshot`]); ended (rolled back) when dropped.
pub struct Snapshot {
    client: Client,
}

impl Snapshot {
    /// The rows of `sql`, every column read as text (cast them: `x::text`).
    pub async fn rows(&self, sql: &str, params: &[&str]) -> Result<Vec<Vec<Option<String>>>, String> {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let rows = self.client.query(sql, &params).await.map_err(|e| {
            let detail = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            format!("cannot read the database: {detail}")
        })?;
        rows.iter()
            .map(|row| (0..row.len()).map(|i| row.try_get::<_, Option<String>>(i).map_err(|e| e.to_string())).collect())
            .collect()
    }
}

/// One instance's login.
#[derive(Clone)]
pub struct Login {
    instance: Arc<str>,
    role: String,
    password: String,
}

impl PgDatabases {
    /// Connect instance databases to the PostgreSQL at `url` (the control plane's)
    /// and make sure the control plane's role can create roles, and that
    /// `PUBLIC` can create nothing in the database and use nothing in `public`.
    pub async fn open(admin: Db, url: &str, max: usize) -> anyhow::Result<Arc<Self>> {
        let base: tokio_postgres::Config =
            url.parse().context("the --database URL is not one PostgreSQL's client understands")?;
        let (can_create_roles,): (bool,) = sqlx::query_as(
            "SELECT (rolsuper OR rolcreaterole) AND true FROM pg_catalog.pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&admin)
        .await
        .context("failed to read the control plane role's privileges")?;
        if !can_create_roles {
            anyhow::bail!(
                "the --database user cannot create roles, and every instance gets its own: \
                 ALTER ROLE <user> CREATEROLE (as a superuser), or connect as one that can"
            );
        }
        let (database,): (String,) = sqlx::query_as("SELECT quote_ident(current_database())")
            .fetch_one(&admin)
            .await
            .context("failed to read the database name")?;
        let (superuser,): (bool,) =
            sqlx::query_as("SELECT rolsuper AND true FROM pg_catalog.pg_roles WHERE rolname = current_user")
                .fetch_one(&admin)
                .await
                .context("failed to read the control plane role's privileges")?;
        let mut hardening = vec![
            format!("REVOKE CREATE, TEMPORARY ON DATABASE {database} FROM PUBLIC"),
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string(),
        ];
        if superuser {
            // The nodes' change channel is the platform's: no guest may flood it.
            hardening.push("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_notify(text, text) FROM PUBLIC".into());
        } else {
            tracing::warn!(
                "the --database user is not a superuser, so guests keep pg_notify(): they can wake the nodes \
                 (each then reads one number); run `REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC; \
                 GRANT EXECUTE ON FUNCTION pg_notify(text, text) TO <user>` as a superuser"
            );
        }
        // Nodes starting together would race on the same catalog rows ("tuple
        // concurrently updated"): one at a time, under an advisory lock.
        let mut tx = admin.begin().await.context("failed to begin transaction")?;
        sqlx::query("SELECT pg_advisory_xact_lock(7465821093)")
            .execute(&mut *tx)
            .await
            .context("failed to take the start-up lock")?;
        for statement in hardening {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("failed to run {statement:?} (the --database user must own the database)"))?;
        }
        tx.commit().await.context("failed to commit the database hardening")?;
        let this = Arc::new(Self { admin, base, max: max.max(1), pool: Mutex::default(), freed: Default::default() });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.close_idle(IDLE_TIMEOUT);
            }
        });
        Ok(this)
    }

    /// The most connections this node opens.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (in use and idle).
    pub fn open_count(&self) -> usize {
        self.pool.lock().map(|p| p.open).unwrap_or(0)
    }

    /// Create `instance`'s role and schema within the control plane's
    /// transaction `tx`: if it rolls back, neither exists.
    pub async fn create(tx: &mut sqlx::Transaction<'_, crate::store::Backend>, instance: &str) -> anyhow::Result<()> {
        let role = role_name(instance)?;
        let mut secret = [0u8; 24];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let password = hex::encode(secret);
        let (superuser,): (bool,) =
            sqlx::query_as("SELECT rolsuper AND true FROM pg_catalog.pg_roles WHERE rolname = current_user")
                .fetch_one(&mut **tx)
                .await?;
        let timeout = STATEMENT_TIMEOUT.as_millis();
        let mut statements = vec![format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
             NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {ROLE_CONNECTION_LIMIT}"
        )];
        if !superuser {
            // Creating a schema owned by a role needs membership in it.
            statements.push(format!("GRANT {role} TO CURRENT_USER"));
        }
        statements.extend([
            format!("CREATE SCHEMA {role} AUTHORIZATION {role}"),
            format!("ALTER ROLE {role} SET search_path = {role}"),
            format!("ALTER ROLE {role} SET statement_timeout = {timeout}"),
            format!("ALTER ROLE {role} SET idle_in_transaction_session_timeout = {}", timeout * 2),
        ]);
        for statement in &statements {
            sqlx::query(statement).execute(&mut **tx).await.with_context(|| {
                let shown = statement.replace(&password, "…");
                format!("failed to create the instance's database: {shown}")
            })?;
        }
        sqlx::query("INSERT INTO instance_databases (instance_id, role, password, created_at) VALUES ($1, $2, $3, $4)")
            .bind(instance)
            .bind(&role)
            .bind(&password)
            .bind(crate::store::now())
            .execute(&mut **tx)
            .await
            .context("failed to record the instance's database")?;
        Ok(())
    }

    /// Destroy `instance`'s database in `tx`: its schema with everything in
    /// it, its role, and their record. This node's connections to it close
    /// first, and the role's sessions on the server (other nodes') are ended.
    pub async fn drop_in(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        instance: &str,
    ) -> anyhow::Result<()> {
        self.discard(&Arc::from(instance));
        let role = role_name(instance)?;
        let ended = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(&role)
            .execute(&self.admin)
            .await;
        if let Err(e) = ended {
            tracing::warn!(%instance, "failed to end the sessions of the instance's role: {e}");
        }
        for statement in [format!("DROP SCHEMA IF EXISTS {role} CASCADE"), format!("DROP ROLE IF EXISTS {role}")] {
            sqlx::query(&statement)
                .execute(&mut **tx)
                .await
                .with_context(|| format!("failed to destroy the instance's database: {statement}"))?;
        }
        sqlx::query("DELETE FROM instance_databases WHERE instance_id = $1")
            .bind(instance)
            .execute(&mut **tx)
            .await
            .context("failed to forget the instance's database")?;
        Ok(())
    }

    /// The size of each of `tenant`'s instance databases (its schema's tables,
    /// indexes and TOAST), measured by the server: the same for every node.
    pub async fn tenant_sizes(&self, tenant: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.instance_id, COALESCE((SELECT sum(pg_total_relation_size(c.oid)) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = d.role AND c.relkind IN ('r', 'm', 'S')), 0)::int8 \
             FROM instance_databases d JOIN instances i ON i.id = d.instance_id WHERE i.tenant_id = $1",
        )
        .bind(tenant)
        .fetch_all(&self.admin)
        .await
        .context("failed to measure the tenant's databases")?;
        Ok(rows.into_iter().map(|(id, bytes)| (id, bytes.max(0) as u64)).collect())
    }

    /// The login of `instance`, from the control plane. An instance created
    /// before its platform kept SQL in PostgreSQL gets its schema now.
    pub async fn login(&self, instance: &str) -> Result<Login, String> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(instance, "failed to read or create an instance's database login: {e}");
            "the database is unavailable; retry".to_string()
        };
        for attempt in 0..2 {
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT role, password FROM instance_databases WHERE instance_id = $1")
                    .bind(instance)
                    .fetch_optional(&self.admin)
                    .await
                    .map_err(|e| unavailable(&e))?;
            if let Some((role, password)) = row {
                return Ok(Login { instance: instance.into(), role, password });
            }
            if attempt == 0 {
                // Another node may be doing the same: the loser's transaction
                // fails on the role's name, and it reads the winner's.
                let created = async {
                    let mut tx = self.admin.begin().await?;
                    Self::create(&mut tx, instance).await?;
                    tx.commit().await?;
                    anyhow::Ok(())
                };
                if let Err(e) = created.await {
                    tracing::info!(instance, "creating the instance's database on first use: {e:#}");
                }
            }
        }
        Err(unavailable(&"no instance_databases row after creating it"))
    }

    /// A read-only snapshot of `instance`'s schema (one REPEATABLE READ
    /// transaction on a connection of its own, as its role), for the host's
    /// own reads of its data: an export sees one point in time while the
    /// guest writes on.
    pub async fn snapshot(&self, instance: &str) -> Result<Snapshot, String> {
        let login = self.login(instance).await?;
        let conn = self.connect(&login).await?;
        conn.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| format!("cannot begin a snapshot: {e}"))?;
        Ok(Snapshot { client: conn.client })
    }

    /// A connection for `login`: an idle one of the instance, a new one within
    /// the budgets (closing another instance's idle one if the node is full), or
    /// "busy" after waiting until `until`.
    async fn acquire(self: &Arc<Self>, login: &Login, until: Instant) -> Result<Lease, String> {
        let busy = || format!("the database is busy (waited {} ms); retry", MAX_WAIT.as_millis());
        loop {
            let freed = self.freed.notified();
            pin_mut!(freed);
            freed.as_mut().enable();
            let mut evicted = None;
            let open_new = {
                let mut pool = self.pool.lock().map_err(|_| busy())?;
                if let Some(i) = pool.idle.iter().rposition(|(who, _, _)| *who == login.instance) {
                    let conn = pool.idle.remove(i).map(|(_, _, conn)| conn);
                    if let Some(conn) = conn.filter(|c| !c.client.is_closed()) {
                        return Ok(Lease::new(self, login, conn));
                    }
                    forget(&mut pool, &login.instance);
                    continue;
                }
                let mine = pool.per_instance.get(&login.instance).copied().unwrap_or(0);
                if mine >= PER_INSTANCE {
                    false
                } else if pool.open < self.max {
                    true
                } else if let Some((other, _, conn)) = pool.idle.pop_front() {
                    forget(&mut pool, &other);
                    evicted = Some(conn);
                    true
                } else {
                    false
                }
                .then(|| {
                    pool.open += 1;
                    *pool.per_instance.entry(login.instance.clone()).or_default() += 1;
                })
                .is_some()
            };
            drop(evicted);
            if open_new {
                let failed = match tokio::time::timeout_at(until.into(), self.connect(login)).await {
                    Ok(Ok(conn)) => return Ok(Lease::new(self, login, conn)),
                    Ok(Err(e)) => e,
                    Err(_) => busy(),
                };
                self.discard(&login.instance);
                return Err(failed);
            }
            if tokio::time::timeout_at(until.into(), freed).await.is_err() {
                return Err(busy());
            }
        }
    }

    async fn connect(&self, login: &Login) -> Result<Conn, String> {
        let mut config = self.base.clone();
        config.user(&login.role).password(&login.password).application_name("wharf-instance");
        config.connect_timeout(MAX_WAIT);
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => Address::Tcp(host.clone(), port),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(dir)) => Address::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Address::Tcp("localhost".into(), port),
        };
        let oversize = Arc::new(AtomicBool::new(false));
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(role = %login.role, "failed to connect to an instance database: {e}");
            match e.to_string() {
                m if m.contains("too many connections") => "the database is busy (too many connections); retry".into(),
                _ => "the database is unavailable; retry".to_string(),
            }
        };
        let stream = address.connect().await.map_err(|e| failed(&e))?;
        let stream = Bounded { inner: stream, header: [0; 5], have: 0, body_left: 0, oversize: oversize.clone() };
        let (client, connection) = config.connect_raw(stream, NoTls).await.map_err(|e| failed(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("an instance database connection ended: {e}");
            }
        });
        Ok(Conn { client, statements: Mutex::default(), oversize, address })
    }

    /// Give a connection back, clean and outside any transaction.
    fn release(&self, instance: &Arc<str>, conn: Conn) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.idle.push_back((instance.clone(), Instant::now(), conn));
        }
        self.freed.notify_waiters();
    }

    /// Forget a connection that was closed (or never opened).
    fn discard(&self, instance: &Arc<str>) {
        if let Ok(mut pool) = self.pool.lock() {
            forget(&mut pool, instance);
        }
        self.freed.notify_waiters();
    }

    fn close_idle(&self, older_than: Duration) {
        let mut closed = Vec::new();
        if let Ok(mut pool) = self.pool.lock() {
            while pool.idle.front().is_some_and(|(_, since, _)| since.elapsed() >= older_than) {
                if let Some((who, _, conn)) = pool.idle.pop_front() {
                    forget(&mut pool, &who);
                    closed.push(conn);
                }
            }
        }
        if !closed.is_empty() {
            self.freed.notify_waiters();
        }
    }
}

fn forget(pool: &mut PoolState, instance: &Arc<str>) {
    pool.open = pool.open.saturating_sub(1);
    if let Some(n) = pool.per_instance.get_mut(instance) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            pool.per_instance.remove(instance);
        }
    }
}

impl Address {
    async fn connect(&self) -> std::io::Result<Stream> {
        match self {
            Address::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            #[cfg(unix)]
            Address::Unix(path) => Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?)),
        }
    }
}

/// The role (and schema) name of `instance`: `wi_` and its id's hex digits.
pub fn role_name(instance: &str) -> anyhow::Result<String> {
    let id = instance.strip_prefix("inst-").unwrap_or(instance);
    anyhow::ensure!(
        !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_'),
        "instance id {instance:?} cannot name a database role"
    );
    Ok(format!("wi_{}", id.to_ascii_lowercase()))
}

/// A connection lent to one call. Given back only when the call finished
/// cleanly; a call cut short (timed out, or its request gone) closes it, and the
/// server rolls its transaction back.
struct Lease {
    pool: Arc<PgDatabases>,
    instance: Arc<str>,
    conn: Option<Conn>,
    clean: bool,
}

impl Lease {
    fn new(pool: &Arc<PgDatabases>, login: &Login, conn: Conn) -> Self {
        Self { pool: pool.clone(), instance: login.instance.clone(), conn: Some(conn), clean: false }
    }

    fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.clean && !conn.client.is_closed() {
                self.pool.release(&self.instance, conn);
            } else {
                // A statement may still be running: cancel it, then close.
                let (token, address) = (conn.client.cancel_token(), conn.address.clone());
                drop(conn);
                self.pool.discard(&self.instance);
                tokio::spawn(async move {
                    if let Ok(stream) = address.connect().await {
                        let _ = token.cancel_query_raw(stream, NoTls).await;
                    }
                });
            }
        }
    }
}
