//! How long one change made through one node takes to reach every node: each
//! round makes a change through `--admin`, then asks every node in `--nodes`
//! at once (each every millisecond) until each serves it, and records when
//! the last one did, counted from the moment the change's API call returned.
//!
//!   hosts:    PATCH the instance's hostnames to a new one; served = 200 there
//!   activate: activate the service's versions in turn; served = the version
//!             in `x-wharf-version` at `--host`
//!
//! Prints one line: rounds, median and slowest milliseconds to the last node.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Change {
    Hosts,
    Activate,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    change: Change,
    /// The admin API the changes go through.
    #[arg(long)]
    admin: String,
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    token: String,
    /// Every node's ingress, `host:port`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// hosts: the instance whose hostnames change.
    #[arg(long)]
    instance: Option<String>,
    /// activate: the service, its two versions, and a hostname of a follower.
    #[arg(long)]
    service: Option<String>,
    #[arg(long, value_delimiter = ',')]
    versions: Vec<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder().pool_max_idle_per_host(4).build()?;
    let mut took = Vec::new();
    for round in 0..args.rounds {
        let (host, wanted_version) = match args.change {
            Change::Hosts => {
                let instance = args.instance.as_deref().context("--instance is needed")?;
                let host = format!("r{round}-{}.propagate.bench", std::process::id());
                let body = serde_json::json!({ "hosts": [host] });
                call(&http, &args, reqwest::Method::PATCH, &format!("/v1/instances/{instance}"), body).await?;
                (host, None)
            }
            Change::Activate => {
                let service = args.service.as_deref().context("--service is needed")?;
                let host = args.host.clone().context("--host is needed")?;
                if args.versions.len() < 2 {
                    bail!("--versions needs two versions to switch between");
                }
                let version = args.versions[round % args.versions.len()].clone();
                let body = serde_json::json!({ "version": version });
                call(&http, &args, reqwest::Method::POST, &format!("/v1/services/{service}/activate"), body).await?;
                (host, Some(version))
            }
        };
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(args.timeout);
        let mut waits = Vec::new();
        for node in &args.nodes {
            let (http, node, host, wanted) = (http.clone(), node.clone(), host.clone(), wanted_version.clone());
            waits.push(tokio::spawn(async move {
                loop {
                    let answer = http.get(format!("http://{node}/")).header("host", &host).send().await;
                    if let Ok(resp) = answer {
                        let version = resp.headers().get("x-wharf-version").and_then(|v| v.to_str().ok());
                        let served = match &wanted {
                            None => resp.status() == reqwest::StatusCode::OK,
                            Some(wanted) => version == Some(wanted.as_str()),
                        };
                        if served {
                            return Ok(returned.elapsed());
                        }
                    }
                    if Instant::now() > deadline {
                        bail!("{node} did not serve the change of round {round} in time");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        let mut last = Duration::ZERO;
        for wait in waits {
            last = last.max(wait.await??);
        }
        took.push(last.as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    let median = took[(took.len() - 1) / 2];
    let slowest = took.last().copied().unwrap_or_default();
    println!("rounds {} median_ms {median:.1} max_ms {slowest:.1}", took.len());
    Ok(())
}

async fn call(
    http: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let resp =
        http.request(method, format!("{}{path}", args.admin)).bearer_auth(&args.token).json(&body).send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("{path}: {status} {}", resp.text().await.unwrap_or_default());
    }
    Ok(())
}
