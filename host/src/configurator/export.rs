//! An instance's export, and importing one into a new instance.
//!
//! An export is a tar archive of three files:
//!
//! - `instance.json`: the format, the instance (service, the version that
//!   served, modules, settings), its database's dialect and migrations;
//! - `data.sql`: its database as SQL in that dialect — schema and rows — that
//!   `sqlite3` or `psql` load too;
//! - `kv.jsonl`: its key-value entries, one JSON object per line
//!   (`key`, base64 `value`, `expires_at_ms`).
//!
//! An import creates a new instance of the same service at the same version,
//! set up as the export's was (its migrations are in `data.sql`, so they are
//! not run again), loads the data as the new instance behind the guest's
//! guard while the instance answers 410, then enables it. A failed import
//! leaves nothing: the half-made instance is purged.

use std::io::Read as _;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::*;
use crate::instancedb::{Call, KvEntry};

/// What an export's `instance.json` says it is.
pub const EXPORT_FORMAT: &str = "wharf-instance-export-1";

/// The largest export an import reads (the database and key-value quotas, and
/// room for SQL text).
pub const MAX_IMPORT_BYTES: usize = 1 << 30;

/// How long an export or an import may work on the instance's databases.
const DATA_DEADLINE: Duration = Duration::from_secs(600);

/// `instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub exported_at: i64,
    /// `sqlite` or `postgres`: the dialect of `data.sql`.
    pub dialect: String,
    pub instance: ExportedInstance,
    /// The migrations its database had (also recorded in `data.sql`).
    pub applied_migrations: Vec<String>,
    pub seeded: bool,
    pub sql_statements: usize,
    pub kv_entries: usize,
}

/// The instance an export was taken from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedInstance {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub service: String,
    pub version: String,
    pub modules: Vec<String>,
    pub settings: BTreeMap<String, String>,
    pub enabled: bool,
}

/// Where an import goes.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    pub tenant: String,
    pub name: Option<String>,
    pub hosts: Vec<String>,
}

fn dialect_name(dialect: crate::instancedb::Dialect) -> &'static str {
    match dialect {
        crate::instancedb::Dialect::Sqlite => "sqlite",
        crate::instancedb::Dialect::Postgres => "postgres",
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::InvalidExport(message.into())
}

impl Configurator {
    /// The export of instance `id`: (a file name for it, the tar archive).
    pub async fn export_instance(&self, id: &str) -> Result<(String, Vec<u8>), ConfigError> {
        let instance = self.instance(id).await?;
        let version = instance.running_version.clone().or(instance.setup.settled_version.clone()).ok_or_else(|| {
            ConfigError::NotExportable(id.to_string(), "it has never run a version: there is nothing to export".into())
        })?;
        let db = self.open_database(id, &instance.tenant).await?;
        let call = Call::migration(Instant::now() + DATA_DEADLINE);
        let failed = |e: String| ConfigError::Internal(anyhow::anyhow!("failed to export instance {id}: {e}"));
        let statements = db.dump_sql().await.map_err(failed)?;
        let entries = db.kv_entries(&call).await.map_err(failed)?;
        let header = ExportHeader {
            format: EXPORT_FORMAT.into(),
            exported_at: store::now(),
            dialect: dialect_name(db.dialect()).into(),
            instance: ExportedInstance {
                id: instance.id.clone(),
                name: instance.name.clone(),
                tenant: instance.tenant.clone(),
                service: instance.service.clone(),
                version,
                modules: instance.modules.clone(),
                settings: instance.settings.clone(),
                enabled: instance.enabled,
            },
            applied_migrations: instance.setup.applied_migrations.clone(),
            seeded: instance.setup.seeded_at.is_some(),
            sql_statements: statements.len(),
            kv_entries: entries.len(),
        };
        let mut sql = format!(
            "-- Wharf export of instance {} ({} {}) of tenant {}, {} dialect.\n",
            instance.id, instance.service, header.instance.version, instance.tenant, header.dialect
        );
        for statement in &statements {
            sql.push_str(statement);
            sql.push_str(";\n");
        }
        let mut kv = String::new();
        for entry in &entries {
            kv.push_str(&serde_json::to_string(entry).context("failed to write an entry")?);
            kv.push('\n');
        }
        let json = serde_json::to_vec_pretty(&header).context("failed to describe the export")?;
        let archive = tar_of(&[("instance.json", &json), ("data.sql", sql.as_bytes()), ("kv.jsonl", kv.as_bytes())])?;
        let name =
            format!("{}-{}-{}.tar", instance.tenant, instance.name, crate::clock::format_utc(header.exported_at));
        tracing::info!(instance = %id, statements = statements.len(), entries = entries.len(), "instance exported");
        Ok((name.replace(':', ""), archive))
    }

    /// Import an export into a new instance at `target`.
    pub async fn import_instance(
        &self,
        archive: &[u8],
        target: ImportTarget,
        actor: Actor<'_>,
    ) -> Result<Instance, ConfigError> {
        let files = untar(archive)?;
        let header: ExportHeader = serde_json::from_slice(files.get("instance.json").ok_or_else(|| {
            invalid("the archive has no instance.json: is it a Wharf export (wharf instance export)?")
        })?)
        .map_err(|e| invalid(format!("instance.json is not readable: {e}")))?;
        if header.format != EXPORT_FORMAT {
            return Err(invalid(format!(
                "{:?} is not an export format this Wharf reads ({EXPORT_FORMAT})",
                header.format
            )));
        }
        let sql = std::str::from_utf8(files.get("data.sql").map(Vec::as_slice).unwrap_or_default())
            .map_err(|_| invalid("data.sql is not UTF-8"))?;
        let statements = crate::instancedb::sqltext::split_statements(sql);
        let mut entries = Vec::new();
        let kv = files.get("kv.jsonl").map(Vec::as_slice).unwrap_or_default();
        for (n, line) in kv.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let entry: KvEntry =
                serde_json::from_slice(line).map_err(|e| invalid(format!("kv.jsonl line {}: {e}", n + 1)))?;
            entries.push(entry);
        }
        let here = if self.backends.postgres.is_some() { "postgres" } else { "sqlite" };
        if header.dialect != here {
            return Err(invalid(format!(
                "this export's SQL is in {}'s dialect and this platform's instances use {here}'s: import it on a \
                 platform whose instances use {}",
                header.dialect, header.dialect
            )));
        }
        // Pinned to the exported version unless that is the one serving anyway.
        let active = self.registry.slot(&header.instance.service).and_then(|slot| slot.active());
        let follows = active.is_some_and(|v| v.version == header.instance.version);
        let new = NewInstance {
            tenant: target.tenant,
            service: header.instance.service.clone(),
            name: target.name,
            hosts: target.hosts,
            version: (!follows).then(|| header.instance.version.clone()),
            modules: header.instance.modules.clone(),
            settings: header.instance.settings.clone(),
            ends_at: None,
        };
        let preset = Preset { applied: header.applied_migrations.clone(), seeded: header.seeded };
        let created = self.create_instance_as(new, actor, Some(preset)).await?;
        let db = self.open_database(&created.id, &created.tenant).await?;
        let call = Call::migration(Instant::now() + DATA_DEADLINE);
        let loaded = async {
            db.load_sql(&statements, &call).await?;
            db.kv_load(entries, &call).await
        }
        .await;
        if let Err(e) = loaded {
            let as_operator = Actor { user_id: actor.user_id, operator: true };
            if let Err(cleanup) = self.delete_instance(&created.id, as_operator, true).await {
                tracing::warn!(instance = %created.id, "failed to purge a failed import: {cleanup}");
            }
            return Err(invalid(format!("the export's data did not load, and nothing was created: {e}")));
        }
        let change = InstanceChange { enabled: Some(header.instance.enabled), ..InstanceChange::default() };
        let instance = self.update_instance(&created.id, change, actor).await?;
        tracing::info!(
            instance = %instance.id, from = %header.instance.id, statements = statements.len(),
            "instance imported"
        );
        Ok(instance)
    }
}

/// How an imported instance is already set up.
#[derive(Debug, Clone)]
pub(super) struct Preset {
    pub applied: Vec<String>,
    pub seeded: bool,
}

/// A tar archive of `files`.
pub fn tar_of(files: &[(&str, &[u8])]) -> Result<Vec<u8>, ConfigError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(store::now().max(0) as u64);
        header.set_cksum();
        builder.append_data(&mut header, name, *bytes).context("failed to write the export")?;
    }
    Ok(builder.into_inner().context("failed to write the export")?)
}

/// The regular files of a tar archive, by name (at most a few, each bounded
/// by the archive's own size).
fn untar(archive: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let mut files = BTreeMap::new();
    let mut reader = tar::Archive::new(archive);
    let entries = reader.entries().map_err(|e| invalid(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("the archive is damaged: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| invalid(format!("a name in the archive: {e}")))?.to_string_lossy().into();
        if files.len() >= 8 {
            return Err(invalid("the archive holds more files than an export has"));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| invalid(format!("the archive is damaged: {e}")))?;
        files.insert(name, bytes);
    }
    Ok(files)
}
