//! The control-plane database: one SQLite file under the data directory (WAL mode)
//! by default, or PostgreSQL (`wharf serve --database postgres://…`) so that
//! several nodes share one platform.
//!
//! Every room owns its tables and queries and writes them once, for both
//! backends: queries go through sqlx's `Any` driver in SQL both dialects accept
//! (`$1` parameters, `ON CONFLICT`, no dialect functions), and each dialect has
//! its own migrations (`migrations/sqlite`, `migrations/postgres`). Where a room
//! needs what only one dialect has, it asks [`dialect`]. One rule the `Any`
//! driver imposes: SQLite cannot hand a `BOOLEAN` column to it, so boolean
//! columns are read as `(CASE WHEN column THEN 1 ELSE 0 END)` and decoded with [`flag`].

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::any::AnyPoolOptions;
use sqlx::Executor as _;

/// The pool every room queries through.
pub type Db = sqlx::AnyPool;

/// The database behind a [`Db`].
pub type Backend = sqlx::Any;

/// Which SQL dialect the control plane speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The dialect `db` speaks.
pub fn dialect(db: &Db) -> Dialect {
    match db.connect_options().database_url.scheme() {
        "postgres" | "postgresql" => Dialect::Postgres,
        _ => Dialect::Sqlite,
    }
}

/// Open (creating if needed) the control plane and migrate it: PostgreSQL at
/// `url` when given, else `wharf.db` in `data_dir`.
pub async fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<Db> {
    open_with(data_dir, url, 8).await
}

/// [`open`], with at most `connections` to a PostgreSQL control plane.
pub async fn open_with(data_dir: &Path, url: Option<&str>, connections: u32) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let (url, dialect) = match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            (url.to_string(), Dialect::Postgres)
        }
        Some(other) => anyhow::bail!(
            "--database {:?} is not a PostgreSQL URL; use postgres://user@host:5432/db, or omit it for SQLite",
            other.chars().take(40).collect::<String>()
        ),
        None => {
            let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
            let path = dir.join("wharf.db");
            let path = path.to_str().with_context(|| format!("the data directory {data_dir:?} is not UTF-8"))?;
            // The path is a URL's: characters that would end it are escaped.
            let path = path.replace('%', "%25").replace('?', "%3F").replace('#', "%23");
            (format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite)
        }
    };
    let options = match dialect {
        Dialect::Sqlite => AnyPoolOptions::new().max_connections(4).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA busy_timeout = 5000;",
                )
                .await?;
                Ok(())
            })
        }),
        // A few connections per node: the control plane is not on the request path.
        Dialect::Postgres => AnyPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .idle_timeout(std::time::Duration::from_secs(60)),
    };
    let shown = match dialect {
        Dialect::Sqlite => url.clone(),
        Dialect::Postgres => redact(&url),
    };
    let db = options
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&url)
        .await
        .with_context(|| format!("failed to open the control-plane database {shown}"))?;
    match dialect {
        Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&db).await,
        Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&db).await,
    }
    .context("failed to migrate the control-plane database")?;
    Ok(db)
}

/// Begin a transaction on the control plane. On SQLite it takes the write lock
/// at its start (`BEGIN IMMEDIATE`), waiting for another writer as long as the
/// busy timeout allows: a deferred transaction that reads, then writes after
/// another connection committed, fails at once with "database is locked" (its
/// WAL snapshot is stale), and the background passes (beats, usage flushes,
/// job claims) write every second. PostgreSQL's transactions need nothing more.
pub async fn begin(db: &Db) -> Result<sqlx::Transaction<'static, Backend>, sqlx::Error> {
    match dialect(db) {
        Dialect::Sqlite => db.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => db.begin().await,
    }
}

/// A URL with its password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Lock the row of `table` whose `column` is `key` until `tx` ends, so that
/// checks and writes on what hangs off it (a tenant's owners, a user's tenants)
/// cannot interleave with another node's. PostgreSQL runs statements at read
/// committed; SQLite needs no lock (it runs one write transaction at a time and
/// Wharf's checks are part of the writing statement).
pub async fn lock_row(
    tx: &mut sqlx::Transaction<'_, Backend>,
    table: &str,
    column: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    if dialect_of_connection(tx) == Dialect::Postgres {
        sqlx::query(&format!("SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE"))
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn dialect_of_connection(conn: &sqlx::AnyConnection) -> Dialect {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") || conn.backend_name().eq_ignore_ascii_case("postgres") {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    }
}

/// The platform generation a node has caught up with.
#[derive(Debug, Default)]
pub struct Seen(std::sync::atomic::AtomicI64);

impl Seen {
    pub fn new(generation: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(generation))
    }

    pub fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Everything up to `generation` is applied.
    pub fn caught_up(&self, generation: i64) {
        self.0.fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
    }

    /// This node applied its own change `generation` in memory: if that was the
    /// only change it had not seen, it is caught up without reloading anything.
    pub fn applied_own(&self, generation: i64) {
        let _ = self.0.compare_exchange(
            generation - 1,
            generation,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }
}

/// The channel on which PostgreSQL tells every node that the platform changed.
pub const CHANGES_CHANNEL: &str = "wharf_changes";

/// What a platform change was about: other nodes re-read just that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// One instance: its routes, hostnames, modules, settings, setup.
    Instance(&'a str),
    /// Every instance of one tenant (its suspension, deletion, quotas).
    Tenant(&'a str),
    /// One service's versions: published, staged or activated (its routes
    /// follow the active version by reference, so none is re-read).
    Service(&'a str),
    /// Anything else (a version deleted): nodes reload everything.
    All,
}

impl Change<'_> {
    fn scope(&self) -> (&'static str, &str) {
        match self {
            Change::Instance(id) => ("instance", id),
            Change::Tenant(id) => ("tenant", id),
            Change::Service(name) => ("service", name),
            Change::All => ("all", ""),
        }
    }
}

/// A change another node made, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Changed {
    Instance(String),
    Tenant(String),
    Service(String),
}

/// How many changes the log keeps: a node further behind reloads everything.
pub const CHANGE_LOG: i64 = 4096;

/// Past this many instances and tenants changed, one reload of everything
/// costs less than re-reading each.
pub const MOST_CHANGED: usize = 1024;

/// Record that something nodes hold in memory changed (inside `tx`, so it counts
/// only if the change commits), logged as a change of `change`'s scope so that
/// other nodes re-read just that; on PostgreSQL every listening node is told at
/// commit. Returns the new generation.
pub async fn bump_generation_for(
    tx: &mut sqlx::Transaction<'_, Backend>,
    change: Change<'_>,
) -> Result<i64, sqlx::Error> {
    bump_generation_with(tx, &[change]).await
}

/// [`bump_generation_for`] for one change of several scopes (a promotion: a
/// service's active version and the instances whose pins it released), each
/// logged under the one generation.
pub async fn bump_generation_with(
    tx: &mut sqlx::Transaction<'_, Backend>,
    changes: &[Change<'_>],
) -> Result<i64, sqlx::Error> {
    let (generation,): (i64,) =
        sqlx::query_as("UPDATE platform_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation")
            .fetch_one(&mut **tx)
            .await?;
    let mut logged = std::collections::HashSet::new();
    // More instances than are worth re-reading one by one: one `all` row.
    let everything = [Change::All];
    let changes = if changes.is_empty() || changes.len() > MOST_CHANGED { &everything[..] } else { changes };
    for change in changes {
        let (scope, key) = change.scope();
        if !logged.insert((scope, key)) {
            continue;
        }
        sqlx::query("INSERT INTO platform_changes (generation, scope, key) VALUES ($1, $2, $3)")
            .bind(generation)
            .bind(scope)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    }
    if generation % 256 == 0 {
        // The generation row is locked by this transaction: one pruner at a time.
        sqlx::query("DELETE FROM platform_changes WHERE generation <= $1")
            .bind(generation - CHANGE_LOG)
            .execute(&mut **tx)
            .await?;
    }
    if dialect_of_connection(tx) == Dialect::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(generation.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(generation)
}

/// The changes after `seen` up to `current`, when each of them is in the log
/// and of a scope a node can apply alone; `None`: reload everything.
pub async fn changes_between(db: &Db, seen: i64, current: i64) -> Result<Option<Vec<Changed>>, sqlx::Error> {
    changes_within(db, seen, current, MOST_CHANGED).await
}

/// [`changes_between`], with at most `most` things changed (`None` past it).
pub async fn changes_within(
    db: &Db,
    seen: i64,
    current: i64,
    most: usize,
) -> Result<Option<Vec<Changed>>, sqlx::Error> {
    if current - seen > CHANGE_LOG {
        return Ok(None);
    }
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT generation, scope, key FROM platform_changes WHERE generation > $1 AND generation <= $2 \
         ORDER BY generation, scope, key",
    )
    .bind(seen)
    .bind(current)
    .fetch_all(db)
    .await?;
    let logged: std::collections::HashSet<i64> = rows.iter().map(|(generation, _, _)| *generation).collect();
    if logged.len() as i64 != current - seen {
        // Pruned, or written before the log existed.
        return Ok(None);
    }
    let mut changes = Vec::new();
    let mut named = std::collections::HashSet::new();
    for (_, scope, key) in rows {
        let change = match scope.as_str() {
            "instance" => Changed::Instance(key),
            "tenant" => Changed::Tenant(key),
            "service" => Changed::Service(key),
            _ => return Ok(None),
        };
        if named.insert(change.clone()) {
            changes.push(change);
        }
    }
    Ok((changes.len() <= most).then_some(changes))
}

/// Commit `tx` as a change to what nodes hold in memory, of `change`'s scope
/// (see [`Change`]): bump the generation (every node is told at commit),
/// commit, let `apply` make the change in this node's memory (swap a pointer,
/// re-read some routes), then mark it applied here, so this node does not
/// reload its own change. Returns the generation.
pub async fn commit_change_for<F, Fut, E>(
    tx: sqlx::Transaction<'_, Backend>,
    seen: &Seen,
    change: Change<'_>,
    apply: F,
) -> Result<i64, E>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: From<sqlx::Error>,
{
    commit_changes(tx, seen, &[change], apply).await
}

/// [`commit_change_for`] for one change of several scopes (see
/// [`bump_generation_with`]).
pub async fn commit_changes<F, Fut, E>(
    mut tx: sqlx::Transaction<'_, Backend>,
    seen: &Seen,
    changes: &[Change<'_>],
    apply: F,
) -> Result<i64, E>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: From<sqlx::Error>,
{
    let generation = bump_generation_with(&mut tx, changes).await?;
    tx.commit().await?;
    apply().await?;
    seen.applied_own(generation);
    Ok(generation)
}

/// The platform's id, created by the first node that asks.
pub async fn platform_id(db: &Db) -> Result<String, sqlx::Error> {
    let fresh = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    sqlx::query("INSERT INTO platform_info (id, platform_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
        .bind(&fresh)
        .execute(db)
        .await?;
    let (id,): (String,) = sqlx::query_as("SELECT platform_id FROM platform_info WHERE id = 1").fetch_one(db).await?;
    Ok(id)
}

/// The platform's current generation.
pub async fn generation(db: &Db) -> Result<i64, sqlx::Error> {
    let (generation,): (i64,) =
        sqlx::query_as("SELECT generation FROM platform_generation WHERE id = 1").fetch_one(db).await?;
    Ok(generation)
}

/// Bump the generation for a change of `change`'s scope in a transaction of
/// its own; returns the new generation.
pub async fn bump_for(db: &Db, change: Change<'_>) -> Result<i64, sqlx::Error> {
    let mut tx = begin(db).await?;
    let generation = bump_generation_for(&mut tx, change).await?;
    tx.commit().await?;
    Ok(generation)
}

/// Work only one node of the platform needs to do (the billing passes,
/// queueing setups and scheduled jobs, purges), done by the node that holds
/// its lease: held for a while by the control plane's clock (so the nodes'
/// clocks need not agree), renewed by its holder, taken by another node once
/// it expired (its holder stopped, froze or lost the control plane). It
/// spares the control plane the same work from every node; it is not a lock
/// any correctness rests on (each pass is safe on several nodes at once).
pub struct Lease {
    db: Db,
    name: &'static str,
    holder: String,
    ttl: std::time::Duration,
    /// When this node last took or renewed it (`None`: not held).
    renewed: std::sync::Mutex<Option<std::time::Instant>>,
    /// When this node last found it held by another.
    refused: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Lease {
    /// How long a lease lasts unrenewed: how long its work may pause when its
    /// holder freezes.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(15);

    pub fn new(db: Db, name: &'static str, holder: &str, ttl: std::time::Duration) -> Self {
        let renewed = std::sync::Mutex::new(None);
        Self { db, name, holder: holder.to_string(), ttl, renewed, refused: std::sync::Mutex::new(None) }
    }

    /// Whether this node holds the lease now, renewing or taking it when a
    /// third of its time has passed; an unreachable control plane is "no".
    /// A node that found it held by another asks again only after a fifth of
    /// its time (the other nodes' asking is the load the lease saves).
    pub async fn held(&self) -> bool {
        let last = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < self.ttl / 3) {
            return true;
        }
        let refused = *self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none() && refused.is_some_and(|at| at.elapsed() < self.ttl / 5) {
            return false;
        }
        let now = match dialect(&self.db) {
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        };
        let sql = format!(
            "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, {now} + $3) ON CONFLICT (name) \
             DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
             WHERE leases.holder = excluded.holder OR leases.expires_ms < {now} RETURNING holder"
        );
        let asked = std::time::Instant::now();
        let held = match sqlx::query_as::<_, (String,)>(&sql)
            .bind(self.name)
            .bind(&self.holder)
            .bind(self.ttl.as_millis() as i64)
            .fetch_optional(&self.db)
            .await
        {
            Ok(row) => row.is_some(),
            Err(e) => {
                tracing::warn!(lease = self.name, "failed to renew a lease: {e}");
                false
            }
        };
        let was =
            std::mem::replace(&mut *self.renewed.lock().unwrap_or_else(|e| e.into_inner()), held.then_some(asked));
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = (!held).then_some(asked);
        // (Passes asking at once each renew; the change is told once.)
        if held != was.is_some() {
            tracing::info!(lease = self.name, held, "this node's lease changed");
        }
        held
    }

    /// Whether this node held the lease when it last asked (no query).
    pub fn was_held(&self) -> bool {
        self.renewed.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Give the lease up (this node stops): another node takes it at once.
    pub async fn release(&self) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let released = sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(self.name)
            .bind(&self.holder)
            .execute(&self.db)
            .await;
        if let Err(e) = released {
            tracing::warn!(lease = self.name, "failed to give a lease up (it expires): {e}");
        }
    }
}

/// A boolean column read as `(CASE WHEN column THEN 1 ELSE 0 END)`.
pub fn flag(value: i64) -> bool {
    value != 0
}

/// Seconds since the Unix epoch, as stored in `created_at` columns.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, for ordering events within a second.
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether a database error is a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_change_log_names_what_changed_or_asks_for_a_full_reload() {
        for plane in crate::testdb::control_planes().await {
            let (db, on) = (&plane.db, plane.backend);
            let start = generation(db).await.unwrap();
            let a = bump_for(db, Change::Instance("inst-a")).await.unwrap();
            bump_for(db, Change::Tenant("acme")).await.unwrap();
            let c = bump_for(db, Change::Instance("inst-a")).await.unwrap();
            // Each scope once, in the order first changed.
            let changes = changes_between(db, start, c).await.unwrap().unwrap();
            assert_eq!(changes, [Changed::Instance("inst-a".into()), Changed::Tenant("acme".into())], "{on}");
            assert_eq!(changes_between(db, a, c).await.unwrap().unwrap().len(), 2, "{on}");
            assert_eq!(changes_between(db, c, c).await.unwrap().unwrap(), [], "{on}");
            // One change about a service and some instances, under one generation.
            let mut tx = begin(db).await.unwrap();
            let both = [Change::Service("hello"), Change::Instance("inst-b"), Change::Instance("inst-a")];
            let g = bump_generation_with(&mut tx, &both).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(g, c + 1, "{on}");
            let changes = changes_between(db, c, g).await.unwrap().unwrap();
            assert_eq!(changes.len(), 3, "{on}: {changes:?}");
            assert!(changes.contains(&Changed::Service("hello".into())), "{on}");
            assert_eq!(changes_between(db, start, g).await.unwrap().unwrap().len(), 4, "{on}");
            // A change of another scope: everything.
            let d = bump_for(db, Change::All).await.unwrap();
            assert_eq!(changes_between(db, start, d).await.unwrap(), None, "{on}");
            // So is one change about more instances than are worth re-reading.
            let ids: Vec<String> = (0..=MOST_CHANGED).map(|i| format!("moved-{i}")).collect();
            let moved: Vec<Change> = ids.iter().map(|id| Change::Instance(id)).collect();
            let mut tx = begin(db).await.unwrap();
            let h = bump_generation_with(&mut tx, &moved).await.unwrap();
            tx.commit().await.unwrap();
            assert_eq!(changes_between(db, h - 1, h).await.unwrap(), None, "{on}");
            let d = bump_for(db, Change::Instance("inst-a")).await.unwrap();
            assert_eq!(changes_between(db, h, d).await.unwrap().unwrap().len(), 1, "{on}");
            // A generation missing from the log (pruned): everything.
            let e = bump_for(db, Change::Instance("inst-b")).await.unwrap();
            assert!(changes_between(db, d, e).await.unwrap().is_some(), "{on}");
            sqlx::query("DELETE FROM platform_changes WHERE generation = $1").bind(e).execute(db).await.unwrap();
            assert_eq!(changes_between(db, d, e).await.unwrap(), None, "{on}");
            // More instances changed than are worth re-reading one by one.
            let from = generation(db).await.unwrap();
            let mut to = from;
            for i in 0..=MOST_CHANGED {
                to = bump_for(db, Change::Instance(&format!("many-{i}"))).await.unwrap();
            }
            assert_eq!(changes_between(db, from, to).await.unwrap(), None, "{on}");
            assert_eq!(changes_between(db, from + 1, to).await.unwrap().map(|c| c.len()), Some(MOST_CHANGED), "{on}");
            // A reader that can take more (billing's safety net) asks for more.
            let all = changes_within(db, from, to, 10 * MOST_CHANGED).await.unwrap();
            assert_eq!(all.map(|c| c.len()), Some(MOST_CHANGED + 1), "{on}");
            // Further behind than the log keeps: everything, unread.
            assert_eq!(changes_between(db, e - CHANGE_LOG - 1, e).await.unwrap(), None, "{on}");
            // The log is pruned as generations pass: a row older than the log
            // keeps is gone once 256 more changes were made.
            sqlx::query("INSERT INTO platform_changes (generation, scope, key) VALUES ($1, 'instance', 'old')")
                .bind(e - CHANGE_LOG - 10)
                .execute(db)
                .await
                .unwrap();
            for _ in 0..256 {
                bump_for(db, Change::Instance("inst-c")).await.unwrap();
            }
            let old: Option<(i64,)> = sqlx::query_as("SELECT generation FROM platform_changes WHERE key = 'old'")
                .fetch_optional(db)
                .await
                .unwrap();
            assert_eq!(old, None, "{on}");
        }
    }

    #[tokio::test]
    async fn one_node_holds_a_lease_until_it_gives_it_up_or_lets_it_expire() {
        for plane in crate::testdb::control_planes().await {
            let (db, on) = (&plane.db, plane.backend);
            let ttl = std::time::Duration::from_millis(600);
            let a = Lease::new(db.clone(), "passes", "node-a", ttl);
            let b = Lease::new(db.clone(), "passes", "node-b", ttl);
            assert!(a.held().await, "{on}: the first to ask takes it");
            assert!(!b.held().await, "{on}: held by another");
            // Refused, b does not ask again at once; a holds it all along.
            tokio::time::sleep(ttl / 5).await;
            // Renewed by its holder past its first term.
            tokio::time::sleep(ttl / 2).await;
            assert!(a.held().await, "{on}");
            tokio::time::sleep(ttl / 2).await;
            assert!(a.held().await, "{on}: renewed");
            assert!(!b.held().await, "{on}: still held by a");
            // A holder that froze (asked nothing for longer than the lease): taken.
            tokio::time::sleep(ttl + ttl / 3).await;
            assert!(b.held().await, "{on}: expired, so b takes it");
            assert!(!a.held().await, "{on}: a finds it taken when it wakes");
            assert!(!a.was_held(), "{on}");
            // Given up on stopping: the other takes it as soon as it asks again.
            b.release().await;
            tokio::time::sleep(ttl / 4).await;
            assert!(a.held().await, "{on}: released");
            // Another lease is another name.
            assert!(Lease::new(db.clone(), "other", "node-b", ttl).held().await, "{on}");
        }
    }

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(super::redact("postgres://ann:secret@db:5432/w"), "postgres://ann:***@db:5432/w");
        assert_eq!(super::redact("postgres://db/w"), "postgres://db/w");
    }
}
