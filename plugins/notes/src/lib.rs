//! Notes, in Rust: the twin of the Python (`plugins/python/notes`) and JavaScript
//! (`plugins/js/notes`) examples, answering the same requests the same way (the
//! end-to-end suite runs one test on all three). Its table comes from its
//! migrations and is filled by its seeder; `POST /notes` needs `notes.write`
//! (checked by Wharf, and by the handler for the message); `GET /stats` belongs to
//! the `stats` module; a key-value counter counts reads; `tally` is a job queued
//! by a request and `digest` one on the manifest's schedule.

use wharf_sdk::jobs::{self, Job};
use wharf_sdk::sql::{self, Dialect, Value};
use wharf_sdk::{features, identity, json, kv, status, Error, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", hello)
        .get("/notes", list)
        .post("/notes", write)
        .get("/notes/:id", note)
        .get("/me", me)
        .get("/stats", stats)
        .post("/tally", tally)
        .get("/tally", tallied)
        .get("/digest", digested)
        .handle(&req)
}

fn hello(_: &Request, _: &Params) -> wharf_sdk::Result {
    let site = features::setting("site-name").unwrap_or_else(|| "Wharf".into());
    Ok(Response::text(format!("Hello from {site} in Rust!\n")))
}

fn list(_: &Request, _: &Params) -> wharf_sdk::Result {
    kv::increment("reads", 1)?;
    let rows = sql::query("SELECT id, author, body FROM notes ORDER BY id", &[])?;
    Ok(Response::json(&rows.to_json()))
}

fn note(_: &Request, p: &Params) -> wharf_sdk::Result {
    let id: i64 =
        p.get("id").and_then(|id| id.parse().ok()).ok_or_else(|| Error::bad_request("a note's id is a number"))?;
    let rows = sql::query("SELECT id, author, body FROM notes WHERE id = ?1", &[Value::Integer(id)])?;
    let note = rows.to_json().into_iter().next().ok_or_else(|| Error::not_found(format!("no note {id}")))?;
    Ok(Response::json(&note))
}

fn write(req: &Request, _: &Params) -> wharf_sdk::Result {
    // Wharf lets only callers granted notes.write reach this route; the check
    // here is for a route the manifest does not guard.
    let user = identity::caller().ok_or_else(|| Error::new(status::UNAUTHORIZED, "sign in first"))?;
    if !identity::allowed("write") {
        return Err(Error::new(status::FORBIDDEN, "you need the write permission"));
    }
    let body: serde_json::Value = req.json()?;
    let text = body.get("body").and_then(|b| b.as_str()).filter(|b| !b.is_empty());
    let text = text.ok_or_else(|| Error::bad_request("send {\"body\": \"...\"}"))?;
    sql::execute("INSERT INTO notes (author, body) VALUES (?1, ?2)", &[user.email.as_str().into(), text.into()])?;
    let rows = sql::query("SELECT max(id) AS id FROM notes WHERE author = ?1", &[user.email.as_str().into()])?;
    let id = rows.rows.first().and_then(|r| r[0].as_integer());
    Ok(Response::json(&json!({ "id": id, "author": user.email })).with_status(status::CREATED))
}

fn me(_: &Request, _: &Params) -> wharf_sdk::Result {
    let caller = identity::caller().map(|u| u.email);
    Ok(Response::json(&json!({ "caller": caller, "can_write": identity::allowed("write") })))
}

fn count_notes() -> wharf_sdk::Result<i64> {
    let rows = sql::query("SELECT count(*) AS n FROM notes", &[])?;
    Ok(rows.rows.first().and_then(|r| r[0].as_integer()).unwrap_or(0))
}

fn stats(_: &Request, _: &Params) -> wharf_sdk::Result {
    let reads: i64 = kv::get_string("reads")?.and_then(|r| r.parse().ok()).unwrap_or(0);
    let dialect = match sql::dialect() {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
    };
    Ok(Response::json(
        &json!({ "notes": count_notes()?, "reads": reads, "dialect": dialect, "modules": features::modules() }),
    ))
}

fn tally(req: &Request, _: &Params) -> wharf_sdk::Result {
    let mut job = jobs::Enqueue::new("tally");
    if let Some(key) = req.query_param("key") {
        job = job.key(&key);
    }
    Ok(Response::json(&json!({ "job": job.send()? })).with_status(status::ACCEPTED))
}

fn tallied(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::json(&json!({ "tally": kv::get_string("tally")? })))
}

fn digested(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::json(&json!({ "digest": kv::get_string("digest")? })))
}

/// `tally` counts the notes into the key-value store; `digest` (every minute,
/// from the manifest's schedule) counts them by author. A job sees the
/// instance's database and key-value store, and no caller.
fn run_job(job: Job) -> Result<(), String> {
    run(&job).map_err(|e| e.to_string())
}

fn run(job: &Job) -> Result<(), Error> {
    match job.kind.as_str() {
        "tally" => {
            let line = format!("{} notes (job {} v{}, attempt {})", count_notes()?, job.kind, job.version, job.attempt);
            kv::set("tally", line.as_bytes(), None)?;
        }
        "digest" => {
            let rows = sql::query("SELECT author, count(*) AS n FROM notes GROUP BY author ORDER BY author", &[])?;
            let parts: Vec<String> = rows
                .rows
                .iter()
                .map(|r| format!("{}: {}", r[0].as_text().unwrap_or(""), r[1].as_integer().unwrap_or(0)))
                .collect();
            kv::set("digest", parts.join(", ").as_bytes(), None)?;
        }
        kind => return Err(Error::internal(format!("this version runs no job of kind {kind}"))),
    }
    Ok(())
}

/// Once per new instance, after its first migrations: its settings are readable.
fn welcome() -> Result<(), String> {
    seed().map_err(|e| e.to_string())
}

fn seed() -> Result<(), Error> {
    let site = features::setting("site-name").unwrap_or_else(|| "your notes".into());
    sql::execute(
        "INSERT INTO notes (author, body) VALUES (?1, ?2)",
        &["wharf".into(), format!("Welcome to {site}").into()],
    )?;
    Ok(())
}

wharf_sdk::service!(handle);
wharf_sdk::worker!(run_job, welcome);
