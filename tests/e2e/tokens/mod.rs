//! Bearer tokens end to end against real issuers (the development issuer's discovery and JWKS
//! over HTTP, a JWKS server the test controls, `jwks_file`): `validation` (every algorithm, every
//! forged token class, lifetimes, scopes, roles and claim rules, issuer templates, identity
//! headers, the challenges' realm and issuer) and `keys` (rotation, refresh schedule, provider
//! outages, the unknown-`kid` cooldown, `jwks_file` changes, reloads, cached tokens).

mod edges;
mod keys;
mod validation;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{b64url, KeyAlg, SigningKey};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::{json_response, now_secs, ServerHandle};
use http::header::{HeaderValue, CACHE_CONTROL};
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use crate::common::*;

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

/// The dev issuer (RS256 and ES256, two audiences; `extra_issuer`: more `[[issuer]]` lines)
/// behind routes with identity headers, scopes, roles, claim rules and optional auth.
async fn setup_with(opts: IssuerOptions, extra_issuer: &str) -> Setup {
    let idp = DevIssuer::start(listener().await, opts).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = base(&up.url())
        .issuer(
            "dev",
            &idp.issuer_url(),
            &format!(
                "discovery = \"{}\"\naudiences = [\"{API_AUDIENCE}\", \"11111111-2222-3333-4444-555555555555\"]\nalgorithms = [\"RS256\", \"ES256\"]\n{extra_issuer}",
                idp.discovery_url()
            ),
        )
        .route(
            "api",
            "/api",
            r#"identity_headers = { "x-user" = "sub", "x-groups" = "groups", "x-dept" = "org.dept" }"#,
        )
        .route("scoped", "/scoped", r#"scopes = ["orders.write"]"#)
        .route(
            "roles",
            "/roles",
            "roles = [\"Admin\", \"Auditor\"]\nmatch_mode = \"all\"",
        )
        .route(
            "tenant",
            "/tenant",
            r#"claims = [{ claim = "tid", one_of = ["t-allowed"] }]"#,
        )
        .route(
            "optional",
            "/optional",
            "auth = \"optional\"\nforward_authorization = false\nidentity_headers = { \"x-user\" = \"sub\" }",
        )
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

async fn setup() -> Setup {
    setup_with(IssuerOptions::default(), "").await
}

/// One public listener, an admin listener, the memory store and the echo upstream `app`.
fn base(upstream: &str) -> Toml {
    Toml::new().public().admin("").app(upstream)
}

/// GET `path` on the public listener with a bearer token.
async fn call(h: &Harness, path: &str, token: &str) -> Reply {
    call_with(&h.url("public", path), token).await
}

/// A 401 `invalid_token` answer with exactly this realm and description.
fn assert_invalid_in(r: &Reply, realm: &str, description: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let expected = format!(
        r#"Bearer realm="{realm}", error="invalid_token", error_description="{description}""#
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    let body = r.json();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["code"], "InvalidAuthenticationToken");
    assert_eq!(body["message"], description);
    assert_eq!(body["request_id"].as_str().map(str::len), Some(32));
}

fn assert_invalid(r: &Reply, description: &str) {
    assert_invalid_in(r, "", description);
}

/// A 200 that really came from the upstream, which saw the verified `sub` in `x-user`.
fn assert_passed(r: &Reply, sub: &str, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    assert_eq!(r.json()["headers"]["x-user"], sub, "{what}");
}

/// Claims of a valid token for `iss` (audience `api://cae-demo`), issued now, 10 minutes.
fn claims(iss: &str, sub: &str) -> Value {
    let now = now_secs();
    json!({"iss": iss, "sub": sub, "aud": "api://cae-demo", "iat": now, "nbf": now, "exp": now + 600})
}

/// A private key of any algorithm the proxy allows, with its public JWK (`kid`, `alg`, `use`).
struct TestKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

impl TestKey {
    /// A key for `alg`; RSA algorithms reuse `rsa` (a 2048-bit key) under their own `kid` and `alg`.
    fn new(alg: Algorithm, kid: &str, rsa: &SigningKey) -> TestKey {
        let name = alg_name(alg);
        let (enc, mut jwk) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (rsa.encoding_key().clone(), rsa.public_jwk().clone()),
            Algorithm::ES256 => {
                let k = SigningKey::generate_with_kid(KeyAlg::Es256, kid).unwrap();
                (k.encoding_key().clone(), k.public_jwk().clone())
            }
            Algorithm::ES384 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
                let pkcs8 = pair.to_pkcs8v1().unwrap();
                let point = pair.public_key().as_ref();
                assert_eq!((point.len(), point[0]), (97, 4), "uncompressed P-384 point");
                (
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    json!({"kty": "EC", "crv": "P-384", "x": b64url(&point[1..49]), "y": b64url(&point[49..97])}),
                )
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().unwrap();
                let pkcs8 = pair.to_pkcs8().unwrap();
                (
                    EncodingKey::from_ed_der(pkcs8.as_ref()),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref())}),
                )
            }
            other => panic!("no test key for {other:?}"),
        };
        let m = jwk.as_object_mut().unwrap();
        m.insert("kid".into(), json!(kid));
        m.insert("alg".into(), json!(name));
        m.insert("use".into(), json!("sig"));
        TestKey {
            kid: kid.to_string(),
            alg,
            enc,
            jwk,
        }
    }

    /// Signs `claims` with this key's algorithm and `kid`.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, &self.kid, claims)
    }

    /// Signs with `alg` (the key must be able to) under header `kid`.
    fn sign_as(&self, alg: Algorithm, kid: &str, claims: &Value) -> String {
        let header = json!({"typ": "JWT", "alg": alg_name(alg), "kid": kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.enc, alg).unwrap();
        format!("{input}.{sig}")
    }
}

/// What a [`JwksServer`] serves and records.
#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Value>>,
    /// `Cache-Control: max-age` of the answer (none: no header).
    max_age: Mutex<Option<u64>>,
    /// Arrival time and the max-age served, per fetch.
    fetches: Mutex<Vec<(Instant, Option<u64>)>>,
}

/// A JWKS endpoint on loopback whose keys and `max-age` the test controls; it counts fetches.
struct JwksServer {
    state: Arc<JwksState>,
    server: ServerHandle,
}

impl JwksServer {
    async fn start(keys: Vec<Value>, max_age: Option<u64>) -> JwksServer {
        let state = Arc::new(JwksState::default());
        *state.keys.lock().unwrap() = keys;
        *state.max_age.lock().unwrap() = max_age;
        let st = state.clone();
        let server = cae_proxy::dev::serve(listener().await, move |_req, _peer| {
            let st = st.clone();
            async move {
                let age = *st.max_age.lock().unwrap();
                let keys = st.keys.lock().unwrap().clone();
                st.fetches.lock().unwrap().push((Instant::now(), age));
                let mut resp = json_response(StatusCode::OK, &json!({ "keys": keys }));
                if let Some(a) = age {
                    resp.headers_mut().insert(
                        CACHE_CONTROL,
                        HeaderValue::from_str(&format!("public, max-age={a}")).unwrap(),
                    );
                }
                resp
            }
        })
        .unwrap();
        JwksServer { state, server }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.server.addr())
    }

    fn fetches(&self) -> usize {
        self.state.fetches.lock().unwrap().len()
    }

    fn fetch_log(&self) -> Vec<(Instant, Option<u64>)> {
        self.state.fetches.lock().unwrap().clone()
    }

    fn add_key(&self, jwk: Value) {
        self.state.keys.lock().unwrap().push(jwk);
    }

    fn set_max_age(&self, age: Option<u64>) {
        *self.state.max_age.lock().unwrap() = age;
    }

    /// Waits (bounded) until at least `n` fetches were served.
    async fn wait_fetches(&self, n: usize, within: Duration) {
        let what = format!("{n} JWKS fetches");
        eventually(within, &what, || async { self.fetches() >= n }).await;
    }
}

/// Writes a file atomically (a reader sees the old or the new content, never half of it).
fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn jwks_doc(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

const ALL_ALGS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `cae_key_fetch_failures_total` of the key set `name`.
async fn key_fetch_failures(h: &Harness, name: &str) -> u64 {
    let m = h.metrics().await;
    metric(
        &m,
        &format!(r#"cae_key_fetch_failures_total{{name="{name}"}}"#),
    )
    .unwrap_or(0.0) as u64
}
