//! One instance's calls: the statement checked, its parameters rewritten and
//! bound, run in its own transaction as the instance's role, and its rows read
//! within the limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;

use crate::instancedb::sqltext;
use tokio_postgres::Client;

use super::values::{bind, Cell};
use super::{Conn, Login, PgDatabases};
use crate::instancedb::types::STATEMENT_TIMEOUT;
use crate::instancedb::types::{
    Call, SqlRows, SqlValue, MAX_COLUMNS, MAX_RESULT_BYTES, MAX_ROWS, MAX_STATEMENT_BYTES, MAX_WAIT,
};

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
pub(super) struct Kind {
    /// It reads (SELECT and the like).
    pub(super) reads: bool,
    /// It only takes data away (allowed past the quota).
    pub(super) frees: bool,
}

/// Refuse what would change the session or privileges, or run more than one
/// statement's worth of SQL; classify the rest.
pub(super) fn check(statement: &str) -> Result<Kind, String> {
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

/// An instance's SQL in its PostgreSQL schema, within its tenant's database
/// quota (the schema's size is counted as its `data.sqlite` would be).
pub struct PgSql {
    pg: PgInstance,
    /// The instance's files on this node: where its tenant's sizes are counted.
    local: Arc<crate::instancedb::sqlite::Local>,
}

impl PgSql {
    pub fn new(pg: PgInstance, local: Arc<crate::instancedb::sqlite::Local>) -> Self {
        Self { pg, local }
    }

    /// Run `work` in the instance's schema, counting what it writes.
    async fn on_postgres(&self, work: Work, call: &Call) -> Result<Done, String> {
        let storage = self.local.storage();
        let dir = self.local.dir();
        let key = dir.join("data.sqlite");
        // Every node writes the same schemas: the tenant's sizes come from the
        // server, re-read at most once a second by each node that writes.
        if storage.due(crate::instancedb::types::TENANT_SIZES_EVERY) {
            match self.pg.pool.tenant_sizes(&self.pg.tenant).await {
                Ok(sizes) => {
                    let parent = dir.parent().unwrap_or(dir);
                    for (instance, bytes) in sizes {
                        storage.record(&parent.join(instance).join("data.sqlite"), bytes);
                    }
                }
                Err(e) => tracing::warn!(tenant = %self.pg.tenant, "{e:#}"),
            }
        }
        let room = storage.size(&key) < crate::instancedb::types::MAX_DB_BYTES.min(storage.allowance(&key));
        let (done, size) = self.pg.run(work, call, room).await?;
        if let Some(bytes) = size {
            storage.record(&key, bytes);
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl crate::instancedb::types::GuestSql for PgSql {
    fn dialect(&self) -> crate::instancedb::types::Dialect {
        crate::instancedb::types::Dialect::Postgres
    }

    async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        match self.on_postgres(Work::Query(statement, params), call).await? {
            Done::Rows(rows) => Ok(rows),
            _ => Err("the database answered something else".into()),
        }
    }

    async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        match self.on_postgres(Work::Execute(statement, params), call).await? {
            Done::Changed(n) => Ok(n),
            _ => Err("the database answered something else".into()),
        }
    }

    async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        match self.on_postgres(Work::Batch(statements), call).await? {
            Done::Batch(changed) => Ok(changed),
            _ => Err("the database answered something else".into()),
        }
    }
}
