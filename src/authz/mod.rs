//! The authorization service (listener role `authz`): a gateway that forwards requests itself
//! (Envoy, Istio, nginx, Traefik, Caddy) asks about each one before forwarding it, and gets the
//! proxy's own decision on it — routes, issuers, `[route.cae]`, report-only, challenges — without
//! cae-proxy forwarding anything.
//!
//! - [`grpc`]: Envoy's `envoy.service.auth.v3.Authorization/Check` (ext_authz `grpc_service`,
//!   Istio `envoyExtAuthzGrpc`), a `application/grpc` request on the same listener.
//! - [`http_check`]: every other request: Envoy ext_authz `http_service` (Istio
//!   `envoyExtAuthzHttp`) and nginx `auth_request` (original path after the listener's
//!   `path_prefix`), Traefik `ForwardAuth` and Caddy `forward_auth` (`X-Forwarded-*`).
//! - [`check`]: what both do with the original request: route, authentication, decision
//!   ([`crate::proxy::authenticate`], shared with the proxy) and the verdict.

pub mod check;
pub mod grpc;
pub mod http_check;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::reply::BoxedBody;
use crate::server::conn::ConnInfo;
use crate::state::Shared;

/// Entry point of an authorization listener: gRPC requests go to the Check service (`grpc` is the
/// connection's), everything else to the HTTP dialects.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    grpc: Option<grpc::Service>,
    req: Request<Incoming>,
) -> Response<BoxedBody> {
    match grpc {
        Some(svc) if grpc::is_grpc(&req) => grpc::serve(svc, req).await,
        _ => http_check::serve(shared, conn, req).await,
    }
}
