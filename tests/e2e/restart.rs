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
