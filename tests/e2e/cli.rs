//! The `wharf` binary against a running node: the flows a user types.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{guests, repo, TestNode};

fn wharf(node: &TestNode, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["--admin-url", &node.admin_url()])
        .args(args)
        .output()
        .expect("run wharf");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok_json(node: &TestNode, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = wharf(node, &all);
    assert!(ok, "wharf {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("wharf {args:?} printed no JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_configures_activates_and_reports_usage() {
    guests();
    let node = TestNode::start().await;
    let plugins = repo().join("plugins");

    let published = ok_json(&node, &["publish", plugins.join("hello").to_str().unwrap()]);
    assert_eq!((published["service"].as_str(), published["created"].as_bool()), (Some("hello"), Some(true)));
    // Publishing a wharf.toml path works too, and the same bytes are a no-op.
    let again = ok_json(&node, &["publish", plugins.join("hello/wharf.toml").to_str().unwrap()]);
    assert_eq!(again["created"], false);

    ok_json(&node, &["tenant", "create", "acme", "--name", "Acme Corp"]);
    let instance =
        ok_json(&node, &["instance", "create", "--tenant", "acme", "--service", "hello", "--host", "Shop.Example.com"]);
    let id = instance["id"].as_str().unwrap().to_string();
    assert_eq!(instance["hosts"], serde_json::json!(["shop.example.com"]));
    assert_eq!(node.get("shop.example.com", "/").await, (StatusCode::OK, "Hello from Wharf!\n".to_string()));

    // Human output is a table.
    let (ok, table, _) = wharf(&node, &["instance", "list"]);
    assert!(ok && table.starts_with("INSTANCE") && table.contains(&id), "{table}");

    // A second version through --component, then an atomic switch.
    let echo = guests().join("echo.wasm");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wharf.toml"), "[service]\nname = \"hello\"\nversion = \"0.2.0\"\n").unwrap();
    let (ok, _, stderr) = wharf(&node, &["publish", dir.path().to_str().unwrap()]);
    assert!(!ok && stderr.contains("names no `component`"), "{stderr}");
    ok_json(&node, &["publish", dir.path().to_str().unwrap(), "--component", echo.to_str().unwrap()]);
    let activated = ok_json(&node, &["activate", "hello", "0.2.0"]);
    assert_eq!(activated["active"], true);
    assert!(node.get("shop.example.com", "/").await.1.starts_with("echo:"));

    let shown = ok_json(&node, &["service", "show", "hello"]);
    assert_eq!(shown["active_version"], "0.2.0");
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);

    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let usage = ok_json(&node, &["usage", "--tenant", "acme"]);
    assert_eq!(usage["usage"][0]["requests"], 2, "{usage}");
    let (ok, table, _) = wharf(&node, &["usage"]);
    assert!(ok && table.contains("FUEL") && table.contains(&id), "{table}");

    // Errors are one clear line and a failure exit code.
    let (ok, _, stderr) =
        wharf(&node, &["instance", "create", "--tenant", "nobody", "--service", "hello", "--host", "a.com"]);
    assert!(!ok);
    assert!(stderr.contains("no tenant \"nobody\"") && stderr.contains("404"), "{stderr}");
}

#[test]
fn the_cli_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["serve", "publish", "activate", "tenant", "instance", "usage"] {
        assert!(help.contains(command), "--help should list {command}: {help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["--admin-url", "http://127.0.0.1:1", "service", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `wharf serve` running?"));
}
