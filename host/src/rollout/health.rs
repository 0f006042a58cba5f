//! The health gate: an instance whose first requests on a newly served version
//! fail is pinned back to the version it served before, by itself.

use std::sync::Arc;
use std::time::Duration;

use super::history::{record, seen_by, Promotion};
use super::Rollout;
use crate::router::health::Unhealthy;

/// Pin instances whose new version failed its health gate back to the version
/// they served before, recording why.
pub async fn health_rollbacks(rollout: Arc<Rollout>, mut unhealthy: tokio::sync::mpsc::UnboundedReceiver<Unhealthy>) {
    let node = &*rollout;
    while let Some(bad) = unhealthy.recv().await {
        tracing::warn!(instance = %bad.instance, version = %bad.version, back_to = %bad.previous, "health gate: {}", bad.reason);
        let pinned = node
            .configurator
            .rollout_pin(&bad.service, std::slice::from_ref(&bad.instance), &bad.previous, "health", &bad.reason)
            .await;
        match pinned {
            Ok((ids, generation)) if !ids.is_empty() => {
                let detail = format!("instance {} back to {}: {}", bad.instance, bad.previous, bad.reason);
                let entry = Promotion {
                    service: &bad.service,
                    kind: "health",
                    version: &bad.previous,
                    previous: Some(&bad.version),
                    generation,
                    actor: "health gate",
                    detail: &detail,
                    instance: Some(&bad.instance),
                    node: &node.fleet.id,
                };
                if let Err(e) = record(&node.db, &entry).await {
                    tracing::warn!("{e:#}");
                }
                let _ = node.fleet.ack(generation).await;
            }
            Ok(_) => {
                // Another node moved it first (one entry per rollback, naming
                // every node that saw it fail), or its owner pinned it.
                let mut seen = false;
                for _ in 0..10 {
                    match seen_by(&node.db, &bad.service, &bad.instance, &bad.previous, &node.fleet.id).await {
                        Ok(true) => {
                            seen = true;
                            break;
                        }
                        Ok(false) => tokio::time::sleep(Duration::from_millis(200)).await,
                        Err(e) => {
                            tracing::warn!("{e:#}");
                            break;
                        }
                    }
                }
                if !seen {
                    tracing::info!(instance = %bad.instance, "health gate: the instance was pinned by its owner; left alone")
                }
            }
            Err(e) => tracing::warn!(instance = %bad.instance, "health gate: failed to roll back: {e}"),
        }
    }
}
