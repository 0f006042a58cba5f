//! An open-loop load generator for `bench/neighbours.sh`: sends `GET /` at a
//! fixed rate, whatever the server does, and measures each request's latency
//! from the moment it was *meant* to be sent. A closed loop (wrk) waits for an
//! answer before sending the next request, so a slow server is asked less and
//! its stalls hide in the requests never sent; at a fixed rate they show.
//!
//! A pacer thread releases requests on schedule to a pool of connection threads
//! (blocking HTTP/1.1 keep-alive); a request that finds every connection busy
//! waits, and that wait is part of its latency. Prints one line of figures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Open-loop HTTP load at a fixed rate; latency from the intended send time")]
struct Args {
    /// Address of the server (host:port).
    #[arg(long)]
    connect: String,
    /// `Host` header of the requests.
    #[arg(long)]
    host: String,
    /// Path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Connections at most (each a thread); requests wait for a free one.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// What one request came to: its latency from the intended send time, or an error.
enum Sample {
    Ok(Duration),
    Status(Duration),
    Failed,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of requests per second"
    );
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.host).into_bytes();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let total = (args.rate * args.seconds).round() as u64;

    let (release, released) = mpsc::channel::<Instant>();
    let released = Arc::new(Mutex::new(released));
    let (report, reports) = mpsc::channel::<Sample>();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (released, report, request, connect) =
            (released.clone(), report.clone(), request.clone(), args.connect.clone());
        workers.push(std::thread::spawn(move || connection(&connect, &request, &released, &report)));
    }
    drop(report);

    // The pacer: sleeps to each intended time (1 ns timer slack instead of the
    // default 50 µs) and releases the request; its own lateness is counted in the
    // request's latency and reported apart.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let start = Instant::now() + Duration::from_millis(20);
    let mut late = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        late.push(Instant::now().saturating_duration_since(intended));
        if release.send(intended).is_err() {
            break;
        }
    }
    drop(release);
    let elapsed = start.elapsed();
    let mut ok = Vec::new();
    let (mut status, mut failed) = (0u64, 0u64);
    for sample in reports {
        match sample {
            Sample::Ok(latency) => ok.push(latency),
            Sample::Status(latency) => {
                status += 1;
                ok.push(latency);
            }
            Sample::Failed => failed += 1,
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
    ok.sort();
    late.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |sorted: &[Duration], q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .map_or(f64::NAN, ms)
    };
    let rate = ok.len() as f64 / elapsed.as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "sent": total, "answered": ok.len(), "non_2xx": status, "failed": failed, "rate": rate,
                "p50_ms": at(&ok, 0.5), "p90_ms": at(&ok, 0.9), "p99_ms": at(&ok, 0.99),
                "p999_ms": at(&ok, 0.999), "max_ms": ok.last().copied().map_or(f64::NAN, ms),
                "pacer_late_p99_ms": at(&late, 0.99),
            })
        );
    } else {
        println!(
            "sent {total} at {:.0}/s: answered {} ({rate:.0}/s), non-2xx {status}, failed {failed}; \
             latency p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; pacer late p99 {:.3} ms",
            args.rate,
            ok.len(),
            at(&ok, 0.5),
            at(&ok, 0.9),
            at(&ok, 0.99),
            at(&ok, 0.999),
            ok.last().copied().map_or(f64::NAN, ms),
            at(&late, 0.99),
        );
    }
    Ok(())
}

/// One connection: takes released requests until the pacer is done, reconnecting
/// after an error.
fn connection(connect: &str, request: &[u8], released: &Mutex<mpsc::Receiver<Instant>>, report: &mpsc::Sender<Sample>) {
    let mut stream: Option<BufReader<TcpStream>> = None;
    loop {
        let next = released.lock().map(|r| r.recv());
        let Ok(Ok(intended)) = next else { return };
        let sample = match exchange(&mut stream, connect, request) {
            Ok(200..=299) => Sample::Ok(intended.elapsed()),
            Ok(_) => Sample::Status(intended.elapsed()),
            Err(_) => {
                stream = None;
                Sample::Failed
            }
        };
        if report.send(sample).is_err() {
            return;
        }
    }
}

/// Send one request on the connection (opened if needed) and read its whole
/// answer; returns the status.
fn exchange(stream: &mut Option<BufReader<TcpStream>>, connect: &str, request: &[u8]) -> anyhow::Result<u16> {
    if stream.is_none() {
        let tcp = TcpStream::connect(connect)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        *stream = Some(BufReader::new(tcp));
    }
    let reader = stream.as_mut().expect("connected above");
    reader.get_mut().write_all(request)?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse()?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
    }
    if close {
        *stream = None;
    }
    Ok(status)
}
