//! Authentication of one request: the bearer token (per-connection memo, shared cache or full
//! validation) becomes a [`Credential`], [`decide`] decides, and a refusal becomes its challenge
//! response. Used by the proxy pipeline on the request itself, and by the authorization service
//! on the original request a gateway asks about ([`Inbound`] is what both know of it).

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method};

use crate::auth::cache;
use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{decide, Credential, Decision, Refusal};
use crate::auth::token::{self, Principal, Rejected};
use crate::config::{AuthMode, Route};
use crate::metrics::ResultLabels;
use crate::reply::Answer;
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};

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
    pub client_ip: std::net::IpAddr,
    /// SHA-256 of the client certificate the TLS handshake verified, if any.
    pub client_cert_sha256: Option<&'a [u8; 32]>,
}

/// The principal a valid token names, and the decision on the request.
pub struct Authenticated {
    pub principal: Option<Arc<Principal>>,
    pub decision: Decision,
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
        };
    }
    let found = credential(shared, snap, conn, req, now).await;
    let presented = match &found {
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
    Authenticated {
        principal: found.ok().flatten(),
        decision,
    }
}

/// The request's bearer token as a validated principal (`Ok(None)`: no bearer token), from the
/// connection's memo, the shared cache, or validation.
async fn credential(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &Inbound<'_>,
    now: i64,
) -> Result<Option<Arc<Principal>>, Rejected> {
    let m = &shared.metrics;
    let invalid = |reason| {
        m.token_validations
            .get_or_create(&ResultLabels {
                result: "invalid",
                reason,
            })
            .inc();
    };
    let max = snap.config.server.max_token_bytes;
    let token = match token::bearer(req.headers, req.query, max) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => {
            invalid(e.reason());
            return Err(e.into());
        }
    };
    let usable = |p: &Principal| cache::usable(p, now, &snap.issuers);
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
    if let Some(p) = cached {
        m.token_cache_hits.inc();
        return Ok(Some(p));
    }
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
            Ok(Some(p))
        }
        Err(rejected) => {
            invalid(rejected.error.reason());
            Err(rejected)
        }
    }
}

/// The challenge answering a refusal: the issuer it names gives the realm and
/// `authorization_uri` (the first configured issuer when the refusal names none).
pub fn challenge(
    snap: &Snapshot,
    refusal: &Refusal,
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
    let c = challenge::respond(&refusal.reason, &ctx);
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&c.www_authenticate) {
        h.insert(WWW_AUTHENTICATE, v);
    }
    if req.headers.contains_key(http::header::ORIGIN) {
        h.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate"),
        );
    }
    Answer {
        status: c.status,
        headers: h,
        body: c.body.into(),
    }
}
