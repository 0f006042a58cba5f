//! Instances as a tenant configures them: modules, settings, disable and enable,
//! each reaching the next request without a restart.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{guest, TestNode};

async fn publish_forum(node: &TestNode) {
    let manifest = crate::harness::service_manifest("forum");
    let (status, body) = node.publish_bytes(&manifest, guest("forum")).await;
    assert!(status.is_success(), "{body}");
}

async fn home(node: &TestNode, host: &str) -> Value {
    let (status, body) = node.get(host, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_and_settings_reach_the_guest_and_gate_routes_at_the_edge() {
    let node = TestNode::start().await;
    publish_forum(&node).await;
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let (status, acme) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "forum", "hosts": ["acme.test"], "modules": ["polls"],
                          "settings": { "site-name": "Acme Forum", "language": "fr" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{acme}");
    assert_eq!(acme["modules"], json!(["polls"]));
    let acme = acme["id"].as_str().unwrap().to_string();
    node.admin(
        Method::POST,
        "/v1/instances",
        Some(json!({ "tenant": "globex", "service": "forum", "hosts": ["globex.test"] })),
    )
    .await;
    for instance in node.get_admin("/v1/instances").await["instances"].as_array().unwrap() {
        node.wait_set_up(instance["id"].as_str().unwrap()).await;
    }

    let page = home(&node, "acme.test").await;
    assert_eq!((page["forum"].as_str(), page["language"].as_str()), (Some("Acme Forum"), Some("fr")));
    assert_eq!(page["modules"], json!(["polls"]));
    let other = home(&node, "globex.test").await;
    assert_eq!(
        (other["forum"].as_str(), other["modules"].clone()),
        (Some("A Wharf forum"), json!([])),
        "each tenant sees its own configuration"
    );

    assert_eq!(node.get("acme.test", "/polls").await.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let before = node.usage(&acme).await["requests"].as_u64().unwrap();
    assert_eq!(
        node.get("acme.test", "/search?q=x").await.0,
        StatusCode::NOT_FOUND,
        "a module that is off has no routes"
    );
    assert_eq!(node.get("globex.test", "/polls").await.0, StatusCode::NOT_FOUND);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(node.usage(&acme).await["requests"].as_u64().unwrap(), before, "no guest runs for a module that is off");

    // Toggle: the next request sees it.
    let (status, body) =
        node.admin(Method::PATCH, &format!("/v1/instances/{acme}"), Some(json!({ "modules": ["search"] }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(node.get("acme.test", "/polls").await.0, StatusCode::NOT_FOUND);
    assert_eq!(node.get("acme.test", "/search?q=x").await.0, StatusCode::OK);
    assert_eq!(home(&node, "acme.test").await["modules"], json!(["search"]));

    let (status, body) = node
        .admin(
            Method::PATCH,
            &format!("/v1/instances/{acme}"),
            Some(json!({ "settings": { "site-name": "Acme Talk" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(home(&node, "acme.test").await["forum"], "Acme Talk");

    // Bad configuration is refused with the reason.
    let (status, body) =
        node.admin(Method::PATCH, &format!("/v1/instances/{acme}"), Some(json!({ "modules": ["chat"] }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("polls, search"), "{body}");
    let (status, _) = node
        .admin(Method::PATCH, &format!("/v1/instances/{acme}"), Some(json!({ "settings": { "Bad Key": "x" } })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_instance_answers_410_and_comes_back_intact() {
    let node = TestNode::start().await;
    publish_forum(&node).await;
    node.create_tenant("acme").await;
    let (_, created) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(json!({ "tenant": "acme", "service": "forum", "hosts": ["acme.test"], "modules": ["polls"], "settings": { "site-name": "Acme" } })),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    node.wait_set_up(&id).await;
    let (status, body) =
        node.admin(Method::PATCH, &format!("/v1/instances/{id}"), Some(json!({ "enabled": false }))).await;
    assert_eq!((status, body["enabled"].clone()), (StatusCode::OK, json!(false)));
    let (status, text) = node.get("acme.test", "/").await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert_eq!(node.get("acme.test", "/polls").await.0, StatusCode::GONE);

    node.admin(Method::PATCH, &format!("/v1/instances/{id}"), Some(json!({ "enabled": true }))).await;
    let page = home(&node, "acme.test").await;
    assert_eq!(
        (page["forum"].as_str(), page["modules"].clone()),
        (Some("Acme"), json!(["polls"])),
        "configuration survives"
    );
}
