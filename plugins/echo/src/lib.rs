//! A small service showing routing, query strings, request bodies, JSON and
//! status codes with wharf-sdk.

use wharf_sdk::{json, status, Error, Params, Request, Response, Router};

fn handle(req: Request) -> Response {
    Router::new()
        .get("/", index)
        .get("/hello/:name", hello)
        .get("/greet", greet)
        .post("/echo", echo)
        .post("/json", inspect_json)
        .get("/status/:code", with_status)
        .handle(&req)
}

fn index(_req: &Request, _: &Params) -> wharf_sdk::Result {
    Ok(Response::text(
        "echo: try GET /hello/NAME, GET /greet?name=NAME&lang=fr, POST /echo, POST /json, GET /status/CODE\n",
    ))
}

fn hello(_req: &Request, params: &Params) -> wharf_sdk::Result {
    let name = params.get("name").unwrap_or("stranger");
    Ok(Response::text(format!("Hello, {name}!\n")))
}

fn greet(req: &Request, _: &Params) -> wharf_sdk::Result {
    let name = req.query_param("name").ok_or_else(|| Error::bad_request("missing ?name="))?;
    let greeting = match req.query_param("lang").as_deref() {
        None | Some("en") => "Hello",
        Some("fr") => "Bonjour",
        Some("de") => "Hallo",
        Some(other) => return Err(Error::bad_request(format!("unknown lang {other:?}; use en, fr or de"))),
    };
    Ok(Response::json(&json!({ "greeting": format!("{greeting}, {name}!") })))
}

fn echo(req: &Request, _: &Params) -> wharf_sdk::Result {
    let content_type = req.header("content-type").unwrap_or("application/octet-stream");
    Ok(Response::new(status::OK).with_header("content-type", content_type).with_body(req.body().to_vec()))
}

fn inspect_json(req: &Request, _: &Params) -> wharf_sdk::Result {
    let value: serde_json::Value = req.json()?;
    let object = value.as_object().ok_or_else(|| Error::new(422, "expected a JSON object"))?;
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort();
    Ok(Response::json(&json!({ "keys": keys, "received": value })).with_status(status::CREATED))
}

fn with_status(_req: &Request, params: &Params) -> wharf_sdk::Result {
    let code: u16 = params
        .get("code")
        .and_then(|c| c.parse().ok())
        .filter(|c| (200..=599).contains(c))
        .ok_or_else(|| Error::bad_request("the status must be a number from 200 to 599"))?;
    Ok(Response::text(format!("status {code}\n")).with_status(code))
}

wharf_sdk::service!(handle);
