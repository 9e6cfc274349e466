//! Fuzz target bodies, shared by the cargo-fuzz binaries in `fuzz/` and by the corpus replay in
//! `tests/fuzz_corpus.rs`. Each target takes arbitrary bytes, feeds them to a parser of untrusted
//! input and asserts properties beyond "does not crash"; a broken property panics, which libFuzzer
//! reports as a crash and `cargo test` as a failure. Not part of the proxy's API.
//!
//! Several targets read a small structured input (a mode byte, then fields separated by NUL bytes,
//! which JSON text cannot contain) so that the fuzzer reaches the checks behind a valid signature:
//! the target signs what the fuzzer wrote with a fixed key. The `seed_*` helpers write inputs in
//! the same layout for the committed corpora.

#![allow(clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{
    check_grants, decide, Credential, Decision, DenyReason, IpRule, RevokedBy,
};
use crate::auth::keys::{self, KeyFamily, KeySet, Keys};
use crate::auth::token::{self, IssuerRt, Issuers, Principal, TokenError, TokenIp};
use crate::config::{self, AuthMode, CaePolicy, ClaimRule, Config, KeySource, MatchMode, Route};
use crate::dev::keys::{b64url, KeyAlg, SigningKey};
use crate::signals::events::{self, EventPolicy};
use crate::signals::set::{self, SetPolicy};
use crate::signals::subject::{self, KeyContext, Subject};
use crate::store::keys::ANY_ISSUER;
use crate::store::{Change, SubjectKey, Tables};

/// The fixed clock of every target (epoch seconds).
pub const NOW: i64 = 1_700_000_000;
/// Issuer of the fixed token key set.
pub const TOKEN_ISS: &str = "https://idp.example.com/";
/// Audience of the fixed issuer.
pub const TOKEN_AUD: &str = "api://cae-proxy";
/// Transmitter of the fixed SET key set (protocols.md §6 first vector).
pub const SET_ISS: &str = "https://idp.example.com/123456789/";
/// Our audience as a SET receiver.
pub const SET_AUD: &str = "https://sp.example.com/caep";
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Reads a structured fuzz input: bytes, and NUL-terminated fields.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn field(&mut self) -> &'a [u8] {
        match self.0.iter().position(|b| *b == 0) {
            Some(i) => {
                let (f, rest) = self.0.split_at(i);
                self.0 = &rest[1..];
                f
            }
            None => std::mem::take(&mut self.0),
        }
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.field()).into_owned()
    }

    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn seed(mode: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![mode];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(f);
    }
    out
}

/// A seed for the signing modes: mode, then key, algorithm and tamper bytes, then the fields.
fn signed_seed(mode: u8, [key, alg, tamper]: [u8; 3], fields: &[&[u8]]) -> Vec<u8> {
    let mut out = seed(mode, fields);
    out.splice(1..1, [key, alg, tamper]);
    out
}

/// Signing algorithms a target may pick for a key (most do not fit the key: that is the point).
const SIGN_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Signs `header.payload` (each base64url of the given bytes) with `key` and `alg`, then applies
/// a tamper mode: 0 none, 1 flip a signature bit, 2 drop the signature, 3 signature of another
/// payload.
fn sign_bytes(
    key: &SigningKey,
    alg: Algorithm,
    header: &[u8],
    payload: &[u8],
    tamper: u8,
) -> String {
    let input = format!("{}.{}", b64url(header), b64url(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key.encoding_key(), alg)
        .or_else(|_| {
            jsonwebtoken::crypto::sign(
                input.as_bytes(),
                key.encoding_key(),
                key.alg().jwt_algorithm(),
            )
        })
        .expect("signing with a fixture key");
    let sig = match tamper % 4 {
        1 => {
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&sig)
                .unwrap_or_default();
            if let Some(b) = raw.first_mut() {
                *b ^= 1;
            }
            b64url(&raw)
        }
        2 => String::new(),
        3 => jsonwebtoken::crypto::sign(b"other", key.encoding_key(), key.alg().jwt_algorithm())
            .unwrap_or_default(),
        _ => sig,
    };
    format!("{input}.{sig}")
}

/// Merges the object `over` onto the object `base` (a member set to null is removed).
fn merge(base: &mut Value, over: &Value) {
    if let (Value::Object(b), Value::Object(o)) = (base, over) {
        for (k, v) in o {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

// ---------------------------------------------------------------------------------------------
// Fixtures: fixed keys, generated once per process.

struct TokenFixture {
    /// RS256 key (its JWK names `alg`), ES256 key, RSA key whose JWK names no `alg`.
    keys: Vec<SigningKey>,
    issuers: Issuers,
}

fn key_without_alg(k: &SigningKey) -> Value {
    let mut jwk = k.public_jwk().clone();
    if let Value::Object(m) = &mut jwk {
        m.remove("alg");
    }
    jwk
}

fn token_fixture() -> &'static TokenFixture {
    static F: OnceLock<TokenFixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = vec![
            SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa-1").expect("rsa key"),
            SigningKey::generate_with_kid(KeyAlg::Es256, "ec-1").expect("ec key"),
            SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa-noalg").expect("rsa key"),
        ];
        let jwks = json!({"keys": [keys[0].public_jwk(), keys[1].public_jwk(), key_without_alg(&keys[2])]});
        let path = std::env::temp_dir().join(format!("cae-proxy-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks.to_string()).expect("write fixture JWKS");
        let toml = format!(
            r#"
[[listener]]
address = "127.0.0.1:0"
[[issuer]]
name = "idp"
issuer = "{TOKEN_ISS}"
jwks_file = "{}"
audiences = ["{TOKEN_AUD}"]
algorithms = ["RS256", "PS256", "ES256"]
leeway = "60s"
max_lifetime = "28h"
unknown_kid_cooldown = "1h"
"#,
            path.display()
        );
        let cfg = Config::parse(&toml, std::path::Path::new(".")).expect("fixture config");
        let icfg = cfg.issuers[0].clone();
        let ks = Arc::new(KeySet::new(
            &icfg.name,
            icfg.keys.clone(),
            &icfg.issuer,
            icfg.key_policy.clone(),
            2048,
            crate::fetch::Fetcher::new(),
        ));
        runtime()
            .block_on(ks.refresh())
            .expect("fixture keys load");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(ks.source(), KeySource::JwksFile(_)));
        TokenFixture {
            keys,
            issuers: Issuers {
                list: vec![Arc::new(IssuerRt::new(icfg, ks))],
            },
        }
    })
}

struct SetFixture {
    /// RS256 and ES256 transmitter keys.
    keys: Vec<SigningKey>,
    parsed: Keys,
    policy: SetPolicy,
}

fn set_fixture() -> &'static SetFixture {
    static F: OnceLock<SetFixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = vec![
            SigningKey::generate_with_kid(KeyAlg::Rs256, "tx-rsa").expect("rsa key"),
            SigningKey::generate_with_kid(KeyAlg::Es256, "tx-ec").expect("ec key"),
        ];
        let jwks = json!({"keys": [keys[0].public_jwk(), keys[1].public_jwk()]});
        let parsed =
            keys::parse_jwks(jwks.to_string().as_bytes(), "fixture", 2048).expect("fixture JWKS");
        SetFixture {
            keys,
            parsed,
            policy: SetPolicy {
                issuer: SET_ISS.into(),
                audiences: vec![SET_AUD.into(), "receiver.example.com".into()],
                algorithms: vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256],
            },
        }
    })
}

/// Checks a compact JWS signature with the public half of `key`, independently of the code under test.
fn signature_verifies(compact: &str, key: &SigningKey, alg: Algorithm) -> bool {
    let Some((input, sig)) = compact.trim().rsplit_once('.') else {
        return false;
    };
    let dk = key.decoding_key().expect("fixture decoding key");
    jsonwebtoken::crypto::verify(sig, input.as_bytes(), &dk, alg).unwrap_or(false)
}

fn jwt_part(compact: &str, i: usize) -> Option<Value> {
    let part = compact.trim().split('.').nth(i)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

// ---------------------------------------------------------------------------------------------
// Target: Authorization header and bearer token, through the verification decision.

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
    match runtime().block_on(token::validate(token, &fx.issuers, NOW)) {
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
            let claims = jwt_part(token, 1).expect("accepted token has JSON claims");
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

// ---------------------------------------------------------------------------------------------
// The CAE decision on an accepted token (src/auth/decide.rs), and what the pipeline makes of it
// (src/proxy/mod.rs `refusal`).

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

// ---------------------------------------------------------------------------------------------
// Target: SET bodies (push) and poll responses.

fn set_base() -> Value {
    json!({"iss": SET_ISS, "jti": "24c63fb56e5a2d77a6b512616ca9fa24", "iat": 1_615_305_159, "aud": SET_AUD,
        "sub_id": {"format":"complex","session":{"format":"opaque","id":"dMTlD|1600802906337.16|16008.16"},
            "user":{"format":"iss_sub","iss": SET_ISS,"sub":"99beb27c-c1c2-4955-882a-e0dc4996fcbc"},
            "tenant":{"format":"opaque","id":"123456789"}},
        "events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{"initiating_entity":"policy",
            "reason_admin":{"en":"Landspeed Policy Violation: C076E82F"},"event_timestamp":1_615_304_991}}})
}

/// Checks one SET as push would: verification, then the event plan.
fn check_set(compact: &str) {
    let fx = set_fixture();
    let unverified = set::parse_unverified(compact);
    let result = set::verify_set(compact, &fx.parsed, &fx.policy, NOW);
    match (&unverified, &result) {
        (Err(a), Err(b)) => assert_eq!(a, b, "structure errors come first"),
        (Err(e), Ok(_)) => panic!("verify_set accepted what parse_unverified refused: {e}"),
        _ => {}
    }
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            let (code, desc) = e.err_code();
            assert!(!code.is_empty());
            // The description goes into a JSON error body and the log.
            let _ = crate::signals::push::error_response(code, &desc);
            return;
        }
    };
    let kid = v
        .kid
        .as_deref()
        .expect("two keys: an accepted SET names its kid");
    let key = fx
        .keys
        .iter()
        .find(|k| k.kid() == kid)
        .unwrap_or_else(|| panic!("accepted SET with unknown kid {kid:?}"));
    assert_eq!(
        v.alg,
        key.alg().jwt_algorithm(),
        "the JWK alg binds the SET alg"
    );
    assert!(fx.policy.algorithms.contains(&v.alg));
    assert!(
        signature_verifies(compact, key, v.alg),
        "accepted SET with a bad signature"
    );
    assert_eq!(
        crate::store::keys::normalize_iss(&v.claims.iss),
        crate::store::keys::normalize_iss(SET_ISS)
    );
    assert!(v.claims.aud.iter().any(|a| fx.policy.audiences.contains(a)));
    assert!(!v.claims.events.is_empty());
    assert!(!v.claims.jti.is_empty());
    for e in &v.claims.events {
        if e.kind.requires_subject() {
            assert!(
                e.subject.is_some(),
                "event {} without subject accepted",
                e.uri
            );
        }
    }
    for policy in [
        EventPolicy::default(),
        EventPolicy {
            risk_revoke_level: config::RiskLevel::Low,
            opaque_iss: Some(TOKEN_ISS.into()),
        },
    ] {
        let plan = events::plan(&v, &policy);
        assert_eq!(plan.notes.len(), v.claims.events.len());
        for c in &plan.changes {
            check_change(c);
        }
    }
}

/// Invariants of a change bound for the store.
fn check_change(c: &Change) {
    let key = match c {
        Change::Revoke { key, .. }
        | Change::Block { key, .. }
        | Change::Unblock { key, .. }
        | Change::Unbind { key, .. }
        | Change::Delete { key, .. } => key,
        Change::Bind { key, nets, .. } => {
            assert!(
                matches!(key, SubjectKey::Session { .. } | SubjectKey::Subject { .. }),
                "bindings apply to sessions and subjects"
            );
            assert!(!nets.is_empty(), "a bind has addresses");
            key
        }
    };
    check_key(key);
    // What the admin API echoes and the store persists survives serialisation.
    let text = serde_json::to_string(c).expect("a change serialises");
    let back: Change = serde_json::from_str(&text).expect("a change deserialises");
    assert_eq!(&back, c);
}

fn check_key(key: &SubjectKey) {
    let enc = key.encode();
    let dec = SubjectKey::decode(&enc).expect("an encoded key decodes");
    // Decoding may split differently when an issuer contains the separator, but it names the
    // same table entry.
    assert_eq!(dec.encode(), enc, "key encoding is stable");
    if let SubjectKey::Email { email } = key {
        assert_eq!(*email, email.to_lowercase(), "e-mail keys are lower case");
    }
}

/// Fuzz target `set_push`. Modes: 0 the raw body, 1 a SET signed from fuzzed header and payload
/// JSON, 2 fuzzed overrides of the protocols.md §6 vector, signed.
///
/// Asserts: an accepted SET has a known `kid`, the key's `alg`, a signature that verifies (checked
/// independently), our issuer and audience, events, subjects where required; every refusal has an
/// RFC 8935 error code; the plan's changes are well formed.
pub fn set_push(data: &[u8]) {
    let fx = set_fixture();
    let mut inp = Input(data);
    let mode = inp.byte() % 3;
    let compact = match mode {
        0 => String::from_utf8_lossy(inp.rest()).into_owned(),
        _ => {
            let key = &fx.keys[usize::from(inp.byte()) % fx.keys.len()];
            let alg = SIGN_ALGS[usize::from(inp.byte()) % SIGN_ALGS.len()];
            let tamper = inp.byte();
            let header = inp.field();
            let payload = inp.field();
            if mode == 1 {
                sign_bytes(key, alg, header, payload, tamper)
            } else {
                let mut h =
                    json!({"typ": "secevent+jwt", "alg": key.alg().as_str(), "kid": key.kid()});
                let mut p = set_base();
                if let Ok(v) = serde_json::from_slice::<Value>(header) {
                    merge(&mut h, &v);
                }
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    merge(&mut p, &v);
                }
                sign_bytes(
                    key,
                    alg,
                    h.to_string().as_bytes(),
                    p.to_string().as_bytes(),
                    tamper,
                )
            }
        }
    };
    check_set(&compact);
}

/// The four SET vectors of protocols.md §6 and the legacy RFC 8935 example payload.
pub fn protocol_vectors() -> Vec<Value> {
    vec![
        set_base(),
        json!({"iss":"https://idp.example.com/3456789/","jti":"07efd930f0977e4fcc1149a733ce7f78","iat":1615305159,"aud":"https://sp.example2.net/caep","txn":"8675309",
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/3456789/","sub":"jane.smith@example.com"},
            "events":{"https://schemas.openid.net/secevent/caep/event-type/credential-change":{"credential_type":"fido2-roaming","change_type":"create","initiating_entity":"user","event_timestamp":1615304991}}}),
        json!({"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964",
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"},
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"reason":"hijacking"}}}),
        json!({"jti":"123456","iss":"https://transmitter.example.com","aud":"receiver.example.com","iat":1493856000,
            "sub_id":{"format":"opaque","id":"f67e39a0a4d34d56b3aa1bc4cff0069f"},
            "events":{"https://schemas.openid.net/secevent/ssf/event-type/verification":{"state":"VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="}}}),
        json!({"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964",
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}}),
    ]
}

/// Payload overrides that turn §6 vectors and negative cases into `set_push` mode-2 seeds.
fn set_overrides() -> Vec<Value> {
    let mut v: Vec<Value> = protocol_vectors()
        .into_iter()
        .map(|mut p| {
            // Make every vector verifiable against the fixture transmitter, keeping its shape.
            merge(&mut p, &json!({"iss": SET_ISS, "aud": SET_AUD}));
            if p.get("sub_id").is_none() {
                merge(&mut p, &json!({"sub_id": null}));
            }
            p
        })
        .collect();
    v.extend([
        json!({"iss": "https://other.example/"}),
        json!({"aud": ["x", "y"]}),
        json!({"jti": null}),
        json!({"iat": "yesterday"}),
        json!({"events": {}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": "x"}}),
        json!({"sub_id": null, "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}),
        json!({"exp": 1, "sub": "top-level"}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": 1_615_304_991_123u64}}}),
        json!({"sub_id": {"user": {"format": "email", "email": "Jane@Example.COM"}, "ip-addresses": {"format": "ip-addresses", "ip-addresses": ["192.0.2.1", "2001:db8::/32"]}},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/session-established": {}}}),
        json!({"events": {"https://schemas.openid.net/secevent/risc/event-type/account-enabled": {}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/risk-level-change": {"principal": "USER", "current_level": "high"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/device-compliance-change": {"previous_status": "compliant", "current_status": "non-compliant"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/token-claims-change": {"claims": {"role": "x"}}}, "sub_id": {"format": "jwt_id", "iss": TOKEN_ISS, "jti": "t1"}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/assurance-level-change": {"namespace": "NIST-AAL", "current_level": "aal1", "previous_level": "aal2", "change_direction": "decrease"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked": {}}, "sub_id": {"format": "id_token_claims", "sub": "x", "email": "a@b"}}),
        json!({"events": {"https://example.com/vendor/unknown": {"subject": 7}}}),
        json!({"events": {"https://schemas.openid.net/secevent/ssf/event-type/stream-updated": {"status": "paused", "reason": "x"}}}),
    ]);
    v
}

/// Seeds for `set_push`.
pub fn seed_set_push() -> Vec<Vec<u8>> {
    let mut out = vec![
        seed(0, &[b"not.a.jws"]),
        seed(0, &[b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."]),
    ];
    for (i, o) in set_overrides().iter().enumerate() {
        let key = (i % 2) as u8;
        let alg = if key == 0 { 0 } else { 3 };
        out.push(signed_seed(
            2,
            [key, alg, 0],
            &[b"{}", o.to_string().as_bytes()],
        ));
    }
    for typ in ["JWT", "application/secevent+jwt", "at+jwt"] {
        out.push(signed_seed(
            2,
            [0, 0, 0],
            &[json!({"typ": typ}).to_string().as_bytes(), b"{}"],
        ));
    }
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"typ":null}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"alg":"HS256"}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"kid":"nope"}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 1], &[b"{}", b"{}"]));
    out.push(signed_seed(2, [1, 0, 0], &[b"{}", b"{}"]));
    out.push(signed_seed(
        1,
        [0, 0, 0],
        &[
            br#"{"alg":"RS256","kid":"tx-rsa"}"#,
            set_base().to_string().as_bytes(),
        ],
    ));
    out
}

/// Fuzz target `poll_response`: a transmitter's poll answer, then every SET in it as push would.
pub fn poll_response(data: &[u8]) {
    let Ok(resp) = crate::signals::poll::parse_response(data) else {
        return;
    };
    for compact in resp.sets.values() {
        check_set(compact);
    }
}

/// Seeds for `poll_response` (one valid signed SET, RFC 8936 shapes).
pub fn seed_poll_response() -> Vec<Vec<u8>> {
    let fx = set_fixture();
    let good = fx.keys[0].sign_raw(
        &json!({"typ": "secevent+jwt", "alg": "RS256", "kid": "tx-rsa"}),
        &set_base(),
    );
    vec![
        json!({"sets": {"24c63fb56e5a2d77a6b512616ca9fa24": good}, "moreAvailable": true})
            .to_string()
            .into_bytes(),
        br#"{"sets":{},"moreAvailable":false}"#.to_vec(),
        br#"{}"#.to_vec(),
        br#"{"sets":{"a":"x.y.z","b":""}}"#.to_vec(),
        br#"{"sets":[],"moreAvailable":"yes"}"#.to_vec(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Target: TOML configuration.

/// Fuzz target `config_toml`: `Config::parse` on arbitrary text never panics, and every error
/// message renders.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("/nonexistent/cae-proxy-fuzz")) {
        Ok(c) => {
            for r in &c.routes {
                assert!(!r.name.is_empty(), "every route has a name");
                assert!(
                    r.upstream.as_ref().map_or(
                        c.listeners
                            .iter()
                            .any(|l| l.role == crate::config::ListenerRole::Authz),
                        |u| c.upstreams.contains_key(u)
                    ),
                    "a route names a known upstream, or only answers authorization checks"
                );
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error list is never empty");
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target: IP addresses, CIDR lists, X-Forwarded-For and Forwarded.

/// Fuzz target `ip`. Fields: an address or CIDR, an `X-Forwarded-For` value, a `Forwarded`
/// value, the trusted proxies (comma-separated), the peer address.
///
/// Asserts: parsers agree with `std` on plain addresses and networks round-trip through their text;
/// the client address is the peer unless the peer is trusted, and otherwise an address that the
/// headers named.
pub fn ip(data: &[u8]) {
    let mut inp = Input(data);
    let net_text = inp.text();
    let xff = inp.field().to_vec();
    let fwd = inp.field().to_vec();
    let trusted_text = inp.text();
    let peer_text = inp.text();

    let cfg_net = config::parse_net(&net_text);
    let sig_net = subject::parse_net(&net_text);
    if let Some(n) = cfg_net {
        assert_eq!(
            config::parse_net(&n.to_string()),
            Some(n),
            "CIDR text round-trips"
        );
    }
    if let Ok(n) = &sig_net {
        assert_eq!(subject::parse_net(&n.to_string()).as_ref(), Ok(n));
    }
    assert_eq!(
        cfg_net.is_some(),
        sig_net.is_ok(),
        "both CIDR parsers accept the same text"
    );
    if let Ok(a) = net_text.trim().parse::<IpAddr>() {
        assert!(cfg_net.is_some_and(|n| n.contains(&a)));
        assert!(sig_net
            .as_ref()
            .is_ok_and(|n| n.contains(&a.to_canonical())));
        assert_eq!(crate::proxy::headers::parse_addr(net_text.trim()), Some(a));
    }
    let list: Vec<Value> = net_text
        .split(',')
        .map(|s| Value::String(s.into()))
        .collect();
    let _ = subject::parse_ip_list(&Value::Array(list));

    let mut server = Config::minimal().server;
    server.trusted_proxies = trusted_text
        .split(',')
        .filter_map(config::parse_net)
        .collect();
    let peer: IpAddr =
        crate::proxy::headers::parse_addr(peer_text.trim()).unwrap_or(IpAddr::from([10, 0, 0, 1]));
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        h.append(crate::proxy::headers::X_FORWARDED_FOR.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&fwd) {
        h.append(http::header::FORWARDED, v);
    }
    let got = crate::proxy::headers::client_ip(peer, &h, &server);
    let canon = peer.to_canonical();
    if !server.is_trusted(canon) {
        assert_eq!(got, canon, "an untrusted peer's headers are ignored");
    } else if got != canon {
        // The forwarding chain as the specification reads it: X-Forwarded-For entries, else the
        // `for=` parameters of Forwarded; `None` for an entry that is not an address.
        let text = |b: &[u8]| {
            HeaderValue::from_bytes(b)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_string))
        };
        let parse = crate::proxy::headers::parse_addr;
        let mut chain: Vec<Option<IpAddr>> = text(&xff)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(parse)
                    .collect()
            })
            .unwrap_or_default();
        if chain.is_empty() {
            chain = text(&fwd)
                .map(|v| {
                    v.split([',', ';'])
                        .filter_map(|p| {
                            let (k, v) = p.trim().split_once('=')?;
                            k.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| parse(v.trim().trim_matches('"')))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        // `got` must be an entry every hop to its right vouched for: only trusted addresses
        // between it and the peer, and no entry that is not an address.
        let mut vouched = false;
        for e in chain.iter().rev() {
            match e {
                Some(a) if a.to_canonical() == got => {
                    vouched = true;
                    break;
                }
                Some(a) if server.is_trusted(a.to_canonical()) => continue,
                _ => break,
            }
        }
        assert!(
            vouched,
            "client address {got} was not vouched for by trusted hops"
        );
    }
}

/// Seeds for `ip`.
pub fn seed_ip() -> Vec<Vec<u8>> {
    let s = |f: [&str; 5]| f.join("\0").into_bytes();
    vec![
        s([
            "192.0.2.1",
            "203.0.113.9, 198.51.100.1, 10.1.1.1",
            "",
            "10.0.0.0/8",
            "10.0.0.2",
        ]),
        s(["10.0.0.0/8", "203.0.113.9", "", "10.0.0.0/8", "192.0.2.7"]),
        s([
            "2001:db8::/32",
            "",
            "for=\"[2001:db8::1]:443\";proto=https",
            "10.0.0.0/8,::1",
            "10.0.0.2",
        ]),
        s([
            "::ffff:192.0.2.1",
            "::ffff:10.1.1.1, 192.0.2.4:8080",
            "",
            "10.0.0.0/8",
            "::ffff:10.0.0.2",
        ]),
        s([
            "192.0.2.1/33",
            "unknown, 198.51.100.1",
            "for=unknown",
            "0.0.0.0/0",
            "127.0.0.1",
        ]),
        s([
            " 2001:db8::1 ",
            "[2001:db8::2]:80",
            "For=192.0.2.60;by=203.0.113.43",
            "::/0",
            "[::1]:9",
        ]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Target: subject identifiers.

/// Fuzz target `subject`: `Subject::parse` on arbitrary JSON; an accepted subject renders,
/// resolves to well-formed store keys, and parsing is deterministic.
pub fn subject(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(s) = Subject::parse(&v) else {
        return;
    };
    assert_eq!(Subject::parse(&v).as_ref(), Ok(&s));
    assert!(!s.format().is_empty() || matches!(s, Subject::Unknown { .. }));
    let _ = s.fingerprint();
    for ctx in [
        KeyContext::new(SET_ISS),
        KeyContext {
            opaque_iss: Some(TOKEN_ISS.into()),
            account_as_email: false,
            ..KeyContext::new("")
        },
    ] {
        let r = s.resolve(&ctx);
        for k in r
            .user
            .iter()
            .chain(&r.session)
            .chain(&r.device)
            .chain(&r.tenant)
            .chain(&r.token)
        {
            check_key(k);
        }
        assert!(r.principal().iter().all(|k| r.user.contains(k)
            || r.token.contains(k)
            || r.session.contains(k)
            || r.device.contains(k)
            || r.tenant.contains(k)));
    }
}

/// Seeds for `subject`: every format of protocols.md §4 and the tolerated legacy shapes.
pub fn seed_subject() -> Vec<Vec<u8>> {
    let mut v = vec![
        json!({"format":"account","uri":"acct:jane@example.com"}),
        json!({"format":"email","email":"Jane.Smith@Example.com"}),
        json!({"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"}),
        json!({"format":"opaque","id":"11112222333344445555"}),
        json!({"format":"phone_number","phone_number":"+12065550100"}),
        json!({"format":"did","url":"did:example:123456"}),
        json!({"format":"uri","uri":"https://example.com/users/12345"}),
        json!({"format":"aliases","identifiers":[{"format":"email","email":"a@b"},{"format":"opaque","id":"x"}]}),
        json!({"format":"aliases","identifiers":[{"format":"aliases","identifiers":[]}]}),
        json!({"format":"jwt_id","iss":"https://idp.example.com/","jti":"t1"}),
        json!({"format":"saml_assertion_id","issuer":"https://idp/","assertion_id":"_8e8dc5f69a98cc4c1ff3427e5ce34606fd672f91e6"}),
        json!({"format":"ip-addresses","ip-addresses":["10.29.37.75","2001:db8::/32"]}),
        json!({"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"x"}),
        json!({"id_token_claims":{"sub":"x","email":"a@b"},"format":"id_token_claims"}),
        json!({"format":"unknown-format","x":1}),
        json!({"user":{"format":"email","email":"a@b"},"device":{"format":"opaque","id":"d1"}}),
        json!({"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"opaque","id":"deep"}}}}}}),
    ];
    v.extend(
        protocol_vectors()
            .into_iter()
            .filter_map(|p| p.get("sub_id").cloned()),
    );
    v.into_iter().map(|x| x.to_string().into_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Target: admin API JSON bodies.

const ADMIN_PATHS: [&str; 7] = [
    "/admin/revoke",
    "/admin/block",
    "/admin/unblock",
    "/admin/bind",
    "/admin/unbind",
    "/admin/delete",
    "/admin/other",
];

/// Fuzz target `admin_body`: first byte picks the endpoint, the rest is the body. An accepted body
/// gives a well-formed change that survives the JSON round trip the API answers with; a refused
/// one is a 4xx.
pub fn admin_body(data: &[u8]) {
    let mut inp = Input(data);
    let path = ADMIN_PATHS[usize::from(inp.byte()) % ADMIN_PATHS.len()];
    match crate::admin::change_from_body(path, inp.rest(), NOW) {
        Ok(c) => {
            check_change(&c);
            let kind = match &c {
                Change::Revoke { .. } => "/admin/revoke",
                Change::Block { .. } => "/admin/block",
                Change::Unblock { .. } => "/admin/unblock",
                Change::Bind { .. } => "/admin/bind",
                Change::Unbind { .. } => "/admin/unbind",
                Change::Delete { .. } => "/admin/delete",
            };
            assert_eq!(kind, path, "the change matches its endpoint");
        }
        Err((status, msg)) => {
            assert!(status.is_client_error(), "{status}: {msg}");
        }
    }
}

/// Seeds for `admin_body`.
pub fn seed_admin_body() -> Vec<Vec<u8>> {
    let b = |i: u8, body: Value| seed(i, &[body.to_string().as_bytes()]);
    vec![
        b(
            0,
            json!({"key":{"type":"subject","iss":"https://idp/","sub":"alice"},"at":1700000000}),
        ),
        b(
            1,
            json!({"key":{"type":"email","email":"Alice@Example.com"}}),
        ),
        b(2, json!({"key":{"type":"tenant","tid":"t"},"at":-1})),
        b(
            3,
            json!({"key":{"type":"session","iss":"https://idp","sid":"s1"},"nets":["10.0.0.0/8","192.0.2.1","::1"]}),
        ),
        b(
            3,
            json!({"key":{"type":"device","id":"d"},"nets":["10.0.0.0/8"]}),
        ),
        b(
            3,
            json!({"key":{"type":"subject","iss":"i","sub":"s"},"nets":[]}),
        ),
        b(4, json!({"key":{"type":"token","iss":"i","jti":"j"}})),
        b(
            5,
            json!({"table":"bindings","key":{"type":"subject","iss":"i","sub":"s"}}),
        ),
        b(
            0,
            json!({"key":{"type":"subject","iss":"i","sub":"s"},"extra":1}),
        ),
        seed(6, &[b"{}"]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Target: JWKS and discovery documents.

/// Fuzz target `jwks`: mode 0 a JWKS, 1 an OIDC/SSF discovery document, 2 an SSF configuration.
///
/// Asserts: only asymmetric signature keys of at least 2048 bits (RSA) survive, a key's `alg`
/// fits its type, lookups by `kid` find that kid, a kid-less lookup works only with one key; a
/// discovery document is accepted only with the expected issuer and an https `jwks_uri`.
pub fn jwks(data: &[u8]) {
    let mut inp = Input(data);
    let mode = inp.byte() % 3;
    let body = inp.rest();
    match mode {
        0 => {
            let Ok(keys) = keys::parse_jwks(body, "fuzz", 2048) else {
                return;
            };
            assert!(!keys.keys.is_empty());
            for k in &keys.keys {
                if let Some(a) = k.alg {
                    assert!(
                        k.family.fits(a),
                        "key alg {a:?} does not fit {:?}",
                        k.family
                    );
                    assert!(!matches!(
                        a,
                        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                    ));
                }
                if let KeyFamily::Rsa { bits } = k.family {
                    assert!(bits >= 2048);
                }
                if let Some(kid) = &k.kid {
                    let found = keys.get(Some(kid)).expect("a listed kid is found");
                    assert_eq!(found.kid.as_deref(), Some(kid.as_str()));
                }
            }
            assert_eq!(keys.get(None).is_some(), keys.keys.len() == 1);
        }
        1 => {
            for insecure in [false, true] {
                let Ok(d) = keys::parse_discovery(
                    body,
                    "https://idp.example.com/.well-known/openid-configuration",
                    TOKEN_ISS,
                    insecure,
                ) else {
                    continue;
                };
                assert_eq!(
                    crate::store::keys::normalize_iss(&d.issuer),
                    crate::store::keys::normalize_iss(TOKEN_ISS)
                );
                let u = url::Url::parse(&d.jwks_uri).expect("an accepted jwks_uri is a URL");
                assert!(
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && (insecure || config::is_loopback_host(u.host_str().unwrap_or("")))),
                    "insecure jwks_uri accepted: {}",
                    d.jwks_uri
                );
            }
        }
        _ => {
            let _ = serde_json::from_slice::<crate::signals::stream::SsfConfiguration>(body);
        }
    }
}

/// Seeds for `jwks`.
pub fn seed_jwks() -> Vec<Vec<u8>> {
    let fx = set_fixture();
    let good = json!({"keys": [fx.keys[0].public_jwk(), fx.keys[1].public_jwk()]});
    let mut out = vec![
        seed(0, &[good.to_string().as_bytes()]),
        seed(0, &[json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "RS256", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}
        ]}).to_string().as_bytes()]),
        seed(0, &[br#"{"keys":[]}"#]),
        seed(0, &[br#"{"keys":{}}"#]),
    ];
    for d in [
        json!({"issuer": TOKEN_ISS, "jwks_uri": "https://idp.example.com/keys", "authorization_endpoint": "https://idp.example.com/authorize"}),
        json!({"issuer": "https://idp.example.com", "jwks_uri": "http://127.0.0.1:8080/keys"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "http://idp.example.com/keys"}),
        json!({"issuer": "https://evil.example/", "jwks_uri": "https://evil.example/keys"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "file:///etc/passwd"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "http://[::1]:1/keys"}),
        json!({"issuer": TOKEN_ISS}),
    ] {
        out.push(seed(1, &[d.to_string().as_bytes()]));
    }
    out.push(seed(2, &[json!({"issuer": SET_ISS, "jwks_uri": "https://t/jwks", "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
        "configuration_endpoint": "https://t/streams", "status_endpoint": "https://t/status", "verification_endpoint": "https://t/verify", "spec_version": "1_0"}).to_string().as_bytes()]));
    out
}

// ---------------------------------------------------------------------------------------------
// Target: challenge round trip.

/// One `WWW-Authenticate` challenge: scheme and parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChallenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl ParsedChallenge {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses one challenge (RFC 9110 §11.2: `scheme [ 1*SP #auth-param ]`, values as token or
/// quoted-string with quoted-pairs). Strict: a syntax error is an `Err`.
pub fn parse_challenge(s: &str) -> Result<ParsedChallenge, String> {
    let mut chars = s.chars().peekable();
    let mut scheme = String::new();
    while let Some(&c) = chars.peek() {
        if !is_tchar(c) {
            break;
        }
        scheme.push(c);
        chars.next();
    }
    if scheme.is_empty() {
        return Err("no scheme".into());
    }
    let mut params = Vec::new();
    if chars.peek().is_none() {
        return Ok(ParsedChallenge { scheme, params });
    }
    if chars.next() != Some(' ') {
        return Err("scheme not followed by a space".into());
    }
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if !is_tchar(c) {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return Err("empty parameter name".into());
        }
        if chars.next() != Some('=') {
            return Err(format!("parameter {name} without '='"));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted-string".into()),
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or("dangling backslash")?),
                    Some(c) if c == '\t' || (' '..='~').contains(&c) => value.push(c),
                    Some(c) => return Err(format!("{c:?} in a quoted-string")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if !is_tchar(c) {
                    break;
                }
                value.push(c);
                chars.next();
            }
            if value.is_empty() {
                return Err(format!("parameter {name} without a value"));
            }
        }
        params.push((name, value));
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(c) => return Err(format!("{c:?} after a parameter")),
        }
    }
    Ok(ParsedChallenge { scheme, params })
}

/// Decodes a `claims` parameter (standard base64, padding optional) to JSON.
pub fn decode_claims(b64: &str) -> Option<Value> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

fn reason_from(inp: &mut Input<'_>) -> DenyReason {
    let token_errors = [
        TokenError::MultipleAuthorization,
        TokenError::TokenInQuery,
        TokenError::TooLarge,
        TokenError::Malformed("fuzz"),
        TokenError::SecurityEventToken,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::MissingClaim("exp"),
    ];
    match inp.byte() % 9 {
        0 => DenyReason::MissingToken,
        1 => DenyReason::InvalidToken(
            token_errors[usize::from(inp.byte()) % token_errors.len()].clone(),
        ),
        2 => DenyReason::Revoked {
            by: [
                RevokedBy::Subject,
                RevokedBy::Session,
                RevokedBy::Token,
                RevokedBy::Tenant,
                RevokedBy::Device,
                RevokedBy::Email,
            ][usize::from(inp.byte()) % 6],
            revoked_at: inp.i64(),
        },
        3 => DenyReason::AccountBlocked { since: inp.i64() },
        4 => DenyReason::IpNotAllowed {
            rule: [IpRule::TokenAddress, IpRule::Binding, IpRule::Location]
                [usize::from(inp.byte()) % 3],
        },
        5 => DenyReason::AuthContextRequired {
            context: inp.text(),
        },
        6 => {
            let n = inp.byte();
            let max_age = (n & 1 == 1).then(|| inp.i64() as u64);
            let acr = inp.text();
            DenyReason::StepUpRequired {
                acr_values: acr
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                max_age,
            }
        }
        7 => DenyReason::InsufficientScope { scope: inp.text() },
        _ => DenyReason::ClaimNotAllowed { claim: inp.text() },
    }
}

fn quotable(s: &str) -> bool {
    s.chars()
        .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
}

/// Fuzz target `challenge`: a deny reason and context decoded from the input; the answer
/// `respond` builds must parse back to the same facts ([`check_challenge`]; `nbf` = revocation or
/// decision time, `acrs` = the context).
pub fn challenge(data: &[u8]) {
    let mut inp = Input(data);
    let flags = inp.byte();
    let reason = reason_from(&mut inp);
    let now = inp.i64();
    let realm = inp.text();
    let auth_uri = inp.text();
    let request_id = inp.text();
    let ctx = ChallengeCtx {
        realm: &realm,
        authorization_uri: (flags & 2 == 2).then_some(auth_uri.as_str()),
        cp1: flags & 1 == 1,
        request_id: &request_id,
        now,
    };
    check_challenge(&reason, &ctx);
}

/// The answer `respond` builds for `reason` parses back (with [`parse_challenge`]) to the same
/// facts: the status, the error code, quotable values, each parameter once, and a `claims` that
/// decodes to exactly the claims request for the reason.
fn check_challenge(reason: &DenyReason, ctx: &ChallengeCtx<'_>) {
    let (realm, request_id, now) = (ctx.realm, ctx.request_id, ctx.now);
    let c = challenge::respond(reason, ctx);
    assert!(
        HeaderValue::from_str(&c.www_authenticate).is_ok(),
        "not a header value: {:?}",
        c.www_authenticate
    );
    let p = parse_challenge(&c.www_authenticate)
        .unwrap_or_else(|e| panic!("{e}: {:?}", c.www_authenticate));
    assert_eq!(p.scheme, "Bearer");
    for (i, (k, v)) in p.params.iter().enumerate() {
        assert!(quotable(v), "{k} is not quotable: {v:?}");
        assert!(
            p.params[..i].iter().all(|(k2, _)| k2 != k),
            "parameter {k} twice"
        );
    }
    assert!(!c.www_authenticate.contains('\n') && !c.www_authenticate.contains('\r'));
    let body: Value = serde_json::from_str(&c.body).expect("the body is JSON");
    assert_eq!(body["request_id"], Value::String(request_id.to_string()));
    assert_eq!(body["code"], Value::String(c.code.into()));
    let forbidden = matches!(
        reason,
        DenyReason::InsufficientScope { .. } | DenyReason::ClaimNotAllowed { .. }
    );
    assert_eq!(
        c.status,
        if forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        }
    );
    let error = p.get("error");
    let expected_claims = match reason {
        DenyReason::Revoked { revoked_at, .. } => Some(
            json!({"access_token": {"nbf": {"essential": true, "value": revoked_at.to_string()}}}),
        ),
        DenyReason::AccountBlocked { .. } | DenyReason::IpNotAllowed { .. } => {
            Some(json!({"access_token": {"nbf": {"essential": true, "value": now.to_string()}}}))
        }
        DenyReason::AuthContextRequired { context } => {
            Some(json!({"access_token": {"acrs": {"essential": true, "value": context}}}))
        }
        _ => None,
    };
    match (reason, expected_claims) {
        (_, Some(want)) => {
            if ctx.cp1 {
                assert_eq!(error, Some("insufficient_claims"));
                let claims = p.get("claims").expect("a claims challenge has claims");
                assert_eq!(
                    decode_claims(claims),
                    Some(want),
                    "claims do not round-trip"
                );
                // Standard base64 with padding, as Microsoft emits.
                assert_eq!(claims.len() % 4, 0);
                if let Some(u) = ctx.authorization_uri {
                    if quotable(u) {
                        assert_eq!(p.get("authorization_uri"), Some(u));
                    }
                }
            } else {
                assert_eq!(error, Some("invalid_token"));
                assert!(p.get("claims").is_none());
            }
        }
        (DenyReason::MissingToken, None) => {
            assert_eq!(
                p.params.len(),
                1,
                "no error code without a token (RFC 6750 §3)"
            );
        }
        (DenyReason::InvalidToken(_), None) => assert_eq!(error, Some("invalid_token")),
        (DenyReason::StepUpRequired { max_age, .. }, None) => {
            assert_eq!(error, Some("insufficient_user_authentication"));
            assert_eq!(
                p.get("max_age").map(str::to_string),
                max_age.map(|m| m.to_string())
            );
        }
        (DenyReason::InsufficientScope { .. } | DenyReason::ClaimNotAllowed { .. }, None) => {
            assert_eq!(error, Some("insufficient_scope"));
        }
        (r, None) => panic!("unexpected reason without claims: {r:?}"),
    }
    if let Some(r) = p.get("realm") {
        if quotable(realm) {
            assert_eq!(r, realm);
        }
    }
}

/// Seeds for `challenge`: every reason, with and without `cp1`, including the protocols.md §2
/// vectors (nbf 1604106651 and 1700000000, acrs c1).
pub fn seed_challenge() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let ctx = |flags: u8, reason: Vec<u8>, now: i64| {
        let mut v = vec![flags];
        v.extend(reason);
        v.extend(now.to_le_bytes());
        v.extend(b"api\0https://login.microsoftonline.com/common/oauth2/authorize\0req-1");
        v
    };
    let t = |x: i64| x.to_le_bytes().to_vec();
    for flags in [0u8, 3] {
        out.push(ctx(flags, vec![0], NOW));
        out.push(ctx(flags, vec![1, 8], NOW));
        out.push(ctx(flags, [vec![2, 1], t(1_604_106_651)].concat(), NOW));
        out.push(ctx(flags, [vec![3], t(10)].concat(), 1_700_000_000));
        out.push(ctx(flags, vec![4, 2], NOW));
        out.push(ctx(flags, [vec![5], b"c1\0".to_vec()].concat(), NOW));
        out.push(ctx(
            flags,
            [vec![6, 1], t(300), b"urn:mfa urn:phr\0".to_vec()].concat(),
            NOW,
        ));
        out.push(ctx(
            flags,
            [vec![7], b"read write\0".to_vec()].concat(),
            NOW,
        ));
        out.push(ctx(flags, [vec![8], b"tid\0".to_vec()].concat(), NOW));
    }
    out.push(ctx(
        3,
        [vec![5], "c\"1\\ é\u{7f}\0".as_bytes().to_vec()].concat(),
        NOW,
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Target: routing on the request's host, path and method.

fn router() -> &'static crate::proxy::route::Router {
    static R: OnceLock<crate::proxy::route::Router> = OnceLock::new();
    R.get_or_init(|| {
        let text = r#"
[[listener]]
address = "127.0.0.1:0"
[upstreams.u]
url = "http://127.0.0.1:1"
[[route]]
name = "any"
upstream = "u"
auth = "none"
[[route]]
name = "api"
path_prefix = "/api"
methods = ["GET", "POST"]
upstream = "u"
auth = "none"
[[route]]
name = "wild"
hosts = ["*.example.com"]
path_prefix = "/"
upstream = "u"
auth = "none"
[[route]]
name = "exact"
hosts = ["api.example.com", "[::1]"]
path_prefix = "/v1/"
upstream = "u"
auth = "none"
"#;
        let c = Config::parse(text, std::path::Path::new(".")).expect("router fixture");
        crate::proxy::route::Router::new(&c.routes)
    })
}

/// Fuzz target `route`: fields host, path, method. Routing never panics, a chosen route's path
/// prefix matches on a segment boundary, and the stripped path still starts with `/`.
pub fn route(data: &[u8]) {
    use crate::proxy::route::{has_dot_segment, prefix_matches, strip};
    let mut inp = Input(data);
    let host = inp.text();
    let path = inp.text();
    let method = http::Method::from_bytes(inp.field()).unwrap_or(http::Method::GET);
    let _ = has_dot_segment(&path);
    for h in [Some(host.as_str()), None] {
        if let Some(r) = router().find(h, &path, &method) {
            assert!(prefix_matches(&r.path_prefix, &path));
            assert!(r.methods.is_empty() || r.methods.contains(&method));
            assert!(strip(&r.path_prefix, &path).starts_with('/'));
        }
    }
}

/// Seeds for `route`.
pub fn seed_route() -> Vec<Vec<u8>> {
    [
        ["api.example.com:443", "/v1/x", "GET"],
        ["API.EXAMPLE.COM", "/v1", "POST"],
        ["b.example.com", "/api/x", "PATCH"],
        ["[::1]:8443", "/v1/", "GET"],
        ["[abc", "/", "GET"],
        ["\u{e9}.example.com", "/api", "GET"],
        ["example.com:", "/public/../api", "DELETE"],
    ]
    .iter()
    .map(|f| f.join("\0").into_bytes())
    .collect()
}

/// A target body: panics when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay and the seed writer.
pub const TARGETS: &[(&str, Target)] = &[
    ("authorization", authorization),
    ("set_push", set_push),
    ("poll_response", poll_response),
    ("config_toml", config_toml),
    ("ip", ip),
    ("subject", subject),
    ("admin_body", admin_body),
    ("jwks", jwks),
    ("challenge", challenge),
    ("route", route),
];

/// The seeds of a target (config seeds are the shipped configuration files, read by the caller).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "authorization" => seed_authorization(),
        "set_push" => seed_set_push(),
        "poll_response" => seed_poll_response(),
        "ip" => seed_ip(),
        "subject" => seed_subject(),
        "admin_body" => seed_admin_body(),
        "jwks" => seed_jwks(),
        "challenge" => seed_challenge(),
        "route" => seed_route(),
        _ => Vec::new(),
    }
}
