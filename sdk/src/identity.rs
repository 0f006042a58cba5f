//! Who is calling: the `wharf:platform/identity` interface.
//!
//! Wharf resolves the request's credential (a Wharf session token or API key sent
//! as `Authorization: Bearer ...`) before your code runs and removes it from the
//! request, so your service never handles it. These functions work only inside
//! Wharf (a component that never calls them does not import the interface, and
//! runs under any wasi:http host).

use crate::bindings::wharf::platform::identity as wit;

/// An authenticated member of the instance's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable user id.
    pub user_id: String,
    /// The user's email.
    pub email: String,
}

/// The caller of this request, if it carried a valid credential of a member of the
/// instance's tenant; `None` for anonymous requests.
pub fn caller() -> Option<User> {
    wit::caller().map(|u| User { user_id: u.user_id, email: u.email })
}

/// Whether the caller holds `permission`, a name your manifest declares (e.g.
/// `"addUsers"`, granted to members as `yourservice.addUsers`).
pub fn allowed(permission: &str) -> bool {
    wit::allowed(permission)
}
