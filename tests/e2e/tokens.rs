//! Bearer token validation end to end: a real issuer (discovery + JWKS over HTTP), attacks, rotation,
//! outages, unknown-kid floods, scopes/roles/claim rules and identity headers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{hs256_token, unsigned_token, KeyAlg, SigningKey};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

async fn setup_with(opts: IssuerOptions, extra_issuer: &str) -> Setup {
    let idp = DevIssuer::start(listener().await, opts).unwrap();
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
audiences = ["api://cae-demo", "11111111-2222-3333-4444-555555555555"]
algorithms = ["RS256", "ES256"]
{extra_issuer}
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
identity_headers = {{ "x-user" = "sub", "x-groups" = "groups", "x-dept" = "org.dept" }}
[[route]]
name = "scoped"
path_prefix = "/scoped"
upstream = "app"
scopes = ["orders.write"]
[[route]]
name = "roles"
path_prefix = "/roles"
upstream = "app"
roles = ["Admin", "Auditor"]
match_mode = "all"
[[route]]
name = "tenant"
path_prefix = "/tenant"
upstream = "app"
claims = [{{ claim = "tid", one_of = ["t-allowed"] }}]
[[route]]
name = "optional"
path_prefix = "/optional"
upstream = "app"
auth = "optional"
forward_authorization = false
identity_headers = {{ "x-user" = "sub" }}
"#,
        up = up.url(),
        iss = idp.issuer_url(),
        disc = idp.discovery_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

async fn setup() -> Setup {
    setup_with(IssuerOptions::default(), "").await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn call(s: &Setup, path: &str, token: &str) -> Reply {
    get(
        &client(),
        &s.h.url("public", path),
        &[("authorization", &bearer(token))],
    )
    .await
}

fn assert_invalid(r: &Reply, description: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(r#"Bearer realm="", error="invalid_token", error_description="{description}""#)
                .as_str()
        )
    );
    let body = r.json();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["code"], "InvalidAuthenticationToken");
    assert_eq!(body["message"], description);
    assert_eq!(body["request_id"].as_str().map(str::len), Some(32));
}

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
    let r = call(&s, "/optional", &t).await;
    assert_eq!(r.json()["headers"]["x-user"], "alice");
    assert!(r.json()["headers"].get("authorization").is_none());

    // A second audience of the issuer is accepted too.
    let t2 = s.idp.mint(
        "alice",
        json!({"aud": "11111111-2222-3333-4444-555555555555"}),
    );
    assert_eq!(call(&s, "/api", &t2).await.status, StatusCode::OK);
    // ES256 from the same issuer.
    s.idp.rotate(KeyAlg::Es256);
    let t3 = s.idp.mint_with(KeyAlg::Es256, "alice", json!({}));
    assert_eq!(call(&s, "/api", &t3).await.status, StatusCode::OK);
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
        let r = call(&s, "/api", token).await;
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
        let r = call(&s, "/api", &t).await;
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
    assert_invalid(&r, "the Authorization header is not a Bearer token");
    // The valid one passes, so the refusals above were about the forgeries.
    assert_eq!(call(&s, "/api", &valid).await.status, StatusCode::OK);
}

#[tokio::test]
async fn scopes_roles_and_claim_rules() {
    let s = setup().await;
    let r = call(
        &s,
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
            &s,
            "/scoped",
            &s.idp.mint("a", json!({"scp": "orders.read orders.write"}))
        )
        .await
        .status,
        StatusCode::OK
    );

    assert_eq!(
        call(&s, "/roles", &s.idp.mint("a", json!({"roles": ["Admin"]})))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &s,
            "/roles",
            &s.idp.mint("a", json!({"roles": ["Auditor", "Admin"]}))
        )
        .await
        .status,
        StatusCode::OK
    );

    let r = call(&s, "/tenant", &s.idp.mint("a", json!({"tid": "t-other"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "ClaimNotAllowed");
    assert_eq!(
        call(&s, "/tenant", &s.idp.mint("a", json!({"tid": "t-allowed"})))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn key_rotation_under_load_fails_no_request() {
    let s = Arc::new(setup().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (s, stop, failed, ok) = (s.clone(), stop.clone(), failed.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Fresh tokens from whatever key signs now: every request is verified.
                let t = s.idp.mint(&format!("u{i}-{n}"), json!({}));
                let r = try_send(
                    &c,
                    Method::GET,
                    &s.h.url("public", "/api"),
                    &[("authorization", &bearer(&t))],
                    Bytes::new(),
                )
                .await;
                match r {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Progress is counted, not timed: each phase waits (bounded) for 20 more successful requests.
    let wait_for = |target: usize| {
        let ok = ok.clone();
        async move {
            for _ in 0..6000 {
                if ok.load(Ordering::Relaxed) >= target {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("load made no progress");
        }
    };
    wait_for(20).await;
    let old = s.idp.signing_key().kid().to_string();
    s.idp.rotate(KeyAlg::Rs256); // new kid appears: the first token with it triggers one refetch
    wait_for(ok.load(Ordering::Relaxed) + 20).await;
    s.idp.remove_key(&old); // the old key is later removed
    wait_for(ok.load(Ordering::Relaxed) + 20).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
}

#[tokio::test]
async fn when_the_provider_is_down_the_last_good_keys_keep_validating() {
    let s = setup().await;
    s.idp.set_available(false);
    // A reload re-uses the key set; a refetch for an unknown kid fails; known keys keep working.
    s.h.proxy.reload().unwrap();
    let fresh = s.idp.mint("bob", json!({}));
    assert_eq!(call(&s, "/api", &fresh).await.status, StatusCode::OK);
    let stranger = SigningKey::generate_with_kid(KeyAlg::Rs256, "new-kid").unwrap();
    let now = cae_proxy::dev::now_secs();
    let t = stranger.sign(None, &json!({"iss": s.idp.issuer_url(), "sub": "x", "aud": "api://cae-demo", "iat": now, "exp": now + 60}));
    assert_invalid(&call(&s, "/api", &t).await, "the signing key is unknown");
    assert_eq!(
        call(&s, "/api", &s.idp.mint("carol", json!({})))
            .await
            .status,
        StatusCode::OK
    );
    let m = get(&client(), &s.h.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.lines().any(
            |l| l.starts_with("cae_key_fetch_failures_total{name=\"dev\"} ") && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let s = setup().await;
    let before = s.idp.jwks_fetches();
    let now = cae_proxy::dev::now_secs();
    let key = SigningKey::generate(KeyAlg::Rs256).unwrap();
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let t = key.sign_raw(&json!({"alg": "RS256", "kid": format!("random-{i}")}), &json!({"iss": s.idp.issuer_url(), "sub": "x", "aud": "api://cae-demo", "iat": now, "exp": now + 60}));
        let (c, url) = (c.clone(), s.h.url("public", "/api"));
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                Method::GET,
                &url,
                &[("authorization", &format!("Bearer {t}"))],
                Bytes::new(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let fetched = s.idp.jwks_fetches() - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for 1000 unknown kids");
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
async fn a_cached_token_stops_when_its_key_is_withdrawn() {
    let s = setup().await;
    let old_kid = s.idp.signing_key().kid().to_string();
    let t = s.idp.mint("alice", json!({}));
    assert_eq!(call(&s, "/api", &t).await.status, StatusCode::OK);
    assert_eq!(
        call(&s, "/api", &t).await.status,
        StatusCode::OK,
        "served from the cache"
    );
    // The provider rotates and withdraws the old key; a token with the new kid makes the proxy
    // refetch the key set.
    s.idp.rotate(KeyAlg::Rs256);
    s.idp.remove_key(&old_kid);
    assert_eq!(
        call(&s, "/api", &s.idp.mint("bob", json!({}))).await.status,
        StatusCode::OK
    );
    assert_invalid(&call(&s, "/api", &t).await, "the signing key is unknown");
}

#[tokio::test]
async fn a_keep_alive_connection_repeating_its_token_still_sees_reloads_and_withdrawn_keys() {
    let s = setup().await;
    let c = client();
    let url = s.h.url("public", "/api");
    let t = s.idp.mint("alice", json!({}));
    let auth = bearer(&t);
    for _ in 0..3 {
        let r = get(&c, &url, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // A reload that stops accepting the token's audience applies to the open connection at once:
    // the token the connection remembered is checked again, and refused.
    let text = std::fs::read_to_string(&s.h.config_path).unwrap();
    let narrowed = text.replace(
        r#"audiences = ["api://cae-demo", "11111111-2222-3333-4444-555555555555"]"#,
        r#"audiences = ["api://someone-else"]"#,
    );
    assert_ne!(text, narrowed);
    s.h.write_config(&narrowed);
    s.h.proxy.reload().unwrap();
    assert_invalid(
        &get(&c, &url, &[("authorization", &auth)]).await,
        "the token audience is not accepted",
    );
    // Back to the original configuration: the same connection, the same token, accepted again;
    // then the provider withdraws the signing key and the remembered token stops.
    s.h.write_config(&text);
    s.h.proxy.reload().unwrap();
    assert_eq!(
        get(&c, &url, &[("authorization", &auth)]).await.status,
        StatusCode::OK
    );
    let old_kid = s.idp.signing_key().kid().to_string();
    s.idp.rotate(KeyAlg::Rs256);
    s.idp.remove_key(&old_kid);
    assert_eq!(
        call(&s, "/api", &s.idp.mint("bob", json!({}))).await.status,
        StatusCode::OK
    );
    assert_invalid(
        &get(&c, &url, &[("authorization", &auth)]).await,
        "the signing key is unknown",
    );
}
