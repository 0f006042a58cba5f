//! Usage metering: requests, job runs, fuel and errors per
//! instance, per hour, from every node.
//!
//! Every finished request and job run is appended to the node's usage journal
//! (`<data>/usage/`, one line) before it is counted: the line is copied into a
//! shared mapping of the journal file (no system call per request; past the
//! space reserved for the mapping, one `write(2)`), so the kernel's page cache
//! holds it even if the process is killed the next instant. Once
//! a second the flusher closes the current journal file (opening a new one under
//! the same lock, so each file holds exactly what was counted while it was
//! current), and applies each closed file as one batch: in one transaction the
//! batch's id goes into `usage_batches` and its amounts into `usage_ledger`
//! (per instance per hour) and `usage_totals`. The file is deleted after the
//! commit. A batch applied twice (a crash between the commit and the delete, a
//! retry) counts once; files left by a killed node are applied when it starts
//! again. So after SIGKILL nothing counted is lost; what a killed node served but
//! had not yet counted (a guest still finishing) is lost, and is bounded by the
//! requests in flight. (A power cut can lose what the page cache held.)

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use dashmap::DashMap;
use serde::Serialize;
use tracing::Instrument;

use crate::store::{self, Db};

/// Amounts of one instance not yet applied to the database (shown by
/// [`Usage::totals`] meanwhile), and where new amounts are journaled.
#[derive(Debug)]
pub struct UsageCounters {
    instance: String,
    tenant: String,
    journal: Arc<Journal>,
    requests: AtomicU64,
    jobs: AtomicU64,
    fuel: AtomicU64,
    errors: AtomicU64,
}

impl UsageCounters {
    /// The billing hour now: a request is counted in the hour it arrived
    /// (it is recorded only once its response has left, which may be later).
    pub fn hour(&self) -> i64 {
        self.journal.clock.now() / 3600 * 3600
    }

    /// Count one finished request that arrived in `hour` (from [`Self::hour`]).
    pub fn record(&self, hour: i64, fuel: u64, failed: bool) {
        self.add(hour, 1, 0, fuel, failed);
    }

    /// Count one finished job run (a seeder's included).
    pub fn record_job(&self, fuel: u64, failed: bool) {
        self.add(self.hour(), 0, 1, fuel, failed);
    }

    fn add(&self, hour: i64, requests: u64, jobs: u64, fuel: u64, failed: bool) {
        let errors = u64::from(failed);
        // One line, formatted on the stack (ids are short; a longer line falls
        // back to the heap), written with one `write`.
        let mut stack = [0u8; 256];
        let mut cursor = std::io::Cursor::new(&mut stack[..]);
        let fits = writeln!(cursor, "{}\t{}\t{hour}\t{requests}\t{jobs}\t{fuel}\t{errors}", self.instance, self.tenant)
            .is_ok();
        let written = cursor.position() as usize;
        let heap;
        let line: &[u8] = if fits {
            &stack[..written]
        } else {
            heap = format!("{}\t{}\t{hour}\t{requests}\t{jobs}\t{fuel}\t{errors}\n", self.instance, self.tenant);
            heap.as_bytes()
        };
        // Journaled and counted under the journal's read lock: a flush (the
        // write lock) never splits the two.
        let current = self.journal.current.read().unwrap_or_else(|e| e.into_inner());
        if let Some(memory) = &self.journal.memory {
            memory.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(line);
        } else if let Err(e) = current.append(line) {
            tracing::error!(instance = %self.instance, "failed to journal usage (it is lost): {e}");
            return;
        }
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.jobs.fetch_add(jobs, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    /// Take out what a committed batch applied.
    fn subtract(&self, applied: &UsageTotals) {
        for (counter, amount) in [
            (&self.requests, applied.requests),
            (&self.jobs, applied.jobs),
            (&self.fuel, applied.fuel),
            (&self.errors, applied.errors),
        ] {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(amount)));
        }
    }

    fn peek(&self) -> UsageTotals {
        UsageTotals {
            jobs: self.jobs.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            fuel: self.fuel.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// What an instance has used so far.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UsageTotals {
    /// Requests that reached the guest.
    pub requests: u64,
    /// Job runs (attempts, seeders included).
    pub jobs: u64,
    /// Fuel consumed by those requests and jobs.
    pub fuel: u64,
    /// Requests and job runs whose guest failed (trap, fuel, memory, deadline).
    pub errors: u64,
}

impl UsageTotals {
    fn add(&mut self, other: &UsageTotals) {
        self.requests += other.requests;
        self.jobs += other.jobs;
        self.fuel += other.fuel;
        self.errors += other.errors;
    }
}

/// Usage of one instance, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceUsage {
    pub instance: String,
    pub tenant: String,
    pub service: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// The node's usage journal: the file being written, in a directory of files
/// waiting to be applied.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Billing time: amounts go to the hour it says.
    clock: Arc<crate::clock::Clock>,
    current: RwLock<JournalFile>,
    /// With `--no-usage-journal`: lines kept in memory until the next flush
    /// (a SIGKILL loses them); the file stays empty.
    memory: Option<std::sync::Mutex<Vec<u8>>>,
}

/// Bytes of a journal file written through its mapping (about 170,000 lines);
/// lines past them are appended with `write(2)`.
const MAPPED_BYTES: usize = 8 << 20;

/// One journal file. Its first [`MAPPED_BYTES`] are allocated on disk up front
/// and mapped shared: a line is copied in at a place taken with one atomic
/// add, its newline last, so a complete line always ends in `\n`, a line cut
/// short by a kill does not, and a place taken but never filled stays zeros
/// ([`complete_lines`] reads them so). When the disk has no room for the
/// mapped part, or it is full, lines are appended with `write(2)` as before.
#[derive(Debug)]
struct JournalFile {
    path: PathBuf,
    file: std::fs::File,
    mapped: Option<Mapped>,
}

/// The shared mapping of a journal file's first bytes.
#[derive(Debug)]
struct Mapped {
    base: std::ptr::NonNull<u8>,
    len: usize,
    /// Where the next line goes (past `len`: the mapping is full).
    next: AtomicUsize,
}

// SAFETY: the mapping is shared memory written only at places handed out once
// each by `next`, so threads never write the same bytes.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Map the first `len` bytes of `file`, allocated on disk first (a write
    /// to the mapping can then never meet a full disk, which would be a
    /// SIGBUS). `None` when the file system cannot.
    fn new(file: &std::fs::File, len: usize) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let fd = file.as_raw_fd();
        // SAFETY: plain system calls on a file this process opened; the
        // mapping is checked before use and unmapped once, in `drop`.
        unsafe {
            if libc::posix_fallocate(fd, 0, len as libc::off_t) != 0 {
                // Whatever was allocated goes back; lines are written instead.
                let _ = file.set_len(0);
                return None;
            }
            let base =
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            if base == libc::MAP_FAILED {
                let _ = file.set_len(0);
                return None;
            }
            Some(Self { base: std::ptr::NonNull::new(base.cast())?, len, next: AtomicUsize::new(0) })
        }
    }

    /// Copy `line` (ending in `\n`) in; false when it does not fit.
    fn append(&self, line: &[u8]) -> bool {
        let at = self.next.fetch_add(line.len(), Ordering::Relaxed);
        if at.checked_add(line.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        let Some((newline, body)) = line.split_last() else { return true };
        // SAFETY: `at..at + line.len()` lies inside the mapping (checked
        // above) and was handed to this call alone.
        unsafe {
            let to = self.base.as_ptr().add(at);
            std::ptr::copy_nonoverlapping(body.as_ptr(), to, body.len());
            // The line's bytes before its newline, for whoever reads the page.
            std::sync::atomic::fence(Ordering::Release);
            std::ptr::write_volatile(to.add(body.len()), *newline);
        }
        true
    }

    /// Bytes handed out so far (all of the mapping once it is full).
    fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed).min(self.len)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl JournalFile {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        // Names sort by creation: batches apply in order.
        let name = format!("usage-{:016}-{}.log", store::now_millis(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to create the usage journal {path:?}"))?;
        let mapped = Mapped::new(&file, MAPPED_BYTES);
        Ok(Self { path, file, mapped })
    }

    /// Journal one line (ending in `\n`).
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        match &self.mapped {
            Some(mapped) if mapped.append(line) => Ok(()),
            // O_APPEND: after the mapped part, whatever it holds.
            _ => (&self.file).write_all(line),
        }
    }
}

impl Drop for JournalFile {
    fn drop(&mut self) {
        // The file is closed (no line is being written: the flush holds the
        // write lock): give back the mapped part's unused tail, unless lines
        // were appended after it.
        if let Some(mapped) = self.mapped.take() {
            let used = mapped.used();
            let appended = self.file.metadata().map(|m| m.len() > mapped.len as u64).unwrap_or(true);
            drop(mapped);
            if !appended {
                let _ = self.file.set_len(used as u64);
            }
        }
    }
}

/// The complete lines of a journal file: those ending in `\n`, each without
/// what a killed writer left before it (zeros of a place never filled, or a
/// line cut short and the zeros after it).
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete.lines().filter_map(|line| line.rsplit('\0').next()).filter(|line| !line.is_empty())
}

/// An instance's counters as its route holds them: made on its first
/// request or job, so an idle instance costs a pointer.
pub struct UsageCell {
    usage: Arc<Usage>,
    counters: std::sync::OnceLock<Arc<UsageCounters>>,
}

impl UsageCell {
    pub fn new(usage: Arc<Usage>) -> Self {
        Self { usage, counters: std::sync::OnceLock::new() }
    }

    /// The counters of `tenant`'s `instance` (the one this cell is for).
    pub fn get(&self, instance: &str, tenant: &str) -> &Arc<UsageCounters> {
        self.counters.get_or_init(|| self.usage.counters(instance, tenant))
    }
}

/// Usage counters of every instance on this node, and its journal.
pub struct Usage {
    db: Db,
    counters: DashMap<String, Arc<UsageCounters>>,
    journal: Arc<Journal>,
    /// One flush at a time; holds the journal files this process wrote (their
    /// amounts are in the counters until applied).
    flushing: tokio::sync::Mutex<HashSet<PathBuf>>,
    /// Held to read stored totals and counters together, and to commit a batch
    /// and take its amounts out of the counters together: a reader never sees
    /// an amount twice or not at all.
    applying: tokio::sync::RwLock<()>,
    /// Flushes that applied the journal, and those that failed (retried next time).
    pub flushes: AtomicU64,
    pub failed_flushes: AtomicU64,
}

impl Usage {
    /// Usage backed by `db`, journaled in `dir` (files left there by an
    /// earlier run are applied by the first [`Usage::flush`]).
    pub fn open(db: Db, dir: &Path, clock: Arc<crate::clock::Clock>, durable: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {dir:?}"))?;
        let current = JournalFile::create(dir)?;
        let own = HashSet::from([current.path.clone()]);
        let journal = Arc::new(Journal {
            dir: dir.to_path_buf(),
            clock,
            current: RwLock::new(current),
            memory: (!durable).then(|| std::sync::Mutex::new(Vec::new())),
        });
        Ok(Self {
            db,
            counters: DashMap::new(),
            journal,
            flushing: tokio::sync::Mutex::new(own),
            applying: tokio::sync::RwLock::new(()),
            flushes: AtomicU64::new(0),
            failed_flushes: AtomicU64::new(0),
        })
    }

    /// The counters of an instance (created on first use).
    pub fn counters(&self, instance: &str, tenant: &str) -> Arc<UsageCounters> {
        self.counters
            .entry(instance.to_string())
            .or_insert_with(|| {
                Arc::new(UsageCounters {
                    instance: instance.to_string(),
                    tenant: tenant.to_string(),
                    journal: self.journal.clone(),
                    requests: AtomicU64::new(0),
                    jobs: AtomicU64::new(0),
                    fuel: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Stored totals plus amounts this node has not applied yet, of one instance.
    pub async fn totals(&self, instance: &str) -> anyhow::Result<UsageTotals> {
        let _together = self.applying.read().await;
        let row: Option<(i64, i64, i64, i64)> =
            sqlx::query_as("SELECT requests, jobs, fuel, errors FROM usage_totals WHERE instance_id = $1")
                .bind(instance)
                .fetch_optional(&self.db)
                .await
                .context("failed to read usage")?;
        let (requests, jobs, fuel, errors) = row.unwrap_or_default();
        let pending = self.counters.get(instance).map(|c| c.peek()).unwrap_or_default();
        Ok(UsageTotals {
            requests: requests as u64 + pending.requests,
            jobs: jobs as u64 + pending.jobs,
            fuel: fuel as u64 + pending.fuel,
            errors: errors as u64 + pending.errors,
        })
    }

    /// Close the current journal file and apply every closed one. A file whose
    /// write fails stays for the next flush (it counts once whenever it lands).
    pub async fn flush(&self) -> anyhow::Result<()> {
        let flushed = self.flush_journal().await;
        match &flushed {
            Ok(()) => self.flushes.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed_flushes.fetch_add(1, Ordering::Relaxed),
        };
        flushed
    }

    /// [`Usage::flush`]'s work.
    async fn flush_journal(&self) -> anyhow::Result<()> {
        let mut own = self.flushing.lock().await;
        let fresh = JournalFile::create(&self.journal.dir)?;
        let current_path = fresh.path.clone();
        own.insert(fresh.path.clone());
        // What was counted is all in the closed file now; new amounts go to the fresh one.
        let in_memory = {
            let mut current = self.journal.current.write().unwrap_or_else(|e| e.into_inner());
            drop(std::mem::replace(&mut *current, fresh));
            self.journal.memory.as_ref().map(|m| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner())))
        };
        let lines = in_memory.filter(|l| !l.is_empty());
        let mut closed: Vec<PathBuf> = std::fs::read_dir(&self.journal.dir)
            .with_context(|| format!("failed to list {:?}", self.journal.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| *p != current_path && p.extension().is_some_and(|x| x == "log"))
            .collect();
        closed.sort();
        // A flush with usage to apply is a trace of its own; an idle node's
        // flushes (empty files) are not traced.
        let bytes: u64 = closed.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum::<u64>()
            + lines.as_ref().map_or(0, |l| l.len() as u64);
        let span = if bytes > 0 && crate::telemetry::sample() {
            crate::telemetry::trace_span!(
                parent: None,
                "usage.flush",
                wharf.files = closed.len(),
                wharf.bytes = bytes,
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let applied = async {
            if let Some(lines) = lines {
                let batch = format!("mem-{:016}-{}", store::now_millis(), uuid::Uuid::new_v4().simple());
                self.apply_text(&batch, &String::from_utf8_lossy(&lines), true).await?;
            }
            for path in closed {
                // Files of an earlier run were never counted here.
                let counted = own.contains(&path);
                self.apply(&path, counted).await?;
                own.remove(&path);
                std::fs::remove_file(&path).with_context(|| format!("failed to remove {path:?}"))?;
            }
            anyhow::Ok(())
        }
        .instrument(span.clone())
        .await;
        if applied.is_err() {
            span.record("otel.status_code", "error");
        }
        applied
    }

    /// Apply one closed journal file as a batch (once, whatever happens).
    async fn apply(&self, path: &Path, counted: bool) -> anyhow::Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("failed to read {path:?}"))?;
        // A line cut short by a kill may end inside a character.
        let text = String::from_utf8_lossy(&bytes);
        let batch = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        self.apply_text(&batch, &text, counted).await
    }

    /// Apply the journal lines `text` as the batch `batch`.
    async fn apply_text(&self, batch: &str, text: &str, counted: bool) -> anyhow::Result<()> {
        // Rows are written in one global order (instance, then hour; then the
        // totals by instance), so nodes flushing the same instances at once
        // lock them in the same order and never deadlock on PostgreSQL.
        let mut amounts: BTreeMap<(&str, &str, i64), UsageTotals> = BTreeMap::new();
        for line in complete_lines(text) {
            let fields: Vec<&str> = line.split('\t').collect();
            let [instance, tenant, hour, requests, jobs, fuel, errors] = fields[..] else { continue };
            let number = |s: &str| s.parse::<u64>().ok();
            let (Ok(hour), Some(requests), Some(jobs), Some(fuel), Some(errors)) =
                (hour.parse::<i64>(), number(requests), number(jobs), number(fuel), number(errors))
            else {
                // A line cut short by a crash mid-write.
                continue;
            };
            amounts.entry((instance, tenant, hour)).or_default().add(&UsageTotals { requests, jobs, fuel, errors });
        }
        if amounts.is_empty() {
            // An idle second: nothing to apply, nothing to record.
            return Ok(());
        }
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let fresh =
            sqlx::query("INSERT INTO usage_batches (id, applied_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(batch)
                .bind(store::now())
                .execute(&mut *tx)
                .await
                .context("failed to record the usage batch")?
                .rows_affected();
        if fresh == 0 {
            tracing::info!(%batch, "usage batch already applied");
            if counted {
                let _together = self.applying.write().await;
                self.uncount(&amounts);
            }
            return Ok(());
        }
        let mut per_instance: BTreeMap<&str, UsageTotals> = BTreeMap::new();
        for ((instance, tenant, hour), t) in &amounts {
            per_instance.entry(instance).or_default().add(t);
            sqlx::query(
                "INSERT INTO usage_ledger (instance_id, tenant_id, hour, requests, jobs, fuel, errors) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (instance_id, hour) DO UPDATE SET \
                 requests = usage_ledger.requests + excluded.requests, jobs = usage_ledger.jobs + excluded.jobs, \
                 fuel = usage_ledger.fuel + excluded.fuel, errors = usage_ledger.errors + excluded.errors",
            )
            .bind(*instance)
            .bind(*tenant)
            .bind(*hour)
            .bind(t.requests as i64)
            .bind(t.jobs as i64)
            .bind(t.fuel as i64)
            .bind(t.errors as i64)
            .execute(&mut *tx)
            .await
            .context("failed to write the usage ledger")?;
        }
        for (instance, t) in per_instance {
            sqlx::query(
                "INSERT INTO usage_totals (instance_id, requests, fuel, errors, jobs) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (instance_id) DO UPDATE SET requests = usage_totals.requests + excluded.requests, \
                 fuel = usage_totals.fuel + excluded.fuel, errors = usage_totals.errors + excluded.errors, \
                 jobs = usage_totals.jobs + excluded.jobs",
            )
            .bind(instance)
            .bind(t.requests as i64)
            .bind(t.fuel as i64)
            .bind(t.errors as i64)
            .bind(t.jobs as i64)
            .execute(&mut *tx)
            .await
            .context("failed to write usage totals")?;
        }
        let _together = self.applying.write().await;
        tx.commit().await.context("failed to commit the usage batch")?;
        if counted {
            self.uncount(&amounts);
        }
        Ok(())
    }

    /// Take an applied batch's amounts out of the counters.
    fn uncount(&self, amounts: &BTreeMap<(&str, &str, i64), UsageTotals>) {
        for ((instance, _, _), t) in amounts {
            if let Some(counters) = self.counters.get(*instance) {
                counters.subtract(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_land_in_the_file_and_a_killed_writers_leftovers_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = JournalFile::create(dir.path()).unwrap();
        let path = file.path.clone();
        let mapped = file.mapped.as_ref().expect("the journal is mapped");
        file.append(b"inst-a\tacme\t3600\t1\t0\t10\t0\n").unwrap();
        // A writer killed after taking its place: zeros, then the next line.
        mapped.next.fetch_add(40, Ordering::Relaxed);
        file.append(b"inst-b\tacme\t3600\t1\t0\t20\t1\n").unwrap();
        // One killed mid-line: its start, no newline, zeros after it.
        let at = mapped.next.fetch_add(30, Ordering::Relaxed);
        unsafe { std::ptr::copy_nonoverlapping(b"inst-c\tacme\t36".as_ptr(), mapped.base.as_ptr().add(at), 14) };
        file.append(b"inst-d\tacme\t7200\t0\t1\t30\t0\n").unwrap();
        // The text the mapping holds now is what a restart after a kill reads.
        let on_disk = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk.len(), MAPPED_BYTES, "the mapped part is allocated up front");
        let lines: Vec<&str> = complete_lines(&on_disk).collect();
        assert_eq!(
            lines,
            ["inst-a\tacme\t3600\t1\t0\t10\t0", "inst-b\tacme\t3600\t1\t0\t20\t1", "inst-d\tacme\t7200\t0\t1\t30\t0"]
        );
        // A line after the mapped part is full goes to the end of the file.
        mapped.next.store(MAPPED_BYTES - 5, Ordering::Relaxed);
        file.append(b"inst-e\tacme\t7200\t1\t0\t40\t0\n").unwrap();
        drop(file);
        let closed = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        let lines: Vec<&str> = complete_lines(&closed).collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[3], "inst-e\tacme\t7200\t1\t0\t40\t0");
    }

    #[test]
    fn a_closed_journal_file_keeps_only_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = JournalFile::create(dir.path()).unwrap();
        let path = file.path.clone();
        let line = b"inst-a\tacme\t3600\t1\t0\t10\t0\n";
        for _ in 0..3 {
            file.append(line).unwrap();
        }
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), line.repeat(3));
        // A half line at the end (a kill mid-`write`) is not a line.
        assert_eq!(complete_lines("inst-a\tacme\t3600\t1\t0\t10\t0\ninst-b\tacme\t36").count(), 1);
    }
}
