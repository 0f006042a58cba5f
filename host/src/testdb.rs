//! Fresh control planes for the rooms' unit tests: a SQLite one always, and a
//! PostgreSQL one when `WHARF_TEST_DATABASE` names a server to create databases
//! on (as the suite's cluster pass does), so each room's SQL is tested on both
//! dialects without starting a node.

#![allow(clippy::unwrap_used)]

use crate::store::{self, Db};

/// A migrated control plane and the backend it is on.
pub struct TestDb {
    /// `sqlite` or `postgres`, for assertion messages.
    pub backend: &'static str,
    pub db: Db,
    /// The PostgreSQL database's URL (`None` on SQLite).
    pub url: Option<String>,
    _dir: tempfile::TempDir,
}

/// One fresh control plane per backend available here.
pub async fn control_planes() -> Vec<TestDb> {
    let mut all = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    all.push(TestDb { backend: "sqlite", db: store::open(dir.path(), None).await.unwrap(), url: None, _dir: dir });
    if let Some(url) = fresh_postgres().await {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(dir.path(), Some(&url)).await.unwrap();
        all.push(TestDb { backend: "postgres", db, url: Some(url), _dir: dir });
    }
    all
}

/// A new, empty PostgreSQL database on the test server, if there is one. Those
/// an earlier run left are dropped first.
async fn fresh_postgres() -> Option<String> {
    use sqlx::Connection as _;
    let base = std::env::var("WHARF_TEST_DATABASE").ok().filter(|u| !u.is_empty())?;
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CLEANED
        .get_or_init(|| async {
            let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
            let old: Vec<(String,)> = sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'wharf_u_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap();
            for (name,) in old {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
            }
        })
        .await;
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    let name = format!("wharf_u_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').expect("WHARF_TEST_DATABASE names a database");
    Some(format!("{prefix}/{name}"))
}

/// A tenant row and a user row, for rooms whose tables refer to them (written
/// directly: the tests of one room do not start the others).
pub async fn tenant_and_user(db: &Db, tenant: &str, email: &str) -> String {
    let user = format!("user-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query("INSERT INTO tenants (id, display_name, created_at) VALUES ($1, $1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .bind(store::now())
        .execute(db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, is_operator, email_verified, created_at) \
         VALUES ($1, $2, 'x', $3, $3, $4)",
    )
    .bind(&user)
    .bind(email)
    .bind(false)
    .bind(store::now())
    .execute(db)
    .await
    .unwrap();
    user
}

/// An instance row of `tenant` (which must exist), and its service's row, for
/// rooms whose tables refer to instances.
pub async fn instance(db: &Db, tenant: &str, id: &str, service: &str) {
    sqlx::query(
        "INSERT INTO services (name, active_version, created_at) VALUES ($1, NULL, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(service)
    .bind(store::now())
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO instances (id, name, tenant_id, service, pinned_version, modules, settings, enabled, created_at, ends_at) \
         VALUES ($1, $1, $2, $3, NULL, '[]', '{}', $4, $5, NULL)",
    )
    .bind(id)
    .bind(tenant)
    .bind(service)
    .bind(true)
    .bind(store::now())
    .execute(db)
    .await
    .unwrap();
}
