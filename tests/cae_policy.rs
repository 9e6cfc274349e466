//! CAE policy end to end: location deny lists, client IP via trusted proxies, global report-only, live expiry, mTLS admin, revoke CLI, subject IP bindings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin-secret";

/// Message of every location / IP-binding refusal by a named location.
const OUTSIDE_LOCATIONS: &str = "the request address is not in a location this route allows";
/// Message of a refusal by a binding fed by signals or the admin API.
const NOT_BOUND_HERE: &str = "the request address is not allowed for this session";

/// An in-process proxy with a real issuer and upstream on loopback.
struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

/// Routes: `/api` (no IP rule), `/deny` (deny list), `/corp` (allow list with a denied hole),
/// `/ip` (token `ipaddr`), `/bound` (signal/admin bindings). `trusted` fills `trusted_proxies`.
fn policy_config(iss: &str, up: &str, trusted: &str) -> String {
    format!(
        r#"
[server]
log_level = "warn"
trusted_proxies = [{trusted}]
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
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
[[route]]
name = "deny"
path_prefix = "/deny"
upstream = "app"
cae = {{ deny_locations = ["203.0.113.0/24", "2001:db8:bad::/48"] }}
[[route]]
name = "corp"
path_prefix = "/corp"
upstream = "app"
cae = {{ allow_locations = ["10.0.0.0/8", "198.51.100.0/24"], deny_locations = ["10.66.0.0/16"] }}
[[route]]
name = "ip"
path_prefix = "/ip"
upstream = "app"
cae = {{ token_ip = true }}
[[route]]
name = "bound"
path_prefix = "/bound"
upstream = "app"
cae = {{ signal_ip = true }}
"#
    )
}

/// Loopback (the test client) and 192.0.2.0/24 (a second proxy hop) are trusted.
const TRUSTED: &str = r#""127.0.0.1/32", "192.0.2.0/24""#;
/// Only 192.0.2.0/24 is trusted: the test client on 127.0.0.1 is an ordinary, untrusted peer.
const UNTRUSTED: &str = r#""192.0.2.0/24""#;

async fn setup(trusted: &str) -> Setup {
    setup_with(trusted, "").await
}

/// `server_extra`: more `[server]` lines (e.g. `client_ip_header`).
async fn setup_with(trusted: &str, server_extra: &str) -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = policy_config(&idp.issuer_url(), &up.url(), trusted).replacen(
        "[server]\n",
        &format!("[server]\n{server_extra}\n"),
        1,
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

/// GET `path` on the public listener with a bearer token and extra headers.
async fn call(c: &TestClient, s: &Setup, path: &str, token: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    get(c, &s.h.url("public", path), &headers).await
}

async fn admin_post(url: &str, body: Value) -> Reply {
    send(
        &client(),
        Method::POST,
        url,
        &[
            ("authorization", ADMIN),
            ("content-type", "application/json"),
        ],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn admin(s: &Setup, path: &str, body: Value) -> Reply {
    let r = admin_post(&s.h.admin_url(path), body).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    r
}

fn decode_claims(header: &str) -> Value {
    let b64 = header
        .split("claims=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no claims parameter in {header}"));
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("standard base64"),
    )
    .expect("claims JSON")
}

/// A CAE-capable client refused by an IP rule: the exact claims challenge (`nbf` = decision time,
/// between `before` and `after`) and the exact JSON body.
fn assert_ip_claims_challenge(r: &Reply, iss: &str, before: i64, message: &str, rid: &str) {
    let after = now_secs();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    let claims = decode_claims(www);
    let nbf: i64 = claims["access_token"]["nbf"]["value"]
        .as_str()
        .expect("nbf value is a JSON string")
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&nbf),
        "nbf {nbf} is the decision time ({before}..={after})"
    );
    assert_eq!(
        claims,
        json!({"access_token": {"nbf": {"essential": true, "value": nbf.to_string()}}})
    );
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{iss}/authorize", error="insufficient_claims", claims="{}""#,
        nbf_claims(nbf)
    );
    assert_eq!(www, expected);
    assert_body(r, "insufficient_claims", message, rid);
}

/// A client without `cp1` refused by an IP rule: plain `invalid_token`.
fn assert_ip_invalid_token(r: &Reply, message: &str, rid: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let expected =
        format!(r#"Bearer realm="", error="invalid_token", error_description="{message}""#);
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_body(r, "invalid_token", message, rid);
}

/// The JSON body; its `error` is the challenge's own.
fn assert_body(r: &Reply, error: &str, message: &str, rid: &str) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some(rid));
    assert_eq!(
        r.json(),
        json!({
            "error": error,
            "code": "LocationConditionEvaluationSatisfied",
            "message": message,
            "request_id": rid
        })
    );
}

#[tokio::test]
async fn deny_listed_locations_get_the_location_challenge() {
    let s = setup(TRUSTED).await;
    let iss = s.idp.issuer_url();
    let c = client();
    let cp1 = s.idp.mint("nora", json!({}));
    let upper = s.idp.mint("nora", json!({"xms_cc": ["CP1"]}));
    let legacy = s.idp.mint("nora", json!({"xms_cc": []}));

    // Inside a denied range, as told by the trusted proxy (the test client on loopback).
    for (i, xff) in [
        "203.0.113.7",
        "203.0.113.0",
        "203.0.113.255",
        "2001:db8:bad::1",
        "2001:db8:bad:ffff::9",
        "::ffff:203.0.113.9",
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("deny-cp1-{i}");
        let before = now_secs();
        let r = call(
            &c,
            &s,
            "/deny",
            &cp1,
            &[("x-forwarded-for", xff), ("x-request-id", &rid)],
        )
        .await;
        assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, &rid);
    }
    // `xms_cc` is compared case-insensitively.
    let before = now_secs();
    let r = call(
        &c,
        &s,
        "/deny",
        &upper,
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "deny-CP1"),
        ],
    )
    .await;
    assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, "deny-CP1");
    // A client without cp1 cannot answer a claims challenge.
    let r = call(
        &c,
        &s,
        "/deny",
        &legacy,
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "deny-legacy"),
        ],
    )
    .await;
    assert_ip_invalid_token(&r, OUTSIDE_LOCATIONS, "deny-legacy");
    assert_eq!(
        s.up.requests(),
        0,
        "no refused request reached the upstream"
    );

    // Just outside the denied ranges, and the socket address itself: forwarded.
    for xff in [
        Some("203.0.112.255"),
        Some("203.0.114.0"),
        Some("2001:db8:bae::1"),
        None,
    ] {
        let extra: Vec<(&str, &str)> = xff.map(|x| ("x-forwarded-for", x)).into_iter().collect();
        let r = call(&c, &s, "/deny", &cp1, &extra).await;
        assert_eq!(r.status, StatusCode::OK, "{xff:?}: {}", r.text());
    }
    assert_eq!(s.up.requests(), 4);
    // The same address on a route without a location policy passes.
    let r = call(&c, &s, "/api", &cp1, &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(r.status, StatusCode::OK);

    // Allow and deny together: a denied hole inside an allowed range is refused; outside the
    // allowed ranges is refused; inside and outside the hole passes.
    for (xff, ok) in [
        ("10.1.2.3", true),
        ("198.51.100.200", true),
        ("10.66.0.1", false),
        ("10.66.255.254", false),
        ("172.16.0.1", false),
        ("203.0.113.7", false),
    ] {
        let before = now_secs();
        let r = call(
            &c,
            &s,
            "/corp",
            &cp1,
            &[("x-forwarded-for", xff), ("x-request-id", "corp")],
        )
        .await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "{xff}: {}", r.text());
        } else {
            assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, "corp");
        }
    }
    let r = call(
        &c,
        &s,
        "/corp",
        &legacy,
        &[("x-forwarded-for", "10.66.0.1"), ("x-request-id", "corp-l")],
    )
    .await;
    assert_ip_invalid_token(&r, OUTSIDE_LOCATIONS, "corp-l");
}

#[tokio::test]
async fn client_ip_is_the_rightmost_untrusted_forwarded_address_only_via_trusted_peers() {
    let s = setup(TRUSTED).await;
    let iss = s.idp.issuer_url();
    // One client (one keep-alive connection): the address is decided per request.
    let c = client();
    let t = s.idp.mint("olga", json!({}));
    let cases: &[(&str, &str, bool)] = &[
        ("x-forwarded-for", "198.51.100.7", true),
        // 192.0.2.10 is a trusted hop: skipped, the client is the entry to its left.
        ("x-forwarded-for", "198.51.100.7, 192.0.2.10", true),
        // The left-most entry is the client's own claim: only the right-most untrusted counts.
        ("x-forwarded-for", "198.51.100.7, 203.0.113.9", false),
        ("x-forwarded-for", "203.0.113.9, 198.51.100.7", true),
        (
            "x-forwarded-for",
            "203.0.113.9,198.51.100.7 , 192.0.2.1",
            true,
        ),
        // A hop that could not name its client ends the walk at the last trusted hop.
        ("x-forwarded-for", "198.51.100.7, unknown", false),
        // Not the configured header (`client_ip_header` defaults to x-forwarded-for): ignored.
        ("forwarded", "for=198.51.100.7;proto=https", false),
    ];
    for (i, (name, value, allowed)) in cases.iter().enumerate() {
        let rid = format!("xff-{i}");
        let before = now_secs();
        let r = call(
            &c,
            &s,
            "/corp",
            &t,
            &[(name, value), ("x-request-id", &rid)],
        )
        .await;
        if *allowed {
            assert_eq!(r.status, StatusCode::OK, "{name}: {value}: {}", r.text());
        } else {
            assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, &rid);
        }
    }
    // Two X-Forwarded-For lines form one list.
    let r = call(
        &c,
        &s,
        "/corp",
        &t,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The upstream sees the chain extended by the trusted peer.
    assert_eq!(
        s.up.last_headers()["x-forwarded-for"],
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );

    // The token's `ipaddr` binding is checked against the same forwarded address.
    let bound = s.idp.mint("olga", json!({"ipaddr": "198.51.100.7"}));
    let r = call(
        &c,
        &s,
        "/ip",
        &bound,
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let before = now_secs();
    let r = call(
        &c,
        &s,
        "/ip",
        &bound,
        &[
            ("x-forwarded-for", "198.51.100.8"),
            ("x-request-id", "ip-mismatch"),
        ],
    )
    .await;
    assert_ip_claims_challenge(
        &r,
        &iss,
        before,
        "the request comes from another address than the token was issued to",
        "ip-mismatch",
    );
    // Without forwarding headers the address is the socket's (127.0.0.1).
    let r = call(&c, &s, "/ip", &bound, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The same headers from a peer that is not a trusted proxy are ignored.
    let u = setup(UNTRUSTED).await;
    let c = client();
    let t = u.idp.mint("olga", json!({}));
    let local = u.idp.mint("olga", json!({"ipaddr": "127.0.0.1"}));
    for (name, value) in [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-for", "198.51.100.7, 192.0.2.10"),
        ("forwarded", "for=198.51.100.7"),
    ] {
        let before = now_secs();
        let r = call(
            &c,
            &u,
            "/corp",
            &t,
            &[(name, value), ("x-request-id", "spoof")],
        )
        .await;
        assert_ip_claims_challenge(&r, &u.idp.issuer_url(), before, OUTSIDE_LOCATIONS, "spoof");
        // Spoofing into a denied range does not get a request refused either.
        let r = call(&c, &u, "/deny", &t, &[(name, "203.0.113.7")]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        // The token issued to 127.0.0.1 is used from 127.0.0.1, whatever the header says.
        let r = call(&c, &u, "/ip", &local, &[(name, "203.0.113.5")]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }
    // The spoofed chain is not passed on: the upstream sees the peer only.
    assert_eq!(u.up.last_headers()["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn with_client_ip_header_forwarded_only_rfc_7239_names_the_client() {
    let s = setup_with(TRUSTED, "client_ip_header = \"forwarded\"").await;
    let iss = s.idp.issuer_url();
    let c = client();
    let t = s.idp.mint("olga", json!({}));
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("forwarded", "for=198.51.100.7;proto=https")], true),
        (&[("forwarded", "for=\"198.51.100.7:4711\"")], true),
        (&[("forwarded", "for=203.0.113.9, for=198.51.100.7")], true),
        (&[("forwarded", "for=198.51.100.7, for=203.0.113.9")], false),
        (
            &[("forwarded", "for=198.51.100.7;by=x, For=192.0.2.77")],
            true,
        ),
        (&[("forwarded", "for=\"[2001:db8::1]:443\"")], false),
        (&[("forwarded", "for=_hidden")], false),
        // X-Forwarded-For is not the configured header: a client's own one changes nothing.
        (&[("x-forwarded-for", "198.51.100.7")], false),
        (
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("forwarded", "for=203.0.113.9"),
            ],
            false,
        ),
        (
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=198.51.100.7"),
            ],
            true,
        ),
    ];
    for (i, (headers, allowed)) in cases.iter().enumerate() {
        let rid = format!("fwd-{i}");
        let before = now_secs();
        let mut h = headers.to_vec();
        h.push(("x-request-id", &rid));
        let r = call(&c, &s, "/corp", &t, &h).await;
        if *allowed {
            assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.text());
        } else {
            assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, &rid);
        }
    }
    let bound = s.idp.mint("olga", json!({"ipaddr": "198.51.100.7"}));
    let r = call(&c, &s, "/ip", &bound, &[("forwarded", "for=198.51.100.7")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A configuration file for the real binary (JSON logs at info).
fn binary_config(
    dir: &std::path::Path,
    server: &str,
    store: &str,
    iss: &str,
    up: &str,
) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
log_level = "info"
{server}
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
name = "scoped"
path_prefix = "/scoped"
upstream = "app"
scopes = ["write"]
"#
    );
    let p = dir.join("cae-proxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Parsed JSON log lines of a running binary.
fn json_log(bin: &Binary) -> Vec<Value> {
    bin.log()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (bounded) until a log line satisfies `pred`; returns it.
async fn wait_log(bin: &Binary, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1000 {
        if let Some(v) = json_log(bin).into_iter().find(|v| pred(v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no log line {what}; log: {:#?}", bin.log());
}

/// The value of the `cae_requests_total` sample with exactly these labels (any order, either
/// exposition format).
fn requests_total(exposition: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix("cae_requests_total{")?;
        let (set, value) = rest.split_once("} ")?;
        let mut got: Vec<&str> = set.split(',').collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        got.sort_unstable();
        want.sort();
        (got == want).then(|| value.trim().parse().ok()).flatten()
    })
}

#[tokio::test]
async fn global_report_only_forwards_logs_and_counts_what_would_have_been_refused() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Report-only is set for the whole server; no route sets it.
    let cfg = binary_config(
        dir.path(),
        "report_only = true",
        "backend = \"memory\"",
        &idp.issuer_url(),
        &up.url(),
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
        let line = wait_log(&bin, &format!("reporting {rid}"), |v| {
            v["request_id"] == rid
                && v["message"] == "report-only: this request would have been refused"
        })
        .await;
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["reason"], reason, "{line}");
        let access = wait_log(&bin, &format!("access {rid}"), |v| {
            v["target"] == "access" && v["request_id"] == rid
        })
        .await;
        assert_eq!(access["decision"], "report_only", "{access}");
        assert_eq!(access["reason"], reason, "{access}");
        assert_eq!(access["status"], 200, "{access}");
        assert_eq!(access["upstream_status"], 200, "{access}");
    }
    let fresh_access = wait_log(&bin, "access ro-fresh", |v| {
        v["target"] == "access" && v["request_id"] == "ro-fresh"
    })
    .await;
    assert_eq!(fresh_access["decision"], "allow", "{fresh_access}");
    let scope_access = wait_log(&bin, "access ro-scope", |v| {
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
            !json_log(&bin).iter().any(|v| v["request_id"] == rid
                && v["message"] == "report-only: this request would have been refused"),
            "{rid} was not forwarded in report-only mode and must not be reported as such"
        );
    }

    // Metrics count them as report_only.
    let m = get(&c, &bin.url("admin", "/metrics"), &[]).await.text();
    for (route, reason) in [("api", "revoked"), ("ip", "ip_not_allowed")] {
        assert_eq!(
            requests_total(
                &m,
                &[
                    ("route", route),
                    ("status", "200"),
                    ("decision", "report_only"),
                    ("reason", reason),
                    ("role", "proxy")
                ]
            ),
            Some(1.0),
            "{route}/{reason} in:\n{m}"
        );
    }
    assert_eq!(
        requests_total(
            &m,
            &[
                ("route", "scoped"),
                ("status", "403"),
                ("decision", "deny"),
                ("reason", "insufficient_scope"),
                ("role", "proxy")
            ]
        ),
        Some(1.0),
        "{m}"
    );
}

/// `/admin/stats` of the binary.
async fn stats(bin: &Binary) -> Value {
    let r = get(
        &client(),
        &bin.url("admin", "/admin/stats"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn background_expiry_drops_old_entries_in_a_live_process() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A tiny retention: an entry expires 3 s after its time; the expiry pass runs every second.
    let cfg = binary_config(
        dir.path(),
        "",
        &format!(
            "path = \"{}/state.redb\"\nretention = \"3s\"\nexpiry_interval = \"1s\"",
            dir.path().display()
        ),
        &idp.issuer_url(),
        &up.url(),
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
        stats(&bin).await,
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

    // Bounded wait until the background pass ran (due about 4 s from now).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while std::time::Instant::now() < deadline {
        last = stats(&bin).await;
        if last["revocations"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last,
        json!({"revocations": 1, "blocks": 1, "bindings": 0, "backend": "redb"}),
        "the expired revocation and binding are gone, the future revocation and the block stay"
    );
    wait_log(&bin, "about the expiry", |v| {
        v["message"] == "expired old table entries"
    })
    .await;
    // Both entries in one pass, or in two when their times straddle a second.
    let removed: i64 = json_log(&bin)
        .iter()
        .filter(|v| v["message"] == "expired old table entries")
        .filter_map(|v| v["removed"].as_i64())
        .sum();
    assert_eq!(removed, 2, "{:#?}", bin.log());
    assert!(
        !json_log(&bin)
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
        json_log(&bin)
            .iter()
            .filter(|v| v["message"] == "signal store open")
            .count(),
        1,
        "one start only"
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
    // Bounded wait until the admin listener answers over mTLS.
    let mut ready = None;
    for _ in 0..500 {
        if let Ok(r) = try_send(
            &with_cert,
            Method::GET,
            &admin_https(&h, "/readyz"),
            &[],
            Bytes::new(),
        )
        .await
        {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        ready.expect("admin listener answers").status,
        StatusCode::OK
    );

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
        json!({"stored": {"op": "revoke", "key": {"type": "tenant", "tid": "t1"}, "at": 5}})
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

/// Runs the real `cae-proxy` binary with `args`; returns (exit code, stdout, stderr).
async fn cli(args: &[&str], env_token: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cae-proxy"));
    cmd.args(args).env_remove("CAE_ADMIN_TOKEN");
    if let Some(t) = env_token {
        cmd.env("CAE_ADMIN_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn revoke_cli_calls_the_admin_api_of_a_running_proxy() {
    let s = setup(TRUSTED).await;
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
    assert_eq!(call(&c, &s, "/api", &old, &[]).await.status, StatusCode::OK);

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
    assert_eq!(call(&c, &s, "/api", &old, &[]).await.status, StatusCode::OK);
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
        json!({"stored": {"op": "revoke", "key": {"type": "session", "iss": iss, "sid": "sess-cli"}, "at": at}})
    );
    assert!(out.ends_with('\n'));

    // The session's token is refused with the exact challenge; another session still passes.
    let r = call(&c, &s, "/api", &old, &[("x-request-id", "cli-1")]).await;
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
        call(&c, &s, "/api", &other_session, &[]).await.status,
        StatusCode::OK
    );
    // A token issued at the revocation time (the answer to the challenge) passes.
    let claims = format!(r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{at}"}}}}}}"#);
    let fresh = s
        .idp
        .mint_for_challenge("tara", json!({"sid": "sess-cli"}), &claims)
        .unwrap();
    assert_eq!(
        call(&c, &s, "/api", &fresh, &[]).await.status,
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
    let r = call(&c, &s, "/api", &fresh_uma, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "AccountBlocked");
}

#[tokio::test]
async fn subject_ip_bindings_from_the_admin_api() {
    let s = setup(TRUSTED).await;
    let iss = s.idp.issuer_url();
    let c = client();
    let kate = s.idp.mint("kate", json!({"sid": "k-1"}));
    let kate_other_session = s.idp.mint("kate", json!({"sid": "k-2"}));
    let kate_legacy = s.idp.mint("kate", json!({"xms_cc": []}));
    let leo = s.idp.mint("leo", json!({}));
    let key = json!({"type": "subject", "iss": iss, "sub": "kate"});

    // Unbound: passes from anywhere.
    assert_eq!(
        call(&c, &s, "/bound", &kate, &[]).await.status,
        StatusCode::OK
    );

    let r = admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["198.51.100.0/24", "2001:db8:1::/48"]}),
    )
    .await;
    assert_eq!(r.json()["stored"]["op"], "bind");
    // From outside (the socket address 127.0.0.1, or a forwarded one): the challenge, for every
    // session of the subject.
    for (t, xff) in [
        (&kate, None),
        (&kate, Some("198.51.101.1")),
        (&kate_other_session, None),
        (&kate_other_session, Some("2001:db8:2::1")),
    ] {
        let extra: Vec<(&str, &str)> = xff
            .map(|x| ("x-forwarded-for", x))
            .into_iter()
            .chain([("x-request-id", "bind-out")])
            .collect();
        let before = now_secs();
        let r = call(&c, &s, "/bound", t, &extra).await;
        assert_ip_claims_challenge(&r, &iss, before, NOT_BOUND_HERE, "bind-out");
    }
    let r = call(
        &c,
        &s,
        "/bound",
        &kate_legacy,
        &[("x-request-id", "bind-legacy")],
    )
    .await;
    assert_ip_invalid_token(&r, NOT_BOUND_HERE, "bind-legacy");
    // From inside: passes.
    for xff in [
        "198.51.100.20",
        "2001:db8:1:2::3",
        "203.0.113.1, 198.51.100.9",
    ] {
        let r = call(&c, &s, "/bound", &kate, &[("x-forwarded-for", xff)]).await;
        assert_eq!(r.status, StatusCode::OK, "{xff}: {}", r.text());
    }
    // Another subject, and a route that does not ask for bindings: untouched.
    assert_eq!(
        call(&c, &s, "/bound", &leo, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&c, &s, "/api", &kate, &[]).await.status,
        StatusCode::OK
    );

    // A binding for the subject under any issuer, and one by Entra object id.
    admin(
        &s,
        "/admin/bind",
        json!({"key": {"type": "subject", "iss": "*", "sub": "leo"}, "nets": ["192.0.2.0/24"]}),
    )
    .await;
    assert_eq!(
        call(&c, &s, "/bound", &leo, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let entra = s.idp.mint("pairwise-sub", json!({"oid": "object-id-1"}));
    assert_eq!(
        call(&c, &s, "/bound", &entra, &[]).await.status,
        StatusCode::OK
    );
    admin(
        &s,
        "/admin/bind",
        json!({"key": {"type": "subject", "iss": iss, "sub": "object-id-1"}, "nets": ["198.51.100.0/24"]}),
    )
    .await;
    assert_eq!(
        call(&c, &s, "/bound", &entra, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Clearing the binding: passes from anywhere again.
    let r = admin(&s, "/admin/unbind", json!({"key": key})).await;
    assert_eq!(r.json()["stored"]["op"], "unbind");
    for t in [&kate, &kate_other_session, &kate_legacy] {
        assert_eq!(call(&c, &s, "/bound", t, &[]).await.status, StatusCode::OK);
    }
    // An older bind does not undo the newer unbind.
    admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["198.51.100.0/24"], "at": now_secs() - 3600}),
    )
    .await;
    assert_eq!(
        call(&c, &s, "/bound", &kate, &[]).await.status,
        StatusCode::OK
    );
    let r = get(
        &c,
        &s.h.admin_url("/admin/entries/bindings?search=kate"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(r.json()["total"], 1, "{}", r.text());
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
        err.contains("issuer[0].subject_claims: must list one or more claim names")
            && err.contains("issuer[0].session_claim: must name a claim"),
        "{err}"
    );
}
