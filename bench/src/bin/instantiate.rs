//! The cost of one request's guest without HTTP: a fresh store, instantiate from
//! the `ProxyPre`, call the handler, collect the response body. Pooling allocator
//! vs on-demand allocation, and one sandbox reused between calls (a version with
//! `reuse` on), in alternating rounds, medians reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use wharf::config::{GuestLimits, PoolConfig};
use wharf::runtime::{Handled, RequestIdentity, Reuse, ReusePolicy, Runtime};

#[derive(Parser)]
struct Args {
    /// The component to run (e.g. plugins/target/wasm32-wasip2/release/hello.wasm).
    component: std::path::PathBuf,
    /// Calls per round.
    #[arg(long, default_value_t = 5000)]
    iterations: usize,
    /// Rounds per allocator (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Linear memory kept resident between uses by the pool, in KiB (Wharf's default).
    #[arg(long, default_value_t = PoolConfig::default().keep_resident_bytes >> 10)]
    keep_resident_kib: usize,
    /// Measure only this: `pooling`, `on-demand` or `reused` (one sandbox kept
    /// between calls; default: all three).
    #[arg(long)]
    only: Option<String>,
}

async fn one_round(
    runtime: &Runtime,
    pre: &wharf::runtime::ProxyPre,
    reuse: &Option<Reuse>,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let who = RequestIdentity::new(Arc::from("bench"), Arc::from("bench"), i as u64);
        let req = http::Request::builder().uri("http://bench.local/").body(Empty::<Bytes>::new())?;
        let start = Instant::now();
        match runtime.handle(pre, who, Default::default(), req, &Default::default(), reuse.clone(), |_, _| {}).await {
            Handled::Response(resp) => {
                let body = resp.into_body().collect().await.map_err(|e| anyhow::anyhow!("{e:?}"))?.to_bytes();
                anyhow::ensure!(!body.is_empty(), "empty body");
            }
            Handled::Failed(f) => anyhow::bail!("guest failed: {f:?}"),
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bytes = std::fs::read(&args.component)?;
    let mut setups = Vec::new();
    for name in ["pooling", "on-demand", "reused"] {
        if args.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let pooling = name != "on-demand";
        let pool = PoolConfig { pooling, max_instances: 100, keep_resident_bytes: args.keep_resident_kib << 10 };
        let runtime = Runtime::new(GuestLimits::default(), &pool)?;
        let component = runtime.compile(&bytes)?;
        let pre = runtime.prepare(&component)?;
        // One instance's sandbox, kept between its calls.
        let reuse = (name == "reused").then(|| Reuse {
            policy: ReusePolicy { requests: u32::MAX, idle: Duration::from_secs(60) },
            instance: Arc::from("bench"),
            version: 1,
            features: Default::default(),
        });
        setups.push((name, runtime, pre, reuse, Vec::new()));
    }
    for round in 0..args.rounds {
        for (name, runtime, pre, reuse, all) in setups.iter_mut() {
            let times = one_round(runtime, pre, reuse, args.iterations).await?;
            eprintln!("round {}: {name} median {:?}", round + 1, median(&times));
            all.extend(times);
        }
    }
    println!("instantiate + call + collect body, {} calls x {} rounds each:", args.iterations, args.rounds);
    let medians: Vec<(&str, Duration)> = setups.iter().map(|(name, _, _, _, t)| (*name, median(t))).collect();
    for ((name, _, _, _, times), (_, m)) in setups.iter().zip(&medians) {
        println!("  {name:<10} median {:>8.1} µs   p99 {:>8.1} µs", micros(*m), micros(percentile(times, 0.99)));
    }
    let of = |wanted: &str| medians.iter().find(|(name, _)| *name == wanted).map(|(_, m)| micros(*m));
    if let (Some(pooling), Some(on_demand)) = (of("pooling"), of("on-demand")) {
        println!("  on-demand / pooling: {:.2}x", on_demand / pooling);
    }
    if let (Some(pooling), Some(reused)) = (of("pooling"), of("reused")) {
        println!("  pooling (fresh) / reused: {:.2}x", pooling / reused);
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(times: &[Duration]) -> Duration {
    percentile(times, 0.5)
}

fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}
