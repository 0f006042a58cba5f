//! The seed's service A: a small forum keeping its users, posts and polls in the
//! instance's own database. Adding and removing users are guarded by the
//! `addUsers` and `removeUsers` permissions its wharf.toml declares (Wharf checks
//! them before this code runs); the `polls` and `search` modules switch on extra
//! features per instance; the site name and language are instance settings.

use wharf_sdk::sql::{self, Value};
use wharf_sdk::{features, identity, json, status, Error, Params, Request, Response, Router};

/// A new forum's first post, written once when its instance is set up (after
/// the migrations in `migrations/` made its tables), in the site's name.
fn seed() -> Result<(), String> {
    let site = features::setting("site-name").unwrap_or_else(|| "A Wharf forum".into());
    sql::execute(
        "INSERT INTO posts (title, body) VALUES (?1, ?2)",
        &[
            format!("Welcome to {site}").into(),
            "This is the first post. Say hello, start a topic, or run a poll.".into(),
        ],
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The forum queues no jobs of its own; it exports the worker for its seeder.
fn run_job(job: wharf_sdk::jobs::Job) -> Result<(), String> {
    Err(format!("the forum runs no {} jobs", job.kind))
}

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", home)
        .get("/me", me)
        .get("/users", list_users)
        .post("/users", add_user)
        .delete("/users/:name", remove_user)
        .get("/posts", list_posts)
        .post("/posts", add_post)
        // Module `polls` (the manifest ties these routes to it).
        .get("/polls", list_polls)
        .post("/polls", add_poll)
        // Module `search`.
        .get("/search", search)
        .handle(&req)
}

/// The home page: the tenant's site name and language, and the enabled modules.
fn home(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::json(&json!({
        "forum": features::setting("site-name").unwrap_or_else(|| "A Wharf forum".into()),
        "language": features::setting("language").unwrap_or_else(|| "en".into()),
        "modules": features::modules(),
        "routes": ["GET /users", "GET /me", "POST /users", "DELETE /users/NAME", "GET|POST /posts", "GET|POST /polls", "GET /search?q="],
    })))
}

/// Who the forum thinks is calling, and what they may do here.
fn me(req: &Request, _: &Params) -> wharf_sdk::Result {
    let user = identity::caller().map(|u| json!({ "user_id": u.user_id, "email": u.email }));
    Ok(Response::json(&json!({
        "user": user,
        "may_add_users": identity::allowed("addUsers"),
        "may_remove_users": identity::allowed("removeUsers"),
        // Wharf removes its credentials before the request reaches the service.
        "saw_authorization_header": req.header("authorization").is_some(),
    })))
}

fn list_users(_: &Request, _: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT name FROM users ORDER BY name", &[])?;
    let names: Vec<&str> = rows.rows.iter().filter_map(|r| r[0].as_text()).collect();
    Ok(Response::json(&json!({ "users": names })))
}

fn add_user(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let name = body.get("name").and_then(|n| n.as_str()).filter(|n| !n.trim().is_empty());
    let name = name.ok_or_else(|| Error::bad_request("send {\"name\": \"...\"}"))?;
    sql::execute("INSERT INTO users (name) VALUES (?1) ON CONFLICT DO NOTHING", &[name.into()])?;
    Ok(Response::json(&json!({ "added": name })).with_status(status::CREATED))
}

fn remove_user(_: &Request, p: &Params) -> wharf_sdk::Result {
    let name = p.get("name").unwrap_or_default();
    let existed = sql::execute("DELETE FROM users WHERE name = ?1", &[name.into()])? > 0;
    Ok(Response::json(&json!({ "removed": name, "existed": existed })).with_status(status::OK))
}

fn list_posts(_: &Request, _: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT id, title, body FROM posts ORDER BY id DESC LIMIT 100", &[])?;
    Ok(Response::json(&json!({ "posts": rows.to_json() })))
}

fn add_post(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let field = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(title), Some(text)) = (field("title"), field("body")) else {
        return Err(Error::bad_request("send {\"title\": \"...\", \"body\": \"...\"}"));
    };
    sql::execute("INSERT INTO posts (title, body) VALUES (?1, ?2)", &[title.clone().into(), text.into()])?;
    Ok(Response::json(&json!({ "title": title })).with_status(status::CREATED))
}

fn list_polls(_: &Request, _: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT id, question FROM polls ORDER BY id", &[])?;
    Ok(Response::json(&json!({ "polls": rows.to_json() })))
}

fn add_poll(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let question = body
        .get("question")
        .and_then(|q| q.as_str())
        .ok_or_else(|| Error::bad_request("send {\"question\": \"...\"}"))?;
    sql::execute("INSERT INTO polls (question) VALUES (?1)", &[question.into()])?;
    Ok(Response::json(&json!({ "question": question })).with_status(status::CREATED))
}

fn search(req: &Request, _: &Params) -> wharf_sdk::Result {
    let q = req.query_param("q").unwrap_or_default();
    // instr() / strpos() match the text literally: no LIKE wildcards from user input.
    let find = sql::pick("instr", "strpos");
    let rows = sql::query(
        &format!("SELECT id, title FROM posts WHERE {find}(lower(title || ' ' || body), lower(?1)) > 0 ORDER BY id DESC LIMIT 20"),
        &[Value::Text(q.clone())],
    )?;
    Ok(Response::json(&json!({ "query": q, "results": rows.to_json() })))
}

wharf_sdk::service!(handle);
wharf_sdk::worker!(run_job, seed);
