//! The seed's service B: a task tracker keeping its tasks in the instance's own
//! database. `POST /users` needs `tasks.addUsers` and `POST /tasks/ID/run` needs
//! `tasks.runTasks` (checked by Wharf); listing and creating tasks is open.

use wharf_sdk::sql::{self, Value};
use wharf_sdk::{json, status, Error, Params, Request, Response, Router};

/// The schema, created on first use. (Versioned migrations arrive with jobs.)
fn schema() -> wharf_sdk::Result<()> {
    sql::batch(&[
        ("CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'todo')", vec![]),
        ("CREATE TABLE IF NOT EXISTS members (email TEXT PRIMARY KEY)", vec![]),
    ])?;
    Ok(())
}

fn handle(req: Request) -> Response {
    if let Err(e) = schema() {
        return wharf_sdk::IntoResponse::into_response(e);
    }
    Router::new()
        .get("/tasks", list_tasks)
        .post("/tasks", create_task)
        .get("/tasks/:id", get_task)
        .post("/tasks/:id/run", run_task)
        .post("/users", add_user)
        .handle(&req)
}

fn list_tasks(_: &Request, _: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT id, title, state FROM tasks ORDER BY id", &[])?;
    Ok(Response::json(&json!({ "tasks": rows.to_json() })))
}

fn create_task(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let title = body.get("title").and_then(|t| t.as_str()).filter(|t| !t.trim().is_empty());
    let title = title.ok_or_else(|| Error::bad_request("send {\"title\": \"...\"}"))?;
    sql::execute("INSERT INTO tasks (title) VALUES (?1)", &[title.into()])?;
    let id = sql::query("SELECT last_insert_rowid()", &[])?.rows[0][0].as_integer().unwrap_or(0);
    Ok(Response::json(&json!({ "id": id, "title": title, "state": "todo" })).with_status(status::CREATED))
}

fn task_id(p: &Params) -> Result<i64, Error> {
    p.get("id").and_then(|id| id.parse().ok()).ok_or_else(|| Error::bad_request("task ids are numbers"))
}

fn get_task(_: &Request, p: &Params) -> wharf_sdk::Result {
    let rows = sql::query("SELECT id, title, state FROM tasks WHERE id = ?1", &[Value::Integer(task_id(p)?)])?;
    let task = rows.to_json().into_iter().next().ok_or_else(|| Error::not_found("no such task"))?;
    Ok(Response::json(&task))
}

fn run_task(_: &Request, p: &Params) -> wharf_sdk::Result {
    let id = task_id(p)?;
    if sql::execute("UPDATE tasks SET state = 'running' WHERE id = ?1", &[Value::Integer(id)])? == 0 {
        return Err(Error::not_found("no such task"));
    }
    Ok(Response::json(&json!({ "running": id })).with_status(status::ACCEPTED))
}

fn add_user(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json().unwrap_or_default();
    let email = body.get("email").and_then(|e| e.as_str()).unwrap_or("someone@example.com");
    sql::execute("INSERT OR IGNORE INTO members (email) VALUES (?1)", &[email.into()])?;
    Ok(Response::json(&json!({ "added": email })).with_status(status::CREATED))
}

wharf_sdk::service!(handle);
