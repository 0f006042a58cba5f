//! The guest's SQL on `data.sqlite` (behind the authorizer) and its key-value
//! store in `kv.sqlite` (host statements only), each call a job on the
//! instance's line of the database threads.

use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::Local;
use crate::instancedb::sqlguard::{check_statement, describe};
use crate::instancedb::types::{
    Call, Dialect, GuestKv, GuestSql, KvEntry, SqlRows, SqlValue, MAX_RESULT_BYTES, MAX_ROWS,
};

#[async_trait::async_trait]
impl GuestSql for Local {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Run a statement that returns rows.
    async fn query(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<SqlRows, String> {
        check_statement(&statement)?;
        self.run(call, move |s| {
            let conn = s.data()?;
            read_rows(conn, check_statement(&statement)?, &params)
        })
        .await
    }

    /// Run a statement that changes data or schema; returns rows changed.
    async fn execute(&self, statement: String, params: Vec<SqlValue>, call: &Call) -> Result<u64, String> {
        check_statement(&statement)?;
        self.run(call, move |s| {
            let result = run(s.data()?, check_statement(&statement)?, &params);
            s.trim_wal();
            result
        })
        .await
    }

    /// Run statements in one transaction.
    async fn batch(&self, statements: Vec<(String, Vec<SqlValue>)>, call: &Call) -> Result<Vec<u64>, String> {
        for (statement, _) in &statements {
            check_statement(statement)?;
        }
        self.run(call, move |s| {
            s.data()?;
            s.as_host(|conn| conn.execute_batch("BEGIN IMMEDIATE")).map_err(|e| describe(&e))?;
            let mut changed = Vec::with_capacity(statements.len());
            let mut failed = None;
            for (i, (statement, params)) in statements.iter().enumerate() {
                let conn = s.data()?;
                match check_statement(statement).and_then(|st| run(conn, st, params)) {
                    Ok(n) => changed.push(n),
                    Err(e) => {
                        failed = Some(format!("statement {}: {e}", i + 1));
                        break;
                    }
                }
            }
            let end = if failed.is_some() { "ROLLBACK" } else { "COMMIT" };
            let ended = s.as_host(|conn| conn.execute_batch(end)).map_err(|e| describe(&e));
            s.trim_wal();
            match (failed, ended) {
                (Some(e), _) => Err(e),
                (None, Err(e)) => Err(e),
                (None, Ok(())) => Ok(changed),
            }
        })
        .await
    }
}

#[async_trait::async_trait]
impl GuestKv for Local {
    /// A key-value entry, unless absent or expired.
    async fn get(&self, key: String, call: &Call) -> Result<Option<Vec<u8>>, String> {
        self.run(call, move |s| {
            s.kv()?
                .query_row(
                    "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now_millis()],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                .map_err(|e| describe(&e))
        })
        .await
    }

    /// Set a key-value entry, optionally expiring.
    async fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>, call: &Call) -> Result<(), String> {
        let expires = ttl.map(|t| now_millis().saturating_add(t.as_millis().min(i64::MAX as u128) as i64));
        self.run(call, move |s| {
            s.kv()?
                .execute(
                    "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                    rusqlite::params![key, value, expires],
                )
                .map(|_| ())
                .map_err(|e| describe(&e))
        })
        .await
    }

    /// Delete a key-value entry; whether a live one existed.
    async fn delete(&self, key: String, call: &Call) -> Result<bool, String> {
        self.run(call, move |s| {
            let conn = s.kv()?;
            let live = conn
                .execute(
                    "DELETE FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now_millis()],
                )
                .map_err(|e| describe(&e))?;
            // An expired entry goes too, without counting as deleted.
            conn.execute("DELETE FROM kv WHERE key = ?1", [&key]).map_err(|e| describe(&e))?;
            Ok(live > 0)
        })
        .await
    }

    /// Live keys starting with `prefix`, sorted.
    async fn list(&self, prefix: String, limit: u32, call: &Call) -> Result<Vec<String>, String> {
        self.run(call, move |s| {
            // Range scan on the primary key; the prefix is data, never pattern syntax.
            let conn = s.kv()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key FROM kv WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 \
                     AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key LIMIT ?3",
                )
                .map_err(|e| describe(&e))?;
            let keys = stmt
                .query_map(rusqlite::params![prefix, now_millis(), limit], |row| row.get(0))
                .map_err(|e| describe(&e))?;
            keys.collect::<rusqlite::Result<Vec<String>>>().map_err(|e| describe(&e))
        })
        .await
    }

    async fn entries(&self, after: String, limit: u32, call: &Call) -> Result<Vec<KvEntry>, String> {
        self.run(call, move |s| {
            let conn = s.kv()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, expires_at FROM kv WHERE key > ?1 \
                     AND (expires_at IS NULL OR expires_at > ?2) ORDER BY key LIMIT ?3",
                )
                .map_err(|e| describe(&e))?;
            let rows = stmt
                .query_map(rusqlite::params![after, now_millis(), limit], |row| {
                    Ok(KvEntry { key: row.get(0)?, value: row.get(1)?, expires_at_ms: row.get(2)? })
                })
                .map_err(|e| describe(&e))?;
            rows.collect::<rusqlite::Result<Vec<KvEntry>>>().map_err(|e| describe(&e))
        })
        .await
    }

    /// Add `delta` to the integer at `key` (0 if absent or expired), atomically,
    /// keeping a live entry's expiry.
    async fn increment(&self, key: String, delta: i64, call: &Call) -> Result<i64, String> {
        self.run(call, move |s| {
            let conn = s.kv()?;
            // One job holds the instance's connection, and the transaction holds
            // the file: no other increment can read between this read and write.
            let tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| describe(&e))?;
            let now = now_millis();
            let current: Option<(Vec<u8>, Option<i64>)> = tx
                .query_row(
                    "SELECT value, expires_at FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                    rusqlite::params![key, now],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map(Some)
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
                .map_err(|e| describe(&e))?;
            let (value, expires) = match current {
                None => (0, None),
                Some((bytes, expires)) => {
                    let value = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                        .ok_or_else(|| format!("the value at {key:?} is not an integer"))?;
                    (value, expires)
                }
            };
            let next = value.checked_add(delta).ok_or("the counter would overflow")?;
            tx.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                rusqlite::params![key, next.to_string().into_bytes(), expires],
            )
            .map_err(|e| describe(&e))?;
            tx.commit().map_err(|e| describe(&e))?;
            Ok(next)
        })
        .await
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(n) => ValueRef::Integer(*n),
            SqlValue::Real(r) => ValueRef::Real(*r),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// Read a query's rows, measuring every value before copying it.
fn read_rows(conn: &Connection, statement: &str, params: &[SqlValue]) -> Result<SqlRows, String> {
    let mut stmt = prepare_one(conn, statement)?;
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let width = columns.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(|e| describe(&e))?;
    let mut out = SqlRows { columns, rows: Vec::new() };
    let mut bytes = 0usize;
    let too_large =
        || format!("the result is larger than {} MiB; select fewer columns or rows", MAX_RESULT_BYTES >> 20);
    while let Some(row) = rows.next().map_err(|e| describe(&e))? {
        if out.rows.len() == MAX_ROWS {
            return Err(format!("the result has more than {MAX_ROWS} rows; add LIMIT or paginate"));
        }
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            let value = row.get_ref(i).map_err(|e| describe(&e))?;
            bytes += match value {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.len(),
                _ => 8,
            };
            if bytes > MAX_RESULT_BYTES {
                return Err(too_large());
            }
            values.push(match value {
                ValueRef::Null => SqlValue::Null,
                ValueRef::Integer(n) => SqlValue::Integer(n),
                ValueRef::Real(r) => SqlValue::Real(r),
                ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
            });
        }
        out.rows.push(values);
    }
    Ok(out)
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

fn now_millis() -> i64 {
    crate::store::now_millis()
}
