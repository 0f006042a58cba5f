//! The seed's service A: a small forum. Adding and removing users are guarded by
//! the `addUsers` and `removeUsers` permissions its wharf.toml declares; the host
//! checks them, so the code here does not. (Its data moves to the instance
//! database when Wharf gives services one.)

use wharf_sdk::{json, status, Error, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", |_: &Request, _: &Params| Ok(Response::text("forum: GET /users, POST /users, DELETE /users/NAME\n")))
        .get("/users", |_: &Request, _: &Params| Ok(Response::json(&json!({ "users": ["ada", "grace"] }))))
        .post("/users", add_user)
        .delete("/users/:name", |_: &Request, p: &Params| {
            Ok(Response::json(&json!({ "removed": p.get("name") })).with_status(status::OK))
        })
        .handle(&req)
}

fn add_user(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let name =
        body.get("name").and_then(|n| n.as_str()).ok_or_else(|| Error::bad_request("send {\"name\": \"...\"}"))?;
    Ok(Response::json(&json!({ "added": name })).with_status(status::CREATED))
}

wharf_sdk::service!(handle);
