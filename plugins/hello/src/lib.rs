//! The smallest Wharf service: answers every request with a greeting.

use wharf_sdk::{Request, Response};

fn handle(_req: Request) -> Response {
    Response::text("Hello from Wharf!\n")
}

wharf_sdk::service!(handle);
