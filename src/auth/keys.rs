//! Verification keys of one issuer or transmitter: JWKS fetch (direct, via OIDC/SSF discovery, or a
//! file), background refresh honouring `Cache-Control: max-age`, single-flight refetch on an unknown
//! `kid` limited by a cooldown, and last-good keys kept through provider outages.
//!
//! Locks: the current key set is read through `ArcSwap` (no lock on the request path); the refetch
//! mutex is only taken on a cache miss for a `kid` and never held across a request to upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::digest::Digest;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::Algorithm;

use crate::config::{KeyPolicy, KeySource};
use crate::fetch::{self, FetchError, Fetcher};

/// The family of a public key, used to refuse algorithm confusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa { bits: usize },
    P256,
    P384,
    Ed25519,
}

impl KeyFamily {
    /// Whether a token signed with `alg` may be verified with a key of this family.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::P256 => alg == ES256,
            KeyFamily::P384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub family: KeyFamily,
    /// The JWK's own `alg`, when it names one: the token must use exactly that.
    pub alg: Option<Algorithm>,
    /// RFC 7638 SHA-256 thumbprint of the public key: what a verified token remembers of the
    /// key that verified it (a key replaced under the same `kid` has another thumbprint).
    pub thumbprint: [u8; 32],
    /// Pre-parsed aws-lc-rs keys, one per algorithm this key may verify: parsing (and the RSA
    /// Montgomery set-up) happens once per JWKS fetch instead of once per token.
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl VerifyKey {
    /// Verifies a JWS signature over `signing_input` with this key for `alg`. `false` when the
    /// algorithm does not fit the key or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, signing_input: &[u8], signature: &[u8]) -> bool {
        self.verifier(alg)
            .is_some_and(|k| k.verify_sig(signing_input, signature).is_ok())
    }

    /// [`VerifyKey::verify`] given the signing input's digest instead of the input: `false` also
    /// when the digest's algorithm is not the one `alg` signs with.
    pub fn verify_digest(&self, alg: Algorithm, digest: &Digest, signature: &[u8]) -> bool {
        self.verifier(alg)
            .is_some_and(|k| k.verify_digest_sig(digest, signature).is_ok())
    }

    /// The parsed key for `alg`, if this key may verify it.
    fn verifier(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| k)
    }
}

/// The aws-lc-rs verification algorithm for a JWS `alg` (JWS ECDSA signatures are fixed r‖s).
fn lc_alg(alg: Algorithm) -> Option<&'static dyn lc::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &lc::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &lc::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &lc::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &lc::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &lc::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &lc::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &lc::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &lc::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &lc::ED25519,
        _ => return None,
    })
}

/// DER INTEGER of an unsigned big-endian number.
fn der_uint(out: &mut Vec<u8>, bytes: &[u8]) {
    let b = match bytes.iter().position(|x| *x != 0) {
        Some(i) => &bytes[i..],
        None => &[0u8][..],
    };
    let pad = b[0] & 0x80 != 0;
    out.push(0x02);
    der_len(out, b.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(b);
}

fn der_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let be = n.to_be_bytes();
        let skip = be.iter().position(|x| *x != 0).unwrap_or(be.len() - 1);
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
}

/// PKCS#1 RSAPublicKey DER from the JWK's `n` and `e`.
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    der_uint(&mut body, n);
    der_uint(&mut body, e);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

/// A snapshot of the keys, replaced whole on every successful fetch.
#[derive(Debug, Default)]
pub struct Keys {
    pub keys: Vec<Arc<VerifyKey>>,
    /// foldhash: looked up on every request (a cached token's key must still be published); the
    /// `kid`s come from the issuer's own key set.
    by_kid: HashMap<String, Arc<VerifyKey>, foldhash::fast::RandomState>,
    /// From discovery, for challenges (`authorization_uri`).
    pub authorization_endpoint: Option<String>,
    /// Other discovery members (SSF endpoints), kept as JSON.
    pub discovery: Option<serde_json::Value>,
}

impl Keys {
    pub fn get(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(k) => self.by_kid.get(k).cloned(),
            // A token without `kid` is accepted only when the set has exactly one key.
            None if self.keys.len() == 1 => self.keys.first().cloned(),
            None => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} returned an invalid document: {reason}")]
    Document { url: String, reason: String },
    #[error("discovery at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        url: String,
        found: String,
        expected: String,
    },
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("key set has no usable signing key")]
    NoKeys,
}

/// Counters a key set keeps for metrics.
#[derive(Debug, Default)]
pub struct KeyStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
    /// Epoch seconds of the last successful load (0 = never).
    pub loaded_at: AtomicU64,
}

/// The key sets in use, by source and expected issuer. Owned by the proxy state (which creates
/// and retains them per configuration); the metrics read their counters at scrape time.
#[derive(Clone, Default)]
pub struct KeySets(Arc<Mutex<KeySetMap>>);

/// Key sets by (source, expected issuer): a reload that names a source again reuses its keys.
pub type KeySetMap = HashMap<(KeySource, String), Arc<KeySet>>;

impl KeySets {
    pub fn lock(&self) -> MutexGuard<'_, KeySetMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key set for a source, created (and its refresher started) on first use; a set that
    /// exists takes the new policy.
    #[allow(clippy::too_many_arguments)]
    pub fn get_or_start(
        &self,
        name: &str,
        source: &KeySource,
        issuer: &str,
        policy: &KeyPolicy,
        min_rsa_bits: usize,
        fetcher: &Fetcher,
        shutdown: &tokio::sync::watch::Sender<bool>,
    ) -> Arc<KeySet> {
        let mut sets = self.lock();
        let id = (source.clone(), issuer.to_string());
        if let Some(k) = sets.get(&id) {
            k.update(policy);
            return k.clone();
        }
        let ks = Arc::new(KeySet::new(
            name,
            source.clone(),
            issuer,
            policy.clone(),
            min_rsa_bits,
            fetcher.clone(),
        ));
        sets.insert(id, ks.clone());
        tokio::spawn(refresher(Arc::downgrade(&ks), shutdown.subscribe()));
        ks
    }

    /// Drops the sets no longer named (`keep(source, issuer)` false); their refreshers stop.
    pub fn retain(&self, keep: impl Fn(&KeySource, &str) -> bool) {
        self.lock().retain(|(src, iss), _| keep(src, iss));
    }
}

impl std::fmt::Debug for KeySets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySets")
    }
}

/// Keys of one issuer or transmitter, shared by every snapshot that names the same source.
pub struct KeySet {
    pub name: String,
    source: KeySource,
    /// Expected `issuer` in the discovery document (exact string after one trailing slash).
    expected_issuer: String,
    /// Replaced by a reload that names the same source (see [`KeySet::update`]).
    policy: ArcSwap<KeyPolicy>,
    min_rsa_bits: usize,
    current: ArcSwap<Keys>,
    /// Wakes the refresher before its next scheduled fetch.
    wake: Arc<tokio::sync::Notify>,
    /// Why the last fetch failed (cleared by a success), for readiness.
    last_error: Mutex<Option<String>>,
    loaded: std::sync::atomic::AtomicBool,
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    fetcher: Fetcher,
    pub stats: KeyStats,
}

impl KeySet {
    pub fn new(
        name: &str,
        source: KeySource,
        expected_issuer: &str,
        policy: KeyPolicy,
        min_rsa_bits: usize,
        fetcher: Fetcher,
    ) -> KeySet {
        KeySet {
            name: name.to_string(),
            source,
            expected_issuer: expected_issuer.to_string(),
            policy: ArcSwap::from_pointee(policy),
            min_rsa_bits,
            current: ArcSwap::from_pointee(Keys::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            last_error: Mutex::new(None),
            loaded: Default::default(),
            last_refetch: tokio::sync::Mutex::new(None),
            fetcher,
            stats: KeyStats::default(),
        }
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// A reload named this key set again: its policy (refresh bounds, cooldown, https rule)
    /// takes effect now, and a local `jwks_file` is read again at once (as TLS files are), as
    /// is any source whose refresh schedule changed.
    pub fn update(&self, policy: &KeyPolicy) {
        let changed = **self.policy.load() != *policy;
        if changed {
            self.policy.store(Arc::new(policy.clone()));
        }
        if changed || matches!(self.source, KeySource::JwksFile(_)) {
            self.wake.notify_one();
        }
    }

    /// Why the last fetch failed, unless a later one succeeded.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }

    /// What the refresher waits on besides its schedule.
    pub fn wake_signal(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The current keys (lock-free).
    pub fn keys(&self) -> Arc<Keys> {
        self.current.load_full()
    }

    /// True once keys were loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// A key by `kid`; on a miss, one shared refetch at most once per cooldown, then a second look.
    pub async fn get_or_refetch(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        if let Some(k) = self.current.load().get(kid) {
            return Some(k);
        }
        let before = Arc::as_ptr(&self.current.load_full()) as usize;
        {
            let mut last = self.last_refetch.lock().await;
            // Someone else refetched while we waited: look again without fetching.
            if Arc::as_ptr(&self.current.load_full()) as usize == before {
                let cooldown = self.policy.load().unknown_kid_cooldown;
                let due = last.is_none_or(|t| t.elapsed() >= cooldown);
                if due {
                    *last = Some(Instant::now());
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(keys = %self.name, error = %crate::errors::Chain(&e), "refetch for an unknown kid failed; keeping the last good keys");
                    }
                }
            }
        }
        self.current.load().get(kid)
    }

    /// Fetches the keys now. On success returns how long until the next refresh.
    pub async fn refresh(&self) -> Result<Duration, KeyError> {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        match self.load().await {
            Ok((keys, max_age)) => {
                tracing::info!(keys = %self.name, count = keys.keys.len(), "loaded verification keys");
                self.set_last_error(None);
                self.current.store(Arc::new(keys));
                self.loaded.store(true, Ordering::Release);
                self.stats
                    .loaded_at
                    .store(crate::store::now_secs() as u64, Ordering::Relaxed);
                let p = self.policy.load();
                Ok(max_age
                    .unwrap_or(p.refresh_interval)
                    .clamp(p.min_refresh, p.max_refresh.max(p.min_refresh)))
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.set_last_error(Some(e.to_string()));
                Err(e)
            }
        }
    }

    async fn load(&self) -> Result<(Keys, Option<Duration>), KeyError> {
        let timeout = Duration::from_secs(10);
        match &self.source {
            KeySource::JwksFile(path) => {
                let text = tokio::fs::read(path).await.map_err(|e| KeyError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Ok((self.parse_jwks(&text, &path.display().to_string())?, None))
            }
            KeySource::JwksUri(url) => {
                let (body, age) = self.get_ok(url, timeout).await?;
                Ok((self.parse_jwks(&body, url)?, age))
            }
            KeySource::Discovery(url) => {
                let (body, _) = self.get_ok(url, timeout).await?;
                let d = parse_discovery(
                    &body,
                    url,
                    &self.expected_issuer,
                    self.policy.load().allow_insecure_http,
                )?;
                let jwks_uri = d.jwks_uri;
                let (body, age) = self.get_ok(&jwks_uri, timeout).await?;
                let mut keys = self.parse_jwks(&body, &jwks_uri)?;
                keys.authorization_endpoint = d.authorization_endpoint;
                keys.discovery = Some(d.doc);
                Ok((keys, age))
            }
        }
    }

    async fn get_ok(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<(bytes::Bytes, Option<Duration>), KeyError> {
        let r = self
            .fetcher
            .get(url, &[("accept", "application/json".into())], timeout)
            .await?;
        if !r.status.is_success() {
            return Err(KeyError::Status {
                url: url.to_string(),
                status: r.status.as_u16(),
            });
        }
        Ok((r.body, fetch::max_age(&r.headers)))
    }

    /// Parses a JWKS, keeping only usable public signature keys (never symmetric ones).
    pub fn parse_jwks(&self, body: &[u8], from: &str) -> Result<Keys, KeyError> {
        parse_jwks(body, from, self.min_rsa_bits)
    }
}

/// What an OIDC or SSF discovery document contributes to a key set.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The `issuer` the provider states (checked against the expected one).
    pub issuer: String,
    /// Where the keys are: `https`, or `http` on loopback or when allowed.
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    /// The whole document (SSF endpoints are read from it).
    pub doc: serde_json::Value,
}

/// Parses and checks a discovery document fetched from `url` (pure; fuzzed): its `issuer` must
/// be `expected_issuer` (unless that is a `{tenantid}` template) and its `jwks_uri` https.
pub fn parse_discovery(
    body: &[u8],
    url: &str,
    expected_issuer: &str,
    allow_insecure_http: bool,
) -> Result<Discovered, KeyError> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| KeyError::Document {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let issuer = doc
        .get("issuer")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    if !expected_issuer.contains("{tenantid}")
        && !crate::store::keys::same_issuer(&issuer, expected_issuer)
    {
        return Err(KeyError::IssuerMismatch {
            url: url.to_string(),
            found: issuer,
            expected: expected_issuer.to_string(),
        });
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or_else(|| KeyError::Document {
            url: url.to_string(),
            reason: "no jwks_uri".into(),
        })?
        .to_string();
    let scheme_ok = url::Url::parse(&jwks_uri).is_ok_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http"
                && (allow_insecure_http
                    || crate::config::is_loopback_host(u.host_str().unwrap_or(""))))
    });
    if !scheme_ok {
        return Err(KeyError::Document {
            url: url.to_string(),
            reason: format!("jwks_uri {jwks_uri:?} must use https"),
        });
    }
    let authorization_endpoint = doc
        .get("authorization_endpoint")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(Discovered {
        issuer,
        jwks_uri,
        authorization_endpoint,
        doc,
    })
}

/// Parses a JWKS document; invalid members are skipped with a log line, not fatal.
pub fn parse_jwks(body: &[u8], from: &str, min_rsa_bits: usize) -> Result<Keys, KeyError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        keys: Vec<serde_json::Value>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| KeyError::Document {
        url: from.to_string(),
        reason: e.to_string(),
    })?;
    let mut keys = Keys::default();
    for v in raw.keys {
        match key_from_jwk(v, min_rsa_bits) {
            Ok(k) => {
                let k = Arc::new(k);
                if let Some(kid) = &k.kid {
                    keys.by_kid.insert(kid.clone(), k.clone());
                }
                keys.keys.push(k);
            }
            Err(reason) => tracing::debug!(from, %reason, "skipping a JWKS member"),
        }
    }
    if keys.keys.is_empty() {
        return Err(KeyError::NoKeys);
    }
    Ok(keys)
}

fn key_from_jwk(v: serde_json::Value, min_rsa_bits: usize) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("use=enc".into());
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|e| e.to_string())?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8);
            if bits < min_rsa_bits {
                return Err(format!("RSA key of {bits} bits is below {min_rsa_bits}"));
            }
            KeyFamily::Rsa { bits }
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::P256,
            EllipticCurve::P384 => KeyFamily::P384,
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyFamily::Ed25519
        }
        _ => return Err("symmetric or unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(key_alg(ka).ok_or("key names a non-signature algorithm")?),
    };
    if let Some(a) = alg {
        if !family.fits(a) {
            return Err("key alg does not fit its type".into());
        }
    }
    let b64 = |v: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|e| e.to_string())
    };
    let thumbprint = jwk_thumbprint(&jwk.algorithm).ok_or("unsupported key type")?;
    let public: Vec<u8> = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => rsa_public_der(&b64(&p.n)?, &b64(&p.e)?),
        AlgorithmParameters::EllipticCurve(p) => [vec![4u8], b64(&p.x)?, b64(&p.y)?].concat(),
        AlgorithmParameters::OctetKeyPair(p) => b64(&p.x)?,
        _ => return Err("unsupported key type".into()),
    };
    use Algorithm::*;
    let mut verifiers = Vec::new();
    for a in [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ] {
        if family.fits(a) && alg.is_none_or(|x| x == a) {
            if let Some(la) = lc_alg(a) {
                verifiers.push((
                    a,
                    ParsedPublicKey::new(la, &public).map_err(|e| format!("key rejected: {e}"))?,
                ));
            }
        }
    }
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        thumbprint,
        verifiers,
    })
}

/// The RFC 7638 §3 thumbprint of a public JWK: SHA-256 over the required members in
/// lexicographic order, no white space (`{"e":…,"kty":"RSA","n":…}`, `{"crv":…,"kty":"EC","x":…,
/// "y":…}`, `{"crv":"Ed25519","kty":"OKP","x":…}`). `None` for key types we do not verify with.
pub fn jwk_thumbprint(key: &AlgorithmParameters) -> Option<[u8; 32]> {
    let public = match key {
        AlgorithmParameters::RSA(p) => PublicJwk::Rsa { n: &p.n, e: &p.e },
        AlgorithmParameters::EllipticCurve(p) => PublicJwk::Ec {
            crv: match p.curve {
                EllipticCurve::P256 => "P-256",
                EllipticCurve::P384 => "P-384",
                EllipticCurve::P521 => "P-521",
                _ => return None,
            },
            x: &p.x,
            y: &p.y,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            PublicJwk::Okp {
                crv: "Ed25519",
                x: &p.x,
            }
        }
        _ => return None,
    };
    Some(public.thumbprint())
}

/// The required public members of a JWK (RFC 7638 §3.2), as base64url strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicJwk<'a> {
    Rsa {
        n: &'a str,
        e: &'a str,
    },
    Ec {
        crv: &'a str,
        x: &'a str,
        y: &'a str,
    },
    Okp {
        crv: &'a str,
        x: &'a str,
    },
}

impl PublicJwk<'_> {
    /// The RFC 7638 §3 SHA-256 thumbprint: the required members in lexicographic order, no
    /// white space.
    pub fn thumbprint(&self) -> [u8; 32] {
        // Member values are base64url without padding (RFC 7515 §2); tolerate trailing `=`.
        let v = |s: &str| serde_json::Value::from(s.trim_end_matches('=')).to_string();
        let canonical = match self {
            PublicJwk::Rsa { n, e } => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, v(e), v(n)),
            PublicJwk::Ec { crv, x, y } => format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                v(crv),
                v(x),
                v(y)
            ),
            PublicJwk::Okp { crv, x } => {
                format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, v(crv), v(x))
            }
        };
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// The public key in the form aws-lc-rs parses for verification: PKCS#1 DER for RSA, the
    /// uncompressed point for EC, the raw key for Ed25519. `None` when a member is not base64url.
    pub fn public_bytes(&self) -> Option<Vec<u8>> {
        let b64 = |v: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .ok()
        };
        Some(match self {
            PublicJwk::Rsa { n, e } => rsa_public_der(&b64(n)?, &b64(e)?),
            PublicJwk::Ec { x, y, .. } => [vec![4u8], b64(x)?, b64(y)?].concat(),
            PublicJwk::Okp { x, .. } => b64(x)?,
        })
    }
}

fn key_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Refreshes a key set until it is dropped from every snapshot or the proxy stops.
async fn refresher(ks: std::sync::Weak<KeySet>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(strong) = ks.upgrade() else { return };
    let name = strong.name.clone();
    let wake = strong.wake_signal();
    drop(strong);
    let mut shutdown = shutdown;
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        let Some(ks) = ks.upgrade() else {
            tracing::debug!(keys = %name, "key set no longer used; refresher stops");
            return;
        };
        let wait = match ks.refresh().await {
            Ok(next) => {
                backoff = std::time::Duration::from_millis(200);
                next
            }
            Err(e) => {
                tracing::warn!(keys = %name, error = %crate::errors::Chain(&e), has_keys = ks.is_loaded(), "key fetch failed; last good keys keep serving");
                let w = backoff;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                w
            }
        };
        drop(ks);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_the_rfc7638_example() {
        // RFC 7638 §3.1.
        let jwk: Jwk = serde_json::from_value(serde_json::json!({"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}))
            .unwrap();
        let t = jwk_thumbprint(&jwk.algorithm).unwrap();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn skips_symmetric_and_small_keys() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes(), "test", 2048).unwrap();
        assert_eq!(keys.keys.len(), 1);
        let k = keys.get(Some("ec")).unwrap();
        assert_eq!(k.family, KeyFamily::P256);
        assert!(k.family.fits(Algorithm::ES256));
        assert!(!k.family.fits(Algorithm::RS256));
        assert!(keys.get(Some("h")).is_none());
        assert!(
            keys.get(None).is_some(),
            "one key: a kid-less token may use it"
        );
    }

    #[test]
    fn empty_or_broken_sets_are_errors() {
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#, "t", 2048),
            Err(KeyError::NoKeys)
        ));
        assert!(matches!(
            parse_jwks(b"nope", "t", 2048),
            Err(KeyError::Document { .. })
        ));
    }
}
