//! Opt-in sandbox reuse: a version whose manifest says
//! `reuse = { requests, idle_seconds }` keeps an instance's sandbox (its store
//! and component instance) after a request that ended well, for that instance's
//! next request.
//!
//! The rules, each enforced here or where a sandbox is handed back:
//! - a sandbox serves one instance, of one version, with one set of modules and
//!   settings: [`Reuse`] names all three, and a sandbox that does not match
//!   them exactly is dropped, never lent;
//! - it is handed back only after a request that ended without any failure
//!   (trap, fuel, deadline, memory cap, client gone), that the guest answered
//!   (one that returned without a response is not trusted with another: see
//!   [`Keeper`]) and with its memory cap never hit, and at most `requests`
//!   times; it waits at most `idle_seconds`;
//! - each request sets its own fuel, deadline, caller, log identity and
//!   request context (`GuestState::begin_request`), so nothing the platform
//!   gives one request reaches the next through the platform's interfaces;
//! - idle sandboxes hold pool slots and linear memory, so both are bounded: a
//!   quarter of the pool's slots and of the node's guest memory, and for one
//!   tenant a quarter of those slots and half of its memory share (so one
//!   tenant's idle sandboxes cannot take the reuse of everyone else). A sandbox
//!   that would go past a bound is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

use super::guest::GuestState;
use super::Features;

/// What a version's manifest allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReusePolicy {
    /// Requests one sandbox serves at most.
    pub requests: u32,
    /// How long an idle sandbox waits for the instance's next request.
    pub idle: Duration,
}

/// A request that may run in (and leave behind) a reused sandbox: whose it is
/// and what it must match.
#[derive(Debug, Clone)]
pub struct Reuse {
    pub policy: ReusePolicy,
    /// The instance; sandboxes are kept per instance and never lent to another.
    pub instance: Arc<str>,
    /// The loaded version's serial (unique per loaded component in this process).
    pub version: u64,
    /// The instance's modules and settings the sandbox was started with.
    pub features: Arc<Features>,
}

impl Reuse {
    fn matches(&self, sandbox: &Sandbox) -> bool {
        sandbox.version == self.version
            && (Arc::ptr_eq(&sandbox.features, &self.features) || *sandbox.features == *self.features)
    }
}

/// A sandbox between two requests of its instance.
pub(crate) struct Sandbox {
    pub(crate) store: Store<GuestState>,
    pub(crate) proxy: Proxy,
    /// Requests it has served.
    pub(crate) served: u32,
    version: u64,
    features: Arc<Features>,
    tenant: Arc<str>,
    /// Linear memory it holds of the node's budget.
    bytes: usize,
    expires: Instant,
}

/// A request's sandbox on its way back to the idle ones: handed back only once
/// both its run ended well ([`Keeper::finished`]) and the guest's response
/// arrived ([`Keeper::answered`]), in whichever order the two happen. A guest
/// that returns without answering (some runtimes answer only their first
/// request in an instance) never gets its sandbox back.
pub(crate) struct Keeper {
    sandboxes: Arc<Sandboxes>,
    state: Mutex<(bool, Option<Kept>)>,
}

/// A sandbox whose run ended well, and whom it may serve again.
pub(crate) struct Kept {
    pub reuse: Reuse,
    pub tenant: Arc<str>,
    pub store: Store<GuestState>,
    pub proxy: Proxy,
    /// Requests it has served, this one included.
    pub served: u32,
}

impl Keeper {
    pub(crate) fn new(sandboxes: Arc<Sandboxes>) -> Self {
        Self { sandboxes, state: Mutex::new((false, None)) }
    }

    /// The run ended well: its sandbox goes back if the guest answered.
    pub(crate) fn finished(&self, kept: Kept) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 {
            drop(state);
            self.put(kept);
        } else {
            state.1 = Some(kept);
        }
    }

    /// The guest's response arrived: a sandbox whose run already ended well goes back.
    pub(crate) fn answered(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = true;
        if let Some(kept) = state.1.take() {
            drop(state);
            self.put(kept);
        }
    }

    fn put(&self, kept: Kept) {
        self.sandboxes.put(&kept.reuse, kept.tenant, kept.store, kept.proxy, kept.served);
    }
}

/// The idle sandboxes of a node.
pub(crate) struct Sandboxes {
    idle: Mutex<Idle>,
    max_count: usize,
    max_bytes: usize,
    max_tenant_bytes: usize,
}

#[derive(Default)]
struct Idle {
    by_instance: HashMap<Arc<str>, Vec<Sandbox>>,
    count: usize,
    bytes: usize,
    /// Per tenant: idle sandboxes, and the bytes they hold.
    tenants: HashMap<Arc<str>, (usize, usize)>,
}

impl Idle {
    fn forget(&mut self, sandbox: &Sandbox) {
        self.count -= 1;
        self.bytes -= sandbox.bytes;
        if let Some((count, bytes)) = self.tenants.get_mut(&sandbox.tenant) {
            *count -= 1;
            *bytes -= sandbox.bytes;
            if *count == 0 {
                self.tenants.remove(&sandbox.tenant);
            }
        }
    }
}

impl Sandboxes {
    /// At most `max_count` idle sandboxes holding `max_bytes` together, of which
    /// one tenant's hold at most `max_tenant_bytes`.
    pub(crate) fn new(max_count: usize, max_bytes: usize, max_tenant_bytes: usize) -> Self {
        Self { idle: Mutex::new(Idle::default()), max_count, max_bytes, max_tenant_bytes }
    }

    /// The instance's most recently used sandbox that matches `reuse`, if any;
    /// sandboxes found stale on the way (expired, another version, other
    /// features) are dropped.
    pub(crate) fn take(&self, reuse: &Reuse) -> Option<Sandbox> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let idle = &mut *idle;
            let mut found = None;
            if let Some(list) = idle.by_instance.get_mut(&reuse.instance) {
                while let Some(sandbox) = list.pop() {
                    if sandbox.expires > now && reuse.matches(&sandbox) {
                        found = Some(sandbox);
                        break;
                    }
                    stale.push(sandbox);
                }
                if list.is_empty() {
                    idle.by_instance.remove(&reuse.instance);
                }
            }
            for sandbox in stale.iter().chain(found.iter()) {
                idle.forget(sandbox);
            }
            found
        };
        // Tearing a store down unmaps and resets memory: not under the lock.
        drop(stale);
        found
    }

    /// Keep `store` for the instance's next request, if the policy and the
    /// bounds allow; otherwise it is dropped here.
    pub(crate) fn put(&self, reuse: &Reuse, tenant: Arc<str>, store: Store<GuestState>, proxy: Proxy, served: u32) {
        if served >= reuse.policy.requests {
            return;
        }
        let bytes = store.data().limiter.holding();
        let sandbox = Sandbox {
            store,
            proxy,
            served,
            version: reuse.version,
            features: reuse.features.clone(),
            tenant,
            bytes,
            expires: Instant::now() + reuse.policy.idle,
        };
        let refused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (tenant_count, tenant_bytes) = idle.tenants.get(&sandbox.tenant).copied().unwrap_or((0, 0));
            if idle.count >= self.max_count
                || idle.bytes + bytes > self.max_bytes
                || tenant_count >= (self.max_count / 4).max(1)
                || tenant_bytes + bytes > self.max_tenant_bytes
            {
                Some(sandbox)
            } else {
                idle.count += 1;
                idle.bytes += bytes;
                let held = idle.tenants.entry(sandbox.tenant.clone()).or_default();
                held.0 += 1;
                held.1 += bytes;
                idle.by_instance.entry(reuse.instance.clone()).or_default().push(sandbox);
                None
            }
        };
        drop(refused);
    }

    /// Drop every sandbox idle past its time.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let idle = &mut *idle;
            idle.by_instance.retain(|_, list| {
                let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(|s| s.expires > now);
                *list = keep;
                expired.extend(gone);
                !list.is_empty()
            });
            for sandbox in &expired {
                idle.forget(sandbox);
            }
        }
        drop(expired);
    }

    /// How many sandboxes wait now, and the linear memory they hold.
    pub(crate) fn idle(&self) -> (usize, usize) {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        (idle.count, idle.bytes)
    }
}
