//! Several nodes on one PostgreSQL control plane. Every change a node holds in
//! memory (versions and active versions, instances and their hostnames, quotas)
//! bumps the platform generation in the same transaction and notifies the
//! `wharf_changes` channel at commit. Each node listens, and on a notification
//! (or when its listening connection was lost and comes back, or every
//! [`POLL`] besides) compares the generation with the one it has caught up
//! with; when it is behind it reads the change log from there: changes to some
//! instances or tenants re-read just their routes (the cost of a change does not
//! grow with the platform); other changes, or a gap in the log (a node too far
//! behind), load new versions (fetching their components from the control
//! plane), point services at their active versions and rebuild the whole
//! routing table. Credentials and memberships are cached on each node: every
//! change to them bumps the identity generation and notifies `wharf_identity`;
//! each node invalidates its caches and acknowledges, and the changing node
//! answers once every live node has (see `identity::cache`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::configurator::Configurator;
use crate::registry::Registry;
use crate::rollout::Fleet;
use crate::store::{self, Db, Seen};

/// How often a node checks the generation even without a notification (a
/// lost listening connection is noticed, and caught up after, at once).
pub const POLL: Duration = Duration::from_secs(5);

/// How soon a node tries again to listen when it could not (the control plane
/// restarting, say), catching up each time.
const RECONNECT: Duration = Duration::from_secs(1);

/// What following the platform takes: the control plane, and the rooms a
/// change reloads.
pub struct Follower {
    /// The control plane's URL (for the listening connection).
    pub url: String,
    pub db: Db,
    pub registry: Arc<Registry>,
    pub configurator: Arc<Configurator>,
    pub fleet: Arc<Fleet>,
    /// The generation this node has caught up with.
    pub seen: Arc<Seen>,
    /// The version of this node's cached credentials and memberships.
    pub epoch: Arc<crate::identity::cache::Epoch>,
    /// Catch-ups and failed reads, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wakes this node's job workers (another node has more jobs ready than
    /// it can take).
    pub jobs: Arc<tokio::sync::Notify>,
}

/// Follow the platform's changes until `stop` is set.
pub async fn follow(node: Follower, mut stop: watch::Receiver<bool>) {
    let url = node.url.clone();
    loop {
        let mut listener = match connect(&url).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!("cannot listen for platform changes (retrying, polling meanwhile): {e:#}");
                if wait_or_stop(&mut stop, RECONNECT).await {
                    return;
                }
                catch_up_logged(&node).await;
                continue;
            }
        };
        // Whatever changed while this node was not listening.
        catch_up_logged(&node).await;
        loop {
            tokio::select! {
                _ = stopping(&mut stop) => return,
                notification = listener.try_recv() => match notification {
                    Ok(Some(told)) if told.channel() == crate::jobs::JOBS_CHANNEL => node.jobs.notify_one(),
                    Ok(Some(_)) => catch_up_logged(&node).await,
                    // The connection was lost (the next call reconnects):
                    // whatever was told meanwhile is caught up with now.
                    Ok(None) => {
                        tracing::warn!("lost the platform-changes connection (reconnecting)");
                        catch_up_logged(&node).await;
                    }
                    Err(e) => {
                        tracing::warn!("lost the platform-changes connection (reconnecting): {e}");
                        break;
                    }
                },
                _ = tokio::time::sleep(POLL) => catch_up_logged(&node).await,
            }
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgListener> {
    let mut listener = PgListener::connect(url).await.context("failed to connect")?;
    listener
        .listen_all([store::CHANGES_CHANNEL, crate::identity::cache::IDENTITY_CHANNEL, crate::jobs::JOBS_CHANNEL])
        .await
        .context("failed to LISTEN")?;
    Ok(listener)
}

/// Sleep `duration`; `true` if the node is stopping.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        _ = stopping(stop) => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// Resolves when the node starts stopping.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn catch_up_logged(node: &Follower) {
    if let Err(e) = catch_up(node).await {
        node.metrics.control_plane_error(crate::metrics::ControlPlaneUse::Follow);
        tracing::warn!("failed to catch up with the platform: {e:#}");
    }
}

/// Invalidate this node's cached credentials and memberships if another node
/// changed them, and acknowledge it (the changing node waits for that).
async fn catch_up_identity(node: &Follower) -> anyhow::Result<()> {
    let (value,): (i64,) = sqlx::query_as("SELECT value FROM identity_generation WHERE id = 1")
        .fetch_one(&node.db)
        .await
        .context("failed to read the identity generation")?;
    node.epoch.follow(value);
    // Acknowledged even when followed before (by a change made here, or
    // before this node's row existed); a no-op when already recorded.
    node.fleet.ack_identity(value).await?;
    Ok(())
}

/// Apply every change up to the current generation, if this node is behind.
pub async fn catch_up(node: &Follower) -> anyhow::Result<()> {
    catch_up_identity(node).await?;
    let current = store::generation(&node.db).await.context("failed to read the generation")?;
    let seen = node.seen.get();
    if current <= seen {
        return Ok(());
    }
    let behind = std::time::Instant::now();
    match store::changes_between(&node.db, seen, current).await.context("failed to read the change log")? {
        // Changes to some services, instances or tenants: re-read just those
        // (a service's versions first: a route may be pinned to a new one).
        Some(changes) => {
            for change in &changes {
                if let store::Changed::Service(service) = change {
                    node.registry.refresh_service(service).await?;
                }
            }
            node.configurator.apply_changes(&changes).await.map_err(|e| anyhow::anyhow!("{e}"))?
        }
        // Versions changed, or this node missed part of the log: everything.
        None => {
            node.registry.refresh().await?;
            node.configurator.refresh_routes().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            node.metrics.reloaded();
        }
    }
    node.seen.caught_up(current);
    node.metrics.caught_up(behind.elapsed());
    // The acknowledgement a promotion waits for.
    node.fleet.ack(current).await?;
    node.fleet.wake.notify_one();
    tracing::debug!(generation = current, "caught up with the platform");
    Ok(())
}
