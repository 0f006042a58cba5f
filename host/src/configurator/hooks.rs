//! The rooms above the configurator that follow its instances, as it sees them:
//! the job queue (where guests enqueue and where an instance's setup starts)
//! and billing (which records what each instance subscribes to). They are
//! handed in by the node, so the configurator imports neither.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Instance;
use crate::runtime::JobQueue;
use crate::store::Backend;

/// What a hook returns: its work, to await.
pub type Hook<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// An instance's setup to queue: the migrations and seeder of `version`.
pub struct SetupStart<'a> {
    pub instance: &'a str,
    pub tenant: &'a str,
    pub service: &'a str,
    pub version: &'a str,
}

/// The job queue: guests enqueue into it ([`JobQueue`]), and an instance's
/// setup starts on it in the transaction that changes the instance.
pub trait SetupQueue: JobQueue {
    /// Put the instance in maintenance and queue its setup, inside `tx`,
    /// unless that setup is already queued or has failed. Whether it was queued.
    fn begin_in<'a, 'c: 'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'c, Backend>,
        setup: SetupStart<'a>,
    ) -> Hook<'a, bool>;

    /// Something was queued: wake this node's workers.
    fn wake(&self);

    /// Delete every job of a purged instance inside `tx`; how many.
    fn forget_in<'a, 'c: 'a>(&'a self, tx: &'a mut sqlx::Transaction<'c, Backend>, instance: &'a str) -> Hook<'a, u64>;
}

/// Billing: told after instances changed what they are billed for.
pub trait Subscriptions: Send + Sync {
    /// Record the subscription changes of `instances`; how many were recorded.
    fn changed<'a>(&'a self, instances: &'a [Instance]) -> Hook<'a, usize>;
}

/// The rooms above the configurator, as handed in by the node (none in a
/// configurator of its own, as in tests).
#[derive(Clone, Default)]
pub struct Followers {
    pub queue: Option<Arc<dyn SetupQueue>>,
    pub subscriptions: Option<Arc<dyn Subscriptions>>,
}
