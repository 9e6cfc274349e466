//! DPoP proofs (RFC 9449): the `DPoP` header, the proof's structure, key and signature (§4.2,
//! §4.3 checks 1–7), its claims against the request (§4.3 checks 8–12: `htm`, `htu` after
//! RFC 3986 §6 normalisation, `iat` window, `ath`), and the nonces this proxy issues (§9).
//! Pure: the clock is a parameter; the `jti` replay check and the token binding live in
//! `auth::sender`.

use aws_lc_rs::signature::{self as lc, ParsedPublicKey};
use base64::Engine;
use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

use super::keys::PublicJwk;
use super::token::typ_media_type;
use crate::config::DpopAlg;

/// The proof header (RFC 9449 §4.1).
pub static DPOP: HeaderName = HeaderName::from_static("dpop");
/// The nonce header (RFC 9449 §8.1, §9).
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// Largest proof accepted: an RSA-4096 `jwk` and the claims fit in well under this.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted (RFC 9449 §4.2 asks for 96 bits of randomness; UUIDs are 36).
const MAX_JTI: usize = 256;
/// Smallest RSA modulus of a proof key (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

/// Why a proof was refused, one variant per RFC 9449 §4.3 check. Descriptions are printable
/// ASCII without `"` or `\` (they go into `error_description`) and carry no proof material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the DPoP proof header is missing")]
    Missing,
    #[error("more than one DPoP proof header")]
    Multiple,
    #[error("the DPoP proof is larger than allowed")]
    TooLarge,
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    #[error("the DPoP proof typ is not dpop+jwt")]
    Typ,
    #[error("the DPoP proof algorithm is not allowed")]
    Algorithm,
    #[error("the DPoP proof jwk is missing or not a public key of its algorithm")]
    Key,
    #[error("the DPoP proof jwk contains a private key")]
    PrivateKey,
    #[error("the DPoP proof signature is invalid")]
    Signature,
    #[error("the DPoP proof lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("the DPoP proof htm does not match the request method")]
    Method,
    #[error("the DPoP proof htu does not match the request URI")]
    Uri,
    #[error("the DPoP proof iat is outside the accepted window")]
    IssuedAt,
    #[error("the DPoP proof ath does not match the access token")]
    AccessTokenHash,
    #[error("the DPoP proof was used before")]
    Replayed,
}

impl ProofError {
    /// Stable label for metrics and the access log.
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::Missing => "dpop_missing",
            ProofError::Multiple => "dpop_multiple",
            ProofError::TooLarge => "dpop_too_large",
            ProofError::Malformed(_) => "dpop_malformed",
            ProofError::Typ => "dpop_typ",
            ProofError::Algorithm => "dpop_algorithm",
            ProofError::Key => "dpop_key",
            ProofError::PrivateKey => "dpop_private_key",
            ProofError::Signature => "dpop_signature",
            ProofError::MissingClaim(_) => "dpop_missing_claim",
            ProofError::Method => "dpop_htm",
            ProofError::Uri => "dpop_htu",
            ProofError::IssuedAt => "dpop_iat",
            ProofError::AccessTokenHash => "dpop_ath",
            ProofError::Replayed => "dpop_replayed",
        }
    }
}

/// The one `DPoP` header of a request (RFC 9449 §4.3 check 1), ASCII and bounded.
pub fn proof_header(headers: &HeaderMap) -> Result<&str, ProofError> {
    let mut values = headers.get_all(&DPOP).iter();
    let v = values.next().ok_or(ProofError::Missing)?;
    if values.next().is_some() {
        return Err(ProofError::Multiple);
    }
    if v.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    std::str::from_utf8(v.as_bytes())
        .ok()
        .filter(|s| s.is_ascii())
        .map(|s| s.trim_matches(' '))
        .ok_or(ProofError::Malformed("not ASCII"))
}

/// A proof whose structure, key and signature are verified (checks 2–7), with its claims.
pub struct Proof {
    pub alg: DpopAlg,
    /// RFC 7638 thumbprint of the proof's `jwk`: what `cnf.jkt` must equal (RFC 9449 §6.1).
    pub jkt: [u8; 32],
    pub jti: String,
    pub htm: String,
    pub htu: String,
    pub iat: i64,
    pub ath: Option<String>,
    pub nonce: Option<String>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("alg", &self.alg)
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field("iat", &self.iat)
            .finish_non_exhaustive()
    }
}

fn b64(part: &str) -> Result<Vec<u8>, ProofError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ProofError::Malformed("a segment is not base64url"))
}

/// The aws-lc-rs verification algorithm of a proof `alg` (JWS ECDSA signatures are fixed r‖s).
fn lc_alg(alg: DpopAlg) -> &'static dyn lc::VerificationAlgorithm {
    match alg {
        DpopAlg::ES256 => &lc::ECDSA_P256_SHA256_FIXED,
        DpopAlg::ES384 => &lc::ECDSA_P384_SHA384_FIXED,
        DpopAlg::PS256 => &lc::RSA_PSS_2048_8192_SHA256,
        DpopAlg::PS384 => &lc::RSA_PSS_2048_8192_SHA384,
        DpopAlg::PS512 => &lc::RSA_PSS_2048_8192_SHA512,
        DpopAlg::RS256 => &lc::RSA_PKCS1_2048_8192_SHA256,
        DpopAlg::RS384 => &lc::RSA_PKCS1_2048_8192_SHA384,
        DpopAlg::RS512 => &lc::RSA_PKCS1_2048_8192_SHA512,
        DpopAlg::EdDSA | DpopAlg::Ed25519 => &lc::ED25519,
    }
}

/// JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4;
/// RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The proof's `jwk` as a public key of the type `alg` needs (checks 5 and 7).
fn public_key(jwk: &Map<String, Value>, alg: DpopAlg) -> Result<PublicJwk<'_>, ProofError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let s = |name: &str| jwk.get(name).and_then(Value::as_str).ok_or(ProofError::Key);
    let key = match s("kty")? {
        "RSA" => PublicJwk::Rsa {
            n: s("n")?,
            e: s("e")?,
        },
        "EC" => PublicJwk::Ec {
            crv: s("crv")?,
            x: s("x")?,
            y: s("y")?,
        },
        "OKP" => PublicJwk::Okp {
            crv: s("crv")?,
            x: s("x")?,
        },
        _ => return Err(ProofError::Key),
    };
    let fits = match (alg, key) {
        (DpopAlg::ES256, PublicJwk::Ec { crv, .. }) => crv == "P-256",
        (DpopAlg::ES384, PublicJwk::Ec { crv, .. }) => crv == "P-384",
        (
            DpopAlg::PS256
            | DpopAlg::PS384
            | DpopAlg::PS512
            | DpopAlg::RS256
            | DpopAlg::RS384
            | DpopAlg::RS512,
            PublicJwk::Rsa { n, .. },
        ) => {
            let n = b64(n.trim_end_matches('='))?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8);
            bits >= MIN_RSA_BITS
        }
        (DpopAlg::EdDSA | DpopAlg::Ed25519, PublicJwk::Okp { crv, .. }) => crv == "Ed25519",
        _ => false,
    };
    if fits {
        Ok(key)
    } else {
        Err(ProofError::Key)
    }
}

/// Checks 2–7 of RFC 9449 §4.3: one well-formed JWS with `typ` `dpop+jwt`, an `alg` of `algs`
/// (never `none` or a MAC), a public `jwk` of that algorithm and no private members, a valid
/// signature by it, and the required claims (`jti`, `htm`, `htu`, `iat`) of the right types.
pub fn verify(proof: &str, algs: &[DpopAlg]) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed("a JWT has exactly three segments"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(ProofError::Malformed("empty segment"));
    }
    let header: Map<String, Value> = serde_json::from_slice(&b64(h)?)
        .map_err(|_| ProofError::Malformed("header is not a JSON object"))?;
    match header.get("typ").and_then(Value::as_str) {
        Some(t) if typ_media_type(t) == "application/dpop+jwt" => {}
        _ => return Err(ProofError::Typ),
    }
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: no extension is understood here, so a critical one is refused.
        return Err(ProofError::Malformed("unsupported critical header"));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(DpopAlg::parse)
        .filter(|a| algs.contains(a))
        .ok_or(ProofError::Algorithm)?;
    let jwk = match header.get("jwk") {
        Some(Value::Object(j)) => j,
        _ => return Err(ProofError::Key),
    };
    let public = public_key(jwk, alg)?;
    let bytes = public.public_bytes().ok_or(ProofError::Key)?;
    let key = ParsedPublicKey::new(lc_alg(alg), &bytes).map_err(|_| ProofError::Key)?;
    let signing_input = &proof[..h.len() + 1 + p.len()];
    if key.verify_sig(signing_input.as_bytes(), &b64(s)?).is_err() {
        return Err(ProofError::Signature);
    }
    let mut claims: Map<String, Value> = serde_json::from_slice(&b64(p)?)
        .map_err(|_| ProofError::Malformed("payload is not a JSON object"))?;
    let mut text = |name: &'static str| match claims.remove(name) {
        Some(Value::String(v)) if !v.is_empty() => Ok(Some(v)),
        None => Ok(None),
        Some(_) => Err(ProofError::Malformed("a claim has the wrong type")),
    };
    let jti = text("jti")?.ok_or(ProofError::MissingClaim("jti"))?;
    if jti.len() > MAX_JTI {
        return Err(ProofError::Malformed("jti is too long"));
    }
    let htm = text("htm")?.ok_or(ProofError::MissingClaim("htm"))?;
    let htu = text("htu")?.ok_or(ProofError::MissingClaim("htu"))?;
    let ath = text("ath")?;
    let nonce = text("nonce")?;
    let iat = match claims.get("iat") {
        None => return Err(ProofError::MissingClaim("iat")),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or(ProofError::Malformed("iat is not a number"))?,
    };
    Ok(Proof {
        alg,
        jkt: public.thumbprint(),
        jti,
        htm,
        htu,
        iat,
        ath,
        nonce,
    })
}

/// What a proof is checked against (RFC 9449 §4.3 checks 8–12).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request's URI, normalised by [`normalize_htu`].
    pub htu: &'a str,
    pub access_token: &'a str,
    pub now: i64,
    /// Largest distance of `iat` from `now`, seconds.
    pub window: i64,
}

impl Proof {
    /// `htm` (case-sensitive, RFC 9110 §9.1), `htu` after normalisation (query and fragment
    /// ignored), `iat` within the window either way, and `ath` = base64url(SHA-256(token)).
    pub fn check(&self, req: &Request<'_>) -> Result<(), ProofError> {
        if self.htm != req.method {
            return Err(ProofError::Method);
        }
        if normalize_htu(&self.htu).as_deref() != Some(req.htu) {
            return Err(ProofError::Uri);
        }
        if self.iat.abs_diff(req.now) > req.window.unsigned_abs() {
            return Err(ProofError::IssuedAt);
        }
        let ath = self.ath.as_deref().ok_or(ProofError::MissingClaim("ath"))?;
        if ath.len() != 43 || ath != access_token_hash(req.access_token) {
            return Err(ProofError::AccessTokenHash);
        }
        Ok(())
    }
}

/// `ath`: base64url (no padding) of the SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// An `http(s)` URI without query and fragment, normalised as RFC 9449 §4.3 asks (RFC 3986
/// §6.2.2 syntax-based and §6.2.3 scheme-based): scheme and host lower-cased, the default port
/// dropped, an empty path as `/`, dot segments removed, percent-encodings of unreserved
/// characters decoded and the others upper-cased, a `%` that starts no escape written `%25`.
/// `None` for anything else.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return None;
    }
    let host = u.host_str()?;
    let mut out = String::with_capacity(uri.len());
    out.push_str(u.scheme());
    out.push_str("://");
    out.push_str(host);
    if let Some(port) = u.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    let path = u.path().as_bytes();
    let mut i = 0;
    while i < path.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (path[i], path.get(i + 1).copied(), path.get(i + 2).copied()) {
            (b'%', Some(a), Some(b)) if hex(a).is_some() && hex(b).is_some() => {
                let byte = (hex(a).unwrap_or(0) * 16 + hex(b).unwrap_or(0)) as u8;
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(byte as char);
                } else {
                    out.push('%');
                    out.push(a.to_ascii_uppercase() as char);
                    out.push(b.to_ascii_uppercase() as char);
                }
                i += 3;
            }
            // A `%` that starts no escape is a literal percent sign: written as `%25`, so that
            // decoding the escapes after it cannot make it start one (`%a%32` is `%25a2`).
            (b'%', _, _) => {
                out.push_str("%25");
                i += 1;
            }
            (c, _, _) => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The request URI as a proof's `htu` names it, normalised: `scheme://host` + path.
pub fn request_htu(scheme: &str, host: Option<&str>, path: &str) -> Option<String> {
    let host = host?;
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return None;
    }
    normalize_htu(&format!("{scheme}://{host}{path}"))
}

/// The key of the nonces this proxy issues (RFC 9449 §9): stateless, so that every replica
/// sharing the key accepts them. A nonce names its rotation period and is valid in that period
/// and the next one.
pub struct NonceKey(aws_lc_rs::hmac::Key);

/// How a presented nonce stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued in the current period.
    Current,
    /// Issued in the previous period: still accepted; a fresh one goes with the answer.
    Previous,
    /// Absent, older, forged or from another key.
    Invalid,
}

const NONCE_LABEL: &[u8] = b"cae-proxy dpop nonce v1";

impl NonceKey {
    /// A key derived from a configured secret (`server.dpop_nonce_secret`).
    pub fn new(secret: &[u8]) -> NonceKey {
        NonceKey(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            secret,
        ))
    }

    /// A random key for this process.
    pub fn random() -> NonceKey {
        NonceKey::new(&rand::random::<[u8; 32]>())
    }

    fn tag(&self, rotation: u64, period: u64) -> [u8; 16] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(NONCE_LABEL);
        ctx.update(&rotation.to_be_bytes());
        ctx.update(&period.to_be_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&ctx.sign().as_ref()[..16]);
        out
    }

    fn period(rotation: u64, now: i64) -> u64 {
        u64::try_from(now).unwrap_or(0) / rotation.max(1)
    }

    /// The nonce of the period `now` falls in: base64url(period ‖ HMAC tag), 32 characters.
    pub fn issue(&self, rotation: u64, now: i64) -> String {
        let period = NonceKey::period(rotation, now);
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&period.to_be_bytes());
        raw[8..].copy_from_slice(&self.tag(rotation, period));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued by this key in the current or the previous period.
    pub fn check(&self, nonce: Option<&str>, rotation: u64, now: i64) -> NonceState {
        let Some(raw) = nonce.and_then(|n| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n)
                .ok()
                .filter(|r| r.len() == 24)
        }) else {
            return NonceState::Invalid;
        };
        let mut p = [0u8; 8];
        p.copy_from_slice(&raw[..8]);
        let period = u64::from_be_bytes(p);
        let current = NonceKey::period(rotation, now);
        let state = if period == current {
            NonceState::Current
        } else if period.checked_add(1) == Some(current) {
            NonceState::Previous
        } else {
            return NonceState::Invalid;
        };
        let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
            &raw[8..],
            &self.tag(rotation, period),
        )
        .is_ok();
        if ok {
            state
        } else {
            NonceState::Invalid
        }
    }
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalisation() {
        let n = |s: &str| normalize_htu(s);
        let want = Some("https://api.example.com/a/b".to_string());
        for same in [
            "https://api.example.com/a/b",
            "HTTPS://API.Example.COM/a/b",
            "https://api.example.com:443/a/b",
            "https://api.example.com/a/./b",
            "https://api.example.com/a/x/../b",
            "https://api.example.com/a/b?q=1",
            "https://api.example.com/a/b#frag",
            "https://api.example.com/%61/b",
        ] {
            assert_eq!(n(same), want, "{same}");
        }
        assert_eq!(n("http://h:80"), Some("http://h/".into()));
        assert_eq!(n("http://h:8080/x"), Some("http://h:8080/x".into()));
        assert_eq!(n("https://h/a%2fb"), Some("https://h/a%2Fb".into()));
        assert_eq!(
            n("https://h/A/b"),
            Some("https://h/A/b".into()),
            "paths keep case"
        );
        assert_eq!(n("https://h/%7euser"), Some("https://h/~user".into()));
        // A stray `%` is a literal one; decoding after it cannot create an escape.
        assert_eq!(n("https://h/%a%32e"), Some("https://h/%25a2e".into()));
        assert_eq!(n("https://h/%25a2e"), Some("https://h/%25a2e".into()));
        assert_ne!(n("https://h/a/b"), n("https://h/a/b/"));
        assert_eq!(n("ftp://h/x"), None);
        assert_eq!(n("https://u:p@h/x"), None);
        assert_eq!(n("/relative"), None);
        assert_eq!(
            request_htu("https", Some("API.example.com:443"), "/a/../b"),
            Some("https://api.example.com/b".into())
        );
        assert_eq!(request_htu("https", Some("evil/x"), "/b"), None);
        assert_eq!(request_htu("https", None, "/b"), None);
    }

    #[test]
    fn nonces_rotate_and_cannot_be_forged() {
        let k = NonceKey::new(b"secret");
        let n = k.issue(60, 1_000_000);
        assert_eq!(n.len(), 32);
        assert_eq!(k.check(Some(&n), 60, 1_000_000), NonceState::Current);
        assert_eq!(k.check(Some(&n), 60, 1_000_060), NonceState::Previous);
        assert_eq!(k.check(Some(&n), 60, 1_000_120), NonceState::Invalid);
        assert_eq!(k.check(Some(&n), 30, 1_000_000), NonceState::Invalid);
        assert_eq!(
            NonceKey::new(b"other").check(Some(&n), 60, 1_000_000),
            NonceState::Invalid
        );
        assert_eq!(k.check(None, 60, 1_000_000), NonceState::Invalid);
        assert_eq!(k.check(Some("garbage"), 60, 1_000_000), NonceState::Invalid);
    }

    #[test]
    fn structure_is_checked_before_the_key() {
        let enc =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims =
            enc(&serde_json::json!({"jti": "j", "htm": "GET", "htu": "https://h/", "iat": 1}));
        let t = |h: Value| format!("{}.{}.c2ln", enc(&h), claims);
        let all = DpopAlg::ALL;
        assert_eq!(
            verify(&t(serde_json::json!({"alg": "ES256"})), &all).unwrap_err(),
            ProofError::Typ
        );
        assert_eq!(
            verify(&t(serde_json::json!({"typ": "JWT", "alg": "ES256"})), &all).unwrap_err(),
            ProofError::Typ
        );
        for alg in ["none", "HS256", "es256", "XX"] {
            assert_eq!(
                verify(&t(serde_json::json!({"typ": "dpop+jwt", "alg": alg})), &all).unwrap_err(),
                ProofError::Algorithm,
                "{alg}"
            );
        }
        assert_eq!(
            verify(
                &t(serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"})),
                &[DpopAlg::PS256]
            )
            .unwrap_err(),
            ProofError::Algorithm
        );
        assert_eq!(
            verify(
                &t(serde_json::json!({"typ": "dpop+jwt", "alg": "ES256"})),
                &all
            )
            .unwrap_err(),
            ProofError::Key
        );
        let private = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}});
        assert_eq!(
            verify(&t(private), &all).unwrap_err(),
            ProofError::PrivateKey
        );
        let wrong_curve = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}});
        assert_eq!(verify(&t(wrong_curve), &all).unwrap_err(), ProofError::Key);
        assert!(matches!(verify("a.b", &all), Err(ProofError::Malformed(_))));
        assert!(matches!(
            verify("a.b.c.d", &all),
            Err(ProofError::Malformed(_))
        ));
        assert_eq!(
            verify(&"a".repeat(MAX_PROOF_BYTES + 1), &all).unwrap_err(),
            ProofError::TooLarge
        );
    }
}
