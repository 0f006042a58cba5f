//! The rollout history: every promotion, rollback, canary and health rollback,
//! with who or what made it and which nodes saw it.

use anyhow::Context as _;

use crate::store::{self, Db};

/// An entry of a service's rollout history.
pub struct Promotion<'a> {
    pub service: &'a str,
    /// `promote`, `rollback`, `canary` or `health`.
    pub kind: &'a str,
    pub version: &'a str,
    pub previous: Option<&'a str>,
    pub generation: i64,
    pub actor: &'a str,
    pub detail: &'a str,
    /// The instance a health rollback moved.
    pub instance: Option<&'a str>,
    /// The node that recorded it.
    pub node: &'a str,
}

/// Record a promotion, rollback, canary or health rollback.
pub async fn record(db: &Db, entry: &Promotion<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO promotions (id, service, kind, version, previous, generation, actor, detail, at, instance_id, nodes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(format!("prm-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    .bind(entry.service)
    .bind(entry.kind)
    .bind(entry.version)
    .bind(entry.previous)
    .bind(entry.generation)
    .bind(entry.actor)
    .bind(entry.detail)
    .bind(store::now_millis())
    .bind(entry.instance)
    .bind(entry.node)
    .execute(db)
    .await
    .context("failed to record the promotion")?;
    Ok(())
}

/// Add `node` to the latest health rollback of `instance` to `version`: it
/// reached the same verdict as the node that moved it. Returns whether there
/// was such an entry.
pub(super) async fn seen_by(db: &Db, service: &str, instance: &str, version: &str, node: &str) -> anyhow::Result<bool> {
    let latest: Option<(String, String)> = sqlx::query_as(
        "SELECT id, nodes FROM promotions WHERE service = $1 AND kind = 'health' AND instance_id = $2 \
         AND version = $3 ORDER BY at DESC LIMIT 1",
    )
    .bind(service)
    .bind(instance)
    .bind(version)
    .fetch_optional(db)
    .await
    .context("failed to read the health rollbacks")?;
    let Some((id, nodes)) = latest else { return Ok(false) };
    if nodes.split(',').any(|n| n == node) {
        return Ok(true);
    }
    sqlx::query("UPDATE promotions SET nodes = nodes || ',' || $1 WHERE id = $2")
        .bind(node)
        .bind(&id)
        .execute(db)
        .await
        .context("failed to record the node's verdict")?;
    Ok(true)
}

/// A service's latest promotions, newest first.
pub async fn history(db: &Db, service: &str, limit: i64) -> anyhow::Result<Vec<serde_json::Value>> {
    type Row = (String, String, Option<String>, i64, String, String, i64, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT kind, version, previous, generation, actor, detail, at, instance_id, nodes FROM promotions \
         WHERE service = $1 ORDER BY at DESC LIMIT $2",
    )
    .bind(service)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("failed to read promotions")?;
    Ok(rows
        .into_iter()
        .map(|(kind, version, previous, generation, actor, detail, at, instance, nodes)| {
            let nodes: Vec<&str> = nodes.split(',').filter(|n| !n.is_empty()).collect();
            serde_json::json!({
                "kind": kind, "version": version, "previous": previous, "generation": generation,
                "actor": actor, "detail": detail, "at_ms": at, "instance": instance, "nodes": nodes,
            })
        })
        .collect())
}
