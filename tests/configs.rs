//! Every shipped file in config/ and the compose trial's configuration load and validate (with
//! throwaway values for their env: secrets). The Kubernetes ConfigMaps and Markdown blocks of the
//! deployment guide are checked, with the files their pods mount, by tests/e2e/deploy.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cae_proxy::config::Config;

#[test]
fn every_shipped_and_documented_configuration_validates() {
    // SAFETY (test process): this binary's only test; set before anything reads the environment.
    unsafe {
        std::env::set_var("CAE_ADMIN_TOKEN", "test-admin-token");
        std::env::set_var("CAE_PUSH_AUTHORIZATION", "Bearer test-push");
        std::env::set_var("CAE_POLL_AUTHORIZATION", "Bearer test-poll");
        std::env::set_var("CAE_REDIS_URL", "redis://127.0.0.1:6379/");
        std::env::set_var("CAE_OTLP_AUTHORIZATION", "Bearer test-otlp");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            assert!(!c.listeners.is_empty(), "{}", path.display());
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected cae-proxy, sidecar, gateway and demo configurations, found {n}"
    );

    // The compose file's key files are generated when the stack starts (devkeys.py): stand in
    // for them, in a copy, to validate the rest.
    let compose = root.join("docs/deploy/compose/cae-proxy.toml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for f in ["issuer-jwks.json", "transmitter-jwks.json"] {
        std::fs::write(dir.path().join("keys").join(f), r#"{"keys":[]}"#).unwrap();
    }
    let copy = dir.path().join("cae-proxy.toml");
    std::fs::copy(&compose, &copy).unwrap();
    Config::load(&copy).unwrap_or_else(|e| panic!("{}:\n{e}", compose.display()));

    // The commented-out [tracing] section of the reference file, turned on as written.
    let reference = std::fs::read_to_string(root.join("config/cae-proxy.toml")).unwrap();
    let section: String = reference
        .lines()
        .skip_while(|l| *l != "# [tracing]")
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    assert!(section.starts_with("[tracing]\n"), "{section}");
    let c = Config::parse(&format!("{reference}\n{section}"), &root.join("config"))
        .unwrap_or_else(|e| panic!("config/cae-proxy.toml with [tracing] on:\n{e}"));
    let t = c.tracing.expect("[tracing] on");
    assert_eq!(t.endpoint, "http://otel-collector:4317");
    assert_eq!(t.headers.len(), 1);
}
