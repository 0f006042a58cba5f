//! Publishing: validation at upload, immutability, content addressing.

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::{guest, manifest, TestNode};

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_is_refused_with_a_message_naming_the_problem_and_nothing_is_stored() {
    let node = TestNode::start().await;
    let hello = guest("hello");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty file", vec![], "empty"),
        ("random bytes", b"this is certainly not wasm at all".to_vec(), "not WebAssembly"),
        ("core module", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        ("truncated component", hello[..hello.len() / 2].to_vec(), "malformed or truncated"),
        ("component without an HTTP handler", guest("no-handler"), "does not export `wasi:http/incoming-handler`"),
        ("component with an unknown import", guest("unknown-import"), "acme:missing/thing"),
    ];
    for (what, bytes, expected) in cases {
        let (status, body) = node.publish_bytes(&manifest("bad", "1.0.0"), bytes).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{what}: message {message:?} should mention {expected:?}");
    }
    let services = node.get_admin("/v1/services").await;
    assert_eq!(services["services"], Value::Array(vec![]), "nothing may be recorded");
    assert_eq!(files_in(&node.data.path().join("components")), 0, "no component may be stored");
    assert_eq!(files_in(&node.data.path().join("compiled")), 0, "no artifact may be stored");
}

/// POST to hello's upload endpoint as the operator, with the body `shape` sets.
async fn upload(
    node: &TestNode,
    shape: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (StatusCode, String) {
    let req = node.http.post(format!("{}/v1/services/hello/versions", node.admin_url())).bearer_auth(&node.admin_key);
    let resp = shape(req).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_and_malformed_uploads_are_refused_with_a_message() {
    let node = TestNode::start().await;
    let hello = guest("hello");
    let cases = [
        ("not toml", "this is = = not toml", "not valid"),
        ("unknown field", "[service]\nname = \"a\"\nversion = \"1.0.0\"\nflavour = \"x\"\n", "flavour"),
        ("missing version", "[service]\nname = \"a\"\n", "version"),
        ("bad name", "[service]\nname = \"Bad Name\"\nversion = \"1.0.0\"\n", "not valid"),
        ("bad version", "[service]\nname = \"a\"\nversion = \"one\"\n", "semantic version"),
    ];
    for (what, text, expected) in cases {
        let (status, body) = node.publish_bytes(text, hello.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{what}: {message:?} should mention {expected:?}");
    }

    // The manifest must name the service the URL publishes to.
    let form = reqwest::multipart::Form::new()
        .text("manifest", manifest("other", "1.0.0"))
        .part("component", reqwest::multipart::Part::bytes(hello.clone()));
    let (status, text) = upload(&node, |req| req.multipart(form)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("names service \\\"other\\\""), "{text}");

    // Missing parts, and a body that is not multipart at all.
    let form = reqwest::multipart::Form::new().text("manifest", manifest("hello", "1.0.0"));
    let (status, text) = upload(&node, |req| req.multipart(form)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("missing the `component` part"), "{text}");
    let (status, text) = upload(&node, |req| req.body(hello)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("multipart/form-data"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_immutable_and_content_addressed() {
    let node = TestNode::start().await;
    let hello = guest("hello");
    let (status, first) = node.publish_bytes(&manifest("hello", "1.0.0"), hello.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["created"], true);
    assert_eq!(first["active"], true, "the first version becomes active");
    assert_eq!(first["sha256"], hex::encode(Sha256::digest(&hello)));

    // Same bytes again: a no-op.
    let (status, again) = node.publish_bytes(&manifest("hello", "1.0.0"), hello.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["created"], false);

    // Same version, other bytes: refused, and the original stays.
    let (status, conflict) = node.publish_bytes(&manifest("hello", "1.0.0"), guest("echo")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert!(conflict["error"].as_str().unwrap().contains("immutable"));
    let version = node.get_admin("/v1/services/hello/versions/1.0.0").await;
    assert_eq!(version["sha256"], first["sha256"]);

    // A second version does not become active by itself.
    let (status, second) = node.publish_bytes(&manifest("hello", "1.1.0"), guest("echo")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["active"], false);
    let service = node.get_admin("/v1/services/hello").await;
    assert_eq!(service["active_version"], "1.0.0");
    let versions: Vec<&str> =
        service["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"], "newest first");

    // Unknown services and versions are 404s that say what exists.
    let (status, body) = node.admin(reqwest::Method::GET, "/v1/services/hello/versions/9.9.9", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("1.0.0"), "{body}");
    let (status, _) = node.admin(reqwest::Method::GET, "/v1/services/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = node
        .admin(reqwest::Method::POST, "/v1/services/hello/activate", Some(serde_json::json!({"version": "2.0.0"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// A version tells the memory its component starts with, which every fresh
/// sandbox resets: the SDK's hello (a 128 KiB stack) a few hundred KiB. A
/// version published before the column existed gets it from the next node that
/// loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_reports_the_memory_its_component_starts_with() {
    let mut node = TestNode::start().await;
    let (status, published) = node.publish_bytes(&manifest("hello", "1.0.0"), guest("hello")).await;
    assert_eq!(status, StatusCode::CREATED, "{published}");
    let bytes = published["initial_memory_bytes"].as_u64().expect("the publish response names the starting memory");
    assert!(bytes % 65536 == 0 && (64 << 10..=256 << 10).contains(&bytes), "{published}");
    let listed = node.get_admin("/v1/services/hello").await;
    assert_eq!(listed["versions"][0]["initial_memory_bytes"], bytes, "{listed}");

    // As a version recorded before nodes measured it: unknown until loaded.
    sqlx::query("UPDATE service_versions SET initial_memory_bytes = NULL").execute(&node.node().node.db).await.unwrap();
    assert_eq!(node.get_admin("/v1/services/hello/versions/1.0.0").await["initial_memory_bytes"], Value::Null);
    node.restart().await;
    let version = node.get_admin("/v1/services/hello/versions/1.0.0").await;
    assert_eq!(version["initial_memory_bytes"], bytes, "{version}");
}
