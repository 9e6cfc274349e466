//! Token validation and key lifecycle end to end (issue 3 gaps): every allowed signature algorithm, `jwks_file` keys, periodic refresh honouring `Cache-Control: max-age` within bounds, the unknown-`kid` cooldown, `max_lifetime`, the Entra v1 issuer template and the configured `realm`/`authorization_uri` in challenges.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
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

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `[server]`, one public listener, admin, memory store and the echo upstream `app`.
fn base_toml(upstream: &str) -> String {
    format!(
        r#"
[server]
log_level = "warn"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[store]
backend = "memory"
[upstreams.app]
url = "{upstream}"
"#
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn call(h: &Harness, path: &str, token: &str) -> Reply {
    get(
        &client(),
        &h.url("public", path),
        &[("authorization", &bearer(token))],
    )
    .await
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
        let deadline = Instant::now() + within;
        while self.fetches() < n {
            assert!(
                Instant::now() < deadline,
                "only {} JWKS fetches after {within:?}, expected {n}",
                self.fetches()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `f` every 50 ms until it returns `true`, at most `within`; panics with `what` otherwise.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of a counter family's samples for `name="<label>"` in the admin `/metrics` text.
async fn metric(h: &Harness, family: &str, label: &str) -> u64 {
    let text = get(&client(), &h.admin_url("/metrics"), &[]).await.text();
    let want = format!("name=\"{label}\"");
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
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

// ---------------------------------------------------------------------------------------------
// 1. Algorithms
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_allowed_algorithm_validates_when_listed_and_is_refused_when_not() {
    let rsa = SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa").unwrap();
    let keys: Vec<TestKey> = ALL_ALGS
        .iter()
        .map(|a| TestKey::new(*a, &alg_name(*a).to_ascii_lowercase(), &rsa))
        .collect();
    let srv = JwksServer::start(keys.iter().map(|k| k.jwk.clone()).collect(), Some(300)).await;
    let up = EchoUpstream::start(listener().await).unwrap();

    // Issuers differ by `iss` only; each lists another set of algorithms.
    use Algorithm::*;
    let issuers: [(&str, Option<Vec<Algorithm>>); 4] = [
        ("all", Some(ALL_ALGS.to_vec())),
        // No `algorithms` key: the default is RS256 alone.
        ("default", None),
        ("half-a", Some(vec![RS384, PS256, PS512, ES384])),
        ("half-b", Some(vec![RS256, RS512, PS384, ES256, EdDSA])),
    ];
    let mut toml = base_toml(&up.url());
    for (name, algs) in &issuers {
        toml.push_str(&format!(
            "[[issuer]]\nname = \"{name}\"\nissuer = \"https://{name}.example.com\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\n",
            srv.url()
        ));
        if let Some(algs) = algs {
            let list: Vec<String> = algs
                .iter()
                .map(|a| format!("\"{}\"", alg_name(*a)))
                .collect();
            toml.push_str(&format!("algorithms = [{}]\n", list.join(", ")));
        }
    }
    toml.push_str("[[route]]\nupstream = \"app\"\nidentity_headers = { \"x-user\" = \"sub\" }\n");
    let h = Harness::start(&toml).await;
    h.wait_ready().await;

    let mut passed = 0;
    for (name, algs) in &issuers {
        let allowed = algs.clone().unwrap_or_else(|| vec![RS256]);
        for key in &keys {
            let sub = format!("{name}-{}", key.kid);
            let token = key.sign(&claims(&format!("https://{name}.example.com"), &sub));
            let r = call(&h, "/", &token).await;
            let what = format!("{:?} token for issuer {name}", key.alg);
            if allowed.contains(&key.alg) {
                assert_passed(&r, &sub, &what);
                passed += 1;
            } else {
                assert_invalid(&r, "the token algorithm is not allowed");
            }
        }
    }
    assert_eq!(passed, 9 + 1 + 4 + 5);
    assert_eq!(
        up.requests(),
        passed,
        "only accepted tokens reach the upstream"
    );

    // Listing an algorithm does not let a key be used with another one: the RSA key published
    // for RS384 refuses an RS512 signature even on the issuer that allows both.
    let rs384 = keys.iter().find(|k| k.alg == RS384).unwrap();
    let t = rs384.sign_as(RS512, "rs384", &claims("https://all.example.com", "x"));
    assert_invalid(
        &call(&h, "/", &t).await,
        "the signing key does not fit the token algorithm",
    );
    // An ES384 header naming the P-256 key is refused the same way.
    let es384 = keys.iter().find(|k| k.alg == ES384).unwrap();
    let t = es384.sign_as(ES384, "es256", &claims("https://all.example.com", "x"));
    assert_invalid(
        &call(&h, "/", &t).await,
        "the signing key does not fit the token algorithm",
    );
    assert_eq!(up.requests(), passed);
}

// ---------------------------------------------------------------------------------------------
// 2. jwks_file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_keys_validate_and_file_changes_are_picked_up() {
    // No RSA key is needed here; `TestKey::new` only reads this one for RSA algorithms.
    let rsa = SigningKey::generate_with_kid(KeyAlg::Es256, "unused").unwrap();
    let a = TestKey::new(Algorithm::ES256, "file-a", &rsa);
    let b = TestKey::new(Algorithm::EdDSA, "file-b", &rsa);
    let c = TestKey::new(Algorithm::ES384, "file-c", &rsa);
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    write_atomic(&file, &jwks_doc(&[&a.jwk]));
    let iss = "https://file-issuer.example.com";
    let toml = format!(
        "{}[[issuer]]\nname = \"file\"\nissuer = \"{iss}\"\njwks_file = \"{{dir}}/keys.json\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\", \"ES384\", \"EdDSA\"]\nrefresh_interval = \"300ms\"\nmin_refresh = \"100ms\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base_toml(&up.url())
    );
    let h = Harness::start_in(dir, &toml).await;
    h.wait_ready().await;

    // A key from the file validates; a key not in it does not.
    let ta = a.sign(&claims(iss, "alice"));
    assert_passed(&call(&h, "/", &ta).await, "alice", "file key a");
    let tb = b.sign(&claims(iss, "bob"));
    assert_invalid(&call(&h, "/", &tb).await, "the signing key is unknown");

    // A key added to the file becomes usable (re-read on the unknown kid, or by the refresh).
    write_atomic(&file, &jwks_doc(&[&a.jwk, &b.jwk]));
    eventually(
        Duration::from_secs(10),
        "key b added to the file never became usable",
        || async { call(&h, "/", &tb).await.status == StatusCode::OK },
    )
    .await;
    assert_passed(&call(&h, "/", &tb).await, "bob", "file key b");

    // A key removed from the file stops validating, even a token accepted (and cached) before:
    // the unknown-kid cooldown is an hour, so this is the periodic re-read of the file.
    write_atomic(&file, &jwks_doc(&[&b.jwk]));
    eventually(
        Duration::from_secs(10),
        "key a removed from the file still validates",
        || async { call(&h, "/", &ta).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_invalid(&call(&h, "/", &ta).await, "the signing key is unknown");

    // A broken file is a failed fetch: the last good keys keep serving.
    let failures = metric(&h, "cae_key_fetch_failures", "file").await;
    std::fs::write(&file, "{ this is not a JWKS").unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken file was never re-read",
        || async { metric(&h, "cae_key_fetch_failures", "file").await >= failures + 2 },
    )
    .await;
    let tb2 = b.sign(&claims(iss, "bob2"));
    assert_passed(&call(&h, "/", &tb2).await, "bob2", "last good key b");

    // Repaired, with a new key: picked up by the periodic re-read.
    write_atomic(&file, &jwks_doc(&[&b.jwk, &c.jwk]));
    let tc = c.sign(&claims(iss, "carol"));
    eventually(
        Duration::from_secs(10),
        "key c in the repaired file never became usable",
        || async { call(&h, "/", &tc).await.status == StatusCode::OK },
    )
    .await;
    assert_passed(&call(&h, "/", &tc).await, "carol", "file key c");
}

// ---------------------------------------------------------------------------------------------
// 3. Periodic refresh and Cache-Control: max-age
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_refresh_follows_max_age_clamped_to_the_configured_bounds() {
    let rsa = SigningKey::generate_with_kid(KeyAlg::Rs256, "k1").unwrap();
    // max-age=0 at first: below min_refresh (1s).
    let srv = JwksServer::start(vec![rsa.public_jwk().clone()], Some(0)).await;
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"https://refresh.example.com\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nrefresh_interval = \"1h\"\nmin_refresh = \"1s\"\nmax_refresh = \"4s\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\n",
        base_toml(&up.url()),
        srv.url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;

    // Phase A, max-age=0 → min_refresh (1s): three fetches.
    srv.wait_fetches(3, Duration::from_secs(20)).await;
    // Phase B, max-age=2 → 2s, inside the bounds (not refresh_interval, not a bound).
    srv.set_max_age(Some(2));
    srv.wait_fetches(srv.fetches() + 3, Duration::from_secs(20))
        .await;
    // Phase C, max-age=86400 → max_refresh (4s).
    srv.set_max_age(Some(86_400));
    srv.wait_fetches(srv.fetches() + 2, Duration::from_secs(30))
        .await;

    // Each interval is decided by the max-age of the fetch that started it.
    let log = srv.fetch_log();
    let mut seen = [0usize; 3];
    for w in log.windows(2) {
        let ((t0, age), (t1, _)) = (w[0], w[1]);
        let (slot, expected) = match age {
            Some(0) => (0, Duration::from_secs(1)),
            Some(2) => (1, Duration::from_secs(2)),
            Some(86_400) => (2, Duration::from_secs(4)),
            other => panic!("unexpected max-age {other:?}"),
        };
        let got = t1 - t0;
        assert!(
            got >= expected - Duration::from_millis(100) && got < expected + Duration::from_millis(900),
            "after a fetch with max-age={age:?} the next came {got:?} later, expected about {expected:?}; log: {:?}",
            log.iter().map(|(t, a)| (*t - log[0].0, *a)).collect::<Vec<_>>()
        );
        seen[slot] += 1;
    }
    assert!(
        seen[0] >= 2 && seen[1] >= 2 && seen[2] >= 1,
        "intervals per phase: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_at_the_provider_becomes_usable_by_periodic_refresh_alone() {
    let k1 = SigningKey::generate_with_kid(KeyAlg::Es256, "k1").unwrap();
    let k2 = SigningKey::generate_with_kid(KeyAlg::Es256, "k2").unwrap();
    // A huge max-age, clamped to max_refresh (1s).
    let srv = JwksServer::start(vec![k1.public_jwk().clone()], Some(86_400)).await;
    let up = EchoUpstream::start(listener().await).unwrap();
    let iss = "https://periodic.example.com";
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{iss}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nmin_refresh = \"200ms\"\nmax_refresh = \"1s\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base_toml(&up.url()),
        srv.url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    assert_passed(
        &call(&h, "/", &k1.sign(None, &claims(iss, "a"))).await,
        "a",
        "k1",
    );

    // The one unknown-kid refetch allowed per hour is spent now, while k2 is not published yet.
    let t2 = k2.sign(None, &claims(iss, "b"));
    let before = srv.fetches();
    assert_invalid(&call(&h, "/", &t2).await, "the signing key is unknown");
    assert!(srv.fetches() > before, "an unknown kid refetches once");
    // Within the cooldown, unknown kids do not fetch: only the refresher does from now on.
    srv.add_key(k2.public_jwk().clone());
    let added = Instant::now();
    let fetches_at_add = srv.fetches();
    eventually(
        Duration::from_secs(15),
        "k2 never became usable",
        || async { call(&h, "/", &t2).await.status == StatusCode::OK },
    )
    .await;
    // Usable within about max_refresh (not 86400s), through a periodic fetch.
    assert!(
        added.elapsed() < Duration::from_secs(5),
        "{:?}",
        added.elapsed()
    );
    assert!(srv.fetches() > fetches_at_add);
    assert_passed(&call(&h, "/", &t2).await, "b", "k2");
}

// ---------------------------------------------------------------------------------------------
// 4. Unknown-kid cooldown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_again_only_after_the_cooldown() {
    // The JWKS max-age (300s) keeps the periodic refresher quiet for the whole test.
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let cooldown = Duration::from_secs(2);
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"RS256\", \"ES256\"]\nunknown_kid_cooldown = \"2s\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base_toml(&up.url()),
        idp.issuer_url(),
        idp.jwks_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let f0 = idp.jwks_fetches();
    assert!(f0 >= 1);
    let stranger = SigningKey::generate_with_kid(KeyAlg::Es256, "stranger").unwrap();
    let stray = |i: usize| {
        stranger.sign(
            Some(json!({"kid": format!("unknown-{i}")})),
            &claims(&idp.issuer_url(), "x"),
        )
    };

    // First unknown kid: exactly one refetch.
    let t0 = Instant::now();
    assert_invalid(
        &call(&h, "/", &stray(0)).await,
        "the signing key is unknown",
    );
    assert_eq!(idp.jwks_fetches(), f0 + 1);

    // Within the cooldown: a key the provider has just published is still unknown, and neither
    // it nor other unknown kids cause a fetch.
    idp.rotate(KeyAlg::Es256);
    let fresh = idp.mint_with(KeyAlg::Es256, "newcomer", json!({}));
    assert_invalid(&call(&h, "/", &fresh).await, "the signing key is unknown");
    for i in 1..6 {
        assert_invalid(
            &call(&h, "/", &stray(i)).await,
            "the signing key is unknown",
        );
    }
    assert_eq!(idp.jwks_fetches(), f0 + 1, "no fetch within the cooldown");
    assert!(
        t0.elapsed() < cooldown,
        "the in-cooldown checks took {:?}, longer than the cooldown: inconclusive",
        t0.elapsed()
    );

    // After the cooldown: one more refetch, and the new key validates.
    eventually(
        Duration::from_secs(15),
        "no refetch after the cooldown",
        || async { call(&h, "/", &fresh).await.status == StatusCode::OK },
    )
    .await;
    assert!(
        t0.elapsed() >= cooldown,
        "refetched after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        idp.jwks_fetches(),
        f0 + 2,
        "exactly one refetch after the cooldown"
    );
    assert_passed(&call(&h, "/", &fresh).await, "newcomer", "new key");

    // And a new cooldown starts.
    for i in 6..10 {
        assert_invalid(
            &call(&h, "/", &stray(i)).await,
            "the signing key is unknown",
        );
    }
    assert_eq!(idp.jwks_fetches(), f0 + 2);
}

// ---------------------------------------------------------------------------------------------
// 5. max_lifetime
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_living_longer_than_max_lifetime_are_refused() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{}\"\ndiscovery = \"{}\"\naudiences = [\"api://cae-demo\"]\nmax_lifetime = \"1h\"\nleeway = \"0s\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base_toml(&up.url()),
        idp.issuer_url(),
        idp.discovery_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let now = now_secs();
    let too_long = "the token lifetime exceeds the allowed maximum";

    // exp - iat exactly the maximum: accepted; one second more: refused.
    let t = idp.mint("at-max", json!({"iat": now, "nbf": now, "exp": now + 3600}));
    assert_passed(
        &call(&h, "/", &t).await,
        "at-max",
        "lifetime = max_lifetime",
    );
    let t = idp.mint("over", json!({"iat": now, "nbf": now, "exp": now + 3601}));
    assert_invalid(&call(&h, "/", &t).await, too_long);
    // A 28-hour CAE token is over a one-hour maximum.
    let t = idp.mint(
        "cae",
        json!({"iat": now, "nbf": now, "exp": now + 28 * 3600}),
    );
    assert_invalid(&call(&h, "/", &t).await, too_long);
    // Issued an hour ago for two hours: still valid by exp, but over the maximum.
    let t = idp.mint(
        "old",
        json!({"iat": now - 3600, "nbf": now - 3600, "exp": now + 3600}),
    );
    assert_invalid(&call(&h, "/", &t).await, too_long);
    // Without iat, the lifetime counts from nbf.
    let t = idp.mint(
        "nbf-ok",
        json!({"iat": null, "nbf": now, "exp": now + 1800}),
    );
    assert_passed(&call(&h, "/", &t).await, "nbf-ok", "lifetime from nbf");
    let t = idp.mint(
        "nbf-over",
        json!({"iat": null, "nbf": now, "exp": now + 3601}),
    );
    assert_invalid(&call(&h, "/", &t).await, too_long);
    // Without either, the lifetime cannot be checked: refused.
    let t = idp.mint("none", json!({"iat": null, "nbf": null, "exp": now + 600}));
    assert_invalid(&call(&h, "/", &t).await, "the token lacks the iat claim");
    assert_eq!(up.requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Entra v1 issuer template
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sts_windows_net_template_accepts_listed_tenants_only() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"entra-v1\"\nissuer = \"https://sts.windows.net/{{tenantid}}/\"\ntenants = [\"t1\", \"3f0c1b7e-0000-4000-8000-000000000001\"]\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\n[[route]]\nupstream = \"app\"\nissuers = [\"entra-v1\"]\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base_toml(&up.url()),
        idp.jwks_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    for (tenant, sub) in [("t1", "a"), ("3f0c1b7e-0000-4000-8000-000000000001", "b")] {
        let t = idp.mint(
            sub,
            json!({"iss": format!("https://sts.windows.net/{tenant}/"), "tid": tenant}),
        );
        assert_passed(&call(&h, "/", &t).await, sub, tenant);
    }
    for iss in [
        "https://sts.windows.net/t2/",
        "https://sts.windows.net/t1x/",
        "https://sts.windows.net/xt1/",
        "https://sts.windows.net//",
        "https://sts.windows.net/t1/extra/",
        "https://sts.windows.net/t2/t1/",
        "https://login.microsoftonline.com/t1/v2.0",
        "http://sts.windows.net/t1/",
    ] {
        let t = idp.mint("z", json!({ "iss": iss }));
        let r = call(&h, "/", &t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{iss}");
        assert_invalid(&r, "the token issuer is not trusted");
    }
    assert_eq!(up.requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// 7. realm and authorization_uri in challenges
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_configured_realm_and_authorization_uri_appear_in_challenges() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let idp2 = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let auth_uri = "https://login.example.com/t1/oauth2/v2.0/authorize";
    let toml = format!(
        r#"{base}
[[issuer]]
name = "contoso"
issuer = "{iss}"
discovery = "{disc}"
audiences = ["api://cae-demo"]
realm = "contoso-api"
authorization_uri = "{auth_uri}"
[[issuer]]
name = "plain"
issuer = "{iss2}"
discovery = "{disc2}"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
issuers = ["contoso"]
[[route]]
name = "scoped"
path_prefix = "/scoped"
upstream = "app"
issuers = ["contoso"]
scopes = ["orders.write"]
[[route]]
name = "ctx"
path_prefix = "/ctx"
upstream = "app"
issuers = ["contoso"]
cae = {{ auth_context = "c1" }}
[[route]]
name = "ctx2"
path_prefix = "/plain"
upstream = "app"
issuers = ["plain"]
cae = {{ auth_context = "c1" }}
"#,
        base = base_toml(&up.url()),
        iss = idp.issuer_url(),
        disc = idp.discovery_url(),
        iss2 = idp2.issuer_url(),
        disc2 = idp2.discovery_url(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let c = client();
    let realm = "contoso-api";

    // No token: the bare challenge with the realm (RFC 6750 §3).
    let r = get(&c, &h.url("public", "/api"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="contoso-api""#)
    );
    assert_eq!(r.json()["code"], "MissingToken");

    // Invalid tokens, whether or not they name the issuer.
    let now = now_secs();
    let expired = idp.mint(
        "a",
        json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
    );
    assert_invalid_in(
        &call(&h, "/api", &expired).await,
        realm,
        "the token is expired",
    );
    assert_invalid_in(
        &call(&h, "/api", "not-a-jwt").await,
        realm,
        "the token is malformed: a JWT has exactly three segments",
    );

    // Missing scope: 403 with the realm.
    let r = call(&h, "/scoped", &idp.mint("a", json!({"scp": "orders.read"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="contoso-api", error="insufficient_scope", scope="orders.write""#)
    );

    // Claims challenge to a CAE client: configured realm and authorization_uri, in this order.
    let acrs_c1 = "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19";
    let r = call(&h, "/ctx", &idp.mint("a", json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let expected = format!(
        r#"Bearer realm="contoso-api", authorization_uri="{auth_uri}", error="insufficient_claims", claims="{acrs_c1}""#
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(r.json()["code"], "InsufficientAuthenticationContext");
    // A client without cp1 gets invalid_token with the realm instead.
    let r = call(&h, "/ctx", &idp.mint("a", json!({"xms_cc": []}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="contoso-api", error="invalid_token", error_description="authentication context c1 is required""#
        )
    );
    assert_eq!(r.json()["error"], "invalid_token");
    assert_eq!(
        call(&h, "/ctx", &idp.mint("a", json!({"acrs": ["c1"]})))
            .await
            .status,
        StatusCode::OK
    );

    // An issuer without realm or authorization_uri: empty realm, authorize URL from discovery.
    let r = call(&h, "/plain", &idp2.mint("a", json!({}))).await;
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{}", error="insufficient_claims", claims="{acrs_c1}""#,
        idp2.authorize_url()
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(
        get(&c, &h.url("public", "/plain"), &[])
            .await
            .header("www-authenticate"),
        Some(r#"Bearer realm="""#)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Reload: the key file is read again, a new key policy applies at once
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_jwks_file_and_applies_a_changed_key_policy() {
    let rsa = SigningKey::generate_with_kid(KeyAlg::Es256, "unused").unwrap();
    let a = TestKey::new(Algorithm::ES256, "reload-a", &rsa);
    let b = TestKey::new(Algorithm::ES256, "reload-b", &rsa);
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    write_atomic(&file, &jwks_doc(&[&a.jwk]));
    let srv = JwksServer::start(vec![rsa.public_jwk().clone()], None).await;
    let remote_iss = "https://remote.example.com";
    let config = |cooldown: &str| {
        format!(
            "{}[[issuer]]\nname = \"file\"\nissuer = \"https://file.example.com\"\njwks_file = \"{{dir}}/keys.json\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nunknown_kid_cooldown = \"1h\"\n[[issuer]]\nname = \"remote\"\nissuer = \"{remote_iss}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nunknown_kid_cooldown = \"{cooldown}\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
            base_toml(&up.url()),
            srv.url()
        )
    };
    let h = Harness::start_in(dir, &config("1h")).await;
    h.wait_ready().await;
    let ta = a.sign(&claims("https://file.example.com", "alice"));
    assert_passed(&call(&h, "/", &ta).await, "alice", "file key a");

    // Key a leaves the file, key b arrives. Nothing re-reads it for an hour; a reload does, as
    // it re-reads certificate files.
    write_atomic(&file, &jwks_doc(&[&b.jwk]));
    assert_passed(
        &call(&h, "/", &ta).await,
        "alice",
        "no re-read before the reload",
    );
    h.write_config(&config("1h"));
    h.proxy.reload().unwrap();
    eventually(
        Duration::from_secs(10),
        "key a, removed from the file, still validates after the reload",
        || async { call(&h, "/", &ta).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_invalid(&call(&h, "/", &ta).await, "the signing key is unknown");
    let tb = b.sign(&claims("https://file.example.com", "bob"));
    assert_passed(&call(&h, "/", &tb).await, "bob", "file key b");

    // The remote issuer: an unknown kid refetches once, then the hour-long cooldown holds.
    let unknown = |n: u32| {
        let k = TestKey::new(Algorithm::ES256, &format!("stranger-{n}"), &rsa);
        k.sign(&claims(remote_iss, "mallory"))
    };
    srv.wait_fetches(1, Duration::from_secs(10)).await;
    let start = srv.fetches();
    assert_invalid(
        &call(&h, "/", &unknown(1)).await,
        "the signing key is unknown",
    );
    assert_eq!(
        srv.fetches(),
        start + 1,
        "one refetch for the first unknown kid"
    );
    assert_invalid(
        &call(&h, "/", &unknown(2)).await,
        "the signing key is unknown",
    );
    assert_eq!(srv.fetches(), start + 1, "none within the cooldown");

    // A reload that shortens the cooldown applies at once (the key set is kept, its policy is
    // replaced, and its refresher fetches on the new schedule).
    h.write_config(&config("0s"));
    h.proxy.reload().unwrap();
    srv.wait_fetches(start + 2, Duration::from_secs(10)).await;
    let after_reload = srv.fetches();
    assert_invalid(
        &call(&h, "/", &unknown(3)).await,
        "the signing key is unknown",
    );
    assert_eq!(
        srv.fetches(),
        after_reload + 1,
        "the new cooldown (0s) applies"
    );
    assert_invalid(
        &call(&h, "/", &unknown(4)).await,
        "the signing key is unknown",
    );
    assert_eq!(srv.fetches(), after_reload + 2);
}

#[tokio::test]
async fn an_invalid_tokens_challenge_names_the_issuer_its_iss_names_when_the_route_accepts_it() {
    let first = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let second = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        r#"{base}
[[issuer]]
name = "first"
issuer = "{i1}"
jwks_uri = "{i1}/jwks"
audiences = ["api://cae-demo"]
realm = "first-realm"
[[issuer]]
name = "second"
issuer = "{i2}"
jwks_uri = "{i2}/jwks"
audiences = ["api://cae-demo"]
realm = "second-realm"
[[route]]
name = "both"
path_prefix = "/both"
upstream = "app"
issuers = ["first", "second"]
[[route]]
name = "first-only"
path_prefix = "/first"
upstream = "app"
issuers = ["first"]
"#,
        base = base_toml(&up.url()),
        i1 = first.issuer_url(),
        i2 = second.issuer_url(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let now = now_secs();
    let expired = second.mint("bob", json!({"iat": now - 7200, "exp": now - 3600}));
    // The route accepts the second issuer: its realm, although it is not the route's first.
    assert_invalid_in(
        &call(&h, "/both", &expired).await,
        "second-realm",
        "the token is expired",
    );
    // A route that does not accept it answers with its own first issuer.
    assert_invalid_in(
        &call(&h, "/first", &expired).await,
        "first-realm",
        "the token is expired",
    );
    // An unconfigured `iss` selects nothing.
    let stranger = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    assert_invalid_in(
        &call(&h, "/both", &stranger.mint("eve", json!({}))).await,
        "first-realm",
        "the token issuer is not trusted",
    );
}
