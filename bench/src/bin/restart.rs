//! Restart time of a node with N published versions: with the compiled cache, and
//! with the cache removed (every version recompiled). Alternating rounds, medians.
//!
//! The N versions are distinct components (the same code with a custom section
//! naming the version), so each has its own sha256 and its own artifact.

use std::time::{Duration, Instant};

use clap::Parser;
use wharf::{Node, NodeConfig};

#[derive(Parser)]
struct Args {
    /// The component to publish N times (e.g. plugins/target/wasm32-wasip2/release/echo.wasm).
    component: std::path::PathBuf,
    /// Versions to publish.
    #[arg(long, default_value_t = 20)]
    versions: usize,
    /// Restarts per mode (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Append a custom section (id 0) to a component: valid, and changes its hash.
fn with_custom_section(component: &[u8], payload: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wharf-bench";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn config(data: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new(data);
    config.ingress_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin_addr = "127.0.0.1:0".parse().expect("addr");
    config.pool.max_instances = 100;
    config
}

async fn time_start(data: &std::path::Path) -> anyhow::Result<(Duration, u64, u64)> {
    let start = Instant::now();
    let running = Node::start(config(data)).await?;
    let elapsed = start.elapsed();
    let stats = running.node.registry.stats();
    let counts = (
        stats.compiled.load(std::sync::atomic::Ordering::Relaxed),
        stats.loaded_from_cache.load(std::sync::atomic::Ordering::Relaxed),
    );
    running.shutdown().await?;
    Ok((elapsed, counts.0, counts.1))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bytes = std::fs::read(&args.component)?;
    let data = tempfile::tempdir()?;
    {
        let running = Node::start(config(data.path())).await?;
        eprintln!("publishing {} versions…", args.versions);
        for i in 0..args.versions {
            let version = format!("1.0.{i}");
            let manifest = format!("[service]\nname = \"bench\"\nversion = \"{version}\"\n");
            running.node.registry.publish(None, &manifest, with_custom_section(&bytes, &version), false).await?;
        }
        running.shutdown().await?;
    }
    let compiled_dir = data.path().join("compiled");
    let (mut cached, mut fresh) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (t, compiled, loaded) = time_start(data.path()).await?;
        anyhow::ensure!(compiled == 0 && loaded == args.versions as u64, "expected a cached start");
        cached.push(t);
        std::fs::remove_dir_all(&compiled_dir)?;
        let (t, compiled, _) = time_start(data.path()).await?;
        anyhow::ensure!(compiled == args.versions as u64, "expected a full recompile");
        fresh.push(t);
        eprintln!("round {}: cached {:?}, recompiled {:?}", round + 1, cached[round], fresh[round]);
    }
    cached.sort();
    fresh.sort();
    let (c, f) = (cached[cached.len() / 2], fresh[fresh.len() / 2]);
    println!("restart with {} versions ({} bytes each), median of {} rounds:", args.versions, bytes.len(), args.rounds);
    println!("  from the compiled cache  {:>8.1} ms", c.as_secs_f64() * 1e3);
    println!("  recompiling everything   {:>8.1} ms", f.as_secs_f64() * 1e3);
    println!("  cache speed-up           {:>8.1}x", f.as_secs_f64() / c.as_secs_f64());
    Ok(())
}
