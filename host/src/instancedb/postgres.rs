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

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{pin_mut, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use super::sqltext;
use tokio_postgres::{Client, NoTls};

use super::{Call, SqlRows, SqlValue, MAX_COLUMNS, MAX_RESULT_BYTES, MAX_ROWS, MAX_STATEMENT_BYTES, MAX_WAIT};
use super::{MAX_VALUE_BYTES, STATEMENT_TIMEOUT};
use crate::store::Db;

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

/// What one call asks of the instance's database.
pub enum Work {
    Query(String, Vec<SqlValue>),
    Execute(String, Vec<SqlValue>),
    Batch(Vec<(String, Vec<SqlValue>)>),
}

/// What it answered.
pub enum Done {
    Rows(SqlRows),
    Changed(u64),
    Batch(Vec<u64>),
}

/// An instance's database on PostgreSQL.
pub struct PgInstance {
    pub(super) pool: Arc<PgDatabases>,
    instance: Arc<str>,
    pub(super) tenant: Arc<str>,
    login: tokio::sync::OnceCell<Login>,
}

impl PgInstance {
    pub fn new(pool: Arc<PgDatabases>, instance: &str, tenant: &str) -> Self {
        Self { pool, instance: instance.into(), tenant: tenant.into(), login: tokio::sync::OnceCell::new() }
    }

    /// Run `work` in one transaction, within `call`'s deadline; `room` is the
    /// tenant's database quota left for this instance (writes other than
    /// deletions are refused at none). The wall time of the call is charged.
    /// Answers the call's result and, after a write, the schema's new size.
    pub async fn run(&self, work: Work, call: &Call, room: bool) -> Result<(Done, Option<u64>), String> {
        let statements: Vec<&str> = match &work {
            Work::Query(s, _) | Work::Execute(s, _) => vec![s],
            Work::Batch(list) => list.iter().map(|(s, _)| s.as_str()).collect(),
        };
        let (mut frees, mut reads) = (true, true);
        for statement in &statements {
            let kind = check(statement)?;
            frees &= kind.frees;
            reads &= kind.reads;
        }
        // Past the quota, only deletions may write; everything else runs read-only.
        let read_only = !room && !frees;
        let now = Instant::now();
        if now >= call.deadline {
            return Err("the request is out of time".into());
        }
        let started = now;
        let login = self.login.get_or_try_init(|| self.pool.login(&self.instance)).await?;
        let until = (now + MAX_WAIT).min(call.deadline);
        let mut lease = self.pool.acquire(login, until).await?;
        let limit = (Instant::now() + call.statement_limit).min(call.deadline);
        // Only a call that may write is measured; what a function called from a
        // SELECT writes is found by the tenant's next re-read of its sizes.
        let measure = !read_only && !reads;
        let mut outcome =
            tokio::time::timeout_at(limit.into(), perform(lease.conn(), login, &work, limit, read_only, measure)).await;
        if matches!(&outcome, Ok(Err(e)) if e.stale_plan) {
            // A cached statement whose table changed shape: prepare it again.
            lease.conn().forget_statements();
            outcome =
                tokio::time::timeout_at(limit.into(), perform(lease.conn(), login, &work, limit, read_only, measure))
                    .await;
        }
        call.cpu_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match outcome {
            Ok(Ok(done)) => {
                lease.clean = true;
                Ok(done)
            }
            Ok(Err(e)) => {
                if e.stale_plan {
                    lease.conn().forget_statements();
                }
                if lease.conn().oversize.load(Ordering::Relaxed) {
                    return Err(format!(
                        "the result is larger than {} MiB; select fewer columns or rows",
                        MAX_RESULT_BYTES >> 20
                    ));
                }
                // A failed statement left the connection clean (rolled back) unless
                // the connection itself failed.
                lease.clean = !e.closed;
                Err(e.message)
            }
            Err(_) => {
                Err(format!("the statement ran longer than {} s (or the request ended)", STATEMENT_TIMEOUT.as_secs()))
            }
        }
    }
}

struct Failure {
    message: String,
    closed: bool,
    /// "cached plan must not change result type": a cached statement is stale.
    stale_plan: bool,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        let stale_plan = e.as_db_error().is_some_and(|db| db.message().contains("cached plan"));
        Self { closed: e.is_closed(), message: describe(&e), stale_plan }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self { message, closed: false, stale_plan: false }
    }
}

/// Run the work in its own transaction and leave the session as it found it.
async fn perform(
    conn: &Conn,
    login: &Login,
    work: &Work,
    limit: Instant,
    read_only: bool,
    measure: bool,
) -> Result<(Done, Option<u64>), Failure> {
    let client = &conn.client;
    let millis = limit.saturating_duration_since(Instant::now()).as_millis().max(1);
    let mode = if read_only { " READ ONLY" } else { "" };
    let begin = format!("BEGIN{mode}; SET LOCAL statement_timeout = {millis}");
    let result = match work {
        // BEGIN and the statement go out together (one round trip when the
        // statement is prepared already).
        Work::Query(statement, params) => {
            let translated = placeholders(statement)?;
            let run = async { read_rows(client, &conn.prepare(&translated).await?, params).await };
            let (began, rows) = tokio::join!(client.batch_execute(&begin), run);
            began?;
            rows.map(Done::Rows)
        }
        Work::Execute(statement, params) => {
            let translated = placeholders(statement)?;
            let run = async { execute(client, &conn.prepare(&translated).await?, params).await };
            let (began, changed) = tokio::join!(client.batch_execute(&begin), run);
            began?;
            changed.map(Done::Changed)
        }
        Work::Batch(statements) => {
            client.batch_execute(&begin).await?;
            let mut changed = Vec::with_capacity(statements.len());
            let mut failed = None;
            for (i, (statement, params)) in statements.iter().enumerate() {
                let step = async {
                    let stmt = conn.prepare(&placeholders(statement)?).await?;
                    execute(client, &stmt, params).await
                };
                match step.await {
                    Ok(n) => changed.push(n),
                    Err(e) => {
                        failed = Some(Failure { message: format!("statement {}: {}", i + 1, e.message), ..e });
                        break;
                    }
                }
            }
            match failed {
                Some(e) => Err(e),
                None => Ok(Done::Batch(changed)),
            }
        }
    };
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    // The same round trip leaves no setting, lock or prepared plan behind.
    let finish = format!("{end}; RESET ALL; SELECT pg_advisory_unlock_all()");
    let size = async {
        // Measured in the same round trip as the commit.
        if !measure || result.is_err() {
            return Ok(None);
        }
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'S')",
                &[&login.role],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(Some(row.get::<_, i64>(0).max(0) as u64))
    };
    let (ended, size) = tokio::join!(client.batch_execute(&finish), size);
    match (result, ended) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(done), Ok(())) => Ok((done, size.unwrap_or(None))),
    }
}

async fn execute(client: &Client, stmt: &tokio_postgres::Statement, params: &[SqlValue]) -> Result<u64, Failure> {
    let bound = bind(stmt, params)?;
    Ok(client.execute_raw(stmt, bound.iter().map(|p| p as &(dyn ToSql + Sync))).await?)
}

async fn read_rows(client: &Client, stmt: &tokio_postgres::Statement, params: &[SqlValue]) -> Result<SqlRows, Failure> {
    let bound = bind(stmt, params)?;
    if stmt.columns().len() > MAX_COLUMNS {
        return Err(format!("too many columns: a result has at most {MAX_COLUMNS}").into());
    }
    let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_string()).collect();
    let stream = client.query_raw(stmt, bound.iter().map(|p| p as &(dyn ToSql + Sync))).await?;
    pin_mut!(stream);
    let mut out = SqlRows { columns, rows: Vec::new() };
    let mut bytes = 0usize;
    while let Some(row) = stream.try_next().await? {
        if out.rows.len() == MAX_ROWS {
            return Err(format!("the result has more than {MAX_ROWS} rows; add LIMIT or paginate").into());
        }
        let mut values = Vec::with_capacity(out.columns.len());
        for i in 0..out.columns.len() {
            let Cell(value) = row.try_get::<_, Cell>(i).map_err(|e| Failure {
                message: e.source().map(|s| s.to_string()).unwrap_or_else(|| e.to_string()),
                closed: false,
                stale_plan: false,
            })?;
            bytes += match &value {
                SqlValue::Text(t) => t.len(),
                SqlValue::Blob(b) => b.len(),
                _ => 8,
            };
            if bytes > MAX_RESULT_BYTES {
                return Err(format!(
                    "the result is larger than {} MiB; select fewer columns or rows",
                    MAX_RESULT_BYTES >> 20
                )
                .into());
            }
            values.push(value);
        }
        out.rows.push(values);
    }
    Ok(out)
}

use std::error::Error as _;

/// The message a guest reads for a failed statement.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return match code {
            "57014" => {
                format!("the statement ran longer than {} s (or the request ended)", STATEMENT_TIMEOUT.as_secs())
            }
            "42501" => format!("not allowed: {}", db.message()),
            "25006" => "the tenant's database_bytes quota is used up: delete data (DELETE, DROP or TRUNCATE) \
                        or ask an operator to raise the quota"
                .into(),
            "53100" | "54000" => format!("the database is full or the statement is too large: {}", db.message()),
            _ => db.message().to_string(),
        };
    }
    if e.is_closed() {
        return "the database connection closed; retry".into();
    }
    e.source().map(|s| s.to_string()).unwrap_or_else(|| e.to_string())
}

/// What a statement is, by its first keyword.
struct Kind {
    /// It reads (SELECT and the like).
    reads: bool,
    /// It only takes data away (allowed past the quota).
    frees: bool,
}

/// Refuse what would change the session or privileges, or run more than one
/// statement's worth of SQL; classify the rest.
fn check(statement: &str) -> Result<Kind, String> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(format!("the statement is longer than {} KiB", MAX_STATEMENT_BYTES >> 10));
    }
    let words = leading_words(statement, 2);
    let first = words.first().map(String::as_str).unwrap_or("");
    let second = words.get(1).map(String::as_str).unwrap_or("");
    let refused = match first {
        "" => return Err("the statement is empty".into()),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => Some(
            "transaction control is the platform's: each call is one transaction; use batch to run statements together",
        ),
        "SET" | "RESET" | "DISCARD" | "LOAD" => {
            Some("session settings are the platform's; set what a statement needs inside it")
        }
        "GRANT" | "REVOKE" | "REASSIGN" | "SECURITY" => {
            Some("privileges are the platform's: an instance's data is its own and no one else's")
        }
        "ALTER" if matches!(second, "ROLE" | "USER" | "GROUP" | "SYSTEM" | "DATABASE" | "DEFAULT") => {
            Some("roles, databases and privileges are the platform's")
        }
        "DROP" if second == "OWNED" => Some("roles, databases and privileges are the platform's"),
        "PREPARE" | "EXECUTE" | "DEALLOCATE" | "DECLARE" | "FETCH" | "MOVE" | "CLOSE" => {
            Some("prepared statements and cursors would outlive the call; send the statement itself")
        }
        "LISTEN" | "UNLISTEN" | "NOTIFY" => Some("notifications are the platform's"),
        "COPY" => Some("COPY is not available; use INSERT or SELECT"),
        "DO" => Some("anonymous code blocks are not available; create a function in your schema"),
        "VACUUM" | "CHECKPOINT" | "CLUSTER" => Some("maintenance is the platform's"),
        _ => None,
    };
    if let Some(why) = refused {
        return Err(format!("{first} is not allowed: {why}"));
    }
    Ok(Kind {
        reads: matches!(first, "SELECT" | "VALUES" | "TABLE" | "SHOW" | "EXPLAIN"),
        frees: matches!(first, "DELETE" | "DROP" | "TRUNCATE"),
    })
}

/// The first `n` words of a statement, upper-cased, after comments, whitespace
/// and opening parentheses.
fn leading_words(statement: &str, n: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = statement;
    while words.len() < n {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        if rest.starts_with("/*") {
            rest = sqltext::skip_block_comment(rest);
            continue;
        }
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(rest[..end].to_ascii_uppercase());
        rest = &rest[end..];
    }
    words
}

/// Rewrite SQLite-style parameters (`?1`, `?`) as PostgreSQL's (`$1`) outside
/// strings, quoted identifiers, dollar-quoted bodies and comments.
pub fn placeholders(sql: &str) -> Result<String, String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut i, mut copied, mut highest) = (0usize, 0usize, 0u32);
    while i < bytes.len() {
        if let Some(next) = sqltext::skip_quoted(sql, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            // A PostgreSQL parameter ($1) counts toward the next bare `?`.
            b'$' if i == 0 || !sqltext::is_word(bytes[i - 1]) => {
                let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                if let Ok(n) = sql[i + 1..i + 1 + digits].parse::<u32>() {
                    highest = highest.max(n);
                }
                i += 1 + digits;
            }
            b'?' => {
                let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                let n = if digits == 0 {
                    highest + 1
                } else {
                    sql[i + 1..i + 1 + digits].parse::<u32>().map_err(|_| "a parameter number is too large")?
                };
                if n == 0 || n > 65_535 {
                    return Err(format!("parameter ?{n} is out of range (?1 to ?65535)"));
                }
                highest = highest.max(n);
                out.push_str(&sql[copied..i]);
                out.push('$');
                out.push_str(&n.to_string());
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    Ok(out)
}

/// Bind each value as the type the server inferred for its parameter.
fn bind(stmt: &tokio_postgres::Statement, params: &[SqlValue]) -> Result<Vec<Param>, String> {
    let expected = stmt.params();
    if params.len() != expected.len() {
        return Err(format!("the statement has {} parameters but {} values were given", expected.len(), params.len()));
    }
    let mut out = Vec::with_capacity(params.len());
    for (i, (value, ty)) in params.iter().zip(expected).enumerate() {
        out.push(Param::new(value, ty).map_err(|e| format!("parameter ?{}: {e}", i + 1))?);
    }
    Ok(out)
}

/// One parameter, encoded for its type: numbers, booleans and bytes in binary,
/// anything else as text for the server to parse (dates, numerics, JSON, …).
#[derive(Debug)]
enum Param {
    Null,
    Binary(Vec<u8>),
    Text(String),
}

impl Param {
    fn new(value: &SqlValue, ty: &Type) -> Result<Self, String> {
        let t = ty.clone();
        Ok(match value {
            SqlValue::Null => Param::Null,
            SqlValue::Integer(n) => {
                let n = *n;
                let range = || format!("{n} does not fit the parameter's type {ty}");
                match t {
                    Type::INT8 => Param::Binary(n.to_be_bytes().to_vec()),
                    Type::INT4 => Param::Binary(i32::try_from(n).map_err(|_| range())?.to_be_bytes().to_vec()),
                    Type::INT2 => Param::Binary(i16::try_from(n).map_err(|_| range())?.to_be_bytes().to_vec()),
                    Type::FLOAT8 => Param::Binary((n as f64).to_be_bytes().to_vec()),
                    Type::FLOAT4 => Param::Binary((n as f32).to_be_bytes().to_vec()),
                    Type::BOOL => Param::Binary(vec![u8::from(n != 0)]),
                    Type::BYTEA => return Err(format!("an integer cannot be bound as {ty}; pass a blob")),
                    _ => Param::Text(n.to_string()),
                }
            }
            SqlValue::Real(r) => match t {
                Type::FLOAT8 => Param::Binary(r.to_be_bytes().to_vec()),
                Type::FLOAT4 => Param::Binary((*r as f32).to_be_bytes().to_vec()),
                Type::INT2 | Type::INT4 | Type::INT8 | Type::BOOL | Type::BYTEA => {
                    return Err(format!("a real cannot be bound as {ty}; pass an integer, or cast"))
                }
                _ if r.is_finite() => Param::Text(r.to_string()),
                _ => Param::Text(if r.is_nan() {
                    "NaN".into()
                } else if *r > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }),
            },
            SqlValue::Text(s) => match t {
                Type::BYTEA => Param::Binary(s.as_bytes().to_vec()),
                _ => Param::Text(s.clone()),
            },
            SqlValue::Blob(b) => match t {
                Type::BYTEA => Param::Binary(b.clone()),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Param::Text(
                    String::from_utf8(b.clone()).map_err(|_| format!("a blob bound as {ty} must be UTF-8"))?,
                ),
                _ => return Err(format!("a blob cannot be bound as {ty}; pass text or an integer")),
            },
        })
    }
}

impl ToSql for Param {
    fn to_sql(&self, _: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => return Ok(IsNull::Yes),
            Param::Binary(b) => out.extend_from_slice(b),
            Param::Text(s) => out.extend_from_slice(s.as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> tokio_postgres::types::Format {
        match self {
            Param::Text(_) => tokio_postgres::types::Format::Text,
            _ => tokio_postgres::types::Format::Binary,
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// One result value, converted from the column's type.
struct Cell(SqlValue);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(decode(ty, raw)?))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn decode(ty: &Type, raw: &[u8]) -> Result<SqlValue, String> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(format!("a value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
    }
    let int = |n: usize| -> Result<i64, String> {
        let bytes = raw.get(..n).filter(|_| raw.len() == n).ok_or("a malformed value")?;
        Ok(match n {
            2 => i16::from_be_bytes([bytes[0], bytes[1]]) as i64,
            4 => i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64,
            _ => i64::from_be_bytes(bytes.try_into().map_err(|_| "a malformed value")?),
        })
    };
    let text = || String::from_utf8(raw.to_vec()).map_err(|_| "text that is not UTF-8".to_string());
    Ok(match *ty {
        Type::VOID => SqlValue::Null,
        Type::BOOL => SqlValue::Integer(i64::from(raw.first().is_some_and(|b| *b != 0))),
        Type::INT2 => SqlValue::Integer(int(2)?),
        Type::INT4 => SqlValue::Integer(int(4)?),
        Type::INT8 => SqlValue::Integer(int(8)?),
        Type::OID => SqlValue::Integer(int(4)? as u32 as i64),
        Type::FLOAT4 => SqlValue::Real(f32::from_be_bytes(raw.try_into().map_err(|_| "a malformed value")?) as f64),
        Type::FLOAT8 => SqlValue::Real(f64::from_be_bytes(raw.try_into().map_err(|_| "a malformed value")?)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON | Type::XML => {
            SqlValue::Text(text()?)
        }
        Type::JSONB => {
            SqlValue::Text(String::from_utf8(raw.get(1..).unwrap_or_default().to_vec()).map_err(|e| e.to_string())?)
        }
        Type::BYTEA => SqlValue::Blob(raw.to_vec()),
        Type::NUMERIC => numeric(raw)?,
        Type::UUID => {
            let h = hex::encode(raw);
            if h.len() != 32 {
                return Err("a malformed uuid".into());
            }
            SqlValue::Text(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        Type::DATE => SqlValue::Text(date(int(4)?)),
        Type::TIMESTAMP => SqlValue::Text(timestamp(int(8)?)),
        Type::TIMESTAMPTZ => SqlValue::Text(format!("{}+00", timestamp(int(8)?))),
        Type::TIME => SqlValue::Text(time_of_day(int(8)?)),
        _ => {
            return Err(format!(
                "Wharf returns integers, reals, text, blobs, numerics, booleans, dates, times, uuids and JSON; \
                 cast this {ty} column (e.g. `column::text`)"
            ))
        }
    })
}

/// PostgreSQL's binary numeric: an integer when it has no fraction and fits,
/// else its exact decimal text.
fn numeric(raw: &[u8]) -> Result<SqlValue, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i * 2..i * 2 + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "a malformed numeric".into())
    };
    let (count, weight, sign, scale) = (word(0)? as usize, word(1)? as i16 as i64, word(2)?, word(3)? as usize);
    match sign {
        0xC000 => return Ok(SqlValue::Text("NaN".into())),
        0xD000 => return Ok(SqlValue::Text("Infinity".into())),
        0xF000 => return Ok(SqlValue::Text("-Infinity".into())),
        _ => {}
    }
    let digits: Vec<u16> = (0..count).map(|i| word(4 + i)).collect::<Result<_, _>>()?;
    let digit = |i: i64| if i >= 0 { digits.get(i as usize).copied().unwrap_or(0) } else { 0 };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                s.push_str(&digit(i).to_string());
            } else {
                s.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let mut group = 1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(weight + group)));
            group += 1;
        }
        fraction.truncate(scale);
        s.push('.');
        s.push_str(&fraction);
    } else if let Ok(n) = s.parse::<i64>() {
        return Ok(SqlValue::Integer(n));
    }
    Ok(SqlValue::Text(s))
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian).
fn date(days: i64) -> String {
    // Days since 0000-03-01 (719,468 before 1970-01-01), then civil-from-days.
    let z = days + 730_425;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn timestamp(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => {
            let day = 86_400_000_000i64;
            format!("{} {}", date(micros.div_euclid(day)), time_of_day(micros.rem_euclid(day)))
        }
    }
}

fn time_of_day(micros: i64) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

/// A connection's socket.
enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// Reads the server's messages, refusing (by failing the connection) any whose
/// length is above [`MAX_MESSAGE_BYTES`], before it is buffered.
struct Bounded {
    inner: Stream,
    header: [u8; 5],
    have: usize,
    body_left: usize,
    oversize: Arc<AtomicBool>,
}

impl Bounded {
    /// Follow the message framing over newly read bytes.
    fn scan(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as usize;
                if len > MAX_MESSAGE_BYTES {
                    self.oversize.store(true, Ordering::Relaxed);
                    return Err(std::io::Error::other("the server sent a message larger than the limit"));
                }
                self.body_left = len.saturating_sub(4);
            }
        }
        Ok(())
    }
}

impl AsyncRead for Bounded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = buf.filled()[before..].to_vec();
            self.scan(&fresh)?;
        }
        polled
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_outside_strings_comments_and_bodies_become_dollars() {
        assert_eq!(placeholders("SELECT ?1, ?2 WHERE a = ?1").unwrap(), "SELECT $1, $2 WHERE a = $1");
        assert_eq!(placeholders("SELECT ?, ?").unwrap(), "SELECT $1, $2");
        assert_eq!(placeholders("SELECT '?1', \"?2\", ?3 -- ?4\n").unwrap(), "SELECT '?1', \"?2\", $3 -- ?4\n");
        assert_eq!(placeholders("SELECT 'it''s ?', E'\\' ?', ?1").unwrap(), "SELECT 'it''s ?', E'\\' ?', $1");
        assert_eq!(
            placeholders("SELECT $x$ ? $x$, /* ? /* ? */ ? */ ?2").unwrap(),
            "SELECT $x$ ? $x$, /* ? /* ? */ ? */ $2"
        );
        assert_eq!(placeholders("SELECT $1, ?").unwrap(), "SELECT $1, $2");
        assert!(placeholders("SELECT ?0").is_err());
    }

    #[test]
    fn session_and_privilege_statements_are_refused_by_their_first_word() {
        for refused in [
            "SET ROLE x",
            " /* c */ reset role",
            "begin",
            "GRANT SELECT ON t TO PUBLIC",
            "alter role me set x = 1",
            "NOTIFY wharf_changes",
            "DO $$ BEGIN END $$",
            "copy t to stdout",
            "-- c\nLISTEN x",
            "(PREPARE p AS SELECT 1)",
        ] {
            assert!(check(refused).is_err(), "{refused}");
        }
        assert!(!check("select 1").unwrap().frees);
        assert!(!check("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x").unwrap().frees);
        assert!(check("DELETE FROM t").unwrap().frees);
    }

    #[test]
    fn numerics_dates_and_times_read_as_postgres_prints_them() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, scale 3.
        let raw: Vec<u8> = [3u16, 1, 0, 3, 1, 2345, 6780].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(matches!(numeric(&raw).unwrap(), SqlValue::Text(s) if s == "12345.678"));
        let raw: Vec<u8> = [1u16, 0, 0x4000, 0, 42].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(matches!(numeric(&raw).unwrap(), SqlValue::Integer(-42)));
        let raw: Vec<u8> = [1u16, 0xFFFF, 0, 4, 50].iter().flat_map(|w| w.to_be_bytes()).collect();
        assert!(matches!(numeric(&raw).unwrap(), SqlValue::Text(s) if s == "0.0050"));
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(9_829), "2026-11-29");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(timestamp(86_400_000_000 + 3_723_500_000), "2000-01-02 01:02:03.5");
    }
}
