//! `GET /metrics`: who may scrape it, what it counts, and a real Prometheus
//! scraping a node and answering PromQL about it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{sample, TestNode};

const SCRAPE_TOKEN: &str = "scrape-token-0123456789abcdef0123456789abcdef";

/// GET `/metrics` with `token` (if any): status, content type, body.
async fn scrape(node: &TestNode, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = node.http.get(format!("{}/metrics", node.admin_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.unwrap();
    let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (resp.status(), kind, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_outcomes_for_the_scrape_token_and_operators_only() {
    let node = TestNode::start_with(|config| config.metrics_token = Some(SCRAPE_TOKEN.into())).await;
    node.tenant_with("good", "hello", "hello", "good.test").await;
    node.tenant_with("bad", "misbehave", "misbehave", "bad.test").await;
    for _ in 0..5 {
        assert_eq!(node.get("good.test", "/").await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(node.get("bad.test", "/trap").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(node.get("nobody.test", "/").await.0, StatusCode::NOT_FOUND);
    // Guests are counted when done, which can be just after the response.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Nobody else: anonymous, a wrong token, a user who is no operator.
    assert_eq!(scrape(&node, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, _, body) = scrape(&node, Some("scrape-token-but-not-this-one-0123456789abcdef")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let user = node.user("someone@metrics.test").await;
    let (status, _, body) = scrape(&node, Some(&user)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, _) = scrape(&node, Some(&node.admin_key)).await;
    assert_eq!(status, StatusCode::OK, "an operator may read them");

    let (status, kind, text) = scrape(&node, Some(SCRAPE_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let expect = [
        (r#"wharf_http_requests_total{service="hello",version="1.0.0",status="2xx"}"#, 5.0),
        (r#"wharf_http_requests_total{service="misbehave",version="1.0.0",status="5xx"}"#, 2.0),
        (r#"wharf_guest_outcomes_total{service="misbehave",version="1.0.0",outcome="trap"}"#, 2.0),
        (r#"wharf_guest_outcomes_total{service="hello",version="1.0.0",outcome="ok"}"#, 5.0),
        (r#"wharf_http_request_duration_seconds_count{service="hello",version="1.0.0"}"#, 5.0),
        (r#"wharf_http_responses_total{status="2xx"}"#, 5.0),
        (r#"wharf_http_responses_total{status="4xx"}"#, 1.0),
        (r#"wharf_http_responses_total{status="5xx"}"#, 2.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(sample(&text, r#"wharf_guest_fuel_total{service="hello",version="1.0.0"}"#).unwrap() > 0.0);
    assert!(sample(&text, r#"wharf_logins_total{outcome="succeeded"}"#).unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "wharf_guest_instantiations_total").unwrap() >= 7.0, "{text}");
    assert!(sample(&text, "wharf_guest_instantiation_seconds_total").unwrap() > 0.0, "{text}");
    assert_eq!(sample(&text, "wharf_guests_running"), Some(0.0), "every guest is done");
    assert_eq!(sample(&text, "wharf_guest_slot_timeouts_total"), Some(0.0));
    assert!(sample(&text, "wharf_generation").unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, "wharf_control_plane_up"), Some(1.0));
    assert_eq!(sample(&text, "wharf_generations_behind"), Some(0.0), "one node is never behind itself");
    assert_eq!(sample(&text, "wharf_platform_generation"), sample(&text, "wharf_generation"));
    assert!(sample(&text, "wharf_routes").unwrap() >= 2.0, "{text}");
    // (`wharf_jobs` and its lag have a series per service with jobs; none here.)
    for family in ["wharf_usage_flushes", "wharf_job_attempts", "wharf_guest_sandboxes_reused"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    // No tenant or instance names: their number must not grow the series.
    assert!(!text.contains("good") && !text.contains("tenant="), "{text}");
}

/// A Prometheus server this test started, stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Prometheus scraping `target` (host:port) every second with `token`; `None`
    /// where it is not installed.
    fn start(target: &str, token: &str) -> Option<Prometheus> {
        std::process::Command::new("prometheus").arg("--version").output().ok()?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wharf\n    metrics_path: /metrics\n    \
                 authorization:\n      credentials: {token}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        Some(Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir })
    }

    /// The value of a PromQL query's first sample, once there is one.
    async fn query(&self, http: &reqwest::Client, promql: &str) -> Option<f64> {
        let resp = http.get(format!("{}/api/v1/query", self.url)).query(&[("query", promql)]).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Wait (up to 30 s) until `promql` answers `expected`.
    async fn expect(&self, http: &reqwest::Client, promql: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(http, promql).await;
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{promql}: expected {expected}, Prometheus answered {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_node_and_answers_promql() {
    let node = TestNode::start_with(|config| config.metrics_token = Some(SCRAPE_TOKEN.into())).await;
    let target = node.admin_url().trim_start_matches("http://").to_string();
    let Some(prometheus) = Prometheus::start(&target, SCRAPE_TOKEN) else {
        assert!(
            std::env::var("WHARF_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "prometheus is not installed (apt-get install prometheus); WHARF_REQUIRE_SERVICES=1 needs it"
        );
        eprintln!("skipped: a_real_prometheus_scrapes_a_node_and_answers_promql needs prometheus installed");
        return;
    };
    node.tenant_with("good", "hello", "hello", "good.test").await;
    node.tenant_with("bad", "misbehave", "misbehave", "bad.test").await;
    for _ in 0..7 {
        assert_eq!(node.get("good.test", "/").await.0, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(node.get("bad.test", "/trap").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let http = &node.http;
    prometheus.expect(http, r#"up{job="wharf"}"#, 1.0).await;
    prometheus.expect(http, r#"sum(wharf_http_requests_total{service="hello",status="2xx"})"#, 7.0).await;
    prometheus
        .expect(http, r#"sum by (outcome) (wharf_guest_outcomes_total{service="misbehave",outcome="trap"})"#, 3.0)
        .await;
    prometheus.expect(http, r#"sum(wharf_http_request_duration_seconds_count{service="hello"})"#, 7.0).await;
    // A histogram quantile over the scraped buckets: a hello answers well under a second.
    let p99 = prometheus
        .query(
            http,
            r#"histogram_quantile(0.99, sum by (le) (wharf_http_request_duration_seconds_bucket{service="hello"}))"#,
        )
        .await
        .expect("a quantile");
    assert!(p99 > 0.0 && p99 < 1.0, "p99 {p99}");
}

/// When the control plane fails a scrape's reads, the node's own series are
/// still served (that is when an operator needs them), without the platform's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_without_the_control_planes_series_when_it_fails() {
    let node = TestNode::start_with(|config| config.metrics_token = Some(SCRAPE_TOKEN.into())).await;
    if node.database_url.is_some() {
        eprintln!("skipped: breaking the control plane is done on SQLite (a node's own file)");
        return;
    }
    node.tenant_with("good", "hello", "hello", "good.test").await;
    assert_eq!(node.get("good.test", "/").await.0, StatusCode::OK);
    // A bad day: the table the generation is read from is gone.
    let control = rusqlite::Connection::open(node.data.path().join("wharf.db")).unwrap();
    control.execute_batch("ALTER TABLE platform_generation RENAME TO broken").unwrap();
    let (status, _, text) = scrape(&node, Some(SCRAPE_TOKEN)).await;
    // A change the admin API cannot record (it bumps the generation) is its
    // own failure: 500, counted as a control-plane error of the admin room.
    let instance = serde_json::json!({ "tenant": "good", "service": "hello", "hosts": ["later.test"] });
    let (failed, body) = node.admin(reqwest::Method::POST, "/v1/instances", Some(instance)).await;
    control.execute_batch("ALTER TABLE broken RENAME TO platform_generation").unwrap();
    assert_eq!(failed, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(sample(&text, "wharf_control_plane_up"), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"wharf_http_requests_total{service="hello",version="1.0.0",status="2xx"}"#), Some(1.0));
    assert!(!text.contains("wharf_generations_behind"), "{text}");
    let (_, _, text) = scrape(&node, Some(SCRAPE_TOKEN)).await;
    assert_eq!(sample(&text, "wharf_control_plane_up"), Some(1.0), "back once it answers: {text}");
    assert_eq!(sample(&text, r#"wharf_control_plane_errors_total{room="admin"}"#), Some(1.0), "{text}");
}
