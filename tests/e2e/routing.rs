//! Host → instance: normalisation, unknown and missing hosts, ambiguity, and
//! changes that apply without a restart.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{raw_request, raw_status, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_normalised_before_lookup() {
    let node = TestNode::start().await;
    node.tenant_with("acme", "hello", "hello", "shop.example.com").await;
    for host in
        ["shop.example.com", "SHOP.Example.COM", "shop.example.com.", "shop.example.com:8080", "Shop.Example.Com.:443"]
    {
        let (status, body) = node.get(host, "/").await;
        assert_eq!(status, StatusCode::OK, "Host: {host}");
        assert_eq!(body, "Hello from Wharf!\n", "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404_and_runs_no_guest() {
    let node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "shop.example.com").await;
    for host in ["other.example.com", "shop.example.com.evil.com", "example.com", "xn--shop-example-com"] {
        let (status, body) = node.get(host, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "Host: {host}");
        assert!(body.starts_with("no service is bound to host"), "{body}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(node.usage(&instance).await["requests"], 0, "no guest may run for an unknown host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_duplicate_or_conflicting_hosts_get_400() {
    let node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "shop.example.com").await;
    let addr = node.ingress();

    let missing = raw_request(addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&missing), 400, "{missing}");
    assert!(missing.contains("no Host header"), "{missing}");

    let two = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nHost: other.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&two), 400, "{two}");

    let conflicting = raw_request(
        addr,
        "GET http://other.example.com/ HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&conflicting), 400, "{conflicting}");

    let invalid = raw_request(addr, "GET / HTTP/1.1\r\nHost: shop example com\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&invalid), 400, "{invalid}");

    // Absolute form that agrees with Host is fine.
    let agreeing = raw_request(
        addr,
        "GET http://shop.example.com/ HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&agreeing), 200, "{agreeing}");

    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(node.usage(&instance).await["requests"], 1, "only the agreeing request ran the guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_and_version_changes_apply_without_a_restart() {
    let node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "old.example.com").await;
    node.publish("echo", "hello", "2.0.0").await;

    let (status, body) = node
        .admin(
            reqwest::Method::PATCH,
            &format!("/v1/instances/{instance}"),
            Some(json!({ "hosts": ["new.example.com", "www.new.example.com"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(node.get("old.example.com", "/").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.get("new.example.com", "/").await.0, StatusCode::OK);
    assert_eq!(node.get("www.new.example.com", "/").await.0, StatusCode::OK);

    // Pin to 2.0.0 (the echo build), then follow the active version again.
    let (status, body) = node
        .admin(reqwest::Method::PATCH, &format!("/v1/instances/{instance}"), Some(json!({ "version": "2.0.0" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["running_version"], "2.0.0");
    assert!(node.get("new.example.com", "/").await.1.starts_with("echo:"));
    let (_, body) = node
        .admin(reqwest::Method::PATCH, &format!("/v1/instances/{instance}"), Some(json!({ "version": "active" })))
        .await;
    assert_eq!(body["pinned_version"], serde_json::Value::Null);
    assert_eq!(node.get("new.example.com", "/").await.1, "Hello from Wharf!\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_configuration_errors_are_4xx_with_a_message() {
    let node = TestNode::start().await;
    node.tenant_with("acme", "hello", "hello", "shop.example.com").await;
    node.create_tenant("globex").await;
    let post = |body: serde_json::Value| node.admin(reqwest::Method::POST, "/v1/instances", Some(body));

    let cases = [
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": ["shop.example.com"] }),
            StatusCode::CONFLICT,
            "already in use",
        ),
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": ["SHOP.example.com."] }),
            StatusCode::CONFLICT,
            "already in use",
        ),
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": [] }),
            StatusCode::BAD_REQUEST,
            "at least one hostname",
        ),
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": ["bad host"] }),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": ["a.com:8080"] }),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            json!({ "tenant": "globex", "service": "nope", "hosts": ["a.com"] }),
            StatusCode::BAD_REQUEST,
            "no service named",
        ),
        (
            json!({ "tenant": "globex", "service": "hello", "hosts": ["a.com"], "version": "9.0.0" }),
            StatusCode::BAD_REQUEST,
            "no version",
        ),
        (json!({ "tenant": "nobody", "service": "hello", "hosts": ["a.com"] }), StatusCode::NOT_FOUND, "no tenant"),
        (json!({ "tenant": "globex", "hosts": ["a.com"] }), StatusCode::BAD_REQUEST, "service"),
    ];
    for (body, expected_status, expected_message) in cases {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, expected_status, "{body} -> {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected_message), "{body}: {message:?} should mention {expected_message:?}");
    }

    let (status, _) = node.admin(reqwest::Method::POST, "/v1/tenants", Some(json!({ "id": "acme" }))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = node.admin(reqwest::Method::POST, "/v1/tenants", Some(json!({ "id": "Not Valid" }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = node.admin(reqwest::Method::GET, "/v1/instances/inst-nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = node.admin(reqwest::Method::GET, "/v1/no/such/endpoint", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
