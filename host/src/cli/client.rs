//! A small client for the admin API.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::registry::Manifest;

pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("failed to build HTTP client")?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), http, token })
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// DELETE with a JSON body (a confirmation).
    pub async fn delete_with(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path)).json(body)).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// Every item of a paginated list: pages of `key` followed by their `next` cursor.
    pub async fn get_all(&self, path: &str, key: &str) -> anyhow::Result<Value> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &after {
                Some(cursor) => format!("{path}{sep}limit=1000&after={}", encode(cursor)),
                None => format!("{path}{sep}limit=1000"),
            };
            let page = self.get(&url).await?;
            items.extend(page.get(key).and_then(Value::as_array).cloned().unwrap_or_default());
            match page.get("next").and_then(Value::as_str) {
                Some(next) if after.as_deref() != Some(next) => after = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(serde_json::json!({ key: items }))
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    pub async fn publish(
        &self,
        service: &str,
        manifest: String,
        component: Vec<u8>,
        activate: bool,
    ) -> anyhow::Result<Value> {
        let form = reqwest::multipart::Form::new()
            .part("manifest", reqwest::multipart::Part::text(manifest).file_name("wharf.toml"))
            .part(
                "component",
                reqwest::multipart::Part::bytes(component).file_name("component.wasm").mime_str("application/wasm")?,
            );
        let url = self.url(&format!("/v1/services/{service}/versions?activate={activate}"));
        self.send(self.http.post(url).multipart(form)).await
    }

    /// GET bytes (an export): the body, or the API's error.
    pub async fn download(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self.respond(self.http.get(self.url(path))).await?;
        if response.status().is_success() {
            return Ok(response.bytes().await.context("failed to read the download")?.to_vec());
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(self.error(status, &parse(text)))
    }

    /// POST bytes (an import).
    pub async fn upload(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<Value> {
        let request = self.http.post(self.url(path)).header("content-type", "application/x-tar").body(bytes);
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send `request` with the credential.
    async fn respond(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {} (is `wharf serve` running?)", self.base))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = self.respond(request).await?;
        let status = response.status();
        let text = response.text().await.context("failed to read the admin API's answer")?;
        let value = parse(text);
        if status.is_success() {
            return Ok(value);
        }
        Err(self.error(status, &value))
    }

    /// The API's error answer, with what to do about a missing credential.
    fn error(&self, status: reqwest::StatusCode, value: &Value) -> anyhow::Error {
        let message =
            value.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| value.to_string());
        if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            return anyhow::anyhow!("{message} ({status}); run `wharf login EMAIL` or set WHARF_TOKEN");
        }
        anyhow::anyhow!("{message} ({status})")
    }
}

/// An answer's body: JSON, or its text.
fn parse(text: String) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Read `path` (a directory holding wharf.toml, or the manifest itself).
/// Read a service's `wharf.toml` (a directory or the file), with its
/// migration files read into it, as `wharf publish` sends it.
pub fn read_manifest(path: &Path) -> anyhow::Result<(PathBuf, String, Manifest)> {
    let manifest_path = if path.is_dir() { path.join("wharf.toml") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&manifest_path).with_context(|| format!("failed to read {manifest_path:?}"))?;
    let text = inline_migrations(&manifest_path, &text)?;
    let manifest = Manifest::parse(&text).with_context(|| format!("in {manifest_path:?}"))?;
    Ok((manifest_path, text, manifest))
}

/// The manifest with each migration's `sqlite_file` / `postgres_file` read
/// (relative to the manifest) into `sqlite` / `postgres`: the host stores the
/// SQL with the version.
fn inline_migrations(manifest_path: &Path, text: &str) -> anyhow::Result<String> {
    let mut doc: toml::Table = match toml::from_str(text) {
        Ok(doc) => doc,
        // Manifest::parse says what is wrong.
        Err(_) => return Ok(text.to_string()),
    };
    let Some(toml::Value::Array(migrations)) = doc.get_mut("migrations") else { return Ok(text.to_string()) };
    let dir = manifest_path.parent().unwrap_or_else(|| Path::new("."));
    let mut changed = false;
    for migration in migrations.iter_mut() {
        let Some(table) = migration.as_table_mut() else { continue };
        for dialect in ["sqlite", "postgres"] {
            let key = format!("{dialect}_file");
            if let Some(toml::Value::String(file)) = table.remove(&key) {
                let path = dir.join(&file);
                let sql =
                    std::fs::read_to_string(&path).with_context(|| format!("failed to read migration {path:?}"))?;
                table.insert(dialect.to_string(), toml::Value::String(sql));
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(text.to_string());
    }
    toml::to_string(&doc).context("failed to write the manifest with its migrations")
}
