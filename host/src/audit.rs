//! The audit log: logins (success and failure), key creation and revocation,
//! member and grant changes, with actor, target, tenant and time.

use anyhow::Context as _;
use serde::Serialize;

use crate::store::{self, Db};

/// One audit entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
        let mut query = sqlx::QueryBuilder::<crate::store::Backend>::new(
            "SELECT id, at, actor, action, target, tenant_id, outcome FROM audit_log",
        );
        if let Some((tenants, actor)) = scope {
            query.push(" WHERE actor = ").push_bind(actor);
            if !tenants.is_empty() {
                query.push(" OR tenant_id IN (");
                let mut list = query.separated(", ");
                for tenant in tenants {
                    list.push_bind(tenant);
                }
                query.push(")");
            }
        }
        query.push(" ORDER BY at DESC, id DESC LIMIT ").push_bind(limit);
        query.build_query_as().fetch_all(&self.db).await.context("failed to read the audit log")
    }
}
