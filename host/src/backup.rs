//! Backups of a single node (its own storage: SQLite), taken while it serves,
//! and restoring a data directory from one.
//!
//! A backup is a directory: `wharf.db` (the control plane),
//! `components/` (the bytes of every version it names), `instances/<id>/`
//! `data.sqlite` and `kv.sqlite` for every instance not purged, and
//! `backup.json` listing each file with its size and SHA-256. Each database is copied with SQLite's `VACUUM INTO`,
//! which reads one consistent snapshot while writers go on: every write
//! acknowledged before the backup began is in it. The control plane is copied
//! first; an instance created after that is not in the backup (its files are
//! not copied), so the copy never holds data the control plane does not know.
//! Compiled artifacts are not copied: a restored node compiles again.
//!
//! A cluster (PostgreSQL control plane) is backed up with `pg_dump`; see the
//! README.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Db;

/// The name of a backup's description.
const MANIFEST: &str = "backup.json";
/// What a backup's format is; restore refuses any other.
const FORMAT: &str = "wharf-backup-1";

/// A backup's description (`backup.json`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub format: String,
    /// When it began (Unix seconds): writes acknowledged before are in it.
    pub started_at: i64,
    pub finished_at: i64,
    /// How many instances' databases it holds.
    pub instances: usize,
    pub files: Vec<File>,
}

/// One file of a backup, relative to its directory.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct File {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Why a backup or restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn refused(message: impl Into<String>) -> BackupError {
    BackupError::Refused(message.into())
}

/// Take a backup of the node whose control plane is `db` and whose data
/// directory is `data_dir`, into the new directory `to` (absolute; it must
/// not exist, or be empty).
pub async fn take(db: &Db, data_dir: &Path, to: &Path) -> Result<Manifest, BackupError> {
    if crate::store::dialect(db) != crate::store::Dialect::Sqlite {
        return Err(refused(
            "this node's control plane is PostgreSQL: back up the cluster with pg_dump (see the README, Backups)",
        ));
    }
    if !to.is_absolute() {
        return Err(refused(format!("{} is not an absolute path on the node's machine", to.display())));
    }
    let data_dir = std::fs::canonicalize(data_dir).context("cannot resolve the data directory")?;
    // Where `to` really is: its nearest existing ancestor resolved (links,
    // `..`), then the rest.
    let mut resolved = to.to_path_buf();
    let mut rest = Vec::new();
    while !resolved.exists() {
        let Some(name) = resolved.file_name().map(|n| n.to_os_string()) else { break };
        rest.push(name);
        resolved.pop();
    }
    let mut resolved = std::fs::canonicalize(&resolved).unwrap_or(resolved);
    resolved.extend(rest.iter().rev());
    if resolved.starts_with(&data_dir) {
        return Err(refused("a backup cannot go inside the node's own data directory; choose a directory elsewhere"));
    }
    prepare_empty(to)?;
    let started_at = crate::store::now();
    let control = to.join("wharf.db");
    sqlx::query("VACUUM INTO $1")
        .bind(control.to_str().context("the backup path is not UTF-8")?)
        .execute(db)
        .await
        .context("failed to copy the control plane")?;
    let (to_owned, data) = (to.to_path_buf(), data_dir.clone());
    let instances = tokio::task::spawn_blocking(move || {
        copy_components(&to_owned, &data.join("components"))?;
        copy_instances(&to_owned, &data.join("instances"))
    })
    .await
    .context("the backup task failed")??;
    let to_owned = to.to_path_buf();
    let files = tokio::task::spawn_blocking(move || describe(&to_owned)).await.context("the backup task failed")??;
    let manifest = Manifest { format: FORMAT.into(), started_at, finished_at: crate::store::now(), instances, files };
    let text = serde_json::to_vec_pretty(&manifest).context("failed to describe the backup")?;
    std::fs::write(to.join(MANIFEST), text).context("failed to write backup.json")?;
    tracing::info!(to = %to.display(), instances, files = manifest.files.len(), "backup taken");
    Ok(manifest)
}

/// Create `to`, or accept it empty.
fn prepare_empty(to: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(refused(format!("{} is not empty; back up into a new directory", to.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        }
        Err(e) => return Err(refused(format!("cannot use {}: {e}", to.display()))),
    }
    Ok(())
}

/// Copy the component files (named by their SHA-256, never changed once
/// written) of every version the copied control plane knows.
fn copy_components(to: &Path, dir: &Path) -> anyhow::Result<()> {
    let control = rusqlite::Connection::open(to.join("wharf.db")).context("cannot open the copied control plane")?;
    let mut statement = control.prepare("SELECT DISTINCT sha256 FROM service_versions")?;
    let known: std::collections::BTreeSet<String> =
        statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let target = to.join("components");
    std::fs::create_dir_all(&target).with_context(|| format!("cannot create {}", target.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let sha256 = name.split('.').next().unwrap_or_default();
        if known.contains(sha256) && entry.path().is_file() {
            std::fs::copy(entry.path(), target.join(&name))
                .with_context(|| format!("failed to copy component {name}"))?;
        }
    }
    Ok(())
}

/// Copy the databases of every instance the copied control plane knows (and
/// has not purged) from `dir`; how many instances.
fn copy_instances(to: &Path, dir: &Path) -> anyhow::Result<usize> {
    let control = rusqlite::Connection::open(to.join("wharf.db")).context("cannot open the copied control plane")?;
    let mut statement = control.prepare("SELECT id FROM instances WHERE purged_at IS NULL ORDER BY id")?;
    let ids: Vec<String> = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    let mut copied = 0;
    for id in &ids {
        let source = dir.join(id);
        if !source.is_dir() {
            continue; // never opened yet: it has no data
        }
        let target = to.join("instances").join(id);
        std::fs::create_dir_all(&target).with_context(|| format!("cannot create {}", target.display()))?;
        for file in ["data.sqlite", "kv.sqlite"] {
            if source.join(file).exists() {
                vacuum_into(&source.join(file), &target.join(file))
                    .with_context(|| format!("failed to copy {id}/{file}"))?;
            }
        }
        copied += 1;
    }
    Ok(copied)
}

/// A consistent copy of the SQLite database `from`, taken while others write.
fn vacuum_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    // Opened as the node opens it (a WAL database's readers share its index),
    // never created: only read.
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let source = rusqlite::Connection::open_with_flags(from, flags)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    source.execute("VACUUM INTO ?1", [to.to_str().context("the backup path is not UTF-8")?])?;
    Ok(())
}

/// Every file under `root` (but the manifest) with its size and digest.
fn describe(root: &Path) -> anyhow::Result<Vec<File>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != MANIFEST) {
                let relative = path.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
                let (bytes, sha256) = digest(&path)?;
                files.push(File { path: relative, bytes, sha256 });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Restore the backup in `from` into the data directory `data_dir`, which
/// must not hold a node's state (no `wharf.db`). Every file is checked
/// against `backup.json` first: a damaged or partial backup restores nothing.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let text = std::fs::read(from.join(MANIFEST))
        .map_err(|e| refused(format!("{} is not a Wharf backup (no readable {MANIFEST}: {e})", from.display())))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| refused(format!("{MANIFEST} in {} is not readable: {e}", from.display())))?;
    if manifest.format != FORMAT {
        return Err(refused(format!("{:?} is not a backup format this Wharf reads ({FORMAT})", manifest.format)));
    }
    if data_dir.join("wharf.db").exists() {
        return Err(refused(format!(
            "{} already holds a node's state (wharf.db); restore into a new data directory",
            data_dir.display()
        )));
    }
    let mut checked: Vec<PathBuf> = Vec::new();
    for file in &manifest.files {
        let relative = Path::new(&file.path);
        if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(refused(format!("{MANIFEST} names a file outside the backup: {:?}", file.path)));
        }
        let (bytes, sha256) = digest(&from.join(relative))
            .map_err(|e| refused(format!("the backup is incomplete: {}: {e:#}", file.path)))?;
        if bytes != file.bytes || sha256 != file.sha256 {
            return Err(refused(format!("the backup is damaged: {} does not match {MANIFEST}", file.path)));
        }
        checked.push(relative.to_path_buf());
    }
    for relative in checked {
        let target = data_dir.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(from.join(&relative), &target).with_context(|| format!("cannot write {}", target.display()))?;
    }
    tracing::info!(from = %from.display(), to = %data_dir.display(), files = manifest.files.len(), "backup restored");
    Ok(manifest)
}
