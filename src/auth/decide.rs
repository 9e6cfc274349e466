//! Why a request is allowed or refused, answered in one place: [`decide`], a pure function of
//! (route policy, report-only, what the request presented, tables, client IP, now). It covers the
//! missing or invalid token, the issuers a route accepts, account blocks, revocations, IP rules,
//! step-up, scopes, roles and claim rules, and report-only; the refusal carries what its
//! challenge needs.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::token::{Principal, Rejected, TokenError, TokenIp};
use crate::config::{AuthMode, MatchMode, Route, SenderConstraint};
use crate::store::keys::{
    encode_into, ANY_ISSUER, KIND_DEVICE, KIND_EMAIL, KIND_SESSION, KIND_SUBJECT, KIND_TENANT,
    KIND_TOKEN,
};
use crate::store::Tables;

/// Which table entry revoked the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    Subject,
    Session,
    Token,
    Tenant,
    Device,
    Email,
}

impl RevokedBy {
    pub fn label(self) -> &'static str {
        match self {
            RevokedBy::Subject => "subject",
            RevokedBy::Session => "session",
            RevokedBy::Token => "token",
            RevokedBy::Tenant => "tenant",
            RevokedBy::Device => "device",
            RevokedBy::Email => "email",
        }
    }
}

/// Which IP rule refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRule {
    /// The token's `ipaddr` differs from the client address.
    TokenAddress,
    /// A binding fed by signals or the admin API.
    Binding,
    /// The route's named locations.
    Location,
}

impl IpRule {
    pub fn label(self) -> &'static str {
        match self {
            IpRule::TokenAddress => "token_address",
            IpRule::Binding => "binding",
            IpRule::Location => "location",
        }
    }
}

/// Every reason a request is refused. `challenge::respond` maps each one, exhaustively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    InvalidToken(TokenError),
    Revoked {
        by: RevokedBy,
        revoked_at: i64,
    },
    AccountBlocked {
        since: i64,
    },
    IpNotAllowed {
        rule: IpRule,
    },
    /// Microsoft dialect: `acrs` must contain this auth context.
    AuthContextRequired {
        context: String,
    },
    /// RFC 9470 dialect.
    StepUpRequired {
        acr_values: Vec<String>,
        max_age: Option<u64>,
    },
    InsufficientScope {
        scope: String,
    },
    ClaimNotAllowed {
        claim: String,
    },
}

/// What the request presented, as authentication found it.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// No bearer token: no `Authorization` header, or another scheme (RFC 6750 §3.1).
    Absent,
    /// A token that failed validation.
    Invalid(&'a Rejected),
    /// A validated token.
    Valid(&'a Principal),
}

/// The decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Forwarded as if allowed (report-only): the CAE reason it would have been refused for.
    ReportOnly(DenyReason),
    /// Answered with this refusal's challenge instead of being forwarded.
    Deny(Refusal),
}

/// A refusal and what its challenge needs besides the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DenyReason,
    /// The configured issuer whose realm and `authorization_uri` the challenge names: the one
    /// that should mint the next token. `None`: the first configured issuer.
    pub issuer: Option<Arc<str>>,
    /// The client understands claims challenges (`xms_cc` contains `cp1`).
    pub cp1: bool,
    /// Answer with a `DPoP` challenge (RFC 9449 §7.1): the request used the `DPoP` scheme, the
    /// token is DPoP-bound, or (no token) the route requires sender-constrained tokens.
    pub dpop: bool,
}

/// Decides a request. Order: no token or an invalid one, an issuer the route does not accept,
/// then for a valid token account block, revocation, IP rules, step-up, and scopes, roles and
/// claim rules. Report-only (the route's `report_only` or `server.report_only`) forwards CAE
/// refusals only: scopes, roles and claim rules still hold, a missing or invalid token is always
/// refused.
pub fn decide(
    route: &Route,
    server_report_only: bool,
    presented: Credential<'_>,
    tables: &Tables,
    client_ip: IpAddr,
    now: i64,
) -> Decision {
    let accepts =
        |issuer: &str| route.issuers.is_empty() || route.issuers.iter().any(|i| **i == *issuer);
    let route_issuer = || route.issuers.first().map(|n| Arc::from(n.as_str()));
    let deny = |reason, issuer, cp1, dpop| {
        Decision::Deny(Refusal {
            reason,
            issuer,
            cp1,
            dpop,
        })
    };
    match presented {
        _ if route.auth == AuthMode::None => Decision::Allow,
        Credential::Absent if route.auth == AuthMode::Optional => Decision::Allow,
        Credential::Absent => deny(
            DenyReason::MissingToken,
            route_issuer(),
            false,
            route.sender.constraint == Some(SenderConstraint::Required),
        ),
        // The issuer the token's `iss` names, when the route accepts it: only a choice among
        // configured issuers, so an unverified `iss` selects, never supplies.
        Credential::Invalid(r) => deny(
            DenyReason::InvalidToken(r.error.clone()),
            r.issuer
                .clone()
                .filter(|i| accepts(i))
                .or_else(route_issuer),
            false,
            r.dpop,
        ),
        Credential::Valid(p) if !accepts(&p.issuer) => deny(
            DenyReason::InvalidToken(TokenError::IssuerNotAllowed),
            route_issuer(),
            p.cp1,
            p.cnf.jkt.is_some(),
        ),
        Credential::Valid(p) => match check(route, p, tables, client_ip, now) {
            Ok(()) => Decision::Allow,
            Err(reason) if reason.is_cae() && (route.report_only || server_report_only) => {
                match check_grants(route, p) {
                    Ok(()) => Decision::ReportOnly(reason),
                    Err(grant) => deny(grant, Some(p.issuer.clone()), p.cp1, p.cnf.jkt.is_some()),
                }
            }
            Err(reason) => deny(reason, Some(p.issuer.clone()), p.cp1, p.cnf.jkt.is_some()),
        },
    }
}

impl Decision {
    /// The reason refused or reported, if any.
    pub fn reason(&self) -> Option<&DenyReason> {
        match self {
            Decision::Allow => None,
            Decision::ReportOnly(r) | Decision::Deny(Refusal { reason: r, .. }) => Some(r),
        }
    }
}

impl DenyReason {
    /// The precise cause within the reason, for the access line: the token error, what revoked
    /// the token, which IP rule refused it ("" where the label says it all).
    pub fn cause(&self) -> &'static str {
        match self {
            DenyReason::InvalidToken(e) => e.reason(),
            DenyReason::Revoked { by, .. } => by.label(),
            DenyReason::IpNotAllowed { rule } => rule.label(),
            DenyReason::MissingToken
            | DenyReason::AccountBlocked { .. }
            | DenyReason::AuthContextRequired { .. }
            | DenyReason::StepUpRequired { .. }
            | DenyReason::InsufficientScope { .. }
            | DenyReason::ClaimNotAllowed { .. } => "",
        }
    }

    /// Stable label for metrics and the access log (a refused credential by its kind:
    /// `invalid_token`, `invalid_dpop_proof`, `use_dpop_nonce`, `sender_binding`,
    /// `replay_check_unavailable`).
    pub fn label(&self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::InvalidToken(e) => e.kind(),
            DenyReason::Revoked { .. } => "revoked",
            DenyReason::AccountBlocked { .. } => "account_blocked",
            DenyReason::IpNotAllowed { .. } => "ip_not_allowed",
            DenyReason::AuthContextRequired { .. } => "auth_context_required",
            DenyReason::StepUpRequired { .. } => "step_up_required",
            DenyReason::InsufficientScope { .. } => "insufficient_scope",
            DenyReason::ClaimNotAllowed { .. } => "claim_not_allowed",
        }
    }

    /// Whether report-only mode may forward despite this reason (CAE checks only; a missing or
    /// invalid token is never forwarded).
    pub fn is_cae(&self) -> bool {
        matches!(
            self,
            DenyReason::Revoked { .. }
                | DenyReason::AccountBlocked { .. }
                | DenyReason::IpNotAllowed { .. }
                | DenyReason::AuthContextRequired { .. }
                | DenyReason::StepUpRequired { .. }
        )
    }
}

/// Whether the valid principal `p` may use `route` from `client_ip` at `now` (epoch seconds).
/// Order: account block, revocation, IP rules, step-up, then scopes, roles and claim rules.
fn check(
    route: &Route,
    p: &Principal,
    tables: &Tables,
    client_ip: IpAddr,
    now: i64,
) -> Result<(), DenyReason> {
    let cae = &route.cae;
    // Grows on the first key encoded: nothing is allocated when the tables hold no class the
    // token has.
    let mut buf = String::new();
    if cae.revocation {
        // Blocks: every token of a blocked key is refused whatever its age. Revocations:
        // refused when issued before the recorded time (no `iat`: fail closed).
        let iat = p.iat.unwrap_or(i64::MIN);
        let mut blocked: Option<i64> = None;
        let mut worst: Option<(i64, RevokedBy)> = None;
        for_each_key(p, tables, &mut buf, |key, by| {
            blocked = blocked.max(tables.blocked_since(key));
            if let Some(at) = tables.revoked_at(key) {
                if iat < at && worst.is_none_or(|(w, _)| at > w) {
                    worst = Some((at, by));
                }
            }
        });
        if let Some(since) = blocked {
            return Err(DenyReason::AccountBlocked { since });
        }
        if let Some((revoked_at, by)) = worst {
            return Err(DenyReason::Revoked { by, revoked_at });
        }
    }

    // IP rules, each only when the route asks for it.
    // An `ipaddr` that is not an address fails closed, like a mismatch.
    let other_address = match p.ipaddr {
        TokenIp::Absent => false,
        TokenIp::Addr(a) => !same_ip(a, client_ip),
        TokenIp::Unreadable => true,
    };
    if cae.token_ip && other_address {
        return Err(DenyReason::IpNotAllowed {
            rule: IpRule::TokenAddress,
        });
    }
    if cae.signal_ip {
        let ip = client_ip.to_canonical();
        for iss in [p.iss.as_str(), ANY_ISSUER] {
            if let Some(sid) = p
                .sid
                .as_ref()
                .filter(|_| tables.may_bind(KIND_SESSION, iss))
            {
                encode_into(&mut buf, KIND_SESSION, iss, sid);
                if tables.binding_allows(&buf, ip) == Some(false) {
                    return Err(DenyReason::IpNotAllowed {
                        rule: IpRule::Binding,
                    });
                }
            }
            let subjects = p
                .subjects
                .iter()
                .filter(|_| tables.may_bind(KIND_SUBJECT, iss));
            for s in subjects {
                encode_into(&mut buf, KIND_SUBJECT, iss, s);
                if tables.binding_allows(&buf, ip) == Some(false) {
                    return Err(DenyReason::IpNotAllowed {
                        rule: IpRule::Binding,
                    });
                }
            }
        }
    }
    let ip = client_ip.to_canonical();
    if cae.deny_locations.iter().any(|n| n.contains(&ip))
        || (!cae.allow_locations.is_empty() && !cae.allow_locations.iter().any(|n| n.contains(&ip)))
    {
        return Err(DenyReason::IpNotAllowed {
            rule: IpRule::Location,
        });
    }

    // Step-up.
    if let Some(ctx) = &cae.auth_context {
        if !p.acrs.iter().any(|a| a == ctx) {
            return Err(DenyReason::AuthContextRequired {
                context: ctx.clone(),
            });
        }
    }
    if !cae.acr_values.is_empty() || cae.max_age.is_some() {
        let acr_ok =
            cae.acr_values.is_empty() || p.acr.as_ref().is_some_and(|a| cae.acr_values.contains(a));
        let age_ok = cae.max_age.is_none_or(|max| {
            let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            // An overflowing age (an absurd `auth_time`) is too old, never young enough.
            p.auth_time
                .and_then(|t| now.checked_sub(t))
                .is_some_and(|age| age <= max)
        });
        if !acr_ok || !age_ok {
            return Err(DenyReason::StepUpRequired {
                acr_values: cae.acr_values.clone(),
                max_age: cae.max_age.map(|d| d.as_secs()),
            });
        }
    }

    check_grants(route, p)
}

/// Scopes, roles and claim rules: checked even in report-only mode, which only relaxes CAE refusals.
pub fn check_grants(route: &Route, p: &Principal) -> Result<(), DenyReason> {
    // Scopes and roles.
    if !route.scopes.is_empty() || !route.roles.is_empty() {
        let has = |want: &[String], have: &[String]| match route.match_mode {
            MatchMode::Any => want.iter().any(|w| have.contains(w)),
            MatchMode::All => want.iter().all(|w| have.contains(w)),
        };
        let ok = match route.match_mode {
            MatchMode::Any => has(&route.scopes, &p.scopes) || has(&route.roles, &p.roles),
            MatchMode::All => {
                (route.scopes.is_empty() || has(&route.scopes, &p.scopes))
                    && (route.roles.is_empty() || has(&route.roles, &p.roles))
            }
        };
        if !ok {
            let scope = if route.scopes.is_empty() {
                route.roles.join(" ")
            } else {
                route.scopes.join(" ")
            };
            return Err(DenyReason::InsufficientScope { scope });
        }
    }
    for rule in &route.claims {
        let ok = match p.claim(&rule.claim) {
            Some(serde_json::Value::String(s)) => rule.allowed.contains(s),
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| {
                v.as_str()
                    .is_some_and(|s| rule.allowed.iter().any(|x| x == s))
            }),
            Some(v @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_))) => {
                rule.allowed.contains(&v.to_string())
            }
            _ => false,
        };
        if !ok {
            return Err(DenyReason::ClaimNotAllowed {
                claim: rule.claim.clone(),
            });
        }
    }
    Ok(())
}

/// Calls `f` with every table key the principal can be named by: subject and object id, session
/// and token id (each under the token's issuer and under "any issuer"), tenant, device, e-mails.
fn for_each_key(
    p: &Principal,
    tables: &Tables,
    buf: &mut String,
    mut f: impl FnMut(&str, RevokedBy),
) {
    let mut key = |kind: char, iss: &str, value: &str, by: RevokedBy| {
        if tables.may_revoke(kind, iss) {
            encode_into(buf, kind, iss, value);
            f(buf, by);
        }
    };
    for iss in [p.iss.as_str(), ANY_ISSUER] {
        for s in &p.subjects {
            key(KIND_SUBJECT, iss, s, RevokedBy::Subject);
        }
        if let Some(sid) = &p.sid {
            key(KIND_SESSION, iss, sid, RevokedBy::Session);
        }
        if let Some(jti) = &p.jti {
            key(KIND_TOKEN, iss, jti, RevokedBy::Token);
        }
    }
    if let Some(tid) = &p.tid {
        key(KIND_TENANT, "", tid, RevokedBy::Tenant);
    }
    if let Some(d) = &p.device {
        key(KIND_DEVICE, "", d, RevokedBy::Device);
    }
    for e in &p.emails {
        key(KIND_EMAIL, "", e, RevokedBy::Email);
    }
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMode, CaePolicy};
    use crate::store::{Change, SubjectKey};

    pub(crate) fn route() -> Route {
        Route {
            name: "r".into(),
            hosts: vec![],
            path_prefix: "/".into(),
            methods: vec![],
            upstream: Some("u".into()),
            strip_prefix: false,
            auth: AuthMode::Required,
            issuers: vec![],
            scopes: vec![],
            roles: vec![],
            match_mode: MatchMode::Any,
            claims: vec![],
            identity_headers: vec![],
            forward_authorization: true,
            report_only: false,
            upgrades: vec![],
            cae: CaePolicy {
                revocation: true,
                ..Default::default()
            },
            sender: Default::default(),
        }
    }

    fn principal() -> Principal {
        Principal {
            iss: "https://idp/".into(),
            subjects: vec!["alice".into()],
            sid: Some("s1".into()),
            jti: Some("t1".into()),
            iat: Some(1000),
            exp: 5000,
            ..Default::default()
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn revocation_refuses_older_tokens_only() {
        let t = Tables::default();
        let r = route();
        assert_eq!(check(&r, &principal(), &t, IP, 2000), Ok(()));
        t.apply(&Change::Revoke {
            key: SubjectKey::Session {
                iss: "https://idp".into(),
                sid: "s1".into(),
            },
            at: 1500,
        });
        assert_eq!(
            check(&r, &principal(), &t, IP, 2000),
            Err(DenyReason::Revoked {
                by: RevokedBy::Session,
                revoked_at: 1500
            })
        );
        let fresh = Principal {
            iat: Some(1500),
            ..principal()
        };
        assert_eq!(check(&r, &fresh, &t, IP, 2000), Ok(()));
    }

    #[test]
    fn block_wins_over_fresh_tokens() {
        let t = Tables::default();
        t.apply(&Change::Block {
            key: SubjectKey::Subject {
                iss: "*".into(),
                sub: "alice".into(),
            },
            at: 10,
        });
        let fresh = Principal {
            iat: Some(99_999),
            ..principal()
        };
        assert_eq!(
            check(&route(), &fresh, &t, IP, 2000),
            Err(DenyReason::AccountBlocked { since: 10 })
        );
    }

    #[test]
    fn ip_rules_apply_only_when_asked() {
        let t = Tables::default();
        let mut r = route();
        let p = Principal {
            ipaddr: TokenIp::Addr("198.51.100.7".parse().unwrap()),
            ..principal()
        };
        assert_eq!(check(&r, &p, &t, IP, 2000), Ok(()));
        r.cae.token_ip = true;
        assert_eq!(
            check(&r, &p, &t, IP, 2000),
            Err(DenyReason::IpNotAllowed {
                rule: IpRule::TokenAddress
            })
        );
        assert_eq!(
            check(&r, &p, &t, "::ffff:198.51.100.7".parse().unwrap(), 2000),
            Ok(())
        );
        r.cae.token_ip = false;
        r.cae.allow_locations = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            check(&r, &p, &t, IP, 2000),
            Err(DenyReason::IpNotAllowed {
                rule: IpRule::Location
            })
        );
    }

    #[test]
    fn step_up_and_scopes() {
        let t = Tables::default();
        let mut r = route();
        r.cae.auth_context = Some("c1".into());
        assert_eq!(
            check(&r, &principal(), &t, IP, 2000),
            Err(DenyReason::AuthContextRequired {
                context: "c1".into()
            })
        );
        let p = Principal {
            acrs: vec!["c1".into()],
            scopes: vec!["read".into()],
            ..principal()
        };
        assert_eq!(check(&r, &p, &t, IP, 2000), Ok(()));
        r.scopes = vec!["write".into()];
        assert_eq!(
            check(&r, &p, &t, IP, 2000),
            Err(DenyReason::InsufficientScope {
                scope: "write".into()
            })
        );
        r.scopes = vec![];
        r.cae.acr_values = vec!["urn:mfa".into()];
        r.cae.max_age = Some(std::time::Duration::from_secs(60));
        let stale = Principal {
            acr: Some("urn:mfa".into()),
            auth_time: Some(1000),
            ..p
        };
        assert_eq!(
            check(&r, &stale, &t, IP, 2000),
            Err(DenyReason::StepUpRequired {
                acr_values: vec!["urn:mfa".into()],
                max_age: Some(60)
            })
        );
        assert_eq!(check(&r, &stale, &t, IP, 1050), Ok(()));
    }
}
