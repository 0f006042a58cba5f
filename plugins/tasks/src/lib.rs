//! The seed's service B: a task tracker. `POST /users` needs `tasks.addUsers` and
//! `POST /tasks/ID/run` needs `tasks.runTasks`; listing tasks is open.

use wharf_sdk::{json, status, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/tasks", |_: &Request, _: &Params| {
            Ok(Response::json(&json!({ "tasks": [{ "id": 1, "title": "write docs" }] })))
        })
        .post("/users", |_: &Request, _: &Params| {
            Ok(Response::json(&json!({ "added": true })).with_status(status::CREATED))
        })
        .post("/tasks/:id/run", |_: &Request, p: &Params| {
            Ok(Response::json(&json!({ "running": p.get("id") })).with_status(status::ACCEPTED))
        })
        .handle(&req)
}

wharf_sdk::service!(handle);
