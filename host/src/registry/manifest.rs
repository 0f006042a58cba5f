//! `wharf.toml`: the manifest published beside every component.
//!
//! ```toml
//! [service]
//! name = "hello"
//! version = "0.1.0"
//! description = "Says hello"
//! component = "../target/wasm32-wasip2/release/hello.wasm"
//! ```
//!
//! `component` is read by the CLI (relative to the manifest) and ignored by the
//! host, which receives the bytes alongside.
//!
//! A service declares its permissions and the routes each guards; the host
//! enforces them before the guest runs:
//!
//! ```toml
//! [[permissions]]
//! name = "addUsers"
//! description = "Add users to the forum"
//! routes = ["POST /users", "PUT /users/:id"]
//! ```

use serde::{Deserialize, Serialize};

/// A parsed, validated manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The `[service]` table.
    pub service: ServiceSection,
    /// The `[[permissions]]` the service declares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<PermissionDecl>,
    /// The optional `[[modules]]` a tenant may enable per instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleDecl>,
    /// The `[[jobs]]` this version enqueues and runs, with the job versions it accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobDecl>,
    /// The ordered `[[migrations]]` of the instance database, applied once each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<MigrationDecl>,
}

/// One `[[jobs]]` entry: a kind of background job.
///
/// ```toml
/// [[jobs]]
/// kind = "digest"
/// versions = [1, 2]     # the payload shapes this version's `run` understands
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobDecl {
    /// Letters, digits, '-', '_' and '.', starting with a letter (at most 64);
    /// kinds starting with `wharf.` are the platform's.
    pub kind: String,
    /// Job versions `run` accepts (default `[1]`).
    #[serde(default = "first_job_version")]
    pub versions: Vec<u32>,
    /// What the job does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Run it on a schedule: once per period (`"30s"`, `"5m"`, `"1h"`, `"1d"`)
    /// for every instance, with the highest job version accepted and an empty
    /// payload. Each period's job is queued once however many nodes there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

impl JobDecl {
    /// The schedule's period, if the job has one.
    pub fn period(&self) -> Option<std::time::Duration> {
        self.every.as_deref().and_then(parse_period)
    }
}

/// `"30s"`, `"5m"`, `"1h"` or `"1d"`: at least one second, at most 30 days.
pub fn parse_period(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: u64 = text[..text.len() - unit.len_utf8()].trim().parse().ok()?;
    let seconds = match unit {
        's' => number,
        'm' => number.checked_mul(60)?,
        'h' => number.checked_mul(3600)?,
        'd' => number.checked_mul(86_400)?,
        _ => return None,
    };
    (1..=30 * 86_400).contains(&seconds).then(|| std::time::Duration::from_secs(seconds))
}

fn first_job_version() -> Vec<u32> {
    vec![1]
}

/// One `[[migrations]]` entry: a step of the instance database's schema, with
/// its SQL for each dialect the service declares. `wharf publish` reads
/// `sqlite_file` / `postgres_file` (relative to the manifest) into `sqlite` /
/// `postgres`; the host stores the SQL with the version.
///
/// ```toml
/// [[migrations]]
/// name = "0001_posts"
/// sqlite_file = "migrations/sqlite/0001_posts.sql"
/// postgres_file = "migrations/postgres/0001_posts.sql"
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MigrationDecl {
    /// Unique and never renamed: an instance records the names it has applied.
    pub name: String,
    /// The statements for SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<String>,
    /// The statements for PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    /// A file the CLI reads into `sqlite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite_file: Option<String>,
    /// A file the CLI reads into `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_file: Option<String>,
}

impl MigrationDecl {
    /// The statements for `dialect`, if the migration has them.
    pub fn sql(&self, dialect: SqlDialect) -> Option<&str> {
        match dialect {
            SqlDialect::Sqlite => self.sqlite.as_deref(),
            SqlDialect::Postgres => self.postgres.as_deref(),
        }
    }
}

/// One `[[modules]]` entry: an optional feature of the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModuleDecl {
    /// Id: lower-case letters, digits and '-' (e.g. `polls`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What enabling it adds.
    pub description: String,
    /// Routes that exist only while the module is enabled (answer 404 otherwise).
    #[serde(default)]
    pub routes: Vec<String>,
}

/// One `[[permissions]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PermissionDecl {
    /// Name within the service, e.g. `addUsers` (granted as `service.addUsers`).
    pub name: String,
    /// What holding it allows, for people granting it.
    pub description: String,
    /// Routes it guards: `"METHOD /path"`, with `:param` and `*rest` segments and
    /// `*` for any method.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// The `[service]` table of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Service name: lower-case letters, digits and `-`, starting with a letter.
    pub name: String,
    /// Semantic version of this build, e.g. `1.2.0`.
    pub version: String,
    /// One line for people browsing services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Path of the component, relative to the manifest (used by the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// The SQL dialects the service's statements are written for: `sqlite` (the
    /// single-node default), `postgres` (a platform on PostgreSQL), or both.
    /// Absent means `["sqlite"]`; `[]` says the service uses no SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<Vec<SqlDialect>>,
    /// Let an instance's sandbox serve several requests (see [`ReuseDecl`]);
    /// absent, every request runs in a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<ReuseDecl>,
}

/// `reuse = { requests = 1000, idle_seconds = 30 }` in `[service]`: one
/// instance's sandbox may serve up to `requests` requests, one after another,
/// and waits at most `idle_seconds` for the next. Globals (a cache, a parsed
/// config, an interpreter's warm state) persist between those requests; that is
/// the point of the option. A sandbox never serves another instance or tenant,
/// and is dropped after any failure (trap, fuel, deadline, memory cap).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReuseDecl {
    /// Requests one sandbox serves before it is replaced (2 to 1,000,000).
    pub requests: u32,
    /// Seconds an idle sandbox is kept for the instance's next request (1 to 3600).
    #[serde(default = "default_reuse_idle")]
    pub idle_seconds: u32,
}

fn default_reuse_idle() -> u32 {
    30
}

/// A SQL dialect an instance database speaks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqlDialect {
    Sqlite,
    Postgres,
}

impl SqlDialect {
    /// The database's name, for people.
    pub fn product(self) -> &'static str {
        match self {
            SqlDialect::Sqlite => "SQLite",
            SqlDialect::Postgres => "PostgreSQL",
        }
    }
}

impl std::fmt::Display for SqlDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SqlDialect::Sqlite => "sqlite",
            SqlDialect::Postgres => "postgres",
        })
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("wharf.toml is not valid: {0}")]
    Syntax(String),
    #[error("service name {0:?} is not valid: {1}")]
    Name(String, &'static str),
    #[error("version {0:?} is not a semantic version (like 1.0.0): {1}")]
    Version(String, String),
    #[error("description is longer than 500 characters")]
    Description,
    #[error("permission name {0:?} is not valid: use a letter then letters, digits, '_' or '-' (at most 64)")]
    PermissionName(String),
    #[error("permission {0:?} is declared twice")]
    DuplicatePermission(String),
    #[error(
        "module id {0:?} is not valid: use lower-case letters, digits and '-', starting with a letter (at most 63)"
    )]
    ModuleId(String),
    #[error("module {0:?} is declared twice")]
    DuplicateModule(String),
    #[error("{0:?}: route {1:?} is not valid: write it as \"METHOD /path\", e.g. \"POST /users/:id\"")]
    Route(String, String),
    #[error("job kind {0:?} is not valid: use a letter, then letters, digits, '-', '_' or '.' (at most 64); kinds starting with \"wharf.\" are the platform's")]
    JobKind(String),
    #[error("job kind {0:?} is declared twice")]
    DuplicateJob(String),
    #[error("job kind {0:?} must accept at least one job version (versions = [1])")]
    NoJobVersions(String),
    #[error("job kind {0:?}: every = {1:?} is not a period: write a number and s, m, h or d (\"30s\", \"1h\"), from 1s to 30d")]
    JobPeriod(String, String),
    #[error("migration name {0:?} is not valid: use letters, digits, '-', '_' and '.' (at most 100)")]
    MigrationName(String),
    #[error("migration {0:?} is declared twice")]
    DuplicateMigration(String),
    #[error(
        "migration {name:?} has no SQL for {dialect}, which the service declares: add `{dialect} = \"...\"` or \
         `{dialect}_file = \"path.sql\"` (wharf publish reads the file)"
    )]
    MigrationSql { name: String, dialect: SqlDialect },
    #[error("migration {0:?} is larger than 1 MiB")]
    MigrationSize(String),
    #[error(
        "reuse = {{ requests = {0}, idle_seconds = {1} }} is out of range: requests is 2 to 1000000 and \
         idle_seconds 1 to 3600 (leave reuse out for a fresh sandbox per request)"
    )]
    Reuse(u32, u32),
}

impl Manifest {
    /// Parse and validate a manifest's text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_string()))?;
        validate_name(&manifest.service.name)?;
        semver::Version::parse(&manifest.service.version)
            .map_err(|e| ManifestError::Version(manifest.service.version.clone(), e.to_string()))?;
        if manifest.service.description.as_ref().is_some_and(|d| d.chars().count() > 500) {
            return Err(ManifestError::Description);
        }
        if let Some(reuse) = manifest.service.reuse {
            if !(2..=1_000_000).contains(&reuse.requests) || !(1..=3600).contains(&reuse.idle_seconds) {
                return Err(ManifestError::Reuse(reuse.requests, reuse.idle_seconds));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for permission in &manifest.permissions {
            let name = &permission.name;
            let valid = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(ManifestError::PermissionName(name.clone()));
            }
            if !seen.insert(name.as_str()) {
                return Err(ManifestError::DuplicatePermission(name.clone()));
            }
            if permission.description.chars().count() > 500 {
                return Err(ManifestError::Description);
            }
            for route in &permission.routes {
                if super::guards::parse_route(route).is_none() {
                    return Err(ManifestError::Route(name.clone(), route.clone()));
                }
            }
        }
        let mut modules = std::collections::HashSet::new();
        for module in &manifest.modules {
            if validate_name(&module.id).is_err() {
                return Err(ManifestError::ModuleId(module.id.clone()));
            }
            if !modules.insert(module.id.as_str()) {
                return Err(ManifestError::DuplicateModule(module.id.clone()));
            }
            if module.description.chars().count() > 500 || module.name.chars().count() > 100 {
                return Err(ManifestError::Description);
            }
            for route in &module.routes {
                if super::guards::parse_route(route).is_none() {
                    return Err(ManifestError::Route(module.id.clone(), route.clone()));
                }
            }
        }
        let mut kinds = std::collections::HashSet::new();
        for job in &manifest.jobs {
            if !valid_job_kind(&job.kind) {
                return Err(ManifestError::JobKind(job.kind.clone()));
            }
            if !kinds.insert(job.kind.as_str()) {
                return Err(ManifestError::DuplicateJob(job.kind.clone()));
            }
            if job.versions.is_empty() {
                return Err(ManifestError::NoJobVersions(job.kind.clone()));
            }
            if let Some(every) = &job.every {
                if parse_period(every).is_none() {
                    return Err(ManifestError::JobPeriod(job.kind.clone(), every.clone()));
                }
            }
            if job.description.as_ref().is_some_and(|d| d.chars().count() > 500) {
                return Err(ManifestError::Description);
            }
        }
        let mut migrations = std::collections::HashSet::new();
        for migration in &manifest.migrations {
            let name = &migration.name;
            let valid = !name.is_empty()
                && name.len() <= 100
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(ManifestError::MigrationName(name.clone()));
            }
            if !migrations.insert(name.as_str()) {
                return Err(ManifestError::DuplicateMigration(name.clone()));
            }
            for dialect in manifest.sql_dialects() {
                match migration.sql(dialect) {
                    None => return Err(ManifestError::MigrationSql { name: name.clone(), dialect }),
                    Some(sql) if sql.len() > 1 << 20 => return Err(ManifestError::MigrationSize(name.clone())),
                    Some(_) => {}
                }
            }
        }
        Ok(manifest)
    }

    /// The `[[jobs]]` entry of `kind`, if declared.
    pub fn job(&self, kind: &str) -> Option<&JobDecl> {
        self.jobs.iter().find(|j| j.kind == kind)
    }

    /// Whether this version declares migration `name`.
    pub fn declares_migration(&self, name: &str) -> bool {
        self.migrations.iter().any(|m| m.name == name)
    }

    /// Whether this version's `run` accepts job `kind` at `version`.
    pub fn accepts(&self, kind: &str, version: u32) -> bool {
        self.job(kind).is_some_and(|j| j.versions.contains(&version))
    }

    /// The SQL dialects the service declares (`["sqlite"]` when it says nothing).
    pub fn sql_dialects(&self) -> Vec<SqlDialect> {
        self.service.sql.clone().unwrap_or_else(|| vec![SqlDialect::Sqlite])
    }

    /// Whether instances of this version can run where databases speak `dialect`.
    pub fn runs_on(&self, dialect: SqlDialect) -> bool {
        let declared = self.sql_dialects();
        declared.is_empty() || declared.contains(&dialect)
    }

    /// Whether this manifest declares module `id`.
    pub fn declares_module(&self, id: &str) -> bool {
        self.modules.iter().any(|m| m.id == id)
    }
}

/// Whether `kind` may name a service's job.
pub fn valid_job_kind(kind: &str) -> bool {
    kind.len() <= 64
        && kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !kind.starts_with("wharf.")
}

/// Check a service name: it appears in permissions (`name.permission`), URLs and
/// file names, so it is kept to a conservative alphabet.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let err = |why| Err(ManifestError::Name(name.to_string(), why));
    if name.is_empty() || name.len() > 63 {
        return err("it must be 1 to 63 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return err("it must start with a lower-case letter");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return err("use only lower-case letters, digits and '-'");
    }
    if name.ends_with('-') {
        return err("it must not end with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_manifest_parses() {
        let m = Manifest::parse("[service]\nname = \"hello\"\nversion = \"0.1.0\"\n").unwrap();
        assert_eq!(m.service.name, "hello");
    }

    #[test]
    fn reuse_is_declared_in_the_service_table_within_bounds() {
        let base = "[service]\nname = \"hello\"\nversion = \"0.1.0\"\n";
        let m = Manifest::parse(&format!("{base}reuse = {{ requests = 1000, idle_seconds = 30 }}\n")).unwrap();
        assert_eq!(m.service.reuse, Some(ReuseDecl { requests: 1000, idle_seconds: 30 }));
        let m = Manifest::parse(&format!("{base}reuse = {{ requests = 5 }}\n")).unwrap();
        assert_eq!(m.service.reuse.map(|r| r.idle_seconds), Some(30));
        for bad in [
            "requests = 1",
            "requests = 0",
            "requests = 2000000",
            "requests = 10, idle_seconds = 0",
            "requests = 10, idle_seconds = 3601",
        ] {
            let err = Manifest::parse(&format!("{base}reuse = {{ {bad} }}\n")).unwrap_err().to_string();
            assert!(err.contains("out of range") && err.contains("2 to 1000000"), "{bad}: {err}");
        }
        let err = Manifest::parse(&format!("{base}reuse = {{ requests = 10, forever = true }}\n")).unwrap_err();
        assert!(err.to_string().contains("forever"), "{err}");
        assert!(Manifest::parse(base).unwrap().service.reuse.is_none());
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Manifest::parse("[service]\nname = \"a\"\nversion = \"1.0.0\"\nfoo = 1\n").unwrap_err();
        assert!(err.to_string().contains("foo"), "{err}");
    }

    #[test]
    fn permissions_are_validated() {
        let base = "[service]\nname = \"a\"\nversion = \"1.0.0\"\n";
        let ok = format!("{base}[[permissions]]\nname = \"addUsers\"\ndescription = \"d\"\nroutes = [\"POST /users\", \"* /admin/*rest\"]\n");
        assert_eq!(Manifest::parse(&ok).unwrap().permissions[0].routes.len(), 2);
        let bad_route = format!("{base}[[permissions]]\nname = \"x\"\ndescription = \"d\"\nroutes = [\"users\"]\n");
        assert!(matches!(Manifest::parse(&bad_route), Err(ManifestError::Route(..))));
        let twice = format!("{base}[[permissions]]\nname = \"x\"\ndescription = \"d\"\n[[permissions]]\nname = \"x\"\ndescription = \"d\"\n");
        assert!(matches!(Manifest::parse(&twice), Err(ManifestError::DuplicatePermission(_))));
        let bad_name = format!("{base}[[permissions]]\nname = \"a.b\"\ndescription = \"d\"\n");
        assert!(matches!(Manifest::parse(&bad_name), Err(ManifestError::PermissionName(_))));
    }

    #[test]
    fn sql_dialects_default_to_sqlite_and_are_checked() {
        let base = "[service]\nname = \"a\"\nversion = \"1.0.0\"\n";
        let plain = Manifest::parse(base).unwrap();
        assert!(plain.runs_on(SqlDialect::Sqlite) && !plain.runs_on(SqlDialect::Postgres));
        let both = Manifest::parse(&format!("{base}sql = [\"sqlite\", \"postgres\"]\n")).unwrap();
        assert!(both.runs_on(SqlDialect::Postgres));
        assert!(Manifest::parse(&format!("{base}sql = []\n")).unwrap().runs_on(SqlDialect::Postgres));
        let err = Manifest::parse(&format!("{base}sql = [\"mysql\"]\n")).unwrap_err();
        assert!(err.to_string().contains("postgres"), "{err}");
    }

    #[test]
    fn jobs_and_migrations_are_validated() {
        let base = "[service]\nname = \"a\"\nversion = \"1.0.0\"\nsql = [\"sqlite\", \"postgres\"]\n";
        let ok = format!("{base}[[jobs]]\nkind = \"digest\"\nversions = [1, 2]\n[[migrations]]\nname = \"0001\"\nsqlite = \"CREATE TABLE t (x)\"\npostgres = \"CREATE TABLE t (x int)\"\n");
        let m = Manifest::parse(&ok).unwrap();
        assert!(m.accepts("digest", 2) && !m.accepts("digest", 3) && !m.accepts("other", 1));
        let platform = format!("{base}[[jobs]]\nkind = \"wharf.migrate\"\n");
        assert!(matches!(Manifest::parse(&platform), Err(ManifestError::JobKind(_))));
        let missing = format!("{base}[[migrations]]\nname = \"0001\"\nsqlite = \"CREATE TABLE t (x)\"\n");
        let err = Manifest::parse(&missing).unwrap_err();
        assert!(err.to_string().contains("postgres_file"), "{err}");
        let twice = format!("{base}[[jobs]]\nkind = \"a\"\n[[jobs]]\nkind = \"a\"\n");
        assert!(matches!(Manifest::parse(&twice), Err(ManifestError::DuplicateJob(_))));
    }

    #[test]
    fn bad_names_and_versions_are_refused() {
        assert!(Manifest::parse("[service]\nname = \"Hello\"\nversion = \"1.0.0\"\n").is_err());
        assert!(Manifest::parse("[service]\nname = \"a/b\"\nversion = \"1.0.0\"\n").is_err());
        let err = Manifest::parse("[service]\nname = \"a\"\nversion = \"1.0\"\n").unwrap_err();
        assert!(err.to_string().contains("semantic version"), "{err}");
    }
}
