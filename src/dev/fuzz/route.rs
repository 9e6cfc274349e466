//! Fuzz target `route`: routing on the request's host, path and method.

use std::sync::OnceLock;

use super::common::Input;
use crate::config::Config;

fn router() -> &'static crate::proxy::route::Router {
    static R: OnceLock<crate::proxy::route::Router> = OnceLock::new();
    R.get_or_init(|| {
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
methods = ["GET", "POST"]
upstream = "u"
auth = "none"
[[route]]
name = "wild"
hosts = ["*.example.com"]
path_prefix = "/"
upstream = "u"
auth = "none"
[[route]]
name = "exact"
hosts = ["api.example.com", "[::1]"]
path_prefix = "/v1/"
upstream = "u"
auth = "none"
"#;
        let c = Config::parse(text, std::path::Path::new(".")).expect("router fixture");
        crate::proxy::route::Router::new(&c.routes)
    })
}

/// Fuzz target `route`: fields host, path, method. Routing never panics, a chosen route's path
/// prefix matches on a segment boundary, and the stripped path still starts with `/`.
pub fn route(data: &[u8]) {
    use crate::proxy::route::{has_dot_segment, prefix_matches, strip};
    let mut inp = Input(data);
    let host = inp.text();
    let path = inp.text();
    let method = http::Method::from_bytes(inp.field()).unwrap_or(http::Method::GET);
    let _ = has_dot_segment(&path);
    for h in [Some(host.as_str()), None] {
        if let Some(r) = router().find(h, &path, &method) {
            assert!(prefix_matches(&r.path_prefix, &path));
            assert!(r.methods.is_empty() || r.methods.contains(&method));
            assert!(strip(&r.path_prefix, &path).starts_with('/'));
        }
    }
}

/// Seeds for `route`.
pub fn seed_route() -> Vec<Vec<u8>> {
    [
        ["api.example.com:443", "/v1/x", "GET"],
        ["API.EXAMPLE.COM", "/v1", "POST"],
        ["b.example.com", "/api/x", "PATCH"],
        ["[::1]:8443", "/v1/", "GET"],
        ["[abc", "/", "GET"],
        ["\u{e9}.example.com", "/api", "GET"],
        ["example.com:", "/public/../api", "DELETE"],
    ]
    .iter()
    .map(|f| f.join("\0").into_bytes())
    .collect()
}
