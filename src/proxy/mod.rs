//! The request pipeline, in order: route → token → decide → forward or challenge → one access-log
//! line. [`record`] (metrics and the access line) serves the authorization listeners too.

mod ambiguity;
pub mod authenticate;
mod body;
mod forward;
pub mod headers;
pub mod route;
mod tunnel;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::auth::decide::Decision;
use crate::config::{AuthMode, Route};
use crate::metrics::RouteMetrics;
use crate::reply::{json_error, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};
use crate::telemetry::spans::{RequestEnd, RequestFacts};
use crate::telemetry::RequestTrace;
use upstream::ForwardError;

/// The listener role a request is labelled with in metrics and access lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRole {
    Proxy,
    Authz,
}

impl RequestRole {
    pub fn label(self) -> &'static str {
        match self {
            RequestRole::Proxy => "proxy",
            RequestRole::Authz => "authz",
        }
    }
}

/// Per-request facts for the access log and metrics (proxy and authorization listeners).
pub(crate) struct Outcome<'s> {
    pub role: RequestRole,
    pub route: Option<&'s RouteMetrics>,
    pub decision: &'static str,
    pub reason: &'static str,
    /// The precise cause within `reason` (token error, revocation kind, IP rule), access line only.
    pub cause: &'static str,
    pub upstream_status: Option<u16>,
    pub client_ip: std::net::IpAddr,
    /// Authorization listeners: how the gateway asked (access line only).
    pub dialect: Option<&'static str>,
}

impl<'s> Outcome<'s> {
    pub(crate) fn new(role: RequestRole, client_ip: std::net::IpAddr) -> Outcome<'s> {
        Outcome {
            role,
            route: None,
            decision: "none",
            reason: "",
            cause: "",
            upstream_status: None,
            client_ip,
            dialect: None,
        }
    }

    /// Takes the decision's labels; a report-only refusal is logged as a warning.
    pub(crate) fn decided(&mut self, route: &Route, decision: &Decision, request_id: &str) {
        if let Some(reason) = decision.reason() {
            // The reason of the answer actually given (a grant refusal replaces a relaxed one).
            (self.reason, self.cause) = (reason.label(), reason.cause());
        }
        self.decision = match decision {
            Decision::Allow if route.auth == AuthMode::None => "none",
            Decision::Allow => "allow",
            Decision::ReportOnly(reason) => {
                tracing::warn!(request_id, route = %route.name, role = self.role.label(), reason = reason.label(), cause = reason.cause(), "report-only: this request would have been refused");
                "report_only"
            }
            Decision::Deny(_) => "deny",
        };
    }
}

/// What the access line names of a request: its method, path and host (copied only when the
/// access log is on).
pub(crate) struct Seen {
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
}

impl Seen {
    /// [`Seen::when_logged`] of a request (nothing is looked up when the access log is off).
    pub(crate) fn of_request<B>(req: &Request<B>) -> Option<Seen> {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return None;
        }
        Seen::when_logged(req.method(), req.uri().path(), headers::authority(req))
    }

    /// `Some` only when the access log is enabled.
    pub(crate) fn when_logged(method: &Method, path: &str, host: Option<&str>) -> Option<Seen> {
        tracing::enabled!(target: "access", tracing::Level::INFO).then(|| Seen {
            method: method.clone(),
            path: path.to_string(),
            host: host.map(str::to_string),
        })
    }
}

/// How one request ended, for [`record`].
pub(crate) struct Ending<'a> {
    pub request_id: &'a str,
    pub status: u16,
    /// The answer's `Content-Length`, when known.
    pub bytes: Option<u64>,
    pub elapsed: std::time::Duration,
    /// The error that ended the request, logged as a warning.
    pub failure: Option<String>,
}

/// The request metrics (by route, status, decision, reason and listener role) and the one
/// access-log line (target `access`) of a request.
pub(crate) fn record(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    out: &Outcome<'_>,
    seen: Option<Seen>,
    end: Ending<'_>,
) {
    let rm = out.route.unwrap_or(&snap.router.unrouted);
    let role = out.role.label();
    rm.count_request(
        &shared.metrics.requests,
        end.status,
        out.decision,
        out.reason,
        role,
    );
    let duration = match out.role {
        RequestRole::Proxy => &rm.request_duration,
        RequestRole::Authz => &rm.check_duration,
    };
    duration.observe(end.elapsed.as_secs_f64());
    let (status, rid) = (end.status, end.request_id);
    let duration_ms = end.elapsed.as_secs_f64() * 1000.0;
    if let Some(error) = end.failure {
        let (method, path, host) = match seen {
            Some(s) => (Some(s.method), Some(s.path), s.host),
            None => (None, None, None),
        };
        tracing::warn!(
            target: "access",
            request_id = rid,
            method = method.as_ref().map(|m| m.as_str()),
            host = host.as_deref(),
            path = path.as_deref(),
            route = %rm.route,
            status,
            upstream_status = out.upstream_status,
            duration_ms,
            client_ip = %out.client_ip,
            decision = out.decision,
            reason = out.reason,
            cause = out.cause,
            listener = %conn.listener,
            role,
            dialect = out.dialect,
            error = %error,
        );
    } else if let Some(s) = seen {
        tracing::info!(
            target: "access",
            request_id = rid,
            method = %s.method,
            host = s.host.as_deref().unwrap_or(""),
            path = %s.path,
            route = %rm.route,
            status,
            upstream_status = out.upstream_status,
            bytes = end.bytes,
            duration_ms,
            client_ip = %out.client_ip,
            decision = out.decision,
            reason = out.reason,
            cause = out.cause,
            listener = %conn.listener,
            role,
            dialect = out.dialect,
        );
    }
}

/// Failures that end a request before or while forwarding, each with its status.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("route {0} has no upstream: it only answers authorization checks")]
    NoUpstream(String),
    #[error("the request target contains a dot segment or an encoded slash")]
    BadPath,
    #[error("the request body exceeds the limit")]
    BodyTooLarge,
    #[error("the request head ({0} bytes) exceeds the limit of {1} bytes")]
    HeadTooLarge(usize, usize),
    #[error("the request cannot be forwarded: {0}")]
    BadRequest(String),
    /// Host or message framing that two parsers could read differently (request smuggling).
    #[error("ambiguous request: {0}")]
    Ambiguous(&'static str),
    /// A transfer coding other than `chunked` alone (RFC 9112 §6.1: a server answers 501 to
    /// a coding it does not implement; hyper reads only the chunked framing).
    #[error("the transfer coding {0:?} is not implemented: only \"chunked\" is")]
    UnsupportedCoding(String),
    /// An upgrade carries no body: the upstream would wait for one it never gets, or read it as
    /// the first bytes of the new protocol.
    #[error("a request that asks for a protocol upgrade cannot carry a body")]
    UpgradeWithBody,
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl ProxyError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute | ProxyError::NoUpstream(_) => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::BadPath => (StatusCode::BAD_REQUEST, "bad_path"),
            ProxyError::HeadTooLarge(..) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ProxyError::BodyTooLarge | ProxyError::Forward(ForwardError::BodyTooLarge) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            ProxyError::BadRequest(_) | ProxyError::UpgradeWithBody => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ProxyError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "ambiguous_request"),
            ProxyError::UnsupportedCoding(_) => {
                (StatusCode::NOT_IMPLEMENTED, "unsupported_transfer_coding")
            }
            ProxyError::Forward(ForwardError::BodyTimeout(_)) => {
                (StatusCode::REQUEST_TIMEOUT, "body_timeout")
            }
            ProxyError::Forward(ForwardError::ClientBody(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request_body")
            }
            ProxyError::Forward(ForwardError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            ProxyError::Forward(
                ForwardError::Connect(_)
                | ForwardError::Upstream(_)
                | ForwardError::UnofferedSwitch,
            ) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        }
    }

    /// Whether the HTTP/1.1 connection must close after the answer: the rest of the stream
    /// (an unread or unreadable body) cannot be trusted to start at a request boundary.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::Ambiguous(_)
                | ProxyError::UpgradeWithBody
                | ProxyError::UnsupportedCoding(_)
                | ProxyError::BodyTooLarge
                | ProxyError::Forward(
                    ForwardError::BodyTooLarge
                        | ForwardError::BodyTimeout(_)
                        | ForwardError::ClientBody(_)
                )
        )
    }
}

/// Entry point for the proxy listeners.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, Infallible> {
    let start = Instant::now();
    let snap = shared.snapshot.load_full();
    let request_id = headers::request_id(req.headers());
    let rid = request_id.to_str().unwrap_or_default();
    let version = req.version();
    let seen = Seen::of_request(&req);
    // `[tracing]` off: no span, nothing parsed.
    let trace = shared.telemetry.get().and_then(|t| {
        t.request(&RequestFacts {
            span: "request",
            method: req.method(),
            scheme: if conn.tls { "https" } else { "http" },
            path: req.uri().path(),
            host: headers::authority(&req),
            headers: req.headers(),
        })
    });
    let mut out = Outcome::new(RequestRole::Proxy, conn.peer.ip());
    // A failed request's error goes into its one access line, logged as a warning.
    let mut failure: Option<String> = None;
    let result = inner(
        &shared,
        &snap,
        &conn,
        req,
        &request_id,
        &mut out,
        trace.as_ref(),
    )
    .await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = e.status();
            if let ProxyError::Forward(
                f @ (ForwardError::Connect(_)
                | ForwardError::Timeout(_)
                | ForwardError::Upstream(_)
                | ForwardError::UnofferedSwitch),
            ) = &e
            {
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&crate::metrics::KindLabel { kind: f.kind() })
                    .inc();
            }
            // The log line gets the whole chain of causes; the client only the first.
            failure = Some(crate::errors::Chain(&e).to_string());
            out.reason = code;
            let mut r = json_error(status, code, &e.to_string(), rid);
            if e.closes_connection() && version < Version::HTTP_2 {
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, request_id.clone());
    let end = Ending {
        request_id: rid,
        status: resp.status().as_u16(),
        bytes: resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        elapsed: start.elapsed(),
        failure,
    };
    if let Some(trace) = trace {
        trace.finish(RequestEnd {
            status: end.status,
            route: out.route.map(|r| r.route.as_str()),
            decision: out.decision,
            reason: out.reason,
            cause: out.cause,
            dialect: None,
        });
    }
    record(&shared, &snap, &conn, &out, seen, end);
    Ok(resp)
}

async fn inner<'s>(
    shared: &Arc<Shared>,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    out: &mut Outcome<'s>,
    trace: Option<&RequestTrace>,
) -> Result<Response<BoxedBody>, ProxyError> {
    let rid = request_id.to_str().unwrap_or_default();
    let server = &snap.config.server;
    // The HTTP layer's own limit is twice this one, so that a head just over it gets this
    // answer (JSON, request id, access line) rather than the layer's bare 431.
    let head = headers::head_size(&req);
    if head > server.max_header_bytes {
        return Err(ProxyError::HeadTooLarge(head, server.max_header_bytes));
    }
    let framing = ambiguity::ambiguity(&req).map_err(ProxyError::Ambiguous)?;
    if framing.transfer_encoding {
        if let Some(coding) = ambiguity::unsupported_coding(req.headers()) {
            return Err(ProxyError::UnsupportedCoding(coding));
        }
    }
    if route::has_dot_segment(req.uri().path()) {
        return Err(ProxyError::BadPath);
    }
    let (route, route_metrics) = snap
        .router
        .find_with_metrics(framing.host, req.uri().path(), req.method())
        .ok_or(ProxyError::NoRoute)?;
    let route = route.clone();
    out.route = Some(route_metrics);
    out.client_ip = headers::client_ip(conn.peer.ip(), req.headers(), server);
    if framing
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > server.max_request_body)
    {
        return Err(ProxyError::BodyTooLarge);
    }

    let now = crate::store::now_secs();
    let inbound = crate::auth::inbound::Inbound {
        method: req.method(),
        scheme: if conn.tls { "https" } else { "http" },
        host: framing.host,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        client_ip: out.client_ip,
        peer: conn.peer.ip(),
        client_cert_sha256: conn.client_cert_sha256.get(),
        trace,
    };
    let auth = authenticate::authenticate(shared, snap, conn, &route, &inbound, now).await;
    out.decided(&route, &auth.decision, rid);
    if let Decision::Deny(refusal) = &auth.decision {
        return Ok(
            authenticate::challenge(snap, refusal, &auth.dpop, &inbound, rid, now).into_response(),
        );
    }
    let principal = auth.principal;
    let forwarded_host = headers::authority_value(req.uri(), framing.host_line);
    let mut resp = forward::forward(
        (shared, snap),
        conn,
        (&route, route_metrics),
        principal.as_ref(),
        (req, forwarded_host),
        (request_id, trace),
        out,
    )
    .await?;
    if let Some(nonce) = auth.dpop.nonce {
        // RFC 9449 §9: the next nonce, before the client's one expires.
        resp.headers_mut()
            .insert(&crate::auth::dpop::DPOP_NONCE, nonce);
    }
    Ok(resp)
}
