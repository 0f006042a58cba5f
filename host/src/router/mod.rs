//! Host → instance: the request's `Host` is normalised and looked up in an
//! in-memory table. The table is split into parts, each swapped whole: the
//! request path takes no lock and runs no query, and the configurator's change
//! of one instance copies only the parts its hostnames are in.

pub mod health;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::registry::{LoadedVersion, ServiceSlot};
use crate::runtime::Features;
use crate::usage::UsageCounters;

/// Where an instance's requests go.
pub struct Route {
    /// Instance id.
    pub instance: Arc<str>,
    /// Tenant owning the instance.
    pub tenant: Arc<str>,
    /// Which version runs.
    pub target: VersionTarget,
    /// Usage counters of the instance (see [`Route::usage`]).
    pub usage: crate::usage::UsageCell,
    /// A disabled instance answers 410 and runs no guest; its data is kept.
    pub enabled: bool,
    /// Past this time (the billing clock's) the instance answers 402.
    pub ends_at: Option<i64>,
    /// Why the tenant is suspended (its spending limit): every instance answers 402.
    pub suspended: Option<Arc<str>>,
    /// Enabled modules and settings.
    pub features: Arc<Features>,
    /// The instance's own database and key-value store (opened on first use),
    /// and its recent CPU use: heavy instances start on lowered threads.
    pub db: Arc<crate::instancedb::InstanceDb>,
    /// Where the instance's schema stands: which version requests may run.
    pub setup: InstanceSetup,
    /// The instance's door to the job queue, for the guest's `jobs` import.
    pub jobs: Option<Arc<crate::runtime::InstanceJobs>>,
    /// The health gate of a newly served version (kept across table rebuilds);
    /// `None` while the health gate itself pinned the instance back.
    pub health: Option<Arc<health::HealthWindow>>,
    /// Where the health gate sends the instance back to (`None`: its owner
    /// pinned it, or the gate already did).
    pub gate: Option<health::GateBack>,
}

/// Where an instance's database schema stands (its setup runs as a job).
#[derive(Default)]
pub struct InstanceSetup {
    pub state: SetupState,
    /// The version a setup is bringing the instance to (or failed to).
    pub target: Option<String>,
    /// Migrations its database has.
    pub applied: Vec<String>,
    /// The last version set up successfully: its schema is in place.
    pub settled: Option<Arc<LoadedVersion>>,
}

/// The state of an instance's setup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetupState {
    /// Nothing in progress.
    #[default]
    Ready,
    /// Migrations (and the seeder) are queued or running: the instance is in maintenance.
    Migrating,
    /// The last setup failed: the instance stays on its settled version.
    Failed,
}

impl SetupState {
    pub fn parse(text: &str) -> Self {
        match text {
            "migrating" => Self::Migrating,
            "failed" => Self::Failed,
            _ => Self::Ready,
        }
    }
}

/// What a request arriving now runs.
pub enum Serving {
    Version(Arc<LoadedVersion>),
    /// The instance is being set up (migrations, seeder): 503 with Retry-After.
    Maintenance,
    /// The service has no active version.
    Nothing,
}

/// The version policy of an instance.
pub enum VersionTarget {
    /// Run whatever version of the service is active.
    Follow(Arc<ServiceSlot>),
    /// Run this version until told otherwise.
    Pinned(Arc<LoadedVersion>),
}

impl Route {
    /// The instance's usage counters.
    pub fn usage(&self) -> &Arc<UsageCounters> {
        self.usage.get(&self.instance, &self.tenant)
    }

    /// Feed what this route decides into `h` (see [`Router::digest`]).
    fn fingerprint(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        self.instance.hash(h);
        self.tenant.hash(h);
        match &self.target {
            VersionTarget::Follow(slot) => ("follow", &slot.name).hash(h),
            VersionTarget::Pinned(version) => ("pinned", &version.service, &version.version).hash(h),
        }
        self.enabled.hash(h);
        self.ends_at.hash(h);
        self.suspended.hash(h);
        self.features.modules.hash(h);
        self.features.settings.hash(h);
        (self.setup.state as u8).hash(h);
        self.setup.target.hash(h);
        self.setup.applied.hash(h);
        self.setup.settled.as_ref().map(|v| &v.version).hash(h);
        match &self.gate {
            None => 0u8.hash(h),
            Some(health::GateBack::Previous(_)) => 1u8.hash(h),
            Some(health::GateBack::Active(_)) => 2u8.hash(h),
        }
    }

    /// The version a request arriving now runs.
    pub fn version(&self) -> Option<Arc<LoadedVersion>> {
        match &self.target {
            VersionTarget::Follow(slot) => slot.active(),
            VersionTarget::Pinned(version) => Some(version.clone()),
        }
    }

    /// The version a request arriving now runs, given the instance's schema
    /// (see [`serving`]).
    pub fn serving(&self) -> Serving {
        serving(self.version(), &self.setup)
    }
}

/// What an instance that should run `wanted` runs, given its schema: the
/// wanted version once its migrations are applied; while they are being
/// applied, maintenance; after they failed, the version set up last.
pub fn serving(wanted: Option<Arc<LoadedVersion>>, setup: &InstanceSetup) -> Serving {
    let Some(wanted) = wanted else { return Serving::Nothing };
    let targeted = setup.target.as_deref() == Some(wanted.version.as_str());
    if setup.state == SetupState::Migrating && targeted {
        return Serving::Maintenance;
    }
    if wanted.manifest.migrations.iter().all(|m| setup.applied.contains(&m.name)) {
        return Serving::Version(wanted);
    }
    match &setup.settled {
        Some(settled) if setup.state == SetupState::Failed && targeted => Serving::Version(settled.clone()),
        _ => Serving::Maintenance,
    }
}

/// How many parts the tables are split into: a change copies one part
/// (about 1/256 of the table), never the whole table.
const SHARDS: usize = 256;

/// A map from names to values, split into [`SHARDS`] parts by a keyed hash,
/// each part swapped whole: readers take no lock, and a change copies only the
/// part it touches.
struct Sharded<V> {
    parts: Box<[ArcSwap<HashMap<String, V>>]>,
    hasher: std::hash::RandomState,
}

impl<V: Clone> Default for Sharded<V> {
    fn default() -> Self {
        Self { parts: (0..SHARDS).map(|_| ArcSwap::default()).collect(), hasher: std::hash::RandomState::new() }
    }
}

impl<V: Clone> Sharded<V> {
    fn part(&self, key: &str) -> &ArcSwap<HashMap<String, V>> {
        &self.parts[self.index(key)]
    }

    fn get(&self, key: &str) -> Option<V> {
        self.part(key).load().get(key).cloned()
    }

    /// Which part `key` is in.
    fn index(&self, key: &str) -> usize {
        use std::hash::BuildHasher;
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Replace everything with `entries` (each part swapped in turn); of two
    /// entries with one key, the first stays.
    fn replace(&self, entries: impl IntoIterator<Item = (String, V)>) {
        let mut sorted: Vec<Vec<(String, V)>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for (key, value) in entries {
            sorted[self.index(&key)].push((key, value));
        }
        for (slot, entries) in self.parts.iter().zip(sorted) {
            let mut part = HashMap::with_capacity(entries.len());
            for (key, value) in entries {
                part.entry(key).or_insert(value);
            }
            slot.store(Arc::new(part));
        }
    }

    /// Change the entry of `key`: `change` gets its value and returns the new
    /// one (`None` removes it). Only `key`'s part is copied.
    fn update(&self, key: &str, change: impl Fn(Option<&V>) -> Option<V>) {
        self.part(key).rcu(|current| {
            let mut next = HashMap::clone(current);
            match change(current.get(key)) {
                Some(value) => next.insert(key.to_string(), value),
                None => next.remove(key),
            };
            next
        });
    }

    fn len(&self) -> usize {
        self.parts.iter().map(|part| part.load().len()).sum()
    }

    /// A snapshot of every part.
    fn snapshot(&self) -> Vec<Arc<HashMap<String, V>>> {
        self.parts.iter().map(|part| part.load_full()).collect()
    }
}

/// The hostname table.
#[derive(Default)]
pub struct Router {
    table: Sharded<Arc<Route>>,
    /// Every instance's route, by instance id (also those without hostnames).
    instances: Sharded<Arc<Route>>,
    /// The hostnames routed to each instance, by instance id.
    hosts: Sharded<Arc<[String]>>,
    /// Hostnames claimed but not yet proven, with their challenge tokens.
    challenges: ArcSwap<HashMap<String, Vec<String>>>,
    /// Serialises changes (readers never wait for it).
    changing: std::sync::Mutex<()>,
}

/// An instance's route and the hostnames that lead to it, as the configurator
/// builds them: custom hostnames and the platform's names.
pub struct InstanceRoutes {
    pub route: Arc<Route>,
    /// Its custom hostnames, then its platform names.
    pub hosts: Vec<String>,
    /// How many of `hosts` are custom: those win over another instance's
    /// platform name (tenants cannot claim names under a platform domain, so
    /// this is belt and braces).
    pub custom: usize,
}

impl Router {
    /// Look up a normalised hostname.
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.table.get(host)
    }

    /// An instance's route.
    pub fn instance(&self, id: &str) -> Option<Arc<Route>> {
        self.instances.get(id)
    }

    /// Every instance's route, by instance id: a snapshot, part by part.
    pub fn instance_parts(&self) -> Vec<Arc<HashMap<String, Arc<Route>>>> {
        self.instances.snapshot()
    }

    /// Replace the whole table: each instance's routes, by instance id.
    pub fn replace(&self, routes: Vec<(String, InstanceRoutes)>) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        // Custom names first: they win over another instance's platform name.
        let custom = routes.iter().flat_map(|(_, r)| r.hosts[..r.custom].iter().map(|h| (h.clone(), r.route.clone())));
        let platform =
            routes.iter().flat_map(|(_, r)| r.hosts[r.custom..].iter().map(|h| (h.clone(), r.route.clone())));
        self.table.replace(custom.chain(platform));
        self.instances.replace(routes.iter().map(|(id, r)| (id.clone(), r.route.clone())));
        self.hosts.replace(routes.into_iter().map(|(id, r)| (id, Arc::from(r.hosts))));
    }

    /// Replace one instance's route and hostnames (`None`: it is gone), copying
    /// only the parts of the table they are in. A hostname it no longer has is
    /// removed only while it still leads to it, so changes of several instances
    /// (a hostname moving from one to another) end in the same table whatever
    /// order they are applied in.
    pub fn set_instance(&self, id: &str, routes: Option<InstanceRoutes>) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old: Arc<[String]> = self.hosts.get(id).unwrap_or_else(|| Arc::from(Vec::new()));
        let new: Vec<String> = routes.as_ref().map(|r| r.hosts.clone()).unwrap_or_default();
        for host in old.iter().filter(|h| !new.contains(h)) {
            self.table.update(host, |current| current.filter(|r| &*r.instance != id).cloned());
        }
        match routes {
            Some(InstanceRoutes { route, hosts, custom }) => {
                for (i, host) in hosts.iter().enumerate() {
                    self.table.update(host, |current| match current {
                        Some(other) if i >= custom && other.instance != route.instance => Some(other.clone()),
                        _ => Some(route.clone()),
                    });
                }
                self.hosts.update(id, |_| Some(Arc::from(hosts.clone())));
                self.instances.update(id, |_| Some(route.clone()));
            }
            None => {
                self.hosts.update(id, |_| None);
                self.instances.update(id, |_| None);
            }
        }
    }

    /// Replace the pending challenges.
    pub fn replace_challenges(&self, challenges: HashMap<String, Vec<String>>) {
        self.challenges.store(Arc::new(challenges));
    }

    /// Whether `token` is a pending challenge of `host`.
    pub fn challenge(&self, host: &str, token: &str) -> bool {
        self.challenges.load().get(host).is_some_and(|tokens| tokens.iter().any(|t| t == token))
    }

    /// Number of hostnames routed.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// A digest of what the table routes where (hostnames, instances and what
    /// their routes hold), independent of the order it was built in: two nodes
    /// with the same digest route alike.
    pub fn digest(&self) -> String {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut sum: u64 = 0;
        let mut count: u64 = 0;
        for part in self.table.snapshot() {
            for (host, route) in part.iter() {
                let mut h = DefaultHasher::new();
                host.hash(&mut h);
                route.fingerprint(&mut h);
                sum = sum.wrapping_add(h.finish());
                count += 1;
            }
        }
        for part in self.instances.snapshot() {
            for (id, route) in part.iter() {
                let mut h = DefaultHasher::new();
                id.hash(&mut h);
                route.fingerprint(&mut h);
                sum = sum.wrapping_add(h.finish().rotate_left(1));
                count += 1;
            }
        }
        format!("{count}-{sum:016x}")
    }

    /// Whether no hostname is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a request's host could not be determined.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("the request has more than one Host header")]
    Duplicate,
    #[error("the Host header is not a valid hostname")]
    Invalid,
    #[error("the request URI names a different host than the Host header")]
    Conflicting,
}

/// The normalised host a request is for: from the absolute-form URI if present,
/// else the `Host` header. Both present and different is refused, so a proxy and
/// Wharf can never disagree about which instance a request is for.
pub fn request_host<B>(req: &http::Request<B>) -> Result<Cow<'_, str>, HostError> {
    let mut headers = req.headers().get_all(http::header::HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let from_header = match header {
        Some(value) => Some(normalize(value.to_str().map_err(|_| HostError::Invalid)?)?),
        None => None,
    };
    let from_uri = match req.uri().authority() {
        Some(authority) => Some(normalize(authority.as_str())?),
        None => None,
    };
    match (from_uri, from_header) {
        (Some(uri), Some(header)) if uri != header => Err(HostError::Conflicting),
        (Some(host), _) | (None, Some(host)) => Ok(host),
        (None, None) => Err(HostError::Missing),
    }
}

/// Normalise a `Host` value: lower case, port and trailing dot removed. Only
/// hostname characters are accepted (IDNs arrive in their `xn--` form).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, HostError> {
    let raw = raw.trim();
    // Userinfo has no place in a Host header.
    if raw.contains('@') {
        return Err(HostError::Invalid);
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: [::1]:8080
        let end = rest.find(']').ok_or(HostError::Invalid)?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || is_port(after.strip_prefix(':').ok_or(HostError::Invalid)?)) {
            return Err(HostError::Invalid);
        }
        return Ok(Cow::Owned(format!("[{}]", rest[..end].to_ascii_lowercase())));
    } else {
        match raw.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return Err(HostError::Invalid),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // Most clients send the name in lower case already: no copy on every request.
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    if !valid_hostname(&host) {
        return Err(HostError::Invalid);
    }
    Ok(host)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A DNS hostname in ASCII: labels of letters, digits and `-`, not starting or
/// ending with `-`, at most 63 characters each and 253 in all.
pub fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, uri: &str) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_are_normalised() {
        for raw in [
            "shop.example.com",
            "SHOP.Example.COM",
            "shop.example.com.",
            "shop.example.com:8080",
            "Shop.Example.Com.:80",
        ] {
            assert_eq!(normalize(raw).unwrap(), "shop.example.com", "{raw}");
        }
        assert_eq!(normalize("xn--bcher-kva.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(normalize("[::1]:8080").unwrap(), "[::1]");
        // A name already in lower case is not copied; one that is not, is.
        assert!(matches!(normalize("shop.example.com:8080").unwrap(), Cow::Borrowed("shop.example.com")));
        assert!(matches!(normalize("Shop.example.com").unwrap(), Cow::Owned(_)));
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for raw in [
            "",
            "a b",
            "bücher.example",
            "user@shop.example.com",
            "shop..example.com",
            "shop.example.com:http",
            "-a.com",
            "a/b",
        ] {
            assert!(normalize(raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn request_host_refuses_ambiguity() {
        assert_eq!(request_host(&req(None, "/")), Err(HostError::Missing));
        assert_eq!(request_host(&req(Some("a.com"), "http://b.com/")), Err(HostError::Conflicting));
        assert_eq!(request_host(&req(Some("A.com:80"), "http://a.com/")).unwrap(), "a.com");
        assert_eq!(request_host(&req(None, "http://a.com/x")).unwrap(), "a.com");
        let mut two = req(Some("a.com"), "/");
        two.headers_mut().append("host", "b.com".parse().unwrap());
        assert_eq!(request_host(&two), Err(HostError::Duplicate));
    }
}
