//! What a disabled trace span costs on the request path, with the node's own
//! subscriber (logs at `warn`, no exporter): `cargo run --release -p
//! wharf-bench --bin spans`.
use std::time::Instant;

fn main() {
    std::env::set_var("RUST_LOG", "warn");
    let _guard = wharf::cli::init_logging_with(wharf::cli::LogFormat::Text, None).expect("logging starts");
    let n = 10_000_000u32;
    let started = Instant::now();
    let mut disabled = 0u32;
    for i in 0..n {
        let span = tracing::info_span!(
            target: "wharf::trace",
            "request",
            otel.name = "GET",
            url.path = "/x",
            wharf.tenant = tracing::field::Empty
        );
        span.record("wharf.tenant", i);
        disabled += u32::from(span.is_disabled());
    }
    let took = started.elapsed();
    println!("{} ns per span (disabled: {disabled} of {n})", took.as_nanos() / u128::from(n));
}
