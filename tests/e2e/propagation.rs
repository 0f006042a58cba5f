//! How changes reach the other nodes (PostgreSQL pass; on SQLite there is one
//! node and these tests return at once): a change to some instances or tenants
//! is applied by re-reading just those, and a node that missed part of the
//! change log reloads everything; either way it ends where a node started
//! afresh begins.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{postgres_base, sample, TestNode};

async fn digest(node: &TestNode) -> String {
    node.get_admin("/v1/node").await["routes_digest"].as_str().unwrap_or_default().to_string()
}

async fn full_reloads(node: &TestNode) -> f64 {
    sample(&node.metrics().await, "wharf_full_reloads_total").unwrap_or(0.0)
}

/// Wait until `b` routes exactly as `a` does.
async fn converged(a: &TestNode, b: &TestNode, what: &str) {
    let started = Instant::now();
    loop {
        let (da, db) = (digest(a).await, digest(b).await);
        if da == db {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: the nodes route differently ({da} vs {db})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The version that answered at `host`.
async fn version_of(node: &TestNode, host: &str) -> String {
    let resp = node.http.get(format!("http://{}/", node.ingress())).header("host", host).send().await.unwrap();
    resp.headers().get("x-wharf-version").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

async fn patch(a: &TestNode, id: &str, change: Value) {
    let (status, answer) = a.admin(Method::PATCH, &format!("/v1/instances/{id}"), Some(change)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_each_change_alone_and_ends_where_a_fresh_node_starts() {
    if postgres_base().is_none() {
        eprintln!("skipped: change propagation needs WHARF_TEST_DATABASE (PostgreSQL)");
        return;
    }
    // With a platform domain, every instance has a platform name too.
    let domain = |config: &mut wharf::NodeConfig| config.trust.domains = vec!["apps.test".to_string()];
    let a = TestNode::start_with(domain).await;
    let mut b = TestNode::start_sharing_with(&a, domain).await;
    a.publish("hello", "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    a.create_tenant("beta").await;
    converged(&a, &b, "after the publish").await;
    let reloads = full_reloads(&b).await;

    // Changes to instances and tenants through A, of every kind a node holds.
    let one = a.create_instance("acme", "hello", &["one.acme.test"]).await;
    let two = a.create_instance("acme", "hello", &["two.acme.test"]).await;
    let three = a.create_instance("beta", "hello", &["three.beta.test"]).await;
    patch(&a, &one, json!({ "hosts": ["uno.acme.test"], "settings": { "greeting": "hi" } })).await;
    patch(&a, &two, json!({ "enabled": false })).await;
    // A hostname moves from one instance to another (two changes).
    patch(&a, &two, json!({ "hosts": ["dos.acme.test"] })).await;
    patch(&a, &one, json!({ "hosts": ["uno.acme.test", "two.acme.test"] })).await;
    let (status, answer) = a.admin(Method::DELETE, &format!("/v1/instances/{three}"), None).await;
    assert!(status.is_success(), "{answer}");
    let (status, answer) = a.admin(Method::POST, &format!("/v1/instances/{three}/restore"), None).await;
    assert!(status.is_success(), "{answer}");
    let (status, answer) = a.admin(Method::DELETE, "/v1/tenants/beta", None).await;
    assert!(status.is_success(), "{answer}");
    let (status, answer) =
        a.admin(Method::PUT, "/v1/tenants/acme/quotas/database_bytes", Some(json!({ "limit": 1 << 20 }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    converged(&a, &b, "after the instance changes").await;

    // B serves what A does, having re-read only what changed.
    assert_eq!(b.get("two.acme.test", "/").await.0, StatusCode::OK, "the moved hostname leads to `one`");
    assert_eq!(b.get("uno.acme.test", "/").await.0, StatusCode::OK);
    assert_eq!(b.get("dos.acme.test", "/").await.0, StatusCode::GONE, "`two` is disabled");
    let platform_name =
        a.get_admin(&format!("/v1/instances/{two}")).await["platform_hosts"][0].as_str().unwrap().to_string();
    assert_eq!(b.get(&platform_name, "/").await.0, StatusCode::GONE, "{platform_name} leads to `two`");
    assert_eq!(b.get("three.beta.test", "/").await.0, StatusCode::NOT_FOUND, "its tenant is deleted");
    assert_eq!(full_reloads(&b).await, reloads, "every change was applied alone");

    // Versions: published, staged, canaried, promoted (releasing the canary's
    // pin), activated and deleted through A are changes of the service (and of
    // the instances whose pins moved): B follows each without a reload.
    a.create_instance("acme", "hello", &["four.acme.test"]).await;
    a.publish("hello", "hello", "2.0.0").await;
    let (status, answer) =
        a.admin(Method::POST, "/v1/services/hello/stage", Some(json!({ "version": "2.0.0", "wait_ms": 10_000 }))).await;
    assert_eq!((status, answer["ready"].as_bool()), (StatusCode::OK, Some(true)), "{answer}");
    let (status, answer) = a
        .admin(Method::POST, "/v1/services/hello/canary", Some(json!({ "version": "2.0.0", "instances": [one] })))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    converged(&a, &b, "after the canary").await;
    assert_eq!(version_of(&b, "uno.acme.test").await, "2.0.0", "the canary runs on B too");
    assert_eq!(version_of(&b, "four.acme.test").await, "1.0.0");
    let (status, answer) =
        a.admin(Method::POST, "/v1/services/hello/promote", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    converged(&a, &b, "after the promotion").await;
    for host in ["uno.acme.test", "four.acme.test"] {
        assert_eq!(version_of(&b, host).await, "2.0.0", "{host} follows the promoted version on B");
    }
    let one_now = b.get_admin(&format!("/v1/instances/{one}")).await;
    assert!(one_now["pinned_version"].is_null(), "the canary's pin is released: {one_now}");
    a.publish("hello", "hello", "3.0.0").await;
    let (status, answer) =
        a.admin(Method::POST, "/v1/services/hello/activate", Some(json!({ "version": "3.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let started = Instant::now();
    while version_of(&b, "four.acme.test").await != "3.0.0" {
        assert!(started.elapsed() < Duration::from_secs(10), "B never ran the activated version");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, answer) = a.admin(Method::DELETE, "/v1/services/hello/versions/1.0.0", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    converged(&a, &b, "after the version changes").await;
    assert_eq!(full_reloads(&b).await, reloads, "every version change was applied alone");
    let text = b.metrics().await;
    assert!(sample(&text, "wharf_catch_up_seconds_count").unwrap_or(0.0) >= 5.0, "{text}");

    // A node started now routes exactly as B, which followed change by change.
    let c = TestNode::start_sharing_with(&a, domain).await;
    assert_eq!(digest(&c).await, digest(&b).await, "a fresh node and a follower route alike");

    // B stopped while changes are made starts where the others are.
    b.stop().await;
    patch(&a, &one, json!({ "settings": { "greeting": "while B was down" } })).await;
    patch(&a, &two, json!({ "enabled": true })).await;
    b.start_again_with(domain).await;
    converged(&a, &b, "after B's restart").await;
    assert_eq!(b.get("dos.acme.test", "/").await.0, StatusCode::OK, "`two` is enabled again");
    let reloads = full_reloads(&b).await;

    // The nodes' listening connections die just as a change is committed (its
    // notification reaches nobody): each notices the lost connection and
    // catches up at once — well before its next poll (5 s) — change by change.
    let before_loss = digest(&b).await;
    let killed = commit_behind_the_nodes(&a, &one, "told nobody", Behind::ListenersKilled).await;
    assert!(killed >= 2, "the nodes' listening connections: {killed}");
    let started = Instant::now();
    while digest(&b).await == before_loss {
        assert!(started.elapsed() < Duration::from_secs(3), "B waited for its poll after losing its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converged(&a, &b, "after the lost notification").await;
    assert_eq!(full_reloads(&b).await, reloads, "the lost change was applied alone");

    // A change B cannot read in the log (as if its rows were pruned before B
    // came to them): B reloads everything, and still ends where C does.
    let before_gap = digest(&b).await;
    commit_behind_the_nodes(&a, &one, "unlogged", Behind::NotLogged).await;
    let started = Instant::now();
    while full_reloads(&b).await == reloads {
        assert!(started.elapsed() < Duration::from_secs(10), "B never reloaded after the gap");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converged(&b, &c, "after the gap").await;
    let d = TestNode::start_sharing_with(&a, domain).await;
    assert_eq!(digest(&d).await, digest(&b).await, "after the gap, B routes as a node started now");
    assert_ne!(digest(&b).await, before_gap, "the unlogged change is in B's table");
}

/// How a change made straight in the control plane hides from the nodes.
enum Behind {
    /// Logged, but every node's listening connection is killed in its
    /// transaction: its notification reaches nobody.
    ListenersKilled,
    /// Notified, but with no row in the change log.
    NotLogged,
}

/// Set instance `id`'s greeting to `greeting` as a change a node could not
/// have made (see [`Behind`]); returns how many listening connections died.
async fn commit_behind_the_nodes(a: &TestNode, id: &str, greeting: &str, behind: Behind) -> i64 {
    let mut pg = crate::harness::pg_admin(a).await;
    let mut tx = sqlx::Connection::begin(&mut pg).await.unwrap();
    sqlx::query("UPDATE instances SET settings = $1 WHERE id = $2")
        .bind(json!({ "greeting": greeting }).to_string())
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let (generation,): (i64,) =
        sqlx::query_as("UPDATE platform_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let mut killed = 0;
    if let Behind::ListenersKilled = behind {
        sqlx::query("INSERT INTO platform_changes (generation, scope, key) VALUES ($1, 'instance', $2)")
            .bind(generation)
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        (killed,) = sqlx::query_as(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_notify('wharf_changes', 'behind')").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    killed
}

async fn runs_passes(node: &TestNode) -> bool {
    node.get_admin("/v1/node").await["runs_passes"].as_bool().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_runs_the_platforms_passes_and_another_takes_over_when_it_stops() {
    if postgres_base().is_none() {
        eprintln!("skipped: several nodes need WHARF_TEST_DATABASE (PostgreSQL)");
        return;
    }
    let a = TestNode::start().await;
    let b = TestNode::start_sharing(&a).await;
    let started = Instant::now();
    // Each asks within its first passes; exactly one holds the lease.
    let holder = loop {
        let (on_a, on_b) = (runs_passes(&a).await, runs_passes(&b).await);
        assert!(!(on_a && on_b), "two nodes run the passes");
        if on_a || on_b {
            break if on_a { "a" } else { "b" };
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no node runs the passes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for _ in 0..10 {
        assert_ne!(runs_passes(&a).await, runs_passes(&b).await, "one node and only one");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The holder stops (it gives the lease up): the other takes the passes
    // over, and serves on.
    let (mut stopped, other) = if holder == "a" { (a, b) } else { (b, a) };
    stopped.stop().await;
    let started = Instant::now();
    while !runs_passes(&other).await {
        assert!(started.elapsed() < Duration::from_secs(10), "nobody took the passes over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.publish("hello", "hello", "1.0.0").await;
    other.create_tenant("acme").await;
    other.create_instance("acme", "hello", &["left.acme.test"]).await;
    assert_eq!(other.get("left.acme.test", "/").await.0, StatusCode::OK);
    // Started again, the stopped node does not take the lease back.
    stopped.start_again().await;
    for _ in 0..10 {
        assert!(runs_passes(&other).await && !runs_passes(&stopped).await, "the lease stays where it is");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
