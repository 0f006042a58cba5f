//! The `wharf` binary against a running node: the flows a user types.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{guests, repo, TestNode};

/// Run the CLI against `node` as its operator: (success, stdout, stderr).
pub fn wharf(node: &TestNode, args: &[&str]) -> (bool, String, String) {
    wharf_with(node, Some(&node.admin_key), args)
}

/// Run the CLI with `token` (or the credentials file when `None`), its config in
/// the node's data directory.
fn wharf_with(node: &TestNode, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
    command.env("WHARF_CONFIG_DIR", node.data.path().join("cli-config")).env_remove("WHARF_TOKEN");
    if let Some(token) = token {
        command.env("WHARF_TOKEN", token);
    }
    let out = command.args(["--admin-url", &node.admin_url()]).args(args).output().expect("run wharf");
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
    std::fs::write(dir.path().join("wharf.toml"), "[service]\nname = \"hello\"\nversion = \"0.2.0\"\nsql = []\n")
        .unwrap();
    let (ok, _, stderr) = wharf(&node, &["publish", dir.path().to_str().unwrap()]);
    assert!(!ok && stderr.contains("names no `component`"), "{stderr}");
    let (ok, said, stderr) =
        wharf(&node, &["publish", dir.path().to_str().unwrap(), "--component", echo.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // What its fresh requests reset: a component built with the examples' 128 KiB stack needs no hint.
    assert!(said.contains("hello 0.2.0 published") && said.contains("KiB of linear memory"), "{said}");
    assert!(!said.contains("hint"), "{said}");
    let activated = ok_json(&node, &["activate", "hello", "0.2.0"]);
    assert_eq!(activated["active"], true);
    assert!(node.get("shop.example.com", "/").await.1.starts_with("echo:"));

    let shown = ok_json(&node, &["service", "show", "hello"]);
    assert_eq!(shown["active_version"], "0.2.0");
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    let (ok, table, _) = wharf(&node, &["service", "show", "hello"]);
    assert!(ok && table.contains("MEMORY") && table.contains(" KiB"), "{table}");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_manages_keys_members_and_grants_and_keeps_credentials_private() {
    guests();
    let node = TestNode::start_with(|c| c.trust.registration = wharf::config::Registration::Open).await;
    let plugins = repo().join("plugins");
    ok_json(&node, &["publish", plugins.join("forum").to_str().unwrap()]);
    let (ok, table, _) = wharf(&node, &["service", "permissions", "forum"]);
    assert!(ok && table.contains("forum.addUsers") && table.contains("POST /users"), "{table}");

    // Register and log in through the CLI; the session is saved for later commands.
    let register = |email: &str, extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .env("WHARF_CONFIG_DIR", node.data.path().join("cli-config"))
            .env_remove("WHARF_TOKEN")
            .args(["--admin-url", &node.admin_url(), "register", email, "--password-stdin"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(format!("{}\n", crate::harness::PASSWORD).as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    };
    register("owner@cli.test", &[]);
    let mut login = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .env("WHARF_CONFIG_DIR", node.data.path().join("cli-config"))
        .env_remove("WHARF_TOKEN")
        .args(["--admin-url", &node.admin_url(), "login", "owner@cli.test", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        login.stdin.take().unwrap().write_all(format!("{}\n", crate::harness::PASSWORD).as_bytes()).unwrap();
    }
    assert!(login.wait().unwrap().success());
    let credentials = node.data.path().join("cli-config/credentials.json");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&credentials).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the credentials file must be private");
    }

    let saved = |args: &[&str]| wharf_with(&node, None, args);
    let (ok, whoami, err) = saved(&["whoami"]);
    assert!(ok && whoami.starts_with("owner@cli.test"), "{whoami}{err}");
    assert!(saved(&["tenant", "create", "cli"]).0);
    // Ann has no account: adding her invites her, and the link is printed.
    let (ok, invited, err) = saved(&["member", "add", "--tenant", "cli", "ann@cli.test", "--role", "member"]);
    assert!(ok && invited.contains("/v1/invitations/whi_"), "{invited}{err}");
    let token = invited.split("/v1/invitations/").nth(1).unwrap().trim().to_string();
    let (_, listed, _) = saved(&["invitation", "list", "--tenant", "cli"]);
    assert!(listed.contains("ann@cli.test") && !listed.contains(&token), "{listed}");
    register("ann@cli.test", &["--invitation", &token]);
    let (_, members, _) = saved(&["member", "list", "--tenant", "cli"]);
    assert!(members.contains("ann@cli.test"), "{members}");
    let (ok, quotas, err) = saved(&["quota", "show", "--tenant", "cli"]);
    assert!(ok && quotas.contains("instances") && quotas.contains("database_bytes"), "{quotas}{err}");
    let (ok, _, err) = saved(&["quota", "set", "--tenant", "cli", "instances", "50"]);
    assert!(!ok && err.contains("403"), "only operators set quotas: {err}");
    let (ok, quotas, err) =
        wharf_with(&node, Some(&node.admin_key), &["quota", "set", "--tenant", "cli", "instances", "50"]);
    assert!(ok && quotas.contains("50") && quotas.contains("override"), "{quotas}{err}");
    let (ok, _, err) = saved(&["grant", "--tenant", "cli", "ann@cli.test", "forum.nope"]);
    assert!(!ok && err.contains("forum.addUsers"), "{err}");
    assert!(saved(&["grant", "--tenant", "cli", "ann@cli.test", "forum.addUsers"]).0);
    let (_, grants, _) = saved(&["grants", "--tenant", "cli"]);
    assert!(grants.contains("ann@cli.test") && grants.contains("active"), "{grants}");

    let (ok, created, _) = saved(&["key", "create", "laptop"]);
    let secret = created.lines().last().unwrap().trim().to_string();
    assert!(ok && secret.starts_with("whk_"), "{created}");
    let (_, listed, _) = saved(&["key", "list"]);
    assert!(listed.contains("laptop") && !listed.contains(&secret), "{listed}");
    let (ok, me, _) = wharf_with(&node, Some(&secret), &["whoami"]);
    assert!(ok && me.starts_with("owner@cli.test"));
    let prefix = secret[..12].to_string();
    assert!(saved(&["key", "revoke", &prefix]).0);
    let (ok, _, err) = wharf_with(&node, Some(&secret), &["whoami"]);
    assert!(!ok && err.contains("401"), "{err}");

    assert!(saved(&["revoke", "--tenant", "cli", "ann@cli.test", "forum.addUsers"]).0);
    assert!(saved(&["member", "remove", "--tenant", "cli", "ann@cli.test"]).0);
    let (_, audit, _) = saved(&["audit"]);
    for action in
        ["member.invite", "invitation.accept", "grant.add", "grant.remove", "member.remove", "key.create", "key.revoke"]
    {
        assert!(audit.contains(action), "audit lacks {action}: {audit}");
    }
    assert!(saved(&["logout"]).0);
    let (ok, _, err) = saved(&["whoami"]);
    assert!(!ok && err.contains("wharf login"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_migrations_and_lists_retries_and_cancels_jobs() {
    guests();
    let node = TestNode::start().await;
    let plugins = repo().join("plugins");
    // The forum's migrations are files beside its wharf.toml: publish reads them in.
    ok_json(&node, &["publish", plugins.join("forum").to_str().unwrap()]);
    ok_json(&node, &["publish", plugins.join("tasks").to_str().unwrap()]);
    ok_json(&node, &["tenant", "create", "acme"]);
    let forum = ok_json(&node, &["instance", "create", "--tenant", "acme", "--service", "forum", "--host", "f.test"]);
    let forum = forum["id"].as_str().unwrap().to_string();
    node.wait_set_up(&forum).await;
    let shown = ok_json(&node, &["instance", "show", &forum]);
    assert_eq!(shown["setup"]["applied_migrations"], serde_json::json!(["0001_init"]), "{shown}");
    let (ok, human, _) = wharf(&node, &["instance", "show", &forum]);
    assert!(ok && human.contains("setup    ready (1 migrations applied)"), "{human}");
    let (_, posts) = node.get("f.test", "/posts").await;
    assert!(posts.contains("Welcome to"), "the seeder wrote the welcome post: {posts}");

    let tasks = ok_json(&node, &["instance", "create", "--tenant", "acme", "--service", "tasks", "--host", "t.test"]);
    let tasks = tasks["id"].as_str().unwrap().to_string();
    node.wait_set_up(&tasks).await;
    // A job for a task that does not exist fails; a delayed one waits.
    let failing = ok_json(&node, &["jobs", "enqueue", &tasks, "run-task", "--payload", "not-a-number"]);
    let later = ok_json(&node, &["jobs", "enqueue", &tasks, "run-task", "--payload", "1", "--delay", "3600"]);
    let keyed =
        ok_json(&node, &["jobs", "enqueue", &tasks, "run-task", "--payload", "1", "--delay", "3600", "--key", "k"]);
    let again =
        ok_json(&node, &["jobs", "enqueue", &tasks, "run-task", "--payload", "1", "--delay", "3600", "--key", "k"]);
    assert_eq!((keyed["id"].clone(), again["created"].clone()), (again["id"].clone(), serde_json::json!(false)));
    let (ok, _, stderr) = wharf(&node, &["jobs", "enqueue", &tasks, "no-such-kind"]);
    assert!(!ok && stderr.contains("[[jobs]]"), "{stderr}");
    let failing = failing["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    loop {
        let job = ok_json(&node, &["jobs", "show", &failing]);
        if job["state"] == "failed" || job["state"] == "dead" {
            assert!(job["last_error"].as_str().unwrap().contains("not a task id"), "{job}");
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (ok, table, _) = wharf(&node, &["jobs", "list", "--instance", &tasks]);
    assert!(ok && table.starts_with("ID") && table.contains(&failing) && table.contains("run-task"), "{table}");
    let (ok, stats, _) = wharf(&node, &["jobs", "stats"]);
    assert!(ok && stats.contains("tasks"), "{stats}");
    let later = later["id"].as_str().unwrap();
    let cancelled = ok_json(&node, &["jobs", "cancel", later]);
    assert_eq!(cancelled["state"], "cancelled");
    let retried = ok_json(&node, &["jobs", "retry", later]);
    // Queued again; an idle worker may already have claimed it when it is read back.
    assert!(["queued", "running", "succeeded"].contains(&retried["state"].as_str().unwrap()), "{retried}");
    let (ok, _, stderr) = wharf(&node, &["jobs", "retry", keyed["id"].as_str().unwrap()]);
    assert!(!ok && stderr.contains("only dead, failed or cancelled"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prices_a_service_and_shows_a_month_of_invoices() {
    guests();
    let node = TestNode::start().await;
    ok_json(&node, &["publish", repo().join("plugins/forum").to_str().unwrap()]);
    let plan = ok_json(
        &node,
        &[
            "plan",
            "set",
            "forum",
            "--currency",
            "EUR",
            "--period-price",
            "31",
            "--module",
            "polls=6.20",
            "--request-price",
            "0.01",
            "--request-unit",
            "1",
        ],
    );
    assert_eq!((plan["period_price"].as_i64(), plan["module_prices"]["polls"].as_i64()), (Some(3100), Some(620)));
    let (ok, _, stderr) = wharf(&node, &["plan", "set", "forum", "--currency", "EUR", "--period-price", "31.001"]);
    assert!(!ok && stderr.contains("at most 2 decimals"), "{stderr}");
    let (ok, shown, _) = wharf(&node, &["plan", "show", "forum"]);
    assert!(ok && shown.contains("module    polls: 6.20 EUR per month"), "{shown}");

    ok_json(&node, &["clock", "set", "2027-03-01"]);
    ok_json(&node, &["tenant", "create", "acme"]);
    ok_json(
        &node,
        &[
            "billing",
            "details",
            "--tenant",
            "acme",
            "--name",
            "Acme Ltd",
            "--address",
            "1 Dock Road",
            "--email",
            "ap@acme.test",
        ],
    );
    let forum = ok_json(
        &node,
        &["instance", "create", "--tenant", "acme", "--service", "forum", "--host", "f.test", "--module", "polls"],
    );
    let forum = forum["id"].as_str().unwrap().to_string();
    node.wait_set_up(&forum).await;
    let (ok, _, _) = wharf(&node, &["clock", "advance", "15d"]);
    assert!(ok);
    ok_json(&node, &["instance", "update", &forum, "--modules", "none"]);
    let (ok, events, _) = wharf(&node, &["billing", "events", "--tenant", "acme"]);
    assert!(ok && events.contains("module polls disabled"), "{events}");
    ok_json(&node, &["clock", "advance", "20d"]);
    let (ok, list, _) = wharf(&node, &["invoice", "list", "--tenant", "acme"]);
    assert!(ok && list.contains("inv-acme-2027-03") && list.contains("inv-acme-2027-04"), "{list}");
    let closed = ok_json(&node, &["invoice", "close", "--tenant", "acme", "2027-03"]);
    assert_eq!(closed["state"], "closed");
    let (ok, human, _) = wharf(&node, &["invoice", "show", "--tenant", "acme", "2027-03"]);
    assert!(ok && human.contains("bill to   Acme Ltd, 1 Dock Road"), "{human}");
    // Half of March, give or take the second the commands took.
    assert!(human.contains("module polls of forum"), "{human}");
    assert!(human.contains("15 of 31 days") || human.contains("48.39% of the month"), "{human}");
    let (ok, html, _) = wharf(&node, &["invoice", "show", "--tenant", "acme", "2027-03", "--html"]);
    assert!(ok && html.starts_with("<!doctype html>"), "{html}");
    // The end of a trial, and a limit the tenant sets.
    ok_json(&node, &["instance", "update", &forum, "--ends-at", "2027-04-10"]);
    let (ok, out, _) = wharf(&node, &["billing", "limit", "--tenant", "acme", "1000", "--currency", "EUR"]);
    assert!(ok, "{out}");
    let (ok, account, _) = wharf(&node, &["billing", "show", "--tenant", "acme"]);
    assert!(ok && account.contains("limit     1000.00 EUR per month"), "{account}");
    ok_json(&node, &["clock", "advance", "10d"]);
    assert_eq!(node.get("f.test", "/").await.0, StatusCode::PAYMENT_REQUIRED);
    let discount =
        ok_json(&node, &["discount", "add", "--tenant", "acme", "--percent", "10", "--description", "Loyal"]);
    let (ok, discounts, _) = wharf(&node, &["discount", "list", "--tenant", "acme"]);
    assert!(ok && discounts.contains("Loyal"), "{discounts}");
    ok_json(&node, &["discount", "remove", discount["id"].as_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_stages_promotes_rolls_back_and_runs_canaries() {
    guests();
    let node = TestNode::start().await;
    ok_json(&node, &["publish", repo().join("plugins/hello").to_str().unwrap()]);
    ok_json(&node, &["tenant", "create", "acme"]);
    ok_json(&node, &["instance", "create", "--tenant", "acme", "--service", "hello", "--host", "a.test"]);
    let b = ok_json(&node, &["instance", "create", "--tenant", "acme", "--service", "hello", "--host", "b.test"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wharf.toml"),
        "[service]\nname = \"hello\"\nversion = \"2.0.0\"\nsql = [\"sqlite\", \"postgres\"]\n",
    )
    .unwrap();
    let echo = guests().join("echo.wasm");
    ok_json(&node, &["publish", dir.path().to_str().unwrap(), "--component", echo.to_str().unwrap()]);

    let (ok, out, err) = wharf(&node, &["stage", "hello", "2.0.0"]);
    assert!(ok && out.contains("hello 2.0.0: ready on 1 of 1 nodes; not ready: none"), "{out}{err}");
    let (ok, out, _) = wharf(&node, &["canary", "start", "hello", "2.0.0", "--instance", b["id"].as_str().unwrap()]);
    assert!(ok && out.contains(b["id"].as_str().unwrap()), "{out}");
    assert!(node.get("b.test", "/").await.1.starts_with("echo:"));
    assert!(node.get("a.test", "/").await.1.starts_with("Hello"));
    let (ok, out, _) = wharf(&node, &["canary", "end", "hello"]);
    assert!(ok && out.contains("canary ended"), "{out}");
    let (ok, out, err) = wharf(&node, &["promote", "hello", "2.0.0"]);
    assert!(ok && out.contains("hello: 0.1.0 -> 2.0.0 on 1 nodes"), "{out}{err}");
    assert!(node.get("a.test", "/").await.1.starts_with("echo:"));
    let (ok, status, _) = wharf(&node, &["status", "hello"]);
    assert!(ok && status.contains("active 2.0.0, previous 0.1.0") && status.contains("caught up"), "{status}");
    assert!(status.contains("promote 2.0.0 by"), "{status}");
    let (ok, out, _) = wharf(&node, &["rollback", "hello"]);
    assert!(ok && out.contains("2.0.0 -> 0.1.0"), "{out}");
    assert!(node.get("a.test", "/").await.1.starts_with("Hello"));
    let (ok, nodes, _) = wharf(&node, &["nodes"]);
    assert!(ok && nodes.starts_with("NODE") && nodes.contains("true"), "{nodes}");
    let (ok, _, err) = wharf(&node, &["promote", "hello", "7.0.0"]);
    assert!(!ok && err.contains("7.0.0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_imports_backs_up_hands_over_and_deletes() {
    let node = TestNode::start().await;
    let (owner, id) = crate::lifecycle::owned_probe(&node, "p.test").await;
    crate::lifecycle::write_data(&node, "p.test").await;
    let ann = node.user("ann@acme.test").await;
    let add = serde_json::json!({ "email": "ann@acme.test" });
    node.expect(&owner, reqwest::Method::POST, "/v1/tenants/acme/members", add, StatusCode::CREATED).await;

    // Export as the owner, import as the operator.
    let file = node.data.path().join("probe.tar");
    let (ok, out, err) = wharf_with(&node, Some(&owner), &["instance", "export", &id, "-o", file.to_str().unwrap()]);
    assert!(ok && out.contains("exported"), "{out}{err}");
    let imported = ok_json(
        &node,
        &["instance", "import", file.to_str().unwrap(), "--tenant", "acme", "--name", "copy", "--host", "c.test"],
    );
    assert_eq!(imported["name"], "copy", "{imported}");
    let invoices = node.data.path().join("invoices.tar");
    let (ok, out, err) = wharf(&node, &["invoice", "export", "--tenant", "acme", "-o", invoices.to_str().unwrap()]);
    assert!(ok && invoices.exists(), "{out}{err}");

    // Back up while serving (a single node's own storage).
    let backup = node.data.path().parent().unwrap().join(format!("backup-{}", uuid::Uuid::new_v4().simple()));
    let (ok, out, err) = wharf(&node, &["backup", backup.to_str().unwrap()]);
    if crate::harness::on_postgres() {
        assert!(!ok && err.contains("pg_dump"), "{out}{err}");
    } else {
        assert!(ok && out.contains("backed up"), "{out}{err}");
        assert!(backup.join("backup.json").exists());
        std::fs::remove_dir_all(&backup).unwrap();
    }

    // Hand the tenant over, then leave: the account is gone.
    let (ok, out, err) = wharf_with(&node, Some(&owner), &["member", "transfer", "--tenant", "acme", "ann@acme.test"]);
    assert!(ok && out.contains("now owns acme"), "{out}{err}");
    let (ok, out, err) = wharf(&node, &["account", "delete", "--user", "owner@acme.test"]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, _, err) = wharf_with(&node, Some(&owner), &["whoami"]);
    assert!(!ok && err.contains("401"), "{err}");

    // The new owner deletes the tenant and brings it back.
    let (ok, out, err) = wharf_with(&node, Some(&ann), &["tenant", "delete", "acme"]);
    assert!(
        ok && out.contains("deleted with 2 instance(s)") && out.contains("wharf tenant restore acme"),
        "{out}{err}"
    );
    let (ok, out, err) = wharf_with(&node, Some(&ann), &["tenant", "restore", "acme"]);
    assert!(ok && out.contains("restored with 2 instance(s)"), "{out}{err}");
}
