//! Billing end to end: plans, subscriptions following the instances, invoices
//! computed independently here, end dates, spending limits, discounts, late
//! usage, isolation between tenants, and two nodes flushing at once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::*;

/// 2027-01-01T00:00:00Z.
const JAN_1: i64 = 1_798_761_600;
const DAY: i64 = 86_400;
const JANUARY: i64 = 31 * DAY;

/// A service declaring modules x and y (and, from 2.0.0, only y).
fn site_manifest(version: &str, modules: &[&str]) -> String {
    let mut manifest = manifest("site", version);
    for m in modules {
        manifest.push_str(&format!(
            "[[modules]]\nid = \"{m}\"\nname = \"{m}\"\ndescription = \"module {m}\"\nroutes = [\"GET /{m}\"]\n"
        ));
    }
    manifest
}

async fn set_clock(node: &TestNode, at: i64) {
    let (status, body) = node.admin(Method::POST, "/v1/clock", Some(json!({ "now": at }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `a × b / c` rounded half away from zero: the test's own arithmetic.
fn prorate(a: i64, b: i64, c: i64) -> i64 {
    let (p, c) = (a as i128 * b as i128, c as i128);
    ((p * 2 + c) / (2 * c)) as i64
}

/// `n` GETs of `/` on `host`, each answering `expected`.
async fn traffic(node: &TestNode, host: &str, n: usize, expected: StatusCode) {
    for _ in 0..n {
        assert_eq!(node.get(host, "/").await.0, expected);
    }
}

/// The subscription events of `tenant`, in order.
async fn events(node: &TestNode, tenant: &str) -> Vec<Value> {
    node.get_admin(&format!("/v1/tenants/{tenant}/subscriptions")).await["events"].as_array().unwrap().clone()
}

/// The time of the event whose reason contains `what`, checked against when
/// the script did it.
fn event_at(events: &[Value], what: &str, scripted: i64) -> i64 {
    let event = events
        .iter()
        .find(|e| e["reason"].as_str().unwrap().contains(what))
        .unwrap_or_else(|| panic!("no event {what:?} in {events:?}"));
    let at = event["at"].as_i64().unwrap();
    assert!((scripted..scripted + 10).contains(&at), "{what} at {at}, scripted at {scripted}");
    at
}

/// A new account added to `tenant` with `role`; returns its session token.
async fn member(node: &TestNode, tenant: &str, email: &str, role: &str) -> String {
    let token = node.user(email).await;
    let path = format!("/v1/tenants/{tenant}/members");
    node.expect(&node.admin_key, Method::POST, &path, json!({ "email": email, "role": role }), StatusCode::CREATED)
        .await;
    token
}

/// PATCH an instance as `token`, expecting `status`.
async fn patch_instance(node: &TestNode, token: &str, id: &str, body: Value, status: StatusCode) -> Value {
    node.expect(token, Method::PATCH, &format!("/v1/instances/{id}"), body, status).await
}

async fn set_plan(node: &TestNode, service: &str, plan: Value) -> Value {
    let (status, body) = node.admin(Method::PUT, &format!("/v1/services/{service}/plan"), Some(plan)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Wait until the usage ledger holds `requests` requests for `instance`.
async fn wait_billed_requests(node: &TestNode, instance: &str, requests: u64) -> Value {
    for _ in 0..100 {
        let usage = node.usage(instance).await;
        if usage["requests"].as_u64() == Some(requests) {
            // Applied to the ledger, not only counted in memory.
            tokio::time::sleep(Duration::from_millis(400)).await;
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("usage of {instance} never reached {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_month_bills_exactly_the_expected_lines() {
    let mut node = TestNode::start().await;
    let (status, body) = node.publish_bytes(&site_manifest("1.0.0", &["x", "y"]), guest("hello")).await;
    assert!(status.is_success(), "{body}");
    node.admin(Method::POST, "/v1/services/site/activate", Some(json!({ "version": "1.0.0" }))).await;
    // 31.00 a month, x 6.20, y 3.10; fuel 3 cents per million; 1 cent per 10 requests.
    let plan = set_plan(
        &node,
        "site",
        json!({ "currency": "USD", "period_price": 3100, "module_prices": { "x": 620, "y": 310 },
                "fuel_price": 3, "fuel_unit": 1_000_000, "request_price": 1, "request_unit": 10 }),
    )
    .await;
    assert_eq!(plan["revision"], 1);
    node.create_tenant("acme").await;
    node.expect(
        &node.admin_key,
        Method::PUT,
        "/v1/tenants/acme/billing/details",
        json!({ "name": "Acme Ltd", "address": "1 Dock Road\nPortsmouth", "tax_id": "GB123", "email": "billing@acme.test" }),
        StatusCode::OK,
    )
    .await;

    // Day 1: service A with modules X and Y.
    set_clock(&node, JAN_1).await;
    let (status, created) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "site", "hosts": ["site.acme.test"], "modules": ["x", "y"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    traffic(&node, "site.acme.test", 10, StatusCode::OK).await;
    // Day 10: Y dropped.
    set_clock(&node, JAN_1 + 9 * DAY).await;
    patch_instance(&node, &node.admin_key, &id, json!({ "modules": ["x"] }), StatusCode::OK).await;
    traffic(&node, "site.acme.test", 10, StatusCode::OK).await;
    // Day 20: a new version without X is activated.
    set_clock(&node, JAN_1 + 19 * DAY).await;
    let (status, body) = node.publish_bytes(&site_manifest("2.0.0", &["y"]), guest("hello")).await;
    assert!(status.is_success(), "{body}");
    node.expect(
        &node.admin_key,
        Method::POST,
        "/v1/services/site/activate",
        json!({ "version": "2.0.0" }),
        StatusCode::OK,
    )
    .await;
    traffic(&node, "site.acme.test", 10, StatusCode::OK).await;
    // Day 25: the instance disabled; it serves (and bills) nothing more.
    set_clock(&node, JAN_1 + 24 * DAY).await;
    patch_instance(&node, &node.admin_key, &id, json!({ "enabled": false }), StatusCode::OK).await;
    traffic(&node, "site.acme.test", 5, StatusCode::GONE).await;
    let usage = wait_billed_requests(&node, &id, 30).await;
    let fuel = usage["fuel"].as_i64().unwrap();
    assert!(fuel > 0);

    let events = events(&node, "acme").await;
    assert_eq!(events.len(), 4, "{events:?}");
    let created_at = event_at(&events, "subscription started with x, y", JAN_1);
    let y_dropped = event_at(&events, "module y disabled", JAN_1 + 9 * DAY);
    let x_removed = event_at(&events, "version 2.0.0 has no module x", JAN_1 + 19 * DAY);
    let disabled = event_at(&events, "instance disabled", JAN_1 + 24 * DAY);

    // The running total while January lasts is the same invoice, open.
    let open = node.get_admin("/v1/tenants/acme/invoices/current").await;
    assert_eq!((open["period"].as_str(), open["state"].as_str()), (Some("2027-01"), Some("open")));

    // February, after the grace hour: January's invoice closes by itself.
    set_clock(&node, JAN_1 + JANUARY + 3601).await;
    let mut invoice = Value::Null;
    for _ in 0..100 {
        invoice = node.get_admin("/v1/tenants/acme/invoices/2027-01").await;
        if invoice["state"] == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(invoice["state"], "closed", "{invoice}");

    let expected = [
        ("service", None, created_at, disabled, 3100),
        ("module", Some("x"), created_at, x_removed, 620),
        ("module", Some("y"), created_at, y_dropped, 310),
    ];
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 5, "three subscription lines, fuel and requests: {invoice:#}");
    let mut total = 0;
    for (kind, module, from, to, price) in expected {
        let line = lines
            .iter()
            .find(|l| l["kind"] == kind && l["module"].as_str() == module)
            .unwrap_or_else(|| panic!("no {kind} {module:?} line: {invoice:#}"));
        let amount = prorate(price, to - from, JANUARY);
        assert_eq!((line["from"].as_i64(), line["to"].as_i64()), (Some(from), Some(to)), "{line:#}");
        assert_eq!(line["quantity"], to - from);
        assert_eq!(line["amount"], amount, "{line:#}");
        assert_eq!(line["plan_revision"], 1);
        // The line cites the events that started and ended it.
        let sources = line["sources"].to_string();
        assert!(sources.contains(&format!("{id}#1")), "{sources}");
        total += amount;
    }
    let fuel_line = lines.iter().find(|l| l["kind"] == "fuel").unwrap();
    assert_eq!(fuel_line["quantity"], fuel);
    assert_eq!(fuel_line["amount"], prorate(fuel, 3, 1_000_000));
    assert!(fuel_line["sources"][0].as_str().unwrap().starts_with(&format!("usage_ledger of {id}")), "{fuel_line}");
    let requests_line = lines.iter().find(|l| l["kind"] == "requests").unwrap();
    assert_eq!((requests_line["quantity"].as_i64(), requests_line["amount"].as_i64()), (Some(30), Some(3)));
    total += prorate(fuel, 3, 1_000_000) + 3;
    assert_eq!(
        invoice["totals"],
        json!([{ "currency": "USD", "amount": total, "formatted": format!("{}.{:02} USD", total / 100, total % 100) }])
    );
    assert_eq!(invoice["bill_to"]["name"], "Acme Ltd");
    assert_eq!(invoice["bill_to"]["tax_id"], "GB123");

    // Asked again (and closed again): the same invoice, byte for byte.
    assert_eq!(node.get_admin("/v1/tenants/acme/invoices/2027-01").await, invoice);
    let again = node
        .expect(&node.admin_key, Method::POST, "/v1/tenants/acme/invoices/2027-01/close", json!({}), StatusCode::OK)
        .await;
    assert_eq!(again, invoice);
    // The readable page.
    let page = node
        .http
        .get(format!("{}/v1/tenants/acme/invoices/2027-01?format=html", node.admin_url()))
        .bearer_auth(&node.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Acme Ltd")
            && page.contains("module x of site")
            && page.contains(invoice["totals"][0]["formatted"].as_str().unwrap()),
        "{page}"
    );
    // The list shows it closed, and February open.
    let list = node.get_admin("/v1/tenants/acme/invoices").await;
    let periods: Vec<(String, String)> = list["invoices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["period"].as_str().unwrap().to_string(), i["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(periods, [("2027-02".to_string(), "open".to_string()), ("2027-01".to_string(), "closed".to_string())]);

    // A price change applies from the next period: January keeps revision 1.
    set_plan(&node, "site", json!({ "currency": "USD", "period_price": 9999 })).await;
    assert_eq!(node.get_admin("/v1/tenants/acme/invoices/2027-01").await, invoice);

    // Usage of a January hour arriving now (a node's journal replayed after a
    // crash) goes to February's invoice, not into the closed one.
    node.stop().await;
    let late = format!("{id}\tacme\t{}\t4\t0\t5000000\t0\n", JAN_1 + 20 * DAY);
    std::fs::write(node.data.path().join("usage/usage-0000000000001-latelate.log"), late).unwrap();
    node.start_again().await;
    set_clock(&node, JAN_1 + JANUARY + 2 * DAY).await;
    assert_eq!(node.get_admin("/v1/tenants/acme/invoices/2027-01").await, invoice);
    let february = node.get_admin("/v1/tenants/acme/invoices/2027-02").await;
    let fuel_line = february["lines"].as_array().unwrap().iter().find(|l| l["kind"] == "fuel").unwrap().clone();
    assert_eq!(fuel_line["quantity"], 5_000_000, "{february:#}");
    assert!(fuel_line["explanation"].as_str().unwrap().contains("recorded for earlier periods"), "{fuel_line}");
    // Disabled all February: no subscription lines.
    assert!(february["lines"].as_array().unwrap().iter().all(|l| l["kind"] != "service"), "{february:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_instance_answers_402_and_is_not_billed_after_its_end() {
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    set_plan(&node, "hello", json!({ "currency": "EUR", "period_price": 3100 })).await;
    node.create_tenant("acme").await;
    let owner = member(&node, "acme", "owner@acme.test", "owner").await;
    let id = node.create_instance("acme", "hello", &["trial.acme.test"]).await;
    // The end of a trial is the operator's: the tenant cannot extend its own.
    let ends = JAN_1 + 14 * DAY;
    let answer =
        patch_instance(&node, &owner, &id, json!({ "ends_at": ends + 365 * DAY }), StatusCode::FORBIDDEN).await;
    assert!(answer["error"].as_str().unwrap().contains("wharf.billing.operate"), "{answer}");
    let answer =
        patch_instance(&node, &node.admin_key, &id, json!({ "ends_at": "tomorrow" }), StatusCode::BAD_REQUEST).await;
    assert!(answer["error"].as_str().unwrap().contains("2027-01-10"), "{answer}");
    let instance =
        patch_instance(&node, &node.admin_key, &id, json!({ "ends_at": "2027-01-15" }), StatusCode::OK).await;
    assert_eq!(instance["ends_at"], ends);
    assert_eq!(node.get("trial.acme.test", "/").await.0, StatusCode::OK);

    set_clock(&node, ends).await;
    let (status, body) = node.get("trial.acme.test", "/").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(body.contains("ended at 2027-01-15T00:00:00Z"), "{body}");

    let invoice = node.get_admin("/v1/tenants/acme/invoices/2027-01").await;
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{invoice:#}");
    let start = events(&node, "acme").await[0]["at"].as_i64().unwrap();
    assert_eq!(lines[0]["to"], ends, "billed up to the end date, not after: {invoice:#}");
    assert_eq!(lines[0]["amount"], prorate(3100, ends - start, JANUARY));
    assert!(lines[0]["sources"].to_string().contains("end date 2027-01-15T00:00:00Z reached"));
    // Renewed by the operator: it serves again, billed from the renewal on.
    patch_instance(&node, &node.admin_key, &id, json!({ "ends_at": null }), StatusCode::OK).await;
    assert_eq!(node.get("trial.acme.test", "/").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_usage_and_invoices_never_mix() {
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    set_plan(&node, "hello", json!({ "currency": "USD", "period_price": 1000, "request_price": 1, "request_unit": 1 }))
        .await;
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let a = node.create_instance("acme", "hello", &["a.test"]).await;
    let g = node.create_instance("globex", "hello", &["g.test"]).await;
    let (ra, rg) = (7, 13);
    tokio::join!(traffic(&node, "a.test", ra, StatusCode::OK), traffic(&node, "g.test", rg, StatusCode::OK));
    wait_billed_requests(&node, &a, ra as u64).await;
    wait_billed_requests(&node, &g, rg as u64).await;
    for (tenant, instance, requests, other) in [("acme", &a, ra, &g), ("globex", &g, rg, &a)] {
        let invoice = node.get_admin(&format!("/v1/tenants/{tenant}/invoices/current")).await;
        let text = invoice.to_string();
        assert!(!text.contains(other.as_str()), "{tenant}'s invoice mentions {other}: {invoice:#}");
        let line = invoice["lines"].as_array().unwrap().iter().find(|l| l["kind"] == "requests").unwrap().clone();
        assert_eq!(
            (line["instance"].as_str(), line["quantity"].as_i64()),
            (Some(instance.as_str()), Some(requests as i64))
        );
    }
    // A member of acme sees nothing of globex's billing.
    let member = member(&node, "acme", "admin@acme.test", "admin").await;
    for path in [
        "/v1/tenants/globex/invoices",
        "/v1/tenants/globex/invoices/current",
        "/v1/tenants/globex/billing",
        "/v1/tenants/globex/subscriptions",
        &format!("/v1/instances/{g}/usage/hourly"),
    ] {
        let (status, body) = node.call(&member, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = node.call(&member, Method::GET, "/v1/tenants/acme/invoices/current", None).await;
    assert_eq!(status, StatusCode::OK);
    // Tenants read plans, but only operators set them, discount, close or move the clock.
    let (status, _) = node.call(&member, Method::GET, "/v1/services/hello/plan", None).await;
    assert_eq!(status, StatusCode::OK);
    for (method, path, body) in [
        (Method::PUT, "/v1/services/hello/plan", json!({ "currency": "USD" })),
        (Method::POST, "/v1/discounts", json!({ "tenant": "acme", "percent": 100 })),
        (Method::POST, "/v1/tenants/acme/invoices/2026-12/close", json!({})),
        (Method::POST, "/v1/clock", json!({ "advance": 1 })),
    ] {
        let (status, answer) = node.call(&member, method, path, Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    // The hourly ledger behind the lines.
    let ledger = node.call(&member, Method::GET, &format!("/v1/instances/{a}/usage/hourly"), None).await.1;
    assert_eq!(ledger["rows"][0]["requests"], ra as i64, "{ledger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spending_limit_suspends_the_tenant_until_raised() {
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    // 1 cent per request.
    set_plan(&node, "hello", json!({ "currency": "USD", "request_price": 1, "request_unit": 1 })).await;
    node.create_tenant("acme").await;
    let owner = member(&node, "acme", "owner@acme.test", "owner").await;
    let id = node.create_instance("acme", "hello", &["spend.test"]).await;
    let bad = node
        .expect(&owner, Method::PUT, "/v1/tenants/acme/billing/limit", json!({ "amount": 5 }), StatusCode::BAD_REQUEST)
        .await;
    assert!(bad["error"].as_str().unwrap().contains("currency"), "{bad}");
    node.expect(
        &owner,
        Method::PUT,
        "/v1/tenants/acme/billing/limit",
        json!({ "amount": 5, "currency": "USD" }),
        StatusCode::OK,
    )
    .await;
    traffic(&node, "spend.test", 5, StatusCode::OK).await;
    wait_billed_requests(&node, &id, 5).await;
    // Within a billing pass or two, every instance of the tenant answers 402.
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = node.get("spend.test", "/").await.0;
        if status == StatusCode::PAYMENT_REQUIRED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (_, body) = node.get("spend.test", "/").await;
    assert!(body.contains("spending limit of 0.05 USD"), "{body}");
    let account = node.call(&owner, Method::GET, "/v1/tenants/acme/billing", None).await.1;
    assert!(account["suspended"].as_str().unwrap().contains("0.05 USD"), "{account}");
    // Raised: served again at once.
    node.expect(
        &owner,
        Method::PUT,
        "/v1/tenants/acme/billing/limit",
        json!({ "amount": 10_000, "currency": "USD" }),
        StatusCode::OK,
    )
    .await;
    assert_eq!(node.get("spend.test", "/").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_plan_bills_from_when_it_was_set_and_the_running_total_accrues_to_now() {
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    node.create_tenant("acme").await;
    let id = node.create_instance("acme", "hello", &["early.test"]).await;
    // Used for 19 days while nothing is priced.
    traffic(&node, "early.test", 4, StatusCode::OK).await;
    wait_billed_requests(&node, &id, 4).await;
    // The service's first plan, on the 20th: 31.00 a month (1.00 a day) and a cent a request.
    set_clock(&node, JAN_1 + 19 * DAY).await;
    let plan = set_plan(
        &node,
        "hello",
        json!({ "currency": "USD", "period_price": 3100, "request_price": 1, "request_unit": 1 }),
    )
    .await;
    let priced = plan["effective_from"].as_i64().unwrap();
    assert!((JAN_1 + 19 * DAY..JAN_1 + 19 * DAY + 10).contains(&priced), "{plan}");
    traffic(&node, "early.test", 3, StatusCode::OK).await;
    wait_billed_requests(&node, &id, 7).await;
    // A limit below the month's projection but above what has accrued.
    node.expect(
        &node.admin_key,
        Method::PUT,
        "/v1/tenants/acme/billing/limit",
        json!({ "amount": 1000, "currency": "USD" }),
        StatusCode::OK,
    )
    .await;
    set_clock(&node, JAN_1 + 24 * DAY).await;

    let invoice = node.get_admin("/v1/tenants/acme/invoices/current").await;
    let accrued_until = invoice["accrued_until"].as_i64().expect("an open invoice says how far it is accrued");
    assert!((JAN_1 + 24 * DAY..JAN_1 + 24 * DAY + 10).contains(&accrued_until), "{invoice:#}");
    let lines = invoice["lines"].as_array().unwrap();
    let service = lines.iter().find(|l| l["kind"] == "service").unwrap();
    // Billed from the plan, not from the instance's creation; up to now, not the month's end.
    assert_eq!(service["from"].as_i64(), Some(priced), "{service:#}");
    assert_eq!(service["to"].as_i64(), Some(accrued_until), "{service:#}");
    let seconds = accrued_until - priced;
    assert_eq!(service["amount"].as_i64(), Some(prorate(3100, seconds, JANUARY)), "{service:#}");
    assert!(service["sources"].to_string().contains("first priced"), "{service:#}");
    // Only the requests made once the service was priced.
    let requests = lines.iter().find(|l| l["kind"] == "requests").unwrap();
    assert_eq!(requests["quantity"].as_i64(), Some(3), "{requests:#}");
    assert!(requests["sources"].to_string().contains("before hello was first priced"), "{requests:#}");
    let so_far = prorate(3100, seconds, JANUARY) + 3;
    assert_eq!(invoice["totals"][0]["amount"].as_i64(), Some(so_far), "{invoice:#}");
    let projected = prorate(3100, JAN_1 + JANUARY - priced, JANUARY) + 3;
    assert_eq!(invoice["projected"][0]["amount"].as_i64(), Some(projected), "{invoice:#}");
    assert!(so_far < 1000 && projected > 1000, "the limit sits between the two: {so_far} {projected}");

    // The account shows both, and the limit applies to what has accrued: not suspended.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let account = node.get_admin("/v1/tenants/acme/billing").await;
    assert_eq!(account["running_totals"][0]["amount"].as_i64(), Some(so_far), "{account:#}");
    assert_eq!(account["projected_totals"][0]["amount"].as_i64(), Some(projected), "{account:#}");
    assert_eq!(account["suspended"], Value::Null, "{account:#}");
    assert_eq!(node.get("early.test", "/").await.0, StatusCode::OK);
    // Once what has accrued reaches the limit (11 days of 1.00 on the 31st), it applies.
    set_clock(&node, JAN_1 + 30 * DAY).await;
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = node.get("early.test", "/").await.0;
        if status == StatusCode::PAYMENT_REQUIRED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discounts_are_lines_of_their_own() {
    let node = TestNode::start().await;
    set_clock(&node, JAN_1).await;
    node.publish("hello", "hello", "1.0.0").await;
    set_plan(&node, "hello", json!({ "currency": "USD", "period_price": 3100 })).await;
    node.create_tenant("acme").await;
    node.create_instance("acme", "hello", &["d.test"]).await;
    let start = events(&node, "acme").await[0]["at"].as_i64().unwrap();
    // 12.5 % off the first ten days for acme; 2.00 off for everyone using hello.
    let percent = node
        .expect(
            &node.admin_key,
            Method::POST,
            "/v1/discounts",
            json!({ "tenant": "acme", "percent": "12.5", "starts_at": "2027-01-01", "ends_at": "2027-01-11", "description": "Welcome" }),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(percent["basis_points"], 1250);
    node.expect(
        &node.admin_key,
        Method::POST,
        "/v1/discounts",
        json!({ "service": "hello", "amount": 200, "currency": "USD", "starts_at": "2027-01-01", "description": "Launch" }),
        StatusCode::CREATED,
    )
    .await;
    for bad in [
        json!({ "tenant": "acme", "percent": 150 }),
        json!({ "tenant": "acme", "percent": 10, "amount": 5, "currency": "USD" }),
        json!({ "tenant": "acme", "amount": 5 }),
        json!({ "percent": 10 }),
        json!({ "tenant": "acme", "percent": 10, "starts_at": "2027-02-01", "ends_at": "2027-01-01" }),
    ] {
        node.expect(&node.admin_key, Method::POST, "/v1/discounts", bad, StatusCode::BAD_REQUEST).await;
    }
    set_clock(&node, JAN_1 + JANUARY + 2 * 3600).await;
    let invoice = node.get_admin("/v1/tenants/acme/invoices/2027-01").await;
    let lines = invoice["lines"].as_array().unwrap();
    let service = prorate(3100, JAN_1 + JANUARY - start, JANUARY);
    let welcome = lines.iter().find(|l| l["description"].as_str().unwrap().starts_with("Welcome")).unwrap();
    // 12.5 % of exactly 3100 × (10 days − the seconds before creation) / 31 days.
    let exact_num = 3100i128 * (JAN_1 + 10 * DAY - start) as i128 * 1250;
    let den = JANUARY as i128 * 10_000;
    assert_eq!(welcome["amount"], -(((exact_num * 2 + den) / (2 * den)) as i64), "{welcome:#}");
    let launch = lines.iter().find(|l| l["description"].as_str().unwrap().starts_with("Launch")).unwrap();
    assert_eq!(launch["amount"], -200);
    assert_eq!(invoice["totals"][0]["amount"], service + welcome["amount"].as_i64().unwrap() - 200);
    // Another tenant gets the service's discount, not acme's.
    let list = node.get_admin("/v1/discounts?tenant=acme").await;
    assert_eq!(list["discounts"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_batch_applied_by_two_nodes_counts_once() {
    // The same journal file (one batch id) replayed by two nodes starting at
    // once on one control plane: counted once. On SQLite the two nodes are one
    // node started twice in turn.
    let mut a = TestNode::start().await;
    a.publish("hello", "hello", "1.0.0").await;
    a.create_tenant("acme").await;
    let id = a.create_instance("acme", "hello", &["twice.test"]).await;
    let hour = 1_798_761_600;
    let batch = format!("{id}\tacme\t{hour}\t3\t1\t777\t0\n");
    let name = "usage-0000000000002-samebtch.log";
    if on_postgres() {
        let mut b = TestNode::start_sharing(&a).await;
        a.stop().await;
        b.stop().await;
        std::fs::write(a.data.path().join("usage").join(name), &batch).unwrap();
        std::fs::write(b.data.path().join("usage").join(name), &batch).unwrap();
        tokio::join!(a.start_again(), b.start_again());
        // And both nodes serving one instance, flushing every 200 ms at once:
        // each request counted once.
        tokio::join!(traffic(&a, "twice.test", 60, StatusCode::OK), traffic(&b, "twice.test", 60, StatusCode::OK));
        let usage = wait_billed_requests(&a, &id, 123).await;
        assert_eq!(usage["requests"], 123);
        let total = b.usage(&id).await;
        assert_eq!((total["requests"].as_i64(), total["jobs"].as_i64()), (Some(123), Some(1)), "{total}");
        return;
    } else {
        a.stop().await;
        std::fs::write(a.data.path().join("usage").join(name), &batch).unwrap();
        a.start_again().await;
        a.stop().await;
        std::fs::write(a.data.path().join("usage").join(name), &batch).unwrap();
        a.start_again().await;
    }
    let usage = a.usage(&id).await;
    assert_eq!(
        (usage["requests"].as_i64(), usage["jobs"].as_i64(), usage["fuel"].as_i64()),
        (Some(3), Some(1), Some(777)),
        "{usage}"
    );
    let ledger = a.get_admin(&format!("/v1/instances/{id}/usage/hourly?from=2027-01&to=2027-02")).await;
    assert_eq!(ledger["rows"].as_array().unwrap().len(), 1, "{ledger}");
    assert_eq!(ledger["rows"][0]["fuel"], 777);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_flushing_the_same_instances_at_once_never_deadlock_and_count_everything() {
    // Three nodes' usage rooms on one control plane, each recording the same
    // 40 instances over 3 hours in its own order, flushing at the same moment.
    let node = TestNode::start().await;
    node.publish("hello", "hello", "1.0.0").await;
    node.create_tenant("acme").await;
    let mut instances = Vec::new();
    for i in 0..40 {
        let (status, body) = node
            .admin(
                Method::POST,
                "/v1/instances",
                Some(json!({ "tenant": "acme", "service": "hello", "hosts": [format!("i{i:02}.flush.test")] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        instances.push(body["id"].as_str().unwrap().to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let db = wharf::store::open(node.data.path(), node.database_url.as_deref()).await.unwrap();
    let clock = std::sync::Arc::new(wharf::clock::Clock::settable());
    let nodes: Vec<wharf::usage::Usage> = (0..3)
        .map(|n| {
            wharf::usage::Usage::open(db.clone(), &dir.path().join(format!("usage-{n}")), clock.clone(), false).unwrap()
        })
        .collect();
    let rounds = 8;
    for _ in 0..rounds {
        for (n, usage) in nodes.iter().enumerate() {
            let mut order = instances.clone();
            order.rotate_left(n * 13);
            if n % 2 == 1 {
                order.reverse();
            }
            for instance in &order {
                let counters = usage.counters(instance, "acme");
                for hour in 0..3 {
                    counters.record(JAN_1 + hour * 3600, 10, false);
                }
            }
        }
        let flushed = futures::future::join_all(nodes.iter().map(|u| u.flush())).await;
        for result in flushed {
            result.expect("a flush failed (on PostgreSQL: deadlock detected?)");
        }
    }
    for instance in &instances {
        let totals = nodes[0].totals(instance).await.unwrap();
        assert_eq!((totals.requests, totals.fuel), (3 * 3 * rounds, 3 * 3 * rounds * 10), "{instance}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_input_errors_are_4xx_that_say_what_to_fix() {
    let node = TestNode::start().await;
    node.publish("hello", "hello", "1.0.0").await;
    node.create_tenant("acme").await;
    for (plan, says) in [
        (json!({ "currency": "dollars" }), "ISO 4217"),
        (json!({ "currency": "USD", "period_price": -1 }), "period_price"),
        (json!({ "currency": "USD", "module_prices": { "nope": 5 } }), "module \"nope\""),
        (json!({ "currency": "USD", "fuel_unit": 0 }), "fuel_unit"),
        (json!({ "currency": "USD", "colour": "red" }), "unknown field"),
    ] {
        let answer =
            node.expect(&node.admin_key, Method::PUT, "/v1/services/hello/plan", plan, StatusCode::BAD_REQUEST).await;
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    node.expect(
        &node.admin_key,
        Method::PUT,
        "/v1/services/nope/plan",
        json!({ "currency": "USD" }),
        StatusCode::NOT_FOUND,
    )
    .await;
    let (status, answer) = node.admin(Method::GET, "/v1/tenants/acme/invoices/2027-13", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("YYYY-MM"));
    let answer = node
        .expect(
            &node.admin_key,
            Method::POST,
            "/v1/tenants/acme/invoices/current/close",
            json!({}),
            StatusCode::CONFLICT,
        )
        .await;
    assert!(answer["error"].as_str().unwrap().contains("still open"), "{answer}");
    let answer = node
        .expect(&node.admin_key, Method::POST, "/v1/clock", json!({ "now": "2020-01-01" }), StatusCode::BAD_REQUEST)
        .await;
    assert!(answer["error"].as_str().unwrap().contains("only moves forward"), "{answer}");
    // Milliseconds sent as seconds (year ~58,000), or a huge advance: refused,
    // naming the bound, and the clock has not moved.
    let before = node.get_admin("/v1/clock").await["now"].as_i64().unwrap();
    let millis = before * 1000;
    for change in [json!({ "now": millis }), json!({ "advance": 400 * 365 * 86_400_i64 }), json!({ "now": i64::MAX })] {
        let answer =
            node.expect(&node.admin_key, Method::POST, "/v1/clock", change.clone(), StatusCode::BAD_REQUEST).await;
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("10 years ahead") && error.contains("not milliseconds"), "{change}: {answer}");
    }
    let after = node.get_admin("/v1/clock").await["now"].as_i64().unwrap();
    assert!(after - before < 60, "the clock did not move: {before} -> {after}");
    let answer = node
        .expect(
            &node.admin_key,
            Method::PUT,
            "/v1/tenants/acme/billing/details",
            json!({ "email": "not an address" }),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(answer["error"].as_str().unwrap().contains("email"), "{answer}");
    node.expect(&node.admin_key, Method::GET, "/v1/tenants/nobody/invoices", json!(null), StatusCode::NOT_FOUND).await;
    // What a tenant writes on its invoices is printed, never run.
    node.expect(
        &node.admin_key,
        Method::PUT,
        "/v1/tenants/acme/billing/details",
        json!({ "name": "<script>alert(1)</script>", "address": "\"><img src=x onerror=alert(1)>" }),
        StatusCode::OK,
    )
    .await;
    let page = node
        .http
        .get(format!("{}/v1/tenants/acme/invoices/current?format=html", node.admin_url()))
        .bearer_auth(&node.admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert!(!page.contains("<script>") && !page.contains("<img"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_without_its_subscription_event_is_billed_by_the_next_pass() {
    let node = TestNode::start_with(|config| {
        config.billing.interval = Duration::from_millis(100);
        config.billing.sync_interval = Duration::from_millis(200);
    })
    .await;
    node.publish("hello", "hello", "1.0.0").await;
    node.create_tenant("acme").await;
    let id = node.create_instance("acme", "hello", &["crash.test"]).await;
    let started = events(&node, "acme").await.len();
    // A new version that bills the same (no module ends or starts) records
    // nothing per follower: the service's rollout history has it.
    node.publish("hello", "hello", "2.0.0").await;
    let (status, body) =
        node.admin(Method::POST, "/v1/services/hello/activate", Some(json!({ "version": "2.0.0" }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The passes' first round (every instance) is over.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(events(&node, "acme").await.len(), started, "a version change alone is not billed");
    // As if a node committed a change and crashed before recording its event:
    // the instance disabled and the change logged, no subscription event.
    let db = &node.node().node.db;
    let mut tx = wharf::store::begin(db).await.unwrap();
    sqlx::query("UPDATE instances SET enabled = FALSE WHERE id = $1").bind(&id).execute(&mut *tx).await.unwrap();
    wharf::store::bump_generation_for(&mut tx, wharf::store::Change::Instance(&id)).await.unwrap();
    tx.commit().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = events(&node, "acme").await;
        if all.len() > started {
            let last = all.last().unwrap();
            assert_eq!(
                (last["instance"].as_str(), last["active"].as_bool()),
                (Some(id.as_str()), Some(false)),
                "{last}"
            );
            assert!(last["reason"].as_str().unwrap().contains("disabled"), "{last}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the pass never recorded the change: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recorded once, however many passes run after it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(events(&node, "acme").await.len(), started + 1);
}
