//! Billing accounts: the details printed on a tenant's invoices, its spending
//! limit, and its suspension when the limit is reached.

use super::*;

impl Billing {
    pub async fn account(&self, tenant: &str) -> Result<Account, BillingError> {
        type Row = (String, String, String, String, Option<i64>, Option<String>, Option<String>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT name, address, tax_id, email, spending_limit, limit_currency, suspended_reason \
             FROM billing_accounts WHERE tenant_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&self.db)
        .await?;
        Ok(match row {
            Some((name, address, tax_id, email, spending_limit, limit_currency, suspended)) => Account {
                tenant: tenant.to_string(),
                details: Details { name, address, tax_id, email },
                spending_limit,
                limit_currency,
                suspended,
            },
            None => Account { tenant: tenant.to_string(), ..Account::default() },
        })
    }

    async fn ensure_account(&self, tenant: &str) -> Result<(), BillingError> {
        sqlx::query(
            "INSERT INTO billing_accounts (tenant_id, updated_at) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(self.now())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    pub async fn set_details(&self, tenant: &str, details: Details) -> Result<Account, BillingError> {
        details.check()?;
        self.ensure_account(tenant).await?;
        sqlx::query(
            "UPDATE billing_accounts SET name = $1, address = $2, tax_id = $3, email = $4, updated_at = $5 \
             WHERE tenant_id = $6",
        )
        .bind(&details.name)
        .bind(&details.address)
        .bind(&details.tax_id)
        .bind(&details.email)
        .bind(self.now())
        .bind(tenant)
        .execute(&self.db)
        .await?;
        self.account(tenant).await
    }

    /// Set (or with `None` remove) a tenant's spending limit per period.
    pub async fn set_limit(&self, tenant: &str, limit: Option<(i64, String)>) -> Result<Account, BillingError> {
        if let Some((amount, currency)) = &limit {
            if !money::is_currency(currency) {
                return Err(BillingError::InvalidLimit(format!("currency {currency:?} is not an ISO 4217 code")));
            }
            if !(0..=MAX_PRICE).contains(amount) {
                return Err(BillingError::InvalidLimit(format!("the amount must be 0 to {MAX_PRICE} minor units")));
            }
        }
        self.ensure_account(tenant).await?;
        sqlx::query(
            "UPDATE billing_accounts SET spending_limit = $1, limit_currency = $2, updated_at = $3 WHERE tenant_id = $4",
        )
        .bind(limit.as_ref().map(|l| l.0))
        .bind(limit.as_ref().map(|l| l.1.clone()))
        .bind(self.now())
        .bind(tenant)
        .execute(&self.db)
        .await?;
        self.account(tenant).await
    }

    /// Tenants with a spending limit: (tenant, limit, currency, suspended reason).
    pub async fn limited_tenants(&self) -> Result<Vec<(String, i64, String, Option<String>)>, BillingError> {
        Ok(sqlx::query_as(
            "SELECT tenant_id, spending_limit, limit_currency, suspended_reason FROM billing_accounts \
             WHERE spending_limit IS NOT NULL AND limit_currency IS NOT NULL",
        )
        .fetch_all(&self.db)
        .await?)
    }

    /// Suspend a tenant (`Some(reason)`) or lift its suspension (`None`); the
    /// platform generation of the change, if it changed anything (the caller
    /// then reloads its routes; other nodes hear of it).
    pub async fn set_suspended(&self, tenant: &str, reason: Option<&str>) -> Result<Option<i64>, BillingError> {
        let mut tx = crate::store::begin(&self.db).await?;
        let changed = sqlx::query(
            "UPDATE billing_accounts SET suspended_reason = $1, suspended_at = $2 WHERE tenant_id = $3 \
             AND ((suspended_reason IS NULL) <> ($1 IS NULL) OR suspended_reason <> $1)",
        )
        .bind(reason)
        .bind(reason.map(|_| self.now()))
        .bind(tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let generation = if changed > 0 {
            Some(
                store::bump_generation_for(&mut tx, store::Change::Tenant(tenant))
                    .await
                    .context("failed to record the change")?,
            )
        } else {
            None
        };
        tx.commit().await?;
        Ok(generation)
    }
}
