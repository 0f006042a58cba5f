//! A tenant that leaves: deleted, its people lose access and its instances
//! stop serving at once, on every node; restored during the grace, all of it
//! comes back; purged, nothing of it remains but its billing records, and its
//! id is never given to anyone else.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::TestNode;
use crate::lifecycle::{guest, owned_probe, remains, write_data};

/// `acme` (see `owned_probe`) with a second instance at `q.test`, an admin,
/// a member holding a grant and a pending invitation; returns (owner, admin,
/// member, instance ids, the invitation's token).
async fn populated_tenant(node: &TestNode) -> (String, String, String, Vec<String>, String) {
    let (owner, probe) = owned_probe(node, "p.test").await;
    write_data(node, "p.test").await;
    let second = node.create_instance("acme", "probe", &["q.test"]).await;
    let mut tokens = Vec::new();
    for (email, role) in [("admin@acme.test", "admin"), ("member@acme.test", "member")] {
        tokens.push(node.user(email).await);
        let body = json!({ "email": email, "role": role });
        node.expect(&owner, Method::POST, "/v1/tenants/acme/members", body, StatusCode::CREATED).await;
    }
    let guarded = format!(
        "{}[[permissions]]\nname = \"read\"\ndescription = \"Read\"\nroutes = [\"GET /\"]\n",
        crate::harness::manifest("guarded", "1.0.0")
    );
    assert!(node.publish_bytes(&guarded, crate::harness::guest("misbehave")).await.0.is_success());
    let grant = json!({ "email": "member@acme.test", "permission": "guarded.read" });
    node.expect(&owner, Method::POST, "/v1/tenants/acme/grants", grant, StatusCode::CREATED).await;
    let invite = json!({ "email": "later@acme.test" });
    let (status, invited) = node.call(&owner, Method::POST, "/v1/tenants/acme/members", Some(invite)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{invited}");
    let quota = json!({ "limit": 7 });
    assert_eq!(node.admin(Method::PUT, "/v1/tenants/acme/quotas/instances", Some(quota)).await.0, StatusCode::OK);
    let member = tokens.pop().unwrap();
    let invitation = invited["invitation"]["token"].as_str().unwrap().to_string();
    (owner, tokens.pop().unwrap(), member, vec![probe, second], invitation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_loses_its_people_and_instances_at_once_and_comes_back_whole() {
    let node = TestNode::start().await;
    let (owner, admin, member, instances, invitation) = populated_tenant(&node).await;
    let stranger = node.user("owner@globex.test").await;
    node.expect(&stranger, Method::POST, "/v1/tenants", json!({ "id": "globex" }), StatusCode::CREATED).await;

    // Only its owners delete it; only operators skip the grace.
    for (who, token, expected) in [
        ("another tenant's owner", &stranger, StatusCode::NOT_FOUND),
        ("a member", &member, StatusCode::FORBIDDEN),
        ("an admin", &admin, StatusCode::FORBIDDEN),
    ] {
        let (status, body) = node.call(token, Method::DELETE, "/v1/tenants/acme", None).await;
        assert_eq!(status, expected, "{who}: {body}");
    }
    let (status, body) = node.call(&owner, Method::DELETE, "/v1/tenants/acme?now=true", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only operators skip the grace: {body}");

    let (status, deleted) = node.call(&owner, Method::DELETE, "/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    let (at, purge_at) = (deleted["deleted_at"].as_i64().unwrap(), deleted["purge_at"].as_i64().unwrap());
    assert_eq!(purge_at - at, 7 * 86_400, "{deleted}");
    let mut listed: Vec<String> =
        deleted["instances"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    listed.sort();
    let mut expected = instances.clone();
    expected.sort();
    assert_eq!(listed, expected, "{deleted}");

    // Nothing of it serves; its people see nothing of it.
    for host in ["p.test", "q.test"] {
        assert_eq!(guest(&node, host, Method::GET, "/kv/greeting", "").await.0, StatusCode::NOT_FOUND, "{host}");
    }
    for token in [&owner, &admin, &member] {
        let (status, body) = node.call(token, Method::GET, "/v1/tenants/acme", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (_, mine) = node.call(token, Method::GET, "/v1/tenants", None).await;
        assert_eq!(mine["tenants"], json!([]), "{mine}");
        let (_, theirs) = node.call(token, Method::GET, "/v1/instances", None).await;
        assert_eq!(theirs["instances"], json!([]), "{theirs}");
        let (status, body) = node.call(token, Method::GET, &format!("/v1/instances/{}", instances[0]), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // Its pending invitation opens nothing.
    let register =
        json!({ "email": "later@acme.test", "password": "a long enough password", "invitation": invitation });
    let (status, body) = node.anonymous_json(Method::POST, "/v1/users", register).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Operators still read it and its records, and change nothing in it.
    let shown = node.get_admin("/v1/tenants/acme").await;
    assert_eq!(shown["deleted_at"], at, "{shown}");
    assert_eq!(node.admin(Method::GET, "/v1/tenants/acme/invoices", None).await.0, StatusCode::OK);
    let (status, body) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "probe", "hosts": ["r.test"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("wharf tenant restore acme"), "{body}");
    let add = json!({ "email": "member2@acme.test" });
    assert_eq!(node.admin(Method::POST, "/v1/tenants/acme/members", Some(add)).await.0, StatusCode::CONFLICT);
    // Its instances cannot be brought back one by one.
    let (status, body) = node.admin(Method::POST, &format!("/v1/instances/{}/restore", instances[0]), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // The owner undoes it: everything comes back.
    let (status, body) = node.call(&member, Method::POST, "/v1/tenants/acme/restore", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a member cannot restore: {body}");
    let (status, restored) = node.call(&owner, Method::POST, "/v1/tenants/acme/restore", None).await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["instances"].as_array().map(Vec::len), Some(2), "{restored}");
    assert!(restored["deleted_at"].is_null(), "{restored}");
    assert_eq!(guest(&node, "p.test", Method::GET, "/kv/greeting", "").await, (StatusCode::OK, "hello".into()));
    assert_eq!(guest(&node, "q.test", Method::POST, "/sql/query", "SELECT 1").await.0, StatusCode::OK);
    let (status, grants) = node.call(&member, Method::GET, "/v1/tenants/acme/grants", None).await;
    assert_eq!(status, StatusCode::OK, "the member is back: {grants}");
    let (_, grants) = node.call(&owner, Method::GET, "/v1/tenants/acme/grants", None).await;
    assert!(grants.to_string().contains("guarded.read"), "{grants}");
    let (status, body) = node.call(&owner, Method::POST, "/v1/tenants/acme/restore", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let audit = node.get_admin("/v1/audit?tenant=acme").await.to_string();
    assert!(audit.contains("tenant.delete") && audit.contains("tenant.restore"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_tenant_leaves_only_its_billing_records_and_its_id_is_never_reused() {
    let node = TestNode::start_with(|config| config.deletion_grace = Duration::from_secs(1)).await;
    let (owner, _admin, member, instances, _) = populated_tenant(&node).await;
    for id in &instances {
        assert!(!remains(&node, id).await.is_empty(), "the check sees {id}'s data");
    }
    let (status, body) = node.call(&owner, Method::DELETE, "/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // When the grace ends the node purges it by itself.
    let started = std::time::Instant::now();
    while node.admin(Method::GET, "/v1/tenants/acme", None).await.0 != StatusCode::NOT_FOUND {
        assert!(started.elapsed() < Duration::from_secs(15), "not purged after its grace");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &instances {
        assert_eq!(remains(&node, id).await, Vec::<String>::new(), "instance {id}");
    }
    let (status, body) = node.call(&owner, Method::POST, "/v1/tenants/acme/restore", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "too late: {body}");
    for what in ["invitations", "members", "grants"] {
        let (status, body) = node.admin(Method::GET, &format!("/v1/tenants/acme/{what}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
    }
    let (_, mine) = node.call(&member, Method::GET, "/v1/tenants", None).await;
    assert_eq!(mine["tenants"], json!([]), "{mine}");
    // Its records stay for operators; its id stays taken.
    let (status, events) = node.admin(Method::GET, "/v1/tenants/acme/subscriptions", None).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_eq!(events["events"].as_array().map(Vec::len), Some(4), "two starts, two ends: {events}");
    let (status, body) = node.call(&owner, Method::POST, "/v1/tenants", Some(json!({ "id": "acme" }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Its hostnames are free at once: no tenant is left to hold them.
    node.create_tenant("globex").await;
    node.create_instance("globex", "probe", &["p.test"]).await;
    assert_eq!(guest(&node, "p.test", Method::GET, "/kv/greeting", "").await.0, StatusCode::NOT_FOUND, "a fresh store");
    let (status, body) = guest(&node, "p.test", Method::POST, "/sql/query", "SELECT body FROM notes").await;
    assert_ne!(status, StatusCode::OK, "a fresh database: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_deleted_on_one_node_is_gone_from_every_node_at_once() {
    if !crate::harness::on_postgres() {
        return; // One node's own storage: there is no other node.
    }
    let a = TestNode::start().await;
    let b = TestNode::start_sharing(&a).await;
    let (owner, _admin, member, _, _) = populated_tenant(&a).await;
    let started = std::time::Instant::now();
    while guest(&b, "p.test", Method::GET, "/kv/greeting", "").await.0 != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(10), "node B never routed the instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.call(&member, Method::GET, "/v1/tenants/acme", None).await.0, StatusCode::OK);
    let (status, body) = a.call(&owner, Method::DELETE, "/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Access ends on B with the deletion's commit.
    let (status, body) = b.call(&member, Method::GET, "/v1/tenants/acme", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let deleted = std::time::Instant::now();
    while guest(&b, "p.test", Method::GET, "/kv/greeting", "").await.0 != StatusCode::NOT_FOUND {
        assert!(deleted.elapsed() < Duration::from_secs(5), "node B still serves the deleted tenant");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restored: Value = b.call(&owner, Method::POST, "/v1/tenants/acme/restore", None).await.1;
    assert_eq!(restored["instances"].as_array().map(Vec::len), Some(2), "{restored}");
    let back = std::time::Instant::now();
    while guest(&a, "p.test", Method::GET, "/kv/greeting", "").await != (StatusCode::OK, "hello".to_string()) {
        assert!(back.elapsed() < Duration::from_secs(5), "node A never served the restored tenant");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_gets_one_last_invoice_addressed_as_it_was_then_its_details_go() {
    const JAN_1: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z
    const DAY: i64 = 86_400;
    let node = TestNode::start().await;
    crate::lifecycle::set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    let plan = json!({ "currency": "EUR", "period_price": 3100 });
    assert_eq!(node.admin(Method::PUT, "/v1/services/hello/plan", Some(plan)).await.0, StatusCode::OK);
    node.create_tenant("acme").await;
    node.create_instance("acme", "hello", &["h.test"]).await;
    let details = json!({ "name": "Acme Ltd", "address": "1 Quay", "tax_id": "EU1", "email": "ap@acme.test" });
    assert_eq!(node.admin(Method::PUT, "/v1/tenants/acme/billing/details", Some(details)).await.0, StatusCode::OK);
    crate::lifecycle::set_clock(&node, JAN_1 + 10 * DAY).await;
    let (status, body) = node.admin(Method::DELETE, "/v1/tenants/acme?now=true", None).await;
    assert_eq!((status, &body["purged"]), (StatusCode::ACCEPTED, &json!(true)), "{body}");

    // Months later: January's invoice is closed, billed up to the deletion
    // and addressed as it was; no later month is billed; the details are gone.
    crate::lifecycle::set_clock(&node, JAN_1 + 100 * DAY).await;
    let started = std::time::Instant::now();
    let invoices = loop {
        let (_, listed) = node.admin(Method::GET, "/v1/tenants/acme/invoices", None).await;
        let closed = listed["invoices"].as_array().is_some_and(|l| l.iter().any(|i| i["state"] == "closed"));
        let account = node.get_admin("/v1/tenants/acme/billing").await;
        if closed && account["details"]["name"].as_str().unwrap_or_default().is_empty() {
            break listed;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{listed} {account}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let periods: Vec<&str> =
        invoices["invoices"].as_array().unwrap().iter().filter_map(|i| i["period"].as_str()).collect();
    assert_eq!(periods, ["2027-01"], "{invoices}");
    let invoice = node.get_admin("/v1/tenants/acme/invoices/2027-01").await;
    assert_eq!(invoice["bill_to"]["name"], "Acme Ltd", "{invoice:#}");
    let ended = invoice["lines"][0]["to"].as_i64().unwrap();
    assert!((JAN_1 + 10 * DAY..JAN_1 + 10 * DAY + 10).contains(&ended), "{invoice:#}");
    // The records leave as one archive: every invoice, JSON and HTML, and the events.
    let response = node
        .http
        .get(format!("{}/v1/tenants/acme/invoices/export", node.admin_url()))
        .bearer_auth(&node.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    let mut names = Vec::new();
    for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().to_string();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
        if name == "invoices/2027-01.json" {
            let archived: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(archived, invoice, "the archive holds the invoice as the API shows it");
        }
        names.push(name);
    }
    assert_eq!(names, ["invoices/2027-01.json", "invoices/2027-01.html", "subscriptions.json"]);
}

/// DELETE /v1/me as `token`, confirmed by `password`.
async fn delete_me(node: &TestNode, token: &str, password: &str) -> (StatusCode, Value) {
    node.call(token, Method::DELETE, "/v1/me", Some(json!({ "password": password }))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_deleted_everywhere_at_once_but_never_leaves_a_tenant_without_an_owner() {
    use crate::harness::{OPERATOR, PASSWORD};
    let a = TestNode::start().await;
    // On the cluster's storage, a second node must refuse the credentials too.
    let b = if crate::harness::on_postgres() { Some(TestNode::start_sharing(&a).await) } else { None };
    let other = b.as_ref().unwrap_or(&a);
    let owner = a.user("owner@acme.test").await;
    a.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": "acme" }), StatusCode::CREATED).await;
    let (status, key) = a.call(&owner, Method::POST, "/v1/keys", Some(json!({ "name": "ci" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let ann = a.user("ann@acme.test").await;
    let add = json!({ "email": "ann@acme.test" });
    a.expect(&owner, Method::POST, "/v1/tenants/acme/members", add, StatusCode::CREATED).await;

    // Confirmed by the password only; never leaving a tenant without an owner.
    let (status, body) = a.call(&owner, Method::DELETE, "/v1/me", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = delete_me(&a, &key, "not the password").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a key alone cannot delete the account: {body}");
    let (status, body) = delete_me(&a, &owner, PASSWORD).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("wharf member transfer --tenant acme"), "{body}");
    let (status, body) = a.admin(Method::DELETE, "/v1/users/owner@acme.test", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "not even an operator leaves it ownerless: {body}");

    // Handing over: only owners; only to members.
    let transfer = |email: &str| json!({ "email": email });
    let (status, body) = a.call(&ann, Method::POST, "/v1/tenants/acme/transfer", Some(transfer("ann@acme.test"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) =
        a.call(&owner, Method::POST, "/v1/tenants/acme/transfer", Some(transfer("ops@wharf.test"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, members) =
        a.call(&owner, Method::POST, "/v1/tenants/acme/transfer", Some(transfer("ann@acme.test"))).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    let roles: Vec<(String, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap().into(), m["role"].as_str().unwrap().into()))
        .collect();
    assert_eq!(roles, [("ann@acme.test".into(), "owner".into()), ("owner@acme.test".into(), "admin".into())]);

    assert_eq!(other.call(&key, Method::GET, "/v1/me", None).await.0, StatusCode::OK);
    let (status, body) = delete_me(&a, &owner, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Refused at once, on every node: its session, its key, its password.
    for node in [&a, other] {
        for token in [&owner, &key] {
            let (status, body) = node.call(token, Method::GET, "/v1/me", None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        }
    }
    let login = json!({ "email": "owner@acme.test", "password": PASSWORD });
    assert_eq!(other.anonymous_json(Method::POST, "/v1/login", login).await.0, StatusCode::UNAUTHORIZED);
    let (_, members) = a.call(&ann, Method::GET, "/v1/tenants/acme/members", None).await;
    assert!(!members.to_string().contains("owner@acme.test"), "{members}");
    // The address may have an account again: a new one, belonging nowhere.
    let again = a.user("owner@acme.test").await;
    let (_, me) = a.call(&again, Method::GET, "/v1/me", None).await;
    assert_eq!(me["tenants"], json!([]), "{me}");

    // Operators delete others' accounts, never the last operator's.
    let (status, body) = a.call(&ann, Method::DELETE, "/v1/users/owner@acme.test", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = a.admin(Method::DELETE, "/v1/users/owner@acme.test", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(a.call(&again, Method::GET, "/v1/me", None).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = a.admin(Method::DELETE, &format!("/v1/users/{OPERATOR}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(a.admin(Method::DELETE, "/v1/users/nobody@acme.test", None).await.0, StatusCode::NOT_FOUND);
    let audit = a.get_admin("/v1/audit").await.to_string();
    assert!(audit.contains("account.delete") && audit.contains("member.transfer"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_through_a_revocation_never_answers_from_its_cache_when_it_thaws() {
    if !crate::harness::on_postgres() {
        return; // One node's own storage: there is no other node.
    }
    let a = TestNode::start().await;
    let b = crate::harness::Served::joining(&a).await;
    let token = a.user("ann@acme.test").await;
    let me = |admin: String, token: String| async move {
        crate::harness::client().get(format!("{admin}/v1/me")).bearer_auth(token).send().await.unwrap().status()
    };
    // Cached on B (answered twice), then B freezes and the session ends on A.
    for _ in 0..2 {
        assert_eq!(me(b.admin.clone(), token.clone()).await, StatusCode::OK);
    }
    b.signal("STOP");
    let ended = std::time::Instant::now();
    assert_eq!(a.call(&token, Method::POST, "/v1/logout", None).await.0, StatusCode::NO_CONTENT);
    assert!(ended.elapsed() < Duration::from_secs(4), "a frozen node holds a change back at most a little");
    b.signal("CONT");
    assert_eq!(me(b.admin.clone(), token.clone()).await, StatusCode::UNAUTHORIZED, "stale on thaw");
    // A live node is told at once: the logout waits for it, and no longer.
    let other = a.user("bo@acme.test").await;
    assert_eq!(me(b.admin.clone(), other.clone()).await, StatusCode::OK);
    let ended = std::time::Instant::now();
    assert_eq!(a.call(&other, Method::POST, "/v1/logout", None).await.0, StatusCode::NO_CONTENT);
    assert!(ended.elapsed() < Duration::from_secs(1), "{:?}", ended.elapsed());
    assert_eq!(me(b.admin.clone(), other).await, StatusCode::UNAUTHORIZED);
}
