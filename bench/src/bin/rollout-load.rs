//! The rollout load test's driver: continuous load through a load balancer on
//! several instances while a service is promoted and rolled back again and
//! again. Every response must be a 200 from exactly one of the two versions
//! (`x-wharf-version`); it reports failures, p99 in the steady phase and during
//! the swaps, and per swap the time from `promote` returning to the first
//! new-version response on every node (each asked directly).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Promote and roll back under load; count failures, p99 and propagation")]
struct Args {
    /// The load balancer (HAProxy) in front of the nodes.
    #[arg(long)]
    url: String,
    /// Hostnames of the instances under load (comma-separated).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// Each node's ingress, asked directly for propagation (comma-separated).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Admin API of any node, and an operator's token.
    #[arg(long)]
    admin: String,
    #[arg(long, env = "WHARF_TOKEN")]
    token: String,
    #[arg(long)]
    service: String,
    /// The version active at the start, and the one promoted.
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
    /// Promotions and rollbacks, alternating.
    #[arg(long, default_value_t = 50)]
    swaps: usize,
    /// Seconds of steady load before the first swap (the first of them warms
    /// connections up and is not counted).
    #[arg(long, default_value_t = 5)]
    steady_secs: u64,
    /// Pause between swaps, in milliseconds.
    #[arg(long, default_value_t = 200)]
    gap_ms: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

/// One response: when it was sent (since start), its latency, and what it was.
struct Sample {
    at: Duration,
    latency: Duration,
    ok: bool,
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.hosts.is_empty() && !args.nodes.is_empty(), "--hosts and --nodes are needed");
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.connections * 2).build()?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let versions = [args.from.clone(), args.to.clone()];
    let mut clients = Vec::new();
    for c in 0..args.connections {
        let (http, stop, samples, wrong, url, hosts, versions) = (
            http.clone(),
            stop.clone(),
            samples.clone(),
            wrong.clone(),
            args.url.clone(),
            args.hosts.clone(),
            versions.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = c;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let host = &hosts[n % hosts.len()];
                n += 1;
                let sent = Instant::now();
                let result = http.get(format!("{url}/")).header("host", host).send().await;
                let ok = match result {
                    Ok(resp) => {
                        let status = resp.status();
                        let version = resp
                            .headers()
                            .get("x-wharf-version")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = resp.bytes().await;
                        let good = status == 200 && body.is_ok() && versions.contains(&version);
                        if !good {
                            wrong.lock().unwrap().push(format!("{status} from version {version:?}"));
                        }
                        good
                    }
                    Err(e) => {
                        wrong.lock().unwrap().push(format!("request failed: {e}"));
                        false
                    }
                };
                mine.push(Sample { at: sent - start, latency: sent.elapsed(), ok });
            }
            samples.lock().unwrap().extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let swaps_started = start.elapsed();
    let mut propagation: Vec<Duration> = Vec::new();
    let mut promote_calls: Vec<Duration> = Vec::new();
    for i in 0..args.swaps {
        let (path, body, version) = if i % 2 == 0 {
            ("promote", serde_json::json!({ "version": args.to }), &args.to)
        } else {
            ("rollback", serde_json::json!({}), &args.from)
        };
        let called = Instant::now();
        let resp = http
            .post(format!("{}/v1/services/{}/{path}", args.admin, args.service))
            .bearer_auth(&args.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await?;
        anyhow::ensure!(status == 200, "{path}: {status} {answer}");
        anyhow::ensure!(answer["pending"] == serde_json::json!([]), "{path}: nodes did not acknowledge: {answer}");
        let returned = Instant::now();
        promote_calls.push(returned - called);
        // Each node asked directly until it answers with the new version.
        let mut probes = Vec::new();
        for node in &args.nodes {
            let (http, node, host, version) = (http.clone(), node.clone(), args.hosts[0].clone(), version.clone());
            probes.push(tokio::spawn(async move {
                loop {
                    if let Ok(resp) = http.get(format!("{node}/")).header("host", &host).send().await {
                        let got = resp.headers().get("x-wharf-version").and_then(|v| v.to_str().ok()) == Some(&version);
                        let _ = resp.bytes().await;
                        if got {
                            return returned.elapsed();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for probe in probes {
            propagation.push(probe.await?);
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let swaps_ended = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let warm = Duration::from_secs(1).min(swaps_started / 2);
    let steady: Vec<Duration> =
        samples.iter().filter(|s| s.at >= warm && s.at < swaps_started).map(|s| s.latency).collect();
    let during: Vec<Duration> =
        samples.iter().filter(|s| s.at >= swaps_started && s.at < swaps_ended).map(|s| s.latency).collect();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let (p99_steady, p99_swaps) = (percentile(steady.clone(), 0.99), percentile(during.clone(), 0.99));
    let ratio = p99_swaps.as_secs_f64() / p99_steady.as_secs_f64().max(1e-9);
    println!(
        "responses: {} ({} steady, {} during {} swaps), failed or from another version: {failed}",
        samples.len(),
        steady.len(),
        during.len(),
        args.swaps
    );
    println!(
        "p50 steady {:.2} ms, during swaps {:.2} ms; p99 steady {:.2} ms, during swaps {:.2} ms ({ratio:.2}x)",
        percentile(steady, 0.5).as_secs_f64() * 1e3,
        percentile(during, 0.5).as_secs_f64() * 1e3,
        p99_steady.as_secs_f64() * 1e3,
        p99_swaps.as_secs_f64() * 1e3
    );
    println!(
        "promote/rollback call: median {:.1} ms, max {:.1} ms",
        percentile(promote_calls.clone(), 0.5).as_secs_f64() * 1e3,
        percentile(promote_calls, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "first new-version response after the call returned, over {} node-swaps: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        propagation.len(),
        percentile(propagation.clone(), 0.5).as_secs_f64() * 1e3,
        percentile(propagation.clone(), 0.9).as_secs_f64() * 1e3,
        percentile(propagation, 1.0).as_secs_f64() * 1e3
    );
    let wrong = wrong.lock().unwrap();
    for w in wrong.iter().take(10) {
        println!("  bad: {w}");
    }
    anyhow::ensure!(failed == 0, "{failed} requests failed or came from another version");
    Ok(())
}
