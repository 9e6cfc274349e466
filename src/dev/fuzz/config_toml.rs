//! Fuzz target `config_toml`: the TOML configuration parser.

use crate::config::Config;

/// Fuzz target `config_toml`: `Config::parse` on arbitrary text never panics, what it accepts
/// names every listener, upstream, route, issuer and transmitter, and every error message renders.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("/nonexistent/cae-proxy-fuzz")) {
        Ok(c) => {
            let names = (c.listeners.iter().map(|l| l.name.as_str()))
                .chain(c.upstreams.keys().map(String::as_str))
                .chain(c.routes.iter().map(|r| r.name.as_str()))
                .chain(c.issuers.iter().map(|i| i.name.as_str()))
                .chain(c.transmitters.iter().map(|t| t.name.as_str()));
            for n in names {
                assert!(!n.trim().is_empty(), "every named entry has a name");
            }
            for r in &c.routes {
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
