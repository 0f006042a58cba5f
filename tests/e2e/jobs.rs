//! Jobs: durable, retried with backoff, idempotent, fair between tenants,
//! versioned across updates; and instance setups (migrations, seeder) with
//! maintenance, on both backends.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{guest, on_postgres, TestNode};

/// A manifest of the jobs-lab fixture, its job kinds accepting `versions`,
/// with `extra` TOML after it.
pub fn lab_manifest(service: &str, version: &str, versions: &str, extra: &str) -> String {
    let mut text =
        format!("[service]\nname = \"{service}\"\nversion = \"{version}\"\nsql = [\"sqlite\", \"postgres\"]\n");
    for kind in ["noop", "record", "sleep", "fail", "trap", "chain"] {
        text.push_str(&format!("[[jobs]]\nkind = \"{kind}\"\nversions = {versions}\n"));
    }
    text.push_str(extra);
    text
}

/// Publish jobs-lab as `service` `version`.
async fn publish_lab(node: &TestNode, service: &str, version: &str, versions: &str, extra: &str) -> Value {
    let (status, body) = node.publish_bytes(&lab_manifest(service, version, versions, extra), guest("jobs-lab")).await;
    assert!(status.is_success(), "publish {service} {version}: {body}");
    body
}

/// Poll `GET /` on `host` until it answers 200 (the instance is set up).
pub async fn wait_serving(node: &TestNode, host: &str) {
    let started = Instant::now();
    loop {
        let (status, body) = node.get(host, "/").await;
        if status == StatusCode::OK {
            return;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let instances = node.get_admin("/v1/instances").await;
            let jobs = node.get_admin("/v1/jobs").await;
            panic!("{host} never served: {status} {body}\n{instances:#}\n{jobs:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll job `id` until `done` holds for it.
async fn wait_job(node: &TestNode, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let job = node.get_admin(&format!("/v1/jobs/{id}")).await;
        if done(&job) {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "job never got there: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn enqueue(node: &TestNode, host: &str, query: &str) -> Vec<String> {
    let resp =
        node.http.post(format!("http://{}/enqueue?{query}", node.ingress())).header("host", host).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "enqueue {query}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

async fn runs(node: &TestNode, host: &str) -> Vec<Value> {
    let (status, body) = node.get(host, "/runs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["runs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_retry_with_backoff_die_and_are_idempotent() {
    let node = TestNode::start().await;
    publish_lab(&node, "lab", "1.0.0", "[1]", "").await;
    node.create_tenant("acme").await;
    let instance = node.create_instance("acme", "lab", &["lab.test"]).await;
    // The instance was seeded before it served.
    wait_serving(&node, "lab.test").await;
    let (_, seeded) = node.get("lab.test", "/seeded").await;
    assert!(seeded.contains("unnamed"), "{seeded}");

    // Jobs run and record on which version.
    let ids = enqueue(&node, "lab.test", "kind=record&n=3").await;
    for id in &ids {
        let job = wait_job(&node, id, |j| j["state"] == "succeeded").await;
        assert_eq!(job["ran_version"], "1.0.0");
        assert_eq!(job["attempts"], 1);
    }
    assert_eq!(runs(&node, "lab.test").await.len(), 3);

    // The same idempotency key twice is one job, run once.
    let first = enqueue(&node, "lab.test", "kind=record&key=once&payload=k").await;
    let second = enqueue(&node, "lab.test", "kind=record&key=once&payload=k").await;
    assert_eq!(first, second);
    wait_job(&node, &first[0], |j| j["state"] == "succeeded").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&node, "lab.test").await.iter().filter(|r| r["payload"] == "k").count(), 1);

    // Failing twice, then succeeding: retried after 100 ms, then 200 ms.
    let flaky = enqueue(&node, "lab.test", "kind=fail&payload=3&attempts=5").await;
    let job = wait_job(&node, &flaky[0], |j| j["state"] == "succeeded").await;
    assert_eq!(job["attempts"], 3);
    let created = job["created_at"].as_i64().unwrap();
    let last_start = job["started_at"].as_i64().unwrap();
    assert!(last_start - created >= 300, "two backoffs (100 + 200 ms) before the third attempt: {job}");

    // Out of attempts: dead, with the guest's error; listed, retried, cancelled.
    let doomed = enqueue(&node, "lab.test", "kind=fail&payload=99&attempts=2").await;
    let dead = wait_job(&node, &doomed[0], |j| j["state"] == "dead").await;
    assert_eq!(dead["attempts"], 2);
    assert!(dead["last_error"].as_str().unwrap().contains("asked to fail (attempt 2)"), "{dead}");
    // The metrics see the queue and how attempts ended.
    let metrics = node.metrics().await;
    let value =
        |series: &str| crate::harness::sample(&metrics, series).unwrap_or_else(|| panic!("{series} in\n{metrics}"));
    assert_eq!(value(r#"wharf_jobs{service="lab",state="dead"}"#), 1.0);
    assert!(value(r#"wharf_job_attempts_total{outcome="succeeded"}"#) >= 5.0, "{metrics}");
    assert!(value(r#"wharf_job_attempts_total{outcome="failed"}"#) >= 4.0, "{metrics}");
    // The jobs recorded their runs in SQL: counted on whichever backend holds it.
    let sql_calls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with(r#"wharf_database_calls_total{store="sql""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(sql_calls >= 5.0, "{metrics}");
    let listed = node.get_admin(&format!("/v1/jobs?instance={instance}&state=dead")).await;
    assert!(listed["jobs"].as_array().unwrap().iter().any(|j| j["id"] == doomed[0]), "{listed}");
    let (status, retried) = node.admin(Method::POST, &format!("/v1/jobs/{}/retry", doomed[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["attempts"], 0);
    wait_job(&node, &doomed[0], |j| j["state"] == "dead" && j["attempts"] == 2).await;
    let (status, cancelled) = node.admin(Method::POST, &format!("/v1/jobs/{}/cancel", doomed[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, again) = node.admin(Method::POST, &format!("/v1/jobs/{}/cancel", doomed[0]), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    // A delayed job cancelled before its time never runs.
    let later = enqueue(&node, "lab.test", "kind=record&delay_ms=800&payload=never").await;
    let (status, _) = node.admin(Method::POST, &format!("/v1/jobs/{}/cancel", later[0]), None).await;
    assert_eq!(status, StatusCode::OK);
    // A trap fails the attempt with a reason; a job may queue another.
    let trap = enqueue(&node, "lab.test", "kind=trap&attempts=1").await;
    let trapped = wait_job(&node, &trap[0], |j| j["state"] == "dead").await;
    assert!(trapped["last_error"].as_str().unwrap().contains("trapped"), "{trapped}");
    enqueue(&node, "lab.test", "kind=chain").await;
    let started = Instant::now();
    while !runs(&node, "lab.test").await.iter().any(|r| r["payload"] == "chained") {
        assert!(started.elapsed() < Duration::from_secs(10), "the chained job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!runs(&node, "lab.test").await.iter().any(|r| r["payload"] == "never"));

    // Undeclared kinds and oversized payloads are refused with the reason.
    let resp = node
        .http
        .post(format!("http://{}/enqueue?kind=undeclared", node.ingress()))
        .header("host", "lab.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("[[jobs]]"));
    let (status, body) = node
        .admin(
            Method::POST,
            &format!("/v1/instances/{instance}/jobs"),
            Some(json!({ "kind": "record", "payload": "x".repeat(70_000) })),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = node
        .admin(Method::POST, &format!("/v1/instances/{instance}/jobs"), Some(json!({ "kind": "record", "version": 7 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The platform's own kinds are not a tenant's to queue.
    let (status, body) = node
        .admin(Method::POST, &format!("/v1/instances/{instance}/jobs"), Some(json!({ "kind": "wharf.setup" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = node.admin(Method::GET, "/v1/jobs?state=bogus", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Queue depth per service; jobs count as the instance's usage.
    let stats = node.get_admin("/v1/jobs/stats").await;
    let lab = stats["services"].as_array().unwrap().iter().find(|s| s["service"] == "lab").cloned().unwrap();
    assert!(lab["dead"].as_i64().unwrap() >= 1, "{stats}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let usage = node.usage(&instance).await;
    assert!(usage["jobs"].as_i64().unwrap() >= 10 && usage["fuel"].as_i64().unwrap() > 0, "{usage}");

    // Another tenant's member sees none of it.
    let outsider = node.user("mallory@jobs.test").await;
    let (status, _) = node.call(&outsider, Method::GET, &format!("/v1/jobs/{}", ids[0]), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = node.call(&outsider, Method::POST, &format!("/v1/jobs/{}/retry", doomed[0]), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, listed) = node.call(&outsider, Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_under_v1_run_correctly_after_v2_is_activated() {
    let node = TestNode::start().await;
    // 1.0.0 runs job version 1 only; 2.0.0 runs version 2 only.
    publish_lab(&node, "vlab", "1.0.0", "[1]", "").await;
    node.create_tenant("acme").await;
    node.create_instance("acme", "vlab", &["vlab.test"]).await;
    wait_serving(&node, "vlab.test").await;
    let old = enqueue(&node, "vlab.test", "kind=record&n=3&version=1&delay_ms=1500").await;
    publish_lab(&node, "vlab", "2.0.0", "[2]", "").await;
    let (status, body) =
        node.admin(Method::POST, "/v1/services/vlab/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let info = node.get_admin("/v1/instances").await;
    assert_eq!(info["instances"][0]["setup"]["state"], "ready", "{info}");
    let new = enqueue(&node, "vlab.test", "kind=record&version=2").await;
    // 2.0.0 does not accept version 1: those run on 1.0.0, which queued them.
    for id in &old {
        let job = wait_job(&node, id, |j| j["state"] == "succeeded").await;
        assert_eq!((job["ran_version"].as_str(), job["enqueued_by"].as_str()), (Some("1.0.0"), Some("1.0.0")));
    }
    let job = wait_job(&node, &new[0], |j| j["state"] == "succeeded").await;
    assert_eq!((job["ran_version"].as_str(), job["enqueued_by"].as_str()), (Some("2.0.0"), Some("2.0.0")));
    let versions: Vec<i64> = runs(&node, "vlab.test").await.iter().map(|r| r["version"].as_i64().unwrap()).collect();
    assert_eq!(versions.iter().filter(|v| **v == 1).count(), 3, "{versions:?}");
    // 2.0.0 cannot queue version 1 any more.
    let resp = node
        .http
        .post(format!("http://{}/enqueue?kind=record&version=1", node.ingress()))
        .header("host", "vlab.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// Migrations: one table, then a slow one, then one that fails.
fn migration(name: &str, sqlite: &str, postgres: &str) -> String {
    format!("[[migrations]]\nname = \"{name}\"\nsqlite = \"\"\"{sqlite}\"\"\"\npostgres = \"\"\"{postgres}\"\"\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_put_only_their_instance_in_maintenance_and_a_failure_keeps_the_old_schema() {
    let node = TestNode::start().await;
    let first = migration(
        "0001_posts",
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT); -- a comment; with a semicolon\nCREATE INDEX posts_title ON posts (title);",
        "CREATE TABLE posts (id BIGINT PRIMARY KEY, title TEXT); -- a comment; with a semicolon\nCREATE INDEX posts_title ON posts (title);",
    );
    publish_lab(&node, "mig", "1.0.0", "[1]", &first).await;
    node.create_tenant("acme").await;
    let (status, created) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "mig", "hosts": ["mig.test"], "settings": { "site-name": "Acme" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let instance = created["id"].as_str().unwrap().to_string();
    wait_serving(&node, "mig.test").await;
    let (_, tables) = node.get("mig.test", "/tables").await;
    assert!(tables.contains("\"posts\"") && tables.contains("wharf_migrations"), "{tables}");
    let (_, seeded) = node.get("mig.test", "/seeded").await;
    assert!(seeded.contains("Acme"), "the seeder ran with the instance's settings: {seeded}");
    let info = node.get_admin(&format!("/v1/instances/{instance}")).await;
    assert_eq!(info["setup"]["state"], "ready", "{info}");
    assert_eq!(info["setup"]["applied_migrations"], json!(["0001_posts"]));

    // Another tenant's instance keeps serving throughout.
    node.tenant_with("globex", "hello", "hello", "neighbour.test").await;

    // A slow migration: the instance answers 503 with Retry-After meanwhile.
    // (On PostgreSQL one statement runs 2.5 s: longer than a guest's statement
    // may, which a migration's may.)
    let slow = migration(
        "0002_slow",
        "CREATE TABLE tally AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) SELECT count(*) AS n FROM c;",
        "SELECT pg_sleep(2.5); CREATE TABLE tally (n BIGINT);",
    );
    publish_lab(&node, "mig", "2.0.0", "[1]", &format!("{first}{slow}")).await;
    let (status, body) =
        node.admin(Method::POST, "/v1/services/mig/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let started = Instant::now();
    let (mut maintenance, mut neighbour_ok) = (0, 0);
    loop {
        let resp =
            node.http.get(format!("http://{}/tables", node.ingress())).header("host", "mig.test").send().await.unwrap();
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").is_some();
        let body = resp.text().await.unwrap();
        let (neighbour, _) = node.get("neighbour.test", "/").await;
        assert_eq!(neighbour, StatusCode::OK, "another tenant's instance keeps serving");
        neighbour_ok += 1;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry_after && body.contains("being updated"), "{body}");
                maintenance += 1;
            }
            StatusCode::OK if body.contains("tally") => break,
            StatusCode::OK => assert!(maintenance == 0, "no old-schema answer once maintenance began: {body}"),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the migration never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(maintenance > 0, "the instance answered 503 while it migrated");
    assert!(neighbour_ok > maintenance);

    // A failing migration: nothing of it applies, the instance keeps serving 2.0.0.
    let broken = migration(
        "0003_broken",
        "CREATE TABLE extra (x TEXT); CREATE TABLE posts (x TEXT);",
        "CREATE TABLE extra (x TEXT); CREATE TABLE posts (x TEXT);",
    );
    publish_lab(&node, "mig", "3.0.0", "[1]", &format!("{first}{slow}{broken}")).await;
    let (status, _) = node.admin(Method::POST, "/v1/services/mig/activate", Some(json!({ "version": "3.0.0" }))).await;
    assert_eq!(status, StatusCode::OK);
    let started = Instant::now();
    let info = loop {
        let info = node.get_admin(&format!("/v1/instances/{instance}")).await;
        if info["setup"]["state"] == "failed" {
            break info;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the failed setup was never recorded: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = info["setup"]["error"].as_str().unwrap();
    assert!(error.contains("0003_broken"), "{error}");
    assert_eq!(info["setup"]["target"], "3.0.0");
    assert_eq!(info["setup"]["settled_version"], "2.0.0");
    // (The failure is recorded, then the routes rebuilt: a moment apart.)
    let started = Instant::now();
    let (status, tables) = loop {
        let (status, tables) = node.get("mig.test", "/tables").await;
        if status == StatusCode::OK || started.elapsed() > Duration::from_secs(5) {
            break (status, tables);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, StatusCode::OK, "the instance keeps serving its previous version");
    assert!(tables.contains("tally") && !tables.contains("extra"), "none of the failed migration applied: {tables}");
    // The failed setup job is dead, with the same error, from the moment the
    // instance says it failed (both are written in one transaction).
    let dead = node.get_admin(&format!("/v1/jobs?instance={instance}&kind=wharf.setup&state=dead")).await;
    assert_eq!(dead["jobs"].as_array().unwrap().len(), 1, "{dead}");
    assert!(dead["jobs"][0]["last_error"].as_str().unwrap_or_default().contains("0003_broken"), "{dead}");
}

/// Wait until instance `id`'s setup is `failed`; returns the instance.
async fn wait_setup_failed(node: &TestNode, id: &str, target: &str) -> Value {
    let started = Instant::now();
    loop {
        let info = node.get_admin(&format!("/v1/instances/{id}")).await;
        if info["setup"]["state"] == "failed" && info["setup"]["target"] == target {
            return info;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the setup to {target} never failed: {info:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_setup_the_api_shows_and_queues_for_the_version_that_serves() {
    // A setup may run 3 s here: a migration still running then is cut short.
    let node = TestNode::start_with(|c| c.jobs.timeout = Duration::from_secs(3)).await;
    let names = ["0001_a", "0002_b", "0003_c", "0004_d", "0005_e", "0006_f", "0007_g"];
    let mut v1 = String::new();
    for (i, name) in names.iter().enumerate() {
        let sql = format!("CREATE TABLE t{i} (x TEXT);");
        v1.push_str(&migration(name, &sql, &sql));
    }
    publish_lab(&node, "mig", "1.0.0", "[1]", &v1).await;
    node.create_tenant("acme").await;
    let id = node.create_instance("acme", "mig", &["mig.test"]).await;
    wait_serving(&node, "mig.test").await;

    // 2.0.0 adds job version 2 and a migration that fails.
    let broken = migration("0008_broken", "CREATE TABLE t0 (x TEXT);", "CREATE TABLE t0 (x TEXT);");
    publish_lab(&node, "mig", "2.0.0", "[1, 2]", &format!("{v1}{broken}")).await;
    let (status, body) =
        node.admin(Method::POST, "/v1/services/mig/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let info = wait_setup_failed(&node, &id, "2.0.0").await;
    // What serves, and what it is trying to reach.
    assert_eq!(info["running_version"], "1.0.0", "{info:#}");
    assert_eq!(info["wanted_version"], "2.0.0", "{info:#}");
    assert_eq!(info["setup"]["settled_version"], "1.0.0", "{info:#}");
    // The migrations the database has, in the order they were applied.
    assert_eq!(info["setup"]["applied_migrations"], json!(names), "{info:#}");
    assert!(info["setup"]["error"].as_str().unwrap().contains("0008_broken"), "{info:#}");

    // A job only 2.0.0 accepts is refused: 1.0.0 serves, on 1.0.0's schema.
    let path = format!("/v1/instances/{id}/jobs");
    let (status, answer) = node.admin(Method::POST, &path, Some(json!({ "kind": "noop", "version": 2 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("mig 1.0.0 does not declare job \"noop\" version 2"),
        "{answer}"
    );
    // One 1.0.0 accepts is queued as 1.0.0's.
    let (status, queued) = node.admin(Method::POST, &path, Some(json!({ "kind": "noop", "version": 1 }))).await;
    assert_eq!(status, StatusCode::CREATED, "{queued}");
    let job = node.get_admin(&format!("/v1/jobs/{}", queued["id"].as_str().unwrap())).await;
    assert_eq!(job["enqueued_by"], "1.0.0", "{job:#}");

    // 3.0.0's migration runs past the setup's deadline: the error names that deadline.
    let slow = migration(
        "0008_slow",
        "CREATE TABLE slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000000) SELECT count(*) AS n FROM c;",
        "SELECT pg_sleep(6);",
    );
    publish_lab(&node, "mig", "3.0.0", "[1]", &format!("{v1}{slow}")).await;
    let (status, body) =
        node.admin(Method::POST, "/v1/services/mig/activate", Some(json!({ "version": "3.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // While it is being set up, the API queues nothing for it (503, retry later).
    let mut refused = None;
    for _ in 0..100 {
        let request = json!({ "kind": "noop", "version": 1, "idempotency_key": "during-setup" });
        let (status, answer) = node.admin(Method::POST, &path, Some(request)).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the API refused jobs while the instance was set up");
    assert!(refused["error"].as_str().unwrap().contains("being set up"), "{refused}");
    let info = wait_setup_failed(&node, &id, "3.0.0").await;
    let error = info["setup"]["error"].as_str().unwrap();
    assert!(error.contains("deadline of 3 s") && !error.contains("2 s"), "{error}");
    assert_eq!(info["running_version"], "1.0.0", "{info:#}");
    assert_eq!(info["setup"]["applied_migrations"], json!(names), "{info:#}");
    // (This node's routes follow the failed setup within moments.)
    let started = std::time::Instant::now();
    loop {
        let (status, body) = node.get("mig.test", "/").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the instance keeps serving 1.0.0: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flood_does_not_hold_back_another_tenants_job() {
    let node = TestNode::start_with(|config| config.jobs.concurrency = 4).await;
    publish_lab(&node, "fair", "1.0.0", "[1]", "").await;
    node.create_tenant("flood").await;
    node.create_tenant("quiet").await;
    let flood = node.create_instance("flood", "fair", &["flood.test"]).await;
    node.create_instance("quiet", "fair", &["quiet.test"]).await;
    wait_serving(&node, "flood.test").await;
    wait_serving(&node, "quiet.test").await;

    // 100,000 jobs of 20 ms each for one tenant, written straight into the
    // queue (as fast as a bulk producer could), ...
    let total: i64 = 100_000;
    insert_flood(&node, &flood, "flood", total as usize).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... then one job for another tenant: it starts within a claim or two.
    let queued_at = Instant::now();
    let quiet = enqueue(&node, "quiet.test", "kind=record").await;
    let job = wait_job(&node, &quiet[0], |j| j["state"] == "succeeded").await;
    let waited = queued_at.elapsed();
    assert!(waited < Duration::from_secs(3), "the quiet tenant's job waited {waited:?}: {job}");
    let stats = node.get_admin("/v1/jobs/stats?tenant=flood").await;
    let queued = stats["services"][0]["queued"].as_i64().unwrap();
    assert!(queued > total - 2_000, "the flood was still queued meanwhile: {stats}");
    // The flood counts against its tenant's pending-jobs quota.
    let quotas = node.get_admin("/v1/tenants/flood/quotas").await;
    let pending = quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == "pending_jobs").cloned().unwrap();
    assert!(pending["used"].as_i64().unwrap() > total - 2_000, "{quotas}");
    let (status, body) =
        node.admin(Method::PUT, "/v1/tenants/flood/quotas/pending_jobs", Some(json!({ "limit": 1000 }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        node.admin(Method::POST, &format!("/v1/instances/{flood}/jobs"), Some(json!({ "kind": "record" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "past the quota: {body}");
    assert!(body["error"].as_str().unwrap().contains("pending_jobs"), "{body}");
}

/// Write `count` 20 ms `sleep` jobs for `instance` straight into the queue.
async fn insert_flood(node: &TestNode, instance: &str, tenant: &str, count: usize) {
    use sqlx::Connection as _;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let rows: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "('flood-{i}', '{tenant}', '{instance}', 'fair', 'sleep', X'3230', 1, '1.0.0', {now}, 0, 0, 5, 'queued', {now})"
            )
        })
        .collect();
    let columns = "INSERT INTO jobs (id, tenant_id, instance_id, service, kind, payload, job_version, enqueued_by, \
                   run_at, priority, attempts, max_attempts, state, created_at) VALUES ";
    let counter = format!(
        "INSERT INTO job_tenants (tenant_id, served_at, pending) VALUES ('{tenant}', 0, {count}) \
         ON CONFLICT (tenant_id) DO UPDATE SET pending = job_tenants.pending + {count}"
    );
    if on_postgres() {
        let mut conn = crate::harness::pg_admin(node).await;
        let mut tx = conn.begin().await.unwrap();
        for chunk in rows.chunks(5000) {
            let sql = format!("{columns}{}", chunk.join(", ")).replace("X'3230'", "'\\x3230'::bytea");
            sqlx::query(&sql).execute(&mut *tx).await.unwrap();
        }
        sqlx::query(&counter).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        let path = node.data.path().join("wharf.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        for chunk in rows.chunks(5000) {
            sqlx::query(&format!("{columns}{}", chunk.join(", "))).execute(&mut *tx).await.unwrap();
        }
        sqlx::query(&counter).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_node_is_killed_mid_run_runs_again_exactly_once_after_its_lease() {
    let served = crate::harness::Served::start(&["--job-timeout", "3", "--job-lease", "4"]).await;
    let http = crate::harness::client();
    let form = reqwest::multipart::Form::new()
        .text("manifest", lab_manifest("lab", "1.0.0", "[1]", ""))
        .part("component", reqwest::multipart::Part::bytes(guest("jobs-lab")).file_name("c.wasm"));
    let resp = http
        .post(format!("{}/v1/services/lab/versions", served.admin))
        .bearer_auth(&served.key)
        .multipart(form)
        .send()
        .await;
    assert!(resp.unwrap().status().is_success());
    for (path, body) in [
        ("/v1/tenants", json!({ "id": "acme" })),
        ("/v1/instances", json!({ "tenant": "acme", "service": "lab", "hosts": ["lab.test"] })),
    ] {
        let resp = http.post(format!("{}{path}", served.admin)).bearer_auth(&served.key).json(&body).send().await;
        assert_eq!(resp.unwrap().status(), StatusCode::CREATED);
    }
    let get = |ingress: std::net::SocketAddr, path: &'static str| {
        let http = http.clone();
        async move {
            let resp = http.get(format!("http://{ingress}{path}")).header("host", "lab.test").send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let started = Instant::now();
    let ingress = served.ingress;
    while get(ingress, "/").await.0 != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(20), "the instance never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = http
        .post(format!("http://{ingress}/enqueue?kind=sleep&payload=2000"))
        .header("host", "lab.test")
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["ids"][0].as_str().unwrap().to_string();
    let job = |admin: String, key: String| {
        let (http, id) = (http.clone(), id.clone());
        async move {
            let resp = http.get(format!("{admin}/v1/jobs/{id}")).bearer_auth(key).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    // Kill the node while the job sleeps inside its guest.
    let started = Instant::now();
    let first = loop {
        let j = job(served.admin.clone(), served.key.clone()).await;
        if j["state"] == "running" {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the job never started: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = served.kill_and_restart().await;
    let started = Instant::now();
    let done = loop {
        let j = job(served.admin.clone(), served.key.clone()).await;
        if j["state"] == "succeeded" {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the job never completed: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["attempts"], 2, "{done}");
    // Not before the first worker's lease ran out: never two at a time.
    let (first_start, second_start) = (first["started_at"].as_i64().unwrap(), done["started_at"].as_i64().unwrap());
    assert!(second_start - first_start >= 4000, "taken over after the lease: {first} {done}");
    // The killed run never finished; the second finished once.
    let (status, body) = get(served.ingress, "/runs").await;
    assert_eq!(status, StatusCode::OK);
    let runs: Value = serde_json::from_str(&body).unwrap();
    let ours: Vec<&Value> = runs["runs"].as_array().unwrap().iter().filter(|r| r["job_id"] == id.as_str()).collect();
    assert_eq!(ours.len(), 1, "{runs}");
    assert_eq!(ours[0]["attempt"], 2);
    served.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_run_once_per_period_and_the_tasks_service_runs_its_own() {
    let node = TestNode::start().await;
    publish_lab(&node, "clock", "1.0.0", "[1]", "[[jobs]]\nkind = \"tick\"\nevery = \"1s\"\n").await;
    node.create_tenant("acme").await;
    let started = Instant::now();
    node.create_instance("acme", "clock", &["clock.test"]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let ticks = runs(&node, "clock.test").await.iter().filter(|r| r["kind"] == "tick").count();
    // One per second boundary crossed, plus the first period's.
    let most = started.elapsed().as_secs_f64().ceil() as usize + 1;
    assert!((3..=most).contains(&ticks), "one tick per second: {ticks}, at most {most}");
    let (status, body) = node.publish_bytes(&crate::harness::lab_bad_period(), guest("jobs-lab")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("every"), "{body}");

    // The tasks service runs a task in the background and digests on a schedule.
    let (status, body) = node.publish_bytes(&crate::harness::service_manifest("tasks"), guest("tasks")).await;
    assert!(status.is_success(), "{body}");
    let tasks = node.create_instance("acme", "tasks", &["tasks.test"]).await;
    let resp = node
        .http
        .post(format!("http://{}/tasks", node.ingress()))
        .header("host", "tasks.test")
        .body(r#"{"title": "ship it"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (status, queued) = node
        .admin(
            Method::POST,
            &format!("/v1/instances/{tasks}/jobs"),
            Some(json!({ "kind": "run-task", "payload": "1" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{queued}");
    let started = Instant::now();
    loop {
        let (_, task) = node.get("tasks.test", "/tasks/1").await;
        if task.contains("\"done\"") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the task never ran: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    loop {
        let (_, digests) = node.get("tasks.test", "/digests").await;
        if digests.contains("\"at\"") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no digest was written: {digests}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one of the tenant's quotas shows as used.
async fn quota_used(node: &TestNode, tenant: &str, quota: &str) -> i64 {
    let quotas = node.get_admin(&format!("/v1/tenants/{tenant}/quotas")).await;
    let found = quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == quota).cloned();
    found.unwrap_or_else(|| panic!("no {quota} in {quotas}"))["used"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_fill_the_control_plane_with_dead_jobs_or_big_payloads() {
    let node = TestNode::start_with(|config| {
        config.trust.quotas.pending_jobs_per_tenant = 4;
        config.trust.quotas.job_bytes_per_tenant = 100_000;
        config.jobs.kept_finished = 3;
    })
    .await;
    publish_lab(&node, "hog", "1.0.0", "[1]", "").await;
    node.create_tenant("hog").await;
    let instance = node.create_instance("hog", "hog", &["hog.test"]).await;
    wait_serving(&node, "hog.test").await;
    let path = format!("/v1/instances/{instance}/jobs");

    // Jobs that fail at once die, and dead jobs still count: a tenant cannot
    // pile them up without end.
    let mut dead = Vec::new();
    for n in 0..4 {
        let (status, body) = node
            .admin(
                Method::POST,
                &path,
                Some(json!({ "kind": "fail", "payload": format!("not a number {n}"), "max_attempts": 1 })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        dead.push(body["id"].as_str().unwrap().to_string());
    }
    for id in &dead {
        wait_job(&node, id, |j| j["state"] == "dead").await;
    }
    assert_eq!(quota_used(&node, "hog", "pending_jobs").await, 4);
    let (status, body) = node.admin(Method::POST, &path, Some(json!({ "kind": "noop" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("pending_jobs") && body["error"].as_str().unwrap().contains("dead"),
        "{body}"
    );
    // Cancelling a dead job frees its place; retrying one keeps it taken (it
    // dies again here, and still counts).
    let (status, body) = node.admin(Method::POST, &format!("/v1/jobs/{}/cancel", dead[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = node.admin(Method::POST, &format!("/v1/jobs/{}/retry", dead[1]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_job(&node, &dead[1], |j| j["state"] == "dead" && j["attempts"] == 1).await;
    assert_eq!(quota_used(&node, "hog", "pending_jobs").await, 3);
    let later = json!({ "kind": "record", "delay_ms": 600_000 });
    let (status, body) = node.admin(Method::POST, &path, Some(later.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let waiting = body["id"].as_str().unwrap().to_string();
    let (status, _) = node.admin(Method::POST, &path, Some(later)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for id in dead[1..].iter().chain([&waiting]) {
        let (status, body) = node.admin(Method::POST, &format!("/v1/jobs/{id}/cancel"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(quota_used(&node, "hog", "pending_jobs").await, 0);

    // Payload bytes are bounded too: what is kept counts, a succeeded job's
    // payload is dropped at once.
    let before = quota_used(&node, "hog", "job_bytes").await;
    let big = "x".repeat(60_000);
    let (status, body) =
        node.admin(Method::POST, &path, Some(json!({ "kind": "record", "payload": big, "delay_ms": 600_000 }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let waiting = body["id"].as_str().unwrap().to_string();
    assert_eq!(quota_used(&node, "hog", "job_bytes").await, before + 60_000);
    let (status, body) = node.admin(Method::POST, &path, Some(json!({ "kind": "noop", "payload": big }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("job_bytes"), "{body}");
    // A guest enqueueing past it gets the same refusal.
    let resp = node
        .http
        .post(format!("http://{}/enqueue", node.ingress()))
        .query(&[("kind", "noop"), ("payload", big.as_str())])
        .header("host", "hog.test")
        .send()
        .await
        .unwrap();
    let (status, text) = (resp.status(), resp.text().await.unwrap());
    assert!(!status.is_success() && text.contains("job_bytes"), "{status} {text}");
    // A small job runs; once it succeeded its payload is gone from the count.
    let (status, body) =
        node.admin(Method::POST, &path, Some(json!({ "kind": "noop", "payload": "y".repeat(30_000) }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let small = body["id"].as_str().unwrap().to_string();
    wait_job(&node, &small, |j| j["state"] == "succeeded").await;
    assert_eq!(quota_used(&node, "hog", "job_bytes").await, before + 60_000);
    let shown = node.get_admin(&format!("/v1/jobs/{small}")).await;
    assert_eq!(shown["payload"], "", "{shown}");
    // An operator raises the quota and the big job fits.
    let (status, body) =
        node.admin(Method::PUT, "/v1/tenants/hog/quotas/job_bytes", Some(json!({ "limit": 1_000_000 }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = node.admin(Method::POST, &path, Some(json!({ "kind": "noop", "payload": big }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_job(&node, body["id"].as_str().unwrap(), |j| j["state"] == "succeeded").await;
    let (status, _) = node.admin(Method::POST, &format!("/v1/jobs/{waiting}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);

    // Only the newest finished jobs are kept (3 here), and what the quota
    // counts is exactly the payloads still stored.
    let stored = |jobs: &Value| -> (usize, i64) {
        let jobs = jobs["jobs"].as_array().unwrap();
        let finished = jobs.iter().filter(|j| j["state"] == "succeeded" || j["state"] == "cancelled").count();
        (finished, jobs.iter().map(|j| j["payload"].as_str().unwrap_or_default().len() as i64).sum())
    };
    let all = format!("/v1/jobs?instance={instance}&limit=1000");
    assert!(stored(&node.get_admin(&all).await).0 > 3);
    let deleted = node.node().node.queue.purge().await.unwrap();
    assert!(deleted > 0);
    let (finished, bytes) = stored(&node.get_admin(&all).await);
    assert_eq!(finished, 3);
    assert_eq!(quota_used(&node, "hog", "job_bytes").await, bytes);
}
