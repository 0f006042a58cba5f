//! The seed's service A: a small forum. Adding and removing users are guarded by
//! the `addUsers` and `removeUsers` permissions its wharf.toml declares; the host
//! checks them, so the code here does not. (Its data moves to the instance
//! database when Wharf gives services one.)

use wharf_sdk::{features, identity, json, status, Error, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", home)
        .get("/polls", |_: &Request, _: &Params| Ok(Response::json(&json!({ "polls": ["Tabs or spaces?"] }))))
        .get("/search", |req: &Request, _: &Params| {
            let q = req.query_param("q").unwrap_or_default();
            Ok(Response::json(&json!({ "query": q, "results": [] })))
        })
        .get("/users", |_: &Request, _: &Params| Ok(Response::json(&json!({ "users": ["ada", "grace"] }))))
        .get("/me", me)
        .post("/users", add_user)
        .delete("/users/:name", |_: &Request, p: &Params| {
            Ok(Response::json(&json!({ "removed": p.get("name") })).with_status(status::OK))
        })
        .handle(&req)
}

/// The home page: the tenant's site name and language, and the enabled modules.
fn home(_: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::json(&json!({
        "forum": features::setting("site-name").unwrap_or_else(|| "A Wharf forum".into()),
        "language": features::setting("language").unwrap_or_else(|| "en".into()),
        "modules": features::modules(),
        "routes": ["GET /users", "GET /me", "POST /users", "DELETE /users/NAME", "GET /polls", "GET /search"],
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

fn add_user(req: &Request, _: &Params) -> wharf_sdk::Result {
    let body: serde_json::Value = req.json()?;
    let name =
        body.get("name").and_then(|n| n.as_str()).ok_or_else(|| Error::bad_request("send {\"name\": \"...\"}"))?;
    Ok(Response::json(&json!({ "added": name })).with_status(status::CREATED))
}

wharf_sdk::service!(handle);
