//! Sender-constrained tokens on one request: which policy applies (a route's setting, else the
//! token issuer's, else the default), the client certificate (the TLS connection's, or a trusted
//! proxy's `Client-Cert` (RFC 9440) / `X-Forwarded-Client-Cert` header), and the check of a
//! validated token's binding (`cnf`): a fresh DPoP proof for `cnf.jkt` (RFC 9449 §4.3, §7) or
//! the client certificate for `cnf.x5t#S256` (RFC 8705 §3). It runs on every request: the
//! verified-token cache only ever skips the token's signature.

use std::time::Duration;

use base64::Engine;

use super::dpop::{self, NonceKey, NonceState};
use super::inbound::Inbound;
use super::replay::{proof_id, ReplayCache, Seen};
use super::token::{Principal, Scheme, TokenError};
use crate::config::{ClientCertHeader, DpopAlg, SenderConstraint, SenderPolicy, Server};

/// `dpop_proof_window` when neither the route nor the issuer sets it.
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(60);
/// `dpop_nonce_rotation` when neither the route nor the issuer sets it.
pub const DEFAULT_NONCE_ROTATION: Duration = Duration::from_secs(300);
/// Largest client certificate header read.
const MAX_CERT_HEADER: usize = 16 * 1024;

/// The policy in force for one request: each key from the route, else from the token's issuer,
/// else its default.
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub constraint: SenderConstraint,
    pub algs: &'a [DpopAlg],
    /// Largest distance of a proof's `iat` from now, seconds.
    pub window: i64,
    pub nonce: bool,
    /// Nonce rotation period, seconds.
    pub rotation: u64,
}

impl<'a> Effective<'a> {
    /// `issuer`: the settings of the token's issuer (or of the issuer a challenge names).
    pub fn of(route: &'a SenderPolicy, issuer: Option<&'a SenderPolicy>) -> Effective<'a> {
        let pick = |f: fn(&SenderPolicy) -> bool| {
            if f(route) {
                Some(route)
            } else {
                issuer.filter(|i| f(i))
            }
        };
        Effective {
            constraint: route
                .constraint
                .or(issuer.and_then(|i| i.constraint))
                .unwrap_or_default(),
            algs: pick(|p| p.dpop_algorithms.is_some())
                .and_then(|p| p.dpop_algorithms.as_deref())
                .unwrap_or(&DpopAlg::DEFAULT),
            window: route
                .proof_window
                .or(issuer.and_then(|i| i.proof_window))
                .unwrap_or(DEFAULT_PROOF_WINDOW)
                .as_secs() as i64,
            nonce: route
                .nonce
                .or(issuer.and_then(|i| i.nonce))
                .unwrap_or(false),
            rotation: route
                .nonce_rotation
                .or(issuer.and_then(|i| i.nonce_rotation))
                .unwrap_or(DEFAULT_NONCE_ROTATION)
                .as_secs(),
        }
    }

    /// The challenge's `algs` (RFC 9449 §7.1): the accepted algorithms, space-separated.
    pub fn algs_param(&self) -> String {
        self.algs
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The request URI as the client saw it, normalised for `htu`: behind a trusted proxy its
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (first entries) name the scheme and host.
pub fn request_htu(req: &Inbound<'_>, server: &Server) -> Option<String> {
    let forwarded = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let trusted = server.is_trusted(req.peer.to_canonical());
    let (scheme, host) = if trusted {
        (
            forwarded("x-forwarded-proto").unwrap_or(req.scheme),
            forwarded("x-forwarded-host").or(req.host),
        )
    } else {
        (req.scheme, req.host)
    };
    dpop::request_htu(&scheme.to_ascii_lowercase(), host, req.path)
}

/// The client certificate's SHA-256: from a trusted proxy's configured header when it sent
/// one, else the TLS connection's own. A header from any other peer is ignored; a header that
/// cannot be read counts as no certificate.
pub fn client_certificate(req: &Inbound<'_>, server: &Server) -> Option<[u8; 32]> {
    if server.is_trusted(req.peer.to_canonical()) {
        let name = match server.client_cert_header {
            ClientCertHeader::ClientCert => "client-cert",
            ClientCertHeader::Xfcc => "x-forwarded-client-cert",
        };
        let mut values = req.headers.get_all(name).iter();
        if let Some(first) = values.next() {
            let joined;
            let value = match values.next() {
                None => first.to_str().ok()?,
                // Several lines are one list (RFC 9110 §5.3): XFCC elements, or an RFC 9440
                // violation that the parser below refuses.
                Some(_) => {
                    joined = req
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap_or("\u{0}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    joined.as_str()
                }
            };
            if value.len() > MAX_CERT_HEADER {
                return None;
            }
            return match server.client_cert_header {
                ClientCertHeader::ClientCert => client_cert_field(value),
                ClientCertHeader::Xfcc => xfcc_hash(value),
            };
        }
    }
    req.client_cert_sha256.copied()
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// RFC 9440 §2.2: `Client-Cert` is one structured-field byte sequence, `:<base64 DER>:`.
pub fn client_cert_field(v: &str) -> Option<[u8; 32]> {
    let inner = v.trim().strip_prefix(':')?.strip_suffix(':')?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .ok()?;
    (!der.is_empty()).then(|| sha256(&der))
}

/// Envoy's `X-Forwarded-Client-Cert`: comma-separated elements, one per proxy, the last added by
/// the nearest one; each `;`-separated `Key=value` pairs, values optionally quoted. The last
/// element's `Hash` (hex SHA-256 of the DER certificate), else its `Cert` (URL-encoded PEM).
pub fn xfcc_hash(v: &str) -> Option<[u8; 32]> {
    let elements = split_unquoted(v, ',');
    let last = elements.last()?;
    let mut cert = None;
    for pair in split_unquoted(last, ';') {
        let (k, val) = pair.split_once('=')?;
        let val = unquote(val.trim());
        match k.trim().to_ascii_lowercase().as_str() {
            "hash" => return hex32(&val),
            "cert" => cert = Some(val),
            _ => {}
        }
    }
    let pem = percent_decode(&cert?)?;
    // A space may have been encoded as `+` (form style): the markers are matched either way,
    // and base64 lines, which may hold a `+`, have no spaces to confuse.
    let marker = |l: &str, m: &str| l.replace('+', " ") == m;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !marker(l, "-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !marker(l, "-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    (!der.is_empty()).then(|| sha256(&der))
}

/// `%XX` sequences decoded (UTF-8 result); `None` for a broken escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?)
                .ok()
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits on `sep` outside double quotes (`\"` escapes a quote inside).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let d = |x: u8| (x as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// What the check needs besides the request: the policy, the nonce key and the proofs seen.
pub struct Checker<'a> {
    pub policy: Effective<'a>,
    pub server: &'a Server,
    pub nonces: &'a NonceKey,
    pub replay: &'a ReplayCache,
    pub now: i64,
}

/// A binding that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The proof's nonce is from the previous period: the answer carries a fresh one.
    pub stale_nonce: bool,
}

/// How a token was held to its sender, for metrics: `dpop`, `certificate` or `none`.
pub fn method(p: &Principal, scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Dpop => "dpop",
        Scheme::Bearer if p.cnf.x5t_s256.is_some() => "certificate",
        Scheme::Bearer => "none",
    }
}

impl Checker<'_> {
    /// Checks the valid token `p` (presented as `token` with `scheme`) against its binding.
    /// DPoP: the proof passes every RFC 9449 §4.3 check, carries a current nonce when the policy
    /// asks, its key is `cnf.jkt` (§6.1), its `jti` is new (§11.1; last, so a refused proof is
    /// not recorded). Bearer: a DPoP-bound token is refused (§7.2), a certificate-bound one
    /// needs its certificate (RFC 8705 §3), an unbound one passes unless the policy requires a
    /// binding. With `constraint = none`, nothing is checked (the `DPoP` scheme never gets here).
    pub async fn check(
        &self,
        p: &Principal,
        scheme: Scheme,
        token: &str,
        req: &Inbound<'_>,
    ) -> Result<Bound, TokenError> {
        let policy = &self.policy;
        if policy.constraint == SenderConstraint::None {
            return Ok(Bound { stale_nonce: false });
        }
        if scheme == Scheme::Bearer {
            if p.cnf.jkt.is_some() {
                return Err(TokenError::DpopBoundAsBearer);
            }
            if p.cnf.unsupported {
                return Err(TokenError::UnsupportedBinding);
            }
            if p.cnf.x5t_s256.is_some() {
                self.certificate(p, req)?;
            } else if policy.constraint == SenderConstraint::Required {
                return Err(TokenError::NotSenderConstrained);
            }
            return Ok(Bound { stale_nonce: false });
        }
        let header = dpop::proof_header(req.headers).map_err(TokenError::DpopProof)?;
        let proof = dpop::verify(header, policy.algs).map_err(TokenError::DpopProof)?;
        let htu =
            request_htu(req, self.server).ok_or(TokenError::DpopProof(dpop::ProofError::Uri))?;
        proof
            .check(&dpop::Request {
                method: req.method.as_str(),
                htu: &htu,
                access_token: token,
                now: self.now,
                window: policy.window,
            })
            .map_err(TokenError::DpopProof)?;
        let stale_nonce = if policy.nonce {
            match self
                .nonces
                .check(proof.nonce.as_deref(), policy.rotation, self.now)
            {
                NonceState::Current => false,
                NonceState::Previous => true,
                NonceState::Invalid => return Err(TokenError::DpopNonce),
            }
        } else {
            false
        };
        if p.cnf.unsupported {
            return Err(TokenError::UnsupportedBinding);
        }
        match p.cnf.jkt {
            None => return Err(TokenError::NotDpopBound),
            Some(jkt) if jkt != proof.jkt => return Err(TokenError::DpopKeyMismatch),
            Some(_) => {}
        }
        if p.cnf.x5t_s256.is_some() {
            self.certificate(p, req)?;
        }
        let id = proof_id(&proof.jkt, &proof.jti);
        let expires = proof.iat.saturating_add(policy.window);
        match self.replay.first_use(id, expires, self.now).await {
            Seen::First => Ok(Bound { stale_nonce }),
            Seen::Replayed => Err(TokenError::DpopProof(dpop::ProofError::Replayed)),
            Seen::Unavailable => Err(TokenError::ReplayCheckUnavailable),
        }
    }

    fn certificate(&self, p: &Principal, req: &Inbound<'_>) -> Result<(), TokenError> {
        match (client_certificate(req, self.server), p.cnf.x5t_s256) {
            (None, _) => Err(TokenError::NoClientCertificate),
            (Some(c), Some(want)) if c == want => Ok(()),
            _ => Err(TokenError::CertificateMismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_wins_over_issuer_wins_over_default() {
        let none = SenderPolicy::default();
        let e = Effective::of(&none, None);
        assert_eq!(e.constraint, SenderConstraint::Allowed);
        assert_eq!(e.algs, &DpopAlg::DEFAULT);
        assert_eq!((e.window, e.nonce, e.rotation), (60, false, 300));
        let issuer = SenderPolicy {
            constraint: Some(SenderConstraint::Required),
            dpop_algorithms: Some(vec![DpopAlg::PS256]),
            nonce: Some(true),
            ..Default::default()
        };
        let route = SenderPolicy {
            dpop_algorithms: Some(vec![DpopAlg::ES256]),
            proof_window: Some(Duration::from_secs(5)),
            nonce: Some(false),
            ..Default::default()
        };
        let e = Effective::of(&route, Some(&issuer));
        assert_eq!(e.constraint, SenderConstraint::Required);
        assert_eq!(e.algs, &[DpopAlg::ES256]);
        assert_eq!((e.window, e.nonce), (5, false));
        assert_eq!(Effective::of(&none, Some(&issuer)).algs_param(), "PS256");
    }

    #[test]
    fn certificate_headers() {
        let der = b"not really DER but bytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(client_cert_field(&format!(":{b64}:")), Some(sha256(der)));
        assert_eq!(client_cert_field(&format!(" :{b64}: ")), Some(sha256(der)));
        assert_eq!(client_cert_field(&b64), None);
        assert_eq!(client_cert_field("::"), None);
        assert_eq!(client_cert_field(":!!!:"), None);
        let hex: String = sha256(der).iter().map(|b| format!("{b:02x}")).collect();
        let xfcc = format!(
            r#"By=spiffe://a;Hash=0000000000000000000000000000000000000000000000000000000000000000;Subject="CN=x,O=y",By=spiffe://b;Hash={hex};Subject="CN=a;b,c""#
        );
        assert_eq!(xfcc_hash(&xfcc), Some(sha256(der)), "the last element");
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let encoded: String = url::form_urlencoded::byte_serialize(pem.as_bytes()).collect();
        assert_eq!(
            xfcc_hash(&format!(r#"By=x;Cert="{encoded}""#)),
            Some(sha256(der))
        );
        assert_eq!(xfcc_hash("By=x;Hash=zz"), None);
        assert_eq!(xfcc_hash("garbage"), None);
    }
}
