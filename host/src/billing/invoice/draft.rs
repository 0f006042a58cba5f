//! An invoice as it is computed: each instance's subscribed ranges, its
//! subscription and usage lines, then the discounts.

use super::*;

/// Subscribed ranges per item: `(0, "")` the service, `(1, module)` a module.
type Items = BTreeMap<(u8, String), Vec<Range>>;

/// The lines of one invoice as they are computed, and what each discount
/// applies to.
pub(super) struct Draft<'a> {
    pub(super) start: i64,
    pub(super) end: i64,
    /// Subscriptions accrue up to here (the period's end once it is over).
    pub(super) until: i64,
    pub(super) period_secs: i64,
    pub(super) period: Period,
    pub(super) discounts: &'a [Discount],
    pub(super) lines: Vec<Line>,
    /// What each discount applies to, exactly, per currency.
    pub(super) eligible: Vec<BTreeMap<String, (Exact, i64)>>,
}

impl Draft<'_> {
    /// Subscribed ranges per item (the service, each module) of one instance,
    /// and every range it was active in (for usage).
    pub(super) fn subscribed(
        &self,
        service: &str,
        events: &[&SubscriptionEvent],
        priced_from: Option<i64>,
    ) -> (Items, Vec<(i64, i64)>) {
        let (start, end, until) = (self.start, self.end, self.until);
        // Subscribed ranges per item, and every active range (for usage).
        let mut items: BTreeMap<(u8, String), Vec<Range>> = BTreeMap::new();
        let mut active: Vec<(i64, i64)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let next = events.get(i + 1);
            let segment_end = next.map_or(end, |n| n.at.min(end));
            if !event.active {
                continue;
            }
            let stop = event.ends_at.map_or(segment_end, |e| e.min(segment_end));
            if stop > event.at {
                active.push((event.at, stop));
            }
            let from = event.at.max(start).max(priced_from.unwrap_or(start));
            let to = stop.min(until);
            if to <= from {
                continue;
            }
            let mut cites = vec![if event.at < start {
                format!("{} (before the period; in force at its start)", event.cite())
            } else {
                event.cite()
            }];
            if let Some(priced) = priced_from.filter(|p| *p == from) {
                cites.push(format!(
                    "{service} was first priced at {}: the time before it is not billed",
                    format_utc(priced)
                ));
            }
            if event.ends_at == Some(stop) {
                cites.push(format!("end date {} reached", format_utc(stop)));
            } else if let Some(next) = next.filter(|n| n.at == to) {
                cites.push(next.cite());
            }
            let mut add = |key: (u8, String)| {
                let ranges = items.entry(key).or_default();
                match ranges.last_mut() {
                    // Contiguous: the same subscription continues.
                    Some(last) if last.to == from => {
                        last.to = to;
                        last.sources.extend(cites.iter().skip(1).cloned());
                    }
                    _ => ranges.push(Range { from, to, sources: cites.clone() }),
                }
            };
            add((0, String::new()));
            for module in &event.modules {
                add((1, module.clone()));
            }
        }
        (items, active)
    }

    /// The service's and modules' lines of one instance, priced by `plan`.
    pub(super) fn subscription_lines(&mut self, instance: &str, service: &str, plan: &Plan, items: &Items) {
        let period_secs = self.period_secs;
        let (discounts, lines, eligible) = (self.discounts, &mut self.lines, &mut self.eligible);
        let prices = &plan.prices;
        let currency = prices.currency.clone();
        let service = service.to_string();
        for ((kind, module), ranges) in items {
            let (price, what) = if *kind == 0 {
                (prices.period_price, format!("{service} (instance {instance})"))
            } else {
                match prices.module_prices.get(module) {
                    Some(price) => (*price, format!("module {module} of {service} (instance {instance})")),
                    None => continue,
                }
            };
            if price == 0 {
                continue;
            }
            for range in ranges {
                let seconds = range.to - range.from;
                let amount = mul_div_round(price as i128, seconds as i128, period_secs as i128);
                for (d, discount) in discounts.iter().enumerate() {
                    if applies(discount, &service) {
                        let overlap =
                            range.to.min(discount.ends_at.unwrap_or(i64::MAX)) - range.from.max(discount.starts_at);
                        if overlap > 0 {
                            let entry = eligible[d].entry(currency.clone()).or_default();
                            entry.0.add(Exact::of(price, overlap, period_secs));
                            entry.1 += amount;
                        }
                    }
                }
                lines.push(Line {
                    kind: if *kind == 0 { "service" } else { "module" }.to_string(),
                    instance: Some(instance.to_string()),
                    service: Some(service.clone()),
                    module: (*kind == 1).then(|| module.clone()),
                    description: format!("{what}, {} to {}", format_utc(range.from), format_utc(range.to)),
                    from: Some(range.from),
                    to: Some(range.to),
                    quantity: Some(seconds),
                    unit_price: Some(price),
                    per: Some(period_secs),
                    amount,
                    formatted: money::format(amount, &currency),
                    currency: currency.clone(),
                    explanation: format!(
                        "{} per month × {seconds} s of the month's {period_secs} s ({})",
                        money::format(price, &currency),
                        proration(seconds, period_secs)
                    ),
                    plan_revision: Some(plan.revision),
                    sources: range.sources.clone(),
                });
            }
        }
    }

    /// The fuel and request lines of one instance, priced by `plan`.
    pub(super) fn usage_lines(
        &mut self,
        instance: &str,
        service: &str,
        plan: &Plan,
        usage: &InstanceUsage,
        priced_from: Option<i64>,
    ) {
        let (start, period) = (self.start, self.period);
        let (discounts, lines, eligible) = (self.discounts, &mut self.lines, &mut self.eligible);
        let prices = &plan.prices;
        let currency = prices.currency.clone();
        let service = service.to_string();
        let ledger = match (usage.first_hour, usage.last_hour) {
            (Some(first), Some(last)) => format!(
                "usage_ledger of {instance}: {} hourly rows, {} to {}",
                usage.rows,
                format_utc(first),
                format_utc(last + 3600)
            ),
            _ => format!("usage_ledger of {instance}: no rows in the period"),
        };
        for (kind, quantity, late, price, per, label) in [
            ("fuel", usage.billed.fuel, usage.late.fuel, prices.fuel_price, prices.fuel_unit, "fuel"),
            (
                "requests",
                usage.billed.requests,
                usage.late.requests,
                prices.request_price,
                prices.request_unit,
                "requests",
            ),
        ] {
            if price == 0 || quantity == 0 {
                continue;
            }
            let amount = mul_div_round(quantity as i128, price as i128, per as i128);
            count_eligible(discounts, eligible, &service, usage, kind, (&currency, price, per), amount);
            let mut sources = vec![ledger.clone()];
            let mut explanation = format!("{quantity} {label} × {} per {per} {label}", money::format(price, &currency));
            if kind == "fuel" {
                let _ = write!(
                    explanation,
                    " (from {} requests and {} job runs, host calls included)",
                    usage.billed.requests, usage.billed.jobs
                );
            }
            if late > 0 {
                let _ = write!(explanation, "; {late} of them recorded for earlier periods after their invoice closed");
                sources.push(format!("usage_ledger of {instance}: rows before {} recorded late", format_utc(start)));
            }
            sources.extend(unbilled_rows(&service, usage, priced_from));
            lines.push(Line {
                kind: kind.to_string(),
                instance: Some(instance.to_string()),
                service: Some(service.clone()),
                module: None,
                description: format!("{label} of {service} (instance {instance}), {period}"),
                from: None,
                to: None,
                quantity: Some(quantity),
                unit_price: Some(price),
                per: Some(per),
                amount,
                formatted: money::format(amount, &currency),
                currency: currency.clone(),
                explanation,
                plan_revision: Some(plan.revision),
                sources,
            });
        }
    }

    /// A line per discount and currency, from exactly what it covers.
    pub(super) fn discount_lines(&mut self) {
        let (start, end) = (self.start, self.end);
        let (discounts, lines, eligible) = (self.discounts, &mut self.lines, &self.eligible);
        for (d, discount) in discounts.iter().enumerate() {
            for (currency, (exact, line_total)) in &eligible[d] {
                let (amount, explanation) = match (discount.basis_points, discount.amount) {
                    (Some(bp), _) => (
                        -exact.share_rounded(bp, 10_000),
                        format!(
                            "{}% of the charges it covers ({} exactly, within its time range)",
                            percent(bp),
                            format_exact(exact, currency)
                        ),
                    ),
                    (None, Some(fixed)) if discount.currency.as_deref() == Some(currency.as_str()) => (
                        -fixed.min(*line_total),
                        format!(
                            "{} off, at most the {} of charges it covers",
                            money::format(fixed, currency),
                            money::format(*line_total, currency)
                        ),
                    ),
                    _ => continue,
                };
                if amount == 0 {
                    continue;
                }
                let scope = match (&discount.tenant, &discount.service) {
                    (Some(_), Some(s)) => format!("your use of {s}"),
                    (Some(_), None) => "all your services".to_string(),
                    (None, Some(s)) => format!("every use of {s}"),
                    (None, None) => "everything".to_string(),
                };
                let label =
                    if discount.description.is_empty() { "Discount".to_string() } else { discount.description.clone() };
                lines.push(Line {
                    kind: "discount".to_string(),
                    instance: None,
                    service: discount.service.clone(),
                    module: None,
                    description: format!("{label} ({scope})"),
                    from: Some(discount.starts_at.max(start)),
                    to: Some(discount.ends_at.unwrap_or(end).min(end)),
                    quantity: None,
                    unit_price: None,
                    per: None,
                    amount,
                    formatted: money::format(amount, currency),
                    currency: currency.clone(),
                    explanation,
                    plan_revision: None,
                    sources: vec![format!(
                        "discount {} from {}{}",
                        discount.id,
                        format_utc(discount.starts_at),
                        discount.ends_at.map(|e| format!(" to {}", format_utc(e))).unwrap_or_default()
                    )],
                });
            }
        }
    }
}

/// Add what each discount applying to `service` covers of one instance's
/// `kind` of usage (priced `currency`, `price` per `per`) to `eligible`.
fn count_eligible(
    discounts: &[Discount],
    eligible: &mut [BTreeMap<String, (Exact, i64)>],
    service: &str,
    usage: &InstanceUsage,
    kind: &str,
    (currency, price, per): (&str, i64, i64),
    amount: i64,
) {
    for (d, discount) in discounts.iter().enumerate() {
        if !applies(discount, service) {
            continue;
        }
        let in_range: i64 = usage
            .by_hour
            .iter()
            .filter(|(h, _)| *h >= discount.starts_at && discount.ends_at.is_none_or(|e| *h < e))
            .map(|(_, a)| if kind == "fuel" { a.fuel } else { a.requests })
            .sum();
        if in_range > 0 {
            let entry = eligible[d].entry(currency.to_string()).or_default();
            entry.0.add(Exact::of(in_range, price, per));
            entry.1 += amount;
        }
    }
}

/// Why some of an instance's ledger rows are not billed, as sources of its lines.
fn unbilled_rows(service: &str, usage: &InstanceUsage, priced_from: Option<i64>) -> Vec<String> {
    let mut sources = Vec::new();
    if usage.dropped_rows > 0 {
        sources.push(format!(
            "{} hourly rows outside the subscription (disabled or past its end) are not billed",
            usage.dropped_rows
        ));
    }
    if let Some(priced) = priced_from.filter(|_| usage.unpriced_rows > 0) {
        sources.push(format!(
            "{} hourly rows before {service} was first priced ({}) are not billed",
            usage.unpriced_rows,
            format_utc(priced)
        ));
    }
    sources
}

fn applies(discount: &Discount, service: &str) -> bool {
    discount.service.as_deref().is_none_or(|s| s == service)
}

pub(super) fn summary(invoice: &Invoice) -> InvoiceSummary {
    InvoiceSummary {
        id: invoice.id.clone(),
        period: invoice.period.clone(),
        state: invoice.state.clone(),
        lines: invoice.lines.len(),
        totals: invoice.totals.clone(),
    }
}

/// `9 of 31 days` when whole days, else `2.5% of the month`.
pub(super) fn proration(seconds: i64, period: i64) -> String {
    if seconds % 86_400 == 0 && period % 86_400 == 0 {
        format!("{} of {} days", seconds / 86_400, period / 86_400)
    } else {
        let bp = mul_div_round(seconds as i128, 10_000, period as i128);
        format!("{}% of the month", percent(bp))
    }
}

/// 1250 → `12.5`.
pub(super) fn percent(bp: i64) -> String {
    let text = format!("{}.{:02}", bp / 100, bp % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub(super) fn format_exact(exact: &Exact, currency: &str) -> String {
    // Shown to a hundredth of a minor unit.
    let hundredths = exact.share_rounded(100, 1);
    let whole = money::format(hundredths / 100, currency);
    if hundredths % 100 == 0 {
        whole
    } else {
        format!("≈{whole}")
    }
}
