//! {name}: a Wharf service in Rust (made by `wharf new {name} --lang rust`). Its
//! routes, the instance's own SQL table, a permission, a key-value entry and a
//! job; see README.md to build and publish it.

use wharf_sdk::jobs::{self, Job};
use wharf_sdk::sql;
use wharf_sdk::{identity, json, kv, status, Error, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", hello)
        .get("/items", items)
        .post("/items", add)
        .post("/count", count)
        .get("/count", counted)
        .handle(&req)
}

fn hello(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::text("Hello from {name}!\n"))
}

fn items(_: &Request, _: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT id, name, added_by FROM items ORDER BY id", &[])?;
    Ok(Response::json(&rows.to_json()))
}

fn add(req: &Request, _: &Params) -> wharf_sdk::Result {
    // The manifest guards this route with {name}.write: Wharf checks it first.
    let user = identity::caller().ok_or_else(|| Error::new(401, "sign in first"))?;
    let body: serde_json::Value = req.json()?;
    let name = body.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| Error::bad_request("send {\"name\": \"...\"}"))?;
    sql::execute("INSERT INTO items (name, added_by) VALUES (?1, ?2)", &[name.into(), user.email.as_str().into()])?;
    Ok(Response::json(&json!({ "name": name, "added_by": user.email })).with_status(status::CREATED))
}

fn count(_: &Request, _: &Params) -> wharf_sdk::Result {
    let job = jobs::Enqueue::new("count").send()?;
    Ok(Response::json(&json!({ "job": job })).with_status(status::ACCEPTED))
}

fn counted(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::json(&json!({ "count": kv::get_string("count")? })))
}

/// Background work: `count` counts the items into the key-value store.
fn run_job(job: Job) -> Result<(), String> {
    match (job.kind.as_str(), job.version) {
        ("count", 1) => {
            let rows = sql::query("SELECT count(*) FROM items", &[]).map_err(|e| e.to_string())?;
            let n = rows.rows.first().and_then(|r| r[0].as_integer()).unwrap_or(0);
            kv::set("count", n.to_string().as_bytes(), None).map_err(|e| e.to_string())
        }
        (kind, version) => Err(format!("{name} runs no {kind} v{version} jobs")),
    }
}

wharf_sdk::service!(handle);
wharf_sdk::worker!(run_job);
