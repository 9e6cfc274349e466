//! Glue between the snapshot and the signals listener (push paths, pollers, stream status).

use crate::config::Config;
use crate::state::Shared;

/// Signals state derived from one configuration.
#[derive(Default)]
pub struct SignalsSnapshot {}

/// Signals state that survives reloads.
#[derive(Default)]
pub struct SignalsShared {}

pub fn build(_shared: &std::sync::Arc<Shared>, _config: &Config) -> SignalsSnapshot {
    SignalsSnapshot {}
}

pub fn not_ready(_s: &SignalsSnapshot) -> Vec<String> {
    Vec::new()
}

/// Entry point for listeners with `role = "signals"`.
pub async fn handle(
    _shared: std::sync::Arc<Shared>,
    _conn: std::sync::Arc<crate::proxy::ConnInfo>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<crate::proxy::forward::ProxyBody>, std::convert::Infallible> {
    let id = crate::proxy::headers::request_id(req.headers());
    Ok(crate::proxy::json_error(
        http::StatusCode::NOT_FOUND,
        "not_found",
        "no signals endpoint at this path",
        &id,
    ))
}

/// Starts pollers and stream management for the configured transmitters.
pub fn start(_shared: &std::sync::Arc<Shared>) {}
