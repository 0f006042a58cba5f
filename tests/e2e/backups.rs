//! Backups: a single node backed up while it takes writes, restored into a new
//! data directory, serves every write acknowledged before the backup began;
//! a cluster's control plane (with the instances' schemas) comes back from
//! `pg_dump` into a fresh database and a node pointed at it serves the same data.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{client, test_config, TestNode};
use crate::lifecycle::{guest, owned_probe, write_data};

/// A node on `data`, started as a restored node is: its operator exists, so
/// `admin_key` (from the node it was backed up from) is the credential.
async fn start_on(data: tempfile::TempDir, admin_key: String, database_url: Option<String>) -> TestNode {
    let mut config = test_config(data.path());
    config.database_url = database_url.clone();
    let running = wharf::Node::start(config).await.expect("the restored node starts");
    TestNode { running: Some(running), data, http: client(), admin_key, database_url }
}

/// Wait until `host` is served on `node` (a restored node compiles its
/// versions again as it starts).
async fn wait_serving(node: &TestNode, host: &str) {
    let started = std::time::Instant::now();
    while guest(node, host, Method::POST, "/sql/query", "SELECT 1").await.0 != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(30), "{host} is never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values of `n` in the probe's `writes` table, as the guest answers.
async fn written(node: &TestNode, host: &str) -> Vec<i64> {
    let (status, rows) = guest(node, host, Method::POST, "/sql/query", "SELECT n FROM writes ORDER BY n").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    rows["rows"].as_array().unwrap().iter().map(|r| r["n"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_write_load_restores_every_acknowledged_write() {
    let node = TestNode::start().await;
    let (_, id) = owned_probe(&node, "p.test").await;
    write_data(&node, "p.test").await;
    let target = tempfile::tempdir().unwrap();
    let to = target.path().join("backup");
    if crate::harness::on_postgres() {
        let (status, body) = node.admin(Method::POST, "/v1/backup", Some(json!({ "to": to }))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"].as_str().unwrap().contains("pg_dump"), "{body}");
        return;
    }
    let (status, body) = guest(&node, "p.test", Method::POST, "/sql/execute", "CREATE TABLE writes (n INTEGER)").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A writer acknowledging one row at a time, all through the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        let ingress = node.ingress();
        tokio::spawn(async move {
            let http = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answer = http
                    .post(format!("http://{ingress}/sql/execute"))
                    .header("host", "p.test")
                    .body(format!("INSERT INTO writes VALUES ({n})"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), StatusCode::OK, "{}", answer.text().await.unwrap());
                acknowledged.store(n, Ordering::SeqCst);
            }
        })
    };
    while acknowledged.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acknowledged.load(Ordering::SeqCst);
    let (status, backup) = node.admin(Method::POST, "/v1/backup", Some(json!({ "to": to }))).await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(acknowledged.load(Ordering::SeqCst) > before, "the writer wrote on through the backup");
    assert_eq!(backup["instances"], 1, "{backup}");
    let files: Vec<&str> = backup["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(files.contains(&"wharf.db"), "{files:?}");
    assert!(files.contains(&format!("instances/{id}/data.sqlite").as_str()), "{files:?}");

    // Refused: the same directory again, one inside the node's data, a
    // relative path, and anyone but an operator.
    let sneaky = target.path().join("..").join(node.data.path().strip_prefix(target.path().parent().unwrap()).unwrap());
    let refusals = [
        json!({ "to": to }),
        json!({ "to": node.data.path().join("b") }),
        json!({ "to": sneaky.join("c") }),
        json!({ "to": "relative/dir" }),
    ];
    for body in refusals {
        let (status, answer) = node.admin(Method::POST, "/v1/backup", Some(body.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}: {answer}");
    }
    let stranger = node.user("stranger@else.test").await;
    let (status, _) = node.call(&stranger, Method::POST, "/v1/backup", Some(json!({ "to": "/tmp/x" }))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Restored by the CLI into a new data directory, it serves the same data.
    let restored = tempfile::tempdir().unwrap();
    let wharf = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_wharf")).args(args).output().unwrap();
    let (from, into) = (to.to_str().unwrap(), restored.path().to_str().unwrap());
    let out = wharf(&["restore", "--from", from, "--data-dir", into]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = wharf(&["restore", "--from", from, "--data-dir", into]);
    assert!(!again.status.success(), "a node's data directory is never overwritten");
    let restored = start_on(restored, node.admin_key.clone(), None).await;
    wait_serving(&restored, "p.test").await;
    let rows = written(&restored, "p.test").await;
    assert!(rows.len() as i64 >= before, "{} rows, {before} acknowledged before the backup", rows.len());
    assert_eq!(rows, (1..=rows.len() as i64).collect::<Vec<_>>(), "a prefix of the writes, none torn");
    assert_eq!(guest(&restored, "p.test", Method::GET, "/kv/greeting", "").await, (StatusCode::OK, "hello".into()));
    assert_eq!(restored.get_admin(&format!("/v1/instances/{id}")).await["tenant"], "acme");

    // A damaged backup restores nothing.
    let damaged = to.join(format!("instances/{id}/data.sqlite"));
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = wharf(&["restore", "--from", from, "--data-dir", fresh.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!fresh.path().join("wharf.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_control_plane_restored_from_pg_dump_serves_the_same_data() {
    let Some(base) = crate::harness::postgres_base() else {
        return; // The cluster's storage is PostgreSQL.
    };
    let mut node = TestNode::start().await;
    owned_probe(&node, "p.test").await;
    write_data(&node, "p.test").await;
    let source = node.database_url.clone().unwrap();
    node.stop().await;
    // pg_dump of the control plane database: it holds the instances' schemas.
    let dump = node.data.path().join("cluster.dump");
    let out = std::process::Command::new("pg_dump")
        .args(["--format=custom", "--file", dump.to_str().unwrap(), &source])
        .output()
        .expect("pg_dump is installed with PostgreSQL");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    let name = format!("wharf_t_{}", uuid::Uuid::new_v4().simple());
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let target = format!("{prefix}/{name}");
    let mut admin = crate::harness::pg_admin(&node).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let out = std::process::Command::new("pg_restore")
        .args(["--exit-on-error", "--dbname", &target, dump.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", String::from_utf8_lossy(&out.stderr));
    // A node with a new data directory, pointed at the restored database.
    let restored = start_on(tempfile::tempdir().unwrap(), node.admin_key.clone(), Some(target)).await;
    wait_serving(&restored, "p.test").await;
    let (status, rows) = guest(&restored, "p.test", Method::POST, "/sql/query", "SELECT body FROM notes").await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert!(rows.contains("kept"), "{rows}");
    assert_eq!(guest(&restored, "p.test", Method::GET, "/kv/greeting", "").await, (StatusCode::OK, "hello".into()));
}
