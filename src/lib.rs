//! cae-proxy: a reverse proxy that validates bearer JWTs and enforces Continuous Access Evaluation
//! (revocations, account blocks and IP bindings fed by Shared Signals) with claims challenges.
//!
//! Crate map (request flow in docs/architecture.md):
//! - [`config`]: TOML → validated `Config` (uses nothing else in the crate)
//! - [`store`]: revocation / block / binding tables and their durable backends

pub mod config;
pub mod store;
pub mod auth;
pub mod fetch;
pub mod tls;
pub mod signals;
