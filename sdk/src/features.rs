//! The instance's enabled modules and settings: the `wharf:platform/features`
//! interface. A tenant enables modules your manifest declares (`[[modules]]`) and
//! sets settings (site name, language, ...) per instance; changes reach the next
//! request. Routes a module lists in the manifest answer 404 before your code runs
//! when the module is off, so checking here is for behaviour inside shared routes.
//!
//! ```no_run
//! use wharf_sdk::{features, Response};
//!
//! fn home() -> Response {
//!     let name = features::setting("site-name").unwrap_or_else(|| "My forum".into());
//!     let polls = if features::enabled("polls") { " · polls" } else { "" };
//!     Response::text(format!("{name}{polls}\n"))
//! }
//! ```

use crate::bindings::wharf::platform::features as wit;

/// Whether module `id` is enabled for this instance.
pub fn enabled(id: &str) -> bool {
    wit::is_enabled(id)
}

/// The enabled modules' ids.
pub fn modules() -> Vec<String> {
    wit::enabled_modules()
}

/// One setting, if set.
pub fn setting(key: &str) -> Option<String> {
    wit::setting(key)
}

/// Every setting, sorted by key.
pub fn settings() -> Vec<(String, String)> {
    wit::settings()
}
