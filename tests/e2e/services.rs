//! The example services and standard components, served over HTTP.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_service_routes_reads_bodies_and_sets_statuses() {
    let node = TestNode::start().await;
    node.tenant_with("acme", "echo", "echo", "echo.test").await;
    let url = |path: &str| format!("http://{}{path}", node.ingress());
    let http = &node.http;

    let (status, body) = node.get("echo.test", "/hello/Ada%20Lovelace").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello, Ada Lovelace!\n"));

    let (status, body) = node.get("echo.test", "/greet?name=Zo%C3%A9&lang=fr").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({ "greeting": "Bonjour, Zoé!" }));

    let (status, body) = node.get("echo.test", "/greet").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("missing ?name="), "{body}");

    let resp = http
        .post(url("/echo"))
        .header("host", "echo.test")
        .header("content-type", "text/csv")
        .body("a,b\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/csv");
    assert_eq!(resp.text().await.unwrap(), "a,b\n1,2\n");

    // On the wire: a whole body is answered with its length, not in chunks;
    // a 204 carries no length; a chunked request body (no content-length) is
    // still read whole.
    let resp = http.get(url("/hello/Ada")).header("host", "echo.test").send().await.unwrap();
    assert_eq!(resp.headers().get("content-length").map(|v| v.to_str().unwrap()), Some("12"));
    assert!(resp.headers().get("transfer-encoding").is_none(), "{:?}", resp.headers());
    let resp = http.get(url("/status/204")).header("host", "echo.test").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().get("content-length").is_none(), "{:?}", resp.headers());
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(node.ingress()).await.unwrap();
        stream
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-length: 11\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello world"), "{answer}");

    // A body larger than one stream read still arrives whole.
    let big = "x".repeat(300_000);
    let resp = http.post(url("/echo")).header("host", "echo.test").body(big.clone()).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap().len(), big.len());

    let resp =
        http.post(url("/json")).header("host", "echo.test").json(&json!({ "b": 1, "a": [true] })).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.json::<Value>().await.unwrap()["keys"], json!(["a", "b"]));

    let resp = http.post(url("/json")).header("host", "echo.test").body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.json::<Value>().await.unwrap()["error"].as_str().unwrap().starts_with("invalid JSON body"));

    let resp = http.post(url("/json")).header("host", "echo.test").body("[1,2]").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(node.get("echo.test", "/status/418").await.0, StatusCode::IM_A_TEAPOT);
    assert_eq!(node.get("echo.test", "/status/99").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(node.get("echo.test", "/nothing/here").await.0, StatusCode::NOT_FOUND);

    let resp = http.delete(url("/echo")).header("host", "echo.test").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_wstd_component_is_served_unchanged() {
    let node = TestNode::start().await;
    node.tenant_with("acme", "wstd-hello", "plain", "plain.test").await;
    let (status, body) = node.get("plain.test", "/some/path").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello from wstd at /some/path\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_requests_fuel_and_errors_per_instance() {
    let node = TestNode::start().await;
    let hello = node.tenant_with("acme", "hello", "hello", "hello.test").await;
    let bad = node.tenant_with("globex", "misbehave", "misbehave", "bad.test").await;
    for _ in 0..5 {
        assert_eq!(node.get("hello.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(node.get("bad.test", "/ok").await.0, StatusCode::OK);
    assert_eq!(node.get("bad.test", "/trap").await.0, StatusCode::INTERNAL_SERVER_ERROR);
    // A guest writing to stdout and stderr is fine; the lines go to the host's log.
    assert_eq!(node.get("bad.test", "/print").await.0, StatusCode::OK);

    let usage = node.usage(&hello).await;
    assert_eq!(usage["requests"], 5, "{usage}");
    assert_eq!(usage["errors"], 0);
    let fuel = usage["fuel"].as_u64().unwrap();
    assert!(fuel > 1_000 && fuel < 5 * 1_000_000, "hello's fuel should be small but real: {fuel}");
    assert_eq!(usage["tenant"], "acme");

    let usage = node.usage(&bad).await;
    assert_eq!((usage["requests"].as_u64(), usage["errors"].as_u64()), (Some(3), Some(1)), "{usage}");

    let all = node.get_admin("/v1/usage?tenant=acme").await;
    assert_eq!(all["usage"].as_array().unwrap().len(), 1, "{all}");
}
