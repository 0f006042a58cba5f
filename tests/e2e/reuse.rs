//! Opt-in sandbox reuse (`reuse = { requests, idle_seconds }` in `[service]`):
//! a sandbox serves several requests of its own instance — a global counts
//! them — and nobody else's: not another instance of the same service, not
//! another tenant, not the same instance after its modules or settings
//! changed. Any failure drops it, and so do its request and idle limits; each
//! request still sees its own caller and pays its own fuel.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{guest, TestNode};

/// The probe component (misbehave), published as `service` with `reuse`.
fn manifest(service: &str, version: &str, reuse: &str) -> String {
    format!("{}{reuse}\n", crate::harness::manifest(service, version))
}

/// GET /count on `host` (as `token`, if any): the sandbox's count and what the
/// platform told the guest about this request.
async fn count(node: &TestNode, host: &str, token: Option<&str>) -> Value {
    for _ in 0..5 {
        let (status, _, body) = node.ingress_call(host, Method::GET, "/count", token, "").await;
        // On a loaded PostgreSQL a request may run out of budget; try again.
        if status == StatusCode::SERVICE_UNAVAILABLE && body.contains("compute budget") {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{host}/count: {body}");
        return serde_json::from_str(&body).unwrap();
    }
    panic!("{host}/count never answered");
}

/// `n` counts in a row. A sandbox is handed back when its guest returns, just
/// after the client has the whole response: each request waits a moment, so
/// the next one finds it.
async fn counts(node: &TestNode, host: &str, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(count(node, host, None).await["count"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_serves_only_its_own_instance_and_any_failure_or_change_starts_a_fresh_one() {
    let node = TestNode::start().await;
    let reuse = "reuse = { requests = 6, idle_seconds = 60 }";
    let (status, body) = node.publish_bytes(&manifest("keeper", "1.0.0", reuse), guest("misbehave")).await;
    assert!(status.is_success(), "{body}");
    assert_eq!(body["reuse"], json!({ "requests": 6, "idle_seconds": 60 }), "{body}");
    // The same component without the option: a fresh sandbox per request.
    node.publish("misbehave", "fresh", "1.0.0").await;

    let owner = node.user("owner@acme.test").await;
    node.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": "acme" }), StatusCode::CREATED).await;
    let a = node.create_instance("acme", "keeper", &["a.test"]).await;
    node.create_instance("acme", "keeper", &["a2.test"]).await;
    node.create_instance("acme", "fresh", &["f.test"]).await;
    node.create_tenant("globex").await;
    node.create_instance("globex", "keeper", &["g.test"]).await;

    // Reused: the global counts this instance's requests...
    assert_eq!(counts(&node, "a.test", 3).await, [1, 2, 3]);
    // ...and nobody else's: another instance of the same service, another tenant.
    assert_eq!(counts(&node, "a2.test", 2).await, [1, 2]);
    assert_eq!(counts(&node, "g.test", 1).await, [1]);
    assert_eq!(counts(&node, "a.test", 1).await, [4]);
    // Without the option every request starts from nothing.
    assert_eq!(counts(&node, "f.test", 3).await, [1, 1, 1]);

    // The request limit: the sixth request is its last.
    assert_eq!(counts(&node, "a.test", 3).await, [5, 6, 1]);

    // Any failure drops the sandbox: a trap, fuel, the memory cap.
    for (path, status) in [
        ("/trap", StatusCode::INTERNAL_SERVER_ERROR),
        ("/loop", StatusCode::SERVICE_UNAVAILABLE),
        ("/alloc", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        assert_eq!(counts(&node, "a.test", 2).await, [2, 3], "before {path}");
        let (got, _, body) = node.ingress_call("a.test", Method::GET, path, None, "").await;
        assert_eq!(got, status, "{path}: {body}");
        // A guest that computed hard marks its instance heavy for a second: its
        // next requests run on the low-priority threads, where handing the
        // sandbox back may come after the next request. Wait that out.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(counts(&node, "a.test", 1).await, [1], "after {path}");
    }

    // Each request sees its own caller, whoever came before.
    let member = node.user("member@acme.test").await;
    let add = json!({ "email": "member@acme.test" });
    node.expect(&owner, Method::POST, "/v1/tenants/acme/members", add, StatusCode::CREATED).await;
    // A stranger with an account (no member of acme) is nobody to the guest.
    let stranger = node.user("stranger@globex.test").await;
    let mut seen = Vec::new();
    for token in [Some(owner.as_str()), None, Some(member.as_str()), Some("not-a-token"), Some(stranger.as_str())] {
        let answer = count(&node, "a.test", token).await;
        seen.push((answer["count"].as_u64().unwrap(), answer["caller"].clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let callers: Vec<Value> = seen.iter().map(|(_, caller)| caller.clone()).collect();
    let expected = [json!("owner@acme.test"), Value::Null, json!("member@acme.test"), Value::Null, Value::Null];
    assert_eq!(callers, expected);
    // ...in one sandbox all along.
    assert!(seen.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{seen:?}");

    // (The sixth request was that sandbox's last.) New settings: a fresh
    // sandbox, which sees them.
    assert_eq!(counts(&node, "a.test", 2).await, [1, 2]);
    let change = json!({ "settings": { "site.name": "Acme" } });
    assert_eq!(node.call(&owner, Method::PATCH, &format!("/v1/instances/{a}"), Some(change)).await.0, StatusCode::OK);
    let after = count(&node, "a.test", None).await;
    assert_eq!(after["count"], 1, "{after}");
    assert_eq!(after["settings"], json!([["site.name", "Acme"]]), "{after}");

    // Several at once: each request has a sandbox to itself, and all answer.
    let calls = (0..16).map(|_| count(&node, "a.test", None));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|a| a["count"].as_u64().unwrap() >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_is_dropped_after_its_time_and_fuel_is_charged_per_request() {
    let node = TestNode::start().await;
    let reuse = "reuse = { requests = 1000, idle_seconds = 1 }";
    assert!(node.publish_bytes(&manifest("keeper", "1.0.0", reuse), guest("misbehave")).await.0.is_success());
    node.publish("misbehave", "fresh", "1.0.0").await;
    node.create_tenant("acme").await;
    let kept = node.create_instance("acme", "keeper", &["k.test"]).await;
    let fresh = node.create_instance("acme", "fresh", &["f.test"]).await;

    assert_eq!(counts(&node, "k.test", 2).await, [1, 2]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(counts(&node, "k.test", 1).await, [1], "an idle sandbox outlived its idle_seconds");

    // Fuel per request: the same with and without reuse, within 10 %.
    let before =
        (node.usage(&kept).await["fuel"].as_u64().unwrap(), node.usage(&fresh).await["fuel"].as_u64().unwrap());
    let n = 30;
    counts(&node, "k.test", n).await;
    counts(&node, "f.test", n).await;
    let reused = node.usage(&kept).await["fuel"].as_u64().unwrap() - before.0;
    let fresh_fuel = node.usage(&fresh).await["fuel"].as_u64().unwrap() - before.1;
    let ratio = reused as f64 / fresh_fuel as f64;
    eprintln!("fuel for {n} requests: {reused} reused, {fresh_fuel} fresh ({ratio:.3})");
    assert!((0.9..=1.1).contains(&ratio), "fuel for {n} requests: {reused} reused, {fresh_fuel} fresh ({ratio:.3})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_idle_sandboxes_are_bounded_and_leave_room_for_everyone_else() {
    // 64 slots: at most 16 idle sandboxes on the node, 4 of them one tenant's.
    let node = TestNode::start_with(|config| config.pool.max_instances = 64).await;
    let reuse = "reuse = { requests = 1000, idle_seconds = 60 }";
    assert!(node.publish_bytes(&manifest("keeper", "1.0.0", reuse), guest("misbehave")).await.0.is_success());
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let hosts: Vec<String> = (1..=5).map(|i| format!("a{i}.test")).collect();
    for host in &hosts {
        node.create_instance("acme", "keeper", &[host.as_str()]).await;
    }
    node.create_instance("globex", "keeper", &["g.test"]).await;

    // Four of acme's instances keep a sandbox each...
    for host in &hosts[..4] {
        assert_eq!(counts(&node, host, 1).await, [1], "{host}");
    }
    // ...the fifth finds acme at its bound: a fresh sandbox every time.
    assert_eq!(counts(&node, &hosts[4], 2).await, [1, 1]);
    // Another tenant still gets reuse, and acme's kept sandboxes still serve.
    assert_eq!(counts(&node, "g.test", 2).await, [1, 2]);
    assert_eq!(counts(&node, &hosts[0], 1).await, [2]);
}

/// The examples are built with the SDK's 128 KiB stack (`plugins/.cargo/config.toml`,
/// as `wharf new` writes for a Rust service): hello's sandbox holds 192 KiB of
/// linear memory, not the 1.06 MiB of Rust's default 1 MiB stack, and that is
/// what a fresh sandbox's reset costs in proportion to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_service_starts_with_a_small_memory_to_reset() {
    let node = TestNode::start().await;
    let reuse = "reuse = { requests = 1000, idle_seconds = 60 }";
    assert!(node.publish_bytes(&manifest("small", "1.0.0", reuse), guest("hello")).await.0.is_success());
    node.create_tenant("acme").await;
    node.create_instance("acme", "small", &["small.test"]).await;
    assert_eq!(node.get("small.test", "/").await.0, StatusCode::OK);
    // The sandbox is handed back just after the response.
    let mut held = None;
    for _ in 0..50 {
        let metrics = node.metrics().await;
        held = crate::harness::sample(&metrics, "wharf_guest_sandboxes_idle_bytes").filter(|bytes| *bytes > 0.0);
        if held.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = held.expect("no idle sandbox after a request to a reused service");
    assert!(held <= 256.0 * 1024.0, "hello holds {held} bytes of linear memory: is the 128 KiB stack still set?");
}
