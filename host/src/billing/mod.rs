//! Usage metering, the seed of billing: requests, fuel and errors per instance.
//!
//! The request path only adds to atomic counters held by the instance's route. A
//! flusher moves the pending amounts into `usage_totals` every second (and at
//! shutdown), so reading usage is the stored total plus what is still pending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use dashmap::DashMap;
use serde::Serialize;

use crate::store::Db;

/// Amounts not yet written to the database.
#[derive(Debug, Default)]
pub struct UsageCounters {
    requests: AtomicU64,
    jobs: AtomicU64,
    fuel: AtomicU64,
    errors: AtomicU64,
}

impl UsageCounters {
    /// Count one finished request.
    pub fn record(&self, fuel: u64, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count one finished job run (a seeder's included).
    pub fn record_job(&self, fuel: u64, failed: bool) {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> UsageTotals {
        UsageTotals {
            jobs: self.jobs.swap(0, Ordering::Relaxed),
            requests: self.requests.swap(0, Ordering::Relaxed),
            fuel: self.fuel.swap(0, Ordering::Relaxed),
            errors: self.errors.swap(0, Ordering::Relaxed),
        }
    }

    fn put_back(&self, t: &UsageTotals) {
        self.requests.fetch_add(t.requests, Ordering::Relaxed);
        self.jobs.fetch_add(t.jobs, Ordering::Relaxed);
        self.fuel.fetch_add(t.fuel, Ordering::Relaxed);
        self.errors.fetch_add(t.errors, Ordering::Relaxed);
    }

    fn peek(&self) -> UsageTotals {
        UsageTotals {
            jobs: self.jobs.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            fuel: self.fuel.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// What an instance has used so far.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UsageTotals {
    /// Requests that reached the guest.
    pub requests: u64,
    /// Job runs (attempts, seeders included).
    pub jobs: u64,
    /// Fuel consumed by those requests and jobs.
    pub fuel: u64,
    /// Requests and job runs whose guest failed (trap, fuel, memory, deadline).
    pub errors: u64,
}

impl UsageTotals {
    fn is_zero(&self) -> bool {
        self.requests == 0 && self.jobs == 0 && self.fuel == 0 && self.errors == 0
    }
}

/// Usage of one instance, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceUsage {
    pub instance: String,
    pub tenant: String,
    pub service: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Usage counters of every instance on this node.
pub struct Usage {
    db: Db,
    counters: DashMap<String, Arc<UsageCounters>>,
}

impl Usage {
    /// Usage backed by `db`.
    pub fn new(db: Db) -> Self {
        Self { db, counters: DashMap::new() }
    }

    /// The counters of an instance (created on first use).
    pub fn counters(&self, instance: &str) -> Arc<UsageCounters> {
        self.counters.entry(instance.to_string()).or_default().clone()
    }

    /// Stored totals plus pending amounts of one instance.
    pub async fn totals(&self, instance: &str) -> anyhow::Result<UsageTotals> {
        let row: Option<(i64, i64, i64, i64)> =
            sqlx::query_as("SELECT requests, jobs, fuel, errors FROM usage_totals WHERE instance_id = $1")
                .bind(instance)
                .fetch_optional(&self.db)
                .await
                .context("failed to read usage")?;
        let (requests, jobs, fuel, errors) = row.unwrap_or_default();
        let pending = self.counters.get(instance).map(|c| c.peek()).unwrap_or_default();
        Ok(UsageTotals {
            requests: requests as u64 + pending.requests,
            jobs: jobs as u64 + pending.jobs,
            fuel: fuel as u64 + pending.fuel,
            errors: errors as u64 + pending.errors,
        })
    }

    /// Write every pending amount to the database. Amounts whose write fails stay
    /// pending for the next flush, so nothing is lost or counted twice.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let pending: Vec<(String, Arc<UsageCounters>)> =
            self.counters.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        for (instance, counters) in pending {
            let delta = counters.take();
            if delta.is_zero() {
                continue;
            }
            let written = sqlx::query(
                "INSERT INTO usage_totals (instance_id, requests, fuel, errors, jobs) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (instance_id) DO UPDATE SET requests = usage_totals.requests + excluded.requests, \
                 fuel = usage_totals.fuel + excluded.fuel, errors = usage_totals.errors + excluded.errors, \
                 jobs = usage_totals.jobs + excluded.jobs",
            )
            .bind(&instance)
            .bind(delta.requests as i64)
            .bind(delta.fuel as i64)
            .bind(delta.errors as i64)
            .bind(delta.jobs as i64)
            .execute(&self.db)
            .await;
            if let Err(e) = written {
                counters.put_back(&delta);
                return Err(e).with_context(|| format!("failed to write usage of instance {instance:?}"));
            }
        }
        Ok(())
    }
}
