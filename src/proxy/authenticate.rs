//! Authentication on the request path: the bearer token (per-connection memo, shared cache or
//! full validation), the issuer the route accepts, the CAE decision, report-only, and the
//! challenge a refusal is answered with.

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::cache;
use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{self, DenyReason};
use crate::auth::token::{self, Principal};
use crate::config::{AuthMode, Route};
use crate::metrics::ResultLabels;
use crate::reply::{full, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};

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

pub(super) type Denied = (DenyReason, Option<Arc<Principal>>);

/// Token extraction, validation (or cache hit) and the CAE decision.
pub(super) async fn authenticate(
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

pub(super) fn deny(
    snap: &Snapshot,
    route: &Route,
    reason: &DenyReason,
    p: Option<&Principal>,
    req: &Request<Incoming>,
    request_id: &str,
    now: i64,
) -> Response<BoxedBody> {
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
