//! Trust at the edges, as a stranger would test it: hostnames are owned (claims
//! route nothing until proven over HTTP or DNS, squatting is refused), accounts
//! are proven by invitations, quotas hold at their limits, and strangers'
//! failed logins never lock an owner out of their usual address.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{TestNode, PASSWORD};

/// A node with the platform domain `apps.test`, whose HTTP challenges connect to
/// its own ingress (no DNS here), after `adjust`.
async fn node_with(adjust: impl FnOnce(&mut wharf::NodeConfig)) -> TestNode {
    TestNode::start_with(|config| {
        config.trust.domains = vec!["apps.test".into()];
        config.trust.challenge_connect = Some("127.0.0.1:0".parse().unwrap());
        adjust(config);
    })
    .await
}

/// A tenant owned by a fresh (non-operator) user; returns the owner's token.
async fn owned_tenant(node: &TestNode, tenant: &str) -> String {
    let owner = node.user(&format!("owner@{tenant}.example")).await;
    node.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": tenant }), StatusCode::CREATED).await;
    owner
}

/// Create an instance of `service` as `token`; returns the answer.
async fn instance(node: &TestNode, token: &str, body: Value) -> (StatusCode, Value) {
    node.call(token, Method::POST, "/v1/instances", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_are_owned_claims_route_nothing_until_proven_and_squatting_is_refused() {
    // The name points at the platform (this node's ingress, 127.0.0.1).
    let records =
        std::sync::Arc::new(std::sync::Mutex::new(vec![("shop.acme.example".to_string(), "127.0.0.1".to_string())]));
    let dns = dns_server(records.clone()).await;
    let node = node_with(|c| c.trust.dns_server = Some(dns)).await;
    node.publish("hello", "hello", "1.0.0").await;
    let acme = owned_tenant(&node, "acme").await;
    let eve = owned_tenant(&node, "eve").await;

    // Every instance answers at its platform name with nothing to prove.
    let (status, shop) =
        instance(&node, &acme, json!({ "tenant": "acme", "service": "hello", "hosts": ["shop.acme.example"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{shop}");
    let shop_id = shop["id"].as_str().unwrap().to_string();
    assert_eq!(shop["platform_hosts"], json!(["hello.acme.apps.test"]));
    assert_eq!(node.get("hello.acme.apps.test", "/").await.0, StatusCode::OK);
    // The custom name is claimed, not bound: it routes nothing yet.
    assert_eq!(shop["hosts"], json!([]));
    let token = shop["pending_hosts"][0]["token"].as_str().unwrap().to_string();
    assert_eq!(shop["pending_hosts"][0]["dns_record"], "_wharf-challenge.shop.acme.example");
    assert_eq!(node.get("shop.acme.example", "/").await.0, StatusCode::NOT_FOUND);

    // Eve claims the same name too: allowed (pending), and it routes nothing.
    let (status, eve_inst) =
        instance(&node, &eve, json!({ "tenant": "eve", "service": "hello", "hosts": ["shop.acme.example"] })).await;
    assert_eq!(status, StatusCode::CREATED, "{eve_inst}");
    let eve_id = eve_inst["id"].as_str().unwrap().to_string();

    // Wharf answers the challenge of a pending name itself, and only with a
    // token of a claim on that name.
    let (status, body) = node.get("shop.acme.example", &format!("/.well-known/wharf-challenge/{token}")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, token.as_str()));
    assert_eq!(node.get("shop.acme.example", "/.well-known/wharf-challenge/whatever").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        node.get("other.example", &format!("/.well-known/wharf-challenge/{token}")).await.0,
        StatusCode::NOT_FOUND
    );

    // Two tenants claim the name: reaching the platform over HTTP proves
    // nothing (it does for both), only the TXT record its owner publishes does.
    let path = format!("/v1/instances/{shop_id}/hosts/verify");
    let http = json!({ "hostname": "shop.acme.example", "method": "http" });
    let (status, answer) = node.call(&acme, Method::POST, &path, Some(http)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("more than one tenant"), "{answer}");
    records.lock().unwrap().push(("_wharf-challenge.shop.acme.example".into(), format!("wharf-verify={token}")));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let verified =
        node.expect(&acme, Method::POST, &path, json!({ "hostname": "shop.acme.example" }), StatusCode::OK).await;
    assert_eq!(verified["hosts"], json!(["shop.acme.example"]), "{verified}");
    assert_eq!(verified["pending_hosts"], json!([]));
    assert_eq!(node.get("shop.acme.example", "/").await.0, StatusCode::OK);
    // Eve's claim ended with acme's proof; she cannot verify or claim it again.
    let eve_path = format!("/v1/instances/{eve_id}/hosts/verify");
    let (status, _) = node.call(&eve, Method::POST, &eve_path, Some(json!({ "hostname": "shop.acme.example" }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let eve_patch = format!("/v1/instances/{eve_id}");
    let (status, answer) =
        node.call(&eve, Method::PATCH, &eve_patch, Some(json!({ "hosts": ["shop.acme.example"] }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "another tenant's verified name: {answer}");

    // Names nobody may claim.
    for (host, why) in [
        ("localhost", "localhost"),
        ("127.0.0.1", "IP"),
        ("10.0.0.8", "IP"),
        ("0x7f.0x1", "IP"),
        ("127.0.0.0x1", "IP"),
        ("127.1", "IP"),
        ("0x7f000001", "IP"),
        ("2130706433", "IP"),
        ("0177.0.0.01", "IP"),
        ("intranet", "single-label"),
        ("x.eve.apps.test", "platform domain"),
        ("hello.acme.apps.test", "platform domain"),
    ] {
        let (status, answer) = node.call(&eve, Method::PATCH, &eve_patch, Some(json!({ "hosts": [host] }))).await;
        assert!(
            status == StatusCode::BAD_REQUEST && answer["error"].as_str().unwrap().contains(why),
            "{host}: {status} {answer}"
        );
    }

    // A released name stays reserved to its tenant.
    let acme_patch = format!("/v1/instances/{shop_id}");
    node.expect(&acme, Method::PATCH, &acme_patch, json!({ "hosts": [] }), StatusCode::OK).await;
    assert_eq!(node.get("shop.acme.example", "/").await.0, StatusCode::NOT_FOUND);
    let (status, answer) =
        node.call(&eve, Method::PATCH, &eve_patch, Some(json!({ "hosts": ["shop.acme.example"] }))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("reserved"), "{answer}");
    // Its tenant takes it back without proving it again.
    let back =
        node.expect(&acme, Method::PATCH, &acme_patch, json!({ "hosts": ["shop.acme.example"] }), StatusCode::OK).await;
    assert_eq!(back["hosts"], json!(["shop.acme.example"]), "{back}");
    assert_eq!(node.get("shop.acme.example", "/").await.0, StatusCode::OK);

    // A claim whose challenge is not answered stays pending, with the reason.
    let (status, answer) = node.call(&eve, Method::PATCH, &eve_patch, Some(json!({ "hosts": ["eve.example"] }))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Wharf answers the challenge for any pending name that reaches it; a name
    // served by another platform does not. Simulate that by withdrawing the
    // claim's challenge: verify over DNS only, where no record exists.
    let (status, answer) =
        node.call(&eve, Method::POST, &eve_path, Some(json!({ "hostname": "eve.example", "method": "dns" }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let shown = node.call(&eve, Method::GET, &eve_patch, None).await.1;
    assert!(shown["pending_hosts"][0]["last_error"].as_str().unwrap().starts_with("dns:"), "{shown}");
    assert_eq!(node.get("eve.example", "/").await.0, StatusCode::NOT_FOUND);

    // Operators bind any name without proof.
    let ops = node.admin_key.clone();
    let bound = node.expect(&ops, Method::PATCH, &eve_patch, json!({ "hosts": ["localhost"] }), StatusCode::OK).await;
    assert_eq!(bound["hosts"], json!(["localhost"]), "{bound}");
}

/// A DNS server on 127.0.0.1 answering from `records` (name → value): A
/// queries with the values that are IPv4 addresses, TXT queries with the others.
async fn dns_server(records: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::new();
            answer.set_id(query.id()).set_message_type(MessageType::Response).set_recursion_available(true);
            answer.add_queries(query.queries().to_vec());
            let mut found = false;
            for q in query.queries() {
                let asked = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                for (name, value) in records.lock().unwrap().iter() {
                    if *name != asked {
                        continue;
                    }
                    let data = match (q.query_type(), value.parse::<std::net::Ipv4Addr>()) {
                        (RecordType::A, Ok(ip)) => RData::A(A(ip)),
                        (RecordType::TXT, Err(_)) => RData::TXT(TXT::new(vec![value.clone()])),
                        _ => continue,
                    };
                    found = true;
                    answer.add_answer(Record::from_rdata(Name::from_ascii(format!("{name}.")).unwrap(), 1, data));
                }
            }
            if !found {
                answer.set_response_code(ResponseCode::NXDomain);
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_proof_counts_only_for_a_name_whose_dns_points_at_the_platform_and_nobody_else_claims() {
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let dns = dns_server(records.clone()).await;
    // HTTP challenges go to this node's ingress whatever the name's DNS says.
    let node = node_with(|c| c.trust.dns_server = Some(dns)).await;
    node.publish("hello", "hello", "1.0.0").await;
    let acme = owned_tenant(&node, "acme").await;
    let (_, created) =
        instance(&node, &acme, json!({ "tenant": "acme", "service": "hello", "hosts": ["www.acme.example"] })).await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/v1/instances/{id}/hosts/verify");
    let http = json!({ "hostname": "www.acme.example", "method": "http" });

    // A name that resolves nowhere proves nothing, though the platform answers its challenge.
    let (status, answer) = node.call(&acme, Method::POST, &path, Some(http.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("does not resolve"), "{answer}");
    // Nor one that points at someone else.
    records.lock().unwrap().push(("www.acme.example".into(), "10.9.9.9".into()));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, answer) = node.call(&acme, Method::POST, &path, Some(http.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("resolves to 10.9.9.9") && error.contains("127.0.0.1"), "{answer}");
    assert_eq!(node.get("www.acme.example", "/").await.0, StatusCode::NOT_FOUND);
    // Pointed at the platform, and claimed by acme alone: proven over HTTP.
    records.lock().unwrap().push(("www.acme.example".into(), "127.0.0.1".into()));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let verified = node.expect(&acme, Method::POST, &path, http, StatusCode::OK).await;
    assert_eq!(verified["hosts"], json!(["www.acme.example"]), "{verified}");

    // A squatter claims a name first; its owner points DNS at the platform and
    // claims it too. The squatter's HTTP proof no longer wins.
    let eve = owned_tenant(&node, "eve").await;
    let (_, squat) =
        instance(&node, &eve, json!({ "tenant": "eve", "service": "hello", "hosts": ["shop.corp.example"] })).await;
    let squat_id = squat["id"].as_str().unwrap().to_string();
    records.lock().unwrap().push(("shop.corp.example".into(), "127.0.0.1".into()));
    let corp = owned_tenant(&node, "corp").await;
    let (_, owned) =
        instance(&node, &corp, json!({ "tenant": "corp", "service": "hello", "hosts": ["shop.corp.example"] })).await;
    let owned_id = owned["id"].as_str().unwrap().to_string();
    let corp_token = owned["pending_hosts"][0]["token"].as_str().unwrap().to_string();
    let eve_path = format!("/v1/instances/{squat_id}/hosts/verify");
    for body in
        [json!({ "hostname": "shop.corp.example" }), json!({ "hostname": "shop.corp.example", "method": "http" })]
    {
        let (status, answer) = node.call(&eve, Method::POST, &eve_path, Some(body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the squatter's proof must not count: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("more than one tenant"), "{answer}");
        tokio::time::sleep(Duration::from_millis(3100)).await;
    }
    assert_eq!(node.get("shop.corp.example", "/").await.0, StatusCode::NOT_FOUND);
    // The owner publishes the TXT record and gets the name.
    records.lock().unwrap().push(("_wharf-challenge.shop.corp.example".into(), format!("wharf-verify={corp_token}")));
    let corp_path = format!("/v1/instances/{owned_id}/hosts/verify");
    let verified =
        node.expect(&corp, Method::POST, &corp_path, json!({ "hostname": "shop.corp.example" }), StatusCode::OK).await;
    assert_eq!(verified["hosts"], json!(["shop.corp.example"]), "{verified}");
    let (status, _) = node.call(&eve, Method::POST, &eve_path, Some(json!({ "hostname": "shop.corp.example" }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the squatter's claim ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_txt_record_proves_a_hostname() {
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let dns = dns_server(records.clone()).await;
    let node = node_with(|c| c.trust.dns_server = Some(dns)).await;
    node.publish("hello", "hello", "1.0.0").await;
    let acme = owned_tenant(&node, "acme").await;
    let (_, created) =
        instance(&node, &acme, json!({ "tenant": "acme", "service": "hello", "hosts": ["www.acme.example"] })).await;
    let id = created["id"].as_str().unwrap().to_string();
    let token = created["pending_hosts"][0]["token"].as_str().unwrap().to_string();
    let path = format!("/v1/instances/{id}/hosts/verify");
    let verify = json!({ "hostname": "www.acme.example", "method": "dns" });

    // No record, then a wrong one: still pending, with what was found.
    let (status, answer) = node.call(&acme, Method::POST, &path, Some(verify.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no TXT record"), "{answer}");
    records.lock().unwrap().push(("_wharf-challenge.www.acme.example".into(), "wharf-verify=someone-else".into()));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, answer) = node.call(&acme, Method::POST, &path, Some(verify.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(node.get("www.acme.example", "/").await.0, StatusCode::NOT_FOUND);

    // The right record proves it.
    records.lock().unwrap().push(("_wharf-challenge.www.acme.example".into(), format!("wharf-verify={token}")));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let verified = node.expect(&acme, Method::POST, &path, verify, StatusCode::OK).await;
    assert_eq!(verified["hosts"], json!(["www.acme.example"]), "{verified}");
    assert_eq!(node.get("www.acme.example", "/").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_proves_the_address_from_member_add_to_first_login() {
    let node = node_with(|_| {}).await;
    let owner = owned_tenant(&node, "acme").await;
    let register = |email: &str, invitation: Option<&str>| {
        let body = json!({ "email": email, "password": PASSWORD, "invitation": invitation });
        node.anonymous_json(Method::POST, "/v1/users", body)
    };
    // Registration needs an invitation (the default).
    let (status, answer) = register("ann@corp.example", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("invitation"), "{answer}");

    // Adding someone without an account invites them; the link comes back.
    let (status, added) = node
        .call(
            &owner,
            Method::POST,
            "/v1/tenants/acme/members",
            Some(json!({ "email": "Ann@Corp.example", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{added}");
    let invitation = &added["invitation"];
    assert_eq!(
        (invitation["delivery"].as_str(), invitation["email"].as_str()),
        (Some("link"), Some("ann@corp.example"))
    );
    let token = invitation["token"].as_str().unwrap().to_string();
    let link = invitation["link"].as_str().unwrap().to_string();
    assert!(link.ends_with(&token), "{link}");
    // The link shows the invitation to whoever holds it.
    let shown: Value = node.http.get(&link).send().await.unwrap().json().await.unwrap();
    assert_eq!((shown["tenant"].as_str(), shown["role"].as_str()), (Some("acme"), Some("admin")), "{shown}");
    // Listed for the tenant, without its token.
    let (_, listed) = node.call(&owner, Method::GET, "/v1/tenants/acme/invitations", None).await;
    assert_eq!(listed["invitations"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&token));
    // Not a member before accepting.
    let (_, members) = node.call(&owner, Method::GET, "/v1/tenants/acme/members", None).await;
    assert!(!members.to_string().contains("ann@corp.example"), "{members}");

    // Another address cannot use it; a made-up token is refused.
    assert_eq!(register("mallory@evil.example", Some(&token)).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(register("ann@corp.example", Some("whi_madeup")).await.0, StatusCode::BAD_REQUEST);
    // The invitee registers with it and is a member at once, once.
    let (status, user) = register("ann@corp.example", Some(&token)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["joined"], json!({ "tenant": "acme", "role": "admin" }));
    // The token came back to the inviter (no SMTP): a member of acme, the
    // address still unproven to anyone else.
    assert_eq!(user["email_verified"], false);
    assert_eq!(register("ann2@corp.example", Some(&token)).await.0, StatusCode::BAD_REQUEST);
    let (status, session) = node
        .anonymous_json(Method::POST, "/v1/login", json!({ "email": "ann@corp.example", "password": PASSWORD }))
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let ann = session["token"].as_str().unwrap();
    let (_, me) = node.call(ann, Method::GET, "/v1/me", None).await;
    assert_eq!(me["tenants"], json!([{ "tenant": "acme", "role": "admin" }]), "{me}");

    // An account registered without proof (open registration elsewhere) is
    // invited too, and accepts with its own session.
    let open = node_with(|c| c.trust.registration = wharf::config::Registration::Open).await;
    let owner = owned_tenant(&open, "acme").await;
    let (status, _) = open
        .anonymous_json(Method::POST, "/v1/users", json!({ "email": "bob@corp.example", "password": PASSWORD }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, session) = open
        .anonymous_json(Method::POST, "/v1/login", json!({ "email": "bob@corp.example", "password": PASSWORD }))
        .await;
    let bob = session["token"].as_str().unwrap().to_string();
    let (status, added) =
        open.call(&owner, Method::POST, "/v1/tenants/acme/members", Some(json!({ "email": "bob@corp.example" }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "an unproven account gets an invitation, not the role: {added}");
    let token = added["invitation"]["token"].as_str().unwrap().to_string();
    let (status, joined) =
        open.call(&bob, Method::POST, "/v1/invitations/accept", Some(json!({ "token": token }))).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["tenant"], "acme");

    // Expired invitations are refused.
    let brief = node_with(|c| c.trust.invitation_lifetime = Duration::ZERO).await;
    let owner = owned_tenant(&brief, "acme").await;
    let (_, added) =
        brief.call(&owner, Method::POST, "/v1/tenants/acme/members", Some(json!({ "email": "cy@corp.example" }))).await;
    let token = added["invitation"]["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = json!({ "email": "cy@corp.example", "password": PASSWORD, "invitation": token });
    assert_eq!(brief.anonymous_json(Method::POST, "/v1/users", body).await.0, StatusCode::BAD_REQUEST);
}

/// A quota error: 403 naming the quota and its limit.
fn assert_quota(status: StatusCode, answer: &Value, quota: &str, limit: i64) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains(&format!("{quota} quota")) && message.contains(&format!("is {limit} ")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quota_holds_at_its_limit_and_operators_raise_it() {
    let node = node_with(|c| {
        c.trust.quotas = wharf::config::QuotaDefaults {
            tenants_per_user: 1,
            instances_per_tenant: 2,
            hostnames_per_tenant: 2,
            database_bytes_per_tenant: 1 << 20,
            pending_jobs_per_tenant: 100,
            job_bytes_per_tenant: 1 << 20,
        };
    })
    .await;
    node.publish("misbehave", "misbehave", "1.0.0").await;
    let owner = owned_tenant(&node, "acme").await;

    // Tenants per user.
    let (status, answer) = node.call(&owner, Method::POST, "/v1/tenants", Some(json!({ "id": "acme2" }))).await;
    assert_quota(status, &answer, "tenants", 1);

    // Hostnames per tenant (claims count), then instances per tenant.
    let new = |hosts: Value| json!({ "tenant": "acme", "service": "misbehave", "hosts": hosts });
    let (status, one) = instance(&node, &owner, new(json!(["a.acme.example", "b.acme.example"]))).await;
    assert_eq!(status, StatusCode::CREATED, "{one}");
    let (status, answer) = instance(&node, &owner, new(json!(["c.acme.example"]))).await;
    assert_quota(status, &answer, "hostnames", 2);
    let (status, two) = instance(&node, &owner, new(json!([]))).await;
    assert_eq!(status, StatusCode::CREATED, "a failed creation left nothing behind: {two}");
    let (status, answer) = instance(&node, &owner, new(json!([]))).await;
    assert_quota(status, &answer, "instances", 2);

    // Database bytes: all the tenant's instances together.
    let node = &node;
    let sql = |host: &'static str, statement: &'static str| async move {
        let (status, _, body) = node.ingress_call(host, Method::POST, "/sql/execute", None, statement).await;
        (status, body)
    };
    let (first, second) = ("misbehave.acme.apps.test", "misbehave-2.acme.apps.test");
    let (table, insert) = if crate::harness::on_postgres() {
        // 200,000 random bytes (incompressible, as randomblob's).
        (
            "CREATE TABLE t (b bytea)",
            "INSERT INTO t SELECT decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 12500)",
        )
    } else {
        ("CREATE TABLE t (b BLOB)", "INSERT INTO t VALUES (randomblob(200000))")
    };
    for host in [first, second] {
        assert_eq!(sql(host, table).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        let (status, body) = sql(first, insert).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut refused = None;
    for i in 0..6 {
        let (status, body) = sql(second, insert).await;
        if status != StatusCode::OK {
            refused = Some((i, body));
            break;
        }
    }
    let (i, body) = refused.expect("the tenant's databases stop at 1 MiB together");
    assert!(i >= 1 && body.contains("database_bytes"), "refused after {i} writes: {body}");

    // Usage against each quota, in the API.
    let quotas = node.call(&owner, Method::GET, "/v1/tenants/acme/quotas", None).await.1;
    let get = |name: &str| quotas["quotas"].as_array().unwrap().iter().find(|q| q["quota"] == name).unwrap().clone();
    assert_eq!((get("instances")["used"].as_i64(), get("instances")["limit"].as_i64()), (Some(2), Some(2)));
    assert_eq!(get("hostnames")["used"], 2);
    let bytes = get("database_bytes")["used"].as_i64().unwrap();
    assert!(bytes > 700_000 && bytes <= (1 << 20) + 300_000, "{bytes}");
    let (_, me) = node.call(&owner, Method::GET, "/v1/me", None).await;
    assert_eq!(me["quotas"][0], json!({ "quota": "tenants", "limit": 1, "used": 1, "source": "default" }));

    // Only operators set quotas; raised, each limit admits more.
    let (status, _) =
        node.call(&owner, Method::PUT, "/v1/tenants/acme/quotas/instances", Some(json!({ "limit": 10 }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let ops = node.admin_key.clone();
    for (path, limit) in [
        ("/v1/tenants/acme/quotas/instances", json!(3)),
        ("/v1/tenants/acme/quotas/database_bytes", json!(8 << 20)),
        ("/v1/users/owner@acme.example/quotas/tenants", json!(2)),
    ] {
        node.expect(&ops, Method::PUT, path, json!({ "limit": limit }), StatusCode::OK).await;
    }
    let (status, answer) =
        node.call(&ops, Method::PUT, "/v1/tenants/acme/quotas/nonsense", Some(json!({ "limit": 1 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) =
        node.call(&ops, Method::PUT, "/v1/tenants/acme/quotas/instances", Some(json!({ "limit": -1 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(instance(&node, &owner, new(json!([]))).await.0, StatusCode::CREATED);
    let (status, body) = sql(second, insert).await;
    assert_eq!(status, StatusCode::OK, "the raised quota applies at the next write: {body}");
    node.expect(&owner, Method::POST, "/v1/tenants", json!({ "id": "acme2" }), StatusCode::CREATED).await;
    let shown = node.call(&owner, Method::GET, "/v1/tenants/acme/quotas", None).await.1;
    assert!(shown.to_string().contains("override"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_creation_can_be_for_operators_only() {
    let node = node_with(|c| c.trust.tenant_creation = wharf::config::TenantCreation::Operators).await;
    let user = node.user("ann@corp.example").await;
    let (status, answer) = node.call(&user, Method::POST, "/v1/tenants", Some(json!({ "id": "ann" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    node.create_tenant("ann").await;
}

/// POST /v1/login from `local` (a loopback address of the test's choosing).
async fn login_from(node: &TestNode, local: &str, email: &str, password: &str) -> StatusCode {
    let client = reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
    client
        .post(format!("{}/v1/login", node.admin_url()))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_guessing_cannot_lock_the_owner_out_of_their_usual_address() {
    let node = node_with(|_| {}).await;
    // The owner logs in from 127.0.0.1: that address becomes usual.
    node.user("fay@corp.example").await;
    let before = node.get_admin("/v1/node").await["logins"].clone();
    // 100 concurrent guesses from a stranger's address.
    let passwords: Vec<String> = (0..100).map(|i| format!("guess number {i}")).collect();
    let guesses = passwords.iter().map(|p| login_from(&node, "127.0.0.2", "fay@corp.example", p));
    let answers = futures::future::join_all(guesses).await;
    let checked = answers.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = answers.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((checked, limited), (5, 95), "every guess refused, only the limit checked: {answers:?}");
    let after = node.get_admin("/v1/node").await["logins"].clone();
    let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!((delta("failed"), delta("rate_limited")), (5, 95), "{after}");
    // Strangers (any address) are locked out now...
    assert_eq!(login_from(&node, "127.0.0.3", "fay@corp.example", PASSWORD).await, StatusCode::TOO_MANY_REQUESTS);
    // ...the owner at their usual address is not.
    assert_eq!(login_from(&node, "127.0.0.1", "fay@corp.example", PASSWORD).await, StatusCode::OK);
    // Only checked guesses are audited, with the stranger's address.
    let audit = node.get_admin("/v1/audit?limit=1000").await;
    let failures: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["outcome"] == "wrong email or password").collect();
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|e| e["target"] == "127.0.0.2"), "{failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_configured_proxies() {
    let node = node_with(|c| c.trust.trusted_proxies = vec!["127.0.0.5".parse().unwrap()]).await;
    node.user("gus@corp.example").await;
    let attempt = |local: &'static str, forwarded: &'static str| {
        let node = &node;
        async move {
            let client =
                reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap();
            client
                .post(format!("{}/v1/login", node.admin_url()))
                .header("x-forwarded-for", forwarded)
                .json(&json!({ "email": "gus@corp.example", "password": "wrong password" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(attempt("127.0.0.5", "203.0.113.9").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("127.0.0.6", "198.51.100.7").await, StatusCode::UNAUTHORIZED);
    let audit = node.get_admin("/v1/audit?limit=10").await;
    let targets: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "wrong email or password")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"203.0.113.9"), "a trusted proxy's client is the forwarded one: {targets:?}");
    assert!(targets.contains(&"127.0.0.6"), "anyone else's header is ignored: {targets:?}");
    assert!(!targets.contains(&"198.51.100.7"), "{targets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated_in_the_database() {
    let node = node_with(|_| {}).await;
    node.publish("hello", "hello", "1.0.0").await;
    for i in 0..5 {
        node.create_tenant(&format!("t{i}")).await;
        node.create_instance(&format!("t{i}"), "hello", &[]).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tenants?limit=2".to_string();
    loop {
        let page = node.get_admin(&path).await;
        let tenants = page["tenants"].as_array().unwrap();
        assert!(tenants.len() <= 2);
        seen.extend(tenants.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/tenants?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4"]);
    let mut instances = Vec::new();
    let mut path = "/v1/instances?limit=3".to_string();
    loop {
        let page = node.get_admin(&path).await;
        instances
            .extend(page["instances"].as_array().unwrap().iter().map(|i| i["tenant"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/instances?limit=3&after={next}"),
            None => break,
        }
    }
    instances.sort();
    assert_eq!(instances, ["t0", "t1", "t2", "t3", "t4"], "each once");
    let (status, page) = node.admin(Method::GET, "/v1/tenants?limit=100000", None).await;
    assert!(status.is_success() && page["tenants"].as_array().unwrap().len() == 5);
}

/// A minimal SMTP server on 127.0.0.1 that keeps every message it is sent.
async fn smtp_sink(messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let messages = messages.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            messages.lock().unwrap().push(data.take().unwrap());
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_smtp_configured_the_invitation_is_mailed_not_returned() {
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let smtp = smtp_sink(messages.clone()).await;
    let node = node_with(|c| {
        c.trust.smtp_url = Some(format!("smtp://{smtp}"));
        c.trust.mail_from = "invites@wharf.example".into();
    })
    .await;
    let owner = owned_tenant(&node, "acme").await;
    let (status, added) =
        node.call(&owner, Method::POST, "/v1/tenants/acme/members", Some(json!({ "email": "dee@corp.example" }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{added}");
    assert_eq!(added["invitation"]["delivery"], "email");
    assert!(added["invitation"].get("token").is_none(), "the inviter never sees the token: {added}");
    let mail = messages.lock().unwrap().first().cloned().expect("one message was sent");
    assert!(mail.contains("dee@corp.example") && mail.contains("acme"), "{mail}");
    let token = mail.split_whitespace().find(|w| w.starts_with("whi_")).expect("the token is in the mail").to_string();
    let body = json!({ "email": "dee@corp.example", "password": PASSWORD, "invitation": token });
    let (status, user) = node.anonymous_json(Method::POST, "/v1/users", body).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["joined"]["tenant"], "acme");
    // The token reached the address itself: the address is proven, so another
    // tenant adding dee makes her a member at once.
    assert_eq!(user["email_verified"], true, "{user}");
    let other = owned_tenant(&node, "globex").await;
    let (status, added) = node
        .call(&other, Method::POST, "/v1/tenants/globex/members", Some(json!({ "email": "dee@corp.example" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "a proven address is added at once: {added}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_handed_to_the_inviter_proves_the_address_to_nobody_else() {
    // No SMTP: invitation tokens come back to whoever invites.
    let node = node_with(|_| {}).await;
    let eve = owned_tenant(&node, "eve").await;
    let corp = owned_tenant(&node, "corp").await;
    // Eve invites Corp's admin-to-be to her own tenant and uses the token herself.
    let (status, added) =
        node.call(&eve, Method::POST, "/v1/tenants/eve/members", Some(json!({ "email": "ann@corp.example" }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{added}");
    let token = added["invitation"]["token"].as_str().unwrap().to_string();
    let body = json!({ "email": "ann@corp.example", "password": PASSWORD, "invitation": token });
    let (status, user) = node.anonymous_json(Method::POST, "/v1/users", body).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["joined"]["tenant"], "eve", "the token is a membership of eve's tenant");
    assert_eq!(user["email_verified"], false, "a token the inviter held proves nothing about the address: {user}");
    let (_, session) = node
        .anonymous_json(Method::POST, "/v1/login", json!({ "email": "ann@corp.example", "password": PASSWORD }))
        .await;
    let squatter = session["token"].as_str().unwrap().to_string();

    // Corp adds the real Ann as an admin: an invitation, never the role itself.
    let (status, added) = node
        .call(
            &corp,
            Method::POST,
            "/v1/tenants/corp/members",
            Some(json!({ "email": "ann@corp.example", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "an unproven account is invited, not made a member: {added}");
    let (_, members) = node.call(&corp, Method::GET, "/v1/tenants/corp/members", None).await;
    assert!(!members.to_string().contains("ann@corp.example"), "{members}");
    let (_, me) = node.call(&squatter, Method::GET, "/v1/me", None).await;
    assert_eq!(me["tenants"], json!([{ "tenant": "eve", "role": "member" }]), "{me}");
    let (status, _) = node.call(&squatter, Method::GET, "/v1/tenants/corp", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Accepting an invitation whose token also went to its inviter proves nothing either.
    let corp_token = added["invitation"]["token"].as_str().unwrap().to_string();
    let (status, joined) =
        node.call(&squatter, Method::POST, "/v1/invitations/accept", Some(json!({ "token": corp_token }))).await;
    assert_eq!(status, StatusCode::OK, "whoever holds the token joins that tenant: {joined}");
    let (_, me) = node.call(&squatter, Method::GET, "/v1/me", None).await;
    assert_eq!(me["email_verified"], false, "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_looping_changes_is_slowed_down_but_operators_are_not() {
    let node = node_with(|_| {}).await;
    node.publish("hello", "hello", "1.0.0").await;
    let owner = owned_tenant(&node, "acme").await;
    let (_, created) = instance(&node, &owner, json!({ "tenant": "acme", "service": "hello" })).await;
    let path = format!("/v1/instances/{}", created["id"].as_str().unwrap());
    let mut limited = None;
    for i in 0..80 {
        let settings = json!({ "settings": { "n": i.to_string() } });
        let resp = node
            .http
            .patch(format!("{}{path}", node.admin_url()))
            .bearer_auth(&owner)
            .json(&settings)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, resp.headers().get("retry-after").cloned()));
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let (i, retry_after) = limited.expect("80 changes in a burst are slowed down");
    assert!(i >= 40, "a burst of changes is allowed first ({i})");
    assert!(retry_after.is_some(), "429 says when to retry");
    // Reads go on; so do the operator's changes.
    assert_eq!(node.call(&owner, Method::GET, &path, None).await.0, StatusCode::OK);
    for i in 0..80 {
        let settings = json!({ "settings": { "m": i.to_string() } });
        node.expect(&node.admin_key, Method::PATCH, &path, settings, StatusCode::OK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_readiness_floods_are_answered_from_one_probe() {
    let node = node_with(|_| {}).await;
    let url = format!("{}/readyz", node.admin_url());
    let asks = (0..200).map(|_| node.http.get(&url).send());
    let answers = futures::future::join_all(asks).await;
    let ready = answers.iter().filter(|a| a.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)).count();
    // The admin listener's connection cap may refuse some; none is an error of the node.
    assert!(ready > 0, "readiness answers under a flood");
    for answer in answers.into_iter().flatten() {
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // The node still serves its API.
    assert_eq!(node.admin(Method::GET, "/v1/me", None).await.0, StatusCode::OK);
}
