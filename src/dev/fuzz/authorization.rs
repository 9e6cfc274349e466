//! Fuzz target `authorization`: the `Authorization` header and bearer token through validation,
//! then the CAE decision on an accepted token (src/auth/decide.rs) and what the pipeline makes of
//! it (the same `decide`, with report-only).

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::challenge::check_challenge;
use super::common::{
    jwt_part, merge, runtime, seed, sign_bytes, signature_verifies, signed_seed, token_fixture,
    Input, NOW, SIGN_ALGS, TOKEN_AUD, TOKEN_ISS,
};
use crate::auth::challenge::ChallengeCtx;
use crate::auth::decide::{check_grants, decide, Credential, Decision, DenyReason, IpRule};
use crate::auth::keys::KeyFamily;
use crate::auth::token::{self, Principal, TokenIp};
use crate::config::{AuthMode, CaePolicy, ClaimRule, MatchMode, Route};
use crate::dev::keys::KeyAlg;
use crate::store::keys::ANY_ISSUER;
use crate::store::{Change, SubjectKey, Tables};

const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn token_base_claims() -> Value {
    json!({"iss": TOKEN_ISS, "aud": TOKEN_AUD, "sub": "alice", "iat": NOW - 60, "exp": NOW + 3600,
           "sid": "s1", "jti": "t1", "xms_cc": ["cp1"], "ipaddr": "192.0.2.1"})
}

/// Fuzz target `authorization`. Modes: 0 raw header value (then `\0` and a query string),
/// 1 a token signed from fuzzed header and claims JSON, 2 fuzzed overrides of a valid token's
/// header and claims, 3 raw token after `Bearer `. In modes 1 and 2 the bytes after the claims
/// (and a `\0`) are the decision input: route policy, table changes, client address.
///
/// Asserts: an accepted token has a known `kid`, an allowed `alg` that fits the key, a signature
/// that verifies with that key (checked independently), the configured `iss` and `aud`, is not a
/// SET, is not expired, not issued or valid only in the future, and within `max_lifetime`; every
/// refusal maps to a challenge that parses back ([`check_challenge`]). Then the CAE decision on
/// the accepted token, see [`check_decision`].
pub fn authorization(data: &[u8]) {
    let fx = token_fixture();
    let mut inp = Input(data);
    let mode = inp.byte() % 4;
    let mut decision_input: &[u8] = &[];
    let (header_value, query): (Vec<u8>, Option<String>) = match mode {
        0 => {
            let h = inp.field().to_vec();
            let q = inp.rest();
            (
                h,
                (!q.is_empty()).then(|| String::from_utf8_lossy(q).into_owned()),
            )
        }
        1 | 2 => {
            let key = &fx.keys[usize::from(inp.byte()) % fx.keys.len()];
            let alg = SIGN_ALGS[usize::from(inp.byte()) % SIGN_ALGS.len()];
            let tamper = inp.byte();
            let header = inp.field();
            let claims = inp.field();
            decision_input = inp.rest();
            let (h, c) = if mode == 1 {
                (header.to_vec(), claims.to_vec())
            } else {
                let mut h = json!({"typ": "JWT", "alg": key.alg().as_str(), "kid": key.kid()});
                let mut c = token_base_claims();
                if let Ok(v) = serde_json::from_slice::<Value>(header) {
                    merge(&mut h, &v);
                }
                if let Ok(v) = serde_json::from_slice::<Value>(claims) {
                    merge(&mut c, &v);
                }
                (h.to_string().into_bytes(), c.to_string().into_bytes())
            };
            let t = sign_bytes(key, alg, &h, &c, tamper);
            (format!("Bearer {t}").into_bytes(), None)
        }
        _ => {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(inp.rest());
            (v, None)
        }
    };
    let Ok(hv) = HeaderValue::from_bytes(&header_value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, hv);
    let token = match token::bearer(&headers, query.as_deref(), MAX_TOKEN_BYTES) {
        Ok(Some(t)) => t,
        Ok(None) => {
            // Another scheme is no bearer token at all (RFC 6750 §3.1).
            let v = String::from_utf8_lossy(&header_value).to_ascii_lowercase();
            assert!(!v.starts_with("bearer "), "a bearer header read as none");
            return check_refusal(&DenyReason::MissingToken);
        }
        Err(e) => return check_refusal(&DenyReason::InvalidToken(e)),
    };
    assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
    assert_eq!(token, token.trim_matches(' '), "bearer() trims spaces");
    match runtime().block_on(token::validate(
        token,
        &fx.issuers,
        NOW,
        // Both ways a signature is checked: the signing input hashed by the cache key's pass
        // (as the proxy does on a cache miss) or by the verify itself.
        crate::auth::cache::hash(token)
            .take_signing_input()
            .filter(|_| token.len() % 2 == 0),
    )) {
        Err(e) => check_refusal(&DenyReason::InvalidToken(e.error)),
        Ok(p) => {
            let issuer = &fx.issuers.list[0];
            let kid = p.kid.as_deref().expect("an accepted token names its kid");
            let key = fx
                .keys
                .iter()
                .find(|k| k.kid() == kid)
                .unwrap_or_else(|| panic!("accepted token with unknown kid {kid:?}"));
            let alg = p.alg.expect("an accepted token has an alg");
            assert!(
                issuer.cfg.algorithms.contains(&alg),
                "alg {alg:?} not allowed"
            );
            let family = match key.alg() {
                KeyAlg::Rs256 => KeyFamily::Rsa { bits: 2048 },
                KeyAlg::Es256 => KeyFamily::P256,
            };
            assert!(family.fits(alg), "alg {alg:?} does not fit key {kid}");
            if kid != "rsa-noalg" {
                assert_eq!(alg, key.alg().jwt_algorithm(), "JWK alg must be honoured");
            }
            assert!(
                signature_verifies(token, key, alg),
                "accepted token whose signature does not verify"
            );
            let header = jwt_part(token, 0).expect("accepted token has a JSON header");
            let claims = readable_claims(token).expect("accepted token has JSON claims");
            assert!(header.get("crit").is_none());
            let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
            // RFC 7515 §4.1.9: `typ` is a media type, `application/` optional, parameters ignored.
            let essence = typ
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            assert!(
                essence.trim_start_matches("application/") != "secevent+jwt",
                "a SET passed as a token"
            );
            assert!(claims.get("events").is_none(), "a SET passed as a token");
            assert!(issuer.matches(&p.iss));
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => a == TOKEN_AUD,
                Some(Value::Array(a)) => a.iter().any(|x| x == TOKEN_AUD),
                _ => false,
            };
            assert!(aud_ok, "accepted token without our audience");
            // Time claims, in exact arithmetic (the values are the token's, up to i64::MAX).
            let leeway = i128::from(issuer.cfg.leeway.as_secs());
            let now = i128::from(NOW);
            assert!(
                i128::from(p.exp) + leeway >= now,
                "accepted an expired token"
            );
            let nbf = claims
                .get("nbf")
                .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)));
            for (name, t) in [("iat", p.iat), ("nbf", nbf)] {
                if let Some(t) = t {
                    assert!(
                        i128::from(t) <= now + leeway,
                        "accepted a future {name} {t}"
                    );
                }
            }
            if let Some(max) = issuer.cfg.max_lifetime {
                let start = p
                    .iat
                    .or(nbf)
                    .expect("max_lifetime: an accepted token has iat or nbf");
                let lifetime = i128::from(p.exp) - i128::from(start);
                assert!(
                    lifetime <= i128::from(max.as_secs()),
                    "accepted a token living {lifetime} s (exp {}, start {start})",
                    p.exp
                );
            }
            check_decision(&p, decision_input);
        }
    }
}

/// An accepted token's claims as the proxy reads them: one JSON object, each member whose value
/// serde_json can hold (a number beyond `f64`, a lone surrogate escape: absent).
fn readable_claims(token: &str) -> Option<Value> {
    if let Some(v) = jwt_part(token, 1) {
        return Some(v);
    }
    let part = token.trim().split('.').nth(1)?;
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).ok()?;
    let members: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(&raw).ok()?;
    Some(Value::Object(
        members
            .into_iter()
            .filter_map(|(n, v)| Some((n, serde_json::from_str(v.get()).ok()?)))
            .collect(),
    ))
}

/// Every table key that names `p`, as `decide` looks them up (subjects, session and token id
/// under the token's issuer and under "any issuer"; tenant, device, e-mails), normalised as the
/// admin API and the signal mapping store them.
fn keys_of(p: &Principal) -> Vec<SubjectKey> {
    let mut out = Vec::new();
    for iss in [p.iss.as_str(), ANY_ISSUER] {
        for sub in &p.subjects {
            out.push(SubjectKey::Subject {
                iss: iss.into(),
                sub: sub.clone(),
            });
        }
        if let Some(sid) = &p.sid {
            out.push(SubjectKey::Session {
                iss: iss.into(),
                sid: sid.clone(),
            });
        }
        if let Some(jti) = &p.jti {
            out.push(SubjectKey::Token {
                iss: iss.into(),
                jti: jti.clone(),
            });
        }
    }
    if let Some(tid) = &p.tid {
        out.push(SubjectKey::Tenant { tid: tid.clone() });
    }
    if let Some(id) = &p.device {
        out.push(SubjectKey::Device { id: id.clone() });
    }
    for email in &p.emails {
        out.push(SubjectKey::Email {
            email: email.clone(),
        });
    }
    out.into_iter().map(SubjectKey::normalized).collect()
}

/// Keys of other principals (they may still name this one: the check compares encodings).
fn foreign_keys() -> [SubjectKey; 4] {
    [
        SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "mallory".into(),
        },
        SubjectKey::Session {
            iss: "https://other.example.com".into(),
            sid: "s1".into(),
        },
        SubjectKey::Tenant {
            tid: "tenant-x".into(),
        },
        SubjectKey::Email {
            email: "alice@example.com".into(),
        },
    ]
}

const DECISION_NETS: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.7/32",
    "2001:db8::/32",
    "10.0.0.0/8",
];
const DECISION_IPS: [&str; 5] = [
    "192.0.2.1",
    "198.51.100.7",
    "::ffff:192.0.2.1",
    "2001:db8::1",
    "10.1.2.3",
];

fn net(i: usize) -> ipnet::IpNet {
    DECISION_NETS[i % DECISION_NETS.len()]
        .parse()
        .expect("fixture network")
}

/// A route policy from two flag bytes.
/// `f1`: 1 revocation, 2 token_ip, 4 signal_ip, 8 route report_only, 16 auth_context `c1`,
/// 32 acr_values `urn:mfa`, 64 scope `read` (128 is the global report-only flag).
/// `f2`: bits 0-1 allow_locations, bits 2-3 deny_locations (none or one of [`DECISION_NETS`]),
/// 16 role `admin`, 32 match all, 64 claim rule `tid` in [`tenant-a`], 128 max_age 300 s.
fn decision_route(f1: u8, f2: u8) -> Route {
    let locations = |bits: u8| match bits & 3 {
        0 => Vec::new(),
        b => vec![net(usize::from(b))],
    };
    Route {
        name: "fuzz".into(),
        hosts: Vec::new(),
        path_prefix: "/".into(),
        methods: Vec::new(),
        upstream: Some("u".into()),
        strip_prefix: false,
        auth: AuthMode::Required,
        issuers: Vec::new(),
        scopes: if f1 & 64 != 0 {
            vec!["read".into()]
        } else {
            Vec::new()
        },
        roles: if f2 & 16 != 0 {
            vec!["admin".into()]
        } else {
            Vec::new()
        },
        match_mode: if f2 & 32 != 0 {
            MatchMode::All
        } else {
            MatchMode::Any
        },
        claims: if f2 & 64 != 0 {
            vec![ClaimRule {
                claim: "tid".into(),
                allowed: vec!["tenant-a".into()],
            }]
        } else {
            Vec::new()
        },
        identity_headers: Vec::new(),
        forward_authorization: true,
        report_only: f1 & 8 != 0,
        upgrades: Vec::new(),
        sender: Default::default(),
        cae: CaePolicy {
            revocation: f1 & 1 != 0,
            token_ip: f1 & 2 != 0,
            signal_ip: f1 & 4 != 0,
            allow_locations: locations(f2),
            deny_locations: locations(f2 >> 2),
            auth_context: (f1 & 16 != 0).then(|| "c1".to_string()),
            acr_values: if f1 & 32 != 0 {
                vec!["urn:mfa".into()]
            } else {
                Vec::new()
            },
            max_age: (f2 & 128 != 0).then_some(std::time::Duration::from_secs(300)),
        },
    }
}

/// A time relative to the token's `iat` (or the fixed clock), or any i64.
fn decision_time(inp: &mut Input<'_>, iat: i64) -> i64 {
    match inp.byte() % 8 {
        0 => iat.saturating_sub(1),
        1 => iat,
        2 => iat.saturating_add(1),
        3 => NOW,
        4 => 0,
        5 => i64::MIN,
        6 => i64::MAX,
        _ => inp.i64(),
    }
}

fn tables_of(changes: &[Change]) -> Tables {
    let t = Tables::default();
    for c in changes {
        t.apply(c);
    }
    t
}

/// The decision on the accepted token `p` with report-only off everywhere.
fn enforced(route: &Route, p: &Principal, tables: &Tables, ip: IpAddr) -> Result<(), DenyReason> {
    let mut route = route.clone();
    route.report_only = false;
    match decide(&route, false, Credential::Valid(p), tables, ip, NOW) {
        Decision::Allow => Ok(()),
        Decision::Deny(r) => Err(r.reason),
        Decision::ReportOnly(r) => panic!("report-only with report-only off: {r:?}"),
    }
}

/// What the client gets: `Ok` forwarded (allowed, or refused in report-only mode), `Err` the
/// refusal answered; `enforced` is the decision without report-only.
fn answer(
    route: &Route,
    global_report_only: bool,
    p: &Principal,
    tables: &Tables,
    ip: IpAddr,
    enforced: &Result<(), DenyReason>,
) -> Result<(), DenyReason> {
    match decide(
        route,
        global_report_only,
        Credential::Valid(p),
        tables,
        ip,
        NOW,
    ) {
        Decision::Allow => Ok(()),
        Decision::ReportOnly(reported) => {
            assert!(reported.is_cae(), "report-only forwarded {reported:?}");
            assert_eq!(
                Err(&reported),
                enforced.as_ref(),
                "report-only logs the CAE reason it relaxed"
            );
            Ok(())
        }
        Decision::Deny(r) => Err(r.reason),
    }
}

/// The decision on an accepted token `p`. Input: two route flag bytes ([`decision_route`]), a
/// client address, up to 7 table changes (operation, key of `p` or of someone else, time,
/// networks), then the key and delay of one more revocation.
///
/// Asserts: the decision is deterministic (same tables, and rebuilt tables); every refusal is
/// explained by the policy and the tables (a revocation naming `p` issued after its `iat`, a
/// block naming `p`, the IP rule the route asks for, ...); with no policy the token is allowed;
/// a revocation of one of `p`'s keys after its `iat` always refuses, and adding it never turns a
/// refusal into an allow; report-only (route flag or global flag) answers exactly what the
/// route's grants alone answer, and without it the answer is the decision; the challenge of every
/// refusal parses back ([`check_challenge`]).
fn check_decision(p: &Principal, data: &[u8]) {
    let mut inp = Input(data);
    let (f1, f2) = (inp.byte(), inp.byte());
    let route = decision_route(f1, f2);
    let global_report_only = f1 & 128 != 0;
    let ip: IpAddr = match usize::from(inp.byte()) % (DECISION_IPS.len() + 1) {
        0 => match p.ipaddr {
            TokenIp::Addr(a) => a,
            TokenIp::Absent | TokenIp::Unreadable => IpAddr::from([192, 0, 2, 1]),
        },
        i => DECISION_IPS[i - 1].parse().expect("fixture address"),
    };
    let iat = p.iat.unwrap_or(NOW);
    let keys = keys_of(p);
    let foreign = foreign_keys();
    let changes: Vec<Change> = (0..inp.byte() % 8)
        .map(|_| {
            let op = inp.byte() % 5;
            let k = usize::from(inp.byte()) % (keys.len() + foreign.len());
            let key = keys
                .get(k)
                .unwrap_or_else(|| &foreign[k - keys.len()])
                .clone();
            let at = decision_time(&mut inp, iat);
            match op {
                0 => Change::Revoke { key, at },
                1 => Change::Block { key, at },
                2 => Change::Unblock { key, at },
                3 => {
                    let bits = match inp.byte() & 15 {
                        0 => 1,
                        b => b,
                    };
                    let nets = (0..DECISION_NETS.len())
                        .filter(|i| bits & (1 << i) != 0)
                        .map(net)
                        .collect();
                    Change::Bind { key, nets, at }
                }
                _ => Change::Unbind { key, at },
            }
        })
        .collect();
    let tables = tables_of(&changes);
    let d = enforced(&route, p, &tables, ip);

    // Deterministic: the same inputs, and the same changes applied to fresh tables.
    assert_eq!(
        enforced(&route, p, &tables, ip),
        d,
        "decide is not deterministic"
    );
    assert_eq!(
        enforced(&route, &p.clone(), &tables_of(&changes), ip),
        d,
        "the same changes give another decision"
    );

    // Every refusal is explained by the policy and the tables.
    let names = |key: &SubjectKey| {
        let enc = key.encode();
        keys.iter().any(|k| k.encode() == enc)
    };
    let token_iat = p.iat.unwrap_or(i64::MIN);
    match &d {
        Ok(()) => assert_eq!(
            check_grants(&route, p),
            Ok(()),
            "allowed despite the grants"
        ),
        Err(reason) => {
            let explained = match reason {
                DenyReason::Revoked { revoked_at, .. } => {
                    route.cae.revocation
                        && token_iat < *revoked_at
                        && changes.iter().any(|c| {
                            matches!(c, Change::Revoke { key, at } if at == revoked_at && names(key))
                        })
                }
                DenyReason::AccountBlocked { since } => {
                    route.cae.revocation
                        && changes.iter().any(|c| {
                            matches!(c, Change::Block { key, at } if at == since && names(key))
                        })
                }
                DenyReason::IpNotAllowed { rule } => match rule {
                    IpRule::TokenAddress => route.cae.token_ip && p.ipaddr != TokenIp::Absent,
                    IpRule::Binding => {
                        route.cae.signal_ip
                            && changes.iter().any(|c| {
                                matches!(c, Change::Bind { key, nets, .. }
                                    if names(key) && !nets.iter().any(|n| n.contains(&ip.to_canonical())))
                            })
                    }
                    IpRule::Location => {
                        !route.cae.allow_locations.is_empty()
                            || !route.cae.deny_locations.is_empty()
                    }
                },
                DenyReason::AuthContextRequired { context } => {
                    route.cae.auth_context.as_ref() == Some(context) && !p.acrs.contains(context)
                }
                DenyReason::StepUpRequired { .. } => {
                    !route.cae.acr_values.is_empty() || route.cae.max_age.is_some()
                }
                DenyReason::InsufficientScope { .. } | DenyReason::ClaimNotAllowed { .. } => {
                    check_grants(&route, p).as_ref() == Err(reason)
                }
                DenyReason::MissingToken | DenyReason::InvalidToken(_) => false,
            };
            assert!(
                explained,
                "{reason:?} is not explained by {route:?} and {changes:?}"
            );
            check_challenge(
                reason,
                &ChallengeCtx {
                    realm: "api",
                    authorization_uri: Some("https://login.example/authorize"),
                    cp1: p.cp1,
                    request_id: "r",
                    now: NOW,
                },
            );
        }
    }

    // With no policy at all, an accepted token is allowed whatever the tables hold.
    let mut open = route.clone();
    open.cae = CaePolicy::default();
    let grants_only = enforced(&open, p, &tables, ip);
    assert_eq!(grants_only, check_grants(&route, p));
    open.scopes.clear();
    open.roles.clear();
    open.claims.clear();
    assert_eq!(
        enforced(&open, p, &tables, ip),
        Ok(()),
        "no policy, yet refused"
    );

    // Report-only never changes the response: with it on (the route's flag or the global one)
    // the answer is the one the CAE checks allowing would give; with it off, the decision.
    let given = answer(&route, global_report_only, p, &tables, ip, &d);
    if route.report_only || global_report_only {
        assert_eq!(given, grants_only, "report-only changed the response");
    } else {
        assert_eq!(given, d, "enforcement changed the decision");
    }

    // A revocation of one of the principal's keys, at a time after its iat, always refuses.
    if !keys.is_empty() {
        let key = keys[usize::from(inp.byte()) % keys.len()].clone();
        let delay = 1 + i64::from(inp.byte());
        let at = match p.iat {
            Some(iat) => iat.checked_add(delay),
            None => Some(inp.i64().max(i64::MIN + 1)),
        };
        if let Some(at) = at {
            let mut more = changes.clone();
            more.push(Change::Revoke {
                key: key.clone(),
                at,
            });
            let t2 = tables_of(&more);
            let mut strict = route.clone();
            strict.cae.revocation = true;
            match enforced(&strict, p, &t2, ip) {
                Err(DenyReason::Revoked { revoked_at, .. }) => {
                    assert!(revoked_at >= at, "revoked at {revoked_at}, before {at}");
                }
                // A block of the same principal comes first.
                Err(DenyReason::AccountBlocked { .. }) => {}
                other => panic!("{key:?} revoked at {at} after iat {:?}: {other:?}", p.iat),
            }
            // Monotonic: adding a revocation never turns a refusal into an allow.
            if d.is_err() {
                assert!(
                    enforced(&route, p, &t2, ip).is_err(),
                    "a revocation turned {d:?} into an allow"
                );
            }
        }
    }
}

/// Every refusal has a challenge that parses back to its facts ([`check_challenge`]), with and
/// without `cp1`.
fn check_refusal(reason: &DenyReason) {
    for cp1 in [false, true] {
        let ctx = ChallengeCtx {
            realm: "api",
            authorization_uri: Some("https://login.example/authorize"),
            cp1,
            request_id: "r",
            now: NOW,
        };
        check_challenge(reason, &ctx);
    }
}

/// Seeds for `authorization`.
pub fn seed_authorization() -> Vec<Vec<u8>> {
    let claims = token_base_claims().to_string();
    let mut out = vec![
        seed(0, &[b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"]),
        seed(0, &[b"Basic dXNlcjpwYXNz"]),
        seed(0, &[b"Bearer abc", b"a=1&access_token=x"]),
        seed(0, &[b"bearer    spaced   "]),
        // Valid tokens, RS256 and ES256, and the tamper modes.
        signed_seed(
            1,
            [0, 0, 0],
            &[
                br#"{"typ":"JWT","alg":"RS256","kid":"rsa-1"}"#,
                claims.as_bytes(),
            ],
        ),
        signed_seed(
            1,
            [1, 3, 0],
            &[br#"{"alg":"ES256","kid":"ec-1"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [2, 1, 0],
            &[br#"{"alg":"PS256","kid":"rsa-noalg"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 1],
            &[br#"{"alg":"RS256","kid":"rsa-1"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 2],
            &[br#"{"alg":"RS256","kid":"rsa-1"}"#, claims.as_bytes()],
        ),
        // Algorithm confusion and structural attacks.
        signed_seed(
            1,
            [0, 1, 0],
            &[br#"{"alg":"PS256","kid":"rsa-1"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[br#"{"alg":"none","kid":"rsa-1"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[br#"{"alg":"HS256","kid":"rsa-1"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[
                br#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#,
                claims.as_bytes(),
            ],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[
                br#"{"alg":"RS256","kid":"rsa-1","typ":"secevent+jwt"}"#,
                claims.as_bytes(),
            ],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[br#"{"alg":"RS256","kid":"unknown"}"#, claims.as_bytes()],
        ),
        signed_seed(
            1,
            [0, 0, 0],
            &[
                br#"{"alg":"RS256","kid":"rsa-1","jku":"https://evil.example/jwks"}"#,
                claims.as_bytes(),
            ],
        ),
        // Claim variations on a valid token.
        signed_seed(2, [0, 0, 0], &[b"{}", br#"{"exp":1}"#]),
        signed_seed(
            2,
            [1, 3, 0],
            &[b"{}", br#"{"aud":["x","api://cae-proxy"]}"#],
        ),
        signed_seed(2, [0, 0, 0], &[b"{}", br#"{"events":{}}"#]),
        signed_seed(2, [0, 0, 0], &[b"{}", br#"{"iat":1800000000}"#]),
        signed_seed(
            2,
            [0, 0, 0],
            &[b"{}", br#"{"nbf":1800000000,"exp":1700003600.5}"#],
        ),
        signed_seed(
            2,
            [0, 0, 0],
            &[b"{}", br#"{"iss":"https://idp.example.com"}"#],
        ),
        signed_seed(2, [0, 0, 0], &[b"{}", br#"{"exp":1900000000}"#]),
        signed_seed(2, [0, 0, 0], &[br#"{"kid":null}"#, b"{}"]),
        signed_seed(
            2,
            [1, 3, 0],
            &[
                b"{}",
                br#"{"ipaddr":"::ffff:192.0.2.1","acrs":"c1 c2","scp":["a"],"roles":"r"}"#,
            ],
        ),
        seed(3, &[b"a.b.c"]),
    ];
    // The decision on the base token (keys of the principal: 0-2 subject, session, token id
    // under its issuer, 3-5 under "any issuer"; then 4 foreign keys). Layout: route flags f1, f2,
    // address, number of changes, the changes (operation, key, time[, networks]), then the key
    // and delay of the extra revocation.
    let decisions: [&[u8]; 9] = [
        // Session revoked after iat: Revoked.
        &[1, 0, 0, 1, 0, 1, 2, 1, 0],
        // Subject blocked: AccountBlocked.
        &[1, 0, 0, 1, 1, 0, 3, 0, 0],
        // Token ipaddr 192.0.2.1 used from 198.51.100.7.
        &[2, 0, 2, 0, 0, 0],
        // Session bound to 10.0.0.0/8, used from 192.0.2.1.
        &[4, 0, 0, 1, 3, 4, 3, 8, 0, 0],
        // Route report-only over a revocation: forwarded.
        &[9, 0, 0, 1, 0, 1, 2, 1, 0],
        // Global report-only, but the scope is missing: refused for the scope.
        &[193, 0, 0, 1, 0, 1, 2, 1, 0],
        // Auth context, acr, max_age and a claim rule.
        &[48, 192, 0, 0, 0, 0],
        // Allowed only from 10.0.0.0/8, never from 192.0.2.0/24.
        &[0, 7, 0, 0, 0, 0],
        // Block then a later unblock, a foreign revocation, role with match all, IPv6 client.
        &[1, 48, 4, 3, 1, 0, 1, 2, 0, 2, 0, 7, 6, 5],
    ];
    for d in decisions {
        out.push(signed_seed(2, [0, 0, 0], &[b"{}", b"{}", d]));
    }
    // No iat (nbf instead), tenant, device and e-mail keys (6, 7, 8): revocations fail closed.
    out.push(signed_seed(
        2,
        [1, 3, 0],
        &[
            b"{}",
            br#"{"iat":null,"nbf":1699999940,"tid":"tenant-a","deviceid":"dev-1","email":"Alice@Example.com"}"#,
            &[1, 64, 0, 2, 0, 6, 4, 1, 7, 2, 3, 9],
        ],
    ));
    out
}
