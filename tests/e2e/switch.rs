//! Activation is atomic: under concurrent load, switching versions fails no
//! request, each response comes whole from exactly one version, and every request
//! that starts after the switch runs the new version.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::TestNode;

const V1_BODY: &str = "Hello from Wharf!\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_a_version_under_load_fails_no_request_and_switches_at_once() {
    let node = TestNode::start().await;
    // 1.0.0 is the hello build, 2.0.0 the echo build: their `/` bodies differ.
    node.tenant_with("acme", "hello", "flip", "flip.test").await;
    node.publish("echo", "flip", "2.0.0").await;
    let v2_body = node.get_admin("/v1/services/flip").await;
    assert_eq!(v2_body["active_version"], "1.0.0");

    let switched = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (http, addr, switched, stop) = (node.http.clone(), node.ingress(), switched.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut v1, mut v2, mut late_v1) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let after_switch = switched.load(Ordering::SeqCst);
                let resp =
                    http.get(format!("http://{addr}/")).header("host", "flip.test").send().await.expect("request");
                assert_eq!(resp.status(), StatusCode::OK, "no request may fail during the switch");
                let body = resp.text().await.expect("body");
                if body == V1_BODY {
                    v1 += 1;
                    if after_switch {
                        late_v1 += 1;
                    }
                } else if body.starts_with("echo: try") {
                    v2 += 1;
                } else {
                    panic!("a response must come whole from one version, got {body:?}");
                }
            }
            (v1, v2, late_v1)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) =
        node.admin(reqwest::Method::POST, "/v1/services/flip/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    switched.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut v1, mut v2, mut late_v1) = (0, 0, 0);
    for client in clients {
        let (a, b, c) = client.await.expect("client task");
        v1 += a;
        v2 += b;
        late_v1 += c;
    }
    assert!(v1 > 0 && v2 > 0, "both versions must have served: v1={v1} v2={v2}");
    assert_eq!(late_v1, 0, "requests started after the switch must run the new version");
    let instances = node.get_admin("/v1/instances").await;
    assert_eq!(instances["instances"][0]["running_version"], "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_version_they_started_with() {
    let node = TestNode::start().await;
    node.tenant_with("acme", "misbehave", "slow", "slow.test").await;
    node.publish("hello", "slow", "2.0.0").await;
    let slow = {
        let (http, addr) = (node.http.clone(), node.ingress());
        tokio::spawn(async move {
            let resp =
                http.get(format!("http://{addr}/sleep?ms=1500")).header("host", "slow.test").send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) =
        node.admin(reqwest::Method::POST, "/v1/services/slow/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node.get("slow.test", "/sleep?ms=1500").await.1, V1_BODY, "new requests run 2.0.0 at once");
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "slept\n".to_string()), "the in-flight request finishes on 1.0.0");
}
