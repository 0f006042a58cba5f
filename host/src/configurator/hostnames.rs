//! Hostname ownership. Every instance answers at `<name>.<tenant>.<domain>` for
//! each platform domain, with nothing to prove. A custom hostname is a claim that
//! routes nothing until its tenant proves control of the name, either
//!
//! - over HTTP: the name resolves to the platform, and Wharf itself answers
//!   `GET /.well-known/wharf-challenge/<token>` on it with the token, or
//! - over DNS: `_wharf-challenge.<name>` holds the TXT record `wharf-verify=<token>`.
//!
//! Several tenants may claim one name; the first to prove it gets it and the other
//! claims are dropped. A released name stays reserved to its tenant for a while,
//! so nobody can catch the traffic of a name its owner is only moving. Operators
//! bind any name without proof. No tenant may claim an IP literal, a single label,
//! `localhost`, the node's own names, or a name under a platform domain.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use serde::Serialize;

use crate::config::TrustConfig;

/// Path prefix of HTTP challenges.
pub const CHALLENGE_PATH: &str = "/.well-known/wharf-challenge/";
/// Label prepended to a name for its TXT challenge.
pub const TXT_LABEL: &str = "_wharf-challenge";
/// Prefix of the TXT record's value.
pub const TXT_PREFIX: &str = "wharf-verify=";

/// How long one verification attempt may take, per method.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a challenge response read.
const MAX_CHALLENGE_BYTES: usize = 1024;

/// A claimed hostname awaiting proof, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingHost {
    pub hostname: String,
    pub token: String,
    /// Where Wharf answers the HTTP challenge once the name points at the platform.
    pub http_challenge: String,
    /// The TXT record that proves the name over DNS.
    pub dns_record: String,
    pub dns_value: String,
    pub created_at: i64,
    pub checked_at: Option<i64>,
    pub last_error: Option<String>,
}

impl PendingHost {
    pub fn new(
        hostname: String,
        token: String,
        created_at: i64,
        checked_at: Option<i64>,
        last_error: Option<String>,
    ) -> Self {
        Self {
            http_challenge: format!("http://{hostname}{CHALLENGE_PATH}{token}"),
            dns_record: format!("{TXT_LABEL}.{hostname}"),
            dns_value: format!("{TXT_PREFIX}{token}"),
            hostname,
            token,
            created_at,
            checked_at,
            last_error,
        }
    }
}

/// How to prove a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Http,
    Dns,
}

/// Which names tenants may claim.
pub struct Policy {
    domains: Vec<String>,
    node_names: Vec<String>,
}

/// Why a name cannot be claimed.
pub fn refusal(policy: &Policy, host: &str) -> Option<String> {
    if reads_as_ip(host) {
        return Some(
            "IP addresses cannot be claimed (in any spelling: 127.1, 0x7f.0x1, 017700000001); use a DNS name".into(),
        );
    }
    if !host.contains('.') {
        return Some("single-label names cannot be claimed; use a full DNS name like shop.example.com".into());
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("localhost names cannot be claimed".into());
    }
    if policy.node_names.iter().any(|n| n == host) {
        return Some("this is a name of the node itself".into());
    }
    if let Some(domain) = policy.domains.iter().find(|d| host == d.as_str() || host.ends_with(&format!(".{d}"))) {
        return Some(format!(
            "names under the platform domain {domain} are assigned, not claimed: every instance answers at <name>.<tenant>.{domain}"
        ));
    }
    None
}

/// Whether a browser or a resolver could read `host` as an IP address. The
/// WHATWG URL parser (which browsers and most HTTP clients follow) reads any
/// host whose last label is a number — decimal, octal, or `0x` hex — as IPv4,
/// or refuses it; `inet_aton` reads the same one-to-four-part forms. So a name
/// ending in a number is never a DNS name, whatever the digit check says.
fn reads_as_ip(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return true;
    }
    match url::Host::parse(host) {
        Ok(url::Host::Domain(_)) => false,
        Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        Err(e) => matches!(e, url::ParseError::InvalidIpv4Address | url::ParseError::InvalidIpv6Address),
    }
}

impl Policy {
    pub fn new(trust: &TrustConfig) -> Self {
        let mut node_names: Vec<String> = trust.node_names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() {
                node_names.push(name);
            }
        }
        Self { domains: trust.domains.iter().map(|d| d.trim_matches('.').to_ascii_lowercase()).collect(), node_names }
    }

    /// The platform names of instance `name` of `tenant`.
    pub fn platform_names(&self, name: &str, tenant: &str) -> Vec<String> {
        self.domains.iter().map(|d| format!("{name}.{tenant}.{d}")).collect()
    }

    /// Whether the platform has domains (then an instance needs no custom name).
    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }
}

/// Checks challenges: fetches the HTTP one, looks up the TXT one.
pub struct Verifier {
    http: reqwest::Client,
    connect: Option<SocketAddr>,
    /// With `connect`: the addresses a name must resolve to for its HTTP
    /// challenge to count (the platform's public addresses).
    platform: Vec<IpAddr>,
    dns: TokioResolver,
}

impl Verifier {
    /// A verifier connecting HTTP challenges to `connect` when set (else to the
    /// name's own address), and asking `dns_server` (else the system's resolvers).
    /// Through `connect`, a name's challenge counts only if the name resolves to
    /// one of `platform` (default: `connect`'s IP): the fetch goes to the
    /// platform whatever the name's DNS says, so the DNS must be checked apart.
    pub fn new(
        connect: Option<SocketAddr>,
        platform: &[IpAddr],
        dns_server: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CHECK_TIMEOUT)
            .no_proxy()
            .build()?;
        let mut builder = match dns_server {
            Some(server) => TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
                ),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio()?,
        };
        let options = builder.options_mut();
        options.timeout = CHECK_TIMEOUT;
        options.attempts = 1;
        // A record the tenant just published must be seen now, not after a TTL.
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        let platform = match (platform.is_empty(), connect) {
            (false, _) => platform.to_vec(),
            (true, Some(addr)) => vec![addr.ip()],
            (true, None) => Vec::new(),
        };
        Ok(Self { http, connect, platform, dns: builder.build() })
    }

    /// With a fixed challenge address: `Err` unless `hostname` resolves (A or
    /// AAAA, through the configured resolver) to a platform address.
    async fn check_points_here(&self, hostname: &str) -> Result<(), String> {
        if self.connect.is_none() {
            return Ok(());
        }
        let listed = self.platform.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
        let found: Vec<IpAddr> = match self.dns.lookup_ip(format!("{hostname}.")).await {
            Ok(lookup) => lookup.iter().collect(),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(format!("http: resolving {hostname} failed: {e}")),
        };
        if found.is_empty() {
            return Err(format!(
                "http: {hostname} does not resolve (no A or AAAA record); point it at the platform ({listed}) and retry"
            ));
        }
        if found.iter().any(|ip| self.platform.contains(ip)) {
            return Ok(());
        }
        let shown = found.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
        Err(format!(
            "http: {hostname} resolves to {shown}, not to the platform ({listed}); point it at the platform, \
             or prove it with the DNS TXT record (--method dns)"
        ))
    }

    /// Check the challenge of `hostname` by `method`: `Err` says what was found.
    pub async fn check(&self, hostname: &str, token: &str, method: Method) -> Result<(), String> {
        match method {
            Method::Http => self.check_http(hostname, token).await,
            Method::Dns => self.check_dns(hostname, token).await,
        }
    }

    async fn check_http(&self, hostname: &str, token: &str) -> Result<(), String> {
        self.check_points_here(hostname).await?;
        let url = format!("http://{hostname}{CHALLENGE_PATH}{token}");
        let mut request = self.http.get(&url);
        if let Some(addr) = self.connect {
            // Connect to the configured address, asking for the name.
            request =
                self.http.get(format!("http://{addr}{CHALLENGE_PATH}{token}")).header(http::header::HOST, hostname);
        }
        let mut response = request.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            format!("http: GET {url} {kind}; point the name at the platform (A/AAAA or CNAME) and retry")
        })?;
        if !response.status().is_success() {
            // The status is not echoed: the name may point anywhere, and the
            // check must not become a probe of other servers.
            return Err(format!(
                "http: GET {url} did not answer the challenge; the name does not reach this platform yet"
            ));
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_CHALLENGE_BYTES {
                break;
            }
        }
        if body.trim_ascii() == token.as_bytes() {
            Ok(())
        } else {
            Err(format!("http: GET {url} answered, but not with the token; the name reaches another server"))
        }
    }

    async fn check_dns(&self, hostname: &str, token: &str) -> Result<(), String> {
        let name = format!("{TXT_LABEL}.{hostname}.");
        let expected = format!("{TXT_PREFIX}{token}");
        let lookup = self.dns.txt_lookup(name.as_str()).await.map_err(|e| {
            if e.is_no_records_found() {
                format!("dns: no TXT record at {TXT_LABEL}.{hostname}; add one with the value {expected}")
            } else {
                format!("dns: looking up {TXT_LABEL}.{hostname} failed: {e}")
            }
        })?;
        let found = lookup.iter().any(|txt| {
            let value: Vec<u8> = txt.txt_data().iter().flat_map(|part| part.iter().copied()).collect();
            value.trim_ascii() == expected.as_bytes()
        });
        if found {
            Ok(())
        } else {
            Err(format!("dns: the TXT records at {TXT_LABEL}.{hostname} do not include {expected}"))
        }
    }
}

/// A fresh challenge token (URL- and DNS-safe).
pub fn new_token() -> String {
    crate::identity::secrets::random_token(24)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_nobody_may_claim() {
        let trust = TrustConfig {
            domains: vec!["apps.example.com".into()],
            node_names: vec!["node1.example.net".into()],
            ..Default::default()
        };
        let policy = Policy::new(&trust);
        for host in [
            "127.0.0.1",
            "10.1.2.3",
            "[::1]",
            "localhost",
            "a.localhost",
            "intranet",
            "node1.example.net",
            "apps.example.com",
            "forum.acme.apps.example.com",
            // IPv4 as browsers and inet_aton read it.
            "0x7f.0x1",
            "127.0.0.0x1",
            "127.1",
            "0x7f000001",
            "017700000001",
            "1.2.3.4.5",
            "shop.example.0x",
            "10.0.0.1.",
        ] {
            assert!(refusal(&policy, host).is_some(), "{host} must be refused");
        }
        for host in
            ["shop.example.com", "www.acme.com", "apps.example.com.evil.org", "0x7f.example.com", "1.2.3.4.nip.io"]
        {
            assert_eq!(refusal(&policy, host), None, "{host} may be claimed");
        }
        assert_eq!(policy.platform_names("forum", "acme"), ["forum.acme.apps.example.com"]);
    }
}
