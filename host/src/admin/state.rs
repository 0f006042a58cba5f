//! The admin API's state: the rooms it reads and changes, built by the node.

use std::sync::Arc;

use crate::access::Access;
use crate::audit::Audit;
use crate::config::NodeConfig;
use crate::configurator::Configurator;
use crate::identity::Identity;
use crate::listener::Addresses;
use crate::registry::Registry;
use crate::router::Router;
use crate::runtime::Runtime;
use crate::store::Db;
use crate::usage::Usage;

/// What the admin API works with: every room of the node, its configuration
/// and addresses, and the admin API's own state (readiness, pacing, mail).
pub struct AdminState {
    pub config: NodeConfig,
    pub addresses: Addresses,
    pub db: Db,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub configurator: Arc<Configurator>,
    pub router: Arc<Router>,
    pub usage: Arc<Usage>,
    /// Plans, subscriptions, accounts, discounts and invoices.
    pub billing: Arc<crate::billing::Billing>,
    pub identity: Arc<Identity>,
    pub access: Arc<Access>,
    pub audit: Arc<Audit>,
    /// Sends invitations when SMTP is configured.
    pub mailer: Option<crate::identity::invitations::Mailer>,
    /// The platform generation this node has caught up with.
    pub generation: Arc<crate::store::Seen>,
    /// How fast one account may change things through the admin API.
    pub admin_throttle: super::throttle::Throttle,
    /// The platform's job queue.
    pub queue: Arc<crate::jobs::Queue>,
    /// This node's membership of the fleet (beats, acknowledgements, versions).
    pub fleet: Arc<crate::rollout::Fleet>,
    /// Stage, promote, roll back, canaries, and the health gate.
    pub rollout: Arc<crate::rollout::Rollout>,
    /// Closing invoices, spending limits, re-reading subscriptions.
    pub billing_passes: Arc<crate::billing::Passes>,
    /// The job workers and instance setups.
    pub workers: Arc<crate::jobs::Workers>,
    /// What the ingress counted, for `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The last readiness probe of the control plane, and when it ran.
    pub readiness: tokio::sync::Mutex<Option<(std::time::Instant, Result<i64, String>)>>,
}
