//! Billing: what each instance used ([`crate::usage`]), what each tenant subscribes to,
//! at what prices, and invoices that explain every charge ([`invoice`]).
//!
//! - **Plans**: an operator sets prices per service (a price per period for the
//!   service and per module, per unit of fuel, per request, in one currency).
//!   Each change is a new revision, effective from when it was made.
//! - **Subscriptions** follow the instances: every change of what an instance
//!   is billed for (created, enabled or disabled, a module enabled or disabled,
//!   a version that drops a module, an end date) is a timestamped event holding
//!   the whole new state, so an invoice reads the subscription as it was at
//!   any moment.
//! - **Accounts**: billing details printed on invoices, a spending limit that
//!   suspends the tenant's instances (402) when the period's running total
//!   reaches it.
//! - **Discounts**: a percentage or a fixed amount, per tenant, per service or
//!   both, over a time range, shown as their own lines.
//!
//! Time is the node's [`Clock`], which tests and the demo may move forward.

mod accounts;
mod discounts;
pub mod invoice;
pub mod money;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::clock::{self, time_value, Clock, ClockError, Period};

use crate::configurator::Instance;
use crate::registry::Registry;
use crate::store::{self, Db};

/// Fuel is priced per this many units unless the plan says otherwise.
pub const DEFAULT_FUEL_UNIT: i64 = 1_000_000_000;
/// Requests are priced per this many unless the plan says otherwise.
pub const DEFAULT_REQUEST_UNIT: i64 = 1_000_000;
/// Largest price or amount accepted, in minor units (10 billion units of a currency).
pub const MAX_PRICE: i64 = 1_000_000_000_000;

/// Why a billing request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("no service {0:?}")]
    UnknownService(String),
    #[error("service {0:?} has no plan yet; an operator sets one with `wharf plan set`")]
    NoPlan(String),
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("invalid period {0:?}: write a calendar month as YYYY-MM, e.g. 2027-01")]
    InvalidPeriod(String),
    #[error("period {period} is still open (it ends at {ends}); an invoice closes after its period")]
    PeriodOpen { period: String, ends: String },
    #[error("invalid discount: {0}")]
    InvalidDiscount(String),
    #[error("no discount {0:?}")]
    UnknownDiscount(String),
    #[error("invalid billing details: {0}")]
    InvalidDetails(String),
    #[error("invalid spending limit: {0}")]
    InvalidLimit(String),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for BillingError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::from(e).context("billing database error"))
    }
}

fn billion() -> i64 {
    DEFAULT_FUEL_UNIT
}

fn million() -> i64 {
    DEFAULT_REQUEST_UNIT
}

/// A plan's prices, in minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// The service, per billing period (a calendar month), pro-rated by the second.
    #[serde(default)]
    pub period_price: i64,
    /// Each module, per period, pro-rated likewise.
    #[serde(default)]
    pub module_prices: BTreeMap<String, i64>,
    /// Per `fuel_unit` units of fuel (requests, jobs and the host calls they
    /// were charged for).
    #[serde(default)]
    pub fuel_price: i64,
    #[serde(default = "billion")]
    pub fuel_unit: i64,
    /// Per `request_unit` requests.
    #[serde(default)]
    pub request_price: i64,
    #[serde(default = "million")]
    pub request_unit: i64,
}

impl Prices {
    fn check(&self, modules: &BTreeSet<String>) -> Result<(), BillingError> {
        let bad = |why: String| Err(BillingError::InvalidPlan(why));
        if !money::is_currency(&self.currency) {
            return bad(format!("currency {:?} is not an ISO 4217 code such as USD or EUR", self.currency));
        }
        let prices = [
            ("period_price", self.period_price),
            ("fuel_price", self.fuel_price),
            ("request_price", self.request_price),
        ];
        for (name, price) in prices.into_iter().chain(self.module_prices.values().map(|p| ("a module price", *p))) {
            if !(0..=MAX_PRICE).contains(&price) {
                return bad(format!("{name} must be 0 to {MAX_PRICE} minor units of {}", self.currency));
            }
        }
        for (name, unit) in [("fuel_unit", self.fuel_unit), ("request_unit", self.request_unit)] {
            if !(1..=1_000_000_000_000_000).contains(&unit) {
                return bad(format!("{name} must be 1 to 10^15"));
            }
        }
        if let Some(unknown) = self.module_prices.keys().find(|m| !modules.contains(*m)) {
            let known: Vec<&str> = modules.iter().map(String::as_str).collect();
            return bad(format!(
                "no version of the service declares module {unknown:?} (modules: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        Ok(())
    }
}

/// One revision of a service's plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Plan {
    pub service: String,
    pub revision: i64,
    pub effective_from: i64,
    #[serde(flatten)]
    pub prices: Prices,
    pub set_by: String,
}

type PlanRow = (String, i64, i64, String, i64, String, i64, i64, i64, i64, String);

const PLAN_COLUMNS: &str = "service, revision, effective_from, currency, period_price, module_prices, fuel_price, \
                            fuel_unit, request_price, request_unit, set_by";

fn plan_of(row: PlanRow) -> Plan {
    let (
        service,
        revision,
        effective_from,
        currency,
        period_price,
        modules,
        fuel_price,
        fuel_unit,
        request_price,
        request_unit,
        set_by,
    ) = row;
    Plan {
        service,
        revision,
        effective_from,
        prices: Prices {
            currency,
            period_price,
            module_prices: serde_json::from_str(&modules).unwrap_or_default(),
            fuel_price,
            fuel_unit,
            request_price,
            request_unit,
        },
        set_by,
    }
}

/// What an instance is billed for from one moment on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub active: bool,
    /// The version it runs: recorded with each event, but not billed — a
    /// change of version alone records nothing (an activation does not write
    /// an event per follower; the service's rollout history has it).
    pub version: Option<String>,
    /// Enabled modules the running version declares.
    pub modules: Vec<String>,
    pub ends_at: Option<i64>,
}

impl SubscriptionState {
    /// Whether `other` is billed the same (the version aside).
    fn billed_as(&self, other: &SubscriptionState) -> bool {
        (self.active, &self.modules, self.ends_at) == (other.active, &other.modules, other.ends_at)
    }
}

/// A recorded change of an instance's subscription.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionEvent {
    pub instance: String,
    pub seq: i64,
    pub tenant: String,
    pub service: String,
    pub at: i64,
    pub active: bool,
    pub version: Option<String>,
    pub modules: Vec<String>,
    pub ends_at: Option<i64>,
    pub reason: String,
}

impl SubscriptionEvent {
    /// How an invoice line cites it.
    pub fn cite(&self) -> String {
        format!("event {}#{} at {}: {}", self.instance, self.seq, clock::format_utc(self.at), self.reason)
    }

    fn state(&self) -> SubscriptionState {
        SubscriptionState {
            active: self.active,
            version: self.version.clone(),
            modules: self.modules.clone(),
            ends_at: self.ends_at,
        }
    }
}

type EventRow = (String, i64, String, String, i64, i64, Option<String>, String, Option<i64>, String);

const EVENT_COLUMNS: &str = "instance_id, seq, tenant_id, service, at, active, version, modules, ends_at, reason";

fn event_of(row: EventRow) -> SubscriptionEvent {
    let (instance, seq, tenant, service, at, active, version, modules, ends_at, reason) = row;
    SubscriptionEvent {
        instance,
        seq,
        tenant,
        service,
        at,
        active: active != 0,
        version,
        modules: serde_json::from_str(&modules).unwrap_or_default(),
        ends_at,
        reason,
    }
}

/// Who a tenant's invoices are addressed to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Details {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tax_id: String,
    #[serde(default)]
    pub email: String,
}

impl Details {
    fn check(&self) -> Result<(), BillingError> {
        for (field, value, max) in [
            ("name", &self.name, 200),
            ("address", &self.address, 1000),
            ("tax_id", &self.tax_id, 64),
            ("email", &self.email, 254),
        ] {
            if value.chars().count() > max {
                return Err(BillingError::InvalidDetails(format!("{field} is longer than {max} characters")));
            }
            if value.chars().any(|c| c.is_control() && c != '\n') {
                return Err(BillingError::InvalidDetails(format!("{field} holds control characters")));
            }
        }
        if !self.email.is_empty() && crate::identity::normalize_email(&self.email).is_err() {
            return Err(BillingError::InvalidDetails(format!("{:?} is not an email address", self.email)));
        }
        Ok(())
    }
}

/// A tenant's billing account.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub tenant: String,
    pub details: Details,
    /// Minor units of `limit_currency` per period; `None`: no limit.
    pub spending_limit: Option<i64>,
    pub limit_currency: Option<String>,
    /// Why the tenant's instances answer 402, when they do.
    pub suspended: Option<String>,
}

/// A discount, as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Discount {
    pub id: String,
    pub tenant: Option<String>,
    pub service: Option<String>,
    /// Percentage in basis points (1250 = 12.5 %), or else:
    pub basis_points: Option<i64>,
    /// a fixed amount per period, in minor units of `currency`.
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    pub description: String,
}

/// A discount to create.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDiscount {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// A percentage, as a decimal string (`"12.5"`) or number.
    #[serde(default)]
    #[schema(schema_with = crate::clock::number_or_text_schema)]
    pub percent: Option<serde_json::Value>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// Unix seconds or `2027-01-10[T08:00Z]`; default now.
    #[serde(default)]
    #[schema(schema_with = crate::clock::time_or_null_schema)]
    pub starts_at: Option<serde_json::Value>,
    #[serde(default)]
    #[schema(schema_with = crate::clock::time_or_null_schema)]
    pub ends_at: Option<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One hour of an instance's usage ledger.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LedgerRow {
    pub hour: i64,
    pub hour_utc: String,
    pub requests: i64,
    pub jobs: i64,
    pub fuel: i64,
    pub errors: i64,
}

/// The billing room.
pub struct Billing {
    db: Db,
    pub clock: Arc<Clock>,
    registry: Arc<Registry>,
}

impl crate::configurator::hooks::Subscriptions for Billing {
    fn changed<'a>(&'a self, instances: &'a [Instance]) -> crate::configurator::hooks::Hook<'a, usize> {
        Box::pin(async move { Ok(self.sync(instances).await?) })
    }
}

impl Billing {
    pub fn new(db: Db, clock: Arc<Clock>, registry: Arc<Registry>) -> Self {
        Self { db, clock, registry }
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    // ---- plans ----

    /// Set a service's prices: a new revision, effective now.
    pub async fn set_plan(&self, service: &str, prices: Prices, by: &str) -> Result<Plan, BillingError> {
        let slot = self.registry.slot(service).ok_or_else(|| BillingError::UnknownService(service.to_string()))?;
        prices.check(&slot.declared_modules())?;
        let mut tx = crate::store::begin(&self.db).await?;
        store::lock_row(&mut tx, "services", "name", service).await.context("failed to lock the service")?;
        let (last,): (Option<i64>,) = sqlx::query_as("SELECT MAX(revision) FROM plan_revisions WHERE service = $1")
            .bind(service)
            .fetch_one(&mut *tx)
            .await?;
        let plan = Plan {
            service: service.to_string(),
            revision: last.unwrap_or(0) + 1,
            effective_from: self.now(),
            prices,
            set_by: by.to_string(),
        };
        sqlx::query(&format!(
            "INSERT INTO plan_revisions ({PLAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&plan.service)
        .bind(plan.revision)
        .bind(plan.effective_from)
        .bind(&plan.prices.currency)
        .bind(plan.prices.period_price)
        .bind(serde_json::to_string(&plan.prices.module_prices).context("module prices")?)
        .bind(plan.prices.fuel_price)
        .bind(plan.prices.fuel_unit)
        .bind(plan.prices.request_price)
        .bind(plan.prices.request_unit)
        .bind(&plan.set_by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(%service, revision = plan.revision, "plan set");
        Ok(plan)
    }

    /// Every revision of a service's plan, oldest first.
    pub async fn plan_history(&self, service: &str) -> Result<Vec<Plan>, BillingError> {
        if self.registry.slot(service).is_none() {
            return Err(BillingError::UnknownService(service.to_string()));
        }
        let rows: Vec<PlanRow> =
            sqlx::query_as(&format!("SELECT {PLAN_COLUMNS} FROM plan_revisions WHERE service = $1 ORDER BY revision"))
                .bind(service)
                .fetch_all(&self.db)
                .await?;
        Ok(rows.into_iter().map(plan_of).collect())
    }

    /// The plan in force for `period`: the revision in force at its start, or
    /// (for a service priced during the period) its first revision. A change of
    /// prices applies from the next period on.
    pub async fn plan_for(&self, service: &str, period: Period) -> Result<Option<Plan>, BillingError> {
        let rows: Vec<PlanRow> = sqlx::query_as(&format!(
            "SELECT {PLAN_COLUMNS} FROM plan_revisions WHERE service = $1 AND effective_from < $2 ORDER BY revision"
        ))
        .bind(service)
        .bind(period.end())
        .fetch_all(&self.db)
        .await?;
        let plans: Vec<Plan> = rows.into_iter().map(plan_of).collect();
        let at_start = plans.iter().rfind(|p| p.effective_from <= period.start());
        Ok(at_start.or(plans.first()).cloned())
    }

    // ---- subscriptions ----

    /// What `instance` is billed for now.
    pub fn state_of(&self, instance: &Instance) -> SubscriptionState {
        let declared = instance
            .running_version
            .as_deref()
            .and_then(|v| self.registry.slot(&instance.service).and_then(|s| s.version(v)))
            .map(|v| v.manifest.modules.iter().map(|m| m.id.clone()).collect::<BTreeSet<_>>());
        let mut modules: Vec<String> =
            instance.modules.iter().filter(|m| declared.as_ref().is_none_or(|d| d.contains(*m))).cloned().collect();
        modules.sort();
        modules.dedup();
        SubscriptionState {
            active: instance.enabled && instance.deleted_at.is_none(),
            version: instance.running_version.clone(),
            modules,
            ends_at: instance.ends_at,
        }
    }

    /// Record a subscription event for each instance whose billed state changed
    /// since its last event. Safe to run on any node at any time.
    pub async fn sync(&self, instances: &[Instance]) -> Result<usize, BillingError> {
        // Each instance's latest event, a few hundred instances per query (not
        // a round trip each: every activation re-reads every instance).
        let mut latest: BTreeMap<String, SubscriptionEvent> = BTreeMap::new();
        for chunk in instances.chunks(500) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // The latest seq of each, then its row: index seeks, no scan.
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM subscription_events e JOIN (SELECT instance_id AS last_of, \
                 MAX(seq) AS last_seq FROM subscription_events WHERE instance_id IN ({}) GROUP BY instance_id) m \
                 ON e.instance_id = m.last_of AND e.seq = m.last_seq",
                list.join(", ")
            );
            let mut query = sqlx::query_as::<_, EventRow>(&sql);
            for instance in chunk {
                query = query.bind(&instance.id);
            }
            for row in query.fetch_all(&self.db).await? {
                let event = event_of(row);
                latest.insert(event.instance.clone(), event);
            }
        }
        // The events to record, written a few hundred rows per statement in
        // one transaction (not a round trip each: an activation changes every
        // follower's version).
        let mut events = Vec::new();
        for instance in instances {
            let state = self.state_of(instance);
            let last = latest.remove(&instance.id);
            if last.as_ref().is_some_and(|l| l.state().billed_as(&state)) {
                continue;
            }
            let reason = describe_change(last.as_ref().map(SubscriptionEvent::state).as_ref(), &state);
            let at = match &last {
                // Never before the previous event (a clock set back by a restart).
                Some(last) => self.now().max(last.at),
                None => self.now(),
            };
            let modules = serde_json::to_string(&state.modules).context("modules")?;
            if instances.len() == 1 {
                tracing::info!(instance = %instance.id, %reason, "subscription changed");
            }
            events.push((instance, last.as_ref().map_or(1, |l| l.seq + 1), at, state, modules, reason));
        }
        let mut recorded = 0;
        if !events.is_empty() {
            let mut tx = crate::store::begin(&self.db).await?;
            for chunk in events.chunks(500) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        format!("({})", (1..=10).map(|c| format!("${}", i * 10 + c)).collect::<Vec<_>>().join(", "))
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO subscription_events ({EVENT_COLUMNS}) VALUES {} ON CONFLICT (instance_id, seq) DO NOTHING",
                    rows.join(", ")
                );
                let mut query = sqlx::query(&sql);
                for (instance, seq, at, state, modules, reason) in chunk {
                    query = query
                        .bind(&instance.id)
                        .bind(*seq)
                        .bind(&instance.tenant)
                        .bind(&instance.service)
                        .bind(*at)
                        .bind(i64::from(state.active))
                        .bind(&state.version)
                        .bind(modules)
                        .bind(state.ends_at)
                        .bind(reason);
                }
                recorded += query.execute(&mut *tx).await?.rows_affected() as usize;
            }
            tx.commit().await?;
        }
        if instances.len() > 1 && recorded > 0 {
            tracing::info!(instances = recorded, "subscriptions changed");
        }
        Ok(recorded)
    }

    /// Subscription events of a tenant (or one instance) before `before`, in order.
    pub async fn events(
        &self,
        tenant: &str,
        instance: Option<&str>,
        before: i64,
    ) -> Result<Vec<SubscriptionEvent>, BillingError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM subscription_events WHERE tenant_id = $1 AND at < $2 \
             AND ($3 = '' OR instance_id = $3) ORDER BY instance_id, seq"
        ))
        .bind(tenant)
        .bind(before)
        .bind(instance.unwrap_or(""))
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().map(event_of).collect())
    }

    /// An instance's usage ledger rows in `[from, to)`: (hour, requests, jobs, fuel, errors).
    pub async fn ledger(&self, instance: &str, from: i64, to: i64) -> Result<Vec<LedgerRow>, BillingError> {
        let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT hour, requests, jobs, fuel, errors FROM usage_ledger WHERE instance_id = $1 AND hour >= $2 \
             AND hour < $3 ORDER BY hour LIMIT 10000",
        )
        .bind(instance)
        .bind(from)
        .bind(to)
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(hour, requests, jobs, fuel, errors)| LedgerRow {
                hour,
                hour_utc: clock::format_utc(hour),
                requests,
                jobs,
                fuel,
                errors,
            })
            .collect())
    }
}

/// The billing passes of a node — closing invoices, enforcing spending limits,
/// now and then re-reading every subscription — with what they use.
pub struct Passes {
    pub billing: Arc<Billing>,
    pub configurator: Arc<crate::configurator::Configurator>,
    /// The generation this node has caught up with (a suspension is a change).
    pub seen: Arc<store::Seen>,
    pub config: crate::config::BillingConfig,
    /// Held by the one node that runs these passes.
    pub lease: Arc<store::Lease>,
    /// The generation up to which [`Passes::sync_changed`] looked at every
    /// change (0: none yet, the first pass reads every instance).
    pub synced: std::sync::atomic::AtomicI64,
}

impl Passes {
    /// Check every spending limit against what its tenant has accrued: suspend
    /// the tenants that reached theirs, lift the suspension of those below
    /// again (a new period, a raised limit). Returns how many changed.
    pub async fn enforce_limits(&self) -> Result<usize, BillingError> {
        let billing = &self.billing;
        let mut changed = 0;
        for (tenant, limit, currency, suspended) in billing.limited_tenants().await? {
            let running = billing.accrued(&tenant).await?;
            let total = running.totals.iter().find(|t| t.currency == currency).map_or(0, |t| t.amount);
            let reason = (total >= limit).then(|| {
                format!(
                    "its spending limit of {} for {} is reached ({} so far)",
                    money::format(limit, &currency),
                    running.period,
                    money::format(total, &currency)
                )
            });
            // An unchanged verdict is not rewritten (the running total moves).
            if reason.is_some() == suspended.is_some() {
                continue;
            }
            if let Some(generation) = billing.set_suspended(&tenant, reason.as_deref()).await? {
                tracing::info!(%tenant, suspended = reason.is_some(), "spending limit");
                let tenant_changed = [crate::store::Changed::Tenant(tenant.clone())];
                self.configurator.apply_changes(&tenant_changed).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                self.seen.applied_own(generation);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Record the subscription events of the instances of `service` whose
    /// billed state changed (an activation whose version declares other
    /// modules: a follower's enabled module may end, or start), a page of
    /// instances per round trip. Only instances with modules enabled are read
    /// (a version change alone bills nothing); not the other services', nor
    /// anyone's hostnames.
    pub async fn sync_service(&self, service: &str) -> Result<usize, BillingError> {
        let mut after = String::new();
        let mut recorded = 0;
        loop {
            let instances = self
                .configurator
                .instances_with_modules(service, &after, SERVICE_PAGE)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            recorded += self.billing.sync(&instances).await?;
            match instances.last() {
                Some(last) if instances.len() as i64 == SERVICE_PAGE => after = last.id.clone(),
                _ => return Ok(recorded),
            }
        }
    }

    /// The safety net behind every change's own subscription event (a node
    /// that crashed between committing a change and recording it): the
    /// instances, tenants and services the change log names since the last
    /// pass are looked at again; every instance only on the first pass, or
    /// when the log cannot say (a gap, a change of everything, too many).
    pub async fn sync_changed(&self) -> Result<usize, BillingError> {
        let db = &self.billing.db;
        let current = store::generation(db).await.context("failed to read the generation")?;
        let from = self.synced.load(std::sync::atomic::Ordering::Acquire);
        if from == current {
            return Ok(0);
        }
        let changes = match from {
            0 => None,
            _ => store::changes_within(db, from, current, SAFETY_NET_MOST)
                .await
                .context("failed to read the change log")?,
        };
        let recorded = match changes {
            None => self.sync_all(None).await?,
            Some(changes) => {
                let mut recorded = 0;
                let mut instances = Vec::new();
                for change in changes {
                    let configurator = &self.configurator;
                    match change {
                        store::Changed::Instance(id) => match configurator.instance(&id).await {
                            Ok(instance) => instances.push(instance),
                            // Purged since: nothing to bill.
                            Err(crate::configurator::ConfigError::UnknownInstance(_)) => {}
                            Err(e) => return Err(anyhow::anyhow!("{e}").into()),
                        },
                        store::Changed::Tenant(tenant) => recorded += self.sync_all(Some(&[tenant])).await?,
                        store::Changed::Service(service) => recorded += self.sync_service(&service).await?,
                    }
                }
                recorded + self.billing.sync(&instances).await?
            }
        };
        self.synced.store(current, std::sync::atomic::Ordering::Release);
        Ok(recorded)
    }

    /// Record a subscription event for every instance (of `tenants`; `None`:
    /// of every tenant) whose state changed without one, a page at a time.
    async fn sync_all(&self, tenants: Option<&[String]>) -> Result<usize, BillingError> {
        let mut page = crate::configurator::Page::new(None, Some(crate::configurator::Page::MAX));
        let mut recorded = 0;
        loop {
            let instances = self.configurator.instances(tenants, &page).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            recorded += self.billing.sync(&instances).await?;
            match instances.last() {
                Some(last) if instances.len() as i64 == page.limit => page.after = Some(last.id.clone()),
                _ => return Ok(recorded),
            }
        }
    }
}

/// Instances read per round trip when an activation records its followers'
/// subscription changes.
const SERVICE_PAGE: i64 = 5000;

/// Most instances, tenants and services the safety net looks at again one by
/// one; past it (or past the change log's reach) it reads every instance.
const SAFETY_NET_MOST: usize = 50_000;

/// The node's billing passes, until `stop` is set.
pub async fn run(passes: Arc<Passes>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let config = passes.config.clone();
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if !passes.lease.held().await {
            continue;
        }
        if last_sync.is_none_or(|at| at.elapsed() >= config.sync_interval) {
            last_sync = Some(std::time::Instant::now());
            if let Err(e) = passes.sync_changed().await {
                tracing::warn!("billing: failed to re-read subscriptions: {e:#}");
            }
        }
        if let Err(e) = passes.billing.close_due(config.invoice_grace.as_secs() as i64).await {
            tracing::warn!("billing: failed to close invoices: {e:#}");
        }
        if let Err(e) = passes.enforce_limits().await {
            tracing::warn!("billing: failed to check spending limits: {e:#}");
        }
    }
}

/// Why an instance's billed state changed, in words.
fn describe_change(before: Option<&SubscriptionState>, after: &SubscriptionState) -> String {
    let Some(before) = before else {
        let modules =
            if after.modules.is_empty() { String::new() } else { format!(" with {}", after.modules.join(", ")) };
        return format!("subscription started{modules}");
    };
    let mut parts = Vec::new();
    if before.active != after.active {
        parts.push(if after.active { "instance enabled".to_string() } else { "instance disabled".to_string() });
    }
    let version_changed = before.version != after.version;
    for module in before.modules.iter().filter(|m| !after.modules.contains(m)) {
        parts.push(if version_changed {
            format!("version {} has no module {module}", after.version.as_deref().unwrap_or("none"))
        } else {
            format!("module {module} disabled")
        });
    }
    for module in after.modules.iter().filter(|m| !before.modules.contains(m)) {
        parts.push(format!("module {module} enabled"));
    }
    if before.ends_at != after.ends_at {
        parts.push(match after.ends_at {
            Some(at) => format!("ends at {}", clock::format_utc(at)),
            None => "end date removed".to_string(),
        });
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
