//! Concurrent changes never lose an update or leave a half-applied state.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_both_land() {
    let node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "acme.test").await;
    let path = format!("/v1/instances/{instance}");
    for round in 0..10 {
        let enabled = round % 2 == 0;
        let (a, b) = tokio::join!(
            node.admin(Method::PATCH, &path, Some(json!({ "enabled": enabled }))),
            node.admin(Method::PATCH, &path, Some(json!({ "settings": { "round": round.to_string() } }))),
        );
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
        let now = node.get_admin(&path).await;
        assert_eq!(now["enabled"], enabled, "round {round}: {now}");
        assert_eq!(now["settings"]["round"], round.to_string(), "round {round}: {now}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_leave_the_record_and_the_running_version_agreeing() {
    let node = TestNode::start().await;
    let instance = node.tenant_with("acme", "hello", "hello", "acme.test").await;
    node.publish("wstd-hello", "hello", "2.0.0").await;
    for round in 0..10 {
        let activate =
            |v: &'static str| node.admin(Method::POST, "/v1/services/hello/activate", Some(json!({ "version": v })));
        let (a, b) = tokio::join!(activate("1.0.0"), activate("2.0.0"));
        assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
        let recorded = node.get_admin("/v1/services/hello").await["active_version"].clone();
        let running = node.get_admin(&format!("/v1/instances/{instance}")).await["running_version"].clone();
        assert_eq!(recorded, running, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_demoting_each_other_at_once_leave_one_owner() {
    let node = TestNode::start().await;
    let ann = node.user("ann@acme.test").await;
    let bob = node.user("bob@acme.test").await;
    node.expect(&ann, Method::POST, "/v1/tenants", json!({ "id": "acme" }), StatusCode::CREATED).await;
    let members = "/v1/tenants/acme/members";
    for round in 0..10 {
        node.expect(
            &ann,
            Method::POST,
            members,
            json!({ "email": "bob@acme.test", "role": "owner" }),
            StatusCode::CREATED,
        )
        .await;
        let (a, b) = tokio::join!(
            node.call(&ann, Method::POST, members, Some(json!({ "email": "bob@acme.test", "role": "member" }))),
            node.call(&bob, Method::POST, members, Some(json!({ "email": "ann@acme.test", "role": "member" }))),
        );
        let list = node.get_admin(members).await;
        let owners: Vec<_> = list["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "owner")
            .map(|m| m["email"].clone())
            .collect();
        assert_eq!(owners.len(), 1, "round {round}: {a:?} {b:?} {list}");
        // Whoever is left as owner promotes the other again for the next round.
        if owners[0] == "bob@acme.test" {
            node.expect(
                &bob,
                Method::POST,
                members,
                json!({ "email": "ann@acme.test", "role": "owner" }),
                StatusCode::CREATED,
            )
            .await;
        }
    }
}
