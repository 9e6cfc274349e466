//! Security Event Token verification (RFC 8417, SSF §4) in the order of docs/protocols.md §3.1:
//! structure, `typ`, claims, events and subject (`invalid_request`), then signature
//! (`invalid_key`), `iss` (`invalid_issuer`) and `aud` (`invalid_audience`). Pure: keys and `now`
//! are parameters. The async key lookup (unknown `kid` → one shared JWKS refetch) is
//! `TransmitterRt::key` in `transmitter.rs`, called by `process.rs`.

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::subject::{Subject, SubjectError};
use super::vocabulary::EventType;
use crate::auth::keys::{Keys, VerifyKey};
use crate::config::Transmitter;
use crate::store::keys::same_issuer;

/// RFC 8935 §2.4 / SSF §11 error codes a receiver answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    InvalidRequest,
    InvalidKey,
    InvalidIssuer,
    InvalidAudience,
    AuthenticationFailed,
    AccessDenied,
    InvalidState,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::InvalidRequest => "invalid_request",
            ErrCode::InvalidKey => "invalid_key",
            ErrCode::InvalidIssuer => "invalid_issuer",
            ErrCode::InvalidAudience => "invalid_audience",
            ErrCode::AuthenticationFailed => "authentication_failed",
            ErrCode::AccessDenied => "access_denied",
            ErrCode::InvalidState => "invalid_state",
        }
    }
}

/// Why a SET was refused. Descriptions are safe to send back and to log (no SET material
/// beyond a `kid`, a claim name or an event URI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("the body is not a compact JWS: {0}")]
    NotCompactJws(&'static str),
    #[error("the JWS header is not a JSON object")]
    HeaderNotJson,
    #[error("the JWS payload is not a JSON object")]
    PayloadNotJson,
    #[error("the typ header {0:?} is not acceptable for a SET")]
    UnacceptableTyp(String),
    #[error("the JWS header names critical extensions, none are supported")]
    CriticalHeader,
    #[error("the JWS header has no alg")]
    NoAlgorithm,
    #[error("the SET lacks the required claim {0}")]
    MissingClaim(&'static str),
    #[error("the SET claim {0} has the wrong type")]
    BadClaim(&'static str),
    #[error("the events claim must be an object with at least one member")]
    NoEvents,
    #[error("the value of event {0} is not a JSON object")]
    EventNotObject(String),
    #[error("no subject identifier for event {0}")]
    NoSubject(String),
    #[error("invalid subject identifier: {0}")]
    BadSubject(#[from] SubjectError),
    #[error("the SET is not signed (alg none)")]
    Unsigned,
    #[error("symmetric algorithm {0} is never accepted")]
    SymmetricAlgorithm(String),
    #[error("algorithm {0} is not allowed for this transmitter")]
    AlgorithmNotAllowed(String),
    #[error("no key of the transmitter matches {}", kid_text(.0.as_deref()))]
    UnknownKey(Option<String>),
    #[error("the key does not fit algorithm {0:?}")]
    KeyMismatch(Algorithm),
    #[error("the SET signature is invalid")]
    BadSignature,
    #[error("the SET issuer is not the configured transmitter")]
    WrongIssuer,
    #[error("the SET audience does not name this receiver")]
    WrongAudience,
}

fn kid_text(kid: Option<&str>) -> String {
    match kid {
        Some(k) => format!("kid {:?}", k.chars().take(64).collect::<String>()),
        None => "a SET without kid".to_string(),
    }
}

impl SetError {
    pub fn code(&self) -> ErrCode {
        match self {
            SetError::NotCompactJws(_)
            | SetError::HeaderNotJson
            | SetError::PayloadNotJson
            | SetError::UnacceptableTyp(_)
            | SetError::CriticalHeader
            | SetError::NoAlgorithm
            | SetError::MissingClaim(_)
            | SetError::BadClaim(_)
            | SetError::NoEvents
            | SetError::EventNotObject(_)
            | SetError::NoSubject(_)
            | SetError::BadSubject(_) => ErrCode::InvalidRequest,
            SetError::Unsigned
            | SetError::SymmetricAlgorithm(_)
            | SetError::AlgorithmNotAllowed(_)
            | SetError::UnknownKey(_)
            | SetError::KeyMismatch(_)
            | SetError::BadSignature => ErrCode::InvalidKey,
            SetError::WrongIssuer => ErrCode::InvalidIssuer,
            SetError::WrongAudience => ErrCode::InvalidAudience,
        }
    }

    /// The RFC 8935 `err` value and a human description.
    pub fn err_code(&self) -> (&'static str, String) {
        (self.code().as_str(), self.to_string())
    }
}

/// One member of `events`, with the subject that applies to it.
#[derive(Debug, Clone)]
pub struct SetEvent {
    pub uri: String,
    pub kind: EventType,
    pub body: Map<String, Value>,
    /// `sub_id`, else the event's own `subject`, else another event's, else the top-level `sub`.
    pub subject: Option<Subject>,
}

/// The claims of a structurally valid SET.
#[derive(Debug, Clone)]
pub struct SetClaims {
    pub iss: String,
    pub jti: String,
    pub iat: i64,
    pub aud: Vec<String>,
    pub txn: Option<String>,
    pub toe: Option<i64>,
    pub events: Vec<SetEvent>,
}

/// A SET before its signature was checked.
#[derive(Debug, Clone)]
pub struct UnverifiedSet {
    /// The header `alg`, as written.
    pub alg: String,
    pub kid: Option<String>,
    pub claims: SetClaims,
    signing_input: String,
    signature: String,
}

/// A SET whose signature, issuer and audience were verified.
#[derive(Debug, Clone)]
pub struct ValidSet {
    pub claims: SetClaims,
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// When it was received (epoch seconds).
    pub received: i64,
}

/// What verification needs of the transmitter's configuration.
#[derive(Debug, Clone)]
pub struct SetPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
}

impl From<&Transmitter> for SetPolicy {
    fn from(t: &Transmitter) -> SetPolicy {
        SetPolicy {
            issuer: t.issuer.clone(),
            audiences: t.audiences.clone(),
            algorithms: t.algorithms.clone(),
        }
    }
}

fn b64(part: &str) -> Result<Vec<u8>, SetError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| SetError::NotCompactJws("a segment is not base64url"))
}

/// `typ` values accepted for a SET (docs/protocols.md §3.2 tolerances).
fn typ_acceptable(typ: Option<&Value>) -> Result<(), SetError> {
    match typ {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(t)) => {
            let media_type = crate::auth::token::typ_media_type(t);
            if media_type == crate::auth::token::SET_MEDIA_TYPE || media_type == "application/jwt" {
                Ok(())
            } else {
                Err(SetError::UnacceptableTyp(t.chars().take(40).collect()))
            }
        }
        Some(_) => Err(SetError::UnacceptableTyp("(not a string)".into())),
    }
}

fn int_claim(m: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, SetError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(SetError::BadClaim(name)),
    }
}

fn string_claim(m: &Map<String, Value>, name: &'static str) -> Result<String, SetError> {
    match m.get(name) {
        None | Some(Value::Null) => Err(SetError::MissingClaim(name)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(SetError::BadClaim(name)),
    }
}

/// Structure, `typ`, required claims, `events` and subjects: everything that is `invalid_request`.
pub fn parse_unverified(compact: &str) -> Result<UnverifiedSet, SetError> {
    let compact = compact.trim_matches(|c: char| c.is_ascii_whitespace());
    let mut parts = compact.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SetError::NotCompactJws("a JWS has exactly three segments"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(SetError::NotCompactJws("empty segment"));
    }
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&b64(h)?) else {
        return Err(SetError::HeaderNotJson);
    };
    typ_acceptable(header.get("typ"))?;
    if header.contains_key("crit") {
        return Err(SetError::CriticalHeader);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        _ => return Err(SetError::NoAlgorithm),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(SetError::NotCompactJws("kid is not a string")),
    };
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&b64(p)?) else {
        return Err(SetError::PayloadNotJson);
    };
    let iss = string_claim(&m, "iss")?;
    let jti = string_claim(&m, "jti")?;
    let iat = int_claim(&m, "iat")?.ok_or(SetError::MissingClaim("iat"))?;
    let aud = match m.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(SetError::BadClaim("aud"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(SetError::BadClaim("aud")),
    };
    let txn = match m.get("txn") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(SetError::BadClaim("txn")),
    };
    let toe = int_claim(&m, "toe")?;
    // `exp` and a top-level `sub` are ignored (Login.gov sends exp; SSF forbids both).
    let events = match m.get("events") {
        None | Some(Value::Null) => return Err(SetError::MissingClaim("events")),
        Some(Value::Object(e)) if !e.is_empty() => e,
        Some(_) => return Err(SetError::NoEvents),
    };
    let sub_id = match m.get("sub_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Subject::parse(v)?),
    };
    let mut parsed = Vec::with_capacity(events.len());
    for (uri, body) in events {
        let Value::Object(body) = body else {
            return Err(SetError::EventNotObject(uri.chars().take(200).collect()));
        };
        let kind = EventType::from_uri(uri);
        let own = match body.get("subject") {
            None | Some(Value::Null) => None,
            // Unknown event types are accepted whatever their shape.
            Some(v) if kind.requires_subject() => Some(Subject::parse(v)?),
            Some(v) => Subject::parse(v).ok(),
        };
        parsed.push(SetEvent {
            uri: uri.clone(),
            kind,
            body: body.clone(),
            subject: own,
        });
    }
    let first_own = parsed.iter().find_map(|e| e.subject.clone());
    let top_sub = m
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(|sub| Subject::IssSub {
            iss: iss.clone(),
            sub: sub.to_string(),
        });
    for e in &mut parsed {
        // Both `sub_id` and an in-event subject: apply once, with `sub_id`.
        let subject = sub_id
            .clone()
            .or_else(|| e.subject.take())
            .or_else(|| first_own.clone())
            .or_else(|| top_sub.clone());
        if subject.is_none() && e.kind.requires_subject() {
            return Err(SetError::NoSubject(e.uri.chars().take(200).collect()));
        }
        e.subject = subject;
    }
    let signing_input_len = h.len() + 1 + p.len();
    Ok(UnverifiedSet {
        alg,
        kid,
        claims: SetClaims {
            iss,
            jti,
            iat,
            aud,
            txn,
            toe,
            events: parsed,
        },
        signing_input: compact[..signing_input_len].to_string(),
        signature: s.to_string(),
    })
}

/// The header `alg` as an algorithm the transmitter allows (`invalid_key` otherwise).
pub fn allowed_alg(alg: &str, policy: &SetPolicy) -> Result<Algorithm, SetError> {
    if alg.eq_ignore_ascii_case("none") {
        return Err(SetError::Unsigned);
    }
    if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("hs")) {
        return Err(SetError::SymmetricAlgorithm(alg.chars().take(10).collect()));
    }
    let parsed: Algorithm = alg
        .parse()
        .map_err(|_| SetError::AlgorithmNotAllowed(alg.chars().take(10).collect()))?;
    if !policy.algorithms.contains(&parsed)
        || matches!(
            parsed,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        )
    {
        return Err(SetError::AlgorithmNotAllowed(
            alg.chars().take(10).collect(),
        ));
    }
    Ok(parsed)
}

/// Signature with `key`, then `iss`, then `aud`.
pub fn verify_with_key(
    set: UnverifiedSet,
    key: Option<&VerifyKey>,
    policy: &SetPolicy,
    now: i64,
) -> Result<ValidSet, SetError> {
    let alg = allowed_alg(&set.alg, policy)?;
    let key = key.ok_or_else(|| SetError::UnknownKey(set.kid.clone()))?;
    if !key.family.fits(alg) || key.alg.is_some_and(|a| a != alg) {
        return Err(SetError::KeyMismatch(alg));
    }
    if set.signature.is_empty() {
        return Err(SetError::BadSignature);
    }
    // The same pre-parsed aws-lc-rs verification as access tokens (`VerifyKey::verify`).
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&set.signature)
        .map_err(|_| SetError::BadSignature)?;
    if !key.verify(alg, set.signing_input.as_bytes(), &signature) {
        return Err(SetError::BadSignature);
    }
    if !same_issuer(&set.claims.iss, &policy.issuer) {
        return Err(SetError::WrongIssuer);
    }
    if !set
        .claims
        .aud
        .iter()
        .any(|a| policy.audiences.iter().any(|ours| ours == a))
    {
        return Err(SetError::WrongAudience);
    }
    Ok(ValidSet {
        claims: set.claims,
        alg,
        kid: set.kid,
        received: now,
    })
}

/// Verifies a SET against a key snapshot (pure).
pub fn verify_set(
    compact: &str,
    keys: &Keys,
    policy: &SetPolicy,
    now: i64,
) -> Result<ValidSet, SetError> {
    let set = parse_unverified(compact)?;
    allowed_alg(&set.alg, policy)?;
    let key = keys.get(set.kid.as_deref());
    verify_with_key(set, key.as_deref(), policy, now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    use crate::auth::keys::parse_jwks;
    use crate::dev::keys::set_kit::{self as kit, AUD, ISS};
    use crate::dev::keys::SigningKey;

    pub(crate) fn policy() -> SetPolicy {
        SetPolicy {
            issuer: ISS.into(),
            audiences: vec![AUD.into(), "https://sp.example.com/caep".into()],
            algorithms: vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256],
        }
    }

    fn base() -> Value {
        json!({"iss": ISS, "jti": "j1", "iat": 1_615_305_159, "aud": AUD,
               "sub_id": {"format":"iss_sub","iss": ISS, "sub":"u1"},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/credential-change":
                   {"credential_type":"password","change_type":"update"}}})
    }

    fn check(s: &SigningKey, token: &str) -> Result<ValidSet, SetError> {
        let keys = parse_jwks(kit::jwks(s).to_string().as_bytes(), "test", 2048).expect("jwks");
        verify_set(token, &keys, &policy(), 1_700_000_000)
    }

    #[test]
    fn valid_set_and_typ_variants() {
        let s = kit::rsa();
        let ok = check(&s, &s.sign_set(&base())).expect("valid");
        assert_eq!(ok.claims.jti, "j1");
        assert_eq!(ok.alg, Algorithm::RS256);
        assert_eq!(ok.received, 1_700_000_000);
        for typ in [
            Some("secevent+jwt"),
            Some("application/secevent+jwt"),
            Some("Application/SecEvent+JWT"),
            Some("JWT"),
            None,
        ] {
            let t = s.sign(Some(json!({"typ": typ})), &base());
            assert!(check(&s, &t).is_ok(), "{typ:?}");
        }
        for typ in ["at+jwt", "application/at+jwt", "JOSE"] {
            let e = check(&s, &s.sign(Some(json!({"typ": typ})), &base())).unwrap_err();
            assert_eq!(e.code(), ErrCode::InvalidRequest, "{typ}");
        }
    }

    #[test]
    fn structural_errors_are_invalid_request() {
        let s = kit::rsa();
        let mut cases: Vec<(Value, SetError)> = Vec::new();
        for claim in ["jti", "iat", "iss"] {
            let mut v = base();
            v.as_object_mut().expect("obj").remove(claim);
            cases.push((
                v,
                SetError::MissingClaim(match claim {
                    "jti" => "jti",
                    "iat" => "iat",
                    _ => "iss",
                }),
            ));
        }
        let mut v = base();
        v.as_object_mut().expect("obj").remove("events");
        cases.push((v, SetError::MissingClaim("events")));
        let mut v = base();
        v["events"] = json!({});
        cases.push((v, SetError::NoEvents));
        let mut v = base();
        v["events"] = json!({"https://schemas.openid.net/secevent/caep/event-type/session-revoked": "revoked"});
        cases.push((
            v,
            SetError::EventNotObject(
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked".into(),
            ),
        ));
        let mut v = base();
        v.as_object_mut().expect("obj").remove("sub_id");
        cases.push((
            v,
            SetError::NoSubject(
                "https://schemas.openid.net/secevent/caep/event-type/credential-change".into(),
            ),
        ));
        let mut v = base();
        v["iat"] = json!("yesterday");
        cases.push((v, SetError::BadClaim("iat")));
        let mut v = base();
        v["sub_id"] = json!({"format":"iss_sub","iss":ISS});
        cases.push((
            v,
            SetError::BadSubject(SubjectError::MissingMember {
                format: "iss_sub",
                member: "sub",
            }),
        ));
        for (claims, want) in cases {
            let got = check(&s, &s.sign_set(&claims)).unwrap_err();
            assert_eq!(got, want, "{claims}");
            assert_eq!(got.err_code().0, "invalid_request");
        }
        for bad in ["", "a.b", "a.b.c.d", "!!!.e30.x", "e30.e30"] {
            assert_eq!(
                check(&s, bad).unwrap_err().code(),
                ErrCode::InvalidRequest,
                "{bad:?}"
            );
        }
        // Header or payload not JSON objects.
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1]");
        assert_eq!(
            check(&s, &format!("{e}.{e}.sig")).unwrap_err(),
            SetError::HeaderNotJson
        );
        // Critical extensions are refused.
        let t = s.sign_raw(
            &json!({"alg":"RS256","kid":s.kid(),"crit":["b64"],"b64":false}),
            &base(),
        );
        assert_eq!(check(&s, &t).unwrap_err(), SetError::CriticalHeader);
    }

    #[test]
    fn key_errors_are_invalid_key() {
        let s = kit::rsa();
        // alg none, unsigned.
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"alg":"none","typ":"secevent+jwt"}).to_string());
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(base().to_string());
        let e = check(&s, &format!("{h}.{p}.")).unwrap_err();
        assert_eq!(e, SetError::Unsigned);
        assert_eq!(e.err_code().0, "invalid_key");
        // Corrupted signature.
        let mut t = s.sign_set(&base());
        let last = t.pop().expect("char");
        t.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(check(&s, &t).unwrap_err(), SetError::BadSignature);
        // Signature of another payload.
        let other = s.sign_set(&json!({"x":1}));
        let sig = other.rsplit('.').next().expect("sig");
        let t = s.sign_set(&base());
        let forged = format!("{}.{sig}", &t[..t.rfind('.').expect("dot")]);
        assert_eq!(check(&s, &forged).unwrap_err(), SetError::BadSignature);
        // Unknown kid.
        let t = s.sign_raw(
            &json!({"alg":"RS256","typ":"secevent+jwt","kid":"other"}),
            &base(),
        );
        assert_eq!(
            check(&s, &t).unwrap_err(),
            SetError::UnknownKey(Some("other".into()))
        );
        // HS256 signed with the public modulus as secret: refused whatever the key.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                alg: Algorithm::HS256,
                typ: Some("secevent+jwt".into()),
                kid: Some(s.kid().to_string()),
                ..Default::default()
            },
            &base(),
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .expect("hs");
        assert_eq!(
            check(&s, &hs).unwrap_err(),
            SetError::SymmetricAlgorithm("HS256".into())
        );
        // An algorithm outside the allow-list.
        let t = kit::sign_alg(&s, &base(), Algorithm::RS384);
        assert_eq!(
            check(&s, &t).unwrap_err(),
            SetError::AlgorithmNotAllowed("RS384".into())
        );
        // ES256 header with an RSA key: key type does not fit.
        let t = s.sign_raw(&json!({"alg":"ES256","kid":s.kid()}), &base());
        assert_eq!(
            check(&s, &t).unwrap_err(),
            SetError::KeyMismatch(Algorithm::ES256)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let s = kit::rsa();
        let mut v = base();
        v["iss"] = json!("https://evil.example.com/");
        let e = check(&s, &s.sign_set(&v)).unwrap_err();
        assert_eq!(
            e.err_code(),
            (
                "invalid_issuer",
                "the SET issuer is not the configured transmitter".to_string()
            )
        );
        // One trailing slash is tolerated.
        let mut v = base();
        v["iss"] = json!(format!("{ISS}/"));
        assert!(check(&s, &s.sign_set(&v)).is_ok());
        let mut v = base();
        v["aud"] = json!("https://someone-else.example.com");
        assert_eq!(
            check(&s, &s.sign_set(&v)).unwrap_err().err_code().0,
            "invalid_audience"
        );
        let mut v = base();
        v.as_object_mut().expect("obj").remove("aud");
        assert_eq!(
            check(&s, &s.sign_set(&v)).unwrap_err(),
            SetError::WrongAudience
        );
        let mut v = base();
        v["aud"] = json!([
            "https://someone-else.example.com",
            "https://sp.example.com/caep"
        ]);
        assert!(check(&s, &s.sign_set(&v)).is_ok());
        // Order: a bad signature is reported before a bad issuer.
        let mut v = base();
        v["iss"] = json!("https://evil.example.com/");
        let mut t = s.sign_set(&v);
        t.truncate(t.len() - 4);
        t.push_str("AAAA");
        assert_eq!(check(&s, &t).unwrap_err().code(), ErrCode::InvalidKey);
    }

    #[test]
    fn tolerances() {
        let s = kit::rsa();
        // exp in the past and a top-level sub are ignored.
        let mut v = base();
        v["exp"] = json!(1);
        v["sub"] = json!("ignored");
        let ok = check(&s, &s.sign_set(&v)).expect("valid");
        assert_eq!(
            ok.claims.events[0].subject,
            Some(Subject::IssSub {
                iss: ISS.into(),
                sub: "u1".into()
            })
        );
        // Top-level sub is the subject when there is no other.
        let mut v = base();
        v.as_object_mut().expect("obj").remove("sub_id");
        v["sub"] = json!("legacy-sub");
        let ok = check(&s, &s.sign_set(&v)).expect("valid");
        assert_eq!(
            ok.claims.events[0].subject,
            Some(Subject::IssSub {
                iss: ISS.into(),
                sub: "legacy-sub".into()
            })
        );
        // Subject inside the event with subject_type / iss-sub.
        let v = json!({"iss": ISS, "jti":"x", "iat": 1, "aud": AUD, "events": {
            "https://schemas.openid.net/secevent/risc/event-type/account-disabled":
              {"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}});
        let ok = check(&s, &s.sign_set(&v)).expect("valid");
        assert_eq!(
            ok.claims.events[0].subject,
            Some(Subject::IssSub {
                iss: "https://idp.example.com/".into(),
                sub: "7375626A656374".into()
            })
        );
        // sub_id wins over an in-event subject (applied once).
        let mut v = base();
        v["events"] = json!({"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"subject":{"format":"opaque","id":"other"}}});
        let ok = check(&s, &s.sign_set(&v)).expect("valid");
        assert_eq!(
            ok.claims.events[0].subject,
            Some(Subject::IssSub {
                iss: ISS.into(),
                sub: "u1".into()
            })
        );
        // Unknown event types need no subject and may have any object shape.
        let v = json!({"iss": ISS, "jti":"x", "iat": 1, "aud": AUD, "events": {"https://vendor.example/evt": {"subject": 5}}});
        assert!(check(&s, &s.sign_set(&v)).is_ok());
        // Verification needs no subject.
        let v = json!({"iss": ISS, "jti":"x", "iat": 1, "aud": AUD, "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": null}}});
        assert!(check(&s, &s.sign_set(&v)).is_ok());
        // Trailing newline around the body.
        assert!(check(&s, &format!("{}\r\n", s.sign_set(&base()))).is_ok());
    }

    #[test]
    fn es256_and_ps256_signatures() {
        let s = kit::ec();
        assert_eq!(
            check(&s, &s.sign_set(&base())).expect("es256").alg,
            Algorithm::ES256
        );
        let r = kit::rsa();
        assert_eq!(
            check(&r, &kit::sign_alg(&r, &base(), Algorithm::PS256))
                .expect("ps256")
                .alg,
            Algorithm::PS256
        );
    }

    #[test]
    fn rfc8935_example_signed_hs256_is_invalid_key() {
        // The example header of RFC 8935 §2.1, as given.
        let s = kit::rsa();
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"typ":"secevent+jwt","alg":"HS256"}"#);
        let t = format!(
            "{h}.{}.Y4rXxMD406P2edv00cr9Wf3_XwNtLjB9n-jTqN1_lLc",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kit::RFC8935_PAYLOAD)
        );
        assert_eq!(check(&s, &t).unwrap_err().err_code().0, "invalid_key");
    }
}
