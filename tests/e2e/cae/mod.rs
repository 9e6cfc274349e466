//! CAE enforcement end to end, against one test proxy with a route per policy: `revocation`
//! (revocations, blocks, claim maps, expiry, durability), `locations` (IP rules: token and
//! signal bindings, named locations, the client address through trusted proxies), `step_up`
//! (both dialects), `report_only` (per route and global) and `admin_api` (token and mTLS,
//! listing, search, the CLI). Claims challenges are checked byte for byte.

mod admin_api;
mod locations;
mod report_only;
mod revocation;
mod step_up;

use std::path::{Path, PathBuf};

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use serde_json::Value;

use crate::common::*;

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

/// The CAE test proxy: the public listener, the admin API with its token, the dev issuer and one
/// route per policy: `/api` (revocation only), `/ip` (token `ipaddr`), `/loc` (allow list),
/// `/bound` (signal and admin bindings), `/stepup` (auth context `c1`), `/rfc9470` (ACR and
/// max age), `/report` (report-only with `/ip`'s rule), `/deny` (deny list), `/corp` (allow list
/// with a denied hole), `/scoped` (a scope).
fn config(iss: &str, up: &str) -> Toml {
    Toml::new()
        .public()
        .admin_token()
        .app(up)
        .dev_issuer(iss, "")
        .route("api", "/api", "")
        .route("ip", "/ip", "cae = { token_ip = true }")
        .route("loc", "/loc", r#"cae = { allow_locations = ["10.0.0.0/8"] }"#)
        .route("bound", "/bound", "cae = { signal_ip = true }")
        .route("stepup", "/stepup", r#"cae = { auth_context = "c1" }"#)
        .route(
            "rfc9470",
            "/rfc9470",
            r#"cae = { acr_values = ["urn:example:mfa"], max_age = "5m" }"#,
        )
        .route(
            "report",
            "/report",
            "report_only = true\ncae = { token_ip = true }",
        )
        .route(
            "deny",
            "/deny",
            r#"cae = { deny_locations = ["203.0.113.0/24", "2001:db8:bad::/48"] }"#,
        )
        .route(
            "corp",
            "/corp",
            r#"cae = { allow_locations = ["10.0.0.0/8", "198.51.100.0/24"], deny_locations = ["10.66.0.0/16"] }"#,
        )
        .route("scoped", "/scoped", r#"scopes = ["write"]"#)
}

/// The test proxy with its tables in redb.
async fn setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = config(&idp.issuer_url(), &up.url()).store(REDB).build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

/// The test proxy trusting `trusted` (`trusted_proxies` entries) to name the client address;
/// `server_extra`: more `[server]` lines (e.g. `client_ip_header`).
async fn setup_trusting(trusted: &str, server_extra: &str) -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = config(&idp.issuer_url(), &up.url())
        .server(&format!("{server_extra}\ntrusted_proxies = [{trusted}]"))
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

/// The test proxy's file for the real binary in `dir` (log level `info`, for the log lines
/// the tests wait for); `server_extra`: more `[server]` lines; `store`: the `[store]` lines.
fn binary_config(dir: &Path, iss: &str, up: &str, server_extra: &str, store: &str) -> PathBuf {
    let text = config(iss, up)
        .log_level("info")
        .server(server_extra)
        .store(store)
        .build();
    let p = dir.join("cae-proxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Loopback (the test client) and 192.0.2.0/24 (a second proxy hop) are trusted.
const TRUSTED: &str = r#""127.0.0.1/32", "192.0.2.0/24""#;

/// Only 192.0.2.0/24 is trusted: the test client on 127.0.0.1 is an ordinary, untrusted peer.
const UNTRUSTED: &str = r#""192.0.2.0/24""#;

/// GET `path` on the public listener with a bearer token and extra headers.
async fn call_from(
    c: &TestClient,
    s: &Setup,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    get(c, &s.h.url("public", path), &headers).await
}

/// GET `path` on the public listener with a bearer token.
async fn call(s: &Setup, path: &str, token: &str) -> Reply {
    call_with(&s.h.url("public", path), token).await
}

/// POST `body` to the admin API's `path`; the answer, whatever it is.
async fn admin(s: &Setup, path: &str, body: Value) -> Reply {
    admin_post(&s.h.admin_url(path), body).await
}

/// POST `body` to the admin API's `path`, expecting 200.
async fn admin_ok(s: &Setup, path: &str, body: Value) -> Reply {
    let r = admin(s, path, body).await;
    assert_eq!(r.status, http::StatusCode::OK, "{path}: {}", r.text());
    r
}
