//! `wharf stage`, `status`, `promote`, `rollback`, `canary`, `nodes`: updates
//! across the fleet.

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{self, Client};
use super::output::{self, Output};

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Run VERSION on chosen instances (or a share of those following the
    /// active version) before promoting it.
    Start {
        service: String,
        version: String,
        /// An instance to run it (repeatable).
        #[arg(long = "instance")]
        instances: Vec<String>,
        /// Or this percent of the instances following the active version.
        #[arg(long, conflicts_with = "instances")]
        percent: Option<u32>,
    },
    /// End the canary: its instances follow the active version again.
    End { service: String },
}

fn list(v: &Value, key: &str) -> String {
    let items: Vec<String> = v
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|x| output::s(&json!({ "x": x }), "x")).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

pub async fn stage(client: &Client, out: &Output, service: &str, version: &str) -> anyhow::Result<()> {
    if !out.json {
        eprintln!("staging {service} {version}: every node fetches and compiles it…");
    }
    let staged =
        client.post(&format!("/v1/services/{}/stage", client::encode(service)), &json!({ "version": version })).await?;
    out.line(
        &staged,
        &format!(
            "{service} {version}: ready on {} of {} nodes; not ready: {}",
            output::s(&staged, "ready_on"),
            output::s(&staged, "live_nodes"),
            list(&staged, "not_ready")
        ),
    )?;
    anyhow::ensure!(staged["ready"] == true, "{service} {version} is not ready on every node");
    Ok(())
}

pub async fn promote(client: &Client, out: &Output, service: &str, version: Option<&str>) -> anyhow::Result<()> {
    let (path, body) = match version {
        Some(version) => ("promote", json!({ "version": version })),
        None => ("rollback", json!({})),
    };
    let done = client.post(&format!("/v1/services/{}/{path}", client::encode(service)), &body).await?;
    let acked = done["acknowledged"].as_array().map(Vec::len).unwrap_or(0);
    out.line(
        &done,
        &format!(
            "{service}: {} -> {} on {acked} nodes in {} ms; not acknowledged: {}",
            output::s(&done, "previous"),
            output::s(&done, "version"),
            output::s(&done, "took_ms"),
            list(&done, "pending")
        ),
    )?;
    anyhow::ensure!(
        done["pending"].as_array().is_none_or(Vec::is_empty),
        "some nodes did not acknowledge; HAProxy keeps them out of rotation until they catch up"
    );
    Ok(())
}

pub async fn canary(client: &Client, out: &Output, command: CanaryCommand) -> anyhow::Result<()> {
    match command {
        CanaryCommand::Start { service, version, instances, percent } => {
            let body = json!({ "version": version, "instances": instances, "percent": percent });
            let done = client.post(&format!("/v1/services/{}/canary", client::encode(&service)), &body).await?;
            out.line(&done, &format!("{service} {version} runs on: {}", list(&done, "instances")))
        }
        CanaryCommand::End { service } => {
            let path = format!("/v1/services/{}/canary", client::encode(&service));
            let done = client.delete(&path).await?;
            out.line(
                &done,
                &format!("{service}: canary ended; back on the active version: {}", list(&done, "released")),
            )
        }
    }
}

pub async fn status(client: &Client, out: &Output, service: &str) -> anyhow::Result<()> {
    let status = client.get(&format!("/v1/services/{}/rollout", client::encode(service))).await?;
    if out.json {
        return out.line(&status, "");
    }
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    println!(
        "{service}: active {}, previous {}, generation {}",
        output::s(&status, "active_version"),
        output::s(&status, "previous_version"),
        output::s(&status, "generation")
    );
    for node in &nodes {
        let caught_up = if node["caught_up"] == true { "caught up" } else { "CATCHING UP" };
        println!(
            "  node {} ({}), generation {}: {caught_up}",
            output::s(node, "id"),
            output::s(node, "ingress"),
            output::s(node, "generation")
        );
    }
    println!("  {:<12} {:<9} {:<10} {:>9} {:>7}  pins", "VERSION", "STATE", "READY ON", "REQUESTS", "ERRORS");
    for v in status["versions"].as_array().cloned().unwrap_or_default() {
        let failed: Vec<String> = v["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter(|s| s["state"] != "ready")
                    .map(|s| format!("{} {}: {}", output::s(s, "node"), output::s(s, "state"), output::s(s, "error")))
                    .collect()
            })
            .unwrap_or_default();
        let pins = v["pinned"].as_array().map(Vec::len).unwrap_or(0);
        println!(
            "  {:<12} {:<9} {:<10} {:>9} {:>7}  {pins}{}",
            output::s(&v, "version"),
            if v["active"] == true {
                "active"
            } else if v["previous"] == true {
                "previous"
            } else if v["staged_at"].is_i64() {
                "staged"
            } else {
                ""
            },
            format!("{}/{}", output::s(&v, "ready_on"), nodes.len()),
            output::s(&v, "requests"),
            output::s(&v, "errors"),
            if failed.is_empty() { String::new() } else { format!("  ({})", failed.join("; ")) }
        );
    }
    for h in status["history"].as_array().cloned().unwrap_or_default().iter().take(5) {
        let nodes = list(h, "nodes");
        println!(
            "  {} {} by {}: {}{}",
            output::s(h, "kind"),
            output::s(h, "version"),
            output::s(h, "actor"),
            output::s(h, "detail"),
            if h["kind"] == "health" { format!(" (seen by {nodes})") } else { String::new() }
        );
    }
    Ok(())
}

pub async fn nodes(client: &Client, out: &Output) -> anyhow::Result<()> {
    out.rows(
        &client.get("/v1/nodes").await?,
        "nodes",
        &[("NODE", "id"), ("INGRESS", "ingress"), ("ADMIN", "admin"), ("LIVE", "live"), ("GENERATION", "generation")],
    )
}
