//! The real gateways in front of the echo upstream, each asking a real cae-proxy authorization
//! listener (role `authz`) about every request, with the shipped configurations of docs/deploy/
//! (tests/e2e/common/gateways.rs replaces their placeholders): nginx `auth_request`, Envoy ext_authz
//! over HTTP and over gRPC, Caddy `forward_auth`, Traefik `ForwardAuth`.
//!
//! For each: a valid token passes and the application sees the identity headers, never the
//! client's forged copies; a revoked token, a step-up route, an invalid token and a missing scope
//! get, through the gateway, byte for byte what cae-proxy's own proxy listener answers the same
//! request (status, `WWW-Authenticate`, JSON body); report-only lets a refused request through;
//! the client address reaches cae-proxy through the trusted gateway; and with cae-proxy down the
//! gateway fails closed. The client connects from 127.0.0.2, the gateways from 127.0.0.1 (the
//! only address in `trusted_proxies`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::gateways::{self, Gateway};
use crate::common::*;
use crate::dpop::{nonce_key_mid_period, Dpop, NONCE_ROTATION, NONCE_SECRET};
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;

const NGINX_CONF: &str = include_str!("../../docs/deploy/nginx-auth-request.conf");
const ENVOY_HTTP: &str = include_str!("../../docs/deploy/envoy-ext-authz-http.yaml");
const ENVOY_GRPC: &str = include_str!("../../docs/deploy/envoy-ext-authz-grpc.yaml");
const CADDYFILE: &str = include_str!("../../docs/deploy/Caddyfile");
const TRAEFIK: &str = include_str!("../../docs/deploy/traefik-forwardauth.yml");

const HOST: &str = "api.example.test";
/// The client's own address: not a trusted proxy, and refused by the `located` route.
const CLIENT: &str = "127.0.0.2";
const ADMIN: &str = "Bearer admin-secret";

/// The cae-proxy of one test: a proxy listener (the reference answers), the authorization
/// listener the gateway asks, the admin API; the development issuer and the echo upstream.
struct Stack {
    idp: DevIssuer,
    up: EchoUpstream,
    cae: Harness,
}

fn config(iss: &str, up: &str) -> String {
    format!(
        r#"
[server]
log_level = "warn"
trusted_proxies = ["127.0.0.1/32"]
shutdown_grace = "2s"
dpop_nonce_secret = "{NONCE_SECRET}"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "authz"
address = "127.0.0.1:0"
role = "authz"
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
[[route]]
name = "api"
hosts = ["{HOST}"]
path_prefix = "/api"
methods = ["POST"]
upstream = "app"
identity_headers = {{ "x-user-sub" = "sub", "x-user-email" = "email" }}
[[route]]
name = "stepup"
hosts = ["{HOST}"]
path_prefix = "/stepup"
upstream = "app"
cae = {{ auth_context = "c1" }}
[[route]]
name = "scoped"
hosts = ["{HOST}"]
path_prefix = "/scoped"
upstream = "app"
scopes = ["orders.write"]
[[route]]
name = "located"
hosts = ["{HOST}"]
path_prefix = "/located"
upstream = "app"
cae = {{ deny_locations = ["{CLIENT}/32"] }}
[[route]]
name = "nonce"
hosts = ["{HOST}"]
path_prefix = "/nonce"
upstream = "app"
dpop_nonce = true
dpop_nonce_rotation = "{NONCE_ROTATION}s"
[[route]]
name = "report"
hosts = ["{HOST}"]
path_prefix = "/report"
upstream = "app"
report_only = true
cae = {{ deny_locations = ["{CLIENT}/32"] }}
"#
    )
}

async fn stack() -> Stack {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let cae = Harness::start(&config(&idp.issuer_url(), &up.url())).await;
    cae.wait_ready().await;
    Stack { idp, up, cae }
}

impl Stack {
    fn authz(&self) -> SocketAddr {
        self.cae.proxy.addr("authz").unwrap()
    }

    fn public(&self) -> SocketAddr {
        self.cae.proxy.addr("public").unwrap()
    }

    async fn revoke_subject(&self, sub: &str, at: i64) {
        let r = send(
            &client(),
            Method::POST,
            &self.cae.admin_url("/admin/revoke"),
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
            Bytes::from(
                json!({"key": {"type": "subject", "iss": self.idp.issuer_url(), "sub": sub}, "at": at})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

/// The client's request to `at` (a gateway or the proxy listener), from 127.0.0.2: a POST with a
/// body, forged identity headers and a forged X-Forwarded-For; `rid` as its X-Request-Id.
async fn call(at: SocketAddr, path: &str, token: Option<&str>, rid: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("host", HOST),
        ("x-user-sub", "mallory"),
        ("x-user-email", "mallory@evil.test"),
        ("x-forwarded-for", "203.0.113.9"),
        ("content-type", "text/plain"),
    ];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    if let Some(r) = rid {
        h.push(("x-request-id", r));
    }
    send(
        &client_from(CLIENT.parse().unwrap()),
        Method::POST,
        &format!("http://{at}{path}"),
        &h,
        Bytes::from_static(b"hello"),
    )
    .await
}

/// The application's view of an allowed request (the echo's JSON): the client's request, and its
/// headers.
fn upstream_saw(r: &Reply, gw: &Gateway, path: &str) -> BTreeMap<String, String> {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}: {}\n{}",
        gw.kind.name(),
        r.text(),
        gw.log()
    );
    let v = r.json();
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, json!(q)),
        None => (path, serde_json::Value::Null),
    };
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], p);
    assert_eq!(v["query"], q);
    assert_eq!(v["body_bytes"], 5, "the body reaches the application");
    serde_json::from_value::<BTreeMap<String, String>>(v["headers"].clone()).expect("headers")
}

/// The refusal the client got through `gw` is what the proxy listener answers the same request
/// with the same request id: status, the one WWW-Authenticate, Content-Type, body.
async fn same_as_proxy(s: &Stack, gw: &Gateway, got: &Reply, path: &str, token: Option<&str>) {
    let name = gw.kind.name();
    let rid = got
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{name}: no x-request-id relayed: {got:?}"));
    let want = call(s.public(), path, token, Some(rid)).await;
    assert!(want.status.is_client_error(), "{}", want.text());
    assert_eq!(got.status, want.status, "{name} {path}: {}", got.text());
    let challenges = |r: &Reply| -> Vec<String> {
        r.headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(challenges(got), challenges(&want), "{name} {path}");
    assert_eq!(challenges(got).len(), 1, "{name} {path}");
    assert_eq!(
        got.header("content-type"),
        Some("application/json"),
        "{name} {path}"
    );
    assert_eq!(got.text(), want.text(), "{name} {path}: the body");
}

/// Everything a gateway in front of cae-proxy must do, then cae-proxy goes down and the gateway
/// must answer `down_status` without reaching the application.
/// DPoP with nonces through the gateway (RFC 9449 §8, §9): the proof reaches cae-proxy, a
/// refusal's `DPoP-Nonce` reaches the client, and so does the next nonce on an allowed request
/// whose proof used the previous one, where the gateway can add headers to the application's
/// answer (not Caddy's `forward_auth` nor Traefik's `ForwardAuth`: docs/deploy/gateways.md).
async fn dpop_nonces(s: &Stack, gw: &Gateway) {
    let name = gw.kind.name();
    let Some(mut d) = Dpop::start() else { return };
    let key = d.key("ES256");
    let token = s.idp.mint("alice", json!({"cnf": {"jkt": key.jkt}}));
    let auth = format!("DPoP {token}");
    // The original request as cae-proxy sees it behind the gateway.
    let htu = format!("http://{HOST}/nonce/x");
    let ask = |proof: String| {
        let auth = auth.clone();
        async move {
            let h = [("host", HOST), ("authorization", &auth), ("dpop", &proof)];
            get(
                &client_from(CLIENT.parse().unwrap()),
                &format!("http://{}/nonce/x", gw.addr),
                &h,
            )
            .await
        }
    };
    let (k, now) = nonce_key_mid_period().await;
    let (previous, current) = (
        k.issue(NONCE_ROTATION, now - NONCE_ROTATION as i64),
        k.issue(NONCE_ROTATION, now),
    );
    let r = ask(d.proof(&key, "GET", &htu, &token, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.starts_with("DPoP ") && w.contains(r#"error="use_dpop_nonce""#)),
        "{name}: {:?}",
        r.header("www-authenticate")
    );
    assert_eq!(r.header("dpop-nonce"), Some(current.as_str()), "{name}");
    let r = ask(d.proof(&key, "GET", &htu, &token, Some(&previous))).await;
    assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    let relays = !matches!(gw.kind, gateways::Kind::Caddy | gateways::Kind::Traefik);
    assert_eq!(
        r.header("dpop-nonce"),
        relays.then_some(current.as_str()),
        "{name}"
    );
    let r = ask(d.proof(&key, "GET", &htu, &token, Some(&current))).await;
    assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    assert_eq!(r.header("dpop-nonce"), None, "{name}");
}

async fn exercise(s: Stack, gw: Gateway, down_status: StatusCode) {
    let name = gw.kind.name();
    let now = now_secs();
    let early = json!({"iat": now - 100, "nbf": now - 100});
    let alice = s.idp.mint("alice", early.clone());
    let carol = s.idp.mint("carol", json!({"email": "carol@example.test"}));
    let bob = s.idp.mint("bob", early.clone());
    s.revoke_subject("bob", now - 10).await;

    // Allowed: the identity replaces the forged copies; a claim the token lacks removes the
    // client's copy of its header.
    let path = "/api/orders?id=7";
    let h = upstream_saw(&call(gw.addr, path, Some(&alice), None).await, &gw, path);
    assert_eq!(h["x-user-sub"], "alice", "{name}: {h:?}");
    assert!(!h.contains_key("x-user-email"), "{name}: {h:?}");
    assert_eq!(h["host"], HOST, "{name}");
    let h = upstream_saw(&call(gw.addr, path, Some(&carol), None).await, &gw, path);
    assert_eq!(h["x-user-sub"], "carol", "{name}");
    assert_eq!(h["x-user-email"], "carol@example.test", "{name}");
    // Report-only: the location rule would refuse 127.0.0.2; reported, let through.
    upstream_saw(
        &call(gw.addr, "/report/x", Some(&alice), None).await,
        &gw,
        "/report/x",
    );

    let before = s.up.requests();
    // A revoked token: the claims challenge.
    let r = call(gw.addr, path, Some(&bob), None).await;
    same_as_proxy(&s, &gw, &r, path, Some(&bob)).await;
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.contains(r#"error="insufficient_claims", claims=""#),
        "{name}: {www}"
    );
    assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");
    // Step-up: a claims challenge for the auth context.
    let r = call(gw.addr, "/stepup/x", Some(&alice), None).await;
    same_as_proxy(&s, &gw, &r, "/stepup/x", Some(&alice)).await;
    assert_eq!(r.json()["code"], "InsufficientAuthenticationContext");
    // An invalid token, and none.
    let r = call(gw.addr, path, Some("not.a.token"), None).await;
    same_as_proxy(&s, &gw, &r, path, Some("not.a.token")).await;
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
    let r = call(gw.addr, path, None, None).await;
    same_as_proxy(&s, &gw, &r, path, None).await;
    // A missing scope: 403.
    let r = call(gw.addr, "/scoped/x", Some(&alice), None).await;
    same_as_proxy(&s, &gw, &r, "/scoped/x", Some(&alice)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The client address came through the trusted gateway: 127.0.0.2 is refused here.
    let r = call(gw.addr, "/located/x", Some(&alice), None).await;
    same_as_proxy(&s, &gw, &r, "/located/x", Some(&alice)).await;
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    assert_eq!(
        s.up.requests(),
        before,
        "{name}: no refused request reaches the application"
    );

    dpop_nonces(&s, &gw).await;

    // The decision service goes down: the gateway fails closed.
    let authz = s.authz();
    let Stack { cae, up, .. } = s;
    assert!(cae.proxy.shutdown().await, "cae-proxy drains in time");
    let since = Instant::now();
    while tokio::net::TcpStream::connect(authz).await.is_ok() {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{authz} still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = up.requests();
    let r = call(gw.addr, path, Some(&alice), None).await;
    assert_eq!(r.status, down_status, "{name}: {}\n{}", r.text(), gw.log());
    assert_eq!(r.header("www-authenticate"), None, "{name}");
    assert_eq!(
        up.requests(),
        before,
        "{name}: nothing reaches the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_with_cae_proxy() {
    let s = stack().await;
    let Some(gw) = gateways::nginx(NGINX_CONF, s.authz(), s.up.addr()).await else {
        return;
    };
    // nginx turns an unanswered subrequest into its own 500.
    exercise(s, gw, StatusCode::INTERNAL_SERVER_ERROR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_with_cae_proxy() {
    let s = stack().await;
    let Some(gw) = gateways::envoy(ENVOY_HTTP, s.authz(), s.up.addr()).await else {
        return;
    };
    // failure_mode_allow: false, status_on_error: 503.
    exercise(s, gw, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_ext_authz_with_cae_proxy() {
    let s = stack().await;
    let Some(gw) = gateways::envoy(ENVOY_GRPC, s.authz(), s.up.addr()).await else {
        return;
    };
    exercise(s, gw, StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_with_cae_proxy() {
    let s = stack().await;
    let Some(gw) = gateways::caddy(CADDYFILE, s.authz(), s.up.addr()).await else {
        return;
    };
    // forward_auth is a reverse_proxy: no answer is a 502.
    exercise(s, gw, StatusCode::BAD_GATEWAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_with_cae_proxy() {
    let s = stack().await;
    let Some(gw) = gateways::traefik(TRAEFIK, s.authz(), s.up.addr()).await else {
        return;
    };
    exercise(s, gw, StatusCode::INTERNAL_SERVER_ERROR).await;
}
