//! What the CLI prints: aligned tables for people, the API's JSON for scripts.

use serde_json::Value;

pub struct Output {
    pub json: bool,
}

pub fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(other) => other.to_string(),
    }
}

/// A version's starting memory, as KiB or MiB (`-` before a node measured it).
fn memory(version: &Value) -> String {
    match version.get("initial_memory_bytes").and_then(Value::as_u64) {
        Some(bytes) => crate::runtime::mib_or_kib(usize::try_from(bytes).unwrap_or(usize::MAX)),
        None => "-".to_string(),
    }
}

/// What a published version starts with, and, where it is 1 MiB or more
/// without `reuse`, how to make its fresh requests cheaper.
fn starting_memory(version: &Value) -> Option<String> {
    let bytes = version.get("initial_memory_bytes").and_then(Value::as_u64)?;
    let mut line = format!("starts with {} of linear memory, reset after every fresh request", memory(version));
    if bytes >= 1 << 20 && version.get("reuse").is_none_or(Value::is_null) {
        line.push_str(
            "\nhint: `reuse` in wharf.toml lets an instance's next requests skip that reset; in a Rust \
             build most of it is usually the 1 MiB stack: link with `-zstack-size=131072` (wharf new \
             writes it into .cargo/config.toml)",
        );
    }
    Some(line)
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

impl Output {
    /// JSON, or one human line.
    pub fn line(&self, v: &Value, human: &str) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!("{human}");
        }
        Ok(())
    }

    /// JSON, or a table of `v[key]` with `(header, field)` columns.
    pub fn rows(&self, v: &Value, key: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
        if !self.raw(v) {
            let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
            let rows = list(v, key).iter().map(|row| columns.iter().map(|(_, f)| s(row, f)).collect()).collect();
            table(&headers, rows);
        }
        Ok(())
    }

    fn raw(&self, v: &Value) -> bool {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
        self.json
    }

    pub fn published(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let what = if v.get("created").and_then(Value::as_bool) == Some(true) {
                "published"
            } else {
                "already published (no change)"
            };
            let active = if v.get("active").and_then(Value::as_bool) == Some(true) { ", active" } else { "" };
            println!("{} {} {what}{active}\nsha256 {}", s(v, "service"), s(v, "version"), s(v, "sha256"));
            if let Some(line) = starting_memory(v) {
                println!("{line}");
            }
        }
        Ok(())
    }

    pub fn activated(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!("{} {} is now active", s(v, "service"), s(v, "version"));
        }
        Ok(())
    }

    pub fn services(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let rows = list(v, "services")
                .iter()
                .map(|svc| vec![s(svc, "name"), s(svc, "active_version"), list(svc, "versions").len().to_string()])
                .collect();
            table(&["SERVICE", "ACTIVE", "VERSIONS"], rows);
        }
        Ok(())
    }

    pub fn service(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!("service {} (active: {})", s(v, "name"), s(v, "active_version"));
            let rows = list(v, "versions")
                .iter()
                .map(|ver| {
                    let active = if ver.get("active").and_then(Value::as_bool) == Some(true) { "*" } else { "" };
                    let sha = s(ver, "sha256");
                    vec![
                        s(ver, "version"),
                        active.to_string(),
                        sha[..sha.len().min(12)].to_string(),
                        s(ver, "size_bytes"),
                        memory(ver),
                    ]
                })
                .collect();
            table(&["VERSION", "ACTIVE", "SHA256", "BYTES", "MEMORY"], rows);
        }
        Ok(())
    }

    pub fn tenant(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!("tenant {} ({})", s(v, "id"), s(v, "display_name"));
            if let Some(purge_at) = v["purge_at"].as_i64() {
                println!(
                    "deleted: its data is destroyed at {} unless restored (wharf tenant restore {})",
                    crate::clock::format_utc(purge_at),
                    s(v, "id")
                );
            }
        }
        Ok(())
    }

    pub fn tenants(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let state = |t: &Value| match t["purge_at"].as_i64() {
                Some(at) => format!("deleted (purged at {})", crate::clock::format_utc(at)),
                None => "active".to_string(),
            };
            let rows = list(v, "tenants").iter().map(|t| vec![s(t, "id"), s(t, "display_name"), state(t)]).collect();
            table(&["TENANT", "NAME", "STATE"], rows);
        }
        Ok(())
    }

    pub fn instance(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let strings = |key: &str| -> Vec<String> {
                list(v, key).iter().filter_map(Value::as_str).map(str::to_string).collect()
            };
            let mut policy = match v.get("pinned_version").and_then(Value::as_str) {
                Some(p) => format!("pinned to {p}"),
                None => "follows the active version".to_string(),
            };
            if v["wanted_version"] != v["running_version"] && v["wanted_version"].is_string() {
                policy.push_str(&format!(", which is {}", s(v, "wanted_version")));
            }
            let mut hosts = strings("platform_hosts");
            hosts.extend(strings("hosts"));
            println!(
                "instance {} ({})\n  tenant   {}\n  service  {} (running {}, {policy})\n  hosts    {}",
                s(v, "id"),
                s(v, "name"),
                s(v, "tenant"),
                s(v, "service"),
                s(v, "running_version"),
                if hosts.is_empty() { "none yet".to_string() } else { hosts.join(", ") }
            );
            for pending in list(v, "pending_hosts") {
                println!(
                    "  pending  {}: prove it, then run `wharf host verify --instance {} {}`\n           \
                     http: point the name here (Wharf answers {})\n           dns:  TXT {} = \"{}\"",
                    s(pending, "hostname"),
                    s(v, "id"),
                    s(pending, "hostname"),
                    s(pending, "http_challenge"),
                    s(pending, "dns_record"),
                    s(pending, "dns_value"),
                );
                if let Some(error) = pending.get("last_error").and_then(Value::as_str) {
                    println!("           last check: {error}");
                }
            }
            if let Some(setup) = v.get("setup") {
                let migrations = list(setup, "applied_migrations").len();
                match setup.get("state").and_then(Value::as_str) {
                    Some("migrating") => {
                        println!("  setup    migrating to {} (in maintenance)", s(setup, "target"))
                    }
                    Some("failed") => println!(
                        "  setup    FAILED for {} (serving {}): {}\n           retry with `wharf jobs retry` \
                         (see `wharf jobs list --instance {} --kind wharf.setup`)",
                        s(setup, "target"),
                        s(setup, "settled_version"),
                        s(setup, "error"),
                        s(v, "id")
                    ),
                    _ => println!("  setup    ready ({migrations} migrations applied)"),
                }
            }
        }
        Ok(())
    }

    pub fn job(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!(
                "job {} ({} v{}, {})\n  instance  {} (tenant {})\n  state     {} after {} of {} attempts\n  \
                 queued by {}; last ran on {}",
                s(v, "id"),
                s(v, "kind"),
                s(v, "job_version"),
                s(v, "service"),
                s(v, "instance"),
                s(v, "tenant"),
                s(v, "state"),
                s(v, "attempts"),
                s(v, "max_attempts"),
                s(v, "enqueued_by"),
                s(v, "ran_version"),
            );
            if let Some(error) = v.get("last_error").and_then(Value::as_str) {
                println!("  error     {error}");
            }
        }
        Ok(())
    }

    pub fn instances(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let rows = list(v, "instances")
                .iter()
                .map(|i| {
                    let hosts: Vec<&str> = list(i, "platform_hosts")
                        .iter()
                        .chain(list(i, "hosts").iter())
                        .filter_map(Value::as_str)
                        .collect();
                    let pending = list(i, "pending_hosts").len();
                    let hosts = match pending {
                        0 => hosts.join(","),
                        n => format!("{} (+{n} pending)", hosts.join(",")),
                    };
                    vec![s(i, "id"), s(i, "tenant"), s(i, "service"), s(i, "running_version"), hosts]
                })
                .collect();
            table(&["INSTANCE", "TENANT", "SERVICE", "VERSION", "HOSTS"], rows);
        }
        Ok(())
    }

    pub fn usage(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let rows = list(v, "usage")
                .iter()
                .map(|u| {
                    vec![
                        s(u, "instance"),
                        s(u, "tenant"),
                        s(u, "service"),
                        s(u, "requests"),
                        s(u, "jobs"),
                        s(u, "fuel"),
                        s(u, "errors"),
                    ]
                })
                .collect();
            table(&["INSTANCE", "TENANT", "SERVICE", "REQUESTS", "JOBS", "FUEL", "ERRORS"], rows);
        }
        Ok(())
    }

    pub fn plan(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let Some(plan) = v.get("plan").filter(|p| !p.is_null()) else {
                println!(
                    "{} has no plan: it is not billed (an operator sets one with `wharf plan set`)",
                    s(v, "service")
                );
                return Ok(());
            };
            let currency = s(plan, "currency");
            let price = |p: &Value| money(p.as_i64().unwrap_or(0), &currency);
            println!("{} plan revision {} (set by {})", s(v, "service"), s(plan, "revision"), s(plan, "set_by"));
            println!("  service   {} per month", price(&plan["period_price"]));
            if let Some(modules) = plan.get("module_prices").and_then(Value::as_object) {
                for (module, p) in modules {
                    println!("  module    {module}: {} per month", price(p));
                }
            }
            println!("  fuel      {} per {}", price(&plan["fuel_price"]), s(plan, "fuel_unit"));
            println!("  requests  {} per {}", price(&plan["request_price"]), s(plan, "request_unit"));
            println!("  {} revisions; a change applies from the next month", list(v, "history").len());
        }
        Ok(())
    }

    pub fn invoice(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            println!("invoice {} ({}, {})", s(v, "id"), s(v, "period"), s(v, "state"));
            let to = &v["bill_to"];
            let name = s(to, "name");
            if name != "-" && !name.is_empty() {
                println!("  bill to   {name}, {}", s(to, "address").replace('\n', ", "));
            }
            for line in list(v, "lines") {
                println!("  {:>14}  {}", s(line, "formatted"), s(line, "description"));
                println!("  {:>14}  = {}", "", s(line, "explanation"));
                for source in list(line, "sources").iter().filter_map(Value::as_str) {
                    println!("  {:>14}    from {source}", "");
                }
            }
            if list(v, "lines").is_empty() {
                println!("  no charges");
            }
            let label = if v["accrued_until"].is_i64() { "so far" } else { "total" };
            for total in list(v, "totals") {
                println!("  {:>14}  {label}", s(total, "formatted"));
            }
            for total in list(v, "projected") {
                println!("  {:>14}  projected to the end of the month, if nothing changes", s(total, "formatted"));
            }
        }
        Ok(())
    }

    pub fn invoices(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let rows = list(v, "invoices")
                .iter()
                .map(|i| {
                    let totals: Vec<String> = list(i, "totals").iter().map(|t| s(t, "formatted")).collect();
                    vec![s(i, "id"), s(i, "period"), s(i, "state"), s(i, "lines"), totals.join(", ")]
                })
                .collect();
            table(&["INVOICE", "PERIOD", "STATE", "LINES", "TOTAL"], rows);
        }
        Ok(())
    }

    pub fn account(&self, v: &Value) -> anyhow::Result<()> {
        if !self.raw(v) {
            let details = &v["details"];
            println!("billing of {} (clock {})", s(v, "tenant"), s(v, "now_utc"));
            println!("  name      {}", s(details, "name"));
            println!("  address   {}", s(details, "address").replace('\n', ", "));
            println!("  tax id    {}", s(details, "tax_id"));
            println!("  email     {}", s(details, "email"));
            let limit = match (v["spending_limit"].as_i64(), v["limit_currency"].as_str()) {
                (Some(amount), Some(currency)) => format!("{} per month", money(amount, currency)),
                _ => "none".to_string(),
            };
            println!("  limit     {limit}");
            if let Some(reason) = v["suspended"].as_str() {
                println!("  SUSPENDED {reason}");
            }
            let totals: Vec<String> = list(v, "running_totals").iter().map(|t| s(t, "formatted")).collect();
            println!(
                "  {}   {} so far",
                s(v, "period"),
                if totals.is_empty() { "nothing".to_string() } else { totals.join(", ") }
            );
            let projected: Vec<String> = list(v, "projected_totals").iter().map(|t| s(t, "formatted")).collect();
            if !projected.is_empty() {
                println!("            {} projected to the end of the month", projected.join(", "));
            }
        }
        Ok(())
    }
}

fn money(amount: i64, currency: &str) -> String {
    crate::billing::money::format(amount, currency)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_large_starting_memory_without_reuse_gets_a_hint() {
        let small = json!({"initial_memory_bytes": 196608});
        assert_eq!(
            super::starting_memory(&small).as_deref(),
            Some("starts with 192 KiB of linear memory, reset after every fresh request")
        );
        let large = json!({"initial_memory_bytes": 1114112});
        let line = super::starting_memory(&large).unwrap();
        assert!(line.starts_with("starts with 1088 KiB"), "{line}");
        assert!(line.contains("-zstack-size=131072"), "{line}");
        let reused = json!({"initial_memory_bytes": 1114112, "reuse": {"requests": 100, "idle_seconds": 30}});
        assert!(!super::starting_memory(&reused).unwrap().contains("hint"));
        assert_eq!(super::starting_memory(&json!({"initial_memory_bytes": null})), None);
        assert_eq!(super::memory(&json!({})), "-");
    }
}
