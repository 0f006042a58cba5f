//! The instance's own SQL database: `wharf:platform/sql`.
//!
//! Every instance of your service has its own database; Wharf picks it from the
//! request's host, so the same code serves every tenant with only its data. It
//! is SQLite on a single node and the instance's own PostgreSQL schema on a
//! platform running on PostgreSQL: declare what your statements are written for
//! in `wharf.toml` (`sql = ["sqlite", "postgres"]`), write parameters as `?1`,
//! `?2`, ... in both, and ask [`dialect`] where the two differ (mostly DDL:
//! `INTEGER PRIMARY KEY` on SQLite, `BIGINT GENERATED ALWAYS AS IDENTITY
//! PRIMARY KEY` on PostgreSQL; `INSERT ... ON CONFLICT` and `RETURNING` work in both).
//! Errors (bad SQL, refused statements, limits) come back as [`crate::Error`]s
//! with status 500 and the database's message, so `?` works in handlers.
//!
//! ```no_run
//! use wharf_sdk::sql::{self, Value};
//! use wharf_sdk::{json, Response};
//!
//! fn list_tasks() -> wharf_sdk::Result {
//!     sql::execute("CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL)", &[])?;
//!     sql::execute("INSERT INTO tasks (title) VALUES (?1)", &["write docs".into()])?;
//!     let rows = sql::query("SELECT id, title FROM tasks WHERE id > ?1", &[Value::Integer(0)])?;
//!     let titles: Vec<String> = rows.rows.iter().filter_map(|r| r[1].as_text().map(str::to_string)).collect();
//!     Ok(Response::json(&json!({ "tasks": titles })))
//! }
//! ```

use crate::bindings::wharf::platform::sql as wit;
use crate::Error;

/// A SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }
    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
    /// As JSON (blobs as arrays of bytes).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(n) => (*n).into(),
            Value::Real(r) => (*r).into(),
            Value::Text(t) => t.clone().into(),
            Value::Blob(b) => b.clone().into(),
        }
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}
impl From<f64> for Value {
    fn from(r: f64) -> Self {
        Value::Real(r)
    }
}
impl From<&str> for Value {
    fn from(t: &str) -> Self {
        Value::Text(t.to_string())
    }
}
impl From<String> for Value {
    fn from(t: String) -> Self {
        Value::Text(t)
    }
}
impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Blob(b)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// Rows from [`query`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// Each row as a JSON object keyed by column name.
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        self.rows
            .iter()
            .map(|row| {
                let map = self.columns.iter().cloned().zip(row.iter().map(Value::to_json)).collect();
                serde_json::Value::Object(map)
            })
            .collect()
    }
}

fn to_wit(params: &[Value]) -> Vec<wit::Value> {
    params
        .iter()
        .map(|v| match v {
            Value::Null => wit::Value::Null,
            Value::Integer(n) => wit::Value::Integer(*n),
            Value::Real(r) => wit::Value::Real(*r),
            Value::Text(t) => wit::Value::Text(t.clone()),
            Value::Blob(b) => wit::Value::Blob(b.clone()),
        })
        .collect()
}

fn from_wit(v: wit::Value) -> Value {
    match v {
        wit::Value::Null => Value::Null,
        wit::Value::Integer(n) => Value::Integer(n),
        wit::Value::Real(r) => Value::Real(r),
        wit::Value::Text(t) => Value::Text(t),
        wit::Value::Blob(b) => Value::Blob(b),
    }
}

/// The SQL dialect of the instance's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Which dialect the instance's database speaks.
pub fn dialect() -> Dialect {
    match wit::dialect() {
        wit::SqlDialect::Sqlite => Dialect::Sqlite,
        wit::SqlDialect::Postgres => Dialect::Postgres,
    }
}

/// `sqlite` or `postgres`, whichever the instance's database speaks.
pub fn pick<'a>(sqlite: &'a str, postgres: &'a str) -> &'a str {
    match dialect() {
        Dialect::Sqlite => sqlite,
        Dialect::Postgres => postgres,
    }
}

fn error(message: String) -> Error {
    Error::internal(format!("database: {message}"))
}

/// Run one statement that returns rows; parameters bind to `?1`, `?2`, ...
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, Error> {
    let rows = wit::query(statement, &to_wit(params)).map_err(error)?;
    Ok(Rows {
        columns: rows.columns,
        rows: rows.rows.into_iter().map(|r| r.into_iter().map(from_wit).collect()).collect(),
    })
}

/// Run one statement that changes data or schema; returns the rows changed.
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, Error> {
    wit::execute(statement, &to_wit(params)).map_err(error)
}

/// Run statements in one transaction: all apply, or none does.
pub fn batch(statements: &[(&str, Vec<Value>)]) -> Result<Vec<u64>, Error> {
    let statements: Vec<(String, Vec<wit::Value>)> =
        statements.iter().map(|(s, p)| (s.to_string(), to_wit(p))).collect();
    wit::batch(&statements).map_err(error)
}
