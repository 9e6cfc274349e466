//! Token edges end to end (real issuer keys, real proxy): a cached token stops when the key that
//! verified it is replaced under the same `kid` (or a kid-less key is replaced); an `ipaddr` that
//! is not an address fails closed; the JSON body's `error` is the challenge's; another
//! `Authorization` scheme is no bearer token; a token of an issuer the route does not accept is
//! refused with the route's realm.

use std::time::{Duration, Instant};

use crate::common::*;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;
use serde_json::{json, Value};

const ISS: &str = "https://file-issuer.example.com";

fn claims(sub: &str) -> Value {
    let now = cae_proxy::dev::now_secs();
    json!({"iss": ISS, "sub": sub, "aud": "api://cae-demo", "iat": now, "exp": now + 600})
}

/// A JWKS of `keys`, each published with (`true`) or without its `kid`.
fn jwks(keys: &[(&SigningKey, bool)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(k, with_kid)| {
            let mut jwk = k.public_jwk().clone();
            if !with_kid {
                jwk.as_object_mut().unwrap().remove("kid");
            }
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A proxy whose issuer reads its keys from `{dir}/keys.json`, re-read every 100 ms.
async fn file_issuer(first: &str) -> (Harness, EchoUpstream) {
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.json"), first).unwrap();
    let toml = format!(
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
url = "{up}"
[[issuer]]
name = "file"
issuer = "{ISS}"
jwks_file = "{{dir}}/keys.json"
audiences = ["api://cae-demo"]
algorithms = ["RS256"]
refresh_interval = "100ms"
min_refresh = "100ms"
unknown_kid_cooldown = "1h"
[[route]]
upstream = "app"
"#,
        up = up.url()
    );
    let h = Harness::start_in(dir, &toml).await;
    h.wait_ready().await;
    (h, up)
}

async fn call(h: &Harness, token: &str) -> Reply {
    get(
        &client(),
        &h.url("public", "/api"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Polls until `token` is accepted: the proxy has read the new key set (bounded, no sleep-wait).
async fn until_accepted(h: &Harness, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(h, token).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the new key set was never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_bad_signature(r: &Reply) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="", error="invalid_token", error_description="the token signature is invalid""#
        )
    );
    assert_eq!(r.json()["error"], "invalid_token");
}

#[tokio::test]
async fn a_cached_token_stops_when_its_key_is_replaced_under_the_same_kid() {
    let a = SigningKey::generate_with_kid(KeyAlg::Rs256, "k1").unwrap();
    let b = SigningKey::generate_with_kid(KeyAlg::Rs256, "k1").unwrap();
    let (h, up) = file_issuer(&jwks(&[(&a, true)])).await;
    let t = a.sign(None, &claims("alice"));
    for _ in 0..2 {
        assert_eq!(
            call(&h, &t).await.status,
            StatusCode::OK,
            "verified, then cached"
        );
    }
    // Emergency replacement: the same kid now names key B.
    std::fs::write(h.dir.path().join("keys.json"), jwks(&[(&b, true)])).unwrap();
    until_accepted(&h, &b.sign(None, &claims("bob"))).await;
    // A new A-signed token is refused, and so is the cached one.
    assert_bad_signature(&call(&h, &a.sign(None, &claims("carol"))).await);
    assert_bad_signature(&call(&h, &t).await);
    // The two first calls and the one accepted B-signed token reached the upstream, no more.
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn a_cached_kidless_token_stops_when_the_single_key_is_replaced() {
    let a = SigningKey::generate_with_kid(KeyAlg::Rs256, "unused").unwrap();
    let b = SigningKey::generate_with_kid(KeyAlg::Rs256, "unused").unwrap();
    let (h, _up) = file_issuer(&jwks(&[(&a, false)])).await;
    let header = json!({"alg": "RS256", "typ": "JWT"});
    let t = a.sign_raw(&header, &claims("alice"));
    for _ in 0..2 {
        assert_eq!(
            call(&h, &t).await.status,
            StatusCode::OK,
            "verified, then cached"
        );
    }
    std::fs::write(h.dir.path().join("keys.json"), jwks(&[(&b, false)])).unwrap();
    until_accepted(&h, &b.sign_raw(&header, &claims("bob"))).await;
    assert_bad_signature(&call(&h, &t).await);
}

/// Two issuers with realms; routes for the token address, RFC 9470 step-up, optional auth and an
/// issuer allow-list.
async fn two_issuers() -> (Harness, DevIssuer, DevIssuer, EchoUpstream) {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let other = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
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
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{disc}"
audiences = ["api://cae-demo"]
realm = "dev-realm"
[[issuer]]
name = "other"
issuer = "{iss2}"
discovery = "{disc2}"
audiences = ["api://cae-demo"]
realm = "other-realm"
[[route]]
name = "ip"
path_prefix = "/ip"
upstream = "app"
[route.cae]
token_ip = true
[[route]]
name = "stepup"
path_prefix = "/stepup"
upstream = "app"
[route.cae]
acr_values = ["urn:example:mfa"]
[[route]]
name = "optional"
path_prefix = "/optional"
upstream = "app"
auth = "optional"
identity_headers = {{ "x-user" = "sub" }}
[[route]]
name = "dev-only"
path_prefix = "/dev-only"
upstream = "app"
issuers = ["dev"]
"#,
        up = up.url(),
        iss = idp.issuer_url(),
        disc = idp.discovery_url(),
        iss2 = other.issuer_url(),
        disc2 = other.discovery_url(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    (h, idp, other, up)
}

async fn call_path(h: &Harness, path: &str, authorization: &str) -> Reply {
    get(
        &client(),
        &h.url("public", path),
        &[("authorization", authorization)],
    )
    .await
}

#[tokio::test]
async fn an_ipaddr_that_is_not_an_address_is_refused_like_a_mismatch() {
    let (h, idp, _other, up) = two_issuers().await;
    let bad = idp.mint("alice", json!({"ipaddr": "not-an-ip", "xms_cc": ["cp1"]}));
    let r = call_path(&h, "/ip", &format!("Bearer {bad}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with(r#"Bearer realm="dev-realm", authorization_uri=""#)
            && www.contains(r#"error="insufficient_claims", claims=""#),
        "{www}"
    );
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    assert_eq!(r.json()["error"], "insufficient_claims");
    // The same token with its real address passes; without `ipaddr` at all it passes too.
    let good = idp.mint("alice", json!({"ipaddr": "127.0.0.1"}));
    assert_eq!(
        call_path(&h, "/ip", &format!("Bearer {good}")).await.status,
        StatusCode::OK
    );
    let none = idp.mint("alice", json!({}));
    assert_eq!(
        call_path(&h, "/ip", &format!("Bearer {none}")).await.status,
        StatusCode::OK
    );
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn the_body_error_is_the_challenges_error() {
    let (h, idp, _other, _up) = two_issuers().await;
    let t = idp.mint("alice", json!({"acr": "urn:example:password"}));
    let r = call_path(&h, "/stepup", &format!("Bearer {t}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer error="insufficient_user_authentication", error_description="a stronger or more recent authentication is required", acr_values="urn:example:mfa""#
        )
    );
    let body = r.json();
    assert_eq!(body["error"], "insufficient_user_authentication");
    assert_eq!(body["code"], "InsufficientUserAuthentication");
}

#[tokio::test]
async fn another_authorization_scheme_is_no_bearer_token() {
    let (h, _idp, _other, up) = two_issuers().await;
    let basic = "Basic YWxpY2U6cHc=";
    // Required: the challenge without an error code (RFC 6750 §3.1), and a body without one.
    let r = call_path(&h, "/ip", basic).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="dev-realm""#)
    );
    assert_eq!(r.json()["error"], Value::Null);
    assert_eq!(r.json()["code"], "MissingToken");
    assert_eq!(up.requests(), 0);
    // Optional: anonymous, forwarded without identity headers.
    let r = call_path(&h, "/optional", basic).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(up.requests(), 1);
    assert!(up.last_headers().get("x-user").is_none());
}

#[tokio::test]
async fn a_token_of_an_issuer_the_route_does_not_accept_gets_the_routes_realm() {
    let (h, idp, other, _up) = two_issuers().await;
    let t = other.mint("mallory", json!({"xms_cc": ["cp1"]}));
    let r = call_path(&h, "/dev-only", &format!("Bearer {t}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="dev-realm", error="invalid_token", error_description="the token issuer is not accepted on this route""#
        )
    );
    assert_eq!(r.json()["error"], "invalid_token");
    // The accepted issuer's token passes.
    let ok = idp.mint("alice", json!({}));
    assert_eq!(
        call_path(&h, "/dev-only", &format!("Bearer {ok}"))
            .await
            .status,
        StatusCode::OK
    );
}
