//! Fuzz target bodies, shared by the cargo-fuzz binaries in `fuzz/` and by the corpus replay in
//! `tests/fuzz_corpus.rs`. Each target takes arbitrary bytes, feeds them to a parser of untrusted
//! input and asserts properties beyond "does not crash"; a broken property panics, which libFuzzer
//! reports as a crash and `cargo test` as a failure. Not part of the proxy's API.
//!
//! Several targets read a small structured input (a mode byte, then fields separated by NUL bytes,
//! which JSON text cannot contain) so that the fuzzer reaches the checks behind a valid signature:
//! the target signs what the fuzzer wrote with a fixed key. The `seed_*` helpers write inputs in
//! the same layout for the committed corpora.
//!
//! One file per target (`authorization.rs`, `set_push.rs`, `poll_response.rs`, `config_toml.rs`,
//! `ip.rs`, `subject.rs`, `admin_body.rs`, `jwks.rs`, `challenge.rs`, `route.rs`, `dpop_proof.rs`: the target, its
//! property checks and its seeds) and `common.rs` for what they share (fixed clock, identities and
//! keys, the input reader, seed writers, signing, the docs/protocols.md §7 SET vectors).

#![allow(clippy::expect_used, clippy::panic)]

mod admin_body;
mod authorization;
mod challenge;
mod common;
mod config_toml;
mod dpop_proof;
mod ip;
mod jwks;
mod poll_response;
mod route;
mod set_push;
mod subject;

pub use admin_body::{admin_body, seed_admin_body};
pub use authorization::{authorization, seed_authorization};
pub use challenge::{challenge, seed_challenge};
pub use common::{protocol_vectors, NOW, SET_AUD, SET_ISS, TOKEN_AUD, TOKEN_ISS};
pub use config_toml::config_toml;
pub use dpop_proof::dpop_proof;
pub use ip::{ip, seed_ip};
pub use jwks::{jwks, seed_jwks};
pub use poll_response::{poll_response, seed_poll_response};
pub use route::{route, seed_route};
pub use set_push::{seed_set_push, set_push};
pub use subject::{seed_subject, subject};

/// A target body: panics when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay and the seed writer.
pub const TARGETS: &[(&str, Target)] = &[
    ("authorization", authorization),
    ("set_push", set_push),
    ("poll_response", poll_response),
    ("config_toml", config_toml),
    ("ip", ip),
    ("subject", subject),
    ("admin_body", admin_body),
    ("jwks", jwks),
    ("challenge", challenge),
    ("route", route),
    ("dpop_proof", dpop_proof),
];

/// The seeds of a target (config seeds are the shipped configuration files, read by the caller).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "authorization" => seed_authorization(),
        "set_push" => seed_set_push(),
        "poll_response" => seed_poll_response(),
        "ip" => seed_ip(),
        "subject" => seed_subject(),
        "admin_body" => seed_admin_body(),
        "jwks" => seed_jwks(),
        "challenge" => seed_challenge(),
        "route" => seed_route(),
        _ => Vec::new(),
    }
}
