//! Route lookup (pure): host (exact, then `*.suffix`, then any), longest path prefix, optional method.

use std::sync::Arc;

use crate::config::{HostPattern, Route};
use crate::metrics::{Metrics, RouteMetrics};

/// Compiled routes of one snapshot, each with its metric handles.
pub struct Router {
    routes: Vec<Arc<Route>>,
    metrics: Vec<RouteMetrics>,
    /// Handles for requests that match no route (label `route=""`).
    pub unrouted: RouteMetrics,
}

impl Default for Router {
    fn default() -> Self {
        Router::new(&[])
    }
}

impl Router {
    /// A router whose metric handles no registry exports (tests, fuzzing).
    pub fn new(routes: &[Route]) -> Router {
        Router::build(routes, RouteMetrics::detached)
    }

    /// A router whose metric handles are registered in `m` (the `role="authz"` ones only with
    /// `authz`: the configuration has an authorization listener).
    pub fn with_metrics(routes: &[Route], m: &Metrics, authz: bool) -> Router {
        Router::build(routes, |name| RouteMetrics::new(m, name, authz))
    }

    fn build(routes: &[Route], metrics: impl Fn(&str) -> RouteMetrics) -> Router {
        Router {
            routes: routes.iter().cloned().map(Arc::new).collect(),
            metrics: routes.iter().map(|r| metrics(&r.name)).collect(),
            unrouted: metrics(""),
        }
    }

    /// The best route for a request and its metric handles.
    pub fn find_with_metrics(
        &self,
        host: Option<&str>,
        path: &str,
        method: &http::Method,
    ) -> Option<(&Arc<Route>, &RouteMetrics)> {
        let i = self.find_index(host, path, method)?;
        Some((self.routes.get(i)?, self.metrics.get(i)?))
    }

    /// The best route for a request. `host` may carry a port; it is compared case-insensitively.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        method: &http::Method,
    ) -> Option<&Arc<Route>> {
        self.routes.get(self.find_index(host, path, method)?)
    }

    fn find_index(&self, host: Option<&str>, path: &str, method: &http::Method) -> Option<usize> {
        let host = host.map(strip_port).unwrap_or("");
        let mut best: Option<((u8, usize), usize)> = None;
        for (i, r) in self.routes.iter().enumerate() {
            let Some(h) = host_score(&r.hosts, host) else {
                continue;
            };
            if !prefix_matches(&r.path_prefix, path) {
                continue;
            }
            if !r.methods.is_empty() && !r.methods.contains(method) {
                continue;
            }
            let score = (h, r.path_prefix.len());
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // `[v6]:port` → `[v6]`. Without the closing bracket the host is taken as it is (slicing
        // past its end here used to panic on `Host: [x`).
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// 3 = exact host, 2 = suffix, 1 = route without hosts; `None` = no match.
fn host_score(patterns: &[HostPattern], host: &str) -> Option<u8> {
    if patterns.is_empty() {
        return Some(1);
    }
    let mut best = None;
    for p in patterns {
        let s = match p {
            HostPattern::Exact(h) if h.eq_ignore_ascii_case(host) => 3,
            HostPattern::Suffix(sfx)
                if host.len() > sfx.len()
                    && host.is_char_boundary(host.len() - sfx.len())
                    && host[host.len() - sfx.len()..].eq_ignore_ascii_case(sfx) =>
            {
                2
            }
            _ => continue,
        };
        best = best.max(Some(s));
    }
    best
}

/// Prefix match on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path sent upstream when the route strips its prefix.
pub fn strip(prefix: &str, path: &str) -> String {
    let rest = path
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or(path);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// Refuses dot segments (plain or percent-encoded): an upstream that normalises them would
/// otherwise see a different path than the one the route was chosen for.
pub fn has_dot_segment(path: &str) -> bool {
    // Nearly every path holds none of the bytes any of these need.
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    }) || path.to_ascii_lowercase().contains("%2f")
        || path.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router() -> Router {
        let text = r#"
            [[listener]]
            address = "127.0.0.1:0"
            [upstreams.u]
            url = "http://127.0.0.1:1"
            [[route]]
            name = "any"
            upstream = "u"
            auth = "none"
            [[route]]
            name = "api"
            path_prefix = "/api"
            upstream = "u"
            auth = "none"
            [[route]]
            name = "api-v2-get"
            path_prefix = "/api/v2"
            methods = ["GET"]
            upstream = "u"
            auth = "none"
            [[route]]
            name = "wild"
            hosts = ["*.example.com"]
            upstream = "u"
            auth = "none"
            [[route]]
            name = "exact"
            hosts = ["api.example.com"]
            upstream = "u"
            auth = "none"
        "#;
        Router::new(
            &Config::parse(text, std::path::Path::new("."))
                .unwrap()
                .routes,
        )
    }

    #[test]
    fn picks_most_specific_host_then_longest_prefix() {
        let r = router();
        let name =
            |h: Option<&str>, p: &str, m: http::Method| r.find(h, p, &m).map(|r| r.name.clone());
        assert_eq!(
            name(None, "/api/v2/x", http::Method::GET).as_deref(),
            Some("api-v2-get")
        );
        assert_eq!(
            name(None, "/api/v2/x", http::Method::POST).as_deref(),
            Some("api")
        );
        assert_eq!(
            name(None, "/apix", http::Method::GET).as_deref(),
            Some("any")
        );
        assert_eq!(
            name(Some("API.example.com:443"), "/api", http::Method::GET).as_deref(),
            Some("exact")
        );
        assert_eq!(
            name(Some("b.example.com"), "/api", http::Method::GET).as_deref(),
            Some("wild")
        );
        assert_eq!(
            name(Some("example.com"), "/api", http::Method::GET).as_deref(),
            Some("api")
        );
        // Malformed hosts are not routed by a host pattern, and never panic.
        assert_eq!(
            name(Some("[abc"), "/", http::Method::GET).as_deref(),
            Some("any")
        );
        assert_eq!(
            name(Some("[::1]:8443"), "/", http::Method::GET).as_deref(),
            Some("any")
        );
        assert_eq!(
            name(Some("é.example.com"), "/", http::Method::GET).as_deref(),
            Some("wild")
        );
        assert_eq!(
            name(Some("xéxample.com"), "/", http::Method::GET).as_deref(),
            Some("any")
        );
    }

    #[test]
    fn strips_prefixes_and_spots_dot_segments() {
        assert_eq!(strip("/api", "/api/x?"), "/x?");
        assert_eq!(strip("/api", "/api"), "/");
        assert_eq!(strip("/api/", "/api/x"), "/x");
        assert!(has_dot_segment("/public/../admin"));
        assert!(has_dot_segment("/public/%2E%2e/admin"));
        assert!(has_dot_segment("/a%2fb"));
        assert!(!has_dot_segment("/a/..b/c.d"));
    }
}
