//! Every shipped file in config/ loads and validates (with throwaway values for its env: secrets).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cae_proxy::config::Config;

#[test]
fn every_shipped_configuration_validates() {
    // SAFETY (test process): set before any thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("CAE_ADMIN_TOKEN", "test-admin-token");
        std::env::set_var("CAE_PUSH_AUTHORIZATION", "Bearer test-push");
    }
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
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
}
