//! The database bytes of a tenant: every instance's files count toward one quota.
//!
//! Each instance's size is measured when it is first seen (from its files) and
//! after every job that used its connections (from SQLite's page counts). Before a
//! job, the instance's connections are capped (`max_page_count`) at what the
//! tenant has left once its other instances are counted, so SQLite itself refuses
//! the write that would cross the quota ("database or disk is full"). Two of a
//! tenant's instances writing at the same moment can each use the room the other
//! has not yet reported: the overshoot is bounded by what one statement writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes per SQLite page (the default, which Wharf's files use).
pub const PAGE_BYTES: u64 = 4096;

/// One tenant's database bytes and its quota.
pub struct TenantStorage {
    quota: AtomicU64,
    /// When the sizes were last read from a shared server (PostgreSQL).
    refreshed: Mutex<Option<std::time::Instant>>,
    /// Each file's size, and their sum (kept as files change: no per-job sums).
    used: Mutex<(HashMap<PathBuf, u64>, u64)>,
}

impl Default for TenantStorage {
    fn default() -> Self {
        Self { quota: AtomicU64::new(u64::MAX), refreshed: Mutex::new(None), used: Mutex::new((HashMap::new(), 0)) }
    }
}

impl TenantStorage {
    /// Set the tenant's quota in bytes.
    pub fn set_quota(&self, bytes: u64) {
        self.quota.store(bytes, Ordering::Relaxed);
    }

    /// The tenant's quota in bytes (`u64::MAX`: none set yet).
    pub fn quota(&self) -> u64 {
        self.quota.load(Ordering::Relaxed)
    }

    /// Count an instance whose files are in `dir`, measured from the files
    /// (once: later measures come from its connections).
    pub fn register(&self, dir: &Path) {
        let Ok(mut used) = self.used.lock() else { return };
        let (files, total) = &mut *used;
        for file in ["data.sqlite", "kv.sqlite"] {
            if let std::collections::hash_map::Entry::Vacant(entry) = files.entry(dir.join(file)) {
                let wal = dir.join(format!("{file}-wal"));
                let size: u64 = [entry.key().as_path(), wal.as_path()]
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum();
                entry.insert(size);
                *total += size;
            }
        }
    }

    /// Record the current size of one database file.
    pub fn record(&self, file: &Path, bytes: u64) {
        if let Ok(mut used) = self.used.lock() {
            let (files, total) = &mut *used;
            let before = files.insert(file.to_path_buf(), bytes).unwrap_or(0);
            *total = total.saturating_sub(before).saturating_add(bytes);
        }
    }

    /// Whether the sizes are older than `every` (then they count as read now: one
    /// caller re-reads them).
    pub fn due(&self, every: std::time::Duration) -> bool {
        let Ok(mut refreshed) = self.refreshed.lock() else { return false };
        if refreshed.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *refreshed = Some(std::time::Instant::now());
        true
    }

    /// The size last recorded for `file`.
    pub fn size(&self, file: &Path) -> u64 {
        self.used.lock().map(|used| used.0.get(file).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// All the tenant's instances together, in bytes.
    pub fn total(&self) -> u64 {
        self.used.lock().map(|used| used.1).unwrap_or(0)
    }

    /// Bytes the database `file` may grow to: the quota less every other file's
    /// size.
    pub fn allowance(&self, file: &Path) -> u64 {
        let others =
            self.used.lock().map(|used| used.1.saturating_sub(used.0.get(file).copied().unwrap_or(0))).unwrap_or(0);
        self.quota().saturating_sub(others)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_may_grow_to_what_the_others_leave() {
        let storage = TenantStorage::default();
        storage.set_quota(100);
        storage.record(Path::new("/a"), 30);
        storage.record(Path::new("/b"), 50);
        assert_eq!(storage.allowance(Path::new("/a")), 50);
        assert_eq!(storage.allowance(Path::new("/c")), 20);
        assert_eq!(storage.total(), 80);
        storage.record(Path::new("/b"), 120);
        assert_eq!(storage.allowance(Path::new("/a")), 0);
    }
}
