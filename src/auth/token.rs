//! Bearer extraction and JWT validation: issuer by unverified `iss`, key by `kid`, algorithm
//! allow-list and key-type match, then jsonwebtoken verifies signature, `aud`, `exp`, `nbf`.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::cache::SigningInputHash;
use super::claims::{self, Claims, Members, StrOrList};
use super::dpop::ProofError;
use super::keys::{KeySet, VerifyKey};
use crate::config;

/// Why a bearer token was refused. The description is printable ASCII without `"` or `\`
/// (it goes into `error_description`); it never contains token material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error("access tokens are not accepted in the query string")]
    TokenInQuery,
    #[error("the token is larger than allowed")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("a security event token cannot be used as an access token")]
    SecurityEventToken,
    #[error("the token issuer is not trusted")]
    UnknownIssuer,
    #[error("the token issuer is not accepted on this route")]
    IssuerNotAllowed,
    #[error("the token algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the signing key is unknown")]
    UnknownKey,
    #[error("the signing key does not fit the token algorithm")]
    KeyMismatch,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token lifetime exceeds the allowed maximum")]
    LifetimeTooLong,
    #[error("the token audience is not accepted")]
    WrongAudience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("the issuer keys are not available yet")]
    KeysUnavailable,
    /// RFC 9449 §4.3: the proof failed a check (`error="invalid_dpop_proof"`).
    #[error("{0}")]
    DpopProof(ProofError),
    /// RFC 9449 §9: the route wants a nonce this proxy issued (`error="use_dpop_nonce"`).
    #[error("the DPoP proof must carry the nonce this server provides")]
    DpopNonce,
    #[error("the access token is not bound to a DPoP key")]
    NotDpopBound,
    #[error("the DPoP proof key is not the key the access token is bound to")]
    DpopKeyMismatch,
    /// RFC 9449 §7.2: a DPoP-bound token presented as a bearer token.
    #[error("a DPoP-bound access token must be sent with the DPoP scheme")]
    DpopBoundAsBearer,
    /// RFC 8705 §3: a certificate-bound token without a client certificate.
    #[error("the access token is bound to a client certificate and none was presented")]
    NoClientCertificate,
    /// RFC 8705 §3: another certificate than the one the token is bound to.
    #[error("the access token is bound to another client certificate")]
    CertificateMismatch,
    #[error("the access token confirmation (cnf) is not one this server can check")]
    UnsupportedBinding,
    #[error("this route requires a sender-constrained access token (DPoP or certificate-bound)")]
    NotSenderConstrained,
    /// Fail closed: the replay cache is full or Redis is unreachable (answered 503).
    #[error("the DPoP proof cannot be checked for replay now; retry later")]
    ReplayCheckUnavailable,
}

impl TokenError {
    /// Stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::MultipleAuthorization => "multiple_authorization",
            TokenError::TokenInQuery => "token_in_query",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::SecurityEventToken => "security_event_token",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::IssuerNotAllowed => "issuer_not_allowed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeyMismatch => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::DpopProof(e) => e.reason(),
            TokenError::DpopNonce => "dpop_nonce",
            TokenError::NotDpopBound => "not_dpop_bound",
            TokenError::DpopKeyMismatch => "dpop_key_mismatch",
            TokenError::DpopBoundAsBearer => "dpop_bound_as_bearer",
            TokenError::NoClientCertificate => "no_client_certificate",
            TokenError::CertificateMismatch => "certificate_mismatch",
            TokenError::UnsupportedBinding => "unsupported_binding",
            TokenError::NotSenderConstrained => "not_sender_constrained",
            TokenError::ReplayCheckUnavailable => "replay_check_unavailable",
        }
    }

    /// The kind of refusal, for the `reason` of metrics and the access line: `invalid_token`,
    /// `invalid_dpop_proof`, `use_dpop_nonce`, `sender_binding` (the token's binding is not met)
    /// or `replay_check_unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::DpopProof(_) => "invalid_dpop_proof",
            TokenError::DpopNonce => "use_dpop_nonce",
            TokenError::NotDpopBound
            | TokenError::DpopKeyMismatch
            | TokenError::DpopBoundAsBearer
            | TokenError::NoClientCertificate
            | TokenError::CertificateMismatch
            | TokenError::UnsupportedBinding
            | TokenError::NotSenderConstrained => "sender_binding",
            TokenError::ReplayCheckUnavailable => "replay_check_unavailable",
            _ => "invalid_token",
        }
    }

    /// The challenge's `error` code (RFC 6750 §3.1, RFC 9449 §7.1, §9); `None` for the 503 of
    /// an unavailable replay check, which is no challenge.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            TokenError::DpopProof(_) => Some("invalid_dpop_proof"),
            TokenError::DpopNonce => Some("use_dpop_nonce"),
            TokenError::ReplayCheckUnavailable => None,
            _ => Some("invalid_token"),
        }
    }
}

/// The token's confirmation claim (`cnf`, RFC 7800) as far as sender constraint goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cnf {
    /// `cnf.jkt`: RFC 7638 thumbprint of the DPoP key (RFC 9449 §6.1).
    pub jkt: Option<[u8; 32]>,
    /// `cnf.x5t#S256`: SHA-256 of the client certificate's DER (RFC 8705 §3.1).
    pub x5t_s256: Option<[u8; 32]>,
    /// A `cnf` this server cannot check: not an object, a `jkt` or `x5t#S256` that is not a
    /// base64url SHA-256, or only other confirmation methods (`jwk`, `kid`, …). Refused (fail
    /// closed) wherever sender constraint is checked.
    pub unsupported: bool,
}

impl Cnf {
    /// Reads `cnf`, the claim's value (if present).
    pub fn from_value(cnf: Option<Value>) -> Cnf {
        let digest = |v: &Value| -> Option<[u8; 32]> {
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.as_str()?.trim_end_matches('='))
                .ok()?;
            b.try_into().ok()
        };
        match cnf {
            None | Some(Value::Null) => Cnf::default(),
            Some(Value::Object(m)) => {
                let mut c = Cnf::default();
                if let Some(v) = m.get("jkt") {
                    c.jkt = digest(v);
                    c.unsupported |= c.jkt.is_none();
                }
                if let Some(v) = m.get("x5t#S256") {
                    c.x5t_s256 = digest(v);
                    c.unsupported |= c.x5t_s256.is_none();
                }
                c.unsupported |= !m.is_empty() && c.jkt.is_none() && c.x5t_s256.is_none();
                c
            }
            Some(_) => Cnf {
                unsupported: true,
                ..Cnf::default()
            },
        }
    }

    /// Whether the token is sender-constrained at all.
    pub fn is_bound(&self) -> bool {
        self.jkt.is_some() || self.x5t_s256.is_some() || self.unsupported
    }
}

/// The validated identity of a request: the claims the decision and header mapping use.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// Name of the configured issuer that accepted the token.
    pub issuer: Arc<str>,
    pub iss: String,
    /// Values of the issuer's `subject_claims` (default `sub`, then Entra's `oid`).
    pub subjects: Vec<String>,
    /// The issuer's `tenant_claim` (default `tid`).
    pub tid: Option<String>,
    /// The issuer's `session_claim` (default `sid`).
    pub sid: Option<String>,
    /// The first of the issuer's `token_id_claims` present (default `jti`, then Entra's `uti`).
    pub jti: Option<String>,
    pub iat: Option<i64>,
    pub exp: i64,
    pub auth_time: Option<i64>,
    pub acr: Option<String>,
    pub acrs: Vec<String>,
    /// `xms_cc` contains `cp1` (case-insensitive): the client understands claims challenges.
    pub cp1: bool,
    /// The token's `ipaddr` claim: the address it was issued to.
    pub ipaddr: TokenIp,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    /// The issuer's `device_claim` (default `deviceid`).
    pub device: Option<String>,
    /// The issuer's `email_claims` (default `email`, `upn`, `preferred_username`) holding an
    /// address, lower-cased.
    pub emails: Vec<String>,
    pub kid: Option<Arc<str>>,
    /// RFC 7638 thumbprint of the key that verified the token: a cached principal counts only
    /// while this very key is still published (not merely its `kid`).
    pub key_thumbprint: [u8; 32],
    pub alg: Option<Algorithm>,
    /// The sender-constraint binding (`cnf`), checked on every request, cached or not.
    pub cnf: Cnf,
    pub claims: Claims,
}

/// A token's `ipaddr` claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenIp {
    /// No `ipaddr` claim.
    #[default]
    Absent,
    Addr(IpAddr),
    /// An `ipaddr` claim that is not an address: refused wherever the address is checked.
    Unreadable,
}

/// A refused token, with the configured issuer its unverified `iss` names (if any): only ever a
/// choice among configured issuers, used to name the challenge's realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub error: TokenError,
    pub issuer: Option<Arc<str>>,
    /// The refusal answers with a `DPoP` challenge (RFC 9449 §7.1): the request used the `DPoP`
    /// scheme, or the token is DPoP-bound.
    pub dpop: bool,
}

impl From<TokenError> for Rejected {
    fn from(error: TokenError) -> Rejected {
        Rejected {
            error,
            issuer: None,
            dpop: false,
        }
    }
}

impl Principal {
    /// A claim by dotted path (`realm_access.roles`).
    pub fn claim(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.claims.map().get(parts.next()?)?;
        for p in parts {
            cur = cur.get(p)?;
        }
        Some(cur)
    }
}

/// One configured issuer with its keys, as used by a snapshot.
pub struct IssuerRt {
    pub cfg: config::Issuer,
    /// `cfg.name`, shared by the principals and refusals this issuer names.
    pub name: Arc<str>,
    pub keys: Arc<KeySet>,
    /// `issuer` split around `{tenantid}` for templates.
    template: Option<(String, String)>,
}

impl IssuerRt {
    pub fn new(cfg: config::Issuer, keys: Arc<KeySet>) -> IssuerRt {
        let template = cfg
            .issuer
            .split_once("{tenantid}")
            .map(|(a, b)| (a.to_string(), b.to_string()));
        IssuerRt {
            name: Arc::from(cfg.name.as_str()),
            cfg,
            keys,
            template,
        }
    }

    /// Whether a token `iss` belongs to this issuer.
    pub fn matches(&self, iss: &str) -> bool {
        match &self.template {
            None => crate::store::keys::same_issuer(iss, &self.cfg.issuer),
            Some((pre, post)) => iss
                .strip_prefix(pre.as_str())
                .and_then(|rest| rest.strip_suffix(post.as_str()))
                .is_some_and(|tenant| {
                    !tenant.is_empty()
                        && !tenant.contains('/')
                        && self.cfg.tenants.iter().any(|t| t == tenant || t == "*")
                }),
        }
    }

    /// `authorization_uri` for challenges: configured, else from discovery.
    pub fn authorization_uri(&self) -> Option<String> {
        self.cfg
            .authorization_uri
            .clone()
            .or_else(|| self.keys.keys().authorization_endpoint.clone())
    }
}

/// The issuers of one snapshot.
#[derive(Default)]
pub struct Issuers {
    pub list: Vec<Arc<IssuerRt>>,
}

impl Issuers {
    pub fn find(&self, iss: &str) -> Option<&Arc<IssuerRt>> {
        self.list.iter().find(|i| i.matches(iss))
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<IssuerRt>> {
        self.list.iter().find(|i| i.cfg.name == name)
    }
}

/// The `Authorization` scheme an access token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750.
    Bearer,
    /// RFC 9449 §7.1: the token with a `DPoP` proof header.
    Dpop,
}

/// Takes the bearer token from the request: exactly one `Authorization: Bearer …` header.
/// Returns `Ok(None)` when there is no bearer token at all: no `Authorization`, or another
/// scheme (`Basic …`, and `DPoP …`: see [`access_token`]), which RFC 6750 §3.1 answers with a
/// challenge without an error code.
pub fn bearer<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    max_bytes: usize,
) -> Result<Option<&'a str>, TokenError> {
    match access_token(headers, query, max_bytes)? {
        Some((Scheme::Bearer, t)) => Ok(Some(t)),
        _ => Ok(None),
    }
}

/// Takes the access token from the request: exactly one `Authorization` header with the
/// `Bearer` or the `DPoP` scheme (RFC 9449 §7.1), scheme names case-insensitive. `Ok(None)`:
/// no `Authorization`, or another scheme.
pub fn access_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    max_bytes: usize,
) -> Result<Option<(Scheme, &'a str)>, TokenError> {
    if query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("access_token"))
    }) {
        return Err(TokenError::TokenInQuery);
    }
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::MultipleAuthorization);
    }
    // One UTF-8 check, word-at-a-time for ASCII (a token is long; `HeaderValue::to_str` goes
    // byte by byte). A non-ASCII token is refused by the base64url check of its segments.
    let v = std::str::from_utf8(v.as_bytes())
        .map_err(|_| TokenError::Malformed("Authorization header is not UTF-8"))?;
    let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Ok(None);
    };
    let token = token.trim_matches(' ');
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    if token.is_empty() {
        return Err(TokenError::Malformed("empty token"));
    }
    Ok(Some((scheme, token)))
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("a segment is not base64url"))
}

/// A token taken apart but not yet trusted.
#[derive(Debug)]
pub struct Inspected<'a> {
    pub header: JoseHeader,
    /// The decoded payload (UTF-8, not yet read as JSON).
    pub payload: String,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

/// An inspected payload's members, with its unverified `iss` (used only to choose the issuer
/// configuration). A SET (an `events` claim) is refused here.
pub fn members(payload: &str) -> Result<(Members<'_>, Cow<'_, str>), TokenError> {
    let members = Members::parse(payload)?;
    if members.has("events") {
        return Err(TokenError::SecurityEventToken);
    }
    let iss = members.str("iss")?.ok_or(TokenError::MissingClaim("iss"))?;
    Ok((members, iss))
}

/// The media type of a SET (RFC 8417 §2.3), as [`typ_media_type`] normalises it.
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

/// A JOSE `typ` as the media type it names: parameters dropped, lowercased, and `application/`
/// prepended when it has no `/` (RFC 7515 §4.1.9). `Secevent+JWT; v=1` and
/// `application/secevent+jwt` both name a SET; `secevent+jwp` does not.
pub fn typ_media_type(typ: &str) -> String {
    let essence = typ
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence.contains('/') {
        essence
    } else {
        format!("application/{essence}")
    }
}

/// The members of a JWS header validation uses (RFC 7515 §4.1), read in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    pub alg: Algorithm,
    pub kid: Option<Arc<str>>,
}

/// A JWS header as read: every member it may name, borrowed where no escape forces a copy.
#[derive(serde::Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<std::borrow::Cow<'a, str>>,
    /// Present at all (even `null`).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| true)
}

/// The decoded header segment: a SET's `typ`, a critical extension, `none` or an HMAC
/// algorithm (this proxy holds no shared secrets: algorithm confusion) are refused; a member of
/// the wrong type or given twice makes the header malformed.
fn jose_header(json: &[u8]) -> Result<JoseHeader, TokenError> {
    // serde reads a struct from a JSON array too; a JWS header is an object (RFC 7515 §4).
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
                Ok(_) => TokenError::Malformed("header members are not a JWS header's"),
                Err(_) => TokenError::Malformed("header is not JSON"),
            },
        );
    }
    // JSON is UTF-8 throughout, and serde skips the members it ignores without checking theirs
    // (a fuzz finding); `from_str` also refuses anything after the object (another: a bare
    // `Deserializer` stops at the closing brace).
    let json =
        std::str::from_utf8(json).map_err(|_| TokenError::Malformed("header is not JSON"))?;
    let raw = serde_json::from_str::<RawHeader>(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            TokenError::Malformed("header members are not a JWS header's")
        }
        _ => TokenError::Malformed("header is not JSON"),
    })?;
    if raw
        .typ
        .as_deref()
        .is_some_and(|t| typ_media_type(t) == SET_MEDIA_TYPE)
    {
        return Err(TokenError::SecurityEventToken);
    }
    if raw.crit {
        // RFC 7515 §4.1.11: we understand no extension, so a critical one must be refused.
        return Err(TokenError::Malformed("unsupported critical header"));
    }
    let alg = match raw.alg.as_deref() {
        None => return Err(TokenError::Malformed("no alg")),
        Some(a) if a.eq_ignore_ascii_case("none") || a.starts_with("HS") => {
            return Err(TokenError::AlgorithmNotAllowed)
        }
        Some(a) => a
            .parse::<Algorithm>()
            .map_err(|_| TokenError::AlgorithmNotAllowed)?,
    };
    Ok(JoseHeader {
        alg,
        kid: raw.kid.map(Arc::from),
    })
}

/// Headers already read, by their encoded text: an issuer signs its tokens under one or a few
/// headers, so a header's base64 and JSON are read once per thread rather than once per token.
/// Equal text reads equal, and only headers of tokens whose signature verified are kept (at most
/// [`HeaderMemo::SLOTS`], of at most [`HeaderMemo::MAX_TEXT`] bytes each, replaced in turn).
#[derive(Default)]
struct HeaderMemo {
    slots: Vec<(Box<str>, JoseHeader)>,
    next: usize,
}

impl HeaderMemo {
    const SLOTS: usize = 8;
    const MAX_TEXT: usize = 512;

    fn get(&self, text: &str) -> Option<JoseHeader> {
        self.slots
            .iter()
            .find(|(t, _)| **t == *text)
            .map(|(_, h)| h.clone())
    }

    fn keep(&mut self, text: &str, header: &JoseHeader) {
        // Every verified token passes here, its header mostly read from this memo already.
        if text.len() > Self::MAX_TEXT || self.slots.iter().any(|(t, _)| **t == *text) {
            return;
        }
        let slot = (Box::from(text), header.clone());
        if self.slots.len() < Self::SLOTS {
            self.slots.push(slot);
        } else {
            self.slots[self.next] = slot;
            self.next = (self.next + 1) % Self::SLOTS;
        }
    }
}

thread_local! {
    static HEADERS: std::cell::RefCell<HeaderMemo> = std::cell::RefCell::default();
}

/// The header segment `h` (base64url) read as a JWS header, through the thread's memo.
fn header_segment(h: &str) -> Result<JoseHeader, TokenError> {
    match HEADERS.with_borrow(|m| m.get(h)) {
        Some(known) => Ok(known),
        None => jose_header(&b64(h)?),
    }
}

/// Keeps the header of a token whose signature verified: headers only an unauthenticated client
/// sent never displace an issuer's.
fn remember_header(signing_input: &str, header: &JoseHeader) {
    if let Some((h, _)) = signing_input.split_once('.') {
        HEADERS.with_borrow_mut(|m| m.keep(h, header));
    }
}

/// Structural checks and the unverified claims, before any key is looked at.
pub fn inspect(token: &str) -> Result<Inspected<'_>, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("a JWT has exactly three segments"));
    };
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    let header = header_segment(h)?;
    if s.is_empty() {
        return Err(TokenError::Malformed("empty segment"));
    }
    let payload = String::from_utf8(b64(p)?)
        .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
    let signature = b64(s)?;
    Ok(Inspected {
        header,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Validates a token against the snapshot's issuers. `now` is epoch seconds. The only network
/// call possible is the bounded unknown-`kid` refetch of the issuer's key set. Order: structure,
/// issuer, algorithm allow-list, key (by `kid`) and its type, signature, then the claims.
/// `signed`: the SHA-256 of this very token's signing input, when the caller already hashed it
/// ([`crate::auth::cache::hash`]); used for RS256, PS256 and ES256.
pub async fn validate(
    token: &str,
    issuers: &Issuers,
    now: i64,
    signed: Option<SigningInputHash<'_>>,
) -> Result<Principal, Rejected> {
    let Inspected {
        header,
        payload,
        signing_input,
        signature,
    } = inspect(token)?;
    let mut principal = {
        let (claims, iss) = members(&payload)?;
        let issuer = issuers.find(&iss).ok_or(TokenError::UnknownIssuer)?;
        let named = |error| Rejected {
            error,
            issuer: Some(issuer.name.clone()),
            dpop: false,
        };
        let input = Signed {
            text: signing_input,
            sha256: signed,
        };
        let verified = verify(issuer, &header, &claims, input, &signature, now)
            .await
            .map_err(named)?;
        remember_header(signing_input, &header);
        principal(issuer, iss.into_owned(), header, &verified, &claims).map_err(named)?
    };
    principal.claims = Claims::new(payload);
    Ok(principal)
}

/// What [`verify`] established: the key that verified the signature, and the token's times.
struct Verified {
    key: Arc<VerifyKey>,
    exp: i64,
    iat: Option<i64>,
}

/// The JWS signing input, and its SHA-256 when the caller already hashed it.
struct Signed<'a> {
    text: &'a str,
    sha256: Option<SigningInputHash<'a>>,
}

/// Validation once the issuer is known: everything after the structure.
async fn verify(
    issuer: &IssuerRt,
    header: &JoseHeader,
    claims: &Members<'_>,
    signing_input: Signed<'_>,
    signature: &[u8],
    now: i64,
) -> Result<Verified, TokenError> {
    let cfg = &issuer.cfg;
    if !cfg.algorithms.contains(&header.alg) {
        return Err(TokenError::AlgorithmNotAllowed);
    }
    if !issuer.keys.is_loaded() {
        return Err(TokenError::KeysUnavailable);
    }
    let key = issuer
        .keys
        .get_or_refetch(header.kid.as_deref())
        .await
        .ok_or(TokenError::UnknownKey)?;
    if !key.family.fits(header.alg) || key.alg.is_some_and(|a| a != header.alg) {
        return Err(TokenError::KeyMismatch);
    }
    let good = match signing_input.sha256 {
        Some(h)
            if h.covers(signing_input.text)
                && matches!(
                    header.alg,
                    Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
                ) =>
        {
            key.verify_digest(header.alg, h.digest(), signature)
        }
        _ => key.verify(header.alg, signing_input.text.as_bytes(), signature),
    };
    if !good {
        return Err(TokenError::BadSignature);
    }
    let leeway = cfg.leeway.as_secs() as i64;
    let exp = claims.int("exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    let aud_ok = match claims.strings("aud") {
        None if !claims.has("aud") => return Err(TokenError::MissingClaim("aud")),
        None => false,
        Some(aud) => cfg.audiences.iter().any(|x| aud.holds(x)),
    };
    if !aud_ok {
        return Err(TokenError::WrongAudience);
    }
    // Claims are attacker-sized integers: saturating arithmetic, never a wrap or a panic.
    if exp.saturating_add(leeway) < now {
        return Err(TokenError::Expired);
    }
    let latest = now.saturating_add(leeway);
    let nbf = claims.int("nbf")?;
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(TokenError::NotYetValid);
    }
    let iat = claims.int("iat")?;
    if iat.is_some_and(|iat| iat > latest) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = cfg.max_lifetime {
        let start = iat.or(nbf).ok_or(TokenError::MissingClaim("iat"))?;
        // Both ends come from the issuer's clock: skew does not apply, so no leeway. An
        // overflowing difference is longer than any maximum.
        let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
        if exp.checked_sub(start).is_none_or(|lifetime| lifetime > max) {
            return Err(TokenError::LifetimeTooLong);
        }
    }
    Ok(Verified { key, exp, iat })
}

/// The principal of a verified token (its `claims` map left for the caller to fill).
fn principal(
    issuer: &IssuerRt,
    iss: String,
    header: JoseHeader,
    verified: &Verified,
    claims: &Members<'_>,
) -> Result<Principal, TokenError> {
    let s = |name: &str| Ok::<_, TokenError>(claims.str(name)?.map(Cow::into_owned));
    let list = |name: &str| claims.strings(name).map_or_else(Vec::new, |l| l.words());
    let map = &issuer.cfg.claim_map;
    let mut emails = Vec::new();
    for c in &map.email {
        if let Some(e) = claims.str(c)?.filter(|e| e.contains('@')) {
            emails.push(e.to_lowercase());
        }
    }
    let mut subjects = Vec::new();
    for c in &map.subject {
        subjects.extend(s(c)?);
    }
    subjects.dedup();
    let mut jti = None;
    for c in &map.token_id {
        if let Some(id) = s(c)? {
            jti = Some(id);
            break;
        }
    }
    Ok(Principal {
        issuer: issuer.name.clone(),
        subjects,
        tid: s(&map.tenant)?,
        sid: s(&map.session)?,
        jti,
        iat: verified.iat,
        exp: verified.exp,
        auth_time: claims.number("auth_time")?.and_then(|n| n.as_i64()),
        acr: s("acr")?,
        acrs: list("acrs"),
        cp1: claims.strings("xms_cc").is_some_and(|l| match l {
            StrOrList::One(v) => v.split(' ').any(|c| c.eq_ignore_ascii_case("cp1")),
            StrOrList::Many(a) => a.iter().any(|c| c.eq_ignore_ascii_case("cp1")),
        }),
        ipaddr: match claims.get("ipaddr") {
            None | Some("null") => TokenIp::Absent,
            Some(raw) => claims::text(raw)
                .and_then(|a| a.trim().parse().ok())
                .map_or(TokenIp::Unreadable, TokenIp::Addr),
        },
        scopes: list("scp"),
        roles: list("roles"),
        device: s(&map.device)?,
        emails,
        kid: header.kid,
        key_thumbprint: verified.key.thumbprint,
        alg: Some(header.alg),
        // A `cnf` that cannot be read is one this server cannot check: refused where it matters.
        cnf: claims.value("cnf").map_or(
            Cnf {
                unsupported: true,
                ..Cnf::default()
            },
            Cnf::from_value,
        ),
        iss,
        claims: Claims::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn enc_raw(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn header_memo_keeps_verified_headers_only() {
        let good = enc(&serde_json::json!({"alg": "RS256", "kid": "k"}));
        let bad = enc(&serde_json::json!({"alg": "none", "kid": "k"}));
        let want = JoseHeader {
            alg: Algorithm::RS256,
            kid: Some("k".into()),
        };
        // Reading a header keeps nothing; a verified token's header is kept.
        assert_eq!(header_segment(&good), Ok(want.clone()));
        HEADERS.with_borrow(|m| assert!(m.get(&good).is_none()));
        remember_header(&format!("{good}.cGF5bG9hZA"), &want);
        for _ in 0..2 {
            assert_eq!(header_segment(&good), Ok(want.clone()));
            assert_eq!(header_segment(&bad), Err(TokenError::AlgorithmNotAllowed));
        }
        HEADERS.with_borrow(|m| {
            assert_eq!(m.get(&good), Some(want.clone()));
            assert!(m.get(&bad).is_none());
        });
        for i in 0..3 * HeaderMemo::SLOTS {
            let h = enc(&serde_json::json!({"alg": "ES256", "kid": format!("k{i}")}));
            let read = header_segment(&h).unwrap();
            assert_eq!(read.kid.as_deref(), Some(format!("k{i}").as_str()));
            remember_header(&format!("{h}.cGF5bG9hZA"), &read);
            assert_eq!(header_segment(&h).unwrap(), read);
        }
        HEADERS.with_borrow(|m| assert_eq!(m.slots.len(), HeaderMemo::SLOTS));
    }

    #[test]
    fn bearer_extraction_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h, None, 100), Ok(None));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h, None, 100), Ok(None));
        h.insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(
            bearer(&h, None, 100),
            Err(TokenError::Malformed("empty token"))
        );
        h.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h, None, 100), Ok(Some("abc")));
        assert_eq!(bearer(&h, None, 2), Err(TokenError::TooLarge));
        assert_eq!(
            bearer(&h, Some("a=1&access_token=x"), 100),
            Err(TokenError::TokenInQuery)
        );
        h.append("authorization", "Bearer def".parse().unwrap());
        assert_eq!(
            bearer(&h, None, 100),
            Err(TokenError::MultipleAuthorization)
        );
    }

    #[test]
    fn inspect_refuses_structural_attacks() {
        let claims = enc(&serde_json::json!({"iss": "https://i", "sub": "a"}));
        let t = |h: Value| format!("{}.{}.c2ln", enc(&h), claims);
        assert_eq!(
            inspect(&t(serde_json::json!({"alg": "none"}))).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        assert_eq!(
            inspect(&t(serde_json::json!({"alg": "HS256"}))).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        assert_eq!(
            inspect(&t(
                serde_json::json!({"alg": "RS256", "typ": "secevent+jwt"})
            ))
            .unwrap_err(),
            TokenError::SecurityEventToken
        );
        assert_eq!(
            inspect(&t(serde_json::json!({"alg": "XX1"}))).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        for typ in [
            "secevent+jwt",
            "Application/SecEvent+JWT",
            "SECEVENT+JWT; charset=utf-8",
            " application/secevent+jwt ;v=1",
        ] {
            assert_eq!(
                inspect(&t(serde_json::json!({"alg": "RS256", "typ": typ}))).unwrap_err(),
                TokenError::SecurityEventToken,
                "{typ}"
            );
        }
        for typ in ["secevent+jwp", "at+jwt", "JWT", "text/secevent+jwt"] {
            assert!(
                inspect(&t(serde_json::json!({"alg": "RS256", "typ": typ}))).is_ok(),
                "{typ}"
            );
        }
        // A critical extension even as `null`, a member of the wrong type, a member twice.
        let raw = |h: &str| format!("{}.{}.c2ln", enc_raw(h), claims);
        for (h, e) in [
            (
                r#"{"alg":"RS256","crit":null}"#,
                "unsupported critical header",
            ),
            (
                r#"{"alg":"RS256","kid":7}"#,
                "header members are not a JWS header's",
            ),
            (r#"{"alg":256}"#, "header members are not a JWS header's"),
            (
                r#"{"alg":"RS256","alg":"none"}"#,
                "header members are not a JWS header's",
            ),
            (r#"["RS256"]"#, "header members are not a JWS header's"),
            (r#"{"alg":"RS256""#, "header is not JSON"),
            (r#"{"alg":"RS256"}trailing"#, "header is not JSON"),
        ] {
            assert_eq!(
                inspect(&raw(h)).unwrap_err(),
                TokenError::Malformed(e),
                "{h}"
            );
        }
        // Invalid UTF-8 in a member validation ignores is still not JSON.
        assert_eq!(
            jose_header(b"{\"alg\":\"RS256\",\"jku\":\"https://e/\xff\"}").unwrap_err(),
            TokenError::Malformed("header is not JSON")
        );
        let escaped = raw(r#"{"alg":"RS\u0032\u00356","kid":"k\u0031"}"#);
        let escaped = inspect(&escaped).unwrap();
        assert_eq!(
            escaped.header,
            JoseHeader {
                alg: Algorithm::RS256,
                kid: Some("k1".into())
            }
        );
        assert!(matches!(inspect("a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(inspect("a.b.c.d"), Err(TokenError::Malformed(_))));
        let set = format!(
            "{}.{}.c2ln",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&serde_json::json!({"iss": "x", "events": {}}))
        );
        let set = inspect(&set).unwrap();
        assert_eq!(
            members(&set.payload).err(),
            Some(TokenError::SecurityEventToken)
        );
        let Inspected {
            header: h, payload, ..
        } = inspect(&t(serde_json::json!({"alg": "RS256", "kid": "k"}))).unwrap();
        assert_eq!(
            (h.alg, h.kid.as_deref(), members(&payload).unwrap().1),
            (Algorithm::RS256, Some("k"), Cow::Borrowed("https://i"))
        );
        let lone = enc_raw(r#"{"iss":"\ud800"}"#);
        let lone = format!("{}.{lone}.c2ln", enc(&serde_json::json!({"alg": "RS256"})));
        assert_eq!(
            members(&inspect(&lone).unwrap().payload).err(),
            Some(TokenError::Malformed("a claim's value cannot be read"))
        );
        let no_iss = enc(&serde_json::json!({"sub": "a"}));
        let no_iss = format!(
            "{}.{no_iss}.c2ln",
            enc(&serde_json::json!({"alg": "RS256"}))
        );
        let no_iss = inspect(&no_iss).unwrap();
        assert_eq!(
            members(&no_iss.payload).err(),
            Some(TokenError::MissingClaim("iss"))
        );
    }
}
