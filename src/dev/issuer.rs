//! `DevIssuer`: an OIDC-like development identity provider (discovery, JWKS, a token endpoint that
//! honours claims challenges) for the demo and the tests. Not an OAuth server: no client
//! authentication, no consent, no refresh tokens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use super::keys::{KeyAlg, SigningKey};
use super::{
    json_response, now_secs, random_id, read_body, response, DevBody, DevError, ServerHandle,
};

/// Largest `/token` request body accepted.
const MAX_TOKEN_REQUEST: usize = 1 << 20;

/// Settings of a [`DevIssuer`].
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    /// `aud` of every token.
    pub audience: String,
    /// `tid` of every token.
    pub tenant: String,
    /// `Cache-Control: max-age` of the JWKS answer, in seconds.
    pub jwks_max_age: u64,
    /// Token lifetime when the request does not give one, in seconds.
    pub default_lifetime_secs: u64,
    /// Algorithm of the first signing key.
    pub alg: KeyAlg,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        IssuerOptions {
            audience: "api://cae-demo".into(),
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            jwks_max_age: 300,
            default_lifetime_secs: 3600,
            alg: KeyAlg::Rs256,
        }
    }
}

/// What a token request asks for (from `/token` or in-process).
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Subject (`sub` and `oid`).
    pub sub: String,
    /// Extra claims, merged over the defaults (a `null` member removes that claim,
    /// `"xms_cc": []` removes the capability claim).
    pub extra: Map<String, Value>,
    /// Parsed claims request (the challenge's `claims`), honoured like a real IdP would.
    pub claims_request: Option<Value>,
    /// Lifetime in seconds (default: the issuer's).
    pub lifetime_secs: Option<u64>,
    /// Signature algorithm (default: the current signing key's).
    pub alg: Option<KeyAlg>,
}

struct KeySet {
    keys: Vec<SigningKey>,
    signing: String,
}

struct Inner {
    issuer: String,
    opts: IssuerOptions,
    keys: Mutex<KeySet>,
    available: AtomicBool,
    jwks_fetches: AtomicUsize,
}

/// A development identity provider serving discovery, JWKS and a token endpoint.
pub struct DevIssuer {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Parses a claims request as found in a challenge: raw JSON, or base64 / base64url with or
/// without padding.
pub fn parse_claims_request(raw: &str) -> Result<Value, DevError> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        return Ok(serde_json::from_str(raw)?);
    }
    let bytes = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(raw).ok())
        .ok_or_else(|| DevError::Invalid("claims request is neither JSON nor base64".into()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The values a claims-request entry asks for (`value` and `values`), as strings.
fn requested_values(spec: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(v) = spec.get("value") {
        if !v.is_null() {
            out.push(v.clone());
        }
    }
    if let Some(Value::Array(vs)) = spec.get("values") {
        out.extend(vs.iter().cloned());
    }
    out
}

fn as_epoch(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// Adds `values` to the array claim `name` (creating it), keeping the order and no duplicates.
fn union_into(claims: &mut Map<String, Value>, name: &str, values: &[Value]) {
    let mut current = match claims.remove(name) {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    };
    for v in values {
        if !current.contains(v) {
            current.push(v.clone());
        }
    }
    claims.insert(name.to_string(), Value::Array(current));
}

/// Builds the claims of an access token the way the dev issuer does, at time `now`.
///
/// Defaults: `iss`, `sub`, `aud`, `iat` = `nbf` = now, `exp`, random `jti` and `sid`, `oid` = sub,
/// `tid`, `xms_cc: ["cp1"]`; then the extra claims (a `null` removes a claim, `"xms_cc": []`
/// removes the capability claim); then the claims request: `nbf` moves `iat`/`nbf` (and `exp`)
/// to max(now, value), `acrs` values are added, `xms_cc` values are added.
pub fn build_claims(
    issuer: &str,
    opts: &IssuerOptions,
    req: &TokenRequest,
    now: i64,
) -> Map<String, Value> {
    let lifetime = i64::try_from(req.lifetime_secs.unwrap_or(opts.default_lifetime_secs))
        .unwrap_or(i64::MAX / 2);
    let access = req
        .claims_request
        .as_ref()
        .and_then(|c| c.get("access_token"))
        .and_then(Value::as_object);

    let mut issued = now;
    if let Some(spec) = access.and_then(|a| a.get("nbf")) {
        for v in requested_values(spec) {
            if let Some(t) = as_epoch(&v) {
                issued = issued.max(t);
            }
        }
    }

    let mut claims = Map::new();
    let mut put = |k: &str, v: Value| {
        claims.insert(k.to_string(), v);
    };
    put("iss", json!(issuer));
    put("sub", json!(req.sub));
    put("aud", json!(opts.audience));
    put("iat", json!(issued));
    put("nbf", json!(issued));
    put("exp", json!(issued.saturating_add(lifetime)));
    put("jti", json!(random_id(16)));
    put("oid", json!(req.sub));
    put("tid", json!(opts.tenant));
    put("sid", json!(random_id(16)));
    put("xms_cc", json!(["cp1"]));

    for (k, v) in &req.extra {
        match v {
            Value::Null => {
                claims.remove(k);
            }
            Value::Array(a) if k == "xms_cc" && a.is_empty() => {
                claims.remove(k);
            }
            _ => {
                claims.insert(k.clone(), v.clone());
            }
        }
    }

    if let Some(access) = access {
        if let Some(spec) = access.get("acrs") {
            union_into(&mut claims, "acrs", &requested_values(spec));
        }
        if let Some(spec) = access.get("xms_cc") {
            union_into(&mut claims, "xms_cc", &requested_values(spec));
        }
        if access.contains_key("nbf") {
            // A claims request wins over extra claims for the issue time.
            for k in ["iat", "nbf"] {
                let cur = claims.get(k).and_then(as_epoch).unwrap_or(issued);
                claims.insert(k.into(), json!(cur.max(issued)));
            }
            let exp = claims.get("exp").and_then(as_epoch).unwrap_or(0);
            if exp < issued.saturating_add(lifetime) {
                claims.insert("exp".into(), json!(issued.saturating_add(lifetime)));
            }
        }
    }
    claims
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<DevBody> {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn split_list(s: &str) -> Vec<Value> {
    s.split([',', ' '])
        .filter(|p| !p.is_empty())
        .map(|p| Value::String(p.to_string()))
        .collect()
}

/// Parses a `/token` request body (JSON or form).
fn parse_token_request(is_form: bool, body: &[u8]) -> Result<TokenRequest, DevError> {
    let mut req = TokenRequest {
        sub: "dev-user".into(),
        ..TokenRequest::default()
    };
    if is_form {
        for (k, v) in url::form_urlencoded::parse(body) {
            match k.as_ref() {
                "sub" => req.sub = v.into_owned(),
                "claims" if !v.trim().is_empty() => {
                    req.claims_request = Some(parse_claims_request(&v)?)
                }
                "xms_cc" | "acrs" | "roles" => {
                    req.extra
                        .insert(k.into_owned(), Value::Array(split_list(&v)));
                }
                "scp" | "scope" => {
                    req.extra
                        .insert("scp".into(), Value::String(v.into_owned()));
                }
                "ipaddr" | "sid" | "email" | "upn" | "preferred_username" | "deviceid" => {
                    req.extra
                        .insert(k.into_owned(), Value::String(v.into_owned()));
                }
                "lifetime_secs" => {
                    req.lifetime_secs =
                        Some(v.trim().parse().map_err(|_| {
                            DevError::Invalid("lifetime_secs is not a number".into())
                        })?)
                }
                "alg" => req.alg = Some(v.parse()?),
                // Sender-constrained tokens: `cnf.jkt` (RFC 9449 §6.1; the parameter name is
                // §10's) and `cnf.x5t#S256` (RFC 8705 §3.1), both base64url SHA-256 values.
                "dpop_jkt" | "x5t#S256" => {
                    let member = if k == "dpop_jkt" { "jkt" } else { "x5t#S256" };
                    let cnf = req
                        .extra
                        .entry("cnf")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(m) = cnf {
                        m.insert(member.into(), Value::String(v.into_owned()));
                    }
                }
                _ => {}
            }
        }
        return Ok(req);
    }
    let body: Value = serde_json::from_slice(body)?;
    let obj = body
        .as_object()
        .ok_or_else(|| DevError::Invalid("token request is not a JSON object".into()))?;
    if let Some(sub) = obj.get("sub") {
        req.sub = sub
            .as_str()
            .ok_or_else(|| DevError::Invalid("sub is not a string".into()))?
            .to_string();
    }
    match obj.get("claims") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => req.extra = m.clone(),
        Some(_) => return Err(DevError::Invalid("claims is not an object".into())),
    }
    match obj.get("claims_request") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.trim().is_empty() => {}
        Some(Value::String(s)) => req.claims_request = Some(parse_claims_request(s)?),
        Some(v @ Value::Object(_)) => req.claims_request = Some(v.clone()),
        Some(_) => return Err(DevError::Invalid("claims_request is not a string".into())),
    }
    match obj.get("lifetime_secs") {
        None | Some(Value::Null) => {}
        Some(v) => {
            req.lifetime_secs = Some(
                v.as_u64()
                    .ok_or_else(|| DevError::Invalid("lifetime_secs is not a number".into()))?,
            )
        }
    }
    match obj.get("alg") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.alg = Some(s.parse()?),
        Some(_) => return Err(DevError::Invalid("alg is not a string".into())),
    }
    Ok(req)
}

impl Inner {
    fn key_for(&self, alg: Option<KeyAlg>) -> Result<SigningKey, DevError> {
        let mut set = lock(&self.keys);
        let signing = set.keys.iter().find(|k| k.kid() == set.signing).cloned();
        match (signing, alg) {
            (Some(k), None) => return Ok(k),
            (Some(k), Some(a)) if k.alg() == a => return Ok(k),
            _ => {}
        }
        let wanted = alg.unwrap_or(self.opts.alg);
        if let Some(k) = set.keys.iter().rev().find(|k| k.alg() == wanted) {
            return Ok(k.clone());
        }
        let key = SigningKey::generate(wanted)?;
        if set.keys.is_empty() {
            set.signing = key.kid().to_string();
        }
        set.keys.push(key.clone());
        Ok(key)
    }

    fn mint(&self, req: &TokenRequest) -> Result<(String, i64), DevError> {
        let key = self.key_for(req.alg)?;
        let claims = build_claims(&self.issuer, &self.opts, req, now_secs());
        let expires_in = claims
            .get("exp")
            .and_then(Value::as_i64)
            .map(|e| e - now_secs())
            .unwrap_or(0)
            .max(0);
        Ok((key.sign(None, &Value::Object(claims)), expires_in))
    }

    fn jwks(&self) -> Value {
        let set = lock(&self.keys);
        json!({"keys": set.keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()})
    }

    fn discovery(&self) -> Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "jwks_uri": format!("{i}/jwks"),
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "response_types_supported": ["code", "token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "claims_parameter_supported": true,
        })
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<DevBody> {
        if !self.available.load(Ordering::SeqCst) {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the development issuer is switched off",
            );
        }
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/.well-known/openid-configuration") => {
                json_response(StatusCode::OK, &self.discovery())
            }
            (Method::GET, "/jwks") => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let mut resp = json_response(StatusCode::OK, &self.jwks());
                if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", self.opts.jwks_max_age))
                {
                    resp.headers_mut().insert(CACHE_CONTROL, v);
                }
                resp
            }
            (Method::GET, "/authorize") => response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!(
                    "This is cae-proxy's development issuer ({}). It has no login page: \
                     get tokens with POST {}/token.\n",
                    self.issuer, self.issuer
                ),
            ),
            (Method::POST, "/token") => {
                let is_form = req
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| {
                        v.to_ascii_lowercase()
                            .starts_with("application/x-www-form-urlencoded")
                    })
                    .unwrap_or(false);
                let body = match read_body(req.into_body(), MAX_TOKEN_REQUEST).await {
                    Ok(b) => b,
                    Err(e) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            &e.to_string(),
                        )
                    }
                };
                let starts_with_brace = body
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b'{');
                let is_form = is_form || !starts_with_brace;
                let token_req = match parse_token_request(is_form, &body) {
                    Ok(r) => r,
                    Err(e) => {
                        return oauth_error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            &e.to_string(),
                        )
                    }
                };
                match self.mint(&token_req) {
                    Ok((token, expires_in)) => json_response(
                        StatusCode::OK,
                        &json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in}),
                    ),
                    Err(e) => oauth_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        &e.to_string(),
                    ),
                }
            }
            _ => oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }
}

impl DevIssuer {
    /// Starts the issuer on `listener`; its issuer URL is `http://127.0.0.1:<port>`.
    pub fn start(listener: TcpListener, opts: IssuerOptions) -> Result<DevIssuer, DevError> {
        let addr = listener.local_addr()?;
        let key = SigningKey::generate(opts.alg)?;
        let inner = Arc::new(Inner {
            issuer: format!("http://127.0.0.1:{}", addr.port()),
            opts,
            keys: Mutex::new(KeySet {
                signing: key.kid().to_string(),
                keys: vec![key],
            }),
            available: AtomicBool::new(true),
            jwks_fetches: AtomicUsize::new(0),
        });
        let handler_inner = inner.clone();
        let server = super::serve(listener, move |req, _peer: SocketAddr| {
            handler_inner.clone().handle(req)
        })?;
        Ok(DevIssuer { inner, server })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// The issuer URL, `http://127.0.0.1:<port>` (no trailing slash).
    pub fn issuer_url(&self) -> String {
        self.inner.issuer.clone()
    }

    /// `<issuer>/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.inner.issuer)
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.inner.issuer)
    }

    /// `<issuer>/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.inner.issuer)
    }

    /// `<issuer>/token`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.inner.issuer)
    }

    /// The options the issuer was started with.
    pub fn options(&self) -> &IssuerOptions {
        &self.inner.opts
    }

    /// Mints an access token for `sub` with the current signing key; `extra_claims` (an object)
    /// is merged over the defaults as in `/token`.
    pub fn mint(&self, sub: &str, extra_claims: Value) -> String {
        self.mint_request(&TokenRequest {
            sub: sub.to_string(),
            extra: into_map(extra_claims),
            ..TokenRequest::default()
        })
    }

    /// Like [`mint`](Self::mint) with a key of algorithm `alg` (created if the issuer has none).
    pub fn mint_with(&self, alg: KeyAlg, sub: &str, extra_claims: Value) -> String {
        self.mint_request(&TokenRequest {
            sub: sub.to_string(),
            extra: into_map(extra_claims),
            alg: Some(alg),
            ..TokenRequest::default()
        })
    }

    /// Mints a token answering a claims challenge (`claims_request`: base64 or raw JSON).
    pub fn mint_for_challenge(
        &self,
        sub: &str,
        extra_claims: Value,
        claims_request: &str,
    ) -> Result<String, DevError> {
        Ok(self.mint_request(&TokenRequest {
            sub: sub.to_string(),
            extra: into_map(extra_claims),
            claims_request: Some(parse_claims_request(claims_request)?),
            ..TokenRequest::default()
        }))
    }

    /// Mints a token for a full request.
    ///
    /// # Panics
    /// Only if aws-lc fails to generate a key, which it does not short of a library bug.
    pub fn mint_request(&self, req: &TokenRequest) -> String {
        #[allow(clippy::expect_used)]
        self.inner.mint(req).expect("dev issuer key generation").0
    }

    /// Adds a fresh key of algorithm `alg`, makes it the signing key and returns its `kid`.
    ///
    /// # Panics
    /// Only if aws-lc fails to generate a key.
    pub fn rotate(&self, alg: KeyAlg) -> String {
        #[allow(clippy::expect_used)]
        let key = SigningKey::generate(alg).expect("dev issuer key generation");
        let kid = key.kid().to_string();
        let mut set = lock(&self.inner.keys);
        set.keys.push(key);
        set.signing = kid.clone();
        kid
    }

    /// Removes a key from the JWKS; returns whether it existed. If it was the signing key, the
    /// most recently added remaining key signs from now on.
    pub fn remove_key(&self, kid: &str) -> bool {
        let mut set = lock(&self.inner.keys);
        let before = set.keys.len();
        set.keys.retain(|k| k.kid() != kid);
        let removed = set.keys.len() != before;
        if set.signing == kid {
            set.signing = set
                .keys
                .last()
                .map(|k| k.kid().to_string())
                .unwrap_or_default();
        }
        removed
    }

    /// `false`: every endpoint answers 503 (an outage); `true`: back to normal.
    pub fn set_available(&self, available: bool) {
        self.inner.available.store(available, Ordering::SeqCst);
    }

    /// How many times `/jwks` was served.
    pub fn jwks_fetches(&self) -> usize {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The current signing key (to forge tokens in tests).
    ///
    /// # Panics
    /// Only if aws-lc fails to generate a key (when every key was removed).
    pub fn signing_key(&self) -> SigningKey {
        #[allow(clippy::expect_used)]
        self.inner.key_for(None).expect("dev issuer key generation")
    }

    /// All keys currently published.
    pub fn keys(&self) -> Vec<SigningKey> {
        lock(&self.inner.keys).keys.clone()
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        self.inner.jwks()
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(sub: &str, extra: Value, claims_request: Option<&str>) -> TokenRequest {
        TokenRequest {
            sub: sub.into(),
            extra: into_map(extra),
            claims_request: claims_request.map(|c| parse_claims_request(c).unwrap()),
            ..TokenRequest::default()
        }
    }

    #[test]
    fn default_claims() {
        let opts = IssuerOptions::default();
        let c = build_claims(
            "http://127.0.0.1:1",
            &opts,
            &req("alice", json!({}), None),
            1000,
        );
        assert_eq!(c["iss"], "http://127.0.0.1:1");
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["oid"], "alice");
        assert_eq!(c["aud"], opts.audience);
        assert_eq!(c["tid"], opts.tenant);
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["nbf"], 1000);
        assert_eq!(c["exp"], 4600);
        assert_eq!(c["xms_cc"], json!(["cp1"]));
        assert_eq!(c["jti"].as_str().unwrap().len(), 32);
        assert!(c["sid"].is_string());
    }

    #[test]
    fn extra_claims_override_and_remove() {
        let opts = IssuerOptions::default();
        let extra =
            json!({"xms_cc": [], "sid": "s1", "ipaddr": "10.0.0.1", "scp": "read", "jti": null});
        let c = build_claims("i", &opts, &req("bob", extra, None), 1000);
        assert!(c.get("xms_cc").is_none());
        assert!(c.get("jti").is_none());
        assert_eq!(c["sid"], "s1");
        assert_eq!(c["ipaddr"], "10.0.0.1");
        assert_eq!(c["scp"], "read");
    }

    #[test]
    fn nbf_claims_request_moves_issue_time() {
        let opts = IssuerOptions::default();
        // Base64 with padding, from docs/protocols.md §2.4: nbf 1700000000.
        let b64 = "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzAwMDAwMDAwIn19fQ==";
        let c = build_claims("i", &opts, &req("a", json!({}), Some(b64)), 1_600_000_000);
        assert_eq!(c["iat"], 1_700_000_000);
        assert_eq!(c["nbf"], 1_700_000_000);
        assert_eq!(c["exp"], 1_700_003_600);
        // Without padding, and a value in the past: now wins.
        let c = build_claims(
            "i",
            &opts,
            &req("a", json!({}), Some(b64.trim_end_matches('='))),
            1_800_000_000,
        );
        assert_eq!(c["iat"], 1_800_000_000);
        assert_eq!(c["nbf"], 1_800_000_000);
        // Raw JSON with a numeric value, overriding an explicit old iat.
        let c = build_claims(
            "i",
            &opts,
            &req(
                "a",
                json!({"iat": 5}),
                Some(r#"{"access_token":{"nbf":{"essential":true,"value":2000}}}"#),
            ),
            1000,
        );
        assert_eq!(c["iat"], 2000);
        assert_eq!(c["nbf"], 2000);
    }

    #[test]
    fn acrs_claims_request_adds_values() {
        let opts = IssuerOptions::default();
        let b64 = "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19";
        let c = build_claims("i", &opts, &req("a", json!({}), Some(b64)), 1000);
        assert_eq!(c["acrs"], json!(["c1"]));
        let c = build_claims(
            "i",
            &opts,
            &req(
                "a",
                json!({"acrs": ["c2"]}),
                Some(r#"{"access_token":{"acrs":{"essential":true,"values":["c1","c2","c3"]}}}"#),
            ),
            1000,
        );
        assert_eq!(c["acrs"], json!(["c2", "c1", "c3"]));
    }

    #[test]
    fn xms_cc_claims_request_adds_capabilities() {
        let opts = IssuerOptions::default();
        let c = build_claims(
            "i",
            &opts,
            &req(
                "a",
                json!({"xms_cc": []}),
                Some(r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#),
            ),
            1000,
        );
        assert_eq!(c["xms_cc"], json!(["CP1"]));
    }

    #[test]
    fn claims_request_rejects_garbage() {
        assert!(parse_claims_request("!!!").is_err());
        assert!(parse_claims_request("{not json").is_err());
    }

    #[test]
    fn form_and_json_token_requests() {
        let r = parse_token_request(
            true,
            b"sub=carol&xms_cc=cp1&scp=read+write&claims=%7B%22access_token%22%3A%7B%22acrs%22%3A%7B%22value%22%3A%22c1%22%7D%7D%7D",
        )
        .unwrap();
        assert_eq!(r.sub, "carol");
        assert_eq!(r.extra["scp"], "read write");
        assert_eq!(r.extra["xms_cc"], json!(["cp1"]));
        assert!(r.claims_request.is_some());
        let r = parse_token_request(true, b"dpop_jkt=abc&x5t%23S256=def").unwrap();
        assert_eq!(r.extra["cnf"], json!({"jkt": "abc", "x5t#S256": "def"}));

        let r = parse_token_request(
            false,
            br#"{"sub":"dave","claims":{"roles":["admin"]},"lifetime_secs":60,"alg":"ES256"}"#,
        )
        .unwrap();
        assert_eq!(r.sub, "dave");
        assert_eq!(r.extra["roles"], json!(["admin"]));
        assert_eq!(r.lifetime_secs, Some(60));
        assert_eq!(r.alg, Some(KeyAlg::Es256));
        assert!(parse_token_request(false, br#"{"alg":"HS256"}"#).is_err());
    }

    #[tokio::test]
    async fn serves_discovery_jwks_and_tokens() {
        use crate::dev::http_request;
        let issuer = DevIssuer::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            IssuerOptions {
                jwks_max_age: 42,
                ..IssuerOptions::default()
            },
        )
        .unwrap();
        let base = issuer.issuer_url();
        assert_eq!(base, format!("http://127.0.0.1:{}", issuer.addr().port()));

        let (s, _, b) = http_request(Method::GET, &issuer.discovery_url(), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 200);
        let d: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(d["issuer"], base);
        assert_eq!(d["jwks_uri"], issuer.jwks_url());
        assert_eq!(d["authorization_endpoint"], format!("{base}/authorize"));
        assert_eq!(d["token_endpoint"], format!("{base}/token"));

        let (s, h, b) = http_request(Method::GET, &issuer.jwks_url(), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 200);
        assert_eq!(h["cache-control"], "max-age=42");
        let jwks: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(issuer.jwks_fetches(), 1);

        // JSON token request honouring an nbf claims request (unpadded base64).
        let body = json!({
            "sub": "alice",
            "claims": {"ipaddr": "10.1.2.3", "scp": "read"},
            "claims_request": "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzAwMDAwMDAwIn19fQ",
            "lifetime_secs": 600,
            "alg": "ES256"
        });
        let (s, _, b) = http_request(
            Method::POST,
            &format!("{base}/token"),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        let t: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(t["token_type"], "Bearer");
        let token = t["access_token"].as_str().unwrap();
        let (h, p) = crate::dev::keys::decode_unverified(token).unwrap();
        assert_eq!(h["alg"], "ES256");
        assert_eq!(p["sub"], "alice");
        assert_eq!(p["ipaddr"], "10.1.2.3");
        assert!(p["iat"].as_i64().unwrap() >= 1_700_000_000);
        assert_eq!(p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(), 600);
        // The ES256 key was added to the JWKS; the token verifies with it.
        let es = issuer
            .keys()
            .into_iter()
            .find(|k| k.kid() == h["kid"])
            .unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[issuer.options().audience.as_str()]);
        v.set_issuer(&[base.as_str()]);
        jsonwebtoken::decode::<Value>(token, &es.decoding_key().unwrap(), &v).unwrap();

        // Form request, as curl sends it.
        let (s, _, b) = http_request(
            Method::POST,
            &format!("{base}/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            "sub=bob&scp=read&claims=eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19",
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        let t: Value = serde_json::from_slice(&b).unwrap();
        let (h, p) =
            crate::dev::keys::decode_unverified(t["access_token"].as_str().unwrap()).unwrap();
        assert_eq!(h["alg"], "RS256");
        assert_eq!(p["acrs"], json!(["c1"]));
        assert_eq!(p["xms_cc"], json!(["cp1"]));

        let (s, _, _) = http_request(
            Method::POST,
            &format!("{base}/token"),
            &[("content-type", "application/json")],
            r#"{"claims_request":"%%%"}"#,
        )
        .await
        .unwrap();
        assert_eq!(s, 400);

        // Rotation and removal.
        let old = issuer.signing_key().kid().to_string();
        let kid = issuer.rotate(KeyAlg::Rs256);
        assert_eq!(issuer.signing_key().kid(), kid);
        let (h, _) = crate::dev::keys::decode_unverified(&issuer.mint("c", json!({}))).unwrap();
        assert_eq!(h["kid"], kid);
        assert!(issuer.remove_key(&old));
        assert!(!issuer.remove_key(&old));
        assert!(issuer.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != old));

        // Outage.
        issuer.set_available(false);
        let (s, _, _) = http_request(Method::GET, &issuer.jwks_url(), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 503);
        issuer.set_available(true);

        // Dropping stops the server.
        let url = issuer.jwks_url();
        drop(issuer);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(http_request(Method::GET, &url, &[], "").await.is_err());
    }
}
