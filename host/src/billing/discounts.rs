//! Discounts: a percentage or a fixed amount per period, for a tenant, a
//! service or both, over a time range; each is its own line on an invoice.

use super::*;

impl Billing {
    /// The discount `new` asks for, or why it cannot be.
    fn checked(&self, new: NewDiscount) -> Result<Discount, BillingError> {
        let bad = |why: &str| Err(BillingError::InvalidDiscount(why.to_string()));
        let basis_points = match &new.percent {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return bad("percent is a number such as 12.5"),
        }
        .map(|p| money::percent_to_basis_points(&p).ok_or(()))
        .transpose()
        .map_err(|_| {
            BillingError::InvalidDiscount(
                "percent must be more than 0 and at most 100, with at most two decimals".to_string(),
            )
        })?;
        match (basis_points, new.amount) {
            (Some(_), Some(_)) | (None, None) => return bad("give either percent or amount (with currency)"),
            (None, Some(amount)) => {
                if !(1..=MAX_PRICE).contains(&amount) {
                    return bad("amount must be 1 to 10^12 minor units");
                }
                if !new.currency.as_deref().is_some_and(money::is_currency) {
                    return bad("a fixed amount needs its currency, an ISO 4217 code such as USD");
                }
            }
            (Some(_), None) => {
                if new.currency.is_some() {
                    return bad("a percentage has no currency");
                }
            }
        }
        if new.tenant.is_none() && new.service.is_none() {
            return bad("say whom it is for: a tenant, a service, or both");
        }
        if let Some(service) = &new.service {
            if self.registry.slot(service).is_none() {
                return Err(BillingError::UnknownService(service.clone()));
            }
        }
        let time = |v: &Option<serde_json::Value>, name: &str| -> Result<Option<i64>, BillingError> {
            v.as_ref()
                .map(|v| {
                    time_value(v).ok_or_else(|| {
                        BillingError::InvalidDiscount(format!("{name} is Unix seconds or a date such as 2027-01-10"))
                    })
                })
                .transpose()
        };
        let starts_at = time(&new.starts_at, "starts_at")?.unwrap_or_else(|| self.now());
        let ends_at = time(&new.ends_at, "ends_at")?;
        if ends_at.is_some_and(|e| e <= starts_at) {
            return bad("ends_at must be after starts_at");
        }
        let description = new.description.unwrap_or_default().trim().to_string();
        if description.chars().count() > 200 {
            return bad("the description is longer than 200 characters");
        }
        let discount = Discount {
            id: format!("disc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            tenant: new.tenant,
            service: new.service,
            basis_points,
            amount: new.amount,
            currency: new.currency,
            starts_at,
            ends_at,
            description,
        };
        Ok(discount)
    }

    /// Add a discount (an operator's, `by`).
    pub async fn add_discount(&self, new: NewDiscount, by: &str) -> Result<Discount, BillingError> {
        let discount = self.checked(new)?;
        sqlx::query(
            "INSERT INTO discounts (id, tenant_id, service, basis_points, amount, currency, starts_at, ends_at, \
             description, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&discount.id)
        .bind(&discount.tenant)
        .bind(&discount.service)
        .bind(discount.basis_points)
        .bind(discount.amount)
        .bind(&discount.currency)
        .bind(discount.starts_at)
        .bind(discount.ends_at)
        .bind(&discount.description)
        .bind(by)
        .bind(self.now())
        .execute(&self.db)
        .await?;
        Ok(discount)
    }

    /// Discounts for `tenant` (its own and its services'), or every one.
    pub async fn discounts(&self, tenant: Option<&str>) -> Result<Vec<Discount>, BillingError> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            i64,
            Option<i64>,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, tenant_id, service, basis_points, amount, currency, starts_at, ends_at, description \
             FROM discounts WHERE ($1 = '' OR tenant_id = $1 OR tenant_id IS NULL) ORDER BY starts_at, id",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.db)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, service, basis_points, amount, currency, starts_at, ends_at, description)| Discount {
                id,
                tenant,
                service,
                basis_points,
                amount,
                currency,
                starts_at,
                ends_at,
                description,
            })
            .collect())
    }

    /// Remove a discount. Closed invoices keep the lines it gave.
    pub async fn remove_discount(&self, id: &str) -> Result<(), BillingError> {
        let gone = sqlx::query("DELETE FROM discounts WHERE id = $1").bind(id).execute(&self.db).await?.rows_affected();
        if gone == 0 {
            return Err(BillingError::UnknownDiscount(id.to_string()));
        }
        Ok(())
    }
}
