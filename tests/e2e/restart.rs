//! Restarts: compiled artifacts come from the cache, state and usage survive, and
//! a graceful shutdown lets in-flight requests finish.

use std::time::Duration;

use reqwest::StatusCode;

use crate::harness::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_from_the_compiled_cache_without_recompiling() {
    let mut node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "hello.test").await;
    node.publish("echo", "hello", "1.1.0").await;
    node.publish("echo", "echo", "0.1.0").await;
    assert_eq!(node.get("hello.test", "/").await.0, StatusCode::OK);
    let before = node.get_admin("/v1/node").await;
    assert_eq!(before["versions_compiled"], 3, "{before}");

    node.restart().await;
    let after = node.get_admin("/v1/node").await;
    assert_eq!(after["versions_compiled"], 0, "a restart must not recompile: {after}");
    assert_eq!(after["versions_loaded_from_cache"], 3, "{after}");
    assert_eq!(node.get("hello.test", "/").await, (StatusCode::OK, "Hello from Wharf!\n".to_string()));
    assert_eq!(node.usage(&instance).await["requests"], 2, "usage survives a restart");

    // A damaged cache entry is recompiled, not trusted. (Only while stopped: a
    // running node maps its artifacts into memory.)
    node.stop().await;
    for entry in std::fs::read_dir(node.data.path().join("compiled")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    node.start_again().await;
    // Two distinct contents (1.1.0 and echo 0.1.0 are the same bytes): each is
    // recompiled once, and the second version sharing bytes finds the fresh artifact.
    let after = node.get_admin("/v1/node").await;
    assert_eq!(after["versions_compiled"], 2, "{after}");
    assert_eq!(after["versions_loaded_from_cache"], 1, "{after}");
    assert_eq!(node.get("hello.test", "/").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_in_flight_requests_finish() {
    let mut node = TestNode::start().await;
    node.tenant_with("acme", "misbehave", "slow", "slow.test").await;
    let in_flight = {
        let (http, addr) = (node.http.clone(), node.ingress());
        tokio::spawn(async move {
            let resp =
                http.get(format!("http://{addr}/sleep?ms=1000")).header("host", "slow.test").send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = node.ingress();
    node.running.take().unwrap().shutdown().await.unwrap();
    assert_eq!(in_flight.await.unwrap(), (StatusCode::OK, "slept\n".to_string()));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "a stopped node accepts no connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_sigkill_under_load_within_the_requests_in_flight() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let served = crate::harness::Served::start(&[]).await;
    served.tenant_with("hello", "hello", "acme", "hello.acme.test").await;
    let http = crate::harness::client();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    const CLIENTS: u64 = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, stop, received, addr) = (http.clone(), stop.clone(), received.clone(), served.ingress);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(format!("http://{addr}/")).header("host", "hello.acme.test").send().await {
                    Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                        if resp.bytes().await.is_ok() {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
        }));
    }
    // 2.5 s of load, then SIGKILL in the middle of it (no flush, no shutdown).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let served = served.kill_and_restart().await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let received = received.load(Ordering::Relaxed);
    let admin = |path: String| {
        let (http, url, key) = (http.clone(), format!("{}{path}", served.admin), served.key.clone());
        async move { http.get(url).bearer_auth(key).send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let instances = admin("/v1/instances".into()).await;
    let id = instances["instances"][0]["id"].as_str().unwrap().to_string();
    let usage = admin(format!("/v1/instances/{id}/usage")).await;
    let billed = usage["requests"].as_u64().unwrap();
    eprintln!("served {received} responses, billed {billed} after SIGKILL");
    assert!(received > 200, "the load ran: {received}");
    // A request counts once its response is handed over: never billed without
    // being served. Served but not billed: at most the requests in flight at
    // the kill (a response sent while its guest was still finishing).
    assert!(billed <= received, "billed {billed} is more than the {received} responses served");
    assert!(received - billed <= CLIENTS, "served {received}, billed {billed}");
    served.stop();
}

/// A node holds idle instances as routes only: an instance's databases open on
/// its first call and close once it is idle. Its tenant's database quota still
/// counts every instance, opened since the start or not: an instance written
/// to before a restart is counted when another of its tenant's opens after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_open_on_first_use_close_when_idle_and_the_quota_counts_the_unopened() {
    let adjust = |config: &mut wharf::NodeConfig| {
        config.database_idle = Duration::from_secs(1);
        config.trust.quotas.database_bytes_per_tenant = 1 << 20;
    };
    let mut node = TestNode::start_with(adjust).await;
    node.publish("misbehave", "misbehave", "1.0.0").await;
    node.create_tenant("acme").await;
    node.create_instance("acme", "misbehave", &["a.acme.test"]).await;
    node.create_instance("acme", "misbehave", &["b.acme.test"]).await;
    let (table, insert) = if crate::harness::on_postgres() {
        // 200,000 random bytes (incompressible, as randomblob's).
        (
            "CREATE TABLE t (b bytea)",
            "INSERT INTO t SELECT decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 12500)",
        )
    } else {
        ("CREATE TABLE t (b BLOB)", "INSERT INTO t VALUES (randomblob(200000))")
    };
    for host in ["a.acme.test", "b.acme.test"] {
        let (status, body) = sql(&node, host, table).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..3 {
        let (status, body) = sql(&node, "a.acme.test", insert).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Idle, both close.
    let started = std::time::Instant::now();
    while open(&node).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "idle databases were never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    node.stop().await;
    node.start_again_with(adjust).await;
    // Routed, nothing opened.
    assert_eq!(open(&node).await, 0, "a restart opens no instance's databases");
    let quotas = node.get_admin("/v1/tenants/acme/quotas").await;
    let used = quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == "database_bytes").unwrap()["used"]
        .as_i64()
        .unwrap();
    assert!(used > 600_000, "the tenant's bytes count its unopened instance: {quotas}");
    assert_eq!(open(&node).await, 0, "measuring a tenant opens none of its instances");
    // `b` may add what `a` (never opened since the restart) leaves of 1 MiB:
    // two writes, not five.
    let mut refused = None;
    for i in 0..5 {
        let (status, body) = sql(&node, "b.acme.test", insert).await;
        if status != StatusCode::OK {
            refused = Some((i, body));
            break;
        }
    }
    let (i, body) = refused.expect("the tenant's databases stop at 1 MiB together");
    assert!(i <= 2 && body.contains("database_bytes"), "refused after {i} writes: {body}");
    assert_eq!(open(&node).await, 1, "only the instance called is open");
    // Closed when idle, opened again on the next call, with its data.
    let started = std::time::Instant::now();
    while open(&node).await > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "idle databases were never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, rows) = node
        .ingress_call("a.acme.test", reqwest::Method::POST, "/sql/query", None, "SELECT count(*) AS n FROM t")
        .await;
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    assert_eq!((status, &rows["rows"][0]["n"]), (StatusCode::OK, &serde_json::json!(3)), "{rows}");
}

/// `statement` run by the `misbehave` guest at `host` (retried while the
/// machine is too busy for its compute budget): (status, body).
async fn sql(node: &TestNode, host: &str, statement: &str) -> (StatusCode, String) {
    let (status, body) = crate::data::call_until_done(node, host, "/sql/execute", statement).await;
    (status, body.to_string())
}

/// Instances whose databases are open on `node`.
async fn open(node: &TestNode) -> u64 {
    node.get_admin("/v1/node").await["instance_databases_open"].as_u64().unwrap()
}
