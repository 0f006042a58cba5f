//! Each instance's own database and key-value store, over HTTP: tenants see only
//! their own data, every SQL escape is refused with an error the guest sees, keys
//! cannot leave their namespace, TTLs expire, and limits answer cleanly.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{manifest, TestNode};

async fn call(node: &TestNode, host: &str, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let (status, _, text) = node.ingress_call(host, method, path, None, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// [`call`] for a statement the test needs done: a 503 for the request's
/// compute budget (a call's wall time is charged on PostgreSQL, and the whole
/// suite runs on two cores) is a "try again", and is tried again a few times.
pub(crate) async fn call_until_done(node: &TestNode, host: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let mut tries = 0;
    loop {
        let (status, value) = call(node, host, Method::POST, path, body).await;
        tries += 1;
        let over_budget = value.as_str().is_some_and(|text| text.contains("compute budget"));
        if status == StatusCode::SERVICE_UNAVAILABLE && over_budget && tries < 5 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        return (status, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_of_one_service_see_only_their_own_data() {
    let node = TestNode::start().await;
    let manifest = std::fs::read_to_string(crate::harness::repo().join("plugins/tasks/wharf.toml")).unwrap();
    assert!(node.publish_bytes(&manifest, crate::harness::guest("tasks")).await.0.is_success());
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let acme = node.create_instance("acme", "tasks", &["tasks.acme.test"]).await;
    node.create_instance("globex", "tasks", &["tasks.globex.test"]).await;
    if crate::harness::on_postgres() {
        let role = crate::harness::instance_role(&acme);
        let (owner,): (String,) = sqlx::query_as("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1")
            .bind(&role)
            .fetch_one(&mut crate::harness::pg_admin(&node).await)
            .await
            .expect("the instance's schema is created with it");
        assert_eq!(owner, role, "owned by the instance's own role");
    } else {
        assert!(node.data.path().join("instances").join(&acme).join("data.sqlite").exists(), "provisioned at creation");
    }

    for title in ["acme one", "acme two"] {
        let (status, body) =
            call_until_done(&node, "tasks.acme.test", "/tasks", &json!({ "title": title }).to_string()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    call(&node, "tasks.globex.test", Method::POST, "/tasks", r#"{"title":"globex secret"}"#).await;
    let (_, acme_tasks) = call(&node, "tasks.acme.test", Method::GET, "/tasks", "").await;
    let titles: Vec<&str> =
        acme_tasks["tasks"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["acme one", "acme two"]);
    let (_, globex_tasks) = call(&node, "tasks.globex.test", Method::GET, "/tasks", "").await;
    assert_eq!(globex_tasks["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(&node, "tasks.globex.test", Method::GET, "/tasks/2", "").await.0,
        StatusCode::NOT_FOUND,
        "ids are per instance"
    );

    // Disable and re-enable: the data is intact.
    node.admin(Method::PATCH, &format!("/v1/instances/{acme}"), Some(json!({ "enabled": false }))).await;
    assert_eq!(call(&node, "tasks.acme.test", Method::GET, "/tasks", "").await.0, StatusCode::GONE);
    node.admin(Method::PATCH, &format!("/v1/instances/{acme}"), Some(json!({ "enabled": true }))).await;
    let (_, again) = call(&node, "tasks.acme.test", Method::GET, "/tasks", "").await;
    assert_eq!(again, acme_tasks);
}

/// A tenant running the probe fixture, which passes SQL and keys straight through.
async fn probe(node: &TestNode, tenant: &str, host: &str) -> String {
    if node.get_admin("/v1/services").await["services"].as_array().unwrap().is_empty() {
        let (status, body) = node.publish_bytes(&manifest("probe", "1.0.0"), crate::harness::guest("misbehave")).await;
        assert!(status.is_success(), "{body}");
    }
    node.create_tenant(tenant).await;
    node.create_instance(tenant, "probe", &[host]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_escape_is_refused_with_an_error_the_guest_sees() {
    let node = TestNode::start().await;
    if crate::harness::on_postgres() {
        return postgres_escapes_are_refused(&node).await;
    }
    probe(&node, "acme", "p.test").await;
    let outside = node.data.path().join("stolen.sqlite");
    let control = node.data.path().join("wharf.db");
    let other_instance = node.data.path().join("instances");
    let attempts = [
        format!("ATTACH DATABASE '{}' AS c", control.display()),
        format!("ATTACH DATABASE '{}' AS o", outside.display()),
        "ATTACH DATABASE ':memory:' AS m".to_string(),
        "DETACH DATABASE main".to_string(),
        format!("VACUUM INTO '{}'", outside.display()),
        format!("vacuum   main into '{}'", outside.display()),
        "SELECT load_extension('libevil')".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        format!("PRAGMA temp_store_directory = '{}'", other_instance.display()),
        "PRAGMA database_list".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "PRAGMA max_page_count = 99999999".to_string(),
        "SELECT * FROM _wharf_kv".to_string(),
        "DELETE FROM _wharf_kv".to_string(),
        "CREATE TEMP TABLE t (a)".to_string(),
        "CREATE VIRTUAL TABLE v USING fts5(a)".to_string(),
        "SELECT 1; ATTACH DATABASE 'x' AS y".to_string(),
    ];
    for sql in &attempts {
        for route in ["/sql/execute", "/sql/query"] {
            let (status, body) = call(&node, "p.test", Method::POST, route, sql).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{sql} via {route}: {body}");
            assert!(
                body["error"].as_str().unwrap_or_default().starts_with("database:"),
                "the guest gets an error, not a trap: {body}"
            );
        }
    }
    assert!(!outside.exists(), "nothing may be written outside the instance's database");
    // The guest is intact and ordinary SQL works.
    assert_eq!(
        call(&node, "p.test", Method::POST, "/sql/execute", "CREATE TABLE notes (body TEXT)").await.0,
        StatusCode::OK
    );
    assert_eq!(call(&node, "p.test", Method::POST, "/sql/query", "PRAGMA table_info(notes)").await.0, StatusCode::OK);
}

/// On PostgreSQL, an instance is a schema and a role: nothing a guest can say
/// reaches another instance's rows, the control plane, the server's files, or a
/// setting that outlives its call.
async fn postgres_escapes_are_refused(node: &TestNode) {
    let acme = probe(node, "acme", "p.test").await;
    let globex = probe(node, "globex", "g.test").await;
    let sql = |host: &'static str, route: &'static str, statement: String| async move {
        let (status, body) = call(node, host, Method::POST, route, &statement).await;
        (status, body)
    };
    // The victim keeps a secret, with statistics the planner gathered from it.
    for statement in
        ["CREATE TABLE secrets (v text)", "INSERT INTO secrets VALUES ('globex-secret')", "ANALYZE secrets"]
    {
        let (status, body) = call_until_done(node, "g.test", "/sql/execute", statement).await;
        assert_eq!(status, StatusCode::OK, "{statement}: {body}");
    }
    let victim = crate::harness::instance_role(&globex);
    let attempts = [
        format!("SELECT * FROM {victim}.secrets"),
        format!("SET ROLE {victim}"),
        "RESET ROLE".to_string(),
        format!("SELECT set_config('role', '{victim}', false)"),
        format!("SET search_path = {victim}"),
        format!("SELECT set_config('search_path', '{victim}', true), (SELECT v FROM {victim}.secrets)"),
        format!("ALTER TABLE {victim}.secrets OWNER TO CURRENT_USER"),
        format!("GRANT USAGE ON SCHEMA {victim} TO CURRENT_USER"),
        "SELECT * FROM public.instances".to_string(),
        "SELECT * FROM public.instance_databases".to_string(),
        "SELECT * FROM pg_catalog.pg_statistic".to_string(),
        "SELECT rolpassword FROM pg_catalog.pg_authid".to_string(),
        "SELECT pg_read_file('/etc/passwd')".to_string(),
        "SELECT lo_import('/etc/passwd')".to_string(),
        "COPY (SELECT 1) TO '/tmp/wharf-stolen'".to_string(),
        "SELECT pg_notify('wharf_changes', 'x')".to_string(),
        "NOTIFY wharf_changes".to_string(),
        "LISTEN wharf_changes".to_string(),
        "CREATE SCHEMA mine".to_string(),
        "CREATE TEMP TABLE t (a int)".to_string(),
        "CREATE EXTENSION IF NOT EXISTS dblink".to_string(),
        "ALTER ROLE CURRENT_USER SET statement_timeout = 0".to_string(),
        "BEGIN".to_string(),
        "DO $$ BEGIN PERFORM 1; END $$".to_string(),
        "PREPARE p AS SELECT 1".to_string(),
        "SELECT 1; SELECT 2".to_string(),
    ];
    for statement in &attempts {
        for route in ["/sql/execute", "/sql/query"] {
            let (status, body) = sql("p.test", route, statement.clone()).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{statement} via {route}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.starts_with("database:"), "the guest gets an error, not a trap: {body}");
            assert!(!error.contains("globex-secret"), "{statement}: {error}");
        }
    }
    // The catalog says nothing of the victim's rows.
    let (_, stats) = sql("p.test", "/sql/query", format!("SELECT * FROM pg_stats WHERE schemaname = '{victim}'")).await;
    assert_eq!(stats["count"], 0, "{stats}");
    // What a call sets, it sets for itself: the next call starts clean.
    let (status, body) = sql("p.test", "/sql/query", "SELECT set_config('search_path', 'public', false)".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, shown) = sql("p.test", "/sql/query", "SHOW search_path".into()).await;
    assert_eq!(shown["rows"][0]["search_path"], crate::harness::instance_role(&acme));
    sql("p.test", "/sql/query", "SELECT set_config('statement_timeout', '0', false)".into()).await;
    // (Stopped at 2 s by the statement limit, or sooner by the request's fuel:
    // a call's wall time is charged on PostgreSQL.)
    let started = std::time::Instant::now();
    let (status, slept) = sql("p.test", "/sql/query", "SELECT pg_sleep(5)".into()).await;
    assert_ne!(status, StatusCode::OK, "{slept}");
    assert!(started.elapsed() < Duration::from_millis(3500), "slept {:?}", started.elapsed());
    // A session lock ends with its call: the neighbour takes the same key at once.
    assert_eq!(sql("p.test", "/sql/query", "SELECT pg_advisory_lock(42)".into()).await.0, StatusCode::OK);
    let (_, taken) = sql("g.test", "/sql/query", "SELECT pg_try_advisory_lock(42) AS got".into()).await;
    assert_eq!(taken["rows"][0]["got"], 1, "{taken}");
    // Ordinary SQL works, with parameters written as on SQLite.
    assert_eq!(sql("p.test", "/sql/execute", "CREATE TABLE notes (body TEXT)".into()).await.0, StatusCode::OK);
    let (status, body) = sql(
        "p.test",
        "/sql/query",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'".into(),
    )
    .await;
    assert_eq!((status, body["count"].clone()), (StatusCode::OK, json!(1)), "{body}");
    // A statement prepared before its table changed shape still runs (the node
    // caches prepared statements per connection and prepares again).
    for _ in 0..4 {
        assert_eq!(sql("p.test", "/sql/query", "SELECT * FROM notes".into()).await.0, StatusCode::OK);
    }
    assert_eq!(sql("p.test", "/sql/execute", "ALTER TABLE notes ADD COLUMN n int".into()).await.0, StatusCode::OK);
    for _ in 0..4 {
        let (status, body) = sql("p.test", "/sql/query", "SELECT * FROM notes".into()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, mine) = sql("g.test", "/sql/query", "SELECT v FROM secrets".into()).await;
    assert_eq!(mine["rows"][0]["v"], "globex-secret", "the victim still reads its own");
    // No connection of either instance is left inside a transaction.
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'wi\\_%' AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut crate::harness::pg_admin(node).await)
    .await
    .unwrap();
    assert_eq!(open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_limits_answer_with_clean_errors() {
    // Enough fuel to pay for a statement that runs to its 2 s limit.
    let node = TestNode::start_with(|config| config.limits.fuel_per_request = 10_000_000_000).await;
    probe(&node, "acme", "p.test").await;
    let (status, body) = call(
        &node,
        "p.test",
        Method::POST,
        "/sql/query",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT i FROM n",
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body["error"].as_str().unwrap().contains("more than 10000 rows"), "{body}");
    let huge = format!("SELECT '{}'", "x".repeat(200 * 1024));
    let (_, body) = call(&node, "p.test", Method::POST, "/sql/query", &huge).await;
    assert!(body["error"].as_str().unwrap().contains("longer than"), "{body}");
    let (_, body) = call(&node, "p.test", Method::POST, "/sql/query", "SELECT zeroblob(5000000)").await;
    assert!(body["error"].as_str().unwrap().starts_with("database:"), "{body}");
    let (_, body) = call(
        &node,
        "p.test",
        Method::POST,
        "/sql/query",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    )
    .await;
    assert!(body["error"].as_str().unwrap().contains("ran longer"), "{body}");
    let big = "v".repeat(2 << 20);
    let (status, body) = call(&node, "p.test", Method::PUT, "/kv/big", &big).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body["error"].as_str().unwrap().contains("larger than"), "{body}");
    // The guest knows which SQL it speaks.
    let expected = if crate::harness::on_postgres() { "postgres" } else { "sqlite" };
    let (status, dialect) = node.get("p.test", "/sql/dialect").await;
    assert_eq!((status, dialect.as_str()), (StatusCode::OK, expected));
    let long_key = "k".repeat(600);
    let (_, body) = call(&node, "p.test", Method::GET, &format!("/kv/{long_key}"), "").await;
    assert!(body["error"].as_str().unwrap().contains("keys are"), "{body}");
    assert_eq!(call(&node, "p.test", Method::GET, "/ok", "").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_is_per_instance_with_ttl_prefixes_and_counters() {
    let node = TestNode::start().await;
    probe(&node, "acme", "a.test").await;
    probe(&node, "globex", "g.test").await;
    assert_eq!(call(&node, "a.test", Method::PUT, "/kv/session:1", "alice").await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&node, "g.test", Method::PUT, "/kv/session:1", "gina").await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&node, "a.test", Method::GET, "/kv/session:1", "").await.1, "alice");
    assert_eq!(
        call(&node, "g.test", Method::GET, "/kv/session:1", "").await.1,
        "gina",
        "same key, separate namespaces"
    );
    // Keys that look like paths or patterns are just keys.
    for key in ["..%2Fsession:1", "%25", "session%3A%25"] {
        assert_eq!(
            call(&node, "g.test", Method::GET, &format!("/kv/{key}"), "").await.0,
            StatusCode::NOT_FOUND,
            "{key}"
        );
    }
    call(&node, "a.test", Method::PUT, "/kv/session:2", "bob").await;
    call(&node, "a.test", Method::PUT, "/kv/other", "x").await;
    let (_, listed) = call(&node, "a.test", Method::GET, "/kv?prefix=session:", "").await;
    assert_eq!(listed["keys"], json!(["session:1", "session:2"]));
    let (_, listed) = call(&node, "a.test", Method::GET, "/kv?prefix=%25", "").await;
    assert_eq!(listed["keys"], json!([]), "a prefix is not a LIKE pattern");
    let (_, listed) = call(&node, "g.test", Method::GET, "/kv?prefix=", "").await;
    assert_eq!(listed["keys"], json!(["session:1"]), "listing never shows another instance's keys");

    assert_eq!(call(&node, "a.test", Method::POST, "/kv/hits/incr", "").await.1["value"], 1);
    assert_eq!(call(&node, "a.test", Method::POST, "/kv/hits/incr?by=41", "").await.1["value"], 42);
    assert_eq!(
        call(&node, "a.test", Method::POST, "/kv/session:1/incr", "").await.0,
        StatusCode::INTERNAL_SERVER_ERROR,
        "not an integer"
    );
    assert_eq!(call(&node, "a.test", Method::DELETE, "/kv/other", "").await.1["deleted"], true);
    assert_eq!(call(&node, "a.test", Method::GET, "/kv/other", "").await.0, StatusCode::NOT_FOUND);

    assert_eq!(call(&node, "a.test", Method::PUT, "/kv/short?ttl=1", "soon gone").await.0, StatusCode::NO_CONTENT);
    assert_eq!(call(&node, "a.test", Method::GET, "/kv/short", "").await.1, "soon gone");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(call(&node, "a.test", Method::GET, "/kv/short", "").await.0, StatusCode::NOT_FOUND, "expired");
    let (_, listed) = call(&node, "a.test", Method::GET, "/kv?prefix=sh", "").await;
    assert_eq!(listed["keys"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forum_keeps_posts_and_polls_per_instance_and_its_modules_add_features() {
    let node = TestNode::start().await;
    let manifest = crate::harness::service_manifest("forum");
    assert!(node.publish_bytes(&manifest, crate::harness::guest("forum")).await.0.is_success());
    node.create_tenant("acme").await;
    node.create_tenant("globex").await;
    let (status, body) = node
        .admin(
            Method::POST,
            "/v1/instances",
            Some(
                json!({ "tenant": "acme", "service": "forum", "hosts": ["acme.test"], "modules": ["polls", "search"] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    node.wait_set_up(body["id"].as_str().unwrap()).await;
    node.create_instance("globex", "forum", &["globex.test"]).await;

    let post = json!({ "title": "Tabs", "body": "Tabs are better 100%" }).to_string();
    assert_eq!(call(&node, "acme.test", Method::POST, "/posts", &post).await.0, StatusCode::CREATED);
    assert_eq!(
        call(&node, "acme.test", Method::POST, "/polls", r#"{"question":"Tabs?"}"#).await.0,
        StatusCode::CREATED
    );
    let (_, found) = call(&node, "acme.test", Method::GET, "/search?q=better%20100%25", "").await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1, "{found}");
    let (_, none) = call(&node, "acme.test", Method::GET, "/search?q=%25", "").await;
    assert_eq!(none["results"].as_array().unwrap().len(), 1, "'%' is literal text, found once: {none}");
    let (_, polls) = call(&node, "acme.test", Method::GET, "/polls", "").await;
    assert_eq!(polls["polls"][0]["question"], "Tabs?");

    // Globex has the same code, its own data (only the welcome post its setup
    // wrote), and no polls or search.
    let (_, posts) = call(&node, "globex.test", Method::GET, "/posts", "").await;
    assert_eq!(posts["posts"].as_array().unwrap().len(), 1, "{posts}");
    assert!(posts["posts"][0]["title"].as_str().unwrap().starts_with("Welcome to"), "{posts}");
    assert_eq!(call(&node, "globex.test", Method::GET, "/polls", "").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&node, "globex.test", Method::GET, "/search?q=Tabs", "").await.0, StatusCode::NOT_FOUND);
}
