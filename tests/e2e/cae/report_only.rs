//! Report-only: a report-only route (and `server.report_only` for the whole proxy) forwards what
//! it would have refused, logs the refusal and counts it.

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;
use serde_json::json;

use super::*;

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
async fn global_report_only_forwards_logs_and_counts_what_would_have_been_refused() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Report-only is set for the whole server; no route sets it.
    let cfg = binary_config(
        dir.path(),
        &idp.issuer_url(),
        &up.url(),
        "report_only = true",
        "backend = \"memory\"",
    );
    let bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let c = client();
    let now = now_secs();
    let old = idp.mint("paul", json!({"iat": now - 100, "nbf": now - 100}));
    let r = admin_post(
        &bin.url("admin", "/admin/revoke"),
        json!({"key": {"type": "subject", "iss": idp.issuer_url(), "sub": "paul"}, "at": now - 10}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let send_as = |path: &'static str, token: String, rid: &'static str| {
        let c = c.clone();
        let url = bin.url("public", path);
        async move {
            get(
                &c,
                &url,
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("x-request-id", rid),
                ],
            )
            .await
        }
    };
    // Revoked, yet forwarded: the upstream answers.
    let r = send_as("/api", old.clone(), "ro-revoked").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(
        up.requests(),
        1,
        "the revoked token's request reached the upstream"
    );
    // Token ipaddr mismatch on a route that checks it: forwarded too.
    let elsewhere = idp.mint("quinn", json!({"ipaddr": "203.0.113.5"}));
    let r = send_as("/ip", elsewhere, "ro-ip").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(up.requests(), 2);
    // A token nobody revoked: allowed, nothing to report.
    let fresh = idp.mint("rita", json!({}));
    assert_eq!(
        send_as("/api", fresh, "ro-fresh").await.status,
        StatusCode::OK
    );
    assert_eq!(up.requests(), 3);
    // Report-only never forwards an invalid token, nor relaxes scopes.
    let r = send_as("/api", "garbage".to_string(), "ro-garbage").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer realm="", error="invalid_token", error_description=""#),
        "{:?}",
        r.header("www-authenticate")
    );
    let r = send_as("/scoped", old.clone(), "ro-scope").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="", error="insufficient_scope", scope="write""#)
    );
    assert_eq!(
        up.requests(),
        3,
        "refused requests never reach the upstream"
    );

    // The log says what would have been refused, and why.
    for (rid, route, reason) in [
        ("ro-revoked", "api", "revoked"),
        ("ro-ip", "ip", "ip_not_allowed"),
    ] {
        let line = bin
            .wait_log(&format!("reporting {rid}"), |v| {
                v["request_id"] == rid
                    && v["message"] == "report-only: this request would have been refused"
            })
            .await;
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["reason"], reason, "{line}");
        let access = bin
            .wait_log(&format!("access {rid}"), |v| {
                v["target"] == "access" && v["request_id"] == rid
            })
            .await;
        assert_eq!(access["decision"], "report_only", "{access}");
        assert_eq!(access["reason"], reason, "{access}");
        assert_eq!(access["status"], 200, "{access}");
        assert_eq!(access["upstream_status"], 200, "{access}");
    }
    let fresh_access = bin
        .wait_log("access ro-fresh", |v| {
            v["target"] == "access" && v["request_id"] == "ro-fresh"
        })
        .await;
    assert_eq!(fresh_access["decision"], "allow", "{fresh_access}");
    let scope_access = bin
        .wait_log("access ro-scope", |v| {
            v["target"] == "access" && v["request_id"] == "ro-scope"
        })
        .await;
    assert_eq!(scope_access["decision"], "deny", "{scope_access}");
    assert_eq!(scope_access["status"], 403, "{scope_access}");
    assert_eq!(
        scope_access["reason"], "insufficient_scope",
        "the reason of the answer given, not the relaxed revocation: {scope_access}"
    );
    for rid in ["ro-fresh", "ro-garbage", "ro-scope"] {
        assert!(
            !bin.json_log().iter().any(|v| v["request_id"] == rid
                && v["message"] == "report-only: this request would have been refused"),
            "{rid} was not forwarded in report-only mode and must not be reported as such"
        );
    }

    // Metrics count them as report_only.
    let m = get(&c, &bin.url("admin", "/metrics"), &[]).await.text();
    for (route, reason) in [("api", "revoked"), ("ip", "ip_not_allowed")] {
        assert_eq!(
            metric(
                &m,
                &format!(
                    r#"cae_requests_total{{route="{route}",status="200",decision="report_only",reason="{reason}"}}"#
                )
            ),
            Some(1.0),
            "{route}/{reason} in:\n{m}"
        );
    }
    assert_eq!(
        metric(
            &m,
            r#"cae_requests_total{route="scoped",status="403",decision="deny",reason="insufficient_scope"}"#
        ),
        Some(1.0),
        "{m}"
    );
}
