//! Each instance's own database: a SQLite file under
//! `<data>/instances/<id>/data.sqlite`, provisioned when the instance is created and
//! opened on first use. It also holds the instance's key-value store, in a table
//! the guest's SQL cannot touch.
//!
//! The guest's SQL runs behind an authorizer that allows ordinary DDL and DML on
//! the instance's own tables and refuses everything that could reach outside the
//! file or the host: ATTACH/DETACH (and `SQLITE_LIMIT_ATTACHED` is 0), extension
//! loading, virtual tables, PRAGMAs outside a read-only allowlist, and the host's
//! own `_wharf_*` tables. Size, row, byte and time limits bound what a guest can
//! make the host hold; every refusal is an error the guest sees, never a trap.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 100 * 1024;
/// Most rows one query returns.
pub const MAX_ROWS: usize = 10_000;
/// Most bytes one query returns.
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// Largest string or blob stored, and largest key-value value.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Longest key-value key.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest database file (pages of 4 KiB).
pub const MAX_DB_BYTES: u64 = 256 << 20;
/// Longest one statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// PRAGMAs a guest may run: they only describe its own schema or toggle
/// per-connection checks.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "user_version",
    "foreign_keys",
];

/// How many instance databases a node keeps open at once (each holds three file
/// descriptors: the file, its WAL and its shared memory).
pub const MAX_OPEN_DATABASES: usize = 256;

type Slot = Mutex<Option<Connection>>;

/// The open connections of a node, closed oldest-first beyond a budget so that
/// thousands of instances never exhaust file descriptors. A closed one reopens on
/// its next use.
pub struct OpenDatabases {
    max: usize,
    open: AtomicUsize,
    order: Mutex<VecDeque<Weak<Slot>>>,
}

impl OpenDatabases {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), open: AtomicUsize::new(0), order: Mutex::new(VecDeque::new()) })
    }

    /// Databases open now.
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn opened(&self, slot: &Arc<Slot>) {
        let Ok(mut order) = self.order.lock() else { return };
        order.push_back(Arc::downgrade(slot));
        self.open.fetch_add(1, Ordering::Relaxed);
        // Close the oldest idle connections; one in use (its lock held, including
        // the one just opened) is skipped and stays open until later.
        let mut checked = 0;
        while self.open.load(Ordering::Relaxed) > self.max && checked < order.len() {
            let Some(oldest) = order.pop_front() else { break };
            checked += 1;
            let Some(slot) = oldest.upgrade() else {
                continue;
            };
            let closed = match slot.try_lock() {
                Ok(mut conn) => Some(conn.take().is_some()),
                Err(_) => None,
            };
            match closed {
                Some(true) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                Some(false) => {}
                None => order.push_back(oldest),
            }
        }
    }
}

/// One instance's database.
pub struct InstanceDb {
    path: PathBuf,
    conn: Arc<Slot>,
    budget: Arc<OpenDatabases>,
    /// While set, the authorizer lets the host reach its own tables (key-value).
    host_access: Arc<AtomicBool>,
}

impl std::fmt::Debug for InstanceDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceDb").field("path", &self.path).finish()
    }
}

/// A value in or out of SQL.
pub type SqlValue = Value;

/// Rows returned by a query.
#[derive(Debug, Clone, Default)]
pub struct SqlRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

impl InstanceDb {
    /// The database of the instance whose directory is `dir` (not opened yet).
    pub fn new(dir: &Path, budget: Arc<OpenDatabases>) -> Self {
        Self {
            path: dir.join("data.sqlite"),
            conn: Arc::new(Mutex::new(None)),
            budget,
            host_access: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Create the file and the host's tables now, so the instance starts with its
    /// database in place.
    pub fn provision(&self) -> Result<(), String> {
        // Opened and closed: thousands of idle instances must not hold thousands
        // of open files. The first request opens it again.
        self.open().map(drop)
    }

    fn open(&self) -> Result<Connection, String> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the database directory: {e}"))?;
        }
        let conn = Connection::open(&self.path).map_err(|e| format!("cannot open the database: {e}"))?;
        let prepare = |conn: &Connection| -> rusqlite::Result<()> {
            // These PRAGMAs answer with a row.
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            conn.query_row(&format!("PRAGMA max_page_count = {}", MAX_DB_BYTES / 4096), [], |_| Ok(()))?;
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 CREATE TABLE IF NOT EXISTS _wharf_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER);",
            )
        };
        prepare(&conn).map_err(|e| format!("cannot prepare the database: {e}"))?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_STATEMENT_BYTES as i32);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES as i32);
        conn.set_limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 999);
        let host_access = self.host_access.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&ctx, host_access.load(Ordering::Relaxed))));
        Ok(conn)
    }

    /// Run `f` with the connection (opened on first use), statements limited in time.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, String>) -> Result<T, String> {
        let mut guard = self.conn.lock().map_err(|_| "the database is unavailable".to_string())?;
        if guard.is_none() {
            *guard = Some(self.open()?);
            self.budget.opened(&self.conn);
        }
        let conn = guard.as_mut().ok_or("the database is unavailable")?;
        let deadline = Instant::now() + STATEMENT_TIMEOUT;
        conn.progress_handler(10_000, Some(move || Instant::now() > deadline));
        let result = f(conn);
        conn.progress_handler(0, None::<fn() -> bool>);
        result
    }

    fn as_host<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, String> {
        self.with(|conn| {
            self.host_access.store(true, Ordering::Relaxed);
            let result = f(conn).map_err(|e| describe(&e));
            self.host_access.store(false, Ordering::Relaxed);
            result
        })
    }

    /// Run a statement that returns rows.
    pub fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, String> {
        let statement = check_statement(statement)?;
        self.with(|conn| {
            let mut stmt = prepare_one(conn, statement)?;
            let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
            let width = columns.len();
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(|e| describe(&e))?;
            let mut out = SqlRows { columns, rows: Vec::new() };
            let mut bytes = 0usize;
            while let Some(row) = rows.next().map_err(|e| describe(&e))? {
                if out.rows.len() == MAX_ROWS {
                    return Err(format!("the result has more than {MAX_ROWS} rows; add LIMIT or paginate"));
                }
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    let value = match row.get_ref(i).map_err(|e| describe(&e))? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(n) => Value::Integer(n),
                        ValueRef::Real(r) => Value::Real(r),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    };
                    bytes += match &value {
                        Value::Text(t) => t.len(),
                        Value::Blob(b) => b.len(),
                        _ => 8,
                    };
                    values.push(value);
                }
                if bytes > MAX_RESULT_BYTES {
                    return Err(format!(
                        "the result is larger than {} MiB; select fewer columns or rows",
                        MAX_RESULT_BYTES >> 20
                    ));
                }
                out.rows.push(values);
            }
            Ok(out)
        })
    }

    /// Run a statement that changes data or schema; returns rows changed.
    pub fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, String> {
        let statement = check_statement(statement)?;
        self.with(|conn| run(conn, statement, params))
    }

    /// Run statements in one transaction.
    pub fn batch(&self, statements: &[(String, Vec<SqlValue>)]) -> Result<Vec<u64>, String> {
        if statements.len() > 1000 {
            return Err("a batch holds at most 1000 statements".into());
        }
        let statements: Vec<(&str, &Vec<SqlValue>)> =
            statements.iter().map(|(s, p)| check_statement(s).map(|s| (s, p))).collect::<Result<_, _>>()?;
        self.with(|conn| {
            let tx = conn.transaction().map_err(|e| describe(&e))?;
            let mut changed = Vec::with_capacity(statements.len());
            for (i, (statement, params)) in statements.into_iter().enumerate() {
                changed.push(run(&tx, statement, params).map_err(|e| format!("statement {}: {e}", i + 1))?);
            }
            tx.commit().map_err(|e| describe(&e))?;
            Ok(changed)
        })
    }

    /// A key-value entry, unless absent or expired.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        check_key(key)?;
        self.as_host(|conn| {
            conn.query_row(
                "SELECT value FROM _wharf_kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                rusqlite::params![key, now_millis()],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        })
    }

    /// Set a key-value entry, optionally expiring.
    pub fn kv_set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), String> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("the value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
        }
        let expires = ttl.map(|t| now_millis().saturating_add(t.as_millis().min(i64::MAX as u128) as i64));
        self.as_host(|conn| {
            conn.execute(
                "INSERT INTO _wharf_kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                rusqlite::params![key, value, expires],
            )
            .map(|_| ())
        })
    }

    /// Delete a key-value entry; whether a live one existed.
    pub fn kv_delete(&self, key: &str) -> Result<bool, String> {
        check_key(key)?;
        self.as_host(|conn| {
            conn.execute(
                "DELETE FROM _wharf_kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                rusqlite::params![key, now_millis()],
            )
            .map(|n| n > 0)
        })
    }

    /// Live keys starting with `prefix`, sorted.
    pub fn kv_list(&self, prefix: &str, limit: u32) -> Result<Vec<String>, String> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(format!("the prefix is longer than {MAX_KEY_BYTES} bytes"));
        }
        let limit = limit.clamp(1, 1000);
        self.as_host(|conn| {
            // Range scan on the primary key; the prefix is data, never pattern syntax.
            let mut stmt = conn.prepare(
                "SELECT key FROM _wharf_kv WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 \
                 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key LIMIT ?3",
            )?;
            let keys = stmt.query_map(rusqlite::params![prefix, now_millis(), limit], |row| row.get(0))?;
            keys.collect()
        })
    }

    /// Add `delta` to the integer at `key`.
    pub fn kv_increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        check_key(key)?;
        let current = self.kv_get(key)?;
        let current = match current {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("the value at {key:?} is not an integer"))?,
        };
        let next = current.checked_add(delta).ok_or("the counter would overflow")?;
        self.kv_set(key, next.to_string().as_bytes(), None)?;
        Ok(next)
    }
}

/// Prepare exactly one statement: trailing statements are refused, not ignored.
fn prepare_one<'c>(conn: &'c Connection, sql: &str) -> Result<rusqlite::Statement<'c>, String> {
    let mut batch = rusqlite::Batch::new(conn, sql);
    let first = batch.next().map_err(|e| describe(&e))?.ok_or("the statement is empty")?;
    if batch.next().map_err(|e| describe(&e))?.is_some() {
        return Err("send one statement at a time (or use batch)".into());
    }
    Ok(first)
}

fn run(conn: &Connection, statement: &str, params: &[SqlValue]) -> Result<u64, String> {
    let mut stmt = prepare_one(conn, statement)?;
    stmt.execute(rusqlite::params_from_iter(params.iter())).map(|n| n as u64).map_err(|e| describe(&e))
}

/// Check a statement and trim what follows its end (`;` and whitespace), so one
/// statement with a trailing `;` is still one statement.
fn check_statement(statement: &str) -> Result<&str, String> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(format!("the statement is longer than {} KiB", MAX_STATEMENT_BYTES >> 10));
    }
    // VACUUM INTO writes a copy of the database to any path: refused outright.
    let words: Vec<String> = statement.split_whitespace().take(3).map(|w| w.to_ascii_uppercase()).collect();
    if words.first().is_some_and(|w| w == "VACUUM") && statement.to_ascii_uppercase().contains("INTO") {
        return Err("VACUUM INTO is not allowed: it writes outside the instance's database".into());
    }
    Ok(statement.trim_end_matches(|c: char| c == ';' || c.is_whitespace()))
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("keys are 1 to {MAX_KEY_BYTES} bytes"));
    }
    Ok(())
}

fn describe(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(err, Some(msg))
            if err.code == rusqlite::ErrorCode::AuthorizationForStatementDenied =>
        {
            format!("not allowed: {msg}")
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == rusqlite::ErrorCode::OperationInterrupted => {
            format!("the statement ran longer than {} s", STATEMENT_TIMEOUT.as_secs())
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == rusqlite::ErrorCode::DiskFull => {
            format!("the database is full ({} MiB)", MAX_DB_BYTES >> 20)
        }
        rusqlite::Error::MultipleStatement => "send one statement at a time (or use batch)".into(),
        other => other.to_string(),
    }
}

fn is_host_table(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("_wharf")
}

/// The authorizer: what a guest's statement may do.
fn authorize(ctx: &AuthContext<'_>, host: bool) -> Authorization {
    use AuthAction as A;
    if host {
        return Authorization::Allow;
    }
    // Only the main database: no temp schema tricks, no attached files.
    if ctx.database_name.is_some_and(|db| db != "main") {
        return Authorization::Deny;
    }
    let allowed = match ctx.action {
        A::Select | A::Recursive | A::Transaction { .. } | A::Savepoint { .. } => true,
        A::Read { table_name, .. } => !is_host_table(table_name),
        // (SQLite itself refuses direct writes to sqlite_schema; creating a table
        // writes it internally, so it must pass here.)
        A::Insert { table_name } | A::Update { table_name, .. } | A::Delete { table_name } => {
            !is_host_table(table_name)
        }
        A::CreateTable { table_name } | A::DropTable { table_name } | A::AlterTable { table_name, .. } => {
            !is_host_table(table_name)
        }
        A::CreateIndex { table_name, .. } | A::DropIndex { table_name, .. } => !is_host_table(table_name),
        A::CreateTrigger { table_name, .. } | A::DropTrigger { table_name, .. } => !is_host_table(table_name),
        A::CreateView { .. } | A::DropView { .. } | A::Reindex { .. } | A::Analyze { .. } => true,
        A::Function { function_name } => {
            let f = function_name.to_ascii_lowercase();
            f != "load_extension" && f != "readfile" && f != "writefile" && f != "fts3_tokenizer"
        }
        A::Pragma { pragma_name, pragma_value } => {
            ALLOWED_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str())
                && !pragma_value.is_some_and(is_host_table)
        }
        // ATTACH, DETACH, virtual tables, temp objects and anything unknown.
        _ => false,
    };
    if allowed {
        Authorization::Allow
    } else {
        Authorization::Deny
    }
}

fn now_millis() -> i64 {
    crate::store::now_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, InstanceDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = InstanceDb::new(dir.path(), OpenDatabases::new(MAX_OPEN_DATABASES));
        db.provision().unwrap();
        (dir, db)
    }

    #[test]
    fn ordinary_sql_works() {
        let (_d, db) = db();
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)", &[]).unwrap();
        assert_eq!(db.execute("INSERT INTO t (name) VALUES (?1)", &[Value::Text("a".into())]).unwrap(), 1);
        let rows = db.query("SELECT id, name FROM t", &[]).unwrap();
        assert_eq!(rows.columns, ["id", "name"]);
        assert_eq!(rows.rows, vec![vec![Value::Integer(1), Value::Text("a".into())]]);
        assert!(db
            .batch(&[
                ("INSERT INTO t (name) VALUES ('b')".into(), vec![]),
                ("INSERT INTO nope VALUES (1)".into(), vec![])
            ])
            .is_err());
        assert_eq!(
            db.query("SELECT count(*) FROM t", &[]).unwrap().rows[0][0],
            Value::Integer(1),
            "a failed batch applies nothing"
        );
    }

    #[test]
    fn open_databases_stay_within_budget_and_reopen_with_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let budget = OpenDatabases::new(2);
        let dbs: Vec<InstanceDb> =
            (0..5).map(|i| InstanceDb::new(&dir.path().join(i.to_string()), budget.clone())).collect();
        for (i, db) in dbs.iter().enumerate() {
            db.kv_set("n", i.to_string().as_bytes(), None).unwrap();
            assert!(budget.open_count() <= 2, "{} open", budget.open_count());
        }
        for (i, db) in dbs.iter().enumerate() {
            assert_eq!(db.kv_get("n").unwrap(), Some(i.to_string().into_bytes()), "data survives closing");
        }
        assert!(budget.open_count() <= 2);
    }

    #[test]
    fn escapes_are_refused() {
        let (dir, db) = db();
        let outside = dir.path().join("outside.sqlite");
        let attempts = [
            format!("ATTACH DATABASE '{}' AS other", outside.display()),
            format!("VACUUM INTO '{}'", outside.display()),
            "SELECT load_extension('/tmp/evil')".to_string(),
            "PRAGMA journal_mode = DELETE".to_string(),
            "PRAGMA temp_store_directory = '/tmp'".to_string(),
            "PRAGMA database_list".to_string(),
            "SELECT * FROM _wharf_kv".to_string(),
            "DROP TABLE _wharf_kv".to_string(),
            "CREATE TEMP TABLE x (a)".to_string(),
            "CREATE VIRTUAL TABLE v USING fts5(a)".to_string(),
        ];
        for sql in &attempts {
            assert!(db.execute(sql, &[]).is_err() && db.query(sql, &[]).is_err(), "{sql} must be refused");
        }
        assert!(!outside.exists(), "nothing may be written outside the database");
        assert!(db.query("PRAGMA table_info(_wharf_kv)", &[]).map(|r| r.rows.is_empty()).unwrap_or(true));
    }
}
