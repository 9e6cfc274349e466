//! What authentication reads of a request: the proxy pipeline and the authorization service
//! (which describes a gateway's original request) both fill it.

use std::net::IpAddr;

use http::{HeaderMap, Method};

use crate::telemetry::RequestTrace;

/// What authentication reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a Method,
    /// `http` or `https`, as the client used it.
    pub scheme: &'a str,
    /// The host the client named (`:authority` or `Host`).
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The socket peer: a trusted proxy's `X-Forwarded-Proto`/`-Host` (DPoP `htu`) and client
    /// certificate header are believed, nobody else's.
    pub peer: IpAddr,
    /// SHA-256 of the client certificate the TLS handshake verified, if any.
    pub client_cert_sha256: Option<&'a [u8; 32]>,
    /// The request's server span (`request` or `authz_check`, `[tracing]` on): token validation
    /// and the decision become its children.
    pub trace: Option<&'a RequestTrace>,
}
