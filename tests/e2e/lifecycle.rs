//! The end of an instance: deleted, it stops serving at once and its
//! subscription ends; restored during its grace, it serves the same data
//! under the same hostnames; purged (at once by an operator, or when the grace
//! ends), nothing of it remains — no files, schema, role, Redis key or job —
//! and its name is free again. Checked from outside: files, the PostgreSQL
//! catalog, Redis `SCAN`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::TestNode;

/// A tenant `acme` owned by a fresh user, with an instance of the probe
/// service at `host` (bound by an operator); returns (owner token, instance id).
pub(crate) async fn owned_probe(node: &TestNode, host: &str) -> (String, String) {
    node.publish("misbehave", "probe", "1.0.0").await;
    let owner = node.user("owner@acme.test").await;
    node.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": "acme" }), StatusCode::CREATED).await;
    let id = node.create_instance("acme", "probe", &[host]).await;
    (owner, id)
}

/// A call to the guest at `host`, tried again (up to 5 times) when it ran out
/// of compute budget: on PostgreSQL a call's wall time is charged, and a
/// loaded machine can exhaust it.
pub(crate) async fn guest(node: &TestNode, host: &str, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let mut tries = 0;
    loop {
        let (status, _, text) = node.ingress_call(host, method.clone(), path, None, body).await;
        tries += 1;
        if status != StatusCode::SERVICE_UNAVAILABLE || !text.contains("compute budget") || tries == 5 {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The instance's SQL and key-value data, written through its guest.
pub(crate) async fn write_data(node: &TestNode, host: &str) {
    // Each may be tried again (see `guest`).
    for statement in ["CREATE TABLE IF NOT EXISTS notes (body TEXT)", "INSERT INTO notes VALUES ('kept')"] {
        let (status, body) = guest(node, host, Method::POST, "/sql/execute", statement).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {body}");
    }
    let (status, body) = guest(node, host, Method::PUT, "/kv/greeting", "hello").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// The instance's subscription events, oldest first.
pub(crate) async fn events(node: &TestNode, tenant: &str, instance: &str) -> Vec<Value> {
    let events = node.get_admin(&format!("/v1/tenants/{tenant}/subscriptions?instance={instance}")).await;
    events["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_instance_stops_at_once_and_comes_back_with_its_data_and_hostnames() {
    let node = TestNode::start().await;
    let (owner, id) = owned_probe(&node, "p.test").await;
    write_data(&node, "p.test").await;
    let path = format!("/v1/instances/{id}");

    // Who may: not a member without the role, not the owner at once.
    let member = node.user("member@acme.test").await;
    node.expect(
        &owner,
        Method::POST,
        "/v1/tenants/acme/members",
        json!({ "email": "member@acme.test" }),
        StatusCode::CREATED,
    )
    .await;
    let (status, body) = node.call(&member, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a member cannot delete: {body}");
    let (status, body) = node.call(&owner, Method::DELETE, &format!("{path}?now=true"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only operators skip the grace: {body}");
    let (status, body) = node.call(&owner, Method::DELETE, &format!("{path}?at=once"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, deleted) = node.call(&owner, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    let (at, purge_at) = (deleted["deleted_at"].as_i64().unwrap(), deleted["purge_at"].as_i64().unwrap());
    assert_eq!(purge_at - at, 7 * 86_400, "the default grace is a week: {deleted}");
    // Off the route at once; still listed (restorable), refusing changes.
    assert_eq!(guest(&node, "p.test", Method::GET, "/kv/greeting", "").await.0, StatusCode::NOT_FOUND);
    let listed = node.call(&owner, Method::GET, "/v1/instances?tenant=acme", None).await.1;
    assert_eq!(listed["instances"][0]["deleted_at"], at, "{listed}");
    let (status, body) = node.call(&owner, Method::PATCH, &path, Some(json!({ "enabled": false }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("restore it first"), "{body}");
    // Deleting again changes nothing.
    let (status, again) = node.call(&owner, Method::DELETE, &path, None).await;
    assert_eq!((status, &again["deleted_at"]), (StatusCode::ACCEPTED, &json!(at)), "{again}");
    // The subscription ended when it was deleted.
    let last = events(&node, "acme", &id).await.pop().unwrap();
    assert_eq!(last["active"], false, "{last}");
    // Its name and its hostname are held for it: nobody else takes them meanwhile.
    let (status, body) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "probe", "name": "probe", "hosts": ["q.test"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, restored) = node.call(&owner, Method::POST, &format!("{path}/restore"), None).await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["hosts"], json!(["p.test"]), "its reserved hostname is bound again: {restored}");
    assert!(restored.get("deleted_at").is_none(), "{restored}");
    assert_eq!(guest(&node, "p.test", Method::GET, "/kv/greeting", "").await, (StatusCode::OK, "hello".into()));
    let (status, rows) = guest(&node, "p.test", Method::POST, "/sql/query", "SELECT body FROM notes").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert!(rows.contains("kept"), "{rows}");
    assert!(events(&node, "acme", &id).await.pop().unwrap()["active"] == true, "billed again from the restore");
    let (status, body) = node.call(&owner, Method::POST, &format!("{path}/restore"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// What is left of an instance's data, seen from outside the node.
pub(crate) async fn remains(node: &TestNode, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let dir = node.data.path().join("instances").join(id);
    if dir.exists() {
        found.push(format!("directory {}", dir.display()));
    }
    if crate::harness::on_postgres() {
        let role = crate::harness::instance_role(id);
        let mut pg = crate::harness::pg_admin(node).await;
        let (schemas,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pg_namespace WHERE nspname = $1")
            .bind(&role)
            .fetch_one(&mut pg)
            .await
            .unwrap();
        let (roles,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pg_roles WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&mut pg)
            .await
            .unwrap();
        if schemas + roles > 0 {
            found.push(format!("{schemas} schema and {roles} role {role}"));
        }
    }
    if let Some(url) = crate::harness::redis_url() {
        let mut redis = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("*{{{id}}}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await
                .unwrap();
            found.extend(keys.into_iter().map(|k| format!("Redis key {k}")));
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_purges_at_once_and_nothing_of_the_instance_remains() {
    let node = TestNode::start().await;
    let (owner, probe) = owned_probe(&node, "p.test").await;
    write_data(&node, "p.test").await;
    // An instance with jobs: one queued for later, counted in the tenant's quota.
    let manifest = std::fs::read_to_string(crate::harness::repo().join("plugins/tasks/wharf.toml")).unwrap();
    assert!(node.publish_bytes(&manifest, crate::harness::guest("tasks")).await.0.is_success());
    let tasks = node.create_instance("acme", "tasks", &["t.test"]).await;
    let job = json!({ "kind": "run-task", "payload": "1", "delay_ms": 3_600_000 });
    let (status, body) = node.call(&owner, Method::POST, &format!("/v1/instances/{tasks}/jobs"), Some(job)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pending = |quotas: &Value| {
        quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == "pending_jobs").unwrap()["used"].clone()
    };
    // (Its scheduled digest may be queued too.)
    assert!(pending(&node.get_admin("/v1/tenants/acme/quotas").await).as_i64().unwrap() >= 1);
    assert!(!remains(&node, &probe).await.is_empty(), "the check sees the probe's data");

    for id in [&probe, &tasks] {
        let (status, body) = node.admin(Method::DELETE, &format!("/v1/instances/{id}?now=true"), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["purged"], true, "{body}");
        assert_eq!(remains(&node, id).await, Vec::<String>::new(), "instance {id}");
        let (status, body) = node.admin(Method::GET, &format!("/v1/instances/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a purged instance is gone: {body}");
        let (status, body) = node.call(&owner, Method::POST, &format!("/v1/instances/{id}/restore"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "too late to restore: {body}");
    }
    assert_eq!(pending(&node.get_admin("/v1/tenants/acme/quotas").await), 0, "its jobs went with it");
    assert_eq!(guest(&node, "p.test", Method::GET, "/kv/greeting", "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.get_admin("/v1/instances?tenant=acme").await["instances"], json!([]));
    // The billing history stays: the subscription ended at the deletion.
    assert_eq!(events(&node, "acme", &probe).await.pop().unwrap()["active"], false);
    // The name is free, and the hostname is the tenant's to take back at once.
    let (status, body) = node
        .call(
            &owner,
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "probe", "hosts": ["p.test"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["hosts"], json!(["p.test"]), "reserved to its tenant: {body}");
    assert_eq!(body["name"], "probe", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_grace_ends_the_data_is_destroyed_by_itself() {
    let node = TestNode::start_with(|config| config.deletion_grace = Duration::from_secs(1)).await;
    let (owner, id) = owned_probe(&node, "p.test").await;
    write_data(&node, "p.test").await;
    let (status, body) = node.call(&owner, Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let started = std::time::Instant::now();
    loop {
        let (status, _) = node.admin(Method::GET, &format!("/v1/instances/{id}"), None).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "not purged after its grace");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(remains(&node, &id).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_on_one_node_stops_the_instance_on_every_node() {
    if !crate::harness::on_postgres() {
        return; // One node's own storage: there is no other node.
    }
    let a = TestNode::start().await;
    let b = TestNode::start_sharing(&a).await;
    let (owner, id) = owned_probe(&a, "p.test").await;
    write_data(&a, "p.test").await;
    let started = std::time::Instant::now();
    while guest(&b, "p.test", Method::GET, "/kv/greeting", "").await.0 != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(10), "node B never routed the instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = a.call(&owner, Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let deleted = std::time::Instant::now();
    while guest(&b, "p.test", Method::GET, "/kv/greeting", "").await.0 != StatusCode::NOT_FOUND {
        assert!(deleted.elapsed() < Duration::from_secs(5), "node B still serves the deleted instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("deleted on A -> 404 on B: {:?}", deleted.elapsed());
    // Restored through B, it serves through A with its data.
    let (status, body) = b.call(&owner, Method::POST, &format!("/v1/instances/{id}/restore"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let restored = std::time::Instant::now();
    while guest(&a, "p.test", Method::GET, "/kv/greeting", "").await != (StatusCode::OK, "hello".to_string()) {
        assert!(restored.elapsed() < Duration::from_secs(5), "node A never served the restored instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn set_clock(node: &TestNode, now: i64) {
    let (status, body) = node.admin(Method::POST, "/v1/clock", Some(json!({ "now": now }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_instance_is_billed_up_to_its_deletion_and_not_after() {
    const JAN_1: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z
    const DAY: i64 = 86_400;
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    let plan = json!({ "currency": "EUR", "period_price": 3100 });
    assert_eq!(node.admin(Method::PUT, "/v1/services/hello/plan", Some(plan)).await.0, StatusCode::OK);
    node.create_tenant("acme").await;
    let id = node.create_instance("acme", "hello", &["h.test"]).await;
    let started = events(&node, "acme", &id).await[0]["at"].as_i64().unwrap();
    set_clock(&node, JAN_1 + 10 * DAY).await;
    let (status, body) = node.admin(Method::DELETE, &format!("/v1/instances/{id}?now=true"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    set_clock(&node, JAN_1 + 20 * DAY).await;
    let invoice = node.get_admin("/v1/tenants/acme/invoices/2027-01").await;
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{invoice:#}");
    let ended = lines[0]["to"].as_i64().unwrap();
    assert!((JAN_1 + 10 * DAY..JAN_1 + 10 * DAY + 10).contains(&ended), "billed up to the deletion: {invoice:#}");
    // The month's price pro-rated by the second, rounded once.
    let expected = ((3100i128 * (ended - started) as i128 * 2 + 31 * DAY as i128) / (2 * 31 * DAY as i128)) as i64;
    assert_eq!(lines[0]["amount"], expected, "{invoice:#}");
}

/// The files a node keeps for a component: its bytes and compiled artifacts.
fn component_files(node: &TestNode, sha256: &str) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["components", "compiled"] {
        if let Ok(entries) = std::fs::read_dir(node.data.path().join(dir)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(sha256) {
                    found.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_deleted_only_once_nothing_needs_it_and_its_files_leave_every_node() {
    let node = TestNode::start().await;
    let b = if crate::harness::on_postgres() { Some(TestNode::start_sharing(&node).await) } else { None };
    // Three versions with different components (their own files).
    let mut sha = std::collections::BTreeMap::new();
    for (guest, version) in [("hello", "1.0.0"), ("echo", "2.0.0"), ("misbehave", "3.0.0")] {
        let published = node.publish(guest, "site", version).await;
        sha.insert(version, published["sha256"].as_str().unwrap().to_string());
    }
    let path = |v: &str| format!("/v1/services/site/versions/{v}");
    let refused = |body: &Value, why: &str| {
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "expected {why:?}: {body}");
    };
    // Only operators delete versions.
    let owner = node.user("owner@acme.test").await;
    node.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": "acme" }), StatusCode::CREATED).await;
    assert_eq!(node.call(&owner, Method::DELETE, &path("1.0.0"), None).await.0, StatusCode::FORBIDDEN);
    // The active version, then the previous one, cannot go.
    let (status, body) = node.admin(Method::DELETE, &path("1.0.0"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    refused(&body, "active version");
    node.admin(Method::POST, "/v1/services/site/activate", Some(json!({ "version": "2.0.0" }))).await;
    let (status, body) = node.admin(Method::DELETE, &path("1.0.0"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    refused(&body, "`wharf rollback` returns to");
    node.admin(Method::POST, "/v1/services/site/activate", Some(json!({ "version": "3.0.0" }))).await;
    // An instance pinned to it keeps it.
    let (status, pinned) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "site", "hosts": ["old.test"], "version": "1.0.0" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pinned}");
    let pinned = pinned["id"].as_str().unwrap().to_string();
    let (status, body) = node.admin(Method::DELETE, &path("1.0.0"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    refused(&body, &format!("instance {pinned}"));
    assert!(!component_files(&node, &sha["1.0.0"]).is_empty(), "the check sees the files");
    if let Some(b) = &b {
        // Node B compiles it too (in the background).
        let started = std::time::Instant::now();
        while component_files(b, &sha["1.0.0"]).iter().all(|f| !f.starts_with("compiled")) {
            assert!(started.elapsed() < Duration::from_secs(20), "node B never compiled 1.0.0");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Once nothing needs it, it goes, with its files, everywhere.
    assert_eq!(
        node.admin(Method::DELETE, &format!("/v1/instances/{pinned}?now=true"), None).await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = node.admin(Method::DELETE, &path("1.0.0"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deleted"]["version"], "1.0.0", "{body}");
    assert_eq!(node.admin(Method::GET, &path("1.0.0"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(component_files(&node, &sha["1.0.0"]), Vec::<String>::new());
    let versions = node.get_admin("/v1/services/site").await;
    let listed: Vec<&str> =
        versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(listed, ["3.0.0", "2.0.0"], "{versions}");
    if let Some(b) = &b {
        let started = std::time::Instant::now();
        while !component_files(b, &sha["1.0.0"]).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "node B kept the deleted version's files");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.admin(Method::GET, &path("1.0.0"), None).await.0, StatusCode::NOT_FOUND);
    }
    // What was never there, or is gone, is 404.
    assert_eq!(node.admin(Method::DELETE, &path("1.0.0"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.admin(Method::DELETE, "/v1/services/nope/versions/1.0.0", None).await.0, StatusCode::NOT_FOUND);
    // The versions still in use keep serving.
    assert_eq!(node.get_admin("/v1/services/site").await["active_version"], "3.0.0");
}
