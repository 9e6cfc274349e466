//! Sender-constrained tokens end to end: DPoP (RFC 9449) with proofs made by panva's `dpop`
//! library (npm, run with node by tests/e2e/dpop/proof_helper.mjs), certificate-bound tokens
//! (RFC 8705) over an mTLS listener and through a trusted proxy's `Client-Cert` (RFC 9440) or
//! `X-Forwarded-Client-Cert` header, and both with CAE: the real proxy, the development issuer
//! (tokens with `cnf.jkt` / `cnf.x5t#S256`), the echo upstream, real TLS, a real Redis for the
//! fleet's shared replay detection.
//!
//! The proofs need node and the `dpop` package: `CAE_DPOP_NODE_DIR` names the directory whose
//! `node_modules` holds it (.ci/run installs it). Without them the DPoP tests say so and pass,
//! unless `CAE_REQUIRE_DPOP=1` (CI), where that is a failure. The certificate tests need neither.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::redis_server::Redis;
use crate::common::*;
use base64::Engine;
use bytes::Bytes;
use cae_proxy::auth::dpop::NonceKey;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// The algorithms a route accepts when it does not say (`algs` of its challenges).
const DEFAULT_ALGS: &str = "ES256 ES384 EdDSA Ed25519 PS256 RS256";
pub(crate) const NONCE_SECRET: &str = "dpop-test-nonce-secret";
pub(crate) const NONCE_ROTATION: u64 = 60;
const ADMIN: &str = "Bearer admin-secret";

// ---- the `dpop` library, driven over stdin/stdout ----

/// A node process running tests/e2e/dpop/proof_helper.mjs with panva's `dpop`.
pub(crate) struct Dpop {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One client key made by the library: its id in the helper and its RFC 7638 thumbprint.
#[derive(Clone)]
pub(crate) struct Key {
    id: u64,
    pub(crate) jkt: String,
}

impl Dpop {
    /// The helper, or `None` (with a message) where node or the package is missing.
    pub(crate) fn start() -> Option<Dpop> {
        let required = std::env::var("CAE_REQUIRE_DPOP").as_deref() == Ok("1");
        let dir = std::env::var("CAE_DPOP_NODE_DIR")
            .ok()
            .filter(|d| !d.is_empty());
        let missing = |why: String| {
            assert!(!required, "CAE_REQUIRE_DPOP=1 but {why}");
            eprintln!("skipping DPoP proofs: {why} (set CAE_DPOP_NODE_DIR to a directory with node_modules/dpop; .ci/run does)");
            None
        };
        let Some(dir) = dir else {
            return missing("CAE_DPOP_NODE_DIR is not set".into());
        };
        let script = include_str!("dpop/proof_helper.mjs");
        let child = Command::new(std::env::var("CAE_NODE").unwrap_or_else(|_| "node".into()))
            .args(["--input-type=module", "-e", script])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return missing(format!("node cannot be started: {e}")),
        };
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = Dpop {
            child,
            stdin,
            stdout,
        };
        match d.try_call(json!({"op": "key", "alg": "ES256"})) {
            Ok(_) => Some(d),
            Err(e) => missing(format!("the dpop package does not work from {dir}: {e}")),
        }
    }

    fn try_call(&mut self, req: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{req}").map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
        match v.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok(v),
        }
    }

    fn call(&mut self, req: Value) -> Value {
        self.try_call(req.clone())
            .unwrap_or_else(|e| panic!("dpop helper failed on {req}: {e}"))
    }

    pub(crate) fn key(&mut self, alg: &str) -> Key {
        let v = self.call(json!({"op": "key", "alg": alg}));
        Key {
            id: v["key"].as_u64().unwrap(),
            jkt: v["jkt"].as_str().unwrap().to_string(),
        }
    }

    /// The library's proof for `htm` `htu`, bound to `token` (`ath`), with `nonce`.
    pub(crate) fn proof(
        &mut self,
        key: &Key,
        htm: &str,
        htu: &str,
        token: &str,
        nonce: Option<&str>,
    ) -> String {
        self.craft(key, htm, htu, json!({"token": token, "nonce": nonce}))
    }

    /// A proof made by the library and then changed by `extra` (see the helper's `craft`; with
    /// none of its change members it is the library's proof as is).
    fn craft(&mut self, key: &Key, htm: &str, htu: &str, extra: Value) -> String {
        let mut req = json!({"op": "proof", "key": key.id, "htm": htm, "htu": htu});
        let changes = ["header", "claims", "sign_key", "signature", "private_jwk"];
        for (k, v) in extra.as_object().unwrap() {
            if changes.contains(&k.as_str()) {
                req["op"] = json!("craft");
            }
            req[k] = v.clone();
        }
        self.call(req)["proof"].as_str().unwrap().to_string()
    }
}

impl Drop for Dpop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the world of a test ----

struct World {
    idp: DevIssuer,
    _up: EchoUpstream,
    h: Harness,
    certs: Certs,
}

/// What differs between the proxies of these tests.
#[derive(Clone, Copy)]
struct Opts {
    /// `127.0.0.1` (every test client) is a trusted proxy.
    trusted: bool,
    /// `server.client_cert_header`.
    cert_header: &'static str,
}

const TRUSTED: Opts = Opts {
    trusted: true,
    cert_header: "client-cert",
};

fn config(idp: &DevIssuer, up: &EchoUpstream, certs: &Certs, o: Opts) -> String {
    format!(
        r#"
[server]
log_level = "warn"
trusted_proxies = [{trusted}]
client_cert_header = "{cert_header}"
dpop_nonce_secret = "{NONCE_SECRET}"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "authz"
address = "127.0.0.1:0"
role = "authz"
[[listener]]
name = "mtls"
address = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "optional"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
algorithms = ["RS256", "ES256"]
realm = ""

[[route]]
name = "strict"
path_prefix = "/strict"
upstream = "app"
sender_constraint = "required"
dpop_algorithms = ["ES256"]

[[route]]
name = "nonce"
path_prefix = "/nonce"
upstream = "app"
dpop_nonce = true
dpop_nonce_rotation = "{NONCE_ROTATION}s"

[[route]]
name = "legacy"
path_prefix = "/legacy"
upstream = "app"
sender_constraint = "none"

[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
"#,
        trusted = if o.trusted { "\"127.0.0.1/32\"" } else { "" },
        cert_header = o.cert_header,
        cert = certs.cert.display(),
        key = certs.key.display(),
        ca = certs.ca.display(),
        up = up.url(),
        iss = idp.issuer_url(),
    )
}

async fn world(o: Opts) -> World {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let h = Harness::start_in(dir, &config(&idp, &up, &certs, o)).await;
    h.wait_ready().await;
    World {
        idp,
        _up: up,
        h,
        certs,
    }
}

impl World {
    /// A token bound to the DPoP key `jkt` (`cnf.jkt`).
    fn dpop_token(&self, jkt: &str) -> String {
        self.idp.mint("alice", json!({"cnf": {"jkt": jkt}}))
    }

    fn htu(&self, path: &str) -> String {
        self.h.url("public", path)
    }
}

async fn call(url: &str, headers: &[(&str, &str)]) -> Reply {
    get(&client(), url, headers).await
}

/// `GET url` with `Authorization: DPoP <token>` and `DPoP: <proof>`.
async fn dpop_get(url: &str, token: &str, proof: &str) -> Reply {
    let auth = format!("DPoP {token}");
    call(url, &[("authorization", &auth), ("dpop", proof)]).await
}

/// The exact answer to a refused DPoP request.
fn assert_refused(r: &Reply, algs: &str, error: &str, description: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"DPoP algs="{algs}", realm="", error="{error}", error_description="{description}""#
            )
            .as_str()
        ),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["error"], error);
}

fn sha256_b64(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// The DER of the first certificate of a PEM file.
fn der(path: &std::path::Path) -> Vec<u8> {
    cae_proxy::tls::load_certs(path).unwrap()[0].to_vec()
}

// ---- DPoP ----

#[tokio::test]
async fn proofs_of_the_dpop_library_pass_for_every_algorithm_and_each_once() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let url = w.htu("/api/orders");
    for alg in ["ES256", "PS256", "RS256", "Ed25519"] {
        let key = d.key(alg);
        let token = w.dpop_token(&key.jkt);
        // The first request verifies the token, the second takes it from the cache: each still
        // needs its own fresh proof.
        let mut proofs = Vec::new();
        for _ in 0..2 {
            let proof = d.proof(&key, "GET", &url, &token, None);
            let r = dpop_get(&url, &token, &proof).await;
            assert_eq!(r.status, StatusCode::OK, "{alg}: {}", r.text());
            proofs.push(proof);
        }
        for proof in proofs {
            assert_refused(
                &dpop_get(&url, &token, &proof).await,
                DEFAULT_ALGS,
                "invalid_dpop_proof",
                "the DPoP proof was used before",
            );
        }
    }
    // A POST with its own proof.
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    let proof = d.proof(&key, "POST", &url, &token, None);
    let auth = format!("DPoP {token}");
    let r = send(
        &client(),
        Method::POST,
        &url,
        &[("authorization", &auth), ("dpop", &proof)],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn every_rfc9449_check_refused_one_at_a_time() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let url = w.htu("/api/x");
    let key = d.key("ES256");
    let other = d.key("ES256");
    let ps = d.key("PS256");
    let token = w.dpop_token(&key.jkt);
    let now = cae_proxy::dev::now_secs();
    // The library's proof for this request, then one change.
    let p = |d: &mut Dpop, mut change: Value| {
        change["token"] = json!(token);
        d.craft(&key, "GET", &url, change)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "typ JWT",
            p(&mut d, json!({"header": {"typ": "JWT"}})),
            "the DPoP proof typ is not dpop+jwt",
        ),
        (
            "no typ",
            p(&mut d, json!({"header": {"typ": null}})),
            "the DPoP proof typ is not dpop+jwt",
        ),
        (
            "alg none",
            p(
                &mut d,
                json!({"header": {"alg": "none"}, "signature": "none"}),
            ),
            "the DPoP proof is malformed: empty segment",
        ),
        (
            "alg none, a signature",
            p(&mut d, json!({"header": {"alg": "none"}})),
            "the DPoP proof algorithm is not allowed",
        ),
        (
            "alg HS256",
            p(&mut d, json!({"header": {"alg": "HS256"}})),
            "the DPoP proof algorithm is not allowed",
        ),
        (
            "no jwk",
            p(&mut d, json!({"header": {"jwk": null}})),
            "the DPoP proof jwk is missing or not a public key of its algorithm",
        ),
        (
            "private jwk",
            p(&mut d, json!({"private_jwk": true})),
            "the DPoP proof jwk contains a private key",
        ),
        (
            "signed by another key",
            p(&mut d, json!({"sign_key": other.id})),
            "the DPoP proof signature is invalid",
        ),
        (
            "corrupt signature",
            p(&mut d, json!({"signature": "corrupt"})),
            "the DPoP proof signature is invalid",
        ),
        (
            "critical header",
            p(&mut d, json!({"header": {"crit": ["x"], "x": 1}})),
            "the DPoP proof is malformed: unsupported critical header",
        ),
        (
            "no jti",
            p(&mut d, json!({"claims": {"jti": null}})),
            "the DPoP proof lacks the jti claim",
        ),
        (
            "no htm",
            p(&mut d, json!({"claims": {"htm": null}})),
            "the DPoP proof lacks the htm claim",
        ),
        (
            "no htu",
            p(&mut d, json!({"claims": {"htu": null}})),
            "the DPoP proof lacks the htu claim",
        ),
        (
            "no iat",
            p(&mut d, json!({"claims": {"iat": null}})),
            "the DPoP proof lacks the iat claim",
        ),
        (
            "htm POST",
            d.proof(&key, "POST", &url, &token, None),
            "the DPoP proof htm does not match the request method",
        ),
        (
            "htm lower-case",
            d.proof(&key, "get", &url, &token, None),
            "the DPoP proof htm does not match the request method",
        ),
        (
            "htu other path",
            d.proof(&key, "GET", &w.htu("/api/y"), &token, None),
            "the DPoP proof htu does not match the request URI",
        ),
        (
            "htu other host",
            d.proof(&key, "GET", "http://api.example.com/api/x", &token, None),
            "the DPoP proof htu does not match the request URI",
        ),
        (
            "htu https",
            d.proof(
                &key,
                "GET",
                &url.replace("http://", "https://"),
                &token,
                None,
            ),
            "the DPoP proof htu does not match the request URI",
        ),
        (
            "iat too old",
            p(&mut d, json!({"at": now - 120})),
            "the DPoP proof iat is outside the accepted window",
        ),
        (
            "iat in the future",
            p(&mut d, json!({"at": now + 120})),
            "the DPoP proof iat is outside the accepted window",
        ),
        (
            "no ath",
            d.craft(&key, "GET", &url, json!({})),
            "the DPoP proof lacks the ath claim",
        ),
        (
            "ath of another token",
            d.proof(&key, "GET", &url, "another-token", None),
            "the DPoP proof ath does not match the access token",
        ),
        (
            "not a JWT",
            "abc".to_string(),
            "the DPoP proof is malformed: a JWT has exactly three segments",
        ),
    ];
    for (name, proof, description) in cases {
        let r = dpop_get(&url, &token, &proof).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_refused(&r, DEFAULT_ALGS, "invalid_dpop_proof", description);
    }
    // No DPoP header, or two.
    let auth = format!("DPoP {token}");
    assert_refused(
        &call(&url, &[("authorization", &auth)]).await,
        DEFAULT_ALGS,
        "invalid_dpop_proof",
        "the DPoP proof header is missing",
    );
    let (a, b) = (
        d.proof(&key, "GET", &url, &token, None),
        d.proof(&key, "GET", &url, &token, None),
    );
    assert_refused(
        &call(
            &url,
            &[("authorization", &auth), ("dpop", &a), ("dpop", &b)],
        )
        .await,
        DEFAULT_ALGS,
        "invalid_dpop_proof",
        "more than one DPoP proof header",
    );
    // An algorithm outside the route's list: its own `algs`.
    let strict = w.htu("/strict/x");
    let ps_token = w.dpop_token(&ps.jkt);
    assert_refused(
        &dpop_get(
            &strict,
            &ps_token,
            &d.proof(&ps, "GET", &strict, &ps_token, None),
        )
        .await,
        "ES256",
        "invalid_dpop_proof",
        "the DPoP proof algorithm is not allowed",
    );
    // The binding: a valid proof of another key than `cnf.jkt`, a token without `cnf`.
    assert_refused(
        &dpop_get(&url, &token, &d.proof(&other, "GET", &url, &token, None)).await,
        DEFAULT_ALGS,
        "invalid_token",
        "the DPoP proof key is not the key the access token is bound to",
    );
    let unbound = w.idp.mint("alice", json!({}));
    assert_refused(
        &dpop_get(&url, &unbound, &d.proof(&key, "GET", &url, &unbound, None)).await,
        DEFAULT_ALGS,
        "invalid_token",
        "the access token is not bound to a DPoP key",
    );
    // An invalid token with a valid proof: a DPoP challenge too.
    let expired = w
        .idp
        .mint("alice", json!({"cnf": {"jkt": key.jkt}, "exp": now - 3600}));
    assert_refused(
        &dpop_get(&url, &expired, &d.proof(&key, "GET", &url, &expired, None)).await,
        DEFAULT_ALGS,
        "invalid_token",
        "the token is expired",
    );
    // After all these refusals the right proof still passes: none of them was recorded.
    let r = dpop_get(&url, &token, &d.proof(&key, "GET", &url, &token, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Metrics and reasons: each refusal kind is counted.
    let m = call(&w.h.admin_url("/metrics"), &[]).await.text();
    for line in [
        r#"cae_sender_checks_total{method="dpop",result="refused",reason="dpop_htm"} 2"#,
        r#"cae_sender_checks_total{method="dpop",result="refused",reason="dpop_key_mismatch"} 1"#,
        r#"cae_sender_checks_total{method="dpop",result="ok",reason=""} 1"#,
        r#"cae_requests_total{route="api",status="401",decision="deny",reason="sender_binding",role="proxy"} 2"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    assert!(
        m.contains(r#"cae_requests_total{route="api",status="401",decision="deny",reason="invalid_dpop_proof",role="proxy"}"#),
        "{m}"
    );
}

/// The proxy's nonce key, and a time not within 5 s of a rotation period's end (waited for), so
/// that the proxy's clock is in the test's period.
pub(crate) async fn nonce_key_mid_period() -> (NonceKey, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cae_proxy::dev::now_secs() % NONCE_ROTATION as i64 >= NONCE_ROTATION as i64 - 5 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (
        NonceKey::new(NONCE_SECRET.as_bytes()),
        cae_proxy::dev::now_secs(),
    )
}

#[tokio::test]
async fn nonce_flow_and_rotation() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let url = w.htu("/nonce/x");
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    // Without a nonce: 401 use_dpop_nonce and the nonce to use.
    let r = dpop_get(&url, &token, &d.proof(&key, "GET", &url, &token, None)).await;
    assert_refused(
        &r,
        DEFAULT_ALGS,
        "use_dpop_nonce",
        "the DPoP proof must carry the nonce this server provides",
    );
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_string();
    // The retry with it passes, and needs no new nonce.
    let r = dpop_get(
        &url,
        &token,
        &d.proof(&key, "GET", &url, &token, Some(&nonce)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("dpop-nonce"), None);
    // A forged one is refused like a missing one.
    let r = dpop_get(
        &url,
        &token,
        &d.proof(&key, "GET", &url, &token, Some("AAAA")),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    // Rotation: a nonce of the previous period still passes and the answer brings the current
    // one; one of the period before is stale.
    let (k, now) = nonce_key_mid_period().await;
    let previous = k.issue(NONCE_ROTATION, now - NONCE_ROTATION as i64);
    let r = dpop_get(
        &url,
        &token,
        &d.proof(&key, "GET", &url, &token, Some(&previous)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let fresh = r.header("dpop-nonce").expect("a fresh nonce").to_string();
    assert_ne!(fresh, previous);
    let older = k.issue(NONCE_ROTATION, now - 2 * NONCE_ROTATION as i64);
    let r = dpop_get(
        &url,
        &token,
        &d.proof(&key, "GET", &url, &token, Some(&older)),
    )
    .await;
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    let r = dpop_get(
        &url,
        &token,
        &d.proof(&key, "GET", &url, &token, Some(&fresh)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Routes without nonces ignore one.
    let api = w.htu("/api/x");
    let r = dpop_get(
        &api,
        &token,
        &d.proof(&key, "GET", &api, &token, Some(&fresh)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authz_check_hands_the_next_nonce_to_the_gateway_for_the_client() {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    let auth = format!("DPoP {token}");
    // The original request the gateway asks about: GET http://<public>/nonce/x.
    let url = w.htu("/nonce/x");
    let host = w.h.proxy.addr("public").unwrap().to_string();
    let (k, now) = nonce_key_mid_period().await;
    let previous = k.issue(NONCE_ROTATION, now - NONCE_ROTATION as i64);
    let current = k.issue(NONCE_ROTATION, now);
    let http_check = |proof: String| {
        let (check, auth, host) = (
            w.h.url("authz", "/authz/nonce/x"),
            auth.clone(),
            host.clone(),
        );
        async move {
            let h = [
                ("authorization", auth.as_str()),
                ("dpop", proof.as_str()),
                ("host", host.as_str()),
                ("x-forwarded-proto", "http"),
            ];
            call(&check, &h).await
        }
    };
    // Envoy's HTTP check (path appended): a proof with the previous period's nonce is allowed
    // and the answer carries the current nonce; with the current one, no header.
    let r = http_check(d.proof(&key, "GET", &url, &token, Some(&previous))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("dpop-nonce"), Some(current.as_str()));
    let r = http_check(d.proof(&key, "GET", &url, &token, Some(&current))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("dpop-nonce"), None);
    // Envoy's gRPC Check: the nonce is a header to add to the client's response.
    let mut to_client = Vec::new();
    for nonce in [&previous, &current] {
        let proof = d.proof(&key, "GET", &url, &token, Some(nonce));
        let checked = crate::authz::check_at(
            w.h.proxy.addr("authz").unwrap(),
            None,
            crate::authz::check_request(
                "GET",
                &host,
                "/nonce/x",
                &[("authorization", &auth), ("dpop", &proof)],
                "127.0.0.1",
            ),
        )
        .await
        .unwrap();
        assert_eq!(checked.status.map(|s| s.code), Some(0), "allowed");
        let Some(HttpResponse::OkResponse(ok)) = checked.http_response else {
            panic!("no OkHttpResponse")
        };
        to_client.push(
            ok.response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        to_client,
        [vec![("dpop-nonce".to_string(), current.clone())], vec![]]
    );
}

#[tokio::test]
async fn htu_is_compared_after_normalisation() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    let addr = w.h.proxy.addr("public").unwrap();
    let port = addr.port();
    let url = w.htu("/api/docs/x");
    for htu in [
        format!("HTTP://127.0.0.1:{port}/api/docs/x"),
        format!("http://127.0.0.1:{port}/api/docs/x?page=2#top"),
        format!("http://127.0.0.1:{port}/api/./docs/y/../x"),
        format!("http://127.0.0.1:{port}/api/%64ocs/%78"),
    ] {
        let r = dpop_get(&url, &token, &d.proof(&key, "GET", &htu, &token, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{htu}: {}", r.text());
    }
    // The request's own query is ignored too.
    let r = dpop_get(
        &format!("{url}?q=1"),
        &token,
        &d.proof(&key, "GET", &url, &token, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for htu in [
        format!("http://127.0.0.1:{port}/api/docs/x/"),
        format!("http://127.0.0.1:{}/api/docs/x", port + 1),
        format!("http://127.0.0.1:{port}/API/docs/x"),
        format!("http://127.0.0.1:{port}/api/docs%2Fx"),
    ] {
        let r = dpop_get(&url, &token, &d.proof(&key, "GET", &htu, &token, None)).await;
        assert_refused(
            &r,
            DEFAULT_ALGS,
            "invalid_dpop_proof",
            "the DPoP proof htu does not match the request URI",
        );
    }
    // Behind a trusted proxy that terminated TLS: the client's scheme and host.
    let public = "https://api.example.com/api/docs/x";
    let auth = format!("DPoP {token}");
    let forwarded = |proof: String| async move {
        call(
            &url,
            &[
                ("authorization", auth.as_str()),
                ("dpop", proof.as_str()),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example.com"),
            ],
        )
        .await
    };
    let r = forwarded(d.proof(&key, "GET", public, &token, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The same headers from an untrusted peer name nothing.
    let untrusted = world(Opts {
        trusted: false,
        ..TRUSTED
    })
    .await;
    let token = untrusted.dpop_token(&key.jkt);
    let auth = format!("DPoP {token}");
    let r = call(
        &untrusted.htu("/api/docs/x"),
        &[
            ("authorization", auth.as_str()),
            ("dpop", &d.proof(&key, "GET", public, &token, None)),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_dpop_proof");
}

#[tokio::test]
async fn schemes_and_policies() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    let bearer = format!("Bearer {token}");
    // A DPoP-bound token sent as a bearer token (RFC 9449 §7.2).
    let r = call(&w.htu("/api/x"), &[("authorization", &bearer)]).await;
    assert_refused(
        &r,
        DEFAULT_ALGS,
        "invalid_token",
        "a DPoP-bound access token must be sent with the DPoP scheme",
    );
    // `required`: an unbound bearer token, and no token at all, get the route's DPoP challenge.
    let plain = format!("Bearer {}", w.idp.mint("alice", json!({})));
    let r = call(&w.htu("/strict/x"), &[("authorization", &plain)]).await;
    assert_refused(
        &r,
        "ES256",
        "invalid_token",
        "this route requires a sender-constrained access token (DPoP or certificate-bound)",
    );
    let r = call(&w.htu("/strict/x"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"DPoP algs="ES256", realm="""#)
    );
    // `allowed` (the default): unbound bearer tokens pass; no token is a Bearer challenge.
    assert_eq!(
        call(&w.htu("/api/x"), &[("authorization", &plain)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&w.htu("/api/x"), &[]).await.header("www-authenticate"),
        Some(r#"Bearer realm="""#)
    );
    // `none`: cnf is ignored and the DPoP scheme is not one the route knows.
    assert_eq!(
        call(&w.htu("/legacy/x"), &[("authorization", &bearer)])
            .await
            .status,
        StatusCode::OK
    );
    let legacy = w.htu("/legacy/x");
    let r = dpop_get(
        &legacy,
        &token,
        &d.proof(&key, "GET", &legacy, &token, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="""#));
    // The scheme name is case-insensitive.
    let url = w.htu("/api/x");
    let r = call(
        &url,
        &[
            ("authorization", &format!("dpop {token}")),
            ("dpop", &d.proof(&key, "GET", &url, &token, None)),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_revoked_dpop_bound_token_gets_a_dpop_claims_challenge() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let key = d.key("ES256");
    let iat = cae_proxy::dev::now_secs() - 60;
    let cae = w.idp.mint(
        "alice",
        json!({"cnf": {"jkt": key.jkt}, "sid": "s1", "iat": iat}),
    );
    let legacy = w.idp.mint(
        "alice",
        json!({"cnf": {"jkt": key.jkt}, "sid": "s1", "iat": iat, "xms_cc": []}),
    );
    let url = w.htu("/api/x");
    assert_eq!(
        dpop_get(&url, &cae, &d.proof(&key, "GET", &url, &cae, None))
            .await
            .status,
        StatusCode::OK
    );
    let r = send(
        &client(),
        Method::POST,
        &w.h.admin_url("/admin/revoke"),
        &[("authorization", ADMIN), ("content-type", "application/json")],
        Bytes::from(
            json!({"key": {"type": "session", "iss": w.idp.issuer_url(), "sid": "s1"}, "at": iat + 30})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = dpop_get(&url, &cae, &d.proof(&key, "GET", &url, &cae, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let claims = cae_proxy::auth::challenge::nbf_claims(iat + 30);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            r#"DPoP algs="{DEFAULT_ALGS}", realm="", authorization_uri="{}", error="insufficient_claims", claims="{claims}""#,
            w.idp.authorize_url()
        )
    );
    assert_eq!(r.json()["error"], "insufficient_claims");
    // A client without cp1 must sign in again: invalid_token, still in the DPoP scheme.
    let r = dpop_get(&url, &legacy, &d.proof(&key, "GET", &url, &legacy, None)).await;
    assert_refused(
        &r,
        DEFAULT_ALGS,
        "invalid_token",
        "the token was issued before a revocation of its subject, session or id",
    );
    // The token the client gets by answering the challenge passes, with a new proof.
    let renewed = w
        .idp
        .mint_for_challenge(
            "alice",
            json!({"cnf": {"jkt": key.jkt}, "sid": "s1"}),
            &claims,
        )
        .unwrap();
    let r = dpop_get(&url, &renewed, &d.proof(&key, "GET", &url, &renewed, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

// ---- fleet: one replay cache for every replica ----

fn replica_toml(w: &World, redis: &Redis, prefix: &str, dir: &std::path::Path) -> String {
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
backend = "redis"
redis_url = "{url}"
key_prefix = "{prefix}"
path = "{dir}/state.redb"
redis_timeout = "500ms"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
upstream = "app"
"#,
        url = redis.url(),
        dir = dir.display(),
        up = w._up.url(),
        iss = w.idp.issuer_url(),
    )
}

#[tokio::test]
async fn a_proof_replayed_at_another_replica_is_refused_and_redis_down_fails_closed() {
    let Some(mut d) = Dpop::start() else { return };
    let w = world(TRUSTED).await;
    let mut redis = Redis::start(false);
    let prefix = format!("t{}:", cae_proxy::dev::random_id(4));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Harness::start(&replica_toml(&w, &redis, &prefix, da.path())).await;
    let b = Harness::start(&replica_toml(&w, &redis, &prefix, db.path())).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let key = d.key("ES256");
    let token = w.dpop_token(&key.jkt);
    let (ua, ub) = (a.url("public", "/x"), b.url("public", "/x"));
    // One proof for both (the replicas share an address and port only in a real fleet: the
    // proof names what the load balancer's clients see; here the host differs, so each replica
    // gets a proof for its own URL, and the replay is made by copying the jti).
    let pa = d.proof(&key, "GET", &ua, &token, None);
    let jti = {
        let payload = pa.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        v["jti"].as_str().unwrap().to_string()
    };
    let pb = d.craft(
        &key,
        "GET",
        &ub,
        json!({"token": token, "claims": {"jti": jti}}),
    );
    assert_eq!(dpop_get(&ua, &token, &pa).await.status, StatusCode::OK);
    assert_refused(
        &dpop_get(&ub, &token, &pb).await,
        DEFAULT_ALGS,
        "invalid_dpop_proof",
        "the DPoP proof was used before",
    );
    // Redis down: DPoP requests are refused (503, retry), bearer requests go on.
    redis.stop();
    let r = dpop_get(&ub, &token, &d.proof(&key, "GET", &ub, &token, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let plain = format!("Bearer {}", w.idp.mint("alice", json!({})));
    assert_eq!(
        call(&ub, &[("authorization", &plain)]).await.status,
        StatusCode::OK
    );
    // Back: DPoP works again (bounded wait for the reconnect).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = dpop_get(&ub, &token, &d.proof(&key, "GET", &ub, &token, None)).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(Instant::now() < deadline, "DPoP never recovered with Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = call(&b.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains(r#"cae_fleet_redis_errors_total{op="dpop_replay"}"#),
        "{m}"
    );
}

// ---- certificate-bound tokens (RFC 8705) ----

/// A token bound to the certificate in `pem` (`cnf.x5t#S256`).
/// Issued a minute ago, so that a revocation "now" applies to it.
fn cert_token(w: &World, pem: &std::path::Path) -> String {
    let iat = cae_proxy::dev::now_secs() - 60;
    w.idp.mint(
        "alice",
        json!({"cnf": {"x5t#S256": sha256_b64(&der(pem))}, "iat": iat}),
    )
}

#[tokio::test]
async fn certificate_bound_tokens_over_mtls() {
    let w = world(TRUSTED).await;
    let token = format!("Bearer {}", cert_token(&w, &w.certs.client_cert));
    let url = format!(
        "https://localhost:{}/api/x",
        w.h.proxy.addr("mtls").unwrap().port()
    );
    let auth = [("authorization", token.as_str())];
    let right = tls_client(&w.certs, false, true);
    assert_eq!(get(&right, &url, &auth).await.status, StatusCode::OK);
    let client2 = w.certs.client_cert.with_file_name("client2.pem");
    let wrong = tls_client_as(&w.certs, &client2, &client2.with_extension("key"));
    let r = get(&wrong, &url, &auth).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="", error="invalid_token", error_description="the access token is bound to another client certificate""#
        )
    );
    let none = tls_client(&w.certs, false, false);
    let r = get(&none, &url, &auth).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="", error="invalid_token", error_description="the access token is bound to a client certificate and none was presented""#
        )
    );
    // On the plain listener there is no certificate either (and no header).
    let r = call(&w.htu("/api/x"), &auth).await;
    assert_eq!(r.json()["error"], "invalid_token");
    // `required` accepts a certificate-bound bearer token.
    let strict = url.replace("/api/", "/strict/");
    assert_eq!(get(&right, &strict, &auth).await.status, StatusCode::OK);
    // A revoked one: the Bearer claims challenge (it is not DPoP-bound).
    let r = send(
        &client(),
        Method::POST,
        &w.h.admin_url("/admin/revoke"),
        &[
            ("authorization", ADMIN),
            ("content-type", "application/json"),
        ],
        Bytes::from(
            json!({"key": {"type": "subject", "iss": w.idp.issuer_url(), "sub": "alice"}})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(&right, &url, &auth).await;
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer realm="", authorization_uri=""#),
        "{:?}",
        r.header("www-authenticate")
    );
    let m = call(&w.h.admin_url("/metrics"), &[]).await.text();
    for line in [
        // Twice allowed, then once more before the revocation refused it: the binding holds.
        r#"cae_sender_checks_total{method="certificate",result="ok",reason=""} 3"#,
        r#"cae_sender_checks_total{method="certificate",result="refused",reason="certificate_mismatch"} 1"#,
        r#"cae_sender_checks_total{method="certificate",result="refused",reason="no_client_certificate"} 2"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

/// RFC 9440 `Client-Cert`: `:<base64 DER>:`.
fn client_cert_header(pem: &std::path::Path) -> String {
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der(pem))
    )
}

#[tokio::test]
async fn certificate_bound_tokens_through_a_trusted_proxy_header() {
    let w = world(TRUSTED).await;
    let token = format!("Bearer {}", cert_token(&w, &w.certs.client_cert));
    let url = w.htu("/api/x");
    let client2 = w.certs.client_cert.with_file_name("client2.pem");
    let with = |cert: String| {
        let token = token.clone();
        let url = url.clone();
        async move {
            call(
                &url,
                &[
                    ("authorization", token.as_str()),
                    ("client-cert", cert.as_str()),
                ],
            )
            .await
        }
    };
    assert_eq!(
        with(client_cert_header(&w.certs.client_cert)).await.status,
        StatusCode::OK
    );
    let r = with(client_cert_header(&client2)).await;
    assert_eq!(
        r.json()["message"],
        "the access token is bound to another client certificate"
    );
    let r = with("not a byte sequence".into()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // From a peer that is not a trusted proxy, the header is ignored: no certificate.
    let untrusted = world(Opts {
        trusted: false,
        ..TRUSTED
    })
    .await;
    let token = format!(
        "Bearer {}",
        cert_token(&untrusted, &untrusted.certs.client_cert)
    );
    let r = call(
        &untrusted.htu("/api/x"),
        &[
            ("authorization", token.as_str()),
            (
                "client-cert",
                client_cert_header(&untrusted.certs.client_cert).as_str(),
            ),
        ],
    )
    .await;
    assert_eq!(
        r.json()["message"],
        "the access token is bound to a client certificate and none was presented"
    );
    // Envoy's X-Forwarded-Client-Cert when configured: the nearest proxy's (last) element.
    let envoy = world(Opts {
        trusted: true,
        cert_header: "x-forwarded-client-cert",
    })
    .await;
    let token = format!("Bearer {}", cert_token(&envoy, &envoy.certs.client_cert));
    let hex = |pem: &std::path::Path| -> String {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der(pem))
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let xfcc = format!(
        r#"By=spiffe://edge;Hash={};Subject="CN=x,O=y",By=spiffe://mesh;Hash={}"#,
        hex(&envoy.certs.client_cert.with_file_name("client2.pem")),
        hex(&envoy.certs.client_cert)
    );
    let url = envoy.htu("/api/x");
    let r = call(
        &url,
        &[
            ("authorization", token.as_str()),
            ("x-forwarded-client-cert", xfcc.as_str()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Only the configured header counts there.
    let r = call(
        &url,
        &[
            ("authorization", token.as_str()),
            (
                "client-cert",
                client_cert_header(&envoy.certs.client_cert).as_str(),
            ),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ---- configuration ----

#[test]
fn sender_settings_are_validated_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
client_cert_header = "x-client-cert"
[[listener]]
address = "127.0.0.1:0"
[store]
backend = "redis"
redis_url = "redis://127.0.0.1:1/"
[upstreams.app]
url = "http://127.0.0.1:1"
[[issuer]]
name = "i"
issuer = "https://i.example"
jwks_uri = "https://i.example/keys"
audiences = ["a"]
sender_constraint = "always"
dpop_algorithms = ["ES256", "HS256", "none"]
dpop_nonce = true
[[route]]
upstream = "app"
dpop_algorithms = []
dpop_proof_window = "20m"
dpop_nonce_rotation = "1s"
"#;
    let errors = cae_proxy::config::Config::parse(text, dir.path())
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.path)
        .collect::<Vec<_>>();
    for path in [
        "server.client_cert_header",
        "issuer[0].sender_constraint",
        "issuer[0].dpop_algorithms[1]",
        "issuer[0].dpop_algorithms[2]",
        "route[0].dpop_algorithms",
        "route[0].dpop_proof_window",
        "route[0].dpop_nonce_rotation",
        "server.dpop_nonce_secret",
    ] {
        assert!(errors.iter().any(|e| e == path), "{path} not in {errors:?}");
    }
    // With the secret, fleet mode may issue nonces.
    let ok = text
        .replace(
            "client_cert_header = \"x-client-cert\"",
            "dpop_nonce_secret = \"s\"",
        )
        .replace(
            "sender_constraint = \"always\"",
            "sender_constraint = \"required\"",
        )
        .replace(", \"HS256\", \"none\"", "")
        .replace("dpop_algorithms = []\n", "")
        .replace("\"20m\"", "\"20s\"")
        .replace("\"1s\"", "\"1m\"");
    let c = cae_proxy::config::Config::parse(&ok, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.issuers[0].sender.constraint,
        Some(cae_proxy::config::SenderConstraint::Required)
    );
}
