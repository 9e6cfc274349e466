//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) and regression input
//! (`fuzz/regressions/<target>/`) through the same target bodies the cargo-fuzz binaries run
//! (`cae_proxy::dev::fuzz`), plus the seeds generated in code. A property a fuzzer once broke
//! stays checked by `cargo test`, with or without cargo-fuzz on the machine.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` rewrites the seed files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Files of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("fuzz").join(kind).join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read corpus file");
            (p, b)
        })
        .collect()
}

fn replay(target: &str) {
    let (_, f) = cae_proxy::dev::fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .expect("known target");
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        for (path, bytes) in inputs(kind, target) {
            let r = std::panic::catch_unwind(|| f(&bytes));
            assert!(r.is_ok(), "{target}: {} breaks a property", path.display());
            n += 1;
        }
    }
    for s in cae_proxy::dev::fuzz::seeds(target) {
        f(&s);
        n += 1;
    }
    assert!(n > 0, "{target}: no corpus at all");
}

#[test]
fn authorization() {
    replay("authorization");
}

#[test]
fn set_push() {
    replay("set_push");
}

#[test]
fn poll_response() {
    replay("poll_response");
}

#[test]
fn config_toml() {
    replay("config_toml");
}

#[test]
fn ip() {
    replay("ip");
}

#[test]
fn subject() {
    replay("subject");
}

#[test]
fn admin_body() {
    replay("admin_body");
}

#[test]
fn jwks() {
    replay("jwks");
}

#[test]
fn challenge() {
    replay("challenge");
}

#[test]
fn route() {
    replay("route");
}

#[test]
fn dpop_proof() {
    replay("dpop_proof");
}

#[test]
fn every_target_has_a_committed_corpus() {
    for (name, _) in cae_proxy::dev::fuzz::TARGETS {
        assert!(
            !inputs("corpus", name).is_empty(),
            "fuzz/corpus/{name} is empty: run the ignored write_seeds test"
        );
        assert!(
            root()
                .join("fuzz/fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no cargo-fuzz binary for {name}"
        );
    }
}

/// Writes the seeds of every target into `fuzz/corpus/<target>/seed-NN` (the shipped
/// configuration files for `config_toml`).
#[test]
#[ignore = "rewrites committed files"]
fn write_seeds() {
    for (name, _) in cae_proxy::dev::fuzz::TARGETS {
        let dir = root().join("fuzz/corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let mut seeds = cae_proxy::dev::fuzz::seeds(name);
        if *name == "config_toml" {
            let mut files: Vec<PathBuf> = ["config", "docs/deploy/compose"]
                .iter()
                .flat_map(|d| std::fs::read_dir(root().join(d)).unwrap())
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            seeds.extend(files.iter().map(|p| std::fs::read(p).unwrap()));
            seeds.push(b"[[listener]]\naddress = \"127.0.0.1:0\"\n".to_vec());
            seeds.push(b"[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nmax_h2_streams = 0\n[[listener]]\naddress = \"[::1]:0\"\n".to_vec());
        }
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
