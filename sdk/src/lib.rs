//! # wharf-sdk
//!
//! Write a Wharf service as a plain function from a
//! [`Request`] to a [`Response`]. The SDK turns it into a standard
//! `wasi:http/proxy` component: it reads the request (body included), calls your
//! function, and writes the response.
//!
//! ## A complete service
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wharf-sdk = { path = "../sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use serde::Deserialize;
//! use wharf_sdk::{json, Error, Params, Request, Response, Router};
//!
//! #[derive(Deserialize)]
//! struct NewNote {
//!     title: String,
//! }
//!
//! fn handle(req: Request) -> Response {
//!     Router::new()
//!         .get("/", |_req: &Request, _: &Params| Ok(Response::text("hello\n")))
//!         .get("/hello/:name", |_req: &Request, params: &Params| {
//!             Ok(Response::text(format!("hello, {}!\n", params.get("name").unwrap_or("you"))))
//!         })
//!         .get("/search", |req: &Request, _: &Params| {
//!             let q = req.query_param("q").ok_or_else(|| Error::bad_request("add ?q=..."))?;
//!             Ok(Response::json(&json!({ "query": q })))
//!         })
//!         .post("/notes", |req: &Request, _: &Params| {
//!             let note: NewNote = req.json()?; // invalid JSON answers 400
//!             Ok(Response::json(&json!({ "title": note.title })).with_status(201))
//!         })
//!         .handle(&req)
//! }
//!
//! wharf_sdk::service!(handle);
//! ```
//!
//! `wharf.toml` beside it:
//!
//! ```toml
//! [service]
//! name = "greeter"
//! version = "0.1.0"
//! component = "target/wasm32-wasip2/release/greeter.wasm"
//! ```
//!
//! Build and publish:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! wharf publish .
//! ```
//!
//! Handlers return [`Result`]: an [`Error`] becomes a JSON error response with its
//! status (`{"error": "..."}`), so `?` works on anything that converts into one.
//!
//! ## Who is calling
//!
//! Routes your manifest guards with `[[permissions]]` are checked by Wharf before
//! your code runs. For finer checks, [`identity::caller`] tells who is calling and
//! [`identity::allowed`] whether they hold one of your permissions:
//!
//! ```no_run
//! use wharf_sdk::{identity, Error, Request, Response};
//!
//! fn delete_post(req: &Request, author: &str) -> wharf_sdk::Result {
//!     let me = identity::caller().ok_or_else(|| Error::new(401, "log in first"))?;
//!     if me.email != author && !identity::allowed("moderate") {
//!         return Err(Error::new(403, "only the author or a moderator may delete this"));
//!     }
//!     Ok(Response::new(204))
//! }
//! ```

pub mod features;
pub mod identity;
pub mod jobs;
pub mod kv;
mod router;
pub mod sql;

#[doc(hidden)]
pub mod bindings {
    // The platform's WIT (wharf:platform) lives at the repository root, beside the
    // SDK. The world's `worker` export is only emitted by `worker!`: a service
    // without jobs exports nothing but its HTTP handler.
    wit_bindgen::generate!({
        path: "../wit",
        world: "wharf:platform/worker-service",
        pub_export_macro: true,
        export_macro_name: "export_worker",
        default_bindings_module: "wharf_sdk::bindings",
    });
}

use std::fmt;

pub use router::{Params, Router};
pub use serde_json::json;

/// The largest request body the SDK reads; larger bodies answer 413.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other method, as sent.
    Other(String),
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(m) => m,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An incoming request, body included.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    /// Build a request by hand (for tests of your handlers).
    pub fn new(method: Method, path_and_query: &str) -> Self {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        Self {
            method,
            path: if path.is_empty() { "/".into() } else { path.into() },
            query: query.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header (for tests).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// Set the body (for tests).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, without the query string (e.g. `/items/7`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, without `?` (empty if none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// Query parameters, percent-decoded, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        parse_form(&self.query)
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The first value of a header (names are case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header, names in lower case.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text; 400 if it is not.
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body).map_err(|_| Error::bad_request("the request body is not UTF-8 text"))
    }

    /// The body parsed as JSON; 400 with the parser's message if it does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if self.body.is_empty() {
            return Err(Error::bad_request("the request body is empty; send JSON"));
        }
        serde_json::from_slice(&self.body).map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `200 OK` with a `text/plain` body.
    pub fn text(body: impl Into<String>) -> Self {
        Self::new(status::OK).with_header("content-type", "text/plain; charset=utf-8").with_body(body.into())
    }

    /// `200 OK` with a `text/html` body.
    pub fn html(body: impl Into<String>) -> Self {
        Self::new(status::OK).with_header("content-type", "text/html; charset=utf-8").with_body(body.into())
    }

    /// `200 OK` with `value` serialized as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status::OK).with_header("content-type", "application/json").with_body(body),
            Err(e) => Error::internal(format!("failed to serialize the response: {e}")).into_response(),
        }
    }

    /// Replace the status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Add a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Replace the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Status codes by name.
pub mod status {
    pub const OK: u16 = 200;
    pub const CREATED: u16 = 201;
    pub const ACCEPTED: u16 = 202;
    pub const NO_CONTENT: u16 = 204;
    pub const MOVED_PERMANENTLY: u16 = 301;
    pub const FOUND: u16 = 302;
    pub const NOT_MODIFIED: u16 = 304;
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    pub const CONFLICT: u16 = 409;
    pub const PAYLOAD_TOO_LARGE: u16 = 413;
    pub const UNPROCESSABLE_ENTITY: u16 = 422;
    pub const TOO_MANY_REQUESTS: u16 = 429;
    pub const INTERNAL_SERVER_ERROR: u16 = 500;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// An error that answers the request with a status and a JSON message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error with any status.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(status::BAD_REQUEST, message)
    }
    /// 404: nothing here.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(status::NOT_FOUND, message)
    }
    /// 409: conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(status::CONFLICT, message)
    }
    /// 500: the service failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(status::INTERNAL_SERVER_ERROR, message)
    }
    /// The status this error answers with.
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::bad_request(format!("invalid JSON: {e}"))
    }
}

/// `Result` with the SDK's [`Error`]; handlers return `Result<Response>`.
pub type Result<T = Response, E = Error> = std::result::Result<T, E>;

/// Anything a handler may return.
pub trait IntoResponse {
    /// Turn it into the response to send.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Response::json(&json!({ "error": self.message })).with_status(self.status)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for std::result::Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(r) => r.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

/// Decode `a=1&b=x%20y` pairs (`+` is a space).
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decode `%XX` escapes and `+`; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Export `handler` as the component's `wasi:http/incoming-handler`.
///
/// `handler` is a function `fn(Request) -> impl IntoResponse`.
#[macro_export]
macro_rules! service {
    ($handler:path) => {
        struct __WharfService;

        impl $crate::__private::Guest for __WharfService {
            fn handle(
                request: $crate::__private::IncomingRequest,
                out: $crate::__private::ResponseOutparam,
            ) {
                $crate::__private::run(request, out, $handler)
            }
        }

        $crate::__private::wasip2::http::proxy::export!(__WharfService with_types_in $crate::__private::wasip2);
    };
}

/// Export `run` (and optionally a seeder) as the component's
/// `wharf:platform/worker`: `run` is `fn(jobs::Job) -> Result<(), String>`, the
/// seeder `fn() -> Result<(), String>` and runs once per instance, after its
/// first migrations. See [`jobs`].
#[macro_export]
macro_rules! worker {
    ($run:path) => {
        $crate::worker!($run, $crate::jobs::no_seed);
    };
    ($run:path, $seed:path) => {
        struct __WharfWorker;

        impl $crate::bindings::exports::wharf::platform::worker::Guest for __WharfWorker {
            fn run(job: $crate::bindings::exports::wharf::platform::worker::Job) -> ::core::result::Result<(), String> {
                $run($crate::jobs::Job::from_guest(job))
            }

            fn seed() -> ::core::result::Result<(), String> {
                $seed()
            }
        }

        $crate::bindings::export_worker!(__WharfWorker with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wasip2;
    pub use wasip2::exports::http::incoming_handler::Guest;
    pub use wasip2::http::types::{IncomingRequest, ResponseOutparam};

    use crate::{Error, IntoResponse, Method, Request, Response, MAX_BODY_BYTES};
    use wasip2::http::types::{Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingResponse};

    /// Read the request, call the handler, write the response.
    pub fn run<R: IntoResponse>(request: IncomingRequest, out: ResponseOutparam, handler: fn(Request) -> R) {
        let response = match read_request(request) {
            Ok(req) => handler(req).into_response(),
            Err(e) => e.into_response(),
        };
        send(out, response);
    }

    fn read_request(request: IncomingRequest) -> Result<Request, Error> {
        let method = match request.method() {
            WasiMethod::Get => Method::Get,
            WasiMethod::Head => Method::Head,
            WasiMethod::Post => Method::Post,
            WasiMethod::Put => Method::Put,
            WasiMethod::Patch => Method::Patch,
            WasiMethod::Delete => Method::Delete,
            WasiMethod::Options => Method::Options,
            WasiMethod::Connect => Method::Other("CONNECT".into()),
            WasiMethod::Trace => Method::Other("TRACE".into()),
            WasiMethod::Other(m) => Method::Other(m),
        };
        let mut req = Request::new(method, &request.path_with_query().unwrap_or_else(|| "/".into()));
        req.headers = request.headers().entries();
        // A GET or HEAD without `content-length` has no body to read (wasi:http
        // hides `transfer-encoding`, so a chunked body looks like none: other
        // methods are always read), and none of the calls reading one takes.
        if may_have_body(&req.method, &req.headers) {
            let body = request.consume().map_err(|_| Error::internal("the request body was already read"))?;
            req.body = read_body(&body)?;
        }
        Ok(req)
    }

    pub(crate) fn may_have_body(method: &Method, headers: &[(String, Vec<u8>)]) -> bool {
        !matches!(method, Method::Get | Method::Head)
            || headers
                .iter()
                .any(|(name, value)| name.eq_ignore_ascii_case("content-length") && value.as_slice() != b"0")
    }

    fn read_body(body: &IncomingBody) -> Result<Vec<u8>, Error> {
        let stream = body.stream().map_err(|_| Error::internal("cannot open the request body"))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(Error::new(413, format!("the request body is larger than {MAX_BODY_BYTES} bytes")));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(_) => return Err(Error::bad_request("the request body could not be read")),
            }
        }
        Ok(bytes)
    }

    fn send(out: ResponseOutparam, response: Response) {
        let mut headers: Vec<(String, Vec<u8>)> =
            response.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        // The whole body is known: say its length, so it is not sent in chunks
        // (not where a response has no body by definition: 1xx, 204, 304).
        let bodiless = response.status < 200 || response.status == 204 || response.status == 304;
        if !bodiless && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length")) {
            headers.push(("content-length".into(), response.body.len().to_string().into_bytes()));
        }
        let (fields, status, body) = match Fields::from_list(&headers) {
            Ok(fields) => (fields, response.status, response.body),
            Err(e) => (
                Fields::new(),
                500,
                format!("{{\"error\":\"the service sent an invalid header: {e:?}\"}}").into_bytes(),
            ),
        };
        let outgoing = OutgoingResponse::new(fields);
        if outgoing.set_status_code(status).is_err() {
            let _ = outgoing.set_status_code(500);
        }
        let Ok(out_body) = outgoing.body() else { return };
        ResponseOutparam::set(out, Ok(outgoing));
        if let Ok(stream) = out_body.write() {
            // blocking_write_and_flush accepts at most 4096 bytes per call.
            for chunk in body.chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
            drop(stream);
        }
        let _ = OutgoingBody::finish(out_body, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let req = Request::new(Method::Get, "/search?q=a+b%21&x=1&empty=");
        assert_eq!(req.query_param("q").as_deref(), Some("a b!"));
        assert_eq!(req.query_param("empty").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn only_a_get_or_head_without_a_length_skips_reading_the_body() {
        use __private::may_have_body;
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
        };
        assert!(!may_have_body(&Method::Get, &h(&[("host", "x"), ("accept", "*/*")])));
        assert!(!may_have_body(&Method::Head, &h(&[("content-length", "0")])));
        assert!(may_have_body(&Method::Get, &h(&[("Content-Length", "12")])));
        // A chunked body has no content-length, and wasi:http hides its
        // transfer-encoding: every other method is read.
        assert!(may_have_body(&Method::Post, &h(&[])));
        assert!(may_have_body(&Method::Delete, &h(&[])));
    }

    #[test]
    fn errors_become_json_responses() {
        let r = Error::bad_request("nope").into_response();
        assert_eq!(r.status(), 400);
        assert_eq!(r.body(), br#"{"error":"nope"}"#);
    }
}
