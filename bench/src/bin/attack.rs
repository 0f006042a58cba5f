//! A hostile tenant (or client) for `bench/neighbours.sh`: runs one kind of
//! attack against an instance for a while and prints what it got back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Guests that spin until their fuel runs out.
    Spin,
    /// Guests that allocate until the memory cap.
    Memory,
    /// Guests that recurse until the stack overflows.
    Recurse,
    /// Endless `WITH RECURSIVE` queries.
    SqlEndless,
    /// Queries of 64 one-megabyte columns.
    SqlWide,
    /// Queries each too short to be heavy (about a millisecond), as fast as
    /// the node answers.
    SqlFlood,
    /// 4 MiB of stdout per request.
    LogFlood,
    /// Transactions opened and left open.
    OpenTx,
    /// Connections that announce a body and trickle it a byte at a time.
    SlowBody,
}

#[derive(Parser)]
struct Args {
    /// Ingress address of the node.
    #[arg(long)]
    ingress: String,
    /// Host of the attacking instance.
    #[arg(long)]
    host: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Requests (or connections) at once.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// How long to attack, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (ingress, host, kind) = (args.ingress.clone(), args.host.clone(), args.kind);
        tasks.push(tokio::spawn(async move {
            match kind {
                Kind::SlowBody => trickle(&ingress, &host, until).await,
                _ => hammer(&ingress, &host, kind, until).await,
            }
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        for (what, n) in task.await? {
            *outcomes.entry(what).or_default() += n;
        }
    }
    let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("{:?} x{}: {}", args.kind, args.concurrency, summary.join(", "));
    Ok(())
}

/// Send the attack's request over and over until `until`.
async fn hammer(ingress: &str, host: &str, kind: Kind, until: Instant) -> BTreeMap<String, u64> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let wide = format!("SELECT {}", vec!["randomblob(1000000)"; 64].join(", "));
    let (method, path, body) = match kind {
        Kind::Spin => ("GET", "/loop", String::new()),
        Kind::Memory => ("GET", "/alloc", String::new()),
        Kind::Recurse => ("GET", "/recurse", String::new()),
        Kind::SqlEndless => (
            "POST",
            "/sql/query",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c".to_string(),
        ),
        Kind::SqlWide => ("POST", "/sql/query", wide),
        Kind::SqlFlood => (
            "POST",
            "/sql/query",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) SELECT count(*) FROM c"
                .to_string(),
        ),
        Kind::LogFlood => ("GET", "/flood?kib=4096", String::new()),
        Kind::OpenTx => ("POST", "/sql/execute", "BEGIN IMMEDIATE".to_string()),
        Kind::SlowBody => unreachable!("trickled separately"),
    };
    let mut outcomes = BTreeMap::new();
    while Instant::now() < until {
        let url = format!("http://{ingress}{path}");
        let request = if method == "POST" { http.post(url).body(body.clone()) } else { http.get(url) };
        let key = match request.header("host", host).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16().to_string();
                let _ = resp.bytes().await;
                status
            }
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "connection error".into(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    outcomes
}

/// Hold a connection that sends a byte of its body every two seconds; when the
/// node closes it, open another.
async fn trickle(ingress: &str, host: &str, until: Instant) -> BTreeMap<String, u64> {
    let mut outcomes = BTreeMap::new();
    while Instant::now() < until {
        let Ok(mut stream) = tokio::net::TcpStream::connect(ingress).await else {
            *outcomes.entry("connect refused".to_string()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let head = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            *outcomes.entry("closed".to_string()).or_default() += 1;
            continue;
        }
        let mut answer = Vec::new();
        let outcome = loop {
            if Instant::now() >= until {
                break "held to the end".to_string();
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    let text = String::from_utf8_lossy(&answer);
                    break match text.split_whitespace().nth(1) {
                        Some(status) => status.to_string(),
                        None => "closed".to_string(),
                    };
                }
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {
                    if stream.write_all(b"x").await.is_err() {
                        break "closed".to_string();
                    }
                }
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    outcomes
}
