//! Revocation: a revoked session, subject, token or tenant gets the claims challenge and a fresh
//! token passes; blocks refuse even fresh tokens until unblocked; an issuer's claim map decides
//! which claims a revocation matches; old entries expire (in a live process too); acknowledged
//! admin writes survive SIGKILL; a corrupt store stops the start with a clear error.

use std::time::Duration;

use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

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
        json!({"stored": {"op": "revoke", "key": {"type": "session", "iss": iss, "sid": "sess-1"}, "at": at}, "changed": 1})
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
async fn an_issuers_claim_map_decides_which_claims_revocations_match() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let iss = idp.issuer_url();
    let h = Harness::start(&format!(
        r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "corp"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api://cae-demo"]
subject_claims = ["employee_id"]
session_claim = "session_id"
token_id_claims = ["token_uid"]
tenant_claim = "org"
device_claim = "device"
email_claims = ["mail"]
[[route]]
upstream = "app"
"#,
        up = up.url()
    ))
    .await;
    h.wait_ready().await;
    let c = client();
    let now = now_secs();
    let call = |t: String| {
        let c = c.clone();
        let url = h.url("public", "/");
        async move {
            get(&c, &url, &[("authorization", &format!("Bearer {t}"))])
                .await
                .status
        }
    };
    let old = |claims: Value| {
        let mut claims = claims;
        claims["iat"] = json!(now - 60);
        idp.mint("someone", claims)
    };
    let admin = |path: &'static str, key: Value| {
        let url = h.admin_url(path);
        async move {
            admin_post(&url, json!({"key": key, "at": now - 10}))
                .await
                .status
        }
    };
    // One revocation per key kind, each naming a value only the mapped claim carries.
    for key in [
        json!({"type": "subject", "iss": iss, "sub": "E-1"}),
        json!({"type": "session", "iss": iss, "sid": "S-1"}),
        json!({"type": "token", "iss": iss, "jti": "T-1"}),
        json!({"type": "tenant", "tid": "O-1"}),
        json!({"type": "device", "id": "D-1"}),
        json!({"type": "email", "email": "m1@corp.example"}),
    ] {
        assert_eq!(admin("/admin/revoke", key).await, StatusCode::OK);
    }
    // The mapped claims are matched...
    for claims in [
        json!({"employee_id": "E-1"}),
        json!({"session_id": "S-1"}),
        json!({"token_uid": "T-1"}),
        json!({"org": "O-1"}),
        json!({"device": "D-1"}),
        json!({"mail": "M1@corp.example"}),
    ] {
        assert_eq!(
            call(old(claims.clone())).await,
            StatusCode::UNAUTHORIZED,
            "{claims}"
        );
    }
    // ...and the default claims no longer are: this issuer's `sub`, `sid`, `jti`, `tid`,
    // `deviceid` and `email` name nothing.
    for claims in [
        json!({"sub": "E-1", "oid": "E-1"}),
        json!({"sid": "S-1"}),
        json!({"jti": "T-1", "uti": "T-1"}),
        json!({"tid": "O-1"}),
        json!({"deviceid": "D-1"}),
        json!({"email": "m1@corp.example", "upn": "m1@corp.example"}),
    ] {
        assert_eq!(call(old(claims.clone())).await, StatusCode::OK, "{claims}");
    }
    // A block by the mapped subject claim.
    assert_eq!(
        admin(
            "/admin/block",
            json!({"type": "subject", "iss": iss, "sub": "E-2"})
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        call(idp.mint("x", json!({"employee_id": "E-2"}))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(idp.mint("E-2", json!({}))).await,
        StatusCode::OK,
        "sub is not a subject claim of this issuer"
    );

    // Bad maps are configuration errors with their paths.
    let err = cae_proxy::config::Config::parse(
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[issuer]]\nname = \"x\"\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"a\"]\nallow_insecure_http = true\nsubject_claims = []\nsession_claim = \" \"\n"
        ),
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "issuer[0].subject_claims (line 9, column 18): must list one or more claim names"
        ) && err.contains("issuer[0].session_claim (line 10, column 17): must name a claim"),
        "{err}"
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

#[tokio::test]
async fn background_expiry_drops_old_entries_in_a_live_process() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A tiny retention: an entry expires 3 s after its time; the expiry pass runs every second.
    let cfg = binary_config(
        dir.path(),
        &idp.issuer_url(),
        &up.url(),
        "",
        &format!(
            "{}\nretention = \"3s\"\nexpiry_interval = \"1s\"",
            redb_store(dir.path())
        ),
    );
    let bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let iss = idp.issuer_url();
    let now = now_secs();
    let admin_url = |p: &str| bin.url("admin", p);
    let old_token = idp.mint("sam", json!({"iat": now - 100, "nbf": now - 100}));
    for (path, body) in [
        // Expires 3 s after `now`.
        (
            "/admin/revoke",
            json!({"key": {"type": "subject", "iss": iss, "sub": "sam"}}),
        ),
        (
            "/admin/bind",
            json!({"key": {"type": "session", "iss": iss, "sid": "s-exp"}, "nets": ["10.0.0.0/8"]}),
        ),
        // Kept: its time is in the future.
        (
            "/admin/revoke",
            json!({"key": {"type": "tenant", "tid": "future"}, "at": now + 3600}),
        ),
        // Kept: a block stays until an unblock, whatever its age.
        (
            "/admin/block",
            json!({"key": {"type": "subject", "iss": iss, "sub": "blocked"}}),
        ),
    ] {
        let r = admin_post(&admin_url(path), body).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }
    assert_eq!(
        admin_get(&bin.admin_url("/admin/stats")).await,
        json!({"revocations": 2, "blocks": 1, "bindings": 1, "backend": "redb"})
    );
    let c = client();
    let auth = format!("Bearer {old_token}");
    let r = get(&c, &bin.url("public", "/api"), &[("authorization", &auth)]).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the revocation is enforced"
    );
    assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");

    // Bounded wait until the background passes ran (due about 4 s from now; the revocation and
    // the binding go in one pass, or in two when their times straddle a second).
    let stats_url = bin.admin_url("/admin/stats");
    let passed = poll_until(Duration::from_secs(30), || async {
        let s = admin_get(&stats_url).await;
        (s["revocations"] == 1 && s["bindings"] == 0).then_some(s)
    })
    .await;
    let last = match passed {
        Some(s) => s,
        None => admin_get(&stats_url).await,
    };
    assert_eq!(
        last,
        json!({"revocations": 1, "blocks": 1, "bindings": 0, "backend": "redb"}),
        "the expired revocation and binding are gone, the future revocation and the block stay"
    );
    // Both entries in one pass, or in two when their times straddle a second. A pass logs
    // after it removed its entries, so the stats above can show both gone before the second
    // pass's line is in the log.
    let removed_so_far = || -> i64 {
        bin.json_log()
            .iter()
            .filter(|v| v["message"] == "expired old table entries")
            .filter_map(|v| v["removed"].as_i64())
            .sum()
    };
    let removed = poll_until(LOG_WITHIN, || async {
        let n = removed_so_far();
        (n >= 2).then_some(n)
    })
    .await
    .unwrap_or_else(removed_so_far);
    assert_eq!(removed, 2, "{:#?}", bin.log());
    assert!(
        !bin.json_log()
            .iter()
            .any(|v| v["message"] == "expiry failed"),
        "{:#?}",
        bin.log()
    );
    let r = get(
        &c,
        &admin_url("/admin/entries/revocations"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"total": 1, "offset": 0, "entries": [
            {"key": {"type": "tenant", "tid": "future"}, "revoked_at": now + 3600}
        ]})
    );
    // The process was never restarted, and the old token works again.
    let r = get(&c, &bin.url("public", "/api"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        bin.json_log()
            .iter()
            .filter(|v| v["message"] == "signal store open")
            .count(),
        1,
        "one start only"
    );
}

#[tokio::test]
async fn acknowledged_admin_writes_survive_sigkill() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(
        dir.path(),
        &idp.issuer_url(),
        &up.url(),
        "",
        &redb_store(dir.path()),
    );
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
async fn a_corrupt_store_stops_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(
        dir.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "",
        &redb_store(dir.path()),
    );
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
