//! Authentication of one request: the access token (per-connection memo, shared cache or full
//! validation) and its sender constraint (DPoP proof, client certificate: checked every time)
//! become a [`Credential`], [`decide`] decides, and a refusal becomes its challenge response. Used by the proxy pipeline on the request itself, and by the authorization service
//! on the original request a gateway asks about ([`Inbound`] is what both know of it).

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::HeaderMap;

use crate::auth::cache;
use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{decide, Credential, Decision, Refusal};
use crate::auth::dpop::DPOP_NONCE;
use crate::auth::inbound::Inbound;
use crate::auth::sender::{self, Checker, Effective};
use crate::auth::token::{self, Principal, Rejected, Scheme, TokenError};
use crate::config::{AuthMode, Route, SenderConstraint};
use crate::metrics::{ResultLabels, SenderLabels};
use crate::reply::Answer;
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};
use crate::telemetry::spans::Child;

/// The principal a valid token names, the decision on the request, and what a DPoP answer
/// carries.
pub struct Authenticated {
    pub principal: Option<Arc<Principal>>,
    pub decision: Decision,
    pub dpop: DpopAnswer,
}

/// What the answer to a DPoP request carries besides the decision.
#[derive(Debug, Clone, Default)]
pub struct DpopAnswer {
    /// A refusal is a `DPoP` challenge with these `algs` (RFC 9449 §7.1).
    pub algs: Option<String>,
    /// A fresh nonce for the `DPoP-Nonce` header (RFC 9449 §9): with every refusal of a DPoP
    /// challenge on a route that wants nonces, and with an answer to a proof whose nonce is
    /// from the previous period (rotation).
    pub nonce: Option<HeaderValue>,
}

/// What the request's `Authorization` came to.
struct Found {
    credential: Result<Option<Arc<Principal>>, Rejected>,
    /// The proof's nonce is from the previous period.
    stale_nonce: bool,
}

/// Reads the request's credential and decides. `conn` remembers the last token of a connection.
pub async fn authenticate(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    route: &Route,
    req: &Inbound<'_>,
    now: i64,
) -> Authenticated {
    if route.auth == AuthMode::None {
        return Authenticated {
            principal: None,
            decision: Decision::Allow,
            dpop: DpopAnswer::default(),
        };
    }
    let span = req.trace.map(|t| t.child("token_validation"));
    let found = credential(shared, snap, conn, route, req, now).await;
    if let Some(span) = span {
        token_span(span, &found);
    }
    let span = req.trace.map(|t| t.child("decision"));
    let presented = match &found.credential {
        Ok(None) => Credential::Absent,
        Ok(Some(p)) => Credential::Valid(p),
        Err(rejected) => Credential::Invalid(rejected),
    };
    let report_only = snap.config.server.report_only;
    let decision = decide(
        route,
        report_only,
        presented,
        shared.store.tables(),
        req.client_ip,
        now,
    );
    if let Some(span) = span {
        decision_span(span, &decision);
    }
    let dpop = dpop_answer(snap, route, &found, &decision, now);
    Authenticated {
        principal: found.credential.ok().flatten(),
        decision,
        dpop,
    }
}

/// Ends the `token_validation` span: absent, valid (and the configured issuer's name) or
/// invalid (and why). Nothing of the token itself.
fn token_span(mut span: Child, found: &Found) {
    match &found.credential {
        Ok(None) => span.set("cae.token.result", "absent"),
        Ok(Some(p)) => {
            span.set("cae.token.result", "valid");
            span.set("cae.token.issuer", p.issuer.to_string());
        }
        Err(rejected) => {
            span.set("cae.token.result", "invalid");
            span.fail(rejected.error.reason());
        }
    }
    span.end();
}

/// Ends the `decision` span with the decision and, for a refusal, its reason and cause.
fn decision_span(mut span: Child, decision: &Decision) {
    span.set(
        "cae.decision",
        match decision {
            Decision::Allow => "allow",
            Decision::ReportOnly(_) => "report_only",
            Decision::Deny(_) => "deny",
        },
    );
    if let Some(reason) = decision.reason() {
        span.set("cae.reason", reason.label());
        if !reason.cause().is_empty() {
            span.set("cae.cause", reason.cause());
        }
    }
    span.end();
}

/// The `algs` of a `DPoP` challenge and the nonce to send, under the policy of the issuer the
/// token (or the refusal) names.
fn dpop_answer(
    snap: &Snapshot,
    route: &Route,
    found: &Found,
    decision: &Decision,
    now: i64,
) -> DpopAnswer {
    let refusal = match decision {
        Decision::Deny(r) => Some(r),
        _ => None,
    };
    let dpop_refusal = refusal.is_some_and(|r| r.dpop);
    if !dpop_refusal && !found.stale_nonce {
        return DpopAnswer::default();
    }
    let issuer = match &found.credential {
        Ok(Some(p)) => Some(p.issuer.clone()),
        _ => refusal.and_then(|r| r.issuer.clone()),
    };
    let issuer = issuer
        .as_deref()
        .and_then(|n| snap.issuers.by_name(n))
        .or_else(|| snap.issuers.list.first());
    let policy = Effective::of(&route.sender, issuer.map(|i| &i.cfg.sender));
    let nonce = (policy.nonce && (dpop_refusal || found.stale_nonce))
        .then(|| HeaderValue::from_str(&snap.nonces.issue(policy.rotation, now)).ok())
        .flatten();
    DpopAnswer {
        algs: dpop_refusal.then(|| policy.algs_param()),
        nonce,
    }
}

/// The request's access token as a validated principal (`Ok(None)`: no token), from the
/// connection's memo, the shared cache, or validation; then its sender constraint, which is
/// checked on every request (a fresh DPoP proof, the client certificate), cached token or not.
async fn credential(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    route: &Route,
    req: &Inbound<'_>,
    now: i64,
) -> Found {
    let m = &shared.metrics;
    let invalid = |reason| {
        m.token_validations_by
            .inc(&m.token_validations, ("invalid", reason), || ResultLabels {
                result: "invalid",
                reason,
            });
    };
    let done = |credential| Found {
        credential,
        stale_nonce: false,
    };
    let max = snap.config.server.max_token_bytes;
    let (scheme, token) = match token::access_token(req.headers, req.query, max) {
        Ok(Some(t)) => t,
        Ok(None) => return done(Ok(None)),
        Err(e) => {
            invalid(e.reason());
            return done(Err(e.into()));
        }
    };
    // A route that does not do sender constraint knows only bearer tokens (RFC 6750 §3.1).
    if scheme == Scheme::Dpop && route.sender.constraint == Some(SenderConstraint::None) {
        return done(Ok(None));
    }
    let dpop = scheme == Scheme::Dpop;
    let principal = match validated(shared, snap, conn, token, now).await {
        Ok(p) => p,
        Err(mut rejected) => {
            invalid(rejected.error.reason());
            rejected.dpop = dpop;
            return done(Err(rejected));
        }
    };
    let issuer = snap.issuers.by_name(&principal.issuer);
    let policy = Effective::of(&route.sender, issuer.map(|i| &i.cfg.sender));
    if dpop && policy.constraint == SenderConstraint::None {
        return done(Ok(None));
    }
    let checker = Checker {
        policy,
        server: &snap.config.server,
        nonces: &snap.nonces,
        replay: &shared.replay,
        now,
    };
    let method = sender::method(&principal, scheme);
    let count = |result, reason| {
        m.sender_checks_by
            .inc(&m.sender_checks, (method, result, reason), || {
                SenderLabels {
                    method,
                    result,
                    reason,
                }
            });
    };
    match checker.check(&principal, scheme, token, req).await {
        Ok(bound) => {
            count("ok", "");
            Found {
                credential: Ok(Some(principal)),
                stale_nonce: bound.stale_nonce,
            }
        }
        Err(error) => {
            count("refused", error.reason());
            let rejected = Rejected {
                dpop: dpop
                    || principal.cnf.jkt.is_some()
                    || error == TokenError::NotSenderConstrained,
                issuer: Some(principal.issuer.clone()),
                error,
            };
            done(Err(rejected))
        }
    }
}

/// The token as a validated principal: the connection's memo, the shared cache (either skips
/// the signature only), or full validation.
async fn validated(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    token: &str,
    now: i64,
) -> Result<Arc<Principal>, Rejected> {
    let m = &shared.metrics;
    let usable = |p: &Principal| cache::usable(p, now, &snap.issuers);
    if let Some(p) = conn
        .remembered(token, snap.generation)
        .filter(|p| usable(p))
    {
        m.token_cache_hits.inc();
        return Ok(p);
    }
    // The shared cache's key: the SHA-256 of the token's signing input, which a miss hands to
    // the signature check.
    let mut h = cache::hash(token);
    if let Some(p) = shared.cache.get(&h, now, 0).filter(|p| usable(p)) {
        conn.remember(token, &p, snap.generation);
        m.token_cache_hits.inc();
        return Ok(p);
    }
    m.token_cache_misses.inc();
    let p = Arc::new(token::validate(token, &snap.issuers, now, h.take_signing_input()).await?);
    m.token_validations_by
        .inc(&m.token_validations, ("valid", ""), || ResultLabels {
            result: "valid",
            reason: "",
        });
    if shared.cache.enabled() {
        shared.cache.insert(&h, p.clone());
        conn.remember(token, &p, snap.generation);
    }
    Ok(p)
}

/// The challenge answering a refusal: the issuer it names gives the realm and
/// `authorization_uri` (the first configured issuer when the refusal names none); a DPoP
/// refusal is a `DPoP` challenge and may carry a `DPoP-Nonce`.
pub fn challenge(
    snap: &Snapshot,
    refusal: &Refusal,
    dpop: &DpopAnswer,
    req: &Inbound<'_>,
    request_id: &str,
    now: i64,
) -> Answer {
    let issuer = refusal
        .issuer
        .as_deref()
        .and_then(|n| snap.issuers.by_name(n))
        .or_else(|| snap.issuers.list.first());
    let auth_uri = issuer.and_then(|i| i.authorization_uri());
    let ctx = ChallengeCtx {
        realm: issuer.and_then(|i| i.cfg.realm.as_deref()).unwrap_or(""),
        authorization_uri: auth_uri.as_deref(),
        cp1: refusal.cp1,
        request_id,
        now,
    };
    let algs = dpop.algs.as_deref().filter(|_| refusal.dpop);
    let c = challenge::respond_as(&refusal.reason, &ctx, algs);
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if c.www_authenticate.is_empty() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    } else if let Ok(v) = HeaderValue::from_str(&c.www_authenticate) {
        h.insert(WWW_AUTHENTICATE, v);
    }
    if let Some(n) = &dpop.nonce {
        h.insert(&DPOP_NONCE, n.clone());
    }
    if req.headers.contains_key(http::header::ORIGIN) {
        h.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate, DPoP-Nonce"),
        );
    }
    Answer {
        status: c.status,
        headers: h,
        body: c.body.into(),
    }
}
