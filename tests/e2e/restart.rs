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
