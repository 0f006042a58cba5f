//! Several nodes on one PostgreSQL control plane (run by the suite's PostgreSQL
//! pass; on SQLite there is nothing to share and these tests return at once).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{postgres_base, TestNode};

/// Poll `check` until it holds, for at most 10 s; returns how long it took.
async fn within<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_platform() {
    if postgres_base().is_none() {
        eprintln!("skipped: two_nodes_share_one_platform needs WHARF_TEST_DATABASE (PostgreSQL)");
        return;
    }
    let a = TestNode::start().await;
    let b = TestNode::start_sharing(&a).await;

    // Published, configured and bound through node A; node B serves it.
    a.publish("hello", "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_instance("acme", "hello", &["hello.acme.test"]).await;
    let took =
        within("node B routing the new instance", || async { b.get("hello.acme.test", "/").await.0 == StatusCode::OK })
            .await;
    eprintln!("a new instance reached the other node in {took:?}");
    let (_, body) = b.get("hello.acme.test", "/").await;
    assert!(body.contains("Hello"), "{body}");
    // B compiled the component it fetched from the control plane.
    let info = b.get_admin("/v1/node").await;
    assert_eq!(info["versions_compiled"], 1, "{info}");

    // A new version, activated on A: B switches to it.
    let v2 = crate::harness::manifest("hello", "2.0.0");
    let (status, published) = a.publish_bytes(&v2, crate::harness::guest("echo")).await;
    assert!(status.is_success(), "{published}");
    let (status, answer) =
        a.admin(Method::POST, "/v1/services/hello/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let activated = Instant::now();
    within("node B serving 2.0.0", || async { !b.get("hello.acme.test", "/").await.1.contains("Hello from Wharf") })
        .await;
    eprintln!("activate on A -> first 2.0.0 response on B: {:?}", activated.elapsed());
    // B counted the changes it applied, and how long each took.
    let text = b.metrics().await;
    let caught_up = crate::harness::sample(&text, "wharf_catch_up_seconds_count").unwrap_or(0.0);
    assert!(caught_up >= 2.0, "B applied the instance and the activation: {text}");
    assert!(!text.contains("wharf_control_plane_errors_total{"), "no failed reads: {text}");

    // A session revoked through A is refused by B; readiness reports caught up.
    let token = b.user("ann@acme.test").await;
    assert_eq!(b.call(&token, Method::GET, "/v1/me", None).await.0, StatusCode::OK);
    a.call(&token, Method::POST, "/v1/logout", None).await;
    assert_eq!(b.call(&token, Method::GET, "/v1/me", None).await.0, StatusCode::UNAUTHORIZED);
    let ready = b.http.get(format!("{}/readyz", b.admin_url())).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let live = b.http.get(format!("{}/healthz", b.admin_url())).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    // With Redis, an instance's key-value store is one, whichever node serves it.
    if crate::harness::redis_url().is_some() {
        a.publish("misbehave", "kvtest", "1.0.0").await;
        a.create_instance("acme", "kvtest", &["kv.acme.test"]).await;
        within("node B routing the kv instance", || async {
            !b.get("kv.acme.test", "/kv/nothing").await.1.contains("no service is bound")
        })
        .await;
        let (status, _, body) = a.ingress_call("kv.acme.test", Method::PUT, "/kv/greeting", None, "written on A").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(b.get("kv.acme.test", "/kv/greeting").await, (StatusCode::OK, "written on A".to_string()));
        let increments = (0..20).map(|i| {
            let node = if i % 2 == 0 { &a } else { &b };
            node.ingress_call("kv.acme.test", Method::POST, "/kv/hits/incr", None, "")
        });
        for (status, _, body) in futures::future::join_all(increments).await {
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        assert_eq!(a.get("kv.acme.test", "/kv/hits").await.1, "20", "increments through both nodes are atomic");
    }

    // An instance's SQL database is one too: written through A, read through B.
    a.publish("misbehave", "sqltest", "1.0.0").await;
    a.create_instance("acme", "sqltest", &["sql.acme.test"]).await;
    within("node B routing the sql instance", || async {
        b.get("sql.acme.test", "/sql/dialect").await.0 == StatusCode::OK
    })
    .await;
    for statement in ["CREATE TABLE notes (id int PRIMARY KEY, body text)", "INSERT INTO notes VALUES (1, 'from A')"] {
        let (status, _, body) = a.ingress_call("sql.acme.test", Method::POST, "/sql/execute", None, statement).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {body}");
    }
    assert_eq!(b.get("sql.acme.test", "/sql/read/1").await, (StatusCode::OK, "from A".to_string()));

    // A grant given and revoked through A holds on B at once.
    let forum = crate::harness::service_manifest("forum");
    assert!(a.publish_bytes(&forum, crate::harness::guest("forum")).await.0.is_success());
    a.create_instance("acme", "forum", &["forum.acme.test"]).await;
    let gus = a.user("gus@acme.test").await;
    let ops = a.admin_key.clone();
    a.expect(&ops, Method::POST, "/v1/tenants/acme/members", json!({ "email": "gus@acme.test" }), StatusCode::CREATED)
        .await;
    let grant = json!({ "email": "gus@acme.test", "permission": "forum.addUsers" });
    a.expect(&ops, Method::POST, "/v1/tenants/acme/grants", grant, StatusCode::CREATED).await;
    let add = || b.ingress_call("forum.acme.test", Method::POST, "/users", Some(&gus), r#"{"name":"gus"}"#);
    within("node B serving the forum with gus's grant", || async { add().await.0 == StatusCode::CREATED }).await;
    let (status, answer) =
        a.call(&ops, Method::DELETE, "/v1/tenants/acme/grants/gus@acme.test/forum.addUsers", None).await;
    assert!(status.is_success(), "{answer}");
    assert_eq!(add().await.0, StatusCode::FORBIDDEN, "revoked on A, refused on B");

    // One database_bytes quota, whichever nodes write: each node re-reads the
    // tenant's sizes from the server (at most once a second).
    let (status, answer) =
        a.admin(Method::PUT, "/v1/tenants/acme/quotas/database_bytes", Some(json!({ "limit": 1 << 20 }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let write = |node: &'static str| {
        let n = if node == "a" { &a } else { &b };
        let insert = "INSERT INTO blobs SELECT decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 37500)";
        n.ingress_call("sql.acme.test", Method::POST, "/sql/execute", None, insert)
    };
    let (status, _, body) =
        a.ingress_call("sql.acme.test", Method::POST, "/sql/execute", None, "CREATE TABLE blobs (b bytea)").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = write("a").await;
    assert_eq!(status, StatusCode::OK, "600 KB through A: {body}");
    let (status, _, body) = write("b").await;
    assert_eq!(status, StatusCode::OK, "600 KB more through B, whose sizes are a second old: {body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = write("a").await;
    assert_ne!(status, StatusCode::OK, "A counts what B wrote: {body}");
    assert!(body.contains("database_bytes"), "{body}");
    let quotas = b.get_admin("/v1/tenants/acme/quotas").await;
    let used = quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == "database_bytes").unwrap()["used"]
        .as_i64()
        .unwrap();
    assert!(used > 1_200_000, "both nodes report what the server holds: {quotas}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_databases_need_postgres_services_and_bounded_connections() {
    if postgres_base().is_none() {
        eprintln!("skipped: instance_databases_need_postgres_services_and_bounded_connections needs PostgreSQL");
        return;
    }
    let node = TestNode::start_with(|c| c.instance_connections = 2).await;
    node.create_tenant("acme").await;
    // A service written for SQLite only is refused, with what to do about it.
    let sqlite_only = "[service]\nname = \"legacy\"\nversion = \"1.0.0\"\n";
    assert!(node.publish_bytes(sqlite_only, crate::harness::guest("misbehave")).await.0.is_success());
    let (status, answer) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "legacy", "hosts": ["l.test"] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("PostgreSQL") && message.contains("\"postgres\" to `sql`"), "{message}");
    let (status, answer) =
        node.admin(Method::POST, "/v1/services/legacy/activate", Some(json!({ "version": "1.0.0" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Four instances busy at once through a node allowed two connections: every
    // query is answered, and the node never holds more than two.
    node.publish("misbehave", "probe", "1.0.0").await;
    let hosts = ["p1.test", "p2.test", "p3.test", "p4.test"];
    for host in hosts {
        node.create_instance("acme", "probe", &[host]).await;
    }
    let calls = hosts.iter().cycle().take(24).map(|host| {
        node.ingress_call(host, Method::POST, "/sql/query", None, "SELECT count(*) FROM generate_series(1, 20000)")
    });
    for (status, _, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wharf-instance' AND datname = current_database()",
    )
    .fetch_one(&mut crate::harness::pg_admin(&node).await)
    .await
    .unwrap();
    assert!(open <= 2, "{open} connections open");
    let info = node.get_admin("/v1/node").await;
    assert_eq!(info["cluster"]["instance_connections"]["max"], 2, "{info}");
    assert!(info["cluster"]["instance_connections"]["open"].as_u64().unwrap() <= 2, "{info}");
}

/// A free port on 127.0.0.1 (bound and released: HAProxy binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_serving_when_a_node_goes_away() {
    if postgres_base().is_none() {
        eprintln!("skipped: haproxy_keeps_serving_when_a_node_goes_away needs WHARF_TEST_DATABASE (PostgreSQL)");
        return;
    }
    if std::process::Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("skipped: haproxy_keeps_serving_when_a_node_goes_away needs haproxy installed");
        return;
    }
    let a = TestNode::start().await;
    let mut b = TestNode::start_sharing(&a).await;
    a.publish("hello", "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_instance("acme", "hello", &["hello.acme.test"]).await;
    within("node B routing", || async { b.get("hello.acme.test", "/").await.0 == StatusCode::OK }).await;

    // The configuration scripts/cluster writes: readiness checks, retries of
    // idempotent requests on another node.
    let port = free_port();
    let admin_port = |n: &TestNode| n.admin_url().rsplit(':').next().unwrap().to_string();
    let config = format!(
        "global\n    maxconn 256\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
         \x20   option redispatch\n    retries 2\n    retry-on conn-failure empty-response response-timeout 502 503 504\n\
         \x20   option httpchk GET /readyz\n    http-check expect status 200\n    default-server inter 200ms fall 2 rise 1\n\
         frontend ingress\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n    http-request disable-l7-retry unless {{ method GET HEAD PUT DELETE OPTIONS }}\n\
         \x20   server a {} check port {}\n    server b {} check port {}\n",
        a.ingress(),
        admin_port(&a),
        b.ingress(),
        admin_port(&b),
    );
    let path = a.data.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    /// Stops HAProxy however the test ends.
    struct Stopped(std::process::Child);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let haproxy = Stopped(
        std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let front = format!("http://127.0.0.1:{port}/");
    let get = || async {
        match a.http.get(&front).header("host", "hello.acme.test").send().await {
            Ok(resp) => resp.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    };
    within("HAProxy serving", || async { get().await == StatusCode::OK }).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // both servers checked up

    // Node B stops: every GET still succeeds, retried on node A.
    b.stop().await;
    let mut failed = 0;
    for _ in 0..50 {
        if get().await != StatusCode::OK {
            failed += 1;
        }
    }
    drop(haproxy);
    assert_eq!(failed, 0, "GETs failed while a node was gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_queue_and_run_each_job_once() {
    if postgres_base().is_none() {
        eprintln!("skipped: two_nodes_share_one_queue_and_run_each_job_once needs WHARF_TEST_DATABASE (PostgreSQL)");
        return;
    }
    let a = TestNode::start().await;
    let b = TestNode::start_sharing(&a).await;
    let manifest = crate::jobs::lab_manifest("lab", "1.0.0", "[1]", "");
    assert!(a.publish_bytes(&manifest, crate::harness::guest("jobs-lab")).await.0.is_success());
    a.create_tenant("acme").await;
    a.create_instance("acme", "lab", &["lab.acme.test"]).await;
    within("node B routing the instance", || async { b.get("lab.acme.test", "/").await.0 == StatusCode::OK }).await;
    // 200 jobs queued through both nodes, claimed by the workers of both.
    for node in [&a, &b] {
        let resp = node
            .http
            .post(format!("http://{}/enqueue?kind=record&n=100", node.ingress()))
            .header("host", "lab.acme.test")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    within("every job done", || async {
        let stats = a.get_admin("/v1/jobs/stats").await;
        stats["services"].as_array().is_some_and(|s| s.iter().all(|q| q["queued"] == 0 && q["running"] == 0))
    })
    .await;
    let (_, runs) = a.get("lab.acme.test", "/runs").await;
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    let ids: std::collections::HashSet<&str> =
        runs["runs"].as_array().unwrap().iter().filter_map(|r| r["job_id"].as_str()).collect();
    assert_eq!((runs["runs"].as_array().unwrap().len(), ids.len()), (200, 200), "each job ran exactly once");
}
