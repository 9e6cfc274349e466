//! CAE enforcement end to end: revocations, blocks and bindings through the admin API, claims
//! challenges byte for byte, IP rules, both step-up dialects, report-only, durability and expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use cae_proxy::auth::challenge::{acrs_claims, nbf_claims};
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin-secret";

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

fn config(iss: &str, up: &str, store: &str) -> String {
    format!(
        r#"
[server]
log_level = "warn"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
{store}
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
[[route]]
name = "ip"
path_prefix = "/ip"
upstream = "app"
cae = {{ token_ip = true }}
[[route]]
name = "loc"
path_prefix = "/loc"
upstream = "app"
cae = {{ allow_locations = ["10.0.0.0/8"] }}
[[route]]
name = "bound"
path_prefix = "/bound"
upstream = "app"
cae = {{ signal_ip = true }}
[[route]]
name = "stepup"
path_prefix = "/stepup"
upstream = "app"
cae = {{ auth_context = "c1" }}
[[route]]
name = "rfc9470"
path_prefix = "/rfc9470"
upstream = "app"
cae = {{ acr_values = ["urn:example:mfa"], max_age = "5m" }}
[[route]]
name = "report"
path_prefix = "/report"
upstream = "app"
report_only = true
cae = {{ token_ip = true }}
"#
    )
}

async fn setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(
        &idp.issuer_url(),
        &up.url(),
        "backend = \"redb\"\npath = \"{dir}/state.redb\"",
    ))
    .await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

async fn call(s: &Setup, path: &str, token: &str) -> Reply {
    get(
        &client(),
        &s.h.url("public", path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn admin(s: &Setup, path: &str, body: Value) -> Reply {
    send(
        &client(),
        Method::POST,
        &s.h.admin_url(path),
        &[
            ("authorization", ADMIN),
            ("content-type", "application/json"),
        ],
        Bytes::from(body.to_string()),
    )
    .await
}

fn decode_claims(header: &str) -> Value {
    let b64 = header
        .split("claims=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("claims parameter");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("standard base64"),
    )
    .expect("claims JSON")
}

#[tokio::test]
async fn revoked_session_gets_a_claims_challenge_and_a_fresh_token_passes() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let now = cae_proxy::dev::now_secs();
    let old = s.idp.mint(
        "alice",
        json!({"sid": "sess-1", "iat": now - 100, "nbf": now - 100}),
    );
    let legacy = s.idp.mint(
        "alice",
        json!({"sid": "sess-1", "iat": now - 100, "nbf": now - 100, "xms_cc": []}),
    );
    assert_eq!(call(&s, "/api", &old).await.status, StatusCode::OK);

    let at = now - 10;
    let r = admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "session", "iss": iss, "sid": "sess-1"}, "at": at}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"stored": {"op": "revoke", "key": {"type": "session", "iss": iss, "sid": "sess-1"}, "at": at}})
    );

    let r = call(&s, "/api", &old).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{iss}/authorize", error="insufficient_claims", claims="{}""#,
        nbf_claims(at)
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(
        decode_claims(&expected),
        json!({"access_token": {"nbf": {"essential": true, "value": at.to_string()}}})
    );
    let body = r.json();
    assert_eq!(body["code"], "TokenIssuedBeforeRevocationTimestamp");
    // The body's error is the challenge's.
    assert_eq!(body["error"], "insufficient_claims");

    // A client without cp1 cannot handle claims challenges: plain invalid_token.
    let r = call(&s, "/api", &legacy).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="", error="invalid_token", error_description="the token was issued before a revocation of its subject, session or id""#
        )
    );

    // The client answers the challenge: a token issued at or after the revocation passes.
    let claims =
        r#"{"access_token":{"nbf":{"essential":true,"value":"X"}}}"#.replace('X', &at.to_string());
    let fresh = s
        .idp
        .mint_for_challenge("alice", json!({"sid": "sess-1"}), &claims)
        .unwrap();
    assert_eq!(call(&s, "/api", &fresh).await.status, StatusCode::OK);
    // Another session of the same user is untouched.
    assert_eq!(
        call(
            &s,
            "/api",
            &s.idp
                .mint("alice", json!({"sid": "sess-2", "iat": now - 100}))
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn subject_token_and_tenant_revocations() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let now = cae_proxy::dev::now_secs();
    let early = json!({"iat": now - 50, "nbf": now - 50});
    let t_sub = s.idp.mint("bob", early.clone());
    let t_jti = s
        .idp
        .mint("carol", json!({"iat": now - 50, "jti": "token-7"}));
    let t_tid = s
        .idp
        .mint("dave", json!({"iat": now - 50, "tid": "tenant-x"}));
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "subject", "iss": format!("{iss}/"), "sub": "bob"}}),
    )
    .await;
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "token", "iss": iss, "jti": "token-7"}}),
    )
    .await;
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "tenant", "tid": "tenant-x"}}),
    )
    .await;
    for t in [&t_sub, &t_jti, &t_tid] {
        let r = call(&s, "/api", t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");
    }
    assert_eq!(
        call(&s, "/api", &s.idp.mint("erin", early)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn blocks_refuse_fresh_tokens_until_unblocked() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let key = json!({"type": "subject", "iss": iss, "sub": "frank"});
    admin(&s, "/admin/block", json!({"key": key})).await;
    let fresh = s
        .idp
        .mint("frank", json!({"iat": cae_proxy::dev::now_secs() + 5}));
    let r = call(&s, "/api", &fresh).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "AccountBlocked");
    // An unblock with an older event time does not win.
    admin(&s, "/admin/unblock", json!({"key": key, "at": 1})).await;
    assert_eq!(
        call(&s, "/api", &fresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    admin(
        &s,
        "/admin/unblock",
        json!({"key": key, "at": cae_proxy::dev::now_secs() + 1}),
    )
    .await;
    assert_eq!(call(&s, "/api", &fresh).await.status, StatusCode::OK);
}

#[tokio::test]
async fn token_ip_binding_named_locations_and_spoofed_forwarded_for() {
    let s = setup().await;
    let elsewhere = s.idp.mint("gina", json!({"ipaddr": "203.0.113.5"}));
    let here = s.idp.mint("gina", json!({"ipaddr": "127.0.0.1"}));
    assert_eq!(call(&s, "/ip", &here).await.status, StatusCode::OK);
    let before = cae_proxy::dev::now_secs();
    // The caller claims to be the token's address; the peer is not a trusted proxy.
    let r = get(
        &client(),
        &s.h.url("public", "/ip"),
        &[
            ("authorization", &format!("Bearer {elsewhere}")),
            ("x-forwarded-for", "203.0.113.5"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    let www = r.header("www-authenticate").unwrap();
    assert!(www.contains(r#"error="insufficient_claims""#), "{www}");
    let nbf: i64 = decode_claims(www)["access_token"]["nbf"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        nbf >= before && nbf <= cae_proxy::dev::now_secs(),
        "nbf {nbf} is the decision time"
    );
    // The token's ipaddr is not checked where the route does not ask for it.
    assert_eq!(call(&s, "/api", &elsewhere).await.status, StatusCode::OK);
    // Named locations: 127.0.0.1 is outside 10.0.0.0/8.
    let r = call(&s, "/loc", &here).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json()["message"],
        "the request address is not in a location this route allows"
    );
}

#[tokio::test]
async fn signal_fed_bindings_apply_where_the_route_asks() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let t = s.idp.mint("hank", json!({"sid": "s-bound"}));
    let key = json!({"type": "session", "iss": iss, "sid": "s-bound"});
    assert_eq!(
        admin(
            &s,
            "/admin/bind",
            json!({"key": key, "nets": ["10.0.0.0/8"]})
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, "/bound", &t).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&s, "/api", &t).await.status, StatusCode::OK);
    admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(call(&s, "/bound", &t).await.status, StatusCode::OK);
    let r = admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["not-an-ip"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["message"],
        "\"not-an-ip\" is not an IP address or CIDR"
    );
}

#[tokio::test]
async fn step_up_in_both_dialects() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let r = call(&s, "/stepup", &s.idp.mint("ivy", json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{iss}/authorize", error="insufficient_claims", claims="{}""#,
        acrs_claims("c1")
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(
        acrs_claims("c1"),
        "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"
    );
    assert_eq!(r.json()["code"], "InsufficientAuthenticationContext");
    let t = s
        .idp
        .mint_for_challenge(
            "ivy",
            json!({}),
            r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#,
        )
        .unwrap();
    assert_eq!(call(&s, "/stepup", &t).await.status, StatusCode::OK);

    let r = call(
        &s,
        "/rfc9470",
        &s.idp.mint("ivy", json!({"acr": "urn:example:pwd"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer error="insufficient_user_authentication", error_description="a stronger or more recent authentication is required", acr_values="urn:example:mfa", max_age="300""#
        )
    );
    let now = cae_proxy::dev::now_secs();
    let stale = s.idp.mint(
        "ivy",
        json!({"acr": "urn:example:mfa", "auth_time": now - 3600}),
    );
    assert_eq!(
        call(&s, "/rfc9470", &stale).await.status,
        StatusCode::UNAUTHORIZED
    );
    let ok = s.idp.mint(
        "ivy",
        json!({"acr": "urn:example:mfa", "auth_time": now - 10}),
    );
    assert_eq!(call(&s, "/rfc9470", &ok).await.status, StatusCode::OK);
}

#[tokio::test]
async fn report_only_forwards_and_counts() {
    let s = setup().await;
    let t = s.idp.mint("jack", json!({"ipaddr": "203.0.113.5"}));
    let r = call(&s, "/report", &t).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.up.requests(), 1);
    let m = get(&client(), &s.h.admin_url("/metrics"), &[]).await.text();
    assert!(m.contains(r#"cae_requests_total{route="report",status="200",decision="report_only",reason="ip_not_allowed",role="proxy"} 1"#), "{m}");
    // Report-only never forwards an invalid token.
    assert_eq!(
        call(&s, "/report", "garbage").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn admin_api_auth_listing_search_delete_and_stats() {
    let s = setup().await;
    let c = client();
    let r = send(
        &c,
        Method::POST,
        &s.h.admin_url("/admin/revoke"),
        &[],
        Bytes::from(r#"{"key":{"type":"tenant","tid":"t"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="cae-proxy-admin""#)
    );
    let r = send(
        &c,
        Method::POST,
        &s.h.admin_url("/admin/revoke"),
        &[("authorization", ADMIN)],
        Bytes::from(r#"{"key":{"type":"tenant"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body: missing field `tid`"),
        "{}",
        r.text()
    );
    for i in 0..5 {
        admin(&s, "/admin/revoke", json!({"key": {"type": "subject", "iss": "https://idp", "sub": format!("user-{i}")}, "at": 100 + i})).await;
    }
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "email", "email": "Kim@Example.com"}, "at": 7}),
    )
    .await;
    let r = get(
        &c,
        &s.h.admin_url("/admin/entries/revocations?search=user-&offset=1&limit=2"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"total": 5, "offset": 1, "entries": [
            {"key": {"type": "subject", "iss": "https://idp", "sub": "user-1"}, "revoked_at": 101},
            {"key": {"type": "subject", "iss": "https://idp", "sub": "user-2"}, "revoked_at": 102}
        ]})
    );
    let r = get(
        &c,
        &s.h.admin_url("/admin/entries/revocations?search=kim%40example.com"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(
        r.json()["entries"][0]["key"],
        json!({"type": "email", "email": "kim@example.com"})
    );
    let r = admin(&s, "/admin/delete", json!({"table": "revocations", "key": {"type": "subject", "iss": "https://idp", "sub": "user-0"}})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(
        &c,
        &s.h.admin_url("/admin/stats"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"revocations": 5, "blocks": 0, "bindings": 0, "backend": "redb"})
    );
    assert_eq!(
        get(
            &c,
            &s.h.admin_url("/admin/entries/nope"),
            &[("authorization", ADMIN)]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn expiry_drops_entries_older_than_the_retention() {
    let s = setup().await;
    let now = cae_proxy::dev::now_secs();
    let retention = cae_proxy::config::DEFAULT_RETENTION.as_secs() as i64;
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "tenant", "tid": "old"}, "at": now - retention - 10}),
    )
    .await;
    admin(
        &s,
        "/admin/revoke",
        json!({"key": {"type": "tenant", "tid": "new"}, "at": now}),
    )
    .await;
    admin(&s, "/admin/block", json!({"key": {"type": "subject", "iss": "*", "sub": "blocked"}, "at": now - retention - 10})).await;
    let removed = s.h.proxy.shared.store.expire(now).await.unwrap();
    assert_eq!(removed, 1);
    let st = s.h.proxy.shared.store.tables().stats();
    assert_eq!(
        (st.revocations, st.blocks),
        (1, 1),
        "blocks stay until an unblock"
    );
    // Hours later (explicit clock), the fresh one expires too.
    s.h.proxy
        .shared
        .store
        .expire(now + retention + 1)
        .await
        .unwrap();
    assert_eq!(s.h.proxy.shared.store.tables().stats().revocations, 0);
}

fn binary_config(dir: &std::path::Path, iss: &str, up: &str) -> std::path::PathBuf {
    let text = config(iss, up, &format!("path = \"{}/state.redb\"", dir.display()))
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    let p = dir.join("cae-proxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn acknowledged_admin_writes_survive_sigkill() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(dir.path(), &idp.issuer_url(), &up.url());
    let now = cae_proxy::dev::now_secs();
    let tokens: Vec<String> = (0..20)
        .map(|i| idp.mint(&format!("user-{i}"), json!({"iat": now - 60})))
        .collect();
    let c = client();
    for round in 0..3 {
        let bin = Binary::start(&cfg, 2);
        bin.wait_ready().await;
        let control = idp.mint("control", json!({"iat": now - 60}));
        let r = get(
            &c,
            &bin.url("public", "/api"),
            &[("authorization", &format!("Bearer {control}"))],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "a token nobody revoked passes");
        // Everything acknowledged in earlier rounds is still enforced.
        for (i, t) in tokens.iter().enumerate().take(round * 5) {
            let r = get(
                &c,
                &bin.url("public", "/api"),
                &[("authorization", &format!("Bearer {t}"))],
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "user-{i} revoked before a SIGKILL was forgotten"
            );
        }
        for i in round * 5..round * 5 + 5 {
            let r = send(
                &c,
                Method::POST,
                &bin.url("admin", "/admin/revoke"),
                &[("authorization", ADMIN)],
                Bytes::from(json!({"key": {"type": "subject", "iss": idp.issuer_url(), "sub": format!("user-{i}")}}).to_string()),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
        }
        bin.signal(libc::SIGKILL);
        drop(bin);
    }
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(dir.path(), &idp.issuer_url(), &up.url());
    let mut bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let t = idp.mint("slow", json!({}));
    let url = bin.url("public", "/api/slow?ms=1500");
    let slow = tokio::spawn(async move {
        get(
            &client(),
            &url,
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await
    });
    // Bounded wait until the slow request is in flight at the upstream.
    for _ in 0..2000 {
        if up.requests() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(up.requests(), 1, "the slow request reached the upstream");
    bin.signal(libc::SIGTERM);
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    let code = tokio::task::spawn_blocking(move || bin.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_corrupt_store_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(dir.path(), "http://127.0.0.1:9", "http://127.0.0.1:9");
    std::fs::write(dir.path().join("state.redb"), vec![0x42u8; 16384]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
        .args([
            "run",
            "--config",
            &cfg.display().to_string(),
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("is corrupt or unreadable"), "{log}");
}
