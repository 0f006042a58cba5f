//! Create many tenants, each with an instance of a service bound to its own
//! hostname (`<prefix><n>.bench`), through a node's admin API. Shows progress.

use std::time::Instant;

use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Admin API of the node.
    #[arg(long)]
    admin: String,
    /// Operator token.
    #[arg(long, env = "WHARF_TOKEN")]
    token: String,
    /// Service every instance runs.
    #[arg(long)]
    service: String,
    /// How many tenants.
    #[arg(long)]
    count: usize,
    /// Tenant id and hostname prefix.
    #[arg(long, default_value = "t")]
    prefix: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut done = 0usize;
    let mut work = futures::stream::iter(0..args.count)
        .map(|n| {
            let (http, args) = (&http, &args);
            async move {
                let tenant = format!("{}{n}", args.prefix);
                let created = http
                    .post(format!("{}/v1/tenants", args.admin))
                    .bearer_auth(&args.token)
                    .json(&json!({ "id": tenant }))
                    .send()
                    .await?;
                anyhow::ensure!(created.status().is_success(), "tenant {tenant}: {}", created.text().await?);
                let instance = http
                    .post(format!("{}/v1/instances", args.admin))
                    .bearer_auth(&args.token)
                    .json(&json!({ "tenant": tenant, "service": args.service, "hosts": [format!("{tenant}.bench")] }))
                    .send()
                    .await?;
                anyhow::ensure!(instance.status().is_success(), "instance of {tenant}: {}", instance.text().await?);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency);
    while let Some(result) = work.next().await {
        result?;
        done += 1;
        if done.is_multiple_of(1000) || done == args.count {
            eprintln!("  {done}/{} tenants ({:.0}/s)", args.count, done as f64 / started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
