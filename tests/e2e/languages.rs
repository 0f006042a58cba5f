//! Services in Python and JavaScript, and services started with `wharf new`
//! (issue 24). The notes service exists three times — `plugins/notes` (Rust,
//! wharf-sdk), `plugins/python/notes` (Wharf's Python SDK, componentize-py) and
//! `plugins/js/notes` (TypeScript, Wharf's JS SDK, ComponentizeJS) — each built
//! from source in the test run, and one behavioural test runs on all three on
//! each backend: its own table (a migration per dialect, filled by its seeder), a
//! route only a granted member may use, the caller, a module, settings, a
//! key-value counter, a job and a scheduled job, the SDK's errors. And a
//! newcomer's service, written by `wharf new` in each language, builds,
//! publishes and serves.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::access::{member_holding, member_of};
use crate::harness::{repo, service_manifest, TestNode};

/// Run an SDK's `build.sh APP_DIR OUT` (Python or JavaScript).
fn build_with(sdk: &str, app: &Path, out: &Path) {
    let script = repo().join("sdk").join(sdk).join("build.sh");
    let status = std::process::Command::new(&script)
        .arg(app)
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("failed to run {script:?}: {e}"));
    assert!(status.success(), "{script:?} {app:?} failed");
}

/// A notes twin, built once per test run.
fn built(cell: &'static OnceLock<PathBuf>, sdk: &str, app: &str, out: &str) -> Vec<u8> {
    let path = cell.get_or_init(|| {
        let out = repo().join(out);
        build_with(sdk, &repo().join(app), &out);
        out
    });
    std::fs::read(path).unwrap()
}

async fn call(
    node: &TestNode,
    host: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let (status, _, body) = node.ingress_call(host, method, path, token, body).await;
    (status, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_notes_service_uses_its_table_permissions_modules_and_key_value_store() {
    let component = crate::harness::guest("notes");
    notes_behave("notes", "notes", component, "Rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_notes_service_behaves_as_its_rust_twin() {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let component = built(&BUILT, "python", "plugins/python/notes", "target/python/notes.wasm");
    notes_behave("python/notes", "pynotes", component, "Python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_notes_service_behaves_as_its_rust_twin() {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let component = built(&BUILT, "js", "plugins/js/notes", "target/js/notes.wasm");
    notes_behave("js/notes", "jsnotes", component, "JavaScript").await;
}

/// The JavaScript SDK's edges (`plugins/js/lab`): SQL values cross both ways with
/// their types (integers past 2^53 as bigints, whole reals, bytes, null,
/// booleans), the key-value store's calls, the platform's refusals as
/// `WharfError`s (caught, and uncaught: 500 with the message), any other
/// exception as a 500 that says nothing of it, path captures, async handlers,
/// headers and query, and a job that throws fails with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_sdk_carries_values_refusals_and_failures_as_it_promises() {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let component = built(&BUILT, "js", "plugins/js/lab", "target/js/lab.wasm");
    let node = TestNode::start().await;
    let (status, published) = node.publish_bytes(&service_manifest("js/lab"), component).await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    node.create_tenant("acme").await;
    node.create_instance("acme", "jslab", &["lab.acme.test"]).await;
    let lab = "lab.acme.test";
    let get = |path: &'static str| call(&node, lab, Method::GET, path, None, "");

    let (status, body) = get("/values").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        json(&body),
        json!({ "described": { "big": "bigint:9007199254740993", "small": "number:42", "real": "number:1.5",
                               "whole_real": "number:2", "blob": "bytes:1,2,255", "absent": "object:null",
                               "yes": "number:1" },
                "big": 9007199254740993u64 })
    );
    let (status, body) = get("/refused").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = json(&body);
    assert_eq!((refused["refused"].clone(), refused["status"].clone()), (json!(true), json!(500)), "{body}");
    assert!(refused["message"].as_str().unwrap().starts_with("database: "), "{body}");
    let (status, body) = get("/uncaught").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let error = json(&body)["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("database: ") && error.contains("no_such_table"), "{body}");
    assert_eq!(get("/crash").await, (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"internal error"}"#.into()));
    let (_, body) = get("/files/a/b%20c/d").await;
    assert_eq!(json(&body), json!({ "path": "/files/a/b%20c/d", "rest": "a/b c/d" }));
    assert_eq!(json(&get("/later").await.1), json!({ "waited": true }));
    let (status, headers, body) = node.ingress_call(lab, Method::HEAD, "/later", None, "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""), "HEAD is answered by the GET route: {headers:?}");
    let response = node
        .http
        .post(format!("http://{}/echo?q=a%26b", node.ingress()))
        .header("host", lab)
        .header("x-wharf-test", "seen")
        .body("héllo")
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert_eq!(json(&body), json!({ "text": "héllo", "header": "seen", "query": "a&b", "method": "POST" }));
    let (status, body) = call(&node, lab, Method::POST, "/echo", None, "").await;
    assert_eq!(json(&body)["text"], json!(""), "{status} {body}");
    let (status, body) = get("/kv").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        json(&body),
        json!({ "bytes": "bytes:0,1,2", "text": "hello", "missing": null, "deleted": true, "deletedAgain": false,
                "keys": ["bytes", "text"], "counted": 5, "again": 6 })
    );
    assert_eq!(call(&node, lab, Method::DELETE, "/nothing", None, "").await, (StatusCode::NO_CONTENT, String::new()));
    let big = "x".repeat(200_000) + "y";
    let (status, body) = call(&node, lab, Method::POST, "/size", None, &big).await;
    assert_eq!((status, json(&body)), (StatusCode::OK, json!({ "bytes": 200_001, "last": 121 })));
    let (status, headers, body) = node.ingress_call(lab, Method::GET, "/web", None, "").await;
    assert_eq!(
        (status, headers["x-web"].to_str().unwrap(), body.as_str()),
        (StatusCode::CREATED, "yes", "from a web Response")
    );

    // A job whose handler throws fails with the exception's message.
    let (status, body) = call(&node, lab, Method::POST, "/fail", None, "on a Monday").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = json(&body)["job"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    loop {
        let (_, job) = node.admin(Method::GET, &format!("/v1/jobs/{job}"), None).await;
        if job["state"] == json!("dead") {
            assert_eq!(job["last_error"], json!("failed on purpose: on a Monday"), "{job}");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the job never failed: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sandbox reuse with JavaScript: a service written with the SDK serves request
/// after request from one sandbox (a global counts them); one answering through
/// StarlingMonkey's fetch event answers only the first request of a sandbox, and
/// the platform never lends a sandbox again after a request it left unanswered,
/// so every other request still gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_javascript_sandbox_answers_every_request_and_one_that_stops_answering_is_dropped() {
    static LAB: OnceLock<PathBuf> = OnceLock::new();
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    let lab = built(&LAB, "js", "plugins/js/lab", "target/js/lab.wasm");
    let once = built(&ONCE, "js", "plugins/js/fetch-event", "target/js/fetch-event.wasm");
    let node = TestNode::start().await;
    let manifest = service_manifest("js/lab").replacen(
        "name = \"jslab\"",
        "name = \"jslab-reuse\"\nreuse = { requests = 100, idle_seconds = 60 }",
        1,
    );
    assert!(manifest.contains("reuse = {"), "{manifest}");
    let (status, published) = node.publish_bytes(&manifest, lab).await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    let (status, published) = node.publish_bytes(&service_manifest("js/fetch-event"), once).await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    node.create_tenant("acme").await;
    node.create_instance("acme", "jslab-reuse", &["lab.acme.test"]).await;
    node.create_instance("acme", "jsonce", &["once.acme.test"]).await;

    let mut counts = Vec::new();
    for _ in 0..5 {
        let (status, body) = call(&node, "lab.acme.test", Method::GET, "/served", None, "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        counts.push(json(&body)["served"].as_u64().unwrap());
        node.wait_idle_sandboxes(1).await;
    }
    assert_eq!(counts, [1, 2, 3, 4, 5], "one sandbox, reused");

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let status = call(&node, "once.acme.test", Method::GET, "/", None, "").await.0;
        statuses.push(status.as_u16());
        if status == StatusCode::OK {
            // Its sandbox goes back beside the lab's.
            node.wait_idle_sandboxes(2).await;
        }
    }
    // The first answer of a sandbox, then its unanswered second request (500),
    // then a fresh sandbox: never a sandbox that stopped answering, lent again.
    assert_eq!(statuses, [200, 500, 200, 500]);
}

/// What every notes twin does, published from `plugins/{example}` as `service`
/// (its hello names its `language`).
async fn notes_behave(example: &str, service: &str, component: Vec<u8>, language: &str) {
    let node = TestNode::start().await;
    let (status, published) = node.publish_bytes(&service_manifest(example), component).await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let (status, instance) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": service, "hosts": ["notes.acme.test"],
                         "modules": ["stats"], "settings": { "site-name": "Acme Notes" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    node.wait_set_up(instance["id"].as_str().unwrap()).await;
    node.create_instance("globex", service, &["notes.globex.test"]).await;
    let ops = node.admin_key.clone();
    let writer = member_holding(&node, &ops, "acme", "writer@acme.test", &format!("{service}.write")).await;
    // A member without the grant.
    let reader = member_of(&node, &ops, "acme", "reader@acme.test").await;
    let acme = "notes.acme.test";

    // Settings, and the table its migration made, which its seeder filled.
    assert_eq!(
        call(&node, acme, Method::GET, "/", None, "").await,
        (StatusCode::OK, format!("Hello from Acme Notes in {language}!\n"))
    );
    let (status, body) = call(&node, acme, Method::GET, "/notes", None, "").await;
    let welcome = json!([{ "id": 1, "author": "wharf", "body": "Welcome to Acme Notes" }]);
    assert_eq!((status, json(&body)), (StatusCode::OK, welcome));

    // Only a member granted SERVICE.write writes; the platform refuses the rest.
    let note = r#"{"body": "first"}"#;
    for token in [None, Some(reader.as_str())] {
        let (status, body) = call(&node, acme, Method::POST, "/notes", token, note).await;
        assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{status} {body}");
    }
    let (status, body) = call(&node, acme, Method::POST, "/notes", Some(&writer), note).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(json(&body), json!({ "id": 2, "author": "writer@acme.test" }));
    // The SDK's errors: the client's mistakes are 4xx with a message.
    let (status, body) = call(&node, acme, Method::POST, "/notes", Some(&writer), r#"{"body": 7}"#).await;
    assert_eq!((status, json(&body)), (StatusCode::BAD_REQUEST, json!({ "error": "send {\"body\": \"...\"}" })));
    let (status, body) = call(&node, acme, Method::POST, "/notes", Some(&writer), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().starts_with("invalid JSON body: "), "{body}");
    let (status, body) = call(&node, acme, Method::POST, "/notes", Some(&writer), "").await;
    assert_eq!(
        (status, json(&body)),
        (StatusCode::BAD_REQUEST, json!({ "error": "the request body is empty; send JSON" }))
    );
    let (status, body) = call(&node, acme, Method::GET, "/nowhere", None, "").await;
    assert_eq!((status, json(&body)), (StatusCode::NOT_FOUND, json!({ "error": "no route for /nowhere" })));
    assert_eq!(call(&node, acme, Method::GET, "/notes/x", None, "").await.0, StatusCode::BAD_REQUEST);
    let (status, headers, body) = node.ingress_call(acme, Method::DELETE, "/notes", None, "").await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (StatusCode::METHOD_NOT_ALLOWED, "GET, POST"));
    assert_eq!(json(&body), json!({ "error": "DELETE is not allowed here; use GET, POST" }));
    let (status, body) = call(&node, acme, Method::GET, "/notes/99", None, "").await;
    assert_eq!((status, json(&body)), (StatusCode::NOT_FOUND, json!({ "error": "no note 99" })));
    let (status, body) = call(&node, acme, Method::GET, "/notes/2", None, "").await;
    assert_eq!(
        (status, json(&body)),
        (StatusCode::OK, json!({ "id": 2, "author": "writer@acme.test", "body": "first" }))
    );

    // The caller and what they may do, as the guest sees them.
    let (_, body) = call(&node, acme, Method::GET, "/me", Some(&writer), "").await;
    assert_eq!(json(&body), json!({ "caller": "writer@acme.test", "can_write": true }));
    let (_, body) = call(&node, acme, Method::GET, "/me", Some(&reader), "").await;
    assert_eq!(json(&body), json!({ "caller": "reader@acme.test", "can_write": false }));
    let (_, body) = call(&node, acme, Method::GET, "/me", None, "").await;
    assert_eq!(json(&body), json!({ "caller": null, "can_write": false }));

    // The module's route, the key-value counter and the dialect.
    let (status, body) = call(&node, acme, Method::GET, "/stats", None, "").await;
    let dialect = if crate::harness::on_postgres() { "postgres" } else { "sqlite" };
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body), json!({ "notes": 2, "reads": 1, "dialect": dialect, "modules": ["stats"] }));

    // Another tenant's instance has its own table, counter and no module.
    let (_, body) = call(&node, "notes.globex.test", Method::GET, "/notes", None, "").await;
    assert_eq!(json(&body), json!([{ "id": 1, "author": "wharf", "body": "Welcome to your notes" }]));
    assert_eq!(call(&node, "notes.globex.test", Method::GET, "/stats", None, "").await.0, StatusCode::NOT_FOUND);

    // The scheduled job ran for the instance (its first run comes soon after
    // the instance is set up).
    let started = std::time::Instant::now();
    loop {
        let (_, body) = call(&node, acme, Method::GET, "/digest", None, "").await;
        if json(&body)["digest"].as_str().is_some_and(|d| d.starts_with("wharf: 1")) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the scheduled job never ran: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A job queued by a request runs through the worker export.
    let (status, body) = call(&node, acme, Method::POST, "/tally", None, "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let started = std::time::Instant::now();
    loop {
        let (_, body) = call(&node, acme, Method::GET, "/tally", None, "").await;
        if json(&body)["tally"] == json!("2 notes (job tally v1, attempt 1)") {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the job never ran: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The newcomer's path: `wharf new demo --lang python`, built with the SDK's
/// `build.sh`, published with `wharf publish`, serves its route, keeps its
/// table and lets only a granted member write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_made_by_wharf_new_builds_publishes_and_serves() {
    let node = TestNode::start().await;
    let dir = node.data.path().join("demo");
    let (ok, out, err) = crate::cli::wharf(&node, &["new", "demo", "--lang", "python", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = crate::cli::wharf(&node, &["new", "demo", "--lang", "python", "--dir", dir.to_str().unwrap()]);
    assert!(!ok && err.contains("not empty"), "a second `new` overwrites nothing: {out}{err}");
    build_with("python", &dir, &dir.join("build/demo.wasm"));
    let (ok, out, err) = crate::cli::wharf(&node, &["publish", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    serves_as_written(&node, "demo").await;
}

/// The same path in JavaScript: `wharf new demo-js --lang js`, built with the JS
/// SDK's `build.sh` (ComponentizeJS), published, served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_service_made_by_wharf_new_builds_publishes_and_serves() {
    let node = TestNode::start().await;
    let dir = node.data.path().join("demo-js");
    let (ok, out, err) = crate::cli::wharf(&node, &["new", "demo-js", "--lang", "js", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    build_with("js", &dir, &dir.join("build/demo-js.wasm"));
    let (ok, out, err) = crate::cli::wharf(&node, &["publish", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    serves_as_written(&node, "demo-js").await;
}

/// The same path in Rust: `wharf new demo-rs --lang rust`, built with cargo for
/// wasm32-wasip2 (sharing the examples' build directory and lock file, so the
/// SDK's dependencies are not built twice), published, served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_service_made_by_wharf_new_builds_publishes_and_serves() {
    let node = TestNode::start().await;
    let dir = node.data.path().join("demo-rs");
    let sdk = repo().join("sdk");
    let args = ["new", "demo-rs", "--lang", "rust", "--sdk", sdk.to_str().unwrap(), "--dir", dir.to_str().unwrap()];
    let (ok, out, err) = crate::cli::wharf(&node, &args);
    assert!(ok, "{out}{err}");
    // The examples built first: their build directory then holds the SDK's dependencies.
    crate::harness::guests();
    std::fs::copy(repo().join("plugins/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = repo().join("plugins/target");
    let built = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("failed to run cargo");
    assert!(built.success(), "building the new Rust service failed");
    let component = target.join("wasm32-wasip2/release/demo_rs.wasm");
    let (ok, out, err) =
        crate::cli::wharf(&node, &["publish", dir.to_str().unwrap(), "--component", component.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    serves_as_written(&node, "demo-rs").await;
}

/// What a service `wharf new` wrote does once published as `service`: an
/// instance serves its hello, refuses writers without `SERVICE.write`, keeps a
/// granted member's item in its table, and runs its job.
async fn serves_as_written(node: &TestNode, service: &str) {
    node.create_tenant("acme").await;
    node.create_instance("acme", service, &["demo.acme.test"]).await;
    let ann = member_holding(node, &node.admin_key, "acme", "ann@acme.test", &format!("{service}.write")).await;

    let host = "demo.acme.test";
    assert_eq!(
        call(node, host, Method::GET, "/", None, "").await,
        (StatusCode::OK, format!("Hello from {service}!\n"))
    );
    let item = r#"{"name": "first"}"#;
    let (status, body) = call(node, host, Method::POST, "/items", None, item).await;
    assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{status} {body}");
    let (status, body) = call(node, host, Method::POST, "/items", Some(&ann), item).await;
    assert_eq!((status, json(&body)), (StatusCode::CREATED, json!({ "name": "first", "added_by": "ann@acme.test" })));
    let (_, body) = call(node, host, Method::GET, "/items", None, "").await;
    assert_eq!(json(&body), json!([{ "id": 1, "name": "first", "added_by": "ann@acme.test" }]));
    assert_eq!(call(node, host, Method::POST, "/count", None, "").await.0, StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    while json(&call(node, host, Method::GET, "/count", None, "").await.1)["count"] != json!("1") {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the job never ran");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
