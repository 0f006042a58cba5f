//! `wharf plan`, `wharf invoice`, `wharf billing`, `wharf discount`, `wharf clock`.
//! Amounts are written in major units (`31.00`) and sent as minor units.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{self, Client};
use super::output::{self, Output};
use crate::billing::money;

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Set a service's prices (a new revision; it applies from the next
    /// billing period, or at once for a service's first plan).
    Set {
        service: String,
        /// ISO 4217 code.
        #[arg(long)]
        currency: String,
        /// The service, per month (pro-rated by the second), e.g. 31.00.
        #[arg(long, default_value = "0")]
        period_price: String,
        /// A module's price per month, `ID=PRICE` (repeatable), e.g. `polls=6.20`.
        #[arg(long = "module", value_name = "ID=PRICE")]
        modules: Vec<String>,
        /// Price per --fuel-unit units of fuel.
        #[arg(long, default_value = "0")]
        fuel_price: String,
        #[arg(long, default_value_t = crate::billing::DEFAULT_FUEL_UNIT)]
        fuel_unit: i64,
        /// Price per --request-unit requests.
        #[arg(long, default_value = "0")]
        request_price: String,
        #[arg(long, default_value_t = crate::billing::DEFAULT_REQUEST_UNIT)]
        request_unit: i64,
    },
    /// A service's current prices and their history.
    Show { service: String },
}

#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// A tenant's invoices: closed ones and the periods still open.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// One invoice, every line with how it was reached.
    Show {
        #[arg(long)]
        tenant: String,
        /// `YYYY-MM`, or `current` for the running total.
        #[arg(default_value = "current")]
        period: String,
        /// Print the readable HTML page instead.
        #[arg(long)]
        html: bool,
    },
    /// Download every invoice (JSON and HTML) and the subscription events as
    /// one tar archive.
    Export {
        #[arg(long)]
        tenant: String,
        /// Where to write it (default: TENANT-invoices.tar).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Close an ended period's invoice now (operators; it closes by itself
    /// an hour after the period).
    Close {
        #[arg(long)]
        tenant: String,
        period: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Billing details, spending limit, suspension and the running total.
    Show {
        #[arg(long)]
        tenant: String,
    },
    /// Set the details printed on invoices (replaces all four).
    Details {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(long, default_value = "")]
        tax_id: String,
        #[arg(long, default_value = "")]
        email: String,
    },
    /// Set a spending limit per month (instances answer 402 once the running
    /// total reaches it), or remove it with `none`.
    Limit {
        #[arg(long)]
        tenant: String,
        /// An amount such as 50.00, or `none`.
        amount: String,
        #[arg(long)]
        currency: Option<String>,
    },
    /// Subscription events: what each instance was billed for, from when.
    Events {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DiscountCommand {
    /// Add a discount (operators): a percentage or a fixed amount per month.
    Add {
        /// For this tenant (else every tenant using --service).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this service's charges.
        #[arg(long)]
        service: Option<String>,
        /// A percentage, e.g. 12.5.
        #[arg(long, conflicts_with = "amount")]
        percent: Option<String>,
        /// A fixed amount per month, e.g. 5.00 (with --currency).
        #[arg(long, requires = "currency")]
        amount: Option<String>,
        #[arg(long)]
        currency: Option<String>,
        /// From (default now): a date such as 2027-01-01 or Unix seconds.
        #[arg(long)]
        from: Option<String>,
        /// Until (exclusive; default open-ended).
        #[arg(long)]
        until: Option<String>,
        /// Shown on the invoice line.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Discounts (all, for operators; or those applying to a tenant).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Remove a discount (closed invoices keep its lines).
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// The billing clock.
    Show,
    /// Move it to a time (`2027-01-10`, `2027-01-10T08:00Z`, Unix seconds);
    /// only on a node started with --settable-clock, and only forward.
    Set { time: String },
    /// Move it forward by a duration: `90s`, `45m`, `3h`, `10d`.
    Advance { by: String },
}

fn amount(text: &str, currency: &str, what: &str) -> anyhow::Result<i64> {
    money::parse(text, currency).with_context(|| {
        format!(
            "{what} {text:?} is not an amount of {currency} (e.g. 31.00, at most {} decimals)",
            money::minor_digits(currency)
        )
    })
}

pub async fn plan(client: &Client, out: &Output, command: PlanCommand) -> anyhow::Result<()> {
    match command {
        PlanCommand::Set {
            service,
            currency,
            period_price,
            modules,
            fuel_price,
            fuel_unit,
            request_price,
            request_unit,
        } => {
            let mut module_prices = serde_json::Map::new();
            for module in modules {
                let (id, price) = module.split_once('=').context("--module is ID=PRICE, e.g. polls=6.20")?;
                module_prices.insert(id.to_string(), json!(amount(price, &currency, "the price of module")?));
            }
            let body = json!({
                "currency": currency,
                "period_price": amount(&period_price, &currency, "--period-price")?,
                "module_prices": module_prices,
                "fuel_price": amount(&fuel_price, &currency, "--fuel-price")?,
                "fuel_unit": fuel_unit,
                "request_price": amount(&request_price, &currency, "--request-price")?,
                "request_unit": request_unit,
            });
            let plan = client.put(&format!("/v1/services/{}/plan", client::encode(&service)), &body).await?;
            out.line(&plan, &format!("{service}: plan revision {} set", output::s(&plan, "revision")))
        }
        PlanCommand::Show { service } => {
            let plan = client.get(&format!("/v1/services/{}/plan", client::encode(&service))).await?;
            out.plan(&plan)
        }
    }
}

pub async fn invoice(client: &Client, out: &Output, command: InvoiceCommand) -> anyhow::Result<()> {
    match command {
        InvoiceCommand::List { tenant } => {
            out.invoices(&client.get(&format!("/v1/tenants/{}/invoices", client::encode(&tenant))).await?)
        }
        InvoiceCommand::Show { tenant, period, html } => {
            let path = format!("/v1/tenants/{}/invoices/{}", client::encode(&tenant), client::encode(&period));
            if html {
                let page = client.get(&format!("{path}?format=html")).await?;
                println!("{}", page.as_str().unwrap_or_default());
                return Ok(());
            }
            out.invoice(&client.get(&path).await?)
        }
        InvoiceCommand::Export { tenant, output } => {
            let bytes = client.download(&format!("/v1/tenants/{}/invoices/export", client::encode(&tenant))).await?;
            let path = output.unwrap_or_else(|| format!("{tenant}-invoices.tar").into());
            std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
            let done = json!({ "tenant": tenant, "file": path, "bytes": bytes.len() });
            out.line(&done, &format!("{tenant}'s invoices are in {} ({} bytes)", path.display(), bytes.len()))
        }
        InvoiceCommand::Close { tenant, period } => {
            let path = format!("/v1/tenants/{}/invoices/{}/close", client::encode(&tenant), client::encode(&period));
            out.invoice(&client.post(&path, &json!({})).await?)
        }
    }
}

pub async fn billing(client: &Client, out: &Output, command: BillingCommand) -> anyhow::Result<()> {
    match command {
        BillingCommand::Show { tenant } => {
            let account = client.get(&format!("/v1/tenants/{}/billing", client::encode(&tenant))).await?;
            out.account(&account)
        }
        BillingCommand::Details { tenant, name, address, tax_id, email } => {
            let body =
                json!({ "name": name, "address": address.replace("\\n", "\n"), "tax_id": tax_id, "email": email });
            let account =
                client.put(&format!("/v1/tenants/{}/billing/details", client::encode(&tenant)), &body).await?;
            out.line(&account, &format!("billing details of {tenant} saved"))
        }
        BillingCommand::Limit { tenant, amount: text, currency } => {
            let body = if text == "none" {
                json!({ "amount": null })
            } else {
                let currency = currency.context("a limit needs --currency (e.g. --currency USD)")?;
                json!({ "amount": amount(&text, &currency, "the limit")?, "currency": currency })
            };
            let account = client.put(&format!("/v1/tenants/{}/billing/limit", client::encode(&tenant)), &body).await?;
            let suspended = match account.get("suspended").and_then(Value::as_str) {
                Some(reason) => format!("; its instances answer 402: {reason}"),
                None => String::new(),
            };
            out.line(&account, &format!("spending limit of {tenant}: {text}{suspended}"))
        }
        BillingCommand::Events { tenant, instance } => {
            let mut path = format!("/v1/tenants/{}/subscriptions", client::encode(&tenant));
            if let Some(instance) = instance {
                path.push_str(&format!("?instance={}", client::encode(&instance)));
            }
            out.rows(
                &client.get(&path).await?,
                "events",
                &[
                    ("INSTANCE", "instance"),
                    ("#", "seq"),
                    ("AT", "at"),
                    ("ACTIVE", "active"),
                    ("VERSION", "version"),
                    ("MODULES", "modules"),
                    ("REASON", "reason"),
                ],
            )
        }
    }
}

pub async fn discount(client: &Client, out: &Output, command: DiscountCommand) -> anyhow::Result<()> {
    match command {
        DiscountCommand::Add { tenant, service, percent, amount: fixed, currency, from, until, description } => {
            let fixed = match (&fixed, &currency) {
                (Some(text), Some(currency)) => Some(amount(text, currency, "--amount")?),
                _ => None,
            };
            let body = json!({
                "tenant": tenant,
                "service": service,
                "percent": percent,
                "amount": fixed,
                "currency": currency,
                "starts_at": from,
                "ends_at": until,
                "description": description,
            });
            let discount = client.post("/v1/discounts", &body).await?;
            out.line(&discount, &format!("discount {} added", output::s(&discount, "id")))
        }
        DiscountCommand::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/v1/discounts?tenant={}", client::encode(&t)),
                None => "/v1/discounts".to_string(),
            };
            out.rows(
                &client.get(&path).await?,
                "discounts",
                &[
                    ("ID", "id"),
                    ("TENANT", "tenant"),
                    ("SERVICE", "service"),
                    ("BASIS POINTS", "basis_points"),
                    ("AMOUNT", "amount"),
                    ("CURRENCY", "currency"),
                    ("FROM", "starts_at"),
                    ("UNTIL", "ends_at"),
                    ("DESCRIPTION", "description"),
                ],
            )
        }
        DiscountCommand::Remove { id } => {
            let removed = client.delete(&format!("/v1/discounts/{}", client::encode(&id))).await?;
            out.line(&removed, &format!("discount {id} removed"))
        }
    }
}

/// `90s`, `45m`, `3h`, `10d` in seconds.
fn duration(text: &str) -> Option<i64> {
    let (number, unit) = text.trim().split_at(text.trim().len().checked_sub(1)?);
    let n: i64 = number.parse().ok().filter(|n| *n >= 0)?;
    n.checked_mul(match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    })
}

pub async fn clock(client: &Client, out: &Output, command: ClockCommand) -> anyhow::Result<()> {
    let now = match command {
        ClockCommand::Show => client.get("/v1/clock").await?,
        ClockCommand::Set { time } => client.post("/v1/clock", &json!({ "now": time })).await?,
        ClockCommand::Advance { by } => {
            let secs =
                duration(&by).with_context(|| format!("{by:?} is not a duration such as 90s, 45m, 3h or 10d"))?;
            client.post("/v1/clock", &json!({ "advance": secs })).await?
        }
    };
    let settable = if now.get("settable").and_then(Value::as_bool) == Some(true) { "settable" } else { "real time" };
    out.line(&now, &format!("{} ({settable})", output::s(&now, "utc")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(super::duration("90s"), Some(90));
        assert_eq!(super::duration("10d"), Some(864_000));
        assert_eq!(super::duration("3h"), Some(10_800));
        assert_eq!(super::duration("3w"), None);
        assert_eq!(super::duration(""), None);
    }
}
