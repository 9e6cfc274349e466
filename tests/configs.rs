//! Every shipped file in config/, and every configuration the deployment guides embed (compose
//! file, Kubernetes ConfigMaps), loads and validates (with throwaway values for its env: secrets).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cae_proxy::config::Config;

/// The TOML under `cae-proxy.toml: |` in a Kubernetes manifest (the ConfigMap's data), dedented.
fn configmap_toml(yaml: &str) -> Option<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "cae-proxy.toml: |");
    let key_indent = lines.next()?.find('c')?;
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    Some(
        body.iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn every_shipped_and_documented_configuration_validates() {
    // SAFETY (test process): this binary's only test; set before anything reads the environment.
    unsafe {
        std::env::set_var("CAE_ADMIN_TOKEN", "test-admin-token");
        std::env::set_var("CAE_PUSH_AUTHORIZATION", "Bearer test-push");
        std::env::set_var("CAE_POLL_AUTHORIZATION", "Bearer test-poll");
        std::env::set_var("CAE_REDIS_URL", "redis://127.0.0.1:6379/");
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
    let kube = root.join("docs/deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&kube)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert_eq!(
        manifests
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        ["gateway.yaml", "sidecar.yaml"]
    );
    for m in &manifests {
        let toml = configmap_toml(&std::fs::read_to_string(m).unwrap())
            .unwrap_or_else(|| panic!("{}: no `cae-proxy.toml: |` ConfigMap entry", m.display()));
        let c = Config::parse(&toml, Path::new("/etc/cae-proxy"))
            .unwrap_or_else(|e| panic!("{}:\n{e}", m.display()));
        assert!(c.listeners.len() >= 2, "{}", m.display());
    }
}
