//! Routing by method and path pattern: `/items/:id` captures a segment,
//! `/files/*path` captures the rest. A path that matches with another method
//! answers 405 with `Allow`; no match answers 404.

use crate::{Error, IntoResponse, Method, Request, Response, Result};

/// Values captured from the path.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// A captured segment, percent-decoded.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type Handler<'a> = Box<dyn Fn(&Request, &Params) -> Result + 'a>;

enum Segment {
    Literal(String),
    Capture(String),
    Rest(String),
}

/// A routing table, built per request (it is cheap) or once.
#[derive(Default)]
pub struct Router<'a> {
    routes: Vec<(Method, Vec<Segment>, Handler<'a>)>,
}

impl<'a> Router<'a> {
    /// An empty table.
    pub fn new() -> Self {
        Self { routes: Vec::new() }
    }

    /// Add a route for any method.
    pub fn route(mut self, method: Method, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        let segments = split(pattern)
            .map(|s| {
                if let Some(name) = s.strip_prefix(':') {
                    Segment::Capture(name.to_string())
                } else if let Some(name) = s.strip_prefix('*') {
                    Segment::Rest(name.to_string())
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        self.routes.push((method, segments, Box::new(handler)));
        self
    }

    /// Add a `GET` route.
    pub fn get(self, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        self.route(Method::Get, pattern, handler)
    }

    /// Add a `POST` route.
    pub fn post(self, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        self.route(Method::Post, pattern, handler)
    }

    /// Add a `PUT` route.
    pub fn put(self, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        self.route(Method::Put, pattern, handler)
    }

    /// Add a `PATCH` route.
    pub fn patch(self, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        self.route(Method::Patch, pattern, handler)
    }

    /// Add a `DELETE` route.
    pub fn delete(self, pattern: &str, handler: impl Fn(&Request, &Params) -> Result + 'a) -> Self {
        self.route(Method::Delete, pattern, handler)
    }

    /// Dispatch `req` to the first matching route.
    pub fn handle(&self, req: &Request) -> Response {
        let mut allowed: Vec<&str> = Vec::new();
        for (method, pattern, handler) in &self.routes {
            let Some(params) = matches(pattern, req.path()) else { continue };
            let head_as_get = *req.method() == Method::Head && *method == Method::Get;
            if method == req.method() || head_as_get {
                return handler(req, &params).into_response();
            }
            allowed.push(method.as_str());
        }
        if allowed.is_empty() {
            return Error::not_found(format!("no route for {}", req.path())).into_response();
        }
        allowed.dedup();
        Error::new(405, format!("{} is not allowed here; use {}", req.method(), allowed.join(", ")))
            .into_response()
            .with_header("allow", &allowed.join(", "))
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(pattern: &[Segment], path: &str) -> Option<Params> {
    let parts: Vec<&str> = split(path).collect();
    let mut params = Params::default();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                let rest = parts.get(i..).unwrap_or(&[]).join("/");
                params.pairs.push((name.clone(), crate::percent_decode(&rest)));
                return Some(params);
            }
            Segment::Literal(lit) => {
                if parts.get(i) != Some(&lit.as_str()) {
                    return None;
                }
            }
            Segment::Capture(name) => {
                let value = parts.get(i)?;
                params.pairs.push((name.clone(), crate::percent_decode(value)));
            }
        }
    }
    (parts.len() == pattern.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Router<'static> {
        Router::new()
            .get("/", |_, _| Ok(Response::text("root")))
            .get("/items/:id", |_, p| Ok(Response::text(p.get("id").unwrap_or_default().to_string())))
            .post("/items", |_, _| Ok(Response::new(201)))
            .get("/files/*path", |_, p| Ok(Response::text(p.get("path").unwrap_or_default().to_string())))
    }

    #[test]
    fn routes_match_and_capture() {
        let app = app();
        assert_eq!(app.handle(&Request::new(Method::Get, "/")).body(), b"root");
        assert_eq!(app.handle(&Request::new(Method::Get, "/items/a%20b")).body(), b"a b");
        assert_eq!(app.handle(&Request::new(Method::Post, "/items")).status(), 201);
        assert_eq!(app.handle(&Request::new(Method::Get, "/files/a/b/c")).body(), b"a/b/c");
    }

    #[test]
    fn misses_answer_404_and_wrong_methods_405() {
        let app = app();
        assert_eq!(app.handle(&Request::new(Method::Get, "/nope")).status(), 404);
        let r = app.handle(&Request::new(Method::Delete, "/items"));
        assert_eq!(r.status(), 405);
        assert!(r.headers().iter().any(|(k, v)| k == "allow" && v == "POST"));
    }
}
