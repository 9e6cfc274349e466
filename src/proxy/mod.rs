//! The request pipeline, in order: route → token → decide → forward or challenge → one access-log line.

pub mod forward;
pub mod headers;
pub mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::auth::cache;
use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{self, DenyReason};
use crate::auth::token::{self, Principal};
use crate::config::{AuthMode, Route};
use crate::metrics::{RequestLabels, ResultLabels, RouteMetrics};
use crate::state::{Shared, Snapshot};
use forward::{BoxError, ForwardError, ProxyBody};

/// What the server knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    pub listener: Arc<str>,
    /// The peer address as an `X-Forwarded-For` value ([`headers::peer_value`]).
    pub peer_value: HeaderValue,
    /// The last token this connection presented and its principal. Keep-alive clients send the
    /// same token on every request; a repeat skips hashing it for the shared cache.
    pub last_token: std::sync::Mutex<Option<LastToken>>,
    /// SHA-256 of the verified client certificate (mTLS listeners), set after the handshake.
    pub client_cert_sha256: std::sync::OnceLock<[u8; 32]>,
}

/// A verified token remembered by one connection, valid for one configuration generation (a
/// reload empties the shared cache, and so invalidates these too).
#[derive(Debug)]
pub struct LastToken {
    token: Box<str>,
    principal: Arc<Principal>,
    generation: u64,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, listener: Arc<str>) -> ConnInfo {
        ConnInfo {
            peer_value: headers::peer_value(peer.ip()),
            peer,
            tls,
            listener,
            last_token: std::sync::Mutex::new(None),
            client_cert_sha256: std::sync::OnceLock::new(),
        }
    }

    /// Records the client certificate the TLS handshake verified (its DER leaf).
    pub fn set_client_cert(&self, der: &[u8]) {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        let _ = self.client_cert_sha256.set(out);
    }

    fn remembered(&self, token: &str, generation: u64) -> Option<Arc<Principal>> {
        let last = self.last_token.lock().ok()?;
        // Constant-time comparison: an intermediary may multiplex several users' requests over
        // one connection, and the remembered token is another user's secret.
        last.as_ref()
            .filter(|l| {
                l.generation == generation
                    && aws_lc_rs::constant_time::verify_slices_are_equal(
                        l.token.as_bytes(),
                        token.as_bytes(),
                    )
                    .is_ok()
            })
            .map(|l| l.principal.clone())
    }

    fn remember(&self, token: &str, principal: &Arc<Principal>, generation: u64) {
        if let Ok(mut last) = self.last_token.lock() {
            *last = Some(LastToken {
                token: token.into(),
                principal: principal.clone(),
                generation,
            });
        }
    }
}

/// Per-request facts for the access log and metrics.
struct Outcome<'s> {
    route: Option<&'s RouteMetrics>,
    decision: &'static str,
    reason: &'static str,
    upstream_status: Option<u16>,
    client_ip: std::net::IpAddr,
}

/// Failures that end a request before or while forwarding, each with its status.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
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
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl ProxyError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::BadPath => (StatusCode::BAD_REQUEST, "bad_path"),
            ProxyError::HeadTooLarge(..) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ProxyError::BodyTooLarge | ProxyError::Forward(ForwardError::BodyTooLarge) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ProxyError::Ambiguous(_) => (StatusCode::BAD_REQUEST, "ambiguous_request"),
            ProxyError::Forward(ForwardError::ClientBody(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request_body")
            }
            ProxyError::Forward(ForwardError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
            }
            ProxyError::Forward(ForwardError::Connect(_) | ForwardError::Upstream(_)) => {
                (StatusCode::BAD_GATEWAY, "upstream_unavailable")
            }
        }
    }
}

/// A JSON error response naming the request id.
pub fn json_error(
    status: StatusCode,
    error: &str,
    message: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": error, "message": message, "request_id": request_id})
        .to_string();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// Entry point for the proxy listeners.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let snap = shared.snapshot.load_full();
    let request_id = headers::request_id(req.headers());
    let rid = request_id.to_str().unwrap_or_default();
    let version = req.version();
    // What the access log needs of the request, copied only when the access log is on.
    let access = tracing::enabled!(target: "access", tracing::Level::INFO).then(|| {
        (
            req.method().clone(),
            req.uri().path().to_string(),
            authority(&req).map(str::to_string),
        )
    });
    let mut out = Outcome {
        route: None,
        decision: "none",
        reason: "",
        upstream_status: None,
        client_ip: conn.peer.ip(),
    };
    // A failed request's error goes into its one access line, logged as a warning.
    let mut failure: Option<String> = None;
    let mut resp = match inner(&shared, &snap, &conn, req, &request_id, &mut out).await {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = e.status();
            if let ProxyError::Forward(
                f @ (ForwardError::Connect(_)
                | ForwardError::Timeout(_)
                | ForwardError::Upstream(_)),
            ) = &e
            {
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&crate::metrics::KindLabel { kind: f.kind() })
                    .inc();
            }
            failure = Some(e.to_string());
            out.reason = code;
            let mut r = json_error(status, code, &e.to_string(), rid);
            if matches!(e, ProxyError::Ambiguous(_)) && version < Version::HTTP_2 {
                // The rest of the stream cannot be trusted to start at a request boundary.
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    };
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    let rm = out.route.unwrap_or(&snap.router.unrouted);
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: rm.route.clone(),
            status,
            decision: out.decision,
            reason: out.reason,
        })
        .inc();
    rm.request_duration.observe(elapsed.as_secs_f64());
    if let Some(error) = failure {
        let (method, path, host) = match access {
            Some((m, p, h)) => (Some(m), Some(p), h),
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
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            client_ip = %out.client_ip,
            decision = out.decision,
            reason = out.reason,
            listener = %conn.listener,
            error = %error,
        );
    } else if let Some((method, path, host)) = access {
        tracing::info!(
            target: "access",
            request_id = rid,
            method = %method,
            host = host.as_deref().unwrap_or(""),
            path = %path,
            route = %rm.route,
            status,
            upstream_status = out.upstream_status,
            bytes = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            client_ip = %out.client_ip,
            decision = out.decision,
            reason = out.reason,
            listener = %conn.listener,
        );
    }
    Ok(resp)
}

/// Requests whose target host or body framing two parsers could read differently are refused,
/// never forwarded (RFC 9112 §3.2 and §6.3, RFC 9113 §8.3.1). hyper already refuses
/// conflicting `Content-Length` values, obsolete line folding and bad header syntax; this adds the
/// rules it leaves to the application.
fn ambiguity<B>(req: &Request<B>) -> Option<&'static str> {
    let h = req.headers();
    let mut hosts = h.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(host), Some(auth)) = (host, req.uri().authority()) {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(auth.as_str().as_bytes())
                {
                    return Some("the Host header disagrees with :authority");
                }
            }
        }
        Version::HTTP_11 if host.is_none() => {
            return Some("an HTTP/1.1 request needs a Host header")
        }
        _ => {}
    }
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        let valid = host
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@'));
        if !valid {
            return Some("the Host header is not a valid host");
        }
    }
    if h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Some("both Transfer-Encoding and Content-Length");
    }
    if h.get_all(CONTENT_LENGTH).iter().nth(1).is_some() {
        return Some("more than one Content-Length header");
    }
    None
}

fn authority(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()))
}

async fn inner<'s>(
    shared: &Arc<Shared>,
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    out: &mut Outcome<'s>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let rid = request_id.to_str().unwrap_or_default();
    let server = &snap.config.server;
    // The HTTP layer's own limit is twice this one, so that a head just over it gets this
    // answer (JSON, request id, access line) rather than the layer's bare 431.
    let head = headers::head_size(&req);
    if head > server.max_header_bytes {
        return Err(ProxyError::HeadTooLarge(head, server.max_header_bytes));
    }
    if let Some(why) = ambiguity(&req) {
        return Err(ProxyError::Ambiguous(why));
    }
    if route::has_dot_segment(req.uri().path()) {
        return Err(ProxyError::BadPath);
    }
    let (route, route_metrics) = snap
        .router
        .find_with_metrics(authority(&req), req.uri().path(), req.method())
        .ok_or(ProxyError::NoRoute)?;
    let route = route.clone();
    out.route = Some(route_metrics);
    out.client_ip = headers::client_ip(conn.peer.ip(), req.headers(), server);
    if req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > server.max_request_body)
    {
        return Err(ProxyError::BodyTooLarge);
    }

    let now = crate::store::now_secs();
    let principal = match authenticate(shared, snap, conn, &route, &req, out.client_ip, now).await {
        Ok(p) => {
            out.decision = if route.auth == AuthMode::None {
                "none"
            } else {
                "allow"
            };
            p
        }
        Err((reason, p)) => match refusal(&route, server.report_only, reason, p.as_deref()) {
            Refusal::ReportOnly(reason) => {
                out.reason = reason.label();
                out.decision = "report_only";
                tracing::warn!(request_id = rid, route = %route.name, reason = reason.label(), "report-only: this request would have been refused");
                p
            }
            Refusal::Deny(reason) => {
                // The reason of the answer actually given (a grant refusal replaces the relaxed one).
                out.reason = reason.label();
                out.decision = "deny";
                return Ok(deny(snap, &route, &reason, p.as_deref(), &req, rid, now));
            }
        },
    };
    forward(
        snap,
        conn,
        (&route, route_metrics),
        principal.as_deref(),
        req,
        request_id,
        out,
    )
    .await
}

/// What the pipeline does with a refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Forwarded as if allowed (report-only); the CAE reason it would have been refused for,
    /// for the log and the metrics.
    ReportOnly(DenyReason),
    /// Answered with this reason's challenge instead of being forwarded.
    Deny(DenyReason),
}

/// Applies report-only mode (the route's `report_only` or the global `server.report_only`) to
/// a refusal: it relaxes CAE refusals only, so scopes, roles and claim rules still hold, and a
/// missing or invalid token is always refused. `p` is the principal when the token was valid.
pub fn refusal(
    route: &Route,
    server_report_only: bool,
    reason: DenyReason,
    p: Option<&Principal>,
) -> Refusal {
    let report_only = reason.is_cae() && (route.report_only || server_report_only);
    let reason = match (report_only, p) {
        (true, Some(principal)) => decide::check_grants(route, principal)
            .err()
            .unwrap_or(reason),
        _ => reason,
    };
    if report_only && reason.is_cae() {
        Refusal::ReportOnly(reason)
    } else {
        Refusal::Deny(reason)
    }
}

type Denied = (DenyReason, Option<Arc<Principal>>);

/// Token extraction, validation (or cache hit) and the CAE decision.
async fn authenticate(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    route: &Route,
    req: &Request<Incoming>,
    client_ip: std::net::IpAddr,
    now: i64,
) -> Result<Option<Arc<Principal>>, Denied> {
    if route.auth == AuthMode::None {
        return Ok(None);
    }
    let server = &snap.config.server;
    let m = &shared.metrics;
    let token = match token::bearer(req.headers(), req.uri().query(), server.max_token_bytes) {
        Ok(Some(t)) => t,
        Ok(None) if route.auth == AuthMode::Optional => return Ok(None),
        Ok(None) => return Err((DenyReason::MissingToken, None)),
        Err(e) => {
            m.token_validations
                .get_or_create(&ResultLabels {
                    result: "invalid",
                    reason: e.reason(),
                })
                .inc();
            return Err((DenyReason::InvalidToken(e), None));
        }
    };
    // A cached principal counts only until `exp` and while its signing key is still published:
    // a key the provider removed (rotation, compromise) stops its cached tokens too.
    let usable = |p: &Principal| {
        p.exp >= now
            && snap
                .issuers
                .by_name(&p.issuer)
                .is_some_and(|i| i.keys.keys().get(p.kid.as_deref()).is_some())
    };
    let remembered = conn
        .remembered(token, snap.generation)
        .filter(|p| usable(p));
    // The shared cache's key (a SHA-256 of the token), computed at most once per request.
    let mut key = None;
    let cached = remembered.or_else(|| {
        let k = key.insert(cache::key(token));
        let p = shared.cache.get(k, now, 0).filter(|p| usable(p))?;
        conn.remember(token, &p, snap.generation);
        Some(p)
    });
    let principal = match cached {
        Some(p) => {
            m.token_cache_hits.inc();
            p
        }
        None => {
            m.token_cache_misses.inc();
            match token::validate(token, &snap.issuers, now).await {
                Ok(p) => {
                    m.token_validations
                        .get_or_create(&ResultLabels {
                            result: "valid",
                            reason: "",
                        })
                        .inc();
                    let p = Arc::new(p);
                    if shared.cache.enabled() {
                        let k = key.unwrap_or_else(|| cache::key(token));
                        shared.cache.insert(k, p.clone());
                        conn.remember(token, &p, snap.generation);
                    }
                    p
                }
                Err(e) => {
                    m.token_validations
                        .get_or_create(&ResultLabels {
                            result: "invalid",
                            reason: e.reason(),
                        })
                        .inc();
                    return Err((DenyReason::InvalidToken(e), None));
                }
            }
        }
    };
    if !route.issuers.is_empty() && !route.issuers.iter().any(|i| **i == *principal.issuer) {
        return Err((
            DenyReason::InvalidToken(token::TokenError::IssuerNotAllowed),
            Some(principal),
        ));
    }
    match decide::decide(route, &principal, shared.store.tables(), client_ip, now) {
        Ok(()) => Ok(Some(principal)),
        Err(reason) => Err((reason, Some(principal))),
    }
}

fn deny(
    snap: &Snapshot,
    route: &Route,
    reason: &DenyReason,
    p: Option<&Principal>,
    req: &Request<Incoming>,
    request_id: &str,
    now: i64,
) -> Response<ProxyBody> {
    // The challenge names the issuer that should mint the next token: the token's own (verified,
    // or for an invalid token the configured issuer its `iss` names, when the route accepts it:
    // only a choice among configured issuers, so an unverified `iss` selects, never supplies),
    // else the route's first.
    let named = || {
        let t = token::bearer(req.headers(), None, snap.config.server.max_token_bytes).ok()??;
        let i = snap.issuers.find(&token::inspect(t).ok()?.iss)?;
        (route.issuers.is_empty() || route.issuers.iter().any(|n| **n == i.cfg.name)).then_some(i)
    };
    let issuer = p
        .and_then(|p| snap.issuers.by_name(&p.issuer))
        .or_else(|| p.is_none().then(named).flatten())
        .or_else(|| route.issuers.first().and_then(|n| snap.issuers.by_name(n)))
        .or_else(|| snap.issuers.list.first());
    let auth_uri = issuer.and_then(|i| i.authorization_uri());
    let ctx = ChallengeCtx {
        realm: issuer.and_then(|i| i.cfg.realm.as_deref()).unwrap_or(""),
        authorization_uri: auth_uri.as_deref(),
        cp1: p.is_some_and(|p| p.cp1),
        request_id,
        now,
    };
    let c = challenge::respond(reason, &ctx);
    let mut r = Response::new(full(c.body));
    *r.status_mut() = c.status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&c.www_authenticate) {
        h.insert(WWW_AUTHENTICATE, v);
    }
    if req.headers().contains_key(http::header::ORIGIN) {
        h.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate"),
        );
    }
    r
}

/// The header value for a claim: strings as they are, arrays joined with commas, others as JSON.
pub fn claim_header(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

async fn forward(
    snap: &Snapshot,
    conn: &ConnInfo,
    (route, route_metrics): (&Route, &RouteMetrics),
    principal: Option<&Principal>,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    out: &mut Outcome<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let server = &snap.config.server;
    let upstream = snap
        .upstreams
        .get(&route.upstream)
        .ok_or(ProxyError::NoRoute)?;
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let host = authority(&req).map(str::to_string);

    // Target: upstream scheme + authority + base path + (stripped) path + query. The common
    // case (no base path, no stripping) reuses the request's own path and query as they are.
    let base = upstream.cfg.url.path().trim_end_matches('/');
    let pq = match (
        base.is_empty() && !route.strip_prefix,
        req.uri().path_and_query(),
    ) {
        (true, Some(pq)) => pq.clone(),
        _ => {
            let path = if route.strip_prefix {
                route::strip(&route.path_prefix, req.uri().path())
            } else {
                req.uri().path().to_string()
            };
            let pq = match req.uri().query() {
                Some(q) => format!("{base}{path}?{q}"),
                None => format!("{base}{path}"),
            };
            http::uri::PathAndQuery::try_from(pq)
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
    };
    let mut target = http::uri::Parts::default();
    target.scheme = Some(upstream.scheme.clone());
    target.authority = upstream.authority.clone();
    target.path_and_query = Some(pq);
    let uri = Uri::from_parts(target).map_err(|e| ProxyError::BadRequest(e.to_string()))?;

    let mut h = std::mem::take(req.headers_mut());
    headers::strip_hop_by_hop(&mut h, upgrade);
    h.insert(HOST, upstream.host.clone());
    for (name, _) in &route.identity_headers {
        h.remove(name);
    }
    if let Some(p) = principal {
        for (name, claim) in &route.identity_headers {
            if let Some(v) = p
                .claim(claim)
                .map(claim_header)
                .and_then(|s| HeaderValue::from_str(&s).ok())
            {
                h.insert(name.clone(), v);
            }
        }
    }
    if !route.forward_authorization {
        h.remove(http::header::AUTHORIZATION);
    }
    let trusted = server.is_trusted(conn.peer.ip().to_canonical());
    headers::set_forwarded(
        &mut h,
        &conn.peer_value,
        trusted,
        if conn.tls { "https" } else { "http" },
        host.as_deref(),
    );
    h.insert(&headers::X_REQUEST_ID, request_id.clone());

    let method = req.method().clone();
    let incoming = req.into_body();
    let body: ProxyBody = if upgrade {
        empty()
    } else {
        Limited::new(incoming, server.max_request_body as usize)
            .map_err(BoxError::from)
            .boxed()
    };
    let mut up = Request::new(body);
    *up.method_mut() = method;
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = h;

    let t0 = Instant::now();
    let result = upstream.send(up).await;
    route_metrics
        .upstream_duration
        .observe(t0.elapsed().as_secs_f64());
    let mut resp = result?;
    out.upstream_status = Some(resp.status().as_u16());

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    // The upstream's HTTP version is a property of that hop only: an HTTP/1.0 upstream must not
    // make the client's HTTP/1.1 connection answer in HTTP/1.0 and close after each response.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
}
