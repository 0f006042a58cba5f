//! Shared test fixtures: guest components built once per test run, and nodes
//! started in temporary data directories.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wharf::{Node, NodeConfig, RunningNode};

/// Root of the repository.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Build every guest in `plugins/` once per test run and return the directory
/// holding the `.wasm` files.
pub fn guests() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let plugins = repo().join("plugins");
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(&plugins)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("failed to run cargo to build the guests");
        assert!(status.success(), "building the guest components failed");
        plugins.join("target/wasm32-wasip2/release")
    })
}

/// The bytes of a built guest, e.g. `guest("hello")`.
pub fn guest(name: &str) -> Vec<u8> {
    let path = guests().join(format!("{}.wasm", name.replace('-', "_")));
    let path = if path.exists() { path } else { guests().join(format!("{name}.wasm")) };
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
}

/// A manifest for `service` at `version` (its SQL, if any, sent by the tests
/// for the dialect at hand).
pub fn manifest(service: &str, version: &str) -> String {
    format!("[service]\nname = \"{service}\"\nversion = \"{version}\"\nsql = [\"sqlite\", \"postgres\"]\n")
}

/// An example service's `wharf.toml` with its migration files read into it,
/// as `wharf publish` sends it.
pub fn service_manifest(name: &str) -> String {
    wharf::cli::read_manifest(&repo().join("plugins").join(name)).unwrap().1
}

/// The forum's `[[migrations]]`, as TOML to append to a manifest of its own.
pub fn forum_migrations() -> String {
    #[derive(serde::Serialize)]
    struct Migrations {
        migrations: Vec<wharf::registry::MigrationDecl>,
    }
    let (_, _, manifest) = wharf::cli::read_manifest(&repo().join("plugins/forum")).unwrap();
    toml::to_string(&Migrations { migrations: manifest.migrations }).unwrap()
}

/// A jobs-lab manifest whose schedule is not a period.
pub fn lab_bad_period() -> String {
    "[service]\nname = \"clock\"\nversion = \"9.0.0\"\n[[jobs]]\nkind = \"tick\"\nevery = \"often\"\n".to_string()
}

/// Limits small enough for tests to hit quickly.
pub fn test_config(data: &Path) -> NodeConfig {
    let mut config = NodeConfig::new(data);
    config.ingress_addr = "127.0.0.1:0".parse().unwrap();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.pool.max_instances = 64;
    config.limits.fuel_per_request = 400_000_000;
    config.limits.max_memory_bytes = 32 << 20;
    config.limits.request_timeout = Duration::from_secs(10);
    config.shutdown_grace = Duration::from_secs(10);
    config.usage_flush_interval = Duration::from_millis(200);
    config.init_admin = Some(OPERATOR.into());
    config.redis_url = redis_url();
    // Jobs retry and poll quickly, so tests see backoff and recovery in seconds.
    config.jobs.backoff = Duration::from_millis(100);
    config.jobs.poll = Duration::from_millis(100);
    config.jobs.timeout = Duration::from_secs(5);
    config.jobs.lease = Duration::from_secs(8);
    // Tests simulate months; invoices close and limits apply within a tenth of a second.
    config.billing.settable_clock = true;
    config.billing.interval = Duration::from_millis(100);
    // Unused versions are unloaded within a second or two.
    config.unload_interval = Duration::from_secs(1);
    config
}

/// The Redis the suite keeps key-value stores and login limits in
/// (`WHARF_TEST_REDIS`), or `None` to keep them in each node.
pub fn redis_url() -> Option<String> {
    std::env::var("WHARF_TEST_REDIS").ok().filter(|u| !u.is_empty())
}

/// `wharf serve` options for the suite's shared services, if any.
pub async fn shared_service_args() -> Vec<String> {
    let mut args = Vec::new();
    if let Some(url) = fresh_database().await {
        args.extend(["--database".to_string(), url]);
    }
    if let Some(url) = redis_url() {
        args.extend(["--redis".to_string(), url]);
    }
    args
}

/// The operator every test node starts with.
pub const OPERATOR: &str = "ops@wharf.test";
/// The password of users the tests register.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running node and a client for it.
pub struct TestNode {
    pub running: Option<RunningNode>,
    pub data: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The operator's API key.
    pub admin_key: String,
    /// The node's PostgreSQL control plane, when the suite runs on PostgreSQL.
    pub database_url: Option<String>,
}

/// The PostgreSQL server the suite runs against (`WHARF_TEST_DATABASE`, a URL of
/// a database to connect to for creating others), or `None` for SQLite.
pub fn postgres_base() -> Option<String> {
    std::env::var("WHARF_TEST_DATABASE").ok().filter(|u| !u.is_empty())
}

/// Whether this run keeps instance databases in PostgreSQL (the cluster pass).
pub fn on_postgres() -> bool {
    postgres_base().is_some()
}

/// A connection to `node`'s PostgreSQL database, as the platform's own user.
pub async fn pg_admin(node: &TestNode) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let url = node.database_url.as_deref().expect("the node runs on PostgreSQL");
    sqlx::PgConnection::connect(url).await.expect("the test PostgreSQL is reachable")
}

/// The PostgreSQL role (and schema) of an instance.
pub fn instance_role(instance: &str) -> String {
    format!("wi_{}", instance.trim_start_matches("inst-"))
}

/// A fresh, empty PostgreSQL database for one node (when the suite runs on
/// PostgreSQL). Databases of earlier runs are dropped first, once per run.
pub async fn fresh_database() -> Option<String> {
    use sqlx::Connection as _;
    let base = postgres_base()?;
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("the test PostgreSQL is reachable");
    CLEANED
        .get_or_init(|| async {
            let old: Vec<(String,)> = sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'wharf_t_%'")
                .fetch_all(&mut sqlx::PgConnection::connect(&base).await.unwrap())
                .await
                .unwrap();
            let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
            for (name,) in old {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await;
            }
            // Instance roles are the server's, not a database's: those left owning
            // nothing (their databases dropped) go too; any still in use refuses.
            let roles: Vec<(String,)> = sqlx::query_as("SELECT rolname FROM pg_roles WHERE rolname LIKE 'wi\\_%'")
                .fetch_all(&mut admin)
                .await
                .unwrap();
            for (role,) in roles {
                let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}")).execute(&mut admin).await;
            }
        })
        .await;
    let name = format!("wharf_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').expect("WHARF_TEST_DATABASE names a database");
    Some(format!("{prefix}/{name}"))
}

impl TestNode {
    /// Start a node with [`test_config`].
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start a node after `adjust` changes the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut NodeConfig)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let database_url = fresh_database().await;
        let mut config = test_config(data.path());
        config.database_url = database_url.clone();
        adjust(&mut config);
        let running = Node::start(config).await.expect("node starts");
        let admin_key = running.initial_admin_key.clone().expect("the operator is created");
        Self { running: Some(running), data, http: client(), admin_key, database_url }
    }

    /// A second node on `other`'s control plane (PostgreSQL), with a data
    /// directory of its own: a cluster of two.
    pub async fn start_sharing(other: &TestNode) -> Self {
        Self::start_sharing_with(other, |_| {}).await
    }

    /// A second node on `other`'s control plane, its configuration adjusted.
    pub async fn start_sharing_with(other: &TestNode, adjust: impl FnOnce(&mut NodeConfig)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = test_config(data.path());
        config.database_url = other.database_url.clone();
        adjust(&mut config);
        let running = Node::start(config).await.expect("the second node starts");
        Self {
            running: Some(running),
            data,
            http: client(),
            admin_key: other.admin_key.clone(),
            database_url: other.database_url.clone(),
        }
    }

    /// Stop the node and start a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stop the node gracefully.
    pub async fn stop(&mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }

    /// Start a stopped node again on the same data directory.
    pub async fn start_again(&mut self) {
        self.start_again_with(|_| {}).await;
    }

    /// [`Self::start_again`] with its configuration adjusted.
    pub async fn start_again_with(&mut self, adjust: impl FnOnce(&mut NodeConfig)) {
        let mut config = test_config(self.data.path());
        config.database_url = self.database_url.clone();
        adjust(&mut config);
        self.running = Some(Node::start(config).await.expect("node restarts"));
    }

    pub fn node(&self) -> &RunningNode {
        self.running.as_ref().unwrap()
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.node().admin_addr())
    }

    pub fn ingress(&self) -> std::net::SocketAddr {
        self.node().ingress_addr()
    }

    /// Publish raw bytes under a manifest; returns status and JSON.
    pub async fn publish_bytes(&self, manifest: &str, component: Vec<u8>) -> (StatusCode, Value) {
        self.publish_bytes_as(&self.admin_key, manifest, component).await
    }

    /// Publish with `token`'s credentials.
    pub async fn publish_bytes_as(&self, token: &str, manifest: &str, component: Vec<u8>) -> (StatusCode, Value) {
        let name = wharf::registry::Manifest::parse(manifest).map(|m| m.service.name).unwrap_or_else(|_| "x".into());
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_string())
            .part("component", reqwest::multipart::Part::bytes(component).file_name("c.wasm"));
        let resp = self
            .http
            .post(format!("{}/v1/services/{name}/versions", self.admin_url()))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publish a built guest as `service` `version`; panics unless it succeeds.
    pub async fn publish(&self, guest_name: &str, service: &str, version: &str) -> Value {
        let (status, body) = self.publish_bytes(&manifest(service, version), guest(guest_name)).await;
        assert!(status.is_success(), "publishing {guest_name} as {service} {version}: {status} {body}");
        body
    }

    /// An admin API call as the operator.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(&self.admin_key, method, path, body).await
    }

    /// An admin API call with `token`.
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.admin_url())).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An admin API call with `token` that must answer `expected`.
    pub async fn expect(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Value,
        expected: StatusCode,
    ) -> Value {
        let (status, answer) = self.call(token, method.clone(), path, Some(body)).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        answer
    }

    /// An admin API call without credentials.
    pub async fn anonymous(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http.request(method, format!("{}{path}", self.admin_url())).send().await.unwrap()
    }

    /// An admin API call without credentials, with a JSON body.
    pub async fn anonymous_json(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self.http.request(method, format!("{}{path}", self.admin_url())).json(&body).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Create the account `email` (with [`PASSWORD`]; by the operator, so its
    /// address counts as proven) and log in; returns the session token.
    pub async fn user(&self, email: &str) -> String {
        let (status, body) =
            self.admin(reqwest::Method::POST, "/v1/users", Some(json!({ "email": email, "password": PASSWORD }))).await;
        assert_eq!(status, StatusCode::CREATED, "register {email}: {body}");
        let (status, body) = self
            .anonymous_json(reqwest::Method::POST, "/v1/login", json!({ "email": email, "password": PASSWORD }))
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// A request to the ingress with `Host: host` and an optional bearer token.
    pub async fn ingress_call(
        &self,
        host: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut req =
            self.http.request(method, format!("http://{}{path}", self.ingress())).header(reqwest::header::HOST, host);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    pub async fn get_admin(&self, path: &str) -> Value {
        let (status, body) = self.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn create_tenant(&self, id: &str) {
        let (status, body) = self.admin(reqwest::Method::POST, "/v1/tenants", Some(json!({ "id": id }))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Create an instance; returns its id.
    pub async fn create_instance(&self, tenant: &str, service: &str, hosts: &[&str]) -> String {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "/v1/instances",
                Some(json!({ "tenant": tenant, "service": service, "hosts": hosts })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        self.wait_set_up(&id).await;
        id
    }

    /// Wait until instance `id` is set up (its migrations and seeder ran).
    pub async fn wait_set_up(&self, id: &str) {
        let started = std::time::Instant::now();
        loop {
            let (status, instance) = self.admin(reqwest::Method::GET, &format!("/v1/instances/{id}"), None).await;
            assert_eq!(status, StatusCode::OK, "{instance}");
            // Set up, and this node's ingress knows it.
            if instance["setup"]["state"] != "migrating" && instance["serving_here"]["state"] != "maintenance" {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "instance {id} was never set up: {instance}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A tenant with an instance of a freshly published guest at `host`.
    pub async fn tenant_with(&self, tenant: &str, guest_name: &str, service: &str, host: &str) -> String {
        self.publish(guest_name, service, "1.0.0").await;
        self.create_tenant(tenant).await;
        self.create_instance(tenant, service, &[host]).await
    }

    /// GET `path` on the ingress with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.ingress()))
            .header(reqwest::header::HOST, host)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// The node's `/metrics`, read with the operator's key.
    pub async fn metrics(&self) -> String {
        let resp =
            self.http.get(format!("{}/metrics", self.admin_url())).bearer_auth(&self.admin_key).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    }

    /// Wait until the node holds `n` idle sandboxes. A sandbox goes back when its
    /// guest returns, just after the client has the response, and a guest that
    /// computed for a while finishes on the idle-priority threads, which a busy
    /// machine (a test run in parallel) can keep waiting for a moment.
    pub async fn wait_idle_sandboxes(&self, n: u64) {
        let started = std::time::Instant::now();
        loop {
            let idle = sample(&self.metrics().await, "wharf_guest_sandboxes_idle").unwrap_or(0.0);
            if idle >= n as f64 {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{idle} idle sandboxes after 20 s, not {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Usage of an instance once it has settled: a guest is counted when it is
    /// done, which can be just after its client has read the response.
    pub async fn usage(&self, instance: &str) -> Value {
        let path = format!("/v1/instances/{instance}/usage");
        let mut last = self.get_admin(&path).await;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.get_admin(&path).await;
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Send raw bytes to `addr` and return the whole raw response (the request should
/// carry `Connection: close`).
pub async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response.
pub fn raw_status(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The real `wharf serve` binary in a child process, its log in a file: for what
/// only the binary shows (logs, signals).
pub struct Served {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub admin: String,
    pub ingress: std::net::SocketAddr,
    /// The operator's API key, printed once at start.
    pub key: String,
    /// Kept until the node stops.
    pub _data: tempfile::TempDir,
    /// Its options besides the addresses and data directory.
    pub args: Vec<String>,
}

impl Served {
    /// Start `wharf serve` on ephemeral ports with `extra` options.
    pub async fn start(extra: &[&str]) -> Self {
        let mut args = shared_service_args().await;
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start_in(tempfile::tempdir().unwrap(), args, true).await
    }

    /// The real binary joining `node`'s control plane (PostgreSQL) and shared
    /// services, with `node`'s operator key.
    pub async fn joining(node: &TestNode) -> Self {
        let mut args = vec!["--database".to_string(), node.database_url.clone().expect("a PostgreSQL control plane")];
        if let Some(url) = redis_url() {
            args.extend(["--redis".to_string(), url]);
        }
        let mut served = Self::start_in(tempfile::tempdir().unwrap(), args, false).await;
        served.key = node.admin_key.clone();
        served
    }

    /// Send the node a signal (`STOP` freezes it, `CONT` resumes it).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kill the node with SIGKILL (no shutdown at all) and start it again on
    /// the same data directory and shared services.
    pub async fn kill_and_restart(mut self) -> Self {
        let status = std::process::Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
        let data = std::mem::replace(&mut self._data, tempfile::tempdir().unwrap());
        let args = std::mem::take(&mut self.args);
        // The fresh start prints no key (the operator exists): keep the old one.
        let key = self.key.clone();
        let mut again = Self::start_in(data, args, false).await;
        again.key = key;
        again
    }

    async fn start_in(data: tempfile::TempDir, args: Vec<String>, new_operator: bool) -> Self {
        use std::io::BufRead;
        let log = data.path().join(format!("serve-{}.log", uuid::Uuid::new_v4().simple()));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args([
                "serve",
                "--data",
                data.path().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--init-admin", "ops@served.test"])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdout(if new_operator { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // The key is printed once, when the operator is created.
        let key = match child.stdout.take() {
            Some(stdout) => tokio::task::spawn_blocking(move || {
                std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|l| l.strip_prefix("WHARF_TOKEN=").map(str::to_string))
            })
            .await
            .unwrap()
            .expect("the operator key is printed once"),
            None => String::new(),
        };
        let mut line = None;
        for _ in 0..200 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains("wharf is serving")) {
                line = Some(l.to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let line = line.expect("the node logs its addresses");
        // A text line (`admin=…`) or a JSON one (`"admin":"…"`).
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let field = |name: &str| match &json {
            Some(json) => json[name].as_str().unwrap().to_string(),
            None => line.split(&format!("{name}=")).nth(1).unwrap().split_whitespace().next().unwrap().to_string(),
        };
        let admin = format!("http://{}", field("admin"));
        let ingress = field("ingress").parse().unwrap();
        Self { child, log, admin, ingress, key, _data: data, args }
    }

    /// Publish a built guest as `service` 1.0.0 and give tenant `tenant` an
    /// instance of it at `host`.
    pub async fn tenant_with(&self, guest_name: &str, service: &str, tenant: &str, host: &str) {
        self.tenant_with_manifest(&manifest(service, "1.0.0"), guest_name, service, tenant, host).await
    }

    /// [`Served::tenant_with`], published with `manifest`.
    pub async fn tenant_with_manifest(
        &self,
        manifest: &str,
        guest_name: &str,
        service: &str,
        tenant: &str,
        host: &str,
    ) {
        let http = client();
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_string())
            .part("component", reqwest::multipart::Part::bytes(guest(guest_name)).file_name("c.wasm"));
        let resp = http
            .post(format!("{}/v1/services/{service}/versions", self.admin))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "publish: {}", resp.text().await.unwrap());
        let resp = http
            .post(format!("{}/v1/tenants", self.admin))
            .bearer_auth(&self.key)
            .json(&json!({ "id": tenant }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let resp = http
            .post(format!("{}/v1/instances", self.admin))
            .bearer_auth(&self.key)
            .json(&json!({ "tenant": tenant, "service": service, "hosts": [host] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    /// Stop the node with SIGTERM and return its whole log.
    pub fn stop(mut self) -> String {
        let status = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Served {
    /// A test that fails midway leaves no node running behind it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `attack` while a neighbour's `GET /` on `neighbour_host` is served in a
/// loop; panics if the neighbour gets a single error or fewer than `min_served`
/// answers. Returns the attack's output.
pub async fn neighbour_unharmed<T>(
    node: &TestNode,
    neighbour_host: &str,
    min_served: usize,
    attack: impl std::future::Future<Output = T>,
) -> T {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let neighbour = {
        let (http, addr, stop, served) = (node.http.clone(), node.ingress(), stop.clone(), served.clone());
        let host = neighbour_host.to_string();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = http
                    .get(format!("http://{addr}/"))
                    .header("host", &host)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::OK => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        })
    };
    // Let the neighbour get going first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let output = attack.await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let failures = neighbour.await.unwrap();
    assert!(failures.is_empty(), "the neighbour must not fail during the attack: {failures:?}");
    let served = served.load(Ordering::Relaxed);
    assert!(served >= min_served, "the neighbour must keep being served during {elapsed:?}, got {served} responses");
    output
}

/// The value of the sample line of `/metrics` text starting with `series`
/// (labels included).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}
