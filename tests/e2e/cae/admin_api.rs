//! The admin API: its token, listing, search, delete and stats; behind mTLS (a client without a
//! trusted certificate is refused at the handshake); the `revoke`/`block`/`unblock` CLI against
//! a running proxy.

use std::time::Duration;

use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::now_secs;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

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

/// Starts a proxy whose admin listener requires client certificates; `token` adds a bearer secret.
async fn mtls_admin(token: Option<&str>) -> (Harness, Certs) {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let token = token
        .map(|t| format!("token = \"{t}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        "[server]\nlog_level = \"warn\"\n[[listener]]\nname = \"public\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n{token}[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n[store]\nbackend = \"memory\"\n",
        c.cert.display(),
        c.key.display(),
        c.ca.display(),
    );
    let h = Harness::start_in(dir, &toml).await;
    (h, c)
}

fn admin_https(h: &Harness, path: &str) -> String {
    format!(
        "https://localhost:{}{path}",
        h.proxy.admin_addr().unwrap().port()
    )
}

#[tokio::test]
async fn admin_api_behind_mtls_refuses_clients_without_a_trusted_certificate() {
    let (h, c) = mtls_admin(None).await;
    let with_cert = tls_client(&c, false, true);
    let ready = wait_for(
        Duration::from_secs(5),
        "the admin listener to answer over mTLS",
        || async {
            let url = admin_https(&h, "/readyz");
            try_send(&with_cert, Method::GET, &url, &[], Bytes::new())
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);

    let stats_url = admin_https(&h, "/admin/stats");
    // No client certificate: the TLS handshake is refused (TLS 1.3: certificate_required alert).
    let no_cert = tls_client(&c, false, false);
    let e = try_send(&no_cert, Method::GET, &stats_url, &[], Bytes::new())
        .await
        .expect_err("a client without a certificate is refused");
    assert!(
        e.contains("received fatal alert: CertificateRequired"),
        "{e}"
    );
    let e = try_send(
        &no_cert,
        Method::POST,
        &admin_https(&h, "/admin/revoke"),
        &[("content-type", "application/json")],
        Bytes::from(r#"{"key":{"type":"tenant","tid":"no-cert"}}"#),
    )
    .await
    .expect_err("no write without a certificate");
    assert!(
        e.contains("received fatal alert: CertificateRequired"),
        "{e}"
    );
    // A certificate from another CA: refused as well. That CA has the same name as the trusted
    // one (tests/common `certs`), so the chain is built and its signature check fails.
    let other_dir = tempfile::tempdir().unwrap();
    let other = certs(other_dir.path());
    let foreign = Certs {
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        client_cert: other.client_cert.clone(),
        client_key: other.client_key.clone(),
    };
    let e = try_send(
        &tls_client(&foreign, false, true),
        Method::GET,
        &stats_url,
        &[],
        Bytes::new(),
    )
    .await
    .expect_err("a certificate from an unknown CA is refused");
    assert!(e.contains("received fatal alert: DecryptError"), "{e}");
    // Plain HTTP to the TLS admin port gets no HTTP answer.
    let addr = h.proxy.admin_addr().unwrap();
    let raw_answer = raw(
        addr,
        b"GET /admin/stats HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!raw_answer.starts_with("HTTP/"), "{raw_answer:?}");

    // A valid client certificate: 200 (no bearer secret is configured, mTLS alone protects it).
    let r = get(&with_cert, &stats_url, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"revocations": 0, "blocks": 0, "bindings": 0, "backend": "memory"})
    );
    let r = send(
        &with_cert,
        Method::POST,
        &admin_https(&h, "/admin/revoke"),
        &[("content-type", "application/json")],
        Bytes::from(r#"{"key":{"type":"tenant","tid":"t1"},"at":5}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"stored": {"op": "revoke", "key": {"type": "tenant", "tid": "t1"}, "at": 5}, "changed": 1})
    );
    assert_eq!(
        get(&with_cert, &stats_url, &[]).await.json()["revocations"],
        1
    );
    // The CLI reaches it with the private CA and the client certificate; without the
    // certificate the handshake fails and the CLI says so.
    let admin = format!("https://localhost:{}", h.proxy.admin_addr().unwrap().port());
    let cli = |extra: Vec<String>| {
        let mut args: Vec<String> = ["block", "subject", "mia", "--iss", "*", "--admin", &admin]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra);
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
                    .args(&args)
                    .env_remove("CAE_ADMIN_TOKEN")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let path = |p: &std::path::Path| p.display().to_string();
    let out = cli(vec!["--cacert".into(), path(&c.ca)]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("block failed: "), "{err}");
    let out = cli(vec![
        "--cacert".into(),
        path(&c.ca),
        "--cert".into(),
        path(&c.client_cert),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "block failed: --cert and --key go together\n"
    );
    let out = cli(vec![
        "--cacert".into(),
        path(&c.ca),
        "--cert".into(),
        path(&c.client_cert),
        "--key".into(),
        path(&c.client_key),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stored["stored"]["key"],
        json!({"type": "subject", "iss": "*", "sub": "mia"})
    );
    assert_eq!(get(&with_cert, &stats_url, &[]).await.json()["blocks"], 1);
    // The admin API is not on the public listener.
    let r = get(
        &client(),
        &h.url("public", "/admin/stats"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bearer secret and mTLS together: the certificate alone is not enough.
    let (h2, c2) = mtls_admin(Some("admin-secret")).await;
    let with_cert = tls_client(&c2, false, true);
    let url = admin_https(&h2, "/admin/stats");
    let r = get(&with_cert, &url, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="cae-proxy-admin""#)
    );
    assert_eq!(
        r.json(),
        json!({"error": "unauthorized", "message": "the admin API needs the configured bearer token"})
    );
    assert_eq!(
        get(&with_cert, &url, &[("authorization", ADMIN)])
            .await
            .status,
        StatusCode::OK
    );
    let e = try_send(
        &tls_client(&c2, false, false),
        Method::GET,
        &url,
        &[("authorization", ADMIN)],
        Bytes::new(),
    )
    .await
    .expect_err("the bearer secret alone is not enough either");
    assert!(
        e.contains("received fatal alert: CertificateRequired"),
        "{e}"
    );
}

#[tokio::test]
async fn revoke_cli_calls_the_admin_api_of_a_running_proxy() {
    let s = setup_trusting(TRUSTED, "").await;
    let iss = s.idp.issuer_url();
    let admin_base = format!("http://{}", s.h.proxy.admin_addr().unwrap());
    let c = client();
    let now = now_secs();
    let at = now - 10;
    let old = s.idp.mint(
        "tara",
        json!({"sid": "sess-cli", "iat": now - 100, "nbf": now - 100}),
    );
    let other_session = s.idp.mint(
        "tara",
        json!({"sid": "sess-other", "iat": now - 100, "nbf": now - 100}),
    );
    assert_eq!(
        call_from(&c, &s, "/api", &old, &[]).await.status,
        StatusCode::OK
    );

    // A wrong admin token: non-zero exit, a clear message, nothing stored.
    let at_s = at.to_string();
    let args = |token: &'static str| {
        vec![
            "revoke",
            "session",
            "sess-cli",
            "--iss",
            iss.as_str(),
            "--at",
            at_s.as_str(),
            "--admin",
            admin_base.as_str(),
            "--admin-token",
            token,
        ]
    };
    let (code, out, err) = cli(&args("wrong-secret"), None).await;
    assert_eq!(code, Some(1), "stdout {out:?} stderr {err:?}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        "revoke failed: the admin API answered 401: {\"error\":\"unauthorized\",\"message\":\"the admin API needs the configured bearer token\"}\n"
    );
    assert_eq!(s.h.proxy.shared.store.tables().stats().revocations, 0);
    assert_eq!(
        call_from(&c, &s, "/api", &old, &[]).await.status,
        StatusCode::OK
    );
    // A usage mistake (no --iss for a session) is reported without calling anything.
    let (code, out, err) = cli(
        &[
            "revoke",
            "session",
            "sess-cli",
            "--admin",
            &admin_base,
            "--admin-token",
            "admin-secret",
        ],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        "revoke failed: --iss is required for a session (use \"*\" for any issuer)\n"
    );

    // The right token: exit 0, the stored change on stdout.
    let (code, out, err) = cli(&args("admin-secret"), None).await;
    assert_eq!(code, Some(0), "stderr {err:?}");
    assert_eq!(err, "");
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap(),
        json!({"stored": {"op": "revoke", "key": {"type": "session", "iss": iss, "sid": "sess-cli"}, "at": at}, "changed": 1})
    );
    assert!(out.ends_with('\n'));

    // The session's token is refused with the exact challenge; another session still passes.
    let r = call_from(&c, &s, "/api", &old, &[("x-request-id", "cli-1")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{iss}/authorize", error="insufficient_claims", claims="{}""#,
        nbf_claims(at)
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(
        r.json(),
        json!({
            "error": "insufficient_claims",
            "code": "TokenIssuedBeforeRevocationTimestamp",
            "message": "the token was issued before a revocation of its subject, session or id",
            "request_id": "cli-1"
        })
    );
    assert_eq!(
        call_from(&c, &s, "/api", &other_session, &[]).await.status,
        StatusCode::OK
    );
    // A token issued at the revocation time (the answer to the challenge) passes.
    let claims = format!(r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{at}"}}}}}}"#);
    let fresh = s
        .idp
        .mint_for_challenge("tara", json!({"sid": "sess-cli"}), &claims)
        .unwrap();
    assert_eq!(
        call_from(&c, &s, "/api", &fresh, &[]).await.status,
        StatusCode::OK
    );

    // The token from the environment works too (block: every token of the subject refused).
    let (code, out, err) = cli(
        &[
            "block",
            "subject",
            "uma",
            "--iss",
            "*",
            "--admin",
            &admin_base,
        ],
        Some("admin-secret"),
    )
    .await;
    assert_eq!(code, Some(0), "stdout {out:?} stderr {err:?}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["stored"]["op"], "block");
    assert_eq!(
        v["stored"]["key"],
        json!({"type": "subject", "iss": "*", "sub": "uma"})
    );
    let fresh_uma = s.idp.mint("uma", json!({"iat": now_secs() + 5}));
    let r = call_from(&c, &s, "/api", &fresh_uma, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "AccountBlocked");
}
