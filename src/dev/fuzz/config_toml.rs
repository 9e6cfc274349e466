//! Fuzz target `config_toml`: the TOML configuration parser.

use crate::config::Config;

/// Fuzz target `config_toml`: `Config::parse` on arbitrary text never panics, and every error
/// message renders.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("/nonexistent/cae-proxy-fuzz")) {
        Ok(c) => {
            for r in &c.routes {
                assert!(!r.name.is_empty(), "every route has a name");
                assert!(
                    r.upstream.as_ref().map_or(
                        c.listeners
                            .iter()
                            .any(|l| l.role == crate::config::ListenerRole::Authz),
                        |u| c.upstreams.contains_key(u)
                    ),
                    "a route names a known upstream, or only answers authorization checks"
                );
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error list is never empty");
            let _ = e.to_string();
        }
    }
}
