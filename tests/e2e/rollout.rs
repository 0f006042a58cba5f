//! Updates across the fleet: stage, promote, roll back, canaries and the health
//! gate, on one node (SQLite) and on two nodes sharing PostgreSQL; and a short
//! form of the rollout load test: continuous load while promoting and rolling
//! back, no failed request, every response from exactly one version.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

/// The nodes of the test's fleet: one on SQLite, two on PostgreSQL.
async fn fleet() -> Vec<TestNode> {
    let a = TestNode::start().await;
    if postgres_base().is_some() {
        let b = TestNode::start_sharing(&a).await;
        vec![a, b]
    } else {
        vec![a]
    }
}

async fn publish(node: &TestNode, guest_name: &str, version: &str) {
    let (status, body) = node.publish_bytes(&manifest("site", version), guest(guest_name)).await;
    assert!(status.is_success(), "{body}");
}

/// GET `path` on `node` for `host`: (status, the version that answered).
async fn version_of(node: &TestNode, host: &str, path: &str) -> (StatusCode, String) {
    let resp = node.http.get(format!("http://{}{path}", node.ingress())).header("host", host).send().await.unwrap();
    let version = resp.headers().get("x-wharf-version").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (resp.status(), version)
}

async fn post(node: &TestNode, path: &str, body: Value) -> Value {
    let (status, answer) = node.admin(Method::POST, path, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    answer
}

/// Wait until every node of `nodes` reports `version` of site ready.
async fn staged(nodes: &[TestNode], version: &str) {
    let staged = post(&nodes[0], "/v1/services/site/stage", json!({ "version": version })).await;
    assert_eq!(staged["ready"], true, "{staged}");
    assert_eq!(staged["nodes"].as_array().unwrap().len(), nodes.len(), "{staged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_promote_and_rollback_switch_every_node_at_once() {
    let nodes = fleet().await;
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_instance("acme", "site", &["site.test"]).await;
    publish(a, "wstd-hello", "2.0.0").await;
    staged(&nodes, "2.0.0").await;
    let fleet = a.get_admin("/v1/nodes").await;
    assert_eq!(fleet["nodes"].as_array().unwrap().iter().filter(|n| n["live"] == true).count(), nodes.len(), "{fleet}");

    for (round, (kind, version)) in
        [("promote", "2.0.0"), ("rollback", "1.0.0"), ("rollback", "2.0.0")].iter().enumerate()
    {
        let body = if *kind == "promote" { json!({ "version": version }) } else { json!({}) };
        let done = post(a, &format!("/v1/services/site/{kind}"), body).await;
        assert_eq!(done["version"], *version, "{done}");
        assert_eq!(done["pending"], json!([]), "{done}");
        assert_eq!(done["acknowledged"].as_array().unwrap().len(), nodes.len(), "{done}");
        // Once promote returns, every node answers with the new version.
        for node in &nodes {
            assert_eq!(
                version_of(node, "site.test", "/").await,
                (StatusCode::OK, version.to_string()),
                "round {round}"
            );
        }
    }
    let status = a.get_admin("/v1/services/site/rollout").await;
    assert_eq!(
        (status["active_version"].as_str(), status["previous_version"].as_str()),
        (Some("2.0.0"), Some("1.0.0"))
    );
    let v2 = status["versions"].as_array().unwrap().iter().find(|v| v["version"] == "2.0.0").unwrap().clone();
    assert_eq!((v2["active"].as_bool(), v2["ready_on"].as_u64()), (Some(true), Some(nodes.len() as u64)), "{status:#}");
    let kinds: Vec<&str> = status["history"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollback", "rollback", "promote"], "{status:#}");
    // Requests since it became active again are counted (reported with the nodes' next beat).
    let mut counted = 0;
    for _ in 0..40 {
        let status = a.get_admin("/v1/services/site/rollout").await;
        let v2 = status["versions"].as_array().unwrap().iter().find(|v| v["version"] == "2.0.0").unwrap().clone();
        counted = v2["requests"].as_i64().unwrap();
        if counted >= nodes.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted >= nodes.len() as i64, "{counted}");

    // Mistakes are 4xx that say what to do.
    let (status, answer) =
        a.admin(Method::POST, "/v1/services/site/promote", Some(json!({ "version": "9.9.9" }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    publish(a, "hello", "0.1.0").await;
    let (status, answer) = a.admin(Method::POST, "/v1/services/nope/rollback", Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = a
        .admin(Method::POST, "/v1/services/site/promote", Some(json!({ "version": "2.0.0", "wait_ms": 999_999 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let member = a.user("dev@acme.test").await;
    // A stranger with an account can neither see the fleet nor move versions.
    for (method, path, body) in [
        (Method::POST, "/v1/services/site/promote", Some(json!({ "version": "1.0.0" }))),
        (Method::POST, "/v1/services/site/rollback", Some(json!({}))),
        (Method::POST, "/v1/services/site/stage", Some(json!({ "version": "1.0.0" }))),
        (Method::POST, "/v1/services/site/canary", Some(json!({ "version": "1.0.0", "percent": 100 }))),
        (Method::DELETE, "/v1/services/site/canary", None),
        (Method::GET, "/v1/services/site/rollout", None),
        (Method::GET, "/v1/nodes", None),
    ] {
        let (status, answer) = a.call(&member, method, path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    // And without a credential, nothing at all.
    assert_eq!(a.anonymous(Method::GET, "/v1/services/site/rollout").await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_runs_the_new_version_on_chosen_instances_until_promoted() {
    let nodes = fleet().await;
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(a.create_instance("acme", "site", &[&format!("s{i}.test")]).await);
    }
    // An instance its owner pinned stays where it is.
    a.expect(
        &a.admin_key,
        Method::PATCH,
        &format!("/v1/instances/{}", ids[3]),
        json!({ "version": "1.0.0" }),
        StatusCode::OK,
    )
    .await;
    publish(a, "wstd-hello", "2.0.0").await;
    staged(&nodes, "2.0.0").await;
    let canary = post(a, "/v1/services/site/canary", json!({ "version": "2.0.0", "percent": 50 })).await;
    let chosen: Vec<String> =
        canary["instances"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    assert_eq!(chosen.len(), 2, "half of the three followers, rounded up: {canary}");
    assert!(!chosen.contains(&ids[3]));
    for node in &nodes {
        for (i, id) in ids.iter().enumerate() {
            let expected = if chosen.contains(id) { "2.0.0" } else { "1.0.0" };
            assert_eq!(version_of(node, &format!("s{i}.test"), "/").await.1, expected, "instance {i}");
        }
    }
    let instance = a.get_admin(&format!("/v1/instances/{}", chosen[0])).await;
    assert_eq!((instance["pinned_by"].as_str(), instance["pinned_version"].as_str()), (Some("canary"), Some("2.0.0")));
    // Promoted: every follower (not the owner's pin) runs it; canary pins are gone.
    let done = post(a, "/v1/services/site/promote", json!({ "version": "2.0.0" })).await;
    assert_eq!(done["released_pins"].as_array().unwrap().len(), 2, "{done}");
    for node in &nodes {
        for (i, _) in ids.iter().enumerate() {
            let expected = if i == 3 { "1.0.0" } else { "2.0.0" };
            assert_eq!(version_of(node, &format!("s{i}.test"), "/").await.1, expected, "instance {i}");
        }
    }
    // A canary can be ended without promoting.
    publish(a, "hello", "3.0.0").await;
    staged(&nodes, "3.0.0").await;
    post(a, "/v1/services/site/canary", json!({ "version": "3.0.0", "instances": [ids[0]] })).await;
    assert_eq!(version_of(a, "s0.test", "/").await.1, "3.0.0");
    let (status, ended) = a.admin(Method::DELETE, "/v1/services/site/canary", None).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(version_of(a, "s0.test", "/").await.1, "2.0.0");
    let (status, answer) = a
        .admin(Method::POST, "/v1/services/site/canary", Some(json!({ "version": "3.0.0", "instances": [ids[3]] })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the owner's pin is not the canary's to move: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_failing_its_first_requests_is_rolled_back_by_itself() {
    let node = TestNode::start().await;
    publish(&node, "hello", "1.0.0").await;
    node.create_tenant("acme").await;
    let sick = node.create_instance("acme", "site", &["sick.test"]).await;
    let well = node.create_instance("acme", "site", &["well.test"]).await;
    // 2.0.0 traps on /trap, where 1.0.0 answered 200.
    publish(&node, "misbehave", "2.0.0").await;
    staged(std::slice::from_ref(&node), "2.0.0").await;
    post(&node, "/v1/services/site/promote", json!({ "version": "2.0.0" })).await;
    assert_eq!(version_of(&node, "well.test", "/ok").await, (StatusCode::OK, "2.0.0".to_string()));
    let mut failures = 0;
    let started = Instant::now();
    loop {
        let (status, version) = version_of(&node, "sick.test", "/trap").await;
        if version == "1.0.0" {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        failures += 1;
        assert!(started.elapsed() < Duration::from_secs(20), "never rolled back ({failures} failures)");
        if failures >= 10 {
            // Judged; the pin lands moments later (a transaction and a table
            // rebuild, slower on a loaded PostgreSQL).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(failures >= 10, "judged only after 10 requests: {failures}");
    let instance = node.get_admin(&format!("/v1/instances/{sick}")).await;
    assert_eq!((instance["pinned_by"].as_str(), instance["pinned_version"].as_str()), (Some("health"), Some("1.0.0")));
    assert!(instance["pin_reason"].as_str().unwrap().contains("of its first"), "{instance}");
    // The healthy instance stays on the new version; the history says why.
    for _ in 0..15 {
        assert_eq!(version_of(&node, "well.test", "/ok").await, (StatusCode::OK, "2.0.0".to_string()));
    }
    let status = node.get_admin("/v1/services/site/rollout").await;
    let health = status["history"].as_array().unwrap().iter().find(|h| h["kind"] == "health").unwrap().clone();
    assert!(health["detail"].as_str().unwrap().contains(&sick), "{health}");
    let _ = well;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_and_rolling_back_under_load_fails_no_request() {
    let nodes = Arc::new(fleet().await);
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    for i in 0..3 {
        a.create_instance("acme", "site", &[&format!("load{i}.test")]).await;
    }
    publish(a, "wstd-hello", "2.0.0").await;
    staged(&nodes, "2.0.0").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (nodes, stop, ok, bad) = (nodes.clone(), stop.clone(), ok.clone(), bad.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let node = &nodes[(c + n) % nodes.len()];
                let (status, version) = version_of(node, &format!("load{}.test", n % 3), "/").await;
                if status == StatusCode::OK && (version == "1.0.0" || version == "2.0.0") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("bad response: {status} from version {version:?}");
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    let mut worst = Duration::ZERO;
    for i in 0..10 {
        let (kind, version) = if i % 2 == 0 { ("promote", "2.0.0") } else { ("rollback", "1.0.0") };
        let body = if kind == "promote" { json!({ "version": version }) } else { json!({}) };
        let done = post(a, &format!("/v1/services/site/{kind}"), body).await;
        assert_eq!(done["pending"], json!([]), "{done}");
        let returned = Instant::now();
        for node in nodes.iter() {
            assert_eq!(version_of(node, "load0.test", "/").await.1, version, "swap {i}");
        }
        worst = worst.max(returned.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!(
        "{ok} responses during 10 swaps on {} nodes, {bad} bad; new version on every node within {worst:?}",
        nodes.len()
    );
    assert_eq!(bad, 0);
    assert!(ok > 100, "the load ran: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_nothing_uses_are_unloaded_and_loaded_again_when_needed() {
    let nodes = fleet().await;
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    let id = a.create_instance("acme", "site", &["old.test"]).await;
    publish(a, "wstd-hello", "2.0.0").await;
    publish(a, "hello", "3.0.0").await;
    publish(a, "wstd-hello", "4.0.0").await;
    staged(&nodes, "2.0.0").await;
    post(a, "/v1/services/site/promote", json!({ "version": "2.0.0" })).await;
    staged(&nodes, "3.0.0").await;
    post(a, "/v1/services/site/promote", json!({ "version": "3.0.0" })).await;
    // 1.0.0 is neither active nor previous, older than the active version and
    // unused: every node unloads it. 2.0.0 (previous) and 4.0.0 (newer: a
    // candidate) stay.
    let mut states = Value::Null;
    for _ in 0..100 {
        let status = a.get_admin("/v1/services/site/rollout").await;
        states = json!(status["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (
                v["version"].clone(),
                v["nodes"].as_array().unwrap().iter().map(|n| n["state"].clone()).collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>());
        let unloaded = status["versions"].as_array().unwrap().iter().find(|v| v["version"] == "1.0.0").unwrap()
            ["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == "unloaded")
            .count();
        if unloaded == nodes.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unloaded = |version: &str| {
        states.as_array().unwrap().iter().find(|v| v[0] == version).unwrap()[1]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "unloaded")
    };
    assert!(unloaded("1.0.0"), "{states}");
    assert!(!unloaded("2.0.0") && !unloaded("3.0.0") && !unloaded("4.0.0"), "{states}");
    // Pinned to it: loaded again (on every node), and served.
    a.expect(
        &a.admin_key,
        Method::PATCH,
        &format!("/v1/instances/{id}"),
        json!({ "version": "1.0.0" }),
        StatusCode::OK,
    )
    .await;
    for node in &nodes {
        let mut answer = (StatusCode::OK, String::new());
        for _ in 0..100 {
            answer = version_of(node, "old.test", "/").await;
            if answer.1 == "1.0.0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answer, (StatusCode::OK, "1.0.0".to_string()));
    }
}

/// `GET /readyz` of `node`: (status, the generation it has caught up with).
async fn readiness(node: &TestNode) -> (StatusCode, i64) {
    let resp = node.http.get(format!("{}/readyz", node.admin_url())).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (status, body["generation"].as_i64().unwrap())
}

/// Where `version` of site stands on node `id`, once the node has reported it.
async fn state_on(node: &TestNode, version: &str, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let status = node.get_admin("/v1/services/site/rollout").await;
        let on = status["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == version)
            .and_then(|v| v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == id).cloned());
        if let Some(on) = on {
            return on;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{id} never reported {version}: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_load_a_version_says_why_is_counted_as_not_ready_and_stays_in_rotation() {
    let a = TestNode::start().await;
    publish(&a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    let instance = a.create_instance("acme", "site", &["site.test"]).await;
    if !on_postgres() {
        // One node: a component over its memory limit is refused, naming the limit
        // (hello starts with 192 KiB: its 128 KiB stack and its data).
        let small = TestNode::start_with(|c| c.limits.max_memory_bytes = 128 << 10).await;
        let (status, body) = small.publish_bytes(&manifest("site", "1.0.0"), guest("hello")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("needs more than this node allows") && error.contains("--max-memory-mib"), "{error}");
        assert!(error.contains("at most 128 KiB of linear memory"), "{error}");
        assert!(!error.contains("malformed"), "{error}");
        publish(&a, "wstd-hello", "2.0.0").await;
        let (ok, out, _) = crate::cli::wharf(&a, &["stage", "site", "2.0.0"]);
        assert!(ok && out.contains("ready on 1 of 1 nodes"), "{out}");
        return;
    }
    // A node whose instances may have 128 KiB of memory: no Rust component fits.
    // It starts all the same, and serves what it can.
    let b = TestNode::start_sharing_with(&a, |c| c.limits.max_memory_bytes = 128 << 10).await;
    let b_id = b.node().node.fleet.id.clone();
    let failed = state_on(&a, "1.0.0", &b_id).await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(error.contains("needs more than this node allows") && error.contains("128 KiB"), "{failed}");
    assert!(!error.contains("malformed"), "a valid component is not called malformed: {failed}");

    // Staging counts only the nodes that have it ready.
    publish(&a, "wstd-hello", "2.0.0").await;
    let (status, staged) = a.admin(Method::POST, "/v1/services/site/stage", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{staged}");
    assert_eq!((staged["ready"].as_bool(), staged["ready_on"].as_u64()), (Some(false), Some(1)), "{staged}");
    assert!(staged["not_ready"].to_string().contains(&b_id), "{staged}");
    let (ok, out, err) = crate::cli::wharf(&a, &["stage", "site", "2.0.0"]);
    assert!(!ok, "staging a version a node cannot load fails: {out}");
    assert!(out.contains("ready on 1 of 2 nodes") && out.contains(&b_id), "{out}{err}");

    // Unrelated changes: the versions b could not load are not tried again on
    // each of them (they wait for their backoff), so b catches up at once.
    let mut took = Vec::new();
    for round in 0..8 {
        let settings = json!({ "settings": { "round": round.to_string() } });
        let (status, _) = a.admin(Method::PATCH, &format!("/v1/instances/{instance}"), Some(settings)).await;
        assert_eq!(status, StatusCode::OK);
        let target = readiness(&a).await.1;
        let started = Instant::now();
        loop {
            let (status, generation) = readiness(&b).await;
            if status == StatusCode::OK && generation >= target {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "b never caught up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took.push(started.elapsed());
    }
    // (The median: one change may meet a busy machine; retrying the failed
    // loads on each change cost hundreds of milliseconds every time.)
    took.sort();
    let median = took[took.len() / 2];
    assert!(median < Duration::from_millis(150), "b caught up with unrelated changes in {took:?}");
    // b still serves: the platform's own answers (an unknown host) come from it.
    let resp = b.http.get(format!("http://{}/", b.ingress())).header("host", "nobody.test").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_version_no_instance_runs_never_holds_a_node_back() {
    let a = TestNode::start().await;
    publish(&a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_instance("acme", "site", &["site.test"]).await;
    let Some(b) = (if on_postgres() { Some(TestNode::start_sharing(&a).await) } else { None }) else {
        // One node compiles what is published to it while publishing.
        publish(&a, "wstd-hello", "2.0.0").await;
        assert_eq!(readiness(&a).await.0, StatusCode::OK);
        return;
    };
    let compiled = |info: &Value| info["versions_compiled"].as_u64().unwrap();
    let before = compiled(&b.get_admin("/v1/node").await);
    // Published on a: b catches up with the change (ready, routes current)
    // before it has compiled the new version, which it does in the background.
    publish(&a, "wstd-hello", "2.0.0").await;
    let target = readiness(&a).await.1;
    let started = Instant::now();
    let compiled_when_caught_up = loop {
        let (status, generation) = readiness(&b).await;
        if status == StatusCode::OK && generation >= target {
            break compiled(&b.get_admin("/v1/node").await);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "b never caught up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(compiled_when_caught_up, before, "b was ready before compiling 2.0.0");
    // The compile finishes and b reports the version ready; stage and promote work as ever.
    assert_eq!(state_on(&a, "2.0.0", &b.node().node.fleet.id).await["state"], "ready");
    staged(&[a, b], "2.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_names_a_frozen_node_as_pending_and_fails_the_cli() {
    let nodes = fleet().await;
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_instance("acme", "site", &["site.test"]).await;
    publish(a, "wstd-hello", "2.0.0").await;
    if !on_postgres() {
        staged(&nodes, "2.0.0").await;
        let (ok, out, err) = crate::cli::wharf(a, &["promote", "site", "2.0.0"]);
        assert!(ok && out.contains("not acknowledged: none"), "{out}{err}");
        return;
    }
    let frozen = Served::joining(a).await;
    let fleet = a.get_admin("/v1/nodes").await;
    let frozen_id = fleet["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| frozen.admin.ends_with(n["admin"].as_str().unwrap()))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let staged_on = post(a, "/v1/services/site/stage", json!({ "version": "2.0.0" })).await;
    assert_eq!((staged_on["ready"].as_bool(), staged_on["ready_on"].as_u64()), (Some(true), Some(3)), "{staged_on}");
    // SIGSTOP: the node neither beats nor acknowledges; it drops out of the
    // live set after 5 s, which must not make the promotion look complete.
    frozen.signal("STOP");
    let (ok, out, err) = crate::cli::wharf(a, &["--json", "promote", "site", "2.0.0"]);
    assert!(!ok, "a promotion a live node did not acknowledge fails the CLI: {out}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["pending"], json!([frozen_id]), "{done:#}");
    assert_eq!(done["acknowledged"].as_array().unwrap().len(), 2, "{done:#}");
    assert!(err.contains("did not acknowledge"), "{err}");
    // A rollback now: the frozen node is no longer live (silent for over 5 s),
    // so the rollback does not wait for it; it catches up when it thaws.
    let back = post(a, "/v1/services/site/rollback", json!({})).await;
    assert_eq!(back["pending"], json!([]), "{back:#}");
    // Resumed, it catches up and serves the active version.
    frozen.signal("CONT");
    let started = Instant::now();
    loop {
        let resp = client().get(format!("{}/readyz", frozen.admin)).send().await.unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the thawed node never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = client().get(format!("http://{}/", frozen.ingress)).header("host", "site.test").send().await.unwrap();
    assert_eq!(resp.headers()["x-wharf-version"], "1.0.0", "it serves what the last rollback made active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_staged_versions_and_one_history_entry_per_health_rollback() {
    let nodes = fleet().await;
    let a = &nodes[0];
    publish(a, "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    let sick = a.create_instance("acme", "site", &["sick.test"]).await;
    publish(a, "misbehave", "2.0.0").await;
    staged(&nodes, "2.0.0").await;
    publish(a, "wstd-hello", "3.0.0").await;
    staged(&nodes, "3.0.0").await;
    let (ok, out, err) = crate::cli::wharf(a, &["status", "site"]);
    assert!(ok, "{err}");
    let line = |v: &str| out.lines().find(|l| l.trim_start().starts_with(v)).unwrap_or_default().to_string();
    assert!(line("2.0.0").contains("staged") && line("3.0.0").contains("staged"), "{out}");
    assert!(line("1.0.0").contains("active"), "{out}");

    post(a, "/v1/services/site/promote", json!({ "version": "2.0.0" })).await;
    // Every node sees the first failures of 2.0.0 on the instance at once:
    // nine on each, then the tenth on each together.
    for node in &nodes {
        for _ in 0..9 {
            assert_eq!(version_of(node, "sick.test", "/trap").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
    futures::future::join_all(nodes.iter().map(|n| version_of(n, "sick.test", "/trap"))).await;
    let started = Instant::now();
    let health = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = a.get_admin("/v1/services/site/rollout").await;
        let health: Vec<Value> =
            status["history"].as_array().unwrap().iter().filter(|h| h["kind"] == "health").cloned().collect();
        if health.first().is_some_and(|h| h["nodes"].as_array().unwrap().len() == nodes.len()) {
            break health;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never judged by every node: {status:#}");
    };
    assert_eq!(health.len(), 1, "one entry per instance rollback: {health:#?}");
    assert_eq!(health[0]["instance"], sick.as_str());
    let (ok, out, err) = crate::cli::wharf(a, &["status", "site"]);
    assert!(ok, "{err}");
    let entries: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("health")).collect();
    assert_eq!(entries.len(), 1, "{out}");
    for node in &nodes {
        assert!(entries[0].contains(&node.node().node.fleet.id), "{out}");
    }
}
