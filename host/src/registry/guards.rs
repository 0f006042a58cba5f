//! Route tables compiled from a manifest: which permissions a request's method and
//! path need before the guest may run ([`RouteGuards::permissions`]), and which
//! module a route belongs to ([`RouteGuards::modules`]).

use super::manifest::Manifest;

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

#[derive(Debug, Clone)]
struct Guard {
    /// `None` matches any method.
    method: Option<String>,
    segments: Vec<Segment>,
    permission: String,
}

/// The guards of one service version.
#[derive(Debug, Clone, Default)]
pub struct RouteGuards {
    guards: Vec<Guard>,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Parse `"METHOD /path"`; `None` if malformed.
pub(crate) fn parse_route(route: &str) -> Option<(Option<String>, Vec<String>)> {
    let (method, path) = route.trim().split_once(' ')?;
    let method = match method.to_ascii_uppercase().as_str() {
        "*" => None,
        m if METHODS.contains(&m) => Some(m.to_string()),
        _ => return None,
    };
    let path = path.trim();
    if !path.starts_with('/') || path.contains(char::is_whitespace) || path.contains('?') {
        return None;
    }
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    // `*rest` only at the end.
    if segments.iter().rev().skip(1).any(|s| s.starts_with('*')) {
        return None;
    }
    Some((method, segments))
}

impl RouteGuards {
    /// The permission guards of a (validated) manifest.
    pub fn permissions(manifest: &Manifest) -> Self {
        Self::from_routes(manifest.permissions.iter().map(|p| (p.name.as_str(), p.routes.as_slice())))
    }

    /// The module routes of a (validated) manifest.
    pub fn modules(manifest: &Manifest) -> Self {
        Self::from_routes(manifest.modules.iter().map(|m| (m.id.as_str(), m.routes.as_slice())))
    }

    fn from_routes<'a>(labelled: impl Iterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut guards = Vec::new();
        for (label, routes) in labelled {
            for route in routes {
                let Some((method, segments)) = parse_route(route) else { continue };
                let segments = segments
                    .into_iter()
                    .map(|s| {
                        if s.starts_with(':') {
                            Segment::Param
                        } else if s.starts_with('*') {
                            Segment::Rest
                        } else {
                            Segment::Literal(s)
                        }
                    })
                    .collect();
                guards.push(Guard { method, segments, permission: label.to_string() });
            }
        }
        Self { guards }
    }

    /// Whether any route is guarded (skips the path split on the hot path).
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// The labels (permission names, or module ids) of the routes a request matches.
    pub fn required(&self, method: &str, path: &str) -> Vec<&str> {
        if self.guards.is_empty() {
            return Vec::new();
        }
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut needed: Vec<&str> = Vec::new();
        for guard in &self.guards {
            let method_matches = match &guard.method {
                None => true,
                Some(m) => m == method || (m == "GET" && method == "HEAD"),
            };
            if method_matches && matches(&guard.segments, &parts) && !needed.contains(&guard.permission.as_str()) {
                needed.push(&guard.permission);
            }
        }
        needed
    }
}

fn matches(pattern: &[Segment], parts: &[&str]) -> bool {
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest => return true,
            Segment::Literal(lit) => {
                // Compare decoded, so `/users` and `/%75sers` are the same route.
                if parts.get(i).map(|p| percent_decode(p)) != Some(lit.clone()) {
                    return false;
                }
            }
            Segment::Param => {
                if parts.get(i).is_none() {
                    return false;
                }
            }
        }
    }
    parts.len() == pattern.len()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && s.is_char_boundary(i + 3) {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards() -> RouteGuards {
        let m = Manifest::parse(
            "[service]\nname = \"a\"\nversion = \"1.0.0\"\n\
             [[permissions]]\nname = \"addUsers\"\ndescription = \"d\"\nroutes = [\"POST /users\", \"PUT /users/:id\"]\n\
             [[permissions]]\nname = \"admin\"\ndescription = \"d\"\nroutes = [\"* /admin/*rest\"]\n",
        )
        .unwrap();
        RouteGuards::permissions(&m)
    }

    #[test]
    fn guarded_routes_need_their_permission() {
        let g = guards();
        assert_eq!(g.required("POST", "/users"), ["addUsers"]);
        assert_eq!(g.required("POST", "/users/"), ["addUsers"]);
        assert_eq!(g.required("POST", "//users"), ["addUsers"]);
        assert_eq!(g.required("POST", "/%75sers"), ["addUsers"]);
        assert_eq!(g.required("PUT", "/users/7"), ["addUsers"]);
        assert_eq!(g.required("DELETE", "/admin/x/y"), ["admin"]);
        assert!(g.required("GET", "/users").is_empty());
        assert!(g.required("PUT", "/users").is_empty());
        assert!(g.required("GET", "/").is_empty());
    }
}
