//! The dashboard: served with a strict policy and no data in it; driven in a
//! headless Chromium, an operator sees the fleet and promotes and rolls back
//! with clicks, a tenant's admin sees only their tenant, and text a tenant
//! controls is shown as text.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::browser::{chromium, Browser};
use crate::harness::*;
use crate::jobs::{lab_manifest, wait_serving};

async fn publish_site(node: &TestNode, version: &str) {
    let (status, body) = node.publish_bytes(&lab_manifest("site", version, "[1]", ""), guest("jobs-lab")).await;
    assert!(status.is_success(), "{body}");
}

async fn served_version(node: &TestNode, host: &str) -> String {
    let resp = node.http.get(format!("http://{}/", node.ingress())).header("host", host).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.headers().get("x-wharf-version").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Quote `text` as a JavaScript string literal.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A browser on `node`'s dashboard, logged in with the operator's API key.
async fn operator_in_browser(binary: &str, node: &TestNode) -> Browser {
    let mut browser = Browser::start(binary).await;
    browser.navigate(&format!("{}/dashboard", node.admin_url())).await;
    browser.wait_for("!document.getElementById('login').hidden", "the login form").await;
    browser
        .eval(&format!(
            "(() => {{ const f = document.getElementById('login-form'); f.key.value = {}; f.requestSubmit(); return true; }})()",
            js(&node.admin_key)
        ))
        .await;
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_and_promotes_and_rolls_back_with_a_click() {
    let node = TestNode::start().await;

    // The page itself: anyone may load it, it holds nothing, and it may run
    // only its own script.
    let page = node.anonymous(Method::GET, "/dashboard").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/app.js") && !html.contains("<script>"), "no inline script: {html}");
    let script = node.anonymous(Method::GET, "/dashboard/app.js").await;
    assert!(script.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    assert!(!script.text().await.unwrap().contains("innerHTML"), "the page never parses data as HTML");
    let root = client_no_redirects().get(format!("{}/", node.admin_url())).send().await.unwrap();
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()["location"], "/dashboard");
    assert_eq!(node.anonymous(Method::GET, "/dashboard/missing").await.status(), StatusCode::NOT_FOUND);

    let Some(binary) = chromium() else {
        assert!(
            std::env::var("WHARF_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "Chromium is needed for the dashboard test: apt-get install chromium"
        );
        eprintln!("SKIPPED: the dashboard in a browser (no Chromium; apt-get install chromium)");
        return;
    };

    // A service with two versions, two tenants, and a dead job whose error
    // carries markup a tenant's guest chose.
    publish_site(&node, "1.0.0").await;
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let acme = node.create_instance("acme", "site", &["acme.test"]).await;
    let globex = node.create_instance("globex", "site", &["globex.test"]).await;
    wait_serving(&node, "acme.test").await;
    wait_serving(&node, "globex.test").await;
    publish_site(&node, "2.0.0").await;
    let markup = r#"<img src=x onerror="document.title='owned'">"#;
    let resp = node
        .http
        .post(format!("http://{}/enqueue", node.ingress()))
        .query(&[("kind", "fail"), ("payload", markup), ("attempts", "1")])
        .header("host", "acme.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    let started = Instant::now();
    let dead_job = loop {
        let dead = node.get_admin(&format!("/v1/jobs?instance={acme}&state=dead")).await;
        if let Some(job) = dead["jobs"].as_array().unwrap().first() {
            break job["id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the failing job never died: {dead}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // On PostgreSQL a second node shares the platform: the dashboard shows both.
    let second = if postgres_base().is_some() { Some(TestNode::start_sharing(&node).await) } else { None };
    let fleet = node.get_admin("/v1/nodes").await;
    let nodes: Vec<String> =
        fleet["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), if second.is_some() { 2 } else { 1 }, "{fleet}");

    // The operator logs in with an API key and sees the fleet.
    let mut browser = operator_in_browser(&binary, &node).await;
    for id in &nodes {
        browser
            .wait_for(&format!("document.querySelector('#nodes[data-state=ok] [data-node={}]')", js(id)), "every node")
            .await;
    }
    browser
        .wait_for("document.querySelector('[data-service=site] tr[data-version=\"2.0.0\"]')", "version 2.0.0 listed")
        .await;
    for instance in [&acme, &globex] {
        browser
            .wait_for(&format!("document.querySelector('#instances [data-instance={}]')", js(instance)), "instances")
            .await;
    }
    browser.wait_for(&format!("document.querySelector('#jobs [data-job={}]')", js(&dead_job)), "the dead job").await;
    let text = browser.text().await;
    assert!(text.contains(markup), "the guest's error is shown as text: {text}");
    assert_eq!(browser.eval("document.querySelectorAll('main img').length").await, json!(0));
    assert_eq!(browser.eval("document.title").await, json!("Wharf"));

    // Stage, then promote with two clicks.
    let click = |key: &str| {
        format!("(() => {{ document.querySelector('[data-action={}]').click(); return true; }})()", js(key))
    };
    browser.eval(&click("stage:site:2.0.0")).await;
    browser
        .wait_for("document.getElementById('flash').textContent.includes('ready on every live node')", "staged")
        .await;
    browser.eval(&click("promote:site:2.0.0")).await;
    browser
        .wait_for(
            "document.querySelector('[data-action=\"promote:site:2.0.0\"]').textContent.startsWith('Confirm')",
            "the promote button asking for confirmation",
        )
        .await;
    assert_eq!(node.get_admin("/v1/services/site").await["active_version"], "1.0.0", "one click changes nothing");
    browser.eval(&click("promote:site:2.0.0")).await;
    browser.wait_for("document.getElementById('flash').textContent.includes('now runs 2.0.0')", "promoted").await;
    assert_eq!(node.get_admin("/v1/services/site").await["active_version"], "2.0.0");
    assert_eq!(served_version(&node, "acme.test").await, "2.0.0");
    if let Some(second) = &second {
        assert_eq!(served_version(second, "acme.test").await, "2.0.0", "every node switched");
    }
    browser
        .wait_for(
            "document.querySelector('[data-service=site] tr[data-version=\"2.0.0\"]').innerText.includes('active')",
            "2.0.0 shown active",
        )
        .await;

    // Roll back the same way.
    browser.eval(&click("rollback:site")).await;
    browser.eval(&click("rollback:site")).await;
    browser.wait_for("document.getElementById('flash').textContent.includes('now runs 1.0.0')", "rolled back").await;
    assert_eq!(node.get_admin("/v1/services/site").await["active_version"], "1.0.0");
    assert_eq!(served_version(&node, "acme.test").await, "1.0.0");

    // Cancel the dead job.
    let cancel = format!("cancel:{dead_job}");
    browser.eval(&click(&cancel)).await;
    browser.eval(&click(&cancel)).await;
    browser.wait_for("document.getElementById('flash').textContent.includes('cancelled')", "the job cancelled").await;
    assert_eq!(node.get_admin(&format!("/v1/jobs/{dead_job}")).await["state"], "cancelled");

    // Log out: the credential is gone from the tab.
    browser.eval("(() => { document.getElementById('logout').click(); return true; })()").await;
    browser.wait_for("!document.getElementById('login').hidden", "the login form again").await;
    assert_eq!(browser.eval("sessionStorage.length").await, json!(0));
    // Nothing of the operator's stays on the page, even from a refresh that
    // was under way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = browser.eval("document.querySelectorAll('[data-tenant], [data-instance], [data-node]').length").await;
    assert_eq!(left, json!(0), "{}", browser.text().await);

    // A wrong password says so and logs nobody in.
    let ann = "ann@acme.test";
    node.user(ann).await;
    let (status, body) =
        node.admin(Method::POST, "/v1/tenants/acme/members", Some(json!({ "email": ann, "role": "admin" }))).await;
    assert!(status.is_success(), "{body}");
    let log_in = |password: &str| {
        format!(
            "(() => {{ const f = document.getElementById('login-form'); f.email.value = {}; f.password.value = {}; \
             f.requestSubmit(); return true; }})()",
            js(ann),
            js(password)
        )
    };
    browser.eval(&log_in("not the password")).await;
    browser.wait_for("document.getElementById('flash').textContent.includes('Cannot log in')", "refused").await;
    assert_eq!(browser.eval("sessionStorage.length").await, json!(0));

    // A tenant's admin sees their tenant only, and no operator's controls.
    browser.eval(&log_in(PASSWORD)).await;
    browser.wait_for(&format!("document.querySelector('#instances [data-instance={}]')", js(&acme)), "acme").await;
    browser.wait_for("document.querySelector('#billing [data-tenant=acme]')", "acme's billing").await;
    let seen: Value = browser
        .eval(
            "({ nodes: document.getElementById('nodes').hidden, actions: document.querySelectorAll('[data-action^=promote], \
             [data-action^=stage], [data-action^=rollback]').length, globexBilling: \
             Boolean(document.querySelector('[data-tenant=globex]')) })",
        )
        .await;
    assert_eq!(seen, json!({ "nodes": true, "actions": 0, "globexBilling": false }));
    let text = browser.text().await;
    assert!(text.contains(&acme) && !text.contains(&globex), "only acme's instance: {text}");

    // A stranger with an account sees nobody's data.
    browser.eval("(() => { document.getElementById('logout').click(); return true; })()").await;
    browser.wait_for("!document.getElementById('login').hidden", "the login form for the stranger").await;
    let eve = "eve@elsewhere.test";
    node.user(eve).await;
    browser
        .eval(&format!(
            "(() => {{ const f = document.getElementById('login-form'); f.email.value = {}; f.password.value = {}; \
             f.requestSubmit(); return true; }})()",
            js(eve),
            js(PASSWORD)
        ))
        .await;
    browser.wait_for("document.querySelector('#instances[data-state=ok]')", "the stranger's instances panel").await;
    browser.wait_for("document.body.getAttribute('data-refreshed')", "a whole refresh").await;
    let text = browser.text().await;
    assert!(text.contains("No instance yet") && !text.contains(&acme) && !text.contains(&globex), "{text}");
    assert_eq!(
        browser.eval("document.querySelectorAll('[data-tenant], [data-node], [data-job], [data-usage]').length").await,
        json!(0)
    );
    assert!(browser.problems.is_empty(), "the page ran without errors or policy violations: {:?}", browser.problems);
}

fn client_no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The charts: real traffic on two versions with a promotion between them, a
/// queue of jobs and the usage ledger, drawn by uPlot under the page's strict
/// policy; checked by the values each chart was given and by the pixels of
/// the first series' color on its canvas, not by a canvas existing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_draw_real_traffic_with_the_promotion_marked() {
    let node = TestNode::start_with(|config| config.history_interval = Duration::from_millis(250)).await;
    let history = node.admin(Method::GET, "/v1/node/history", None).await;
    assert_eq!(history.0, StatusCode::OK, "{}", history.1);
    publish_site(&node, "1.0.0").await;
    node.create_tenant("acme").await;
    node.create_instance("acme", "site", &["acme.test"]).await;
    wait_serving(&node, "acme.test").await;
    let node = &node;
    let traffic = |n: usize| async move {
        for _ in 0..n {
            assert_eq!(node.get("acme.test", "/").await.0, StatusCode::OK);
        }
    };
    traffic(60).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish_site(&node, "2.0.0").await;
    let (status, body) = node.admin(Method::POST, "/v1/services/site/stage", Some(json!({ "version": "2.0.0" }))).await;
    assert!(status.is_success(), "{body}");
    let (status, body) =
        node.admin(Method::POST, "/v1/services/site/promote", Some(json!({ "version": "2.0.0" }))).await;
    assert!(status.is_success(), "{body}");
    wait_serving(&node, "acme.test").await;
    traffic(60).await;
    // Jobs waiting a while: the queue's depth.
    let resp = node
        .http
        .post(format!("http://{}/enqueue", node.ingress()))
        .query(&[("kind", "noop"), ("n", "5"), ("delay_ms", "60000")])
        .header("host", "acme.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Both versions and the queue are in the history.
    let started = Instant::now();
    loop {
        let history = node.get_admin("/v1/node/history").await;
        let versions: Vec<&str> =
            history["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
        let queued = history["queued"].as_array().unwrap().iter().filter_map(Value::as_i64).max().unwrap_or(0);
        if versions.contains(&"1.0.0") && versions.contains(&"2.0.0") && queued >= 5 {
            let total: u64 = history["versions"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| v["requests"].as_array().unwrap().iter().filter_map(Value::as_u64))
                .sum();
            assert!(total >= 120, "every request counted once: {total} {history}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let Some(binary) = chromium() else {
        assert!(
            std::env::var("WHARF_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "Chromium is needed for the dashboard test: apt-get install chromium"
        );
        eprintln!("SKIPPED: the charts in a browser (no Chromium; apt-get install chromium)");
        return;
    };
    let mut browser = operator_in_browser(&binary, node).await;
    let chart = |title: &str| format!("document.querySelector('#charts[data-state=ok] [data-chart^={}]')", js(title));
    browser.wait_for(&format!("{}.dataset.marks >= 1", chart("Requests")), "the promotion marked").await;
    let series = browser.eval(&format!("{}.dataset.series", chart("Requests"))).await;
    let series = series.as_str().unwrap();
    assert!(series.contains("site 1.0.0") && series.contains("site 2.0.0"), "{series}");
    for title in ["Requests", "Latency", "Job queue"] {
        let values = browser.eval(&format!("Number({}.dataset.values)", chart(title))).await;
        assert!(values.as_f64().unwrap() >= 2.0, "{title}: {values}");
    }
    // The ledger's hour shows once usage is flushed (every second).
    browser
        .wait_for(
            &format!("Number(({}) && {}.dataset.values) >= 1", chart("Requests and fuel"), chart("Requests and fuel")),
            "the usage ledger's hour",
        )
        .await;
    // Each version's line is drawn: pixels of its color (the palette's first
    // and third, 5xx lines sharing them dashed) on the canvas.
    for (version, (r, g, b)) in [("1.0.0", (27, 106, 201)), ("2.0.0", (179, 38, 30))] {
        let drawn = browser
            .eval(&format!(
                "(() => {{ const c = {}.querySelector('canvas'); \
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; \
                 for (let i = 0; i < d.length; i += 4) {{ if (d[i+3] > 200 && Math.abs(d[i] - {r}) < 40 && \
                 Math.abs(d[i+1] - {g}) < 40 && Math.abs(d[i+2] - {b}) < 40) n++; }} return n; }})()",
                chart("Requests")
            ))
            .await;
        assert!(drawn.as_u64().unwrap() >= 10, "{version}'s line is drawn: {drawn} pixels of its color");
    }
    if let Ok(file) = std::env::var("WHARF_SCREENSHOT") {
        browser.eval("document.getElementById('charts').scrollIntoView()").await;
        let shot = browser.send("Page.captureScreenshot", json!({ "format": "png" })).await;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(file, png).unwrap();
    }
    assert!(browser.problems.is_empty(), "script errors or CSP violations: {:?}", browser.problems);
}
