//! The audit log: logins (success and failure), key creation and revocation,
//! member and grant changes, with actor, target, tenant and time.

use anyhow::Context as _;
use serde::Serialize;

use crate::store::{self, Db};

/// One audit entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Email (or user id) of who acted; for a failed login, the email tried.
    pub actor: String,
    /// e.g. `login`, `key.create`, `member.add`, `grant.add`.
    pub action: String,
    pub target: String,
    pub tenant_id: Option<String>,
    /// `ok`, or why it failed.
    pub outcome: String,
}

/// The audit room.
pub struct Audit {
    db: Db,
}

impl Audit {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Record an entry. Failing to audit is logged, never hidden.
    pub async fn record(&self, actor: &str, action: &str, target: &str, tenant: Option<&str>, outcome: &str) {
        let id = format!("audit-{}", uuid::Uuid::new_v4().simple());
        let written = sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, tenant_id, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(store::now_millis())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(tenant)
        .bind(outcome)
        .execute(&self.db)
        .await;
        if let Err(e) = written {
            tracing::error!(actor, action, target, "failed to write the audit log: {e}");
        }
    }

    /// The newest entries: all (`None`), or those of some tenants plus the
    /// caller's own (`Some((tenants, actor))`).
    pub async fn list(&self, scope: Option<(&[String], &str)>, limit: i64) -> anyhow::Result<Vec<Entry>> {
        // Numbered parameters, written out: both dialects read `$n`.
        let mut sql = String::from("SELECT id, at, actor, action, target, tenant_id, outcome FROM audit_log");
        let mut binds: Vec<&str> = Vec::new();
        if let Some((tenants, actor)) = scope {
            binds.push(actor);
            sql.push_str(" WHERE actor = $1");
            if !tenants.is_empty() {
                let marks: Vec<String> = (2..tenants.len() + 2).map(|i| format!("${i}")).collect();
                sql.push_str(&format!(" OR tenant_id IN ({})", marks.join(", ")));
                binds.extend(tenants.iter().map(String::as_str));
            }
        }
        sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT {}", limit.clamp(1, 10_000)));
        let mut query = sqlx::query_as::<_, Entry>(&sql);
        for value in binds {
            query = query.bind(value);
        }
        query.fetch_all(&self.db).await.context("failed to read the audit log")
    }
}
