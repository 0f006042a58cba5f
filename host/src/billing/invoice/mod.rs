//! Invoices: one per tenant per billing period (a calendar month, UTC).
//!
//! An invoice is computed from the subscription events, the usage ledger, the
//! plans and the discounts, all of which carry their times, so computing it
//! twice gives the same invoice. Every line says how its amount was reached
//! (`quantity × unit_price / per`, rounded once, see [`super::money`]) and cites
//! the events and ledger rows behind it.
//!
//! A period's invoice closes once the period is over (by itself, an hour
//! later, on whichever node gets there first; or by an operator): the document
//! is stored and never changes again. Closing records, per instance, how much
//! usage had been recorded up to the period's end; usage recorded later for an
//! earlier hour (a node replaying its journal after a crash) goes on the next
//! invoice, marked as such. Periods close in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::money::{self, mul_div_round, Exact};
use super::{Billing, BillingError, Details, Discount, Plan, SubscriptionEvent};
use crate::clock::{format_utc, Period};

/// How amounts are rounded, printed on every invoice.
pub const ROUNDING: &str = "each line's amount is quantity × unit price ÷ per, computed exactly and rounded once to \
                            the nearest minor unit, halves away from zero; totals add the rounded lines";

/// An invoice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Invoice {
    pub id: String,
    pub tenant: String,
    /// `2027-01`.
    pub period: String,
    pub starts_at: i64,
    pub ends_at: i64,
    /// `open` (the period is running), `ended` (over, not closed yet) or `closed`.
    pub state: String,
    pub closed_at: Option<i64>,
    pub bill_to: Details,
    pub lines: Vec<Line>,
    pub totals: Vec<Total>,
    /// While the period runs: the time its lines are accrued to (the billing
    /// clock's now). `totals` is what is owed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accrued_until: Option<i64>,
    /// While the period runs: what it comes to at its end if nothing changes
    /// (subscriptions to the end of the month, usage as recorded so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<Vec<Total>>,
    pub rounding: String,
}

/// One line of an invoice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Line {
    /// `service`, `module`, `fuel`, `requests` or `discount`.
    pub kind: String,
    pub instance: Option<String>,
    pub service: Option<String>,
    pub module: Option<String>,
    pub description: String,
    /// The time range a subscription line covers.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Seconds (subscriptions), fuel units or requests.
    pub quantity: Option<i64>,
    /// Price per `per` units of the quantity.
    pub unit_price: Option<i64>,
    pub per: Option<i64>,
    pub amount: i64,
    pub currency: String,
    /// The amount with its currency, e.g. `12.34 USD`.
    pub formatted: String,
    /// The arithmetic, in words.
    pub explanation: String,
    /// The plan revision the prices come from.
    pub plan_revision: Option<i64>,
    /// The subscription events, ledger rows and discounts behind the line.
    pub sources: Vec<String>,
}

/// What an invoice comes to in one currency.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Total {
    pub currency: String,
    pub amount: i64,
    pub formatted: String,
}

/// A line of the list of a tenant's invoices.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InvoiceSummary {
    pub id: String,
    pub period: String,
    pub state: String,
    pub lines: usize,
    pub totals: Vec<Total>,
}

/// Usage of one instance accounted by a closed invoice.
struct Accounted {
    instance: String,
    requests: i64,
    fuel: i64,
}

/// A subscribed time range of one item (the service or a module) of an instance.
struct Range {
    from: i64,
    to: i64,
    sources: Vec<String>,
}

#[derive(Default, Clone, Copy)]
struct Amounts {
    requests: i64,
    jobs: i64,
    fuel: i64,
}

/// The ledger rows of one instance in the period, and what they came to.
struct InstanceUsage {
    billed: Amounts,
    late: Amounts,
    rows: usize,
    dropped_rows: usize,
    /// Rows before the service's first plan took effect.
    unpriced_rows: usize,
    first_hour: Option<i64>,
    last_hour: Option<i64>,
    /// Billed rows by hour (for discounts limited in time).
    by_hour: Vec<(i64, Amounts)>,
}

pub fn invoice_id(tenant: &str, period: Period) -> String {
    format!("inv-{tenant}-{period}")
}

impl Billing {
    /// The invoice of `tenant` for `period`: the stored one once closed, else
    /// computed now from the records; while the period runs, accrued to now,
    /// with what it is projected to come to at its end.
    pub async fn invoice(&self, tenant: &str, period: Period) -> Result<Invoice, BillingError> {
        if let Some(closed) = self.stored(tenant, period).await? {
            return Ok(closed);
        }
        let now = self.now();
        let (mut invoice, _) = self.compute(tenant, period, false, now.min(period.end())).await?;
        if now < period.end() {
            let (projected, _) = self.compute(tenant, period, false, period.end()).await?;
            invoice.accrued_until = Some(now);
            invoice.projected = Some(projected.totals);
        }
        Ok(invoice)
    }

    /// The current period's invoice so far (the running total), with its projection.
    pub async fn running(&self, tenant: &str) -> Result<Invoice, BillingError> {
        self.invoice(tenant, Period::containing(self.now())).await
    }

    /// What `tenant` owes for the current period so far (spending limits
    /// apply to this, not to the month's projection).
    pub async fn accrued(&self, tenant: &str) -> Result<Invoice, BillingError> {
        let now = self.now();
        Ok(self.compute(tenant, Period::containing(now), false, now).await?.0)
    }

    async fn stored(&self, tenant: &str, period: Period) -> Result<Option<Invoice>, BillingError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT document FROM invoices WHERE id = $1")
            .bind(invoice_id(tenant, period))
            .fetch_optional(&self.db)
            .await?;
        row.map(|(doc,)| serde_json::from_str(&doc).context("a stored invoice is unreadable").map_err(Into::into))
            .transpose()
    }

    /// A tenant's invoices: every closed one and the current period's, newest first.
    pub async fn invoices(&self, tenant: &str) -> Result<Vec<InvoiceSummary>, BillingError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT document FROM invoices WHERE tenant_id = $1 ORDER BY period DESC")
                .bind(tenant)
                .fetch_all(&self.db)
                .await?;
        let mut list = Vec::new();
        let current = Period::containing(self.now());
        let mut pending = Vec::new();
        // Periods over but not closed yet, then the current one.
        let first_open = match rows.first() {
            Some((doc,)) => {
                let latest: Invoice = serde_json::from_str(doc).context("a stored invoice is unreadable")?;
                Period::parse(&latest.period).map(Period::next)
            }
            None => self.first_period(tenant).await?,
        };
        let last = self.last_period(tenant).await?;
        if let Some(mut period) = first_open {
            while period <= current && last.is_none_or(|last| period <= last) {
                pending.push(period);
                period = period.next();
            }
        }
        for period in pending.into_iter().rev() {
            let until = self.now().min(period.end());
            list.push(summary(&self.compute(tenant, period, false, until).await?.0));
        }
        for (doc,) in rows {
            let invoice: Invoice = serde_json::from_str(&doc).context("a stored invoice is unreadable")?;
            list.push(summary(&invoice));
        }
        Ok(list)
    }

    /// The period of a tenant's first subscription event.
    async fn first_period(&self, tenant: &str) -> Result<Option<Period>, BillingError> {
        let (first,): (Option<i64>,) = sqlx::query_as("SELECT MIN(at) FROM subscription_events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&self.db)
            .await?;
        Ok(first.map(Period::containing))
    }

    /// Close `tenant`'s invoice for `period` (and any earlier period still
    /// open, in order). Closing a closed invoice returns it unchanged.
    pub async fn close(&self, tenant: &str, period: Period) -> Result<Invoice, BillingError> {
        if self.now() < period.end() {
            return Err(BillingError::PeriodOpen { period: period.to_string(), ends: format_utc(period.end()) });
        }
        if let Some(closed) = self.stored(tenant, period).await? {
            return Ok(closed);
        }
        let (latest,): (Option<String>,) =
            sqlx::query_as("SELECT MAX(period) FROM invoices WHERE tenant_id = $1 AND period < $2")
                .bind(tenant)
                .bind(period.to_string())
                .fetch_one(&self.db)
                .await?;
        let mut next = match latest.as_deref().and_then(Period::parse) {
            Some(latest) => latest.next(),
            None => self.first_period(tenant).await?.unwrap_or(period).min(period),
        };
        while next < period {
            Box::pin(self.close_one(tenant, next)).await?;
            next = next.next();
        }
        self.close_one(tenant, period).await
    }

    async fn close_one(&self, tenant: &str, period: Period) -> Result<Invoice, BillingError> {
        let (mut invoice, accounted) = self.compute(tenant, period, true, period.end()).await?;
        invoice.state = "closed".to_string();
        invoice.closed_at = Some(self.now());
        let mut tx = crate::store::begin(&self.db).await?;
        let inserted = sqlx::query(
            "INSERT INTO invoices (id, tenant_id, period, closed_at, document) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&invoice.id)
        .bind(tenant)
        .bind(&invoice.period)
        .bind(self.now())
        .bind(serde_json::to_string(&invoice).context("invoice")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Another node closed it first: its document is the invoice.
            drop(tx);
            return self.stored(tenant, period).await?.context("a closed invoice vanished").map_err(Into::into);
        }
        for a in &accounted {
            sqlx::query(
                "INSERT INTO invoice_usage (invoice_id, instance_id, tenant_id, requests, fuel) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&invoice.id)
            .bind(&a.instance)
            .bind(tenant)
            .bind(a.requests)
            .bind(a.fuel)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(invoice = %invoice.id, lines = invoice.lines.len(), "invoice closed");
        Ok(invoice)
    }

    /// Close every invoice whose period ended more than `grace` seconds ago.
    /// A deleted tenant's last invoice is for the month its last subscription
    /// ended in (its deletion ended them all).
    pub async fn close_due(&self, grace: i64) -> Result<usize, BillingError> {
        let due = Period::containing(self.now() - grace);
        let spans: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT tenant_id, MIN(at), MAX(at) FROM subscription_events GROUP BY tenant_id")
                .fetch_all(&self.db)
                .await?;
        let latest: BTreeMap<String, String> =
            sqlx::query_as::<_, (String, String)>("SELECT tenant_id, MAX(period) FROM invoices GROUP BY tenant_id")
                .fetch_all(&self.db)
                .await?
                .into_iter()
                .collect();
        let deleted: BTreeSet<String> =
            sqlx::query_as::<_, (String,)>("SELECT id FROM tenants WHERE deleted_at IS NOT NULL")
                .fetch_all(&self.db)
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect();
        let mut closed = 0;
        let mut last_periods = BTreeMap::new();
        for (tenant, first, last_event) in spans {
            let mut next = match latest.get(&tenant).and_then(|p| Period::parse(p)) {
                Some(p) => p.next(),
                None => Period::containing(first),
            };
            let last = deleted.contains(&tenant).then(|| Period::containing(last_event));
            while next < due && last.is_none_or(|last| next <= last) {
                self.close_one(&tenant, next).await?;
                closed += 1;
                next = next.next();
            }
            if let Some(last) = last {
                last_periods.insert(tenant, (last, next > last));
            }
        }
        self.forget_billed_tenants(&deleted, &last_periods).await?;
        Ok(closed)
    }

    /// The last period a tenant is billed for: the month its last subscription
    /// ended in once it is deleted; `None` while it lives (or was never billed).
    async fn last_period(&self, tenant: &str) -> Result<Option<Period>, BillingError> {
        let (last,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(e.at) FROM subscription_events e JOIN tenants t ON t.id = e.tenant_id \
             WHERE e.tenant_id = $1 AND t.deleted_at IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&self.db)
        .await?;
        Ok(last.map(Period::containing))
    }

    /// A purged tenant's billing details are kept until its last invoice is
    /// closed (that invoice, like every closed one, carries the details it
    /// was addressed to), then destroyed; at once if it was never billed.
    /// `last_periods`: each deleted tenant's last period and whether it is closed.
    async fn forget_billed_tenants(
        &self,
        deleted: &BTreeSet<String>,
        last_periods: &BTreeMap<String, (Period, bool)>,
    ) -> Result<(), BillingError> {
        if deleted.is_empty() {
            return Ok(());
        }
        let kept: Vec<(String,)> = sqlx::query_as(
            "SELECT b.tenant_id FROM billing_accounts b JOIN tenants t ON t.id = b.tenant_id WHERE t.purged_at IS NOT NULL",
        )
        .fetch_all(&self.db)
        .await?;
        for (tenant,) in kept {
            if last_periods.get(&tenant).is_none_or(|(_, closed)| *closed) {
                sqlx::query("DELETE FROM billing_accounts WHERE tenant_id = $1")
                    .bind(&tenant)
                    .execute(&self.db)
                    .await?;
                tracing::info!(%tenant, "billing details of a purged tenant destroyed: its last invoice is closed");
            }
        }
        Ok(())
    }

    /// Compute the invoice with subscriptions accrued up to `until` (the
    /// period's end for a finished one) and, when `closing`, the usage it
    /// accounts for.
    async fn compute(
        &self,
        tenant: &str,
        period: Period,
        closing: bool,
        until: i64,
    ) -> Result<(Invoice, Vec<Accounted>), BillingError> {
        let (start, end) = (period.start(), period.end());
        let until = until.clamp(start, end);
        let period_secs = end - start;
        let events = self.events(tenant, None, end).await?;
        let mut by_instance: BTreeMap<&str, Vec<&SubscriptionEvent>> = BTreeMap::new();
        for event in &events {
            by_instance.entry(event.instance.as_str()).or_default().push(event);
        }
        // The latest closed invoice before this period, and its accounted usage.
        let (previous,): (Option<String>,) =
            sqlx::query_as("SELECT MAX(period) FROM invoices WHERE tenant_id = $1 AND period < $2")
                .bind(tenant)
                .bind(period.to_string())
                .fetch_one(&self.db)
                .await?;
        let previous = previous.as_deref().and_then(Period::parse);
        let discounts: Vec<Discount> = self
            .discounts(Some(tenant))
            .await?
            .into_iter()
            .filter(|d| d.starts_at < end && d.ends_at.is_none_or(|e| e > start))
            .collect();

        let mut plans: BTreeMap<String, Option<Plan>> = BTreeMap::new();
        let mut accounted = Vec::new();
        let mut draft = Draft {
            start,
            end,
            until,
            period_secs,
            period,
            discounts: &discounts,
            lines: Vec::new(),
            eligible: vec![BTreeMap::new(); discounts.len()],
        };
        for (instance, events) in by_instance {
            let service = events[0].service.clone();
            if !plans.contains_key(&service) {
                let plan = self.plan_for(&service, period).await?;
                plans.insert(service.clone(), plan);
            }
            let plan = plans[&service].clone();
            // A service first priced during the period bills from then: time
            // before any plan existed is not billed.
            let priced_from = plan.as_ref().map(|p| p.effective_from).filter(|from| *from > start);
            let (items, active) = draft.subscribed(&service, &events, priced_from);
            // Usage is accounted for by a closed invoice even when unpriced: a
            // plan set later bills from then on, not the past.
            let usage = self.usage_of(tenant, instance, period, previous, closing, &active, priced_from).await?;
            accounted.push(Accounted {
                instance: instance.to_string(),
                requests: usage.0.requests,
                fuel: usage.0.fuel,
            });
            let usage = usage.1;
            let Some(plan) = plan else { continue };
            draft.subscription_lines(instance, &service, &plan, &items);
            draft.usage_lines(instance, &service, &plan, &usage, priced_from);
        }
        draft.discount_lines();
        let invoice = self.invoice_of(tenant, period, draft.lines).await?;
        Ok((invoice, accounted))
    }

    /// The invoice of `tenant` for `period` with `lines`, totalled per currency.
    async fn invoice_of(&self, tenant: &str, period: Period, lines: Vec<Line>) -> Result<Invoice, BillingError> {
        let (start, end) = (period.start(), period.end());
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for line in &lines {
            *totals.entry(line.currency.clone()).or_default() += line.amount;
        }
        let now = self.now();
        Ok(Invoice {
            id: invoice_id(tenant, period),
            tenant: tenant.to_string(),
            period: period.to_string(),
            starts_at: start,
            ends_at: end,
            state: if now < end { "open" } else { "ended" }.to_string(),
            closed_at: None,
            bill_to: self.account(tenant).await?.details,
            lines,
            totals: totals
                .into_iter()
                .map(|(currency, amount)| Total { formatted: money::format(amount, &currency), currency, amount })
                .collect(),
            accrued_until: None,
            projected: None,
            rounding: ROUNDING.to_string(),
        })
    }

    /// An instance's usage for `period`: (what closing it accounts for, what
    /// it bills). Billed: hours the subscription was active in, from the hour
    /// `priced_from` falls in (a service first priced during the period).
    #[allow(clippy::too_many_arguments)]
    async fn usage_of(
        &self,
        tenant: &str,
        instance: &str,
        period: Period,
        previous: Option<Period>,
        closing: bool,
        active: &[(i64, i64)],
        priced_from: Option<i64>,
    ) -> Result<(Amounts, InstanceUsage), BillingError> {
        let (start, end) = (period.start(), period.end());
        let sum = |before: i64| {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT), CAST(COALESCE(SUM(jobs), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(fuel), 0) AS BIGINT) FROM usage_ledger WHERE instance_id = $1 AND hour < $2",
            )
            .bind(instance)
            .bind(before)
            .fetch_one(&self.db)
        };
        // Usage before the period not yet accounted by a closed invoice. While
        // the periods between the last closed invoice and this one are still
        // open, only what arrived late for the closed one counts here (the rest
        // is theirs).
        let mut late = Amounts::default();
        if let Some(previous) = previous {
            let (requests, fuel): (i64, i64) =
                sqlx::query_as("SELECT requests, fuel FROM invoice_usage WHERE invoice_id = $1 AND instance_id = $2")
                    .bind(invoice_id(tenant, previous))
                    .bind(instance)
                    .fetch_optional(&self.db)
                    .await?
                    .unwrap_or((0, 0));
            let until = if closing || previous.next() == period { start } else { previous.end() };
            let (r, _, f) = sum(until).await?;
            late = Amounts { requests: (r - requests).max(0), jobs: 0, fuel: (f - fuel).max(0) };
        }
        let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT hour, requests, jobs, fuel FROM usage_ledger WHERE instance_id = $1 AND hour >= $2 AND hour < $3 \
             ORDER BY hour",
        )
        .bind(instance)
        .bind(start)
        .bind(end)
        .fetch_all(&self.db)
        .await?;
        let mut usage = InstanceUsage {
            billed: late,
            late,
            rows: 0,
            dropped_rows: 0,
            unpriced_rows: 0,
            first_hour: None,
            last_hour: None,
            by_hour: Vec::new(),
        };
        for (hour, requests, jobs, fuel) in rows {
            if priced_from.is_some_and(|from| hour + 3600 <= from) {
                usage.unpriced_rows += 1;
                continue;
            }
            // Billed only for hours the subscription was active in.
            if !active.iter().any(|(from, to)| *from < hour + 3600 && hour < *to) {
                usage.dropped_rows += 1;
                continue;
            }
            usage.rows += 1;
            usage.first_hour.get_or_insert(hour);
            usage.last_hour = Some(hour);
            usage.billed.requests += requests;
            usage.billed.jobs += jobs;
            usage.billed.fuel += fuel;
            usage.by_hour.push((hour, Amounts { requests, jobs, fuel }));
        }
        let accounted = if closing {
            let (requests, jobs, fuel) = sum(end).await?;
            Amounts { requests, jobs, fuel }
        } else {
            Amounts::default()
        };
        Ok((accounted, usage))
    }
}

mod draft;
mod html;

use draft::{summary, Draft};
pub use html::html;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::draft::{percent, proration};
    use super::html::escape;

    #[test]
    fn prorations_read_well() {
        assert_eq!(proration(9 * 86_400, 31 * 86_400), "9 of 31 days");
        assert_eq!(proration(3600, 31 * 86_400), "0.13% of the month");
        assert_eq!(percent(1250), "12.5");
        assert_eq!(percent(10_000), "100");
        assert_eq!(escape("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
