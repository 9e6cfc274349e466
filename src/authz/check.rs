//! One authorization check: the original request a gateway asks about ([`Original`]) → route,
//! authentication and decision, exactly as the proxy pipeline does them
//! ([`crate::proxy::authenticate`]) → a [`Verdict`]: the headers to set and remove on an allowed
//! request, or the proxy's own answer to the client on a refused one.

use std::net::IpAddr;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::auth::decide::Decision;
use crate::auth::dpop::DPOP_NONCE;
use crate::auth::inbound::Inbound;
use crate::proxy::authenticate;
use crate::proxy::{headers, route, Outcome};
use crate::reply::Answer;
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};
use crate::telemetry::spans::{RequestEnd, RequestFacts};
use crate::telemetry::RequestTrace;

/// The request a gateway asks about, as the gateway described it.
#[derive(Debug)]
pub struct Original<'a> {
    pub method: Method,
    /// `http` or `https`, as the client used it.
    pub scheme: &'a str,
    /// The host the client named.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The client's headers as the gateway passed them on (`Authorization` among them).
    pub headers: &'a HeaderMap,
    /// The client address: from the gateway's description only when the gateway's own address is
    /// in `server.trusted_proxies`, else the gateway's address.
    pub client_ip: IpAddr,
}

/// What the gateway is told about the original request.
#[derive(Debug)]
pub enum Verdict {
    /// Let it through with `set` set (identity headers, replacing any copy) and `remove` removed:
    /// the identity headers the principal does not fill (a client's own copy must not pass for
    /// the identity) and `Authorization` on a route with `forward_authorization = false`.
    /// `respond`: headers for the client's response (`DPoP-Nonce` when the proof's nonce is
    /// from the previous period, RFC 9449 §8.2), which the gateway adds where it can.
    Allow {
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
        respond: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer the client with this: what the proxy answers the same request (status,
    /// `WWW-Authenticate`, JSON body).
    Deny(Answer),
}

/// A check that cannot be decided; answered like the proxy answers such a request (fail closed:
/// every gateway refuses the original request on it).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the check does not describe the original request: {0}")]
    BadCheck(String),
    #[error("no route matches this request")]
    NoRoute,
    #[error("the request target contains a dot segment or an encoded slash")]
    BadPath,
    #[error("the request head ({0} bytes) exceeds the limit of {1} bytes")]
    HeadTooLarge(usize, usize),
}

impl CheckError {
    /// Status and error code, as the proxy answers the same fault.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            CheckError::BadCheck(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            CheckError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            CheckError::BadPath => (StatusCode::BAD_REQUEST, "bad_path"),
            CheckError::HeadTooLarge(..) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
        }
    }

    /// The JSON error answer naming the request id.
    pub fn answer(&self, request_id: &str) -> Answer {
        let (status, code) = self.status();
        Answer::json_error(status, code, &self.to_string(), request_id)
    }
}

/// The size of the original request's head as `server.max_header_bytes` counts it (request line
/// and header lines, like [`headers::head_size`]).
fn head_size(o: &Original<'_>) -> usize {
    let line = o.method.as_str().len()
        + o.path.len()
        + o.query.map_or(0, |q| q.len() + 1)
        + o.host.map_or(0, str::len)
        + 12;
    o.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Decides the original request: the proxy's own checks of the target, its route, its
/// authentication and decision. `out` gets the labels of the access line and the metrics. With
/// `[tracing]`, the check is an `authz_check` span (a child of the original request's
/// `traceparent`) with the proxy's `token_validation` and `decision` spans under it.
pub(crate) async fn check<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    o: &Original<'_>,
    request_id: &str,
    out: &mut Outcome<'s>,
) -> Result<Verdict, CheckError> {
    let trace = shared.telemetry.get().and_then(|t| {
        t.request(&RequestFacts {
            span: "authz_check",
            method: &o.method,
            scheme: o.scheme,
            path: o.path,
            host: o.host,
            headers: o.headers,
        })
    });
    let verdict = decide(shared, snap, conn, o, request_id, out, trace.as_ref()).await;
    if let Err(e) = &verdict {
        // (The dialects set it too, for the checks they refuse before asking here.)
        out.reason = e.status().1;
    }
    if let Some(trace) = trace {
        trace.finish(RequestEnd {
            status: match &verdict {
                Ok(Verdict::Allow { .. }) => 200,
                Ok(Verdict::Deny(answer)) => answer.status.as_u16(),
                Err(e) => e.status().0.as_u16(),
            },
            route: out.route.map(|r| r.route.as_str()),
            decision: out.decision,
            reason: out.reason,
            cause: out.cause,
            dialect: out.dialect,
        });
    }
    verdict
}

async fn decide<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    o: &Original<'_>,
    request_id: &str,
    out: &mut Outcome<'s>,
    trace: Option<&RequestTrace>,
) -> Result<Verdict, CheckError> {
    let max = snap.config.server.max_header_bytes;
    let head = head_size(o);
    if head > max {
        return Err(CheckError::HeadTooLarge(head, max));
    }
    if route::has_dot_segment(o.path) {
        return Err(CheckError::BadPath);
    }
    let (route, route_metrics) = snap
        .router
        .find_with_metrics(o.host, o.path, &o.method)
        .ok_or(CheckError::NoRoute)?;
    out.route = Some(route_metrics);
    let now = crate::store::now_secs();
    let inbound = Inbound {
        method: &o.method,
        scheme: o.scheme,
        host: o.host,
        path: o.path,
        query: o.query,
        headers: o.headers,
        client_ip: o.client_ip,
        // The gateway: its forwarded headers are believed when it is a trusted proxy.
        peer: conn.peer.ip(),
        // The certificate of this connection is the gateway's, not the client's.
        client_cert_sha256: None,
        trace,
    };
    let auth = authenticate::authenticate(shared, snap, conn, route, &inbound, now).await;
    out.decided(route, &auth.decision, request_id);
    if let Decision::Deny(refusal) = &auth.decision {
        return Ok(Verdict::Deny(authenticate::challenge(
            snap, refusal, &auth.dpop, &inbound, request_id, now,
        )));
    }
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for (name, value) in headers::identity(route, auth.principal.as_deref()) {
        match value {
            Some(v) => set.push((name.clone(), v)),
            None => remove.push(name.clone()),
        }
    }
    if !route.forward_authorization {
        remove.push(AUTHORIZATION);
    }
    let respond = auth
        .dpop
        .nonce
        .map(|n| (DPOP_NONCE.clone(), n))
        .into_iter()
        .collect();
    Ok(Verdict::Allow {
        set,
        remove,
        respond,
    })
}
