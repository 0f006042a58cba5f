//! The control-plane database: one SQLite file under the data directory (WAL mode).
//!
//! Every room owns its tables and queries; this module only opens the pool and
//! runs the migrations. SQL stays portable so the same statements can run on
//! PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// The pool every room queries through.
pub type Db = sqlx::SqlitePool;

/// Open (creating if needed) the control-plane database in `data_dir` and migrate it.
pub async fn open(data_dir: &Path) -> anyhow::Result<Db> {
    let path = data_dir.join("wharf.db");
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(5));
    let db = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .with_context(|| format!("failed to open the control-plane database {path:?}"))?;
    sqlx::migrate!("./migrations").run(&db).await.context("failed to migrate the control-plane database")?;
    Ok(db)
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
