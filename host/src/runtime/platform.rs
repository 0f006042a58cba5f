//! Host side of the `wharf:platform` interfaces (see `wit/`).
//!
//! `identity` is answered from what the ingress resolved before the guest ran (the
//! caller and their grants for this service), and `features` from the instance's
//! configuration held by its route, so neither ever waits.

use wasmtime::component::HasSelf;

use super::guest::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wharf:platform/service",
    });
}

use std::sync::Arc;

use bindings::wharf::platform::{features, identity};

/// The instance's enabled modules and settings.
#[derive(Debug, Clone, Default)]
pub struct Features {
    /// Enabled module ids (only those the running version declares).
    pub modules: Vec<String>,
    /// Settings, sorted by key.
    pub settings: Vec<(String, String)>,
}

/// What the guest may learn about its request beyond HTTP.
#[derive(Debug, Clone, Default)]
pub struct GuestContext {
    /// The authenticated caller, if any.
    pub caller: Option<GuestCaller>,
    /// The instance's configuration.
    pub features: Arc<Features>,
}

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
        self.context.caller.as_ref().map(|c| identity::User { user_id: c.user_id.clone(), email: c.email.clone() })
    }

    fn allowed(&mut self, permission: String) -> bool {
        self.context.caller.as_ref().is_some_and(|c| c.permissions.iter().any(|p| *p == permission))
    }
}

impl features::Host for GuestState {
    fn enabled_modules(&mut self) -> Vec<String> {
        self.context.features.modules.clone()
    }

    fn is_enabled(&mut self, id: String) -> bool {
        self.context.features.modules.contains(&id)
    }

    fn setting(&mut self, key: String) -> Option<String> {
        self.context.features.settings.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    fn settings(&mut self) -> Vec<(String, String)> {
        self.context.features.settings.clone()
    }
}

/// Add `wharf:platform` to a linker.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<GuestState>) -> wasmtime::Result<()> {
    identity::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |state| state)?;
    features::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |state| state)
}
