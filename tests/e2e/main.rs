//! The end-to-end tests, one binary: the real proxy (in-process through `common::Harness`, or the
//! compiled binary through `common::Binary`) on 127.0.0.1:0 against real servers. One module per
//! concern; `common/` holds the harness, the configuration builder and the shared helpers.
//!
//! The tests share this process: none sets environment variables or installs a global tracing
//! subscriber, every proxy has its own metrics registry, every file lives in a test's own temp
//! dir, and every port is bound on 0 (or reserved: `common::ReservedPort`). What cannot share a
//! process has its own binary: `tests/process_bounds/` (measures this process's descriptors and
//! memory) and `tests/configs.rs` (sets environment variables); the pure checks
//! (`tests/properties.rs`, `tests/fuzz_corpus.rs`) start no server. One concern at a time:
//! `cargo test --test e2e fleet::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod adversarial;
mod authz;
mod cae;
mod demo;
mod deploy;
mod dev_servers;
mod dpop;
mod durability;
mod fleet;
mod forwarding;
mod front_door;
mod gateways;
mod interop;
mod lifecycle;
mod ops;
mod resources;
mod signals;
mod tokens;
mod tracing;
