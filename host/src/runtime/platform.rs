//! Host side of the `wharf:platform` interfaces (see `wit/`).
//!
//! `identity` is answered from what the ingress resolved before the guest ran (the
//! caller and their grants for this service), so its functions never wait.

use wasmtime::component::HasSelf;

use super::guest::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wharf:platform/service",
    });
}

use bindings::wharf::platform::identity;

/// A caller as the guest sees it.
#[derive(Debug, Clone)]
pub struct GuestCaller {
    pub user_id: String,
    pub email: String,
    /// Permission names (within the service) the caller holds and the running
    /// version declares.
    pub permissions: Vec<String>,
}

impl identity::Host for GuestState {
    fn caller(&mut self) -> Option<identity::User> {
        self.caller.as_ref().map(|c| identity::User { user_id: c.user_id.clone(), email: c.email.clone() })
    }

    fn allowed(&mut self, permission: String) -> bool {
        self.caller.as_ref().is_some_and(|c| c.permissions.iter().any(|p| *p == permission))
    }
}

/// Add `wharf:platform` to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<GuestState>) -> wasmtime::Result<()> {
    identity::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |state| state)
}
