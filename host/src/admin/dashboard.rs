//! The dashboard: one page, served by every node's admin listener, that shows
//! the fleet, versions on each node, instances, the queue, usage and invoices,
//! with the stage / promote / roll back buttons. The page is static and holds
//! no data: its script asks the admin API with the caller's bearer token (kept
//! in the tab's session storage, never in a cookie, so no other site can act
//! with it) and builds what it shows from text nodes. A strict Content Security
//! Policy allows only the page's own script and style. `/docs` is the admin
//! API's reference, drawn the same way from `/v1/openapi.json`.

use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::HeaderValue;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
/// uPlot 1.6.32 (MIT, `dashboard/vendor/LICENSE-uPlot`), from the npm registry.
const UPLOT_SCRIPT: &str = include_str!("dashboard/vendor/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("dashboard/vendor/uPlot.min.css");
const DOCS_INDEX: &str = include_str!("docs/index.html");
const DOCS_SCRIPT: &str = include_str!("docs/docs.js");
const DOCS_STYLE: &str = include_str!("docs/docs.css");

/// What the page may load: its own script, style and API, nothing inline,
/// nothing framed, no form posted elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes (`/` leads to it).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/dashboard/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route(
            "/dashboard/vendor/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_SCRIPT) }),
        )
        .route("/dashboard/vendor/uPlot.min.css", get(|| async { asset("text/css; charset=utf-8", UPLOT_STYLE) }))
        // The admin API's reference for people, drawn from `/v1/openapi.json`.
        .route("/docs", get(|| async { asset("text/html; charset=utf-8", DOCS_INDEX) }))
        .route("/docs/docs.js", get(|| async { asset("text/javascript; charset=utf-8", DOCS_SCRIPT) }))
        .route("/docs/docs.css", get(|| async { asset("text/css; charset=utf-8", DOCS_STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Revalidated on every load: a node updated in place serves its new page.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
