//! One job's access to an instance's connections, and how they are opened:
//! every limit set, the guest's behind the authorizer ([`crate::instancedb::sqlguard`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::Connection;

use super::{limit_sqlite_heap, threads, Conns, Running, Shared};
use crate::instancedb::sqlguard::authorize;
use crate::instancedb::storage;
use crate::instancedb::types::{MAX_COLUMNS, MAX_DB_BYTES, MAX_KEY_BYTES, MAX_KV_BYTES, MAX_STATEMENT_BYTES};
use crate::instancedb::types::{MAX_VALUE_BYTES, PAGE_CACHE_KIB, WAL_LIMIT};

/// One job's access to the instance's connections, on a database thread.
pub(super) struct Session<'a> {
    pub(super) conns: &'a mut Conns,
    pub(super) shared: &'a Arc<Shared>,
    pub(super) job: u64,
    pub(super) deadline: Instant,
    pub(super) cancelled: Arc<AtomicBool>,
    pub(super) data_used: bool,
    pub(super) kv_used: bool,
    /// Each connection's change count when this job first used it.
    pub(super) data_changes: u64,
    pub(super) kv_changes: u64,
}

impl Session<'_> {
    fn note_opened(&mut self, was_open: bool) {
        if !was_open {
            if let Some(slot) = self.shared.slot.upgrade() {
                self.shared.budget.opened(&slot);
            }
        }
    }

    /// The guest's connection, bounded in time for this job.
    pub(super) fn data(&mut self) -> Result<&Connection, String> {
        if self.conns.data.is_none() {
            let was_open = self.conns.is_open();
            self.conns.data = Some(open_data(self.shared)?);
            self.note_opened(was_open);
        }
        if !self.data_used {
            // The tenant's other instances may have grown since: the file may
            // grow only to what the tenant's quota leaves.
            let path = self.shared.dir.join("data.sqlite");
            let cap = MAX_DB_BYTES.min(self.shared.tenant.storage.allowance(&path));
            let (conn, last) = (self.conns.data.as_ref(), &mut self.conns.data_cap);
            if let Some(conn) = conn {
                self.shared.host_access.store(true, Ordering::Relaxed);
                cap_pages(conn, cap, last);
                self.shared.host_access.store(false, Ordering::Relaxed);
            }
        }
        let conn = self.conns.data.as_ref().ok_or("the database is unavailable")?;
        if !self.data_used {
            self.data_used = true;
            self.data_changes = conn.total_changes();
            if let Ok(mut running) = self.shared.running.lock() {
                *running = Running { job: self.job, interrupt: Some(conn.get_interrupt_handle()) };
            }
            let (deadline, cancelled) = (self.deadline, self.cancelled.clone());
            // A long statement yields the CPU to everyone else's requests; an
            // instance whose statements were long lately starts lowered.
            let recent = self.shared.recent.clone();
            if recent.is_heavy() {
                threads::demote_current_thread();
            }
            // CPU time, not wall time: a statement that only waited for a core
            // is not a heavy one.
            let demote_at = crate::sched::thread_cpu_nanos().saturating_add(threads::DEMOTE_AFTER.as_nanos() as u64);
            let mut demoted = false;
            conn.progress_handler(
                10_000,
                Some(move || {
                    if !demoted && crate::sched::thread_cpu_nanos() > demote_at {
                        demoted = true;
                        recent.mark_heavy();
                        threads::demote_current_thread();
                    }
                    threads::rescue_if_starved();
                    Instant::now() > deadline || cancelled.load(Ordering::Relaxed)
                }),
            );
        }
        Ok(conn)
    }

    /// The key-value connection (host statements only).
    pub(super) fn kv(&mut self) -> Result<&mut Connection, String> {
        if self.conns.kv.is_none() {
            // Opening the guest's database first moves an old key-value table over.
            if self.conns.data.is_none() {
                self.data()?;
            }
            let was_open = self.conns.is_open();
            self.conns.kv = Some(open_kv(&self.shared.dir)?);
            self.note_opened(was_open);
        }
        if !self.kv_used {
            self.kv_used = true;
            self.kv_changes = self.conns.kv.as_ref().map_or(0, Connection::total_changes);
            let cap = MAX_KV_BYTES.min(self.shared.tenant.storage.allowance(&self.shared.dir.join("kv.sqlite")));
            if let Some(conn) = self.conns.kv.as_ref() {
                cap_pages(conn, cap, &mut self.conns.kv_cap);
            }
        }
        self.conns.kv.as_mut().ok_or_else(|| "the key-value store is unavailable".into())
    }

    /// Run the host's own statement on the guest's connection.
    pub(super) fn as_host<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let conn = self.conns.data.as_ref().ok_or(rusqlite::Error::InvalidQuery)?;
        self.shared.host_access.store(true, Ordering::Relaxed);
        let result = f(conn);
        self.shared.host_access.store(false, Ordering::Relaxed);
        result
    }

    /// Checkpoint and truncate a WAL grown past [`WAL_LIMIT`].
    pub(super) fn trim_wal(&self) {
        let wal = self.shared.dir.join("data.sqlite-wal");
        if std::fs::metadata(&wal).map(|m| m.len() > WAL_LIMIT).unwrap_or(false) {
            if let Err(e) = self.as_host(|conn| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))) {
                tracing::warn!(dir = ?self.shared.dir, "failed to truncate the write-ahead log: {e}");
            }
        }
    }

    /// Leave nothing behind for the next request: no open transaction, no handler.
    pub(super) fn finish(self) {
        let storage = &self.shared.tenant.storage;
        // Sizes are measured only after a job that wrote (reads leave them as
        // they were; a schema change is measured with the next write).
        if let Some(conn) = self.conns.kv.as_ref().filter(|c| self.kv_used && c.total_changes() != self.kv_changes) {
            if let Ok(bytes) = file_bytes(conn) {
                storage.record(&self.shared.dir.join("kv.sqlite"), bytes);
            }
        }
        if !self.data_used {
            return;
        }
        if let Some(conn) = self.conns.data.as_ref() {
            if !conn.is_autocommit() {
                let _ = self.as_host(|conn| conn.execute_batch("ROLLBACK"));
            }
            conn.progress_handler(0, None::<fn() -> bool>);
            if conn.total_changes() != self.data_changes {
                if let Ok(bytes) = self.as_host(file_bytes) {
                    storage.record(&self.shared.dir.join("data.sqlite"), bytes);
                }
            }
        }
        if let Ok(mut running) = self.shared.running.lock() {
            *running = Running::default();
        }
    }
}

/// Let the connection's file grow to at most `bytes` (`last`: the cap set before).
fn cap_pages(conn: &Connection, bytes: u64, last: &mut u64) {
    let pages = (bytes / storage::PAGE_BYTES).max(1);
    if pages != *last && conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).is_ok() {
        *last = pages;
    }
}

/// The size of a connection's database, in bytes.
pub(super) fn file_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    Ok(pages.max(0) as u64 * storage::PAGE_BYTES)
}

fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the database directory: {e}"))
}

/// Open the guest's database with every limit set and the authorizer installed.
pub(super) fn open_data(shared: &Shared) -> Result<Connection, String> {
    limit_sqlite_heap();
    create_dir(&shared.dir)?;
    let conn =
        Connection::open(shared.dir.join("data.sqlite")).map_err(|e| format!("cannot open the database: {e}"))?;
    let prepare = |conn: &Connection| -> rusqlite::Result<()> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        // These PRAGMAs answer with a row.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA max_page_count = {}", MAX_DB_BYTES / 4096), [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA journal_size_limit = {WAL_LIMIT}"), [], |_| Ok(()))?;
        // Sorts and temporary results stay in memory, under the heap limit,
        // never in files outside the instance's quota.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
             PRAGMA cache_size = -{PAGE_CACHE_KIB};"
        ))
    };
    prepare(&conn).map_err(|e| format!("cannot prepare the database: {e}"))?;
    migrate_old_kv(&conn, &shared.dir)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_STATEMENT_BYTES as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, MAX_COLUMNS as i32);
    conn.set_limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 999);
    conn.set_limit(Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 10);
    let host_access = shared.host_access.clone();
    conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
        authorize(&ctx, host_access.load(Ordering::Relaxed))
    }));
    Ok(conn)
}

/// Open the key-value file; no guest statement ever runs on this connection.
pub(super) fn open_kv(dir: &Path) -> Result<Connection, String> {
    limit_sqlite_heap();
    create_dir(dir)?;
    let conn = Connection::open(dir.join("kv.sqlite")).map_err(|e| format!("cannot open the key-value store: {e}"))?;
    let prepare = |conn: &Connection| -> rusqlite::Result<()> {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA max_page_count = {}", MAX_KV_BYTES / 4096), [], |_| Ok(()))?;
        conn.query_row(&format!("PRAGMA journal_size_limit = {WAL_LIMIT}"), [], |_| Ok(()))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{PAGE_CACHE_KIB}; \
             CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER);"
        ))
    };
    prepare(&conn).map_err(|e| format!("cannot prepare the key-value store: {e}"))?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, (MAX_VALUE_BYTES + MAX_KEY_BYTES + 64) as i32);
    Ok(conn)
}

/// Instances created before the key-value store had its own file kept it in a
/// `_wharf_kv` table of the guest's database: move it over, once.
fn migrate_old_kv(data: &Connection, dir: &Path) -> Result<(), String> {
    let exists: bool = data
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_wharf_kv')", [], |r| {
            r.get(0)
        })
        .map_err(|e| format!("cannot read the database schema: {e}"))?;
    if !exists {
        return Ok(());
    }
    let mut kv = open_kv(dir)?;
    let rows: Vec<(String, Vec<u8>, Option<i64>)> = data
        .prepare("SELECT key, value, expires_at FROM _wharf_kv")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| format!("cannot read the old key-value table: {e}"))?;
    let tx = kv.transaction().map_err(|e| e.to_string())?;
    for (key, value, expires) in &rows {
        tx.execute(
            "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO NOTHING",
            rusqlite::params![key, value, expires],
        )
        .map_err(|e| format!("cannot move the key-value store: {e}"))?;
    }
    tx.commit().map_err(|e| format!("cannot move the key-value store: {e}"))?;
    data.execute_batch("DROP TABLE _wharf_kv").map_err(|e| format!("cannot drop the old key-value table: {e}"))?;
    tracing::info!(?dir, entries = rows.len(), "moved the key-value store to its own file");
    Ok(())
}
