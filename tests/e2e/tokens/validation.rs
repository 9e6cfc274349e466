//! Token validation: a valid token reaches the upstream with identity headers (spoofed ones
//! stripped); a missing token gets the bare challenge; every forged token class, every algorithm
//! not listed, an over-long lifetime and an unlisted tenant are refused with the exact
//! `invalid_token` answer; scopes, roles and claim rules; the configured realm,
//! `authorization_uri` and the issuer a token names appear in challenges.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{hs256_token, unsigned_token, KeyAlg, SigningKey};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_identity_headers_and_spoofs_stripped() {
    let s = setup().await;
    let t = s.idp.mint(
        "alice",
        json!({"groups": ["admins", "ops"], "org": {"dept": "R&D"}}),
    );
    let r = get(
        &client(),
        &s.h.url("public", "/api/orders"),
        &[
            ("authorization", &bearer(&t)),
            ("x-user", "mallory"),
            ("x-dept", "spoofed"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-user"], "alice");
    assert_eq!(seen["x-groups"], "admins,ops");
    assert_eq!(seen["x-dept"], "R&D");
    assert_eq!(seen["authorization"], bearer(&t), "forwarded by default");

    // Optional route: no token passes, spoofed header removed; the Authorization header is not forwarded.
    let r = get(
        &client(),
        &s.h.url("public", "/optional"),
        &[("x-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["headers"].get("x-user").is_none());
    let r = call(&s.h, "/optional", &t).await;
    assert_eq!(r.json()["headers"]["x-user"], "alice");
    assert!(r.json()["headers"].get("authorization").is_none());

    // A second audience of the issuer is accepted too.
    let t2 = s.idp.mint(
        "alice",
        json!({"aud": "11111111-2222-3333-4444-555555555555"}),
    );
    assert_eq!(call(&s.h, "/api", &t2).await.status, StatusCode::OK);
    // ES256 from the same issuer.
    s.idp.rotate(KeyAlg::Es256);
    let t3 = s.idp.mint_with(KeyAlg::Es256, "alice", json!({}));
    assert_eq!(call(&s.h, "/api", &t3).await.status, StatusCode::OK);
}

#[tokio::test]
async fn missing_token_gets_a_bare_bearer_challenge() {
    let s = setup().await;
    let r = get(&client(), &s.h.url("public", "/api"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="""#));
    assert_eq!(r.json()["code"], "MissingToken");
    assert_eq!(s.up.requests(), 0);
}

/// A tiny server that counts requests: a `jku`/`x5u` target that must never be fetched.
async fn trap() -> (String, Arc<AtomicUsize>, cae_proxy::dev::ServerHandle) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let server = cae_proxy::dev::serve(listener().await, move |_req, _peer| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            cae_proxy::dev::status_response(StatusCode::OK)
        }
    })
    .unwrap();
    (format!("http://{}", server.addr()), hits, server)
}

#[tokio::test]
async fn every_forged_token_class_is_refused() {
    let s = setup().await;
    let real = s.idp.signing_key();
    let now = cae_proxy::dev::now_secs();
    let good = |extra: Value| {
        let mut c = json!({"iss": s.idp.issuer_url(), "sub": "alice", "aud": "api://cae-demo", "iat": now, "nbf": now, "exp": now + 600, "xms_cc": ["cp1"]});
        if let (Some(m), Value::Object(e)) = (c.as_object_mut(), extra) {
            for (k, v) in e {
                if v.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, v);
                }
            }
        }
        c
    };
    let attacker = SigningKey::generate_with_kid(KeyAlg::Rs256, real.kid()).unwrap();
    let other = SigningKey::generate_with_kid(KeyAlg::Rs256, "attacker-kid").unwrap();
    let (trap_url, trap_hits, _trap) = trap().await;
    let hs_secret = real.public_jwk().to_string();
    let valid = real.sign(None, &good(json!({})));
    let mut parts = valid.split('.');
    let (h, p) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &good(json!({}))), "the token algorithm is not allowed"),
        ("alg None", unsigned_token(&json!({"alg": "None"}), &good(json!({}))), "the token algorithm is not allowed"),
        ("HS256 with the public key", hs256_token(hs_secret.as_bytes(), &json!({"alg": "HS256", "kid": real.kid()}), &good(json!({}))), "the token algorithm is not allowed"),
        ("unknown kid", other.sign(None, &good(json!({}))), "the signing key is unknown"),
        ("signed by another key with the real kid", attacker.sign(None, &good(json!({}))), "the token signature is invalid"),
        ("jku to attacker", other.sign_raw(&json!({"alg": "RS256", "kid": "attacker-kid", "jku": format!("{trap_url}/jwks")}), &good(json!({}))), "the signing key is unknown"),
        ("x5u to attacker", other.sign_raw(&json!({"alg": "RS256", "kid": "attacker-kid", "x5u": format!("{trap_url}/cert")}), &good(json!({}))), "the signing key is unknown"),
        ("embedded jwk", attacker.sign_raw(&json!({"alg": "RS256", "kid": real.kid(), "jwk": attacker.public_jwk()}), &good(json!({}))), "the token signature is invalid"),
        ("expired", real.sign(None, &good(json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}))), "the token is expired"),
        ("nbf in the future", real.sign(None, &good(json!({"nbf": now + 3600}))), "the token is not valid yet"),
        ("iat in the future", real.sign(None, &good(json!({"iat": now + 3600}))), "the token was issued in the future"),
        ("wrong aud", real.sign(None, &good(json!({"aud": "api://other"}))), "the token audience is not accepted"),
        ("no aud", real.sign(None, &good(json!({"aud": null}))), "the token lacks the aud claim"),
        ("no exp", real.sign(None, &good(json!({"exp": null}))), "the token lacks the exp claim"),
        ("wrong iss", real.sign(None, &good(json!({"iss": "https://evil.example.com"}))), "the token issuer is not trusted"),
        ("no iss", real.sign(None, &good(json!({"iss": null}))), "the token lacks the iss claim"),
        ("truncated signature", valid[..valid.len() - 10].to_string(), "the token signature is invalid"),
        ("no signature", format!("{h}.{p}."), "the token is malformed: empty segment"),
        ("two segments", format!("{h}.{p}"), "the token is malformed: a JWT has exactly three segments"),
        ("extra segments", format!("{valid}.AAAA"), "the token is malformed: a JWT has exactly three segments"),
        ("payload swapped", format!("{h}.{}.{}", cae_proxy::dev::keys::b64url(good(json!({"sub": "admin"})).to_string().as_bytes()), valid.rsplit('.').next().unwrap()), "the token signature is invalid"),
        ("not base64", "a!b.c@d.e#f".to_string(), "the token is malformed: a segment is not base64url"),
        ("header not json", format!("{}.{p}.AAAA", cae_proxy::dev::keys::b64url(b"nope")), "the token is malformed: header is not JSON"),
        ("oversized", real.sign(None, &good(json!({"pad": "x".repeat(20_000)}))), "the token is larger than allowed"),
        ("a SET as token (typ)", real.sign(Some(json!({"typ": "secevent+jwt"})), &good(json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}))), "a security event token cannot be used as an access token"),
        ("a SET as token (typ, mixed case, no events)", real.sign(Some(json!({"typ": "Application/SecEvent+JWT"})), &good(json!({}))), "a security event token cannot be used as an access token"),
        ("a SET as token (typ with a parameter)", real.sign(Some(json!({"typ": "secevent+jwt; charset=utf-8"})), &good(json!({}))), "a security event token cannot be used as an access token"),
        ("a SET as token (events)", real.sign(None, &good(json!({"events": {"x": {}}}))), "a security event token cannot be used as an access token"),
        ("RS256 header on an EC-only kid", {
            let ec = s.idp.rotate(KeyAlg::Es256);
            real.sign_raw(&json!({"alg": "RS256", "kid": ec}), &good(json!({})))
        }, "the signing key does not fit the token algorithm"),
    ];
    for (name, token, description) in &cases {
        let r = call(&s.h, "/api", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text());
        assert_eq!(r.json()["message"], *description, "{name}");
        assert_invalid(&r, description);
    }
    assert_eq!(
        trap_hits.load(Ordering::SeqCst),
        0,
        "a URL named inside a token was fetched"
    );
    assert_eq!(s.up.requests(), 0, "a forged token reached the upstream");
    // A `typ` that only contains the word names no SET media type (RFC 7515 §4.1.9).
    for typ in ["secevent+jwp", "at+jwt"] {
        let t = real.sign(Some(json!({"typ": typ})), &good(json!({})));
        let r = call(&s.h, "/api", &t).await;
        assert_eq!(r.status, StatusCode::OK, "typ {typ}: {}", r.text());
    }
    assert_eq!(s.up.requests(), 2);

    // Header-level refusals.
    let c = client();
    let r = get(
        &c,
        &s.h.url("public", &format!("/api?access_token={valid}")),
        &[],
    )
    .await;
    assert_invalid(&r, "access tokens are not accepted in the query string");
    let req = format!("GET /api HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {valid}\r\nauthorization: Bearer {valid}\r\n\r\n");
    let out = raw(
        s.h.proxy.addr("public").unwrap(),
        req.as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 401") && out.contains("more than one Authorization header"),
        "{out}"
    );
    let r = get(
        &c,
        &s.h.url("public", "/api"),
        &[("authorization", "Basic YWxpY2U6cHc=")],
    )
    .await;
    // Another scheme is no bearer token (RFC 6750 §3.1): the challenge without an error code.
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="""#));
    assert_eq!(r.json()["error"], serde_json::Value::Null);
    assert_eq!(r.json()["code"], "MissingToken");
    // The valid one passes, so the refusals above were about the forgeries.
    assert_eq!(call(&s.h, "/api", &valid).await.status, StatusCode::OK);
}

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
    let mut toml = base(&up.url()).build();
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

#[tokio::test]
async fn tokens_living_longer_than_max_lifetime_are_refused() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{}\"\ndiscovery = \"{}\"\naudiences = [\"api://cae-demo\"]\nmax_lifetime = \"1h\"\nleeway = \"0s\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base(&up.url()).build(),
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

#[tokio::test]
async fn scopes_roles_and_claim_rules() {
    let s = setup().await;
    let r = call(
        &s.h,
        "/scoped",
        &s.idp.mint("a", json!({"scp": "orders.read"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="", error="insufficient_scope", scope="orders.write""#)
    );
    assert_eq!(r.json()["code"], "InsufficientScope");
    assert_eq!(
        call(
            &s.h,
            "/scoped",
            &s.idp.mint("a", json!({"scp": "orders.read orders.write"}))
        )
        .await
        .status,
        StatusCode::OK
    );

    assert_eq!(
        call(
            &s.h,
            "/roles",
            &s.idp.mint("a", json!({"roles": ["Admin"]}))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &s.h,
            "/roles",
            &s.idp.mint("a", json!({"roles": ["Auditor", "Admin"]}))
        )
        .await
        .status,
        StatusCode::OK
    );

    let r = call(&s.h, "/tenant", &s.idp.mint("a", json!({"tid": "t-other"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "ClaimNotAllowed");
    assert_eq!(
        call(
            &s.h,
            "/tenant",
            &s.idp.mint("a", json!({"tid": "t-allowed"}))
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tenant_templates_accept_listed_tenants_only() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let iss = idp.issuer_url();
    let toml = format!(
        "[server]\nlog_level = \"warn\"\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[store]\nbackend = \"memory\"\n[upstreams.app]\nurl = \"{}\"\n[[issuer]]\nname = \"entra\"\nissuer = \"{iss}/{{tenantid}}/v2.0\"\ntenants = [\"t1\"]\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\n[[route]]\nupstream = \"app\"\n",
        up.url(),
        idp.jwks_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let c = client();
    let t1 = idp.mint("a", json!({"iss": format!("{iss}/t1/v2.0")}));
    let t2 = idp.mint("a", json!({"iss": format!("{iss}/t2/v2.0")}));
    assert_eq!(
        get(
            &c,
            &h.url("public", "/"),
            &[("authorization", &bearer(&t1))]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        get(
            &c,
            &h.url("public", "/"),
            &[("authorization", &bearer(&t2))]
        )
        .await
        .json()["message"],
        "the token issuer is not trusted"
    );
}

#[tokio::test]
async fn the_sts_windows_net_template_accepts_listed_tenants_only() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"entra-v1\"\nissuer = \"https://sts.windows.net/{{tenantid}}/\"\ntenants = [\"t1\", \"3f0c1b7e-0000-4000-8000-000000000001\"]\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\n[[route]]\nupstream = \"app\"\nissuers = [\"entra-v1\"]\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base(&up.url()).build(),
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
        base = base(&up.url()).build(),
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
        base = base(&up.url()).build(),
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
