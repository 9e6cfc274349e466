//! More Shared Signals end to end: every CAEP/RISC/OAuth event the proxy acts on (pushed, checked on real tokens), foreign issuers, SSF discovery issuer mismatch, OAuth client-credentials stream management, RFC 8936 draining/backoff/setErrs, and poll crash safety across SIGKILL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine;
use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{decode_unverified, KeyAlg, SigningKey};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, iss_sub, opaque, DevTransmitter, TransmitterOptions, CAEP, OAUTH, RISC,
};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::ServerHandle;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin-secret";
const PUSH_AUTH: &str = "Bearer push-secret";
/// Receiver id the dev transmitters put in `aud`.
const AUD: &str = "cae-proxy";
const SECEVENT: &str = "application/secevent+jwt";
/// A second transmitter configuration that shares the `tx` key set (another tenant of one IdP).
const LEGACY_ISS: &str = "https://idp.example.com/";
const LEGACY_AUD: &str = "636C69656E745F6964";
const REVOKED_MESSAGE: &str =
    "the token was issued before a revocation of its subject, session or id";

// ---- configuration ----

fn base_config(log_level: &str, iss: &str, up: &str, store: &str) -> String {
    format!(
        r#"
[server]
log_level = "{log_level}"
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
[[issuer]]
name = "legacy"
issuer = "{LEGACY_ISS}"
jwks_uri = "{iss}/jwks"
authorization_uri = "https://idp.example.com/authorize"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
"#
    )
}

const MEMORY: &str = "backend = \"memory\"";

fn redb(dir: &std::path::Path) -> String {
    format!(
        "backend = \"redb\"\npath = \"{}/state.redb\"",
        dir.display()
    )
}

fn signals_listener(address: &str) -> String {
    format!(
        r#"
[[listener]]
name = "signals"
address = "{address}"
role = "signals"
"#
    )
}

fn push_transmitter(name: &str, issuer: &str, jwks: &str, aud: &str, extra: &str) -> String {
    format!(
        r#"
[[transmitter]]
name = "{name}"
issuer = "{issuer}"
jwks_uri = "{jwks}"
audiences = ["{aud}"]
{extra}
[transmitter.push]
path = "/ssf/{name}"
authorization = "{PUSH_AUTH}"
"#
    )
}

fn poll_transmitter(tx: &DevTransmitter, endpoint: &str, poll: &str) -> String {
    format!(
        r#"
[[transmitter]]
name = "poller"
issuer = "{iss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.poll]
endpoint = "{endpoint}"
{poll}
"#,
        iss = tx.issuer_url(),
        jwks = tx.jwks_url(),
    )
}

/// A free loopback port, for a listener whose URL must be written into the configuration.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---- the push setup ----

struct Setup {
    h: Harness,
    idp: DevIssuer,
    /// RS256 transmitter at `/ssf/tx` (risk level threshold: the default, HIGH); its key set
    /// also serves `legacy` at `/ssf/legacy`.
    tx: DevTransmitter,
    /// Transmitter at `/ssf/med` with `risk_revoke_level = "medium"`.
    med: DevTransmitter,
    _up: EchoUpstream,
}

async fn push_setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let med = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let toml = base_config("warn", &idp.issuer_url(), &up.url(), MEMORY)
        + &signals_listener("127.0.0.1:0")
        + &push_transmitter("tx", &tx.issuer_url(), &tx.jwks_url(), AUD, "")
        + &push_transmitter(
            "med",
            &med.issuer_url(),
            &med.jwks_url(),
            AUD,
            "risk_revoke_level = \"medium\"",
        )
        + &push_transmitter("legacy", LEGACY_ISS, &tx.jwks_url(), LEGACY_AUD, "");
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup {
        h,
        idp,
        tx,
        med,
        _up: up,
    }
}

// ---- requests ----

async fn push(h: &Harness, path: &str, set: &str) -> Reply {
    send(
        &client(),
        Method::POST,
        &h.url("signals", path),
        &[
            ("accept", "application/json"),
            ("content-type", SECEVENT),
            ("authorization", PUSH_AUTH),
        ],
        Bytes::from(set.to_string()),
    )
    .await
}

/// Pushes and expects `202 Accepted` with an empty body.
async fn accepted(s: &Setup, path: &str, set: &str) {
    let r = push(&s.h, path, set).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert!(r.body.is_empty(), "202 has an empty body: {:?}", r.text());
}

fn assert_push_error(r: &Reply, err: &str, description: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{err}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{err}");
    assert_eq!(r.header("content-language"), Some("en-US"), "{err}");
    assert_eq!(
        r.json(),
        json!({"err": err, "description": description}),
        "{err}"
    );
}

async fn call_at(url: &str, token: &str) -> Reply {
    get(
        &client(),
        url,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn call(s: &Setup, token: &str) -> Reply {
    call_at(&s.h.url("public", "/api"), token).await
}

async fn admin_get_at(url: &str) -> Value {
    let r = get(&client(), url, &[("authorization", ADMIN)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn stats(h: &Harness) -> Value {
    admin_get_at(&h.admin_url("/admin/stats")).await
}

/// `(revocations, blocks, bindings)` of `/admin/stats`.
async fn table_sizes(h: &Harness) -> (i64, i64, i64) {
    let st = stats(h).await;
    (
        st["revocations"].as_i64().unwrap(),
        st["blocks"].as_i64().unwrap(),
        st["bindings"].as_i64().unwrap(),
    )
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn sets_series(transmitter: &str, event: &str, result: &str) -> String {
    format!(
        r#"cae_sets_received_total{{transmitter="{transmitter}",event="{event}",result="{result}"}}"#
    )
}

/// Waits (bounded) until `cond` resolves to true.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- tokens and answers ----

/// A dev-issuer token for `sub` issued `ago` seconds before now, with `extra` claims.
fn mint(idp: &DevIssuer, sub: &str, ago: i64, extra: Value) -> String {
    let t = now_secs() - ago;
    let mut claims = json!({"iat": t, "nbf": t});
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    idp.mint(sub, claims)
}

fn token(s: &Setup, sub: &str, ago: i64, extra: Value) -> String {
    mint(&s.idp, sub, ago, extra)
}

fn user(s: &Setup, sub: &str) -> Value {
    iss_sub(&s.idp.issuer_url(), sub)
}

fn decode_nbf(header: &str) -> i64 {
    let b64 = header
        .split("claims=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("claims parameter");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("standard base64"),
    )
    .expect("claims JSON");
    claims["access_token"]["nbf"]["value"]
        .as_str()
        .expect("nbf value")
        .parse()
        .unwrap()
}

/// 401 with the claims challenge of a revocation at `at` and the JSON body that goes with it.
async fn assert_revoked_at(url: &str, idp: &DevIssuer, token: &str, at: i64, what: &str) {
    let r = call_at(url, token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{}/authorize", error="insufficient_claims", claims="{}""#,
        idp.issuer_url(),
        nbf_claims(at)
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(expected.as_str()),
        "{what}"
    );
    let body = r.json();
    assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    assert_eq!(
        body["code"], "TokenIssuedBeforeRevocationTimestamp",
        "{what}: {body}"
    );
    assert_eq!(body["message"], REVOKED_MESSAGE, "{what}: {body}");
}

async fn assert_revoked(s: &Setup, token: &str, at: i64, what: &str) {
    assert_revoked_at(&s.h.url("public", "/api"), &s.idp, token, at, what).await;
}

async fn assert_passes(s: &Setup, token: &str, what: &str) {
    let r = call(s, token).await;
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
}

/// 401 `AccountBlocked`: the claims challenge asks for a token issued at the decision time.
async fn assert_blocked(s: &Setup, token: &str, what: &str) {
    let before = now_secs();
    let r = call(s, token).await;
    let after = now_secs();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "invalid_token", "{what}: {body}");
    assert_eq!(body["code"], "AccountBlocked", "{what}: {body}");
    assert_eq!(body["message"], "the account is disabled", "{what}: {body}");
    let header = r.header("www-authenticate").unwrap();
    let prefix = format!(
        r#"Bearer realm="", authorization_uri="{}/authorize", error="insufficient_claims", claims=""#,
        s.idp.issuer_url()
    );
    assert!(header.starts_with(&prefix), "{what}: {header}");
    let nbf = decode_nbf(header);
    assert!((before..=after).contains(&nbf), "{what}: nbf {nbf}");
}

fn jti_of(set: &str) -> String {
    decode_unverified(set).unwrap().1["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- 1. every event the proxy acts on, through push ----

#[tokio::test]
async fn caep_events_pushed_take_their_effect_on_real_tokens() {
    let s = push_setup().await;
    let at = now_secs() - 10;
    let tx = &s.tx;

    // credential-change: every token of the subject issued before the event, whatever the
    // change_type (here a deletion); other subjects are untouched.
    let carl_a = token(&s, "carl", 100, json!({"sid": "c-a"}));
    let carl_b = token(&s, "carl", 100, json!({"sid": "c-b"}));
    let cora = token(&s, "cora", 100, json!({}));
    for t in [&carl_a, &carl_b, &cora] {
        assert_passes(&s, t, "before any event").await;
    }
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::credential_change(
            user(&s, "carl"),
            "password",
            "delete",
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &carl_a, at, "credential-change, session a").await;
    assert_revoked(&s, &carl_b, at, "credential-change, session b").await;
    assert_passes(&s, &cora, "another subject").await;
    assert_passes(&s, &token(&s, "carl", 5, json!({})), "issued after").await;

    // token-claims-change with a user subject: the subject (the client fetches new claims).
    let tina = token(&s, "tina", 100, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::token_claims_change(
            user(&s, "tina"),
            json!({"role": "ro-admin"}),
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &tina, at, "token-claims-change").await;
    assert_passes(&s, &token(&s, "tina", 5, json!({})), "issued after").await;

    // assurance-level-change: an increase does nothing, a decrease revokes the subject.
    let alan = token(&s, "alan", 100, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::assurance_level_change(
            user(&s, "alan"),
            "NIST-AAL",
            "nist-aal3",
            Some("nist-aal2"),
            Some("increase"),
            Some(at - 5),
        )),
    )
    .await;
    assert_passes(&s, &alan, "assurance increase").await;
    assert_eq!(table_sizes(&s.h).await, (2, 0, 0));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::assurance_level_change(
            user(&s, "alan"),
            "NIST-AAL",
            "nist-aal1",
            Some("nist-aal2"),
            Some("decrease"),
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &alan, at, "assurance decrease").await;
    assert_passes(&s, &token(&s, "alan", 5, json!({})), "issued after").await;

    // device-compliance-change: `compliant` does nothing; `not-compliant` with a device member
    // revokes the tokens bound to that device (`deviceid`), whoever holds them, and only those.
    let dana_1 = token(&s, "dana", 100, json!({"deviceid": "dev-1"}));
    let dana_2 = token(&s, "dana", 100, json!({"deviceid": "dev-2"}));
    let erin_1 = token(&s, "erin", 100, json!({"deviceid": "dev-1"}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::device_compliance_change(
            complex(&[("user", user(&s, "dana")), ("device", opaque("dev-2"))]),
            "not-compliant",
            "compliant",
            Some(at),
        )),
    )
    .await;
    assert_passes(&s, &dana_2, "device back to compliant").await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::device_compliance_change(
            complex(&[("user", user(&s, "dana")), ("device", opaque("dev-1"))]),
            "compliant",
            "not-compliant",
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &dana_1, at, "dana on the non-compliant device").await;
    assert_revoked(&s, &erin_1, at, "erin on the non-compliant device").await;
    assert_passes(&s, &dana_2, "dana on her other device").await;
    assert_passes(
        &s,
        &token(&s, "dana", 100, json!({})),
        "dana without a device claim",
    )
    .await;
    // Without a device member: the subject, on every device ("non-compliant" spelling).
    let fred_1 = token(&s, "fred", 100, json!({"deviceid": "dev-7"}));
    let fred_2 = token(&s, "fred", 100, json!({"deviceid": "dev-8"}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::device_compliance_change(
            user(&s, "fred"),
            "compliant",
            "non-compliant",
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &fred_1, at, "fred, device 7").await;
    assert_revoked(&s, &fred_2, at, "fred, device 8").await;

    // session-established without addresses: accepted, recorded nowhere, nobody refused.
    let before = table_sizes(&s.h).await;
    assert_eq!(before, (5, 0, 0), "carl, tina, alan, dev-1, fred");
    let gina = token(&s, "gina", 100, json!({"sid": "g-1"}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::session_established(
            complex(&[("user", user(&s, "gina")), ("session", opaque("g-1"))]),
            Some(at),
        )),
    )
    .await;
    assert_passes(&s, &gina, "session-established").await;
    assert_eq!(table_sizes(&s.h).await, before);
}

#[tokio::test]
async fn risk_level_change_revokes_at_or_above_the_configured_level_only() {
    let s = push_setup().await;
    let at = now_secs() - 10;
    let risk = |t: &DevTransmitter, sub: Value, principal: &str, level: &str| {
        t.sign_set(DevTransmitter::risk_level_change(
            sub,
            principal,
            level,
            Some(at),
        ))
    };

    // `tx` keeps the default threshold, HIGH: MEDIUM does nothing, high (any case) revokes.
    let rick = token(&s, "rick", 100, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &risk(&s.tx, user(&s, "rick"), "USER", "MEDIUM"),
    )
    .await;
    assert_passes(&s, &rick, "MEDIUM below HIGH").await;
    assert_eq!(table_sizes(&s.h).await, (0, 0, 0));
    accepted(
        &s,
        "/ssf/tx",
        &risk(&s.tx, user(&s, "rick"), "USER", "high"),
    )
    .await;
    assert_revoked(&s, &rick, at, "high at HIGH").await;
    assert_passes(&s, &token(&s, "rick", 5, json!({})), "issued after").await;

    // `med` is configured with `risk_revoke_level = "medium"`: LOW does nothing, MEDIUM and
    // HIGH revoke.
    let mona = token(&s, "mona", 100, json!({}));
    let nora = token(&s, "nora", 100, json!({}));
    accepted(
        &s,
        "/ssf/med",
        &risk(&s.med, user(&s, "mona"), "USER", "LOW"),
    )
    .await;
    assert_passes(&s, &mona, "LOW below MEDIUM").await;
    accepted(
        &s,
        "/ssf/med",
        &risk(&s.med, user(&s, "mona"), "USER", "MEDIUM"),
    )
    .await;
    assert_revoked(&s, &mona, at, "MEDIUM at MEDIUM").await;
    accepted(
        &s,
        "/ssf/med",
        &risk(&s.med, user(&s, "nora"), "USER", "HIGH"),
    )
    .await;
    assert_revoked(&s, &nora, at, "HIGH above MEDIUM").await;

    // The principal SESSION of a complex subject: that session only.
    let sally_1 = token(&s, "sally", 100, json!({"sid": "sa-1"}));
    let sally_2 = token(&s, "sally", 100, json!({"sid": "sa-2"}));
    accepted(
        &s,
        "/ssf/tx",
        &risk(
            &s.tx,
            complex(&[("user", user(&s, "sally")), ("session", opaque("sa-1"))]),
            "SESSION",
            "HIGH",
        ),
    )
    .await;
    assert_revoked(&s, &sally_1, at, "the risky session").await;
    assert_passes(&s, &sally_2, "another session of the same user").await;
    assert_eq!(table_sizes(&s.h).await, (4, 0, 0));
}

#[tokio::test]
async fn risc_and_oauth_events_pushed_take_their_effect_on_real_tokens() {
    let s = push_setup().await;
    let now = now_secs();
    let at = now - 10;
    let tx = &s.tx;

    // account-disabled: every token refused, even one issued now, until account-enabled.
    let rita_old = token(&s, "rita", 100, json!({}));
    let rita_new = token(&s, "rita", 0, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::account_disabled(
            user(&s, "rita"),
            Some("hijacking"),
            Some(now - 20),
        )),
    )
    .await;
    assert_blocked(&s, &rita_old, "disabled, old token").await;
    assert_blocked(&s, &rita_new, "disabled, new token").await;
    assert_blocked(&s, &token(&s, "rita", 0, json!({})), "disabled, fresh").await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::account_enabled(
            user(&s, "rita"),
            Some(now - 5),
        )),
    )
    .await;
    assert_passes(&s, &rita_new, "enabled again").await;
    // Tokens issued before the disable stay revoked.
    assert_revoked(&s, &rita_old, now - 20, "issued before the disable").await;

    // account-enabled for an account that was never disabled: nothing changes.
    let eve = token(&s, "eve", 100, json!({}));
    let sizes = table_sizes(&s.h).await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::account_enabled(user(&s, "eve"), Some(at))),
    )
    .await;
    assert_passes(&s, &eve, "enabled, never disabled").await;
    assert_eq!(table_sizes(&s.h).await.0, sizes.0);

    // account-purged: blocked like a disabled account (until an account-enabled).
    let pat = token(&s, "pat", 0, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::account_purged(user(&s, "pat"), Some(at))),
    )
    .await;
    assert_blocked(&s, &pat, "purged").await;
    assert_blocked(&s, &token(&s, "pat", 0, json!({})), "purged, fresh").await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::account_enabled(
            user(&s, "pat"),
            Some(at + 5),
        )),
    )
    .await;
    assert_passes(&s, &pat, "purged then enabled").await;

    // credential-compromise, sessions-revoked (every session) and OAuth tokens-revoked revoke
    // the subject.
    let cody = token(&s, "cody", 100, json!({}));
    let sean_1 = token(&s, "sean", 100, json!({"sid": "se-1"}));
    let sean_2 = token(&s, "sean", 100, json!({"sid": "se-2"}));
    let gabe = token(&s, "gabe", 100, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::credential_compromise(
            user(&s, "cody"),
            "password",
            Some(at),
        )),
    )
    .await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::sessions_revoked(user(&s, "sean"), Some(at))),
    )
    .await;
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(DevTransmitter::tokens_revoked(user(&s, "gabe"), Some(at))),
    )
    .await;
    assert_revoked(&s, &cody, at, "credential-compromise").await;
    assert_revoked(&s, &sean_1, at, "sessions-revoked, session 1").await;
    assert_revoked(&s, &sean_2, at, "sessions-revoked, session 2").await;
    assert_revoked(&s, &gabe, at, "tokens-revoked").await;
    for sub in ["cody", "sean", "gabe"] {
        assert_passes(&s, &token(&s, sub, 5, json!({})), "issued after").await;
    }
    // Revocations: rita, pat (by their disable / purge), cody, sean, gabe.
    let sizes = table_sizes(&s.h).await;
    assert_eq!(sizes.0, 5, "{sizes:?}");

    // Events that are only logged, OAuth token-revoked (one refresh token) and unknown event
    // types (vendor, or a future CAEP name): 202, no effect.
    let lou = token(&s, "lou", 100, json!({}));
    let mut logged: Vec<String> = [
        "account-credential-change-required",
        "identifier-changed",
        "identifier-recycled",
        "opt-in",
        "opt-out-initiated",
        "opt-out-cancelled",
        "opt-out-effective",
        "recovery-activated",
        "recovery-information-changed",
    ]
    .iter()
    .map(|n| format!("{RISC}{n}"))
    .collect();
    logged.push(format!("{OAUTH}token-revoked"));
    logged.push("https://schemas.okta.com/secevent/okta/event-type/device-risk-change".into());
    logged.push(format!("{CAEP}future-event"));
    for uri in &logged {
        let set = tx.sign_set(DevTransmitter::event(
            user(&s, "lou"),
            uri,
            json!({"event_timestamp": at, "reason": "x"}),
        ));
        let r = push(&s.h, "/ssf/tx", &set).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{uri}: {}", r.text());
        assert!(r.body.is_empty(), "{uri}");
    }
    assert_passes(&s, &lou, "logged and unknown events").await;
    assert_eq!(table_sizes(&s.h).await, sizes);
}

// ---- 2. foreign issuers, discovery issuer mismatch ----

#[tokio::test]
async fn a_set_naming_another_transmitter_is_refused_with_invalid_issuer() {
    let s = push_setup().await;
    let at = now_secs() - 10;
    let victim = token(&s, "victim", 100, json!({}));
    let change = |sub: &str| {
        DevTransmitter::credential_change(user(&s, sub), "password", "update", Some(at))
    };
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    let tx = &s.tx;
    let invalid_issuer = "the SET issuer is not the configured transmitter";
    let cases: Vec<(&str, &str, String, &str, String)> = vec![
        (
            "iss of the configured transmitter med, signed with tx's key",
            "/ssf/tx",
            tx.sign_set(with(change("victim"), "iss", json!(s.med.issuer_url()))),
            "invalid_issuer",
            invalid_issuer.into(),
        ),
        (
            "a genuine SET of legacy (same key set) pushed to tx's path",
            "/ssf/tx",
            tx.sign_set(with(
                with(change("victim"), "iss", json!(LEGACY_ISS)),
                "aud",
                json!(LEGACY_AUD),
            )),
            "invalid_issuer",
            invalid_issuer.into(),
        ),
        (
            "a genuine SET of tx pushed to legacy's path",
            "/ssf/legacy",
            tx.sign_set(change("victim")),
            "invalid_issuer",
            invalid_issuer.into(),
        ),
        (
            "an unknown transmitter's iss",
            "/ssf/tx",
            tx.sign_set(with(
                change("victim"),
                "iss",
                json!("https://unknown-transmitter.example.com/"),
            )),
            "invalid_issuer",
            invalid_issuer.into(),
        ),
        (
            "iss differing by two trailing slashes",
            "/ssf/tx",
            tx.sign_set(with(
                change("victim"),
                "iss",
                json!(format!("{}//", tx.issuer_url())),
            )),
            "invalid_issuer",
            invalid_issuer.into(),
        ),
        // The signature is checked before the issuer: med's own SET at tx's path fails on the key.
        (
            "a genuine SET of med (its own key) pushed to tx's path",
            "/ssf/tx",
            s.med.sign_set(change("victim")),
            "invalid_key",
            format!(
                "no key of the transmitter matches kid {:?}",
                s.med.signing_key().kid()
            ),
        ),
    ];
    for (name, path, set, err, description) in &cases {
        let r = push(&s.h, path, set).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text());
        assert_push_error(&r, err, description);
    }
    assert_passes(&s, &victim, "nothing was applied").await;
    assert_eq!(table_sizes(&s.h).await, (0, 0, 0));
    let m = get(&client(), &s.h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(
            &m,
            &sets_series("tx", "credential-change", "invalid_issuer")
        ),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &sets_series("legacy", "credential-change", "invalid_issuer")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, &sets_series("tx", "credential-change", "invalid_key")),
        1.0,
        "{m}"
    );

    // Controls: the right path, and one trailing slash of difference, are accepted.
    accepted(
        &s,
        "/ssf/tx",
        &tx.sign_set(with(
            change("victim"),
            "iss",
            json!(format!("{}/", tx.issuer_url())),
        )),
    )
    .await;
    assert_revoked(&s, &victim, at, "iss with one trailing slash").await;
    let other = token(&s, "other", 100, json!({}));
    accepted(
        &s,
        "/ssf/legacy",
        &tx.sign_set(with(
            with(change("other"), "iss", json!(LEGACY_ISS)),
            "aud",
            json!(LEGACY_AUD),
        )),
    )
    .await;
    assert_revoked(&s, &other, at, "legacy's SET at legacy's path").await;
}

#[tokio::test]
async fn ssf_configuration_naming_another_issuer_keeps_the_transmitter_unready() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some("mgmt-token".into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `bad` expects an issuer the transmitter's ssf-configuration does not name; `good` reads
    // the same document expecting its issuer (with one trailing slash more: still equal).
    let expected_bad = format!("{}/tenant-a", tx.issuer_url());
    let text = base_config("info", &idp.issuer_url(), &up.url(), &redb(dir.path()))
        + &signals_listener("127.0.0.1:0")
        + &format!(
            r#"
[[transmitter]]
name = "good"
issuer = "{iss}/"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/good"
authorization = "{PUSH_AUTH}"

[[transmitter]]
name = "bad"
issuer = "{expected_bad}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/bad"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "http://127.0.0.1:9/ssf/bad"
bearer = "mgmt-token"
events_requested = ["{CAEP}session-revoked"]
"#,
            iss = tx.issuer_url(),
            disc = tx.configuration_url(),
        );
    let cfg = dir.path().join("cae-proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    let bin = Binary::start(&cfg, 3);
    let c = client();
    let failures = r#"cae_key_fetch_failures_total{name="bad"}"#;
    // The discovery document was read and refused several times (the refresher retries).
    {
        let metrics_url = bin.url("admin", "/metrics");
        let (c, url) = (&c, &metrics_url);
        wait_until(
            "three refused discovery fetches",
            Duration::from_secs(15),
            || async move { metric(&get(c, url, &[]).await.text(), failures) >= 3.0 },
        )
        .await;
    }
    let r = get(&c, &bin.url("admin", "/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // /readyz says why: the key fetch's error, and the stream manager's.
    let missing = r.json()["missing"].clone();
    assert_eq!(missing.as_array().map(Vec::len), Some(2), "{missing}");
    assert_eq!(
        missing[1],
        "transmitter bad stream is not active (not created: the SSF configuration was not loaded yet)"
    );
    // The reason is in the log, naming both issuers.
    let why = format!(
        "discovery at {} names issuer {:?}, expected {:?}",
        tx.configuration_url(),
        tx.issuer_url(),
        expected_bad
    );
    assert_eq!(
        missing[0],
        format!("transmitter bad has no keys yet: {why}")
    );
    let escaped = json!(why).to_string();
    let escaped = escaped.trim_matches('"');
    assert!(
        bin.log().iter().any(|l| l.contains(escaped)),
        "no log line says {why:?}: {:?}",
        bin.log()
    );
    // No stream was ever created at the transmitter, and `bad`'s push endpoint answers 503
    // (retry later) rather than a verdict on the SET.
    assert!(tx.streams().is_empty(), "{:?}", tx.streams());
    let set = tx.sign_set(DevTransmitter::session_revoked(
        iss_sub(&idp.issuer_url(), "x"),
        None,
    ));
    let (status, headers, body) = tx
        .push(&bin.url("signals", "/ssf/bad"), Some(PUSH_AUTH), &set)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (503, ""));
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    // The same SET to `good` is accepted: that transmitter is fully usable.
    let (status, _, body) = tx
        .push(&bin.url("signals", "/ssf/good"), Some(PUSH_AUTH), &set)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (202, ""));
    let r = get(&c, &bin.url("admin", "/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "still not ready");
}

// ---- 3. stream management with OAuth client credentials ----

/// `(Authorization header, form body, arrival)` of one token request.
type TokenRequest = (Option<String>, String, Instant);

/// A client-credentials token endpoint (RFC 6749 §4.4, `client_secret_basic`): issues `token`
/// to `client_id` / `secret`, refuses anything else with 401 `invalid_client`.
struct TokenEndpoint {
    _server: ServerHandle,
    url: String,
    /// Every request received.
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn token_endpoint(client_id: &str, secret: &str, token: &str) -> TokenEndpoint {
    let l = listener().await;
    let url = format!("http://{}/oauth2/token", l.local_addr().unwrap());
    let requests: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
    let log = requests.clone();
    let want = Arc::new((client_id.to_string(), secret.to_string(), token.to_string()));
    let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
        let log = log.clone();
        let want = want.clone();
        async move {
            let at = Instant::now();
            let path_ok = *req.method() == Method::POST && req.uri().path() == "/oauth2/token";
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ct_ok = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/x-www-form-urlencoded");
            let body = cae_proxy::dev::read_body(req.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            log.lock().unwrap().push((auth.clone(), body.clone(), at));
            let credentials = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(i, p)| (form_decode(i), form_decode(p)))
                });
            let grant = url::form_urlencoded::parse(body.as_bytes())
                .any(|(k, v)| k == "grant_type" && v == "client_credentials");
            if !path_ok || !ct_ok || !grant {
                return cae_proxy::dev::json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid_request"}),
                );
            }
            if credentials != Some((want.0.clone(), want.1.clone())) {
                let mut r = cae_proxy::dev::json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid_client"}),
                );
                r.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static("Basic realm=\"token\""),
                );
                return r;
            }
            cae_proxy::dev::json_response(
                StatusCode::OK,
                &json!({"access_token": want.2, "token_type": "Bearer", "expires_in": 3600, "scope": "ssf.manage ssf.read"}),
            )
        }
    })
    .unwrap();
    TokenEndpoint {
        _server: server,
        url,
        requests,
    }
}

const CLIENT_ID: &str = "cae-proxy";
/// A secret with characters `client_secret_basic` must form-encode (`:`, `+`, space).
const CLIENT_SECRET: &str = "top s3cret:+";

fn managed_transmitter(
    tx: &DevTransmitter,
    push_url: &str,
    token_url: &str,
    client_secret: &str,
) -> String {
    format!(
        r#"
[[transmitter]]
name = "managed"
issuer = "{iss}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/managed"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "{push_url}"
token_endpoint = "{token_url}"
client_id = "{CLIENT_ID}"
client_secret = "{client_secret}"
scope = "ssf.manage ssf.read"
events_requested = ["{CAEP}credential-change"]
"#,
        iss = tx.issuer_url(),
        disc = tx.configuration_url(),
    )
}

#[tokio::test]
async fn stream_management_uses_a_client_credentials_token() {
    let issued = format!("mgmt-{}", cae_proxy::dev::random_id(12));
    let te = token_endpoint(CLIENT_ID, CLIENT_SECRET, &issued).await;
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(issued.clone()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let port = free_port();
    let push_url = format!("http://127.0.0.1:{port}/ssf/managed");
    let toml = base_config("warn", &idp.issuer_url(), &up.url(), MEMORY)
        + &signals_listener(&format!("127.0.0.1:{port}"))
        + &managed_transmitter(&tx, &push_url, &te.url, CLIENT_SECRET);
    let h = Harness::start(&toml).await;
    // Ready = stream created with the issued token, verification pushed back and accepted.
    wait_until("ready", Duration::from_secs(15), || {
        let url = h.admin_url("/readyz");
        async move { get(&client(), &url, &[]).await.status == StatusCode::OK }
    })
    .await;

    // One token request (the token is cached), client_secret_basic with form-encoded parts.
    let reqs = te.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode("cae-proxy:top+s3cret%3A%2B");
    assert_eq!(
        reqs[0].0.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        reqs[0].1,
        "grant_type=client_credentials&scope=ssf.manage+ssf.read"
    );

    // The transmitter (which accepts only the issued token) has our stream.
    let streams = tx.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["delivery"]["method"], "urn:ietf:rfc:8935");
    assert_eq!(streams[0]["delivery"]["endpoint_url"], push_url.as_str());
    assert_eq!(
        streams[0]["events_requested"],
        json!([format!("{CAEP}credential-change")])
    );
    let stream_url = format!("{}/ssf/stream", tx.issuer_url());
    let r = get(&client(), &stream_url, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the transmitter checks");
    let r = get(
        &client(),
        &stream_url,
        &[("authorization", &format!("Bearer {issued}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // The verification SET came through the stream with our state.
    assert!(
        tx.pushes()
            .iter()
            .any(|p| p.url == push_url && p.status == Some(202)),
        "{:?}",
        tx.pushes()
    );

    // An event delivered by the stream takes effect.
    let at = now_secs() - 10;
    let old = mint(&idp, "streamed", 100, json!({}));
    tx.deliver(&tx.sign_set(DevTransmitter::credential_change(
        iss_sub(&idp.issuer_url(), "streamed"),
        "password",
        "update",
        Some(at),
    )))
    .await;
    assert_eq!(tx.pushes().last().unwrap().status, Some(202));
    assert_revoked_at(&h.url("public", "/api"), &idp, &old, at, "streamed").await;
    assert_eq!(te.requests.lock().unwrap().len(), 1, "still cached");
}

#[tokio::test]
async fn a_refused_client_secret_means_no_stream_and_never_ready() {
    let issued = format!("mgmt-{}", cae_proxy::dev::random_id(12));
    let te = token_endpoint(CLIENT_ID, CLIENT_SECRET, &issued).await;
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(issued.clone()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let toml = base_config("warn", &idp.issuer_url(), &up.url(), MEMORY)
        + &signals_listener("127.0.0.1:0")
        + &managed_transmitter(
            &tx,
            "http://127.0.0.1:9/ssf/managed",
            &te.url,
            "not the secret",
        );
    let h = Harness::start(&toml).await;
    wait_until(
        "two refused token requests",
        Duration::from_secs(15),
        || {
            let n = te.requests.lock().unwrap().len();
            async move { n >= 2 }
        },
    )
    .await;
    let reqs = te.requests.lock().unwrap().clone();
    let wrong = base64::engine::general_purpose::STANDARD.encode("cae-proxy:not+the+secret");
    for r in &reqs {
        assert_eq!(r.0.as_deref(), Some(format!("Basic {wrong}").as_str()));
    }
    // Retried with a backoff (at least a second apart), not in a loop.
    assert!(
        reqs[1].2.duration_since(reqs[0].2) >= Duration::from_millis(900),
        "{:?}",
        reqs[1].2.duration_since(reqs[0].2)
    );
    assert!(tx.streams().is_empty(), "{:?}", tx.streams());
    assert!(tx.pushes().is_empty(), "no verification was asked");
    let r = get(&client(), &h.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (not created: the token endpoint refused client credentials: HTTP 401)"]})
    );
}

// ---- 4. poll delivery ----

/// One poll request seen by [`Forwarder`] and the transmitter's answer.
#[derive(Debug, Clone)]
struct Exchange {
    at: Instant,
    request: Value,
    content_language: Option<String>,
    status: u16,
    response: Value,
}

/// A recording HTTP forwarder in front of a transmitter's poll endpoint.
struct Forwarder {
    _server: ServerHandle,
    url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Forwarder {
    fn log(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

async fn forwarder(target: &str) -> Forwarder {
    let l = listener().await;
    let url = format!("http://{}", l.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
    let rec = log.clone();
    let target = Arc::new(target.to_string());
    let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
        let rec = rec.clone();
        let target = target.clone();
        async move {
            let at = Instant::now();
            let method = req.method().clone();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut headers: Vec<(String, String)> = Vec::new();
            for name in [
                "content-type",
                "accept",
                "authorization",
                "content-language",
            ] {
                if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                    headers.push((name.to_string(), v.to_string()));
                }
            }
            let body = cae_proxy::dev::read_body(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let Ok((status, rh, rb)) = cae_proxy::dev::http_request(
                method,
                &format!("{target}{path}"),
                &hdrs,
                body.clone(),
            )
            .await
            else {
                return cae_proxy::dev::status_response(StatusCode::BAD_GATEWAY);
            };
            rec.lock().unwrap().push(Exchange {
                at,
                request: serde_json::from_slice(&body).unwrap_or(Value::Null),
                content_language: headers
                    .iter()
                    .find(|(k, _)| k == "content-language")
                    .map(|(_, v)| v.clone()),
                status,
                response: serde_json::from_slice(&rb).unwrap_or(Value::Null),
            });
            let ct = rh
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            cae_proxy::dev::response(StatusCode::from_u16(status).unwrap(), &ct, rb)
        }
    })
    .unwrap();
    Forwarder {
        _server: server,
        url,
        log,
    }
}

fn jtis(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Value::Array(a) => a.iter().map(|j| j.as_str().unwrap().to_string()).collect(),
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

#[tokio::test]
async fn poll_drains_more_available_at_once_acks_everything_and_reports_refused_sets() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let fwd = forwarder(&tx.issuer_url()).await;
    let at = now_secs() - 10;
    // 250 valid SETs and, in the second batch, one signed by another key under tx's kid.
    let forger = SigningKey::generate(KeyAlg::Rs256).unwrap();
    let mut valid = Vec::new();
    for i in 0..250 {
        let set = tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), &format!("drain-{i}")),
            "password",
            "update",
            Some(at),
        ));
        tx.queue_for_poll(&set);
        valid.push(jti_of(&set));
        if i == 149 {
            let payload = json!({"iss": tx.issuer_url(), "iat": now_secs(), "jti": "forged-1", "aud": AUD,
                "sub_id": iss_sub(&idp.issuer_url(), "forged-victim"),
                "events": {format!("{CAEP}credential-change"): {"credential_type": "password", "change_type": "update", "event_timestamp": at}}});
            let bad = forger.sign_raw(
                &json!({"typ": "secevent+jwt", "alg": "RS256", "kid": tx.signing_key().kid()}),
                &payload,
            );
            tx.queue_for_poll(&bad);
        }
    }
    assert_eq!(tx.queued().len(), 251);
    // Short polls (`long_poll = false`) every 6 s: only `moreAvailable` makes the proxy poll
    // again before that interval.
    let interval = Duration::from_secs(6);
    let toml = base_config("warn", &idp.issuer_url(), &up.url(), MEMORY)
        + &poll_transmitter(
            &tx,
            &format!("{}/ssf/poll", fwd.url),
            "max_events = 100\nlong_poll = false\ninterval = \"6s\"\ntimeout = \"5s\"",
        );
    let h = Harness::start(&toml).await;
    let fwd_ref = &fwd;
    wait_until(
        "four polls (the fourth acknowledges the last batch)",
        Duration::from_secs(20),
        || async move { fwd_ref.log().len() >= 4 },
    )
    .await;
    let log = fwd.log();
    let batches: Vec<Vec<String>> = log[..3].iter().map(|e| jtis(&e.response["sets"])).collect();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 51],
        "{log:?}"
    );
    for (i, e) in log[..4].iter().enumerate() {
        assert_eq!(e.status, 200, "poll {i}");
        assert_eq!(e.request["maxEvents"], 100, "poll {i}: {}", e.request);
        assert_eq!(e.request["returnImmediately"], true, "poll {i}");
    }
    assert_eq!(log[0].request["ack"], json!([]));
    assert_eq!(log[0].response["moreAvailable"], true);
    assert_eq!(log[1].response["moreAvailable"], true);
    assert_eq!(log[2].response["moreAvailable"], false);
    // Each poll acknowledges the previous batch; the forged SET is in setErrs, not in ack.
    let bad_jti = "forged-1".to_string();
    assert!(batches[1].contains(&bad_jti));
    assert_eq!(jtis(&log[1].request["ack"]), batches[0]);
    assert_eq!(log[1].request.get("setErrs"), None);
    assert_eq!(log[1].content_language, None);
    let mut second = batches[1].clone();
    second.retain(|j| *j != bad_jti);
    assert_eq!(jtis(&log[2].request["ack"]), second);
    assert_eq!(
        log[2].request["setErrs"],
        json!({"forged-1": {"err": "invalid_key", "description": "the SET signature is invalid"}})
    );
    assert_eq!(log[2].content_language.as_deref(), Some("en-US"));
    assert_eq!(jtis(&log[3].request["ack"]), batches[2]);
    assert_eq!(log[3].request.get("setErrs"), None);
    // moreAvailable: the three batches were fetched well within one interval; after the last,
    // the proxy waited the interval.
    let drained = log[2].at.duration_since(log[0].at);
    assert!(drained < interval, "drained in {drained:?}");
    let waited = log[3].at.duration_since(log[2].at);
    assert!(
        waited >= interval - Duration::from_millis(500),
        "{waited:?}"
    );

    // The transmitter: every valid SET acknowledged once, the forged one refused, none left.
    let mut acked = tx.acks();
    acked.sort();
    valid.sort();
    assert_eq!(acked, valid);
    assert_eq!(
        tx.set_errs(),
        vec![(
            bad_jti.clone(),
            json!({"err": "invalid_key", "description": "the SET signature is invalid"})
        )]
    );
    assert!(tx.queued().is_empty());

    // All applied: 250 revocations, each enforced; the forged SET's subject is untouched.
    assert_eq!(table_sizes(&h).await, (250, 0, 0));
    let api = h.url("public", "/api");
    for i in [0, 99, 100, 149, 150, 249] {
        let t = mint(&idp, &format!("drain-{i}"), 100, json!({}));
        assert_revoked_at(&api, &idp, &t, at, &format!("drain-{i}")).await;
    }
    let r = call_at(&api, &mint(&idp, "forged-victim", 100, json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = get(&client(), &h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, &sets_series("poller", "credential-change", "committed")),
        250.0
    );
    assert_eq!(
        metric(
            &m,
            &sets_series("poller", "credential-change", "invalid_key")
        ),
        1.0
    );
}

#[tokio::test]
async fn poll_backs_off_during_a_transmitter_outage_and_resumes() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(1),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let fwd = forwarder(&tx.issuer_url()).await;
    let toml = base_config("warn", &idp.issuer_url(), &up.url(), MEMORY)
        + &poll_transmitter(
            &tx,
            &format!("{}/ssf/poll", fwd.url),
            "interval = \"100ms\"\ntimeout = \"5s\"",
        );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let api = h.url("public", "/api");
    let at = now_secs() - 10;
    let revoke = |sub: &str| {
        tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), sub),
            "password",
            "update",
            Some(at),
        ))
    };
    // Working: a SET is fetched by the long poll and acknowledged.
    let first = revoke("before-outage");
    tx.queue_for_poll(&first);
    let tx_ref = &tx;
    let jti = jti_of(&first);
    {
        let jti = &jti;
        wait_until(
            "the first SET acknowledged",
            Duration::from_secs(10),
            || async move { tx_ref.acks().contains(jti) },
        )
        .await;
    }
    let t = mint(&idp, "before-outage", 100, json!({}));
    assert_revoked_at(&api, &idp, &t, at, "before the outage").await;

    // Outage: every endpoint answers 503. Once the long poll in flight has ended (the first
    // 503), a SET queued meanwhile cannot be fetched.
    tx.set_available(false);
    let outage = Instant::now();
    let fwd_ref = &fwd;
    wait_until(
        "the first failed poll",
        Duration::from_secs(5),
        || async move {
            fwd_ref
                .log()
                .iter()
                .any(|e| e.at >= outage && e.status == 503)
        },
    )
    .await;
    let during = revoke("during-outage");
    tx.queue_for_poll(&during);
    // Watch the poller for a fixed window (not a readiness wait: the count is the point).
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let failed: Vec<Exchange> = fwd
        .log()
        .into_iter()
        .filter(|e| e.at >= outage && e.status == 503)
        .collect();
    // Retried (not given up), but a handful of times in 4 s, not a hot loop.
    assert!(
        (2..=8).contains(&failed.len()),
        "{} polls during the outage: {failed:?}",
        failed.len()
    );
    let gaps: Vec<Duration> = failed
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    for g in &gaps {
        assert!(*g >= Duration::from_millis(200), "{gaps:?}");
    }
    // The backoff grows.
    assert!(
        gaps.windows(2)
            .all(|w| w[1] + Duration::from_millis(50) >= w[0]),
        "{gaps:?}"
    );
    assert!(gaps.last().unwrap() > gaps.first().unwrap(), "{gaps:?}");
    // The SET queued during the outage was not delivered.
    let victim = mint(&idp, "during-outage", 100, json!({}));
    let r = call_at(&api, &victim).await;
    assert_eq!(r.status, StatusCode::OK, "not delivered yet: {}", r.text());

    // Back: the next poll (after the current backoff) fetches and acknowledges it.
    tx.set_available(true);
    let back = Instant::now();
    let jti = jti_of(&during);
    {
        let jti = &jti;
        wait_until(
            "the SET queued during the outage acknowledged",
            Duration::from_secs(15),
            || async move { tx_ref.acks().contains(jti) },
        )
        .await;
    }
    assert_revoked_at(&api, &idp, &victim, at, "after the outage").await;
    let after: Vec<Exchange> = fwd.log().into_iter().filter(|e| e.at >= back).collect();
    assert!(after.iter().all(|e| e.status == 200), "{after:?}");
    assert_eq!(tx.acks(), vec![jti_of(&first), jti]);
    assert!(tx.set_errs().is_empty());
}

// ---- 5. poll crash safety with the real binary ----

#[tokio::test]
async fn polled_sets_survive_sigkill_before_and_after_the_ack() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(1),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    let write_config = |poll: &str| {
        let text = base_config("info", &idp.issuer_url(), &up.url(), &redb(dir.path()))
            + &poll_transmitter(&tx, &tx.poll_url(), poll);
        std::fs::write(&cfg, text).unwrap();
    };
    let c = client();
    let now = now_secs();
    let at = now - 10;
    let old = |sub: &str| idp.mint(sub, json!({"iat": now - 100, "nbf": now - 100}));
    let revoke = |sub: &str| {
        tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), sub),
            "password",
            "update",
            Some(at),
        ))
    };
    let status_of = |bin: &Binary, t: &str| {
        let url = bin.url("public", "/api");
        let auth = format!("Bearer {t}");
        let c = c.clone();
        async move {
            let r = get(&c, &url, &[("authorization", &auth)]).await;
            (r.status, r.text())
        }
    };
    let metrics_of = |bin: &Binary| {
        let url = bin.url("admin", "/metrics");
        let c = c.clone();
        async move { get(&c, &url, &[]).await.text() }
    };
    let committed = sets_series("poller", "credential-change", "committed");
    let duplicate = sets_series("poller", "credential-change", "duplicate");

    // Phase 1: the SET is polled and committed; the ack would go with the next poll, an hour
    // later (short polls, interval 1 h). SIGKILL before that.
    let set1 = revoke("crash-1");
    let jti1 = jti_of(&set1);
    tx.queue_for_poll(&set1);
    write_config("long_poll = false\ninterval = \"1h\"\ntimeout = \"5s\"");
    let bin = Binary::start(&cfg, 2);
    {
        let committed = &committed;
        wait_until("the SET committed", Duration::from_secs(15), || {
            let m = metrics_of(&bin);
            async move { metric(&m.await, committed) == 1.0 }
        })
        .await;
    }
    let victim1 = old("crash-1");
    let (st, body) = status_of(&bin, &victim1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(tx.acks().is_empty(), "not acknowledged yet");
    bin.signal(libc::SIGKILL);
    drop(bin);
    assert!(tx.acks().is_empty());
    assert_eq!(tx.queued().len(), 1, "still queued at the transmitter");

    // Phase 2: restart with the transmitter down. The revocation is enforced from the store
    // alone (nothing could be redelivered yet).
    write_config("interval = \"100ms\"\ntimeout = \"5s\"");
    tx.set_available(false);
    let bin = Binary::start(&cfg, 2);
    let control = old("crash-control");
    wait_until(
        "the public listener serves",
        Duration::from_secs(15),
        || {
            let f = status_of(&bin, &control);
            async move { f.await.0 == StatusCode::OK }
        },
    )
    .await;
    let (st, body) = status_of(&bin, &victim1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "lost across SIGKILL: {body}");
    assert!(
        body.contains("TokenIssuedBeforeRevocationTimestamp"),
        "{body}"
    );
    // Transmitter back: the SET is redelivered, recognised as a duplicate and acknowledged.
    tx.set_available(true);
    {
        let (tx, jti1) = (&tx, &jti1);
        wait_until(
            "the redelivered SET acknowledged",
            Duration::from_secs(20),
            || async move { tx.acks().contains(jti1) },
        )
        .await;
    }
    let m = metrics_of(&bin).await;
    assert_eq!(metric(&m, &committed), 0.0, "{m}");
    assert_eq!(metric(&m, &duplicate), 1.0, "{m}");
    let stats = admin_get_at(&bin.url("admin", "/admin/stats")).await;
    assert_eq!(stats["revocations"], 1, "{stats}");

    // Phase 3: a second SET polled, committed and acknowledged; SIGKILL right after the ack.
    let set2 = revoke("crash-2");
    let jti2 = jti_of(&set2);
    tx.queue_for_poll(&set2);
    {
        let (tx, jti2) = (&tx, &jti2);
        wait_until(
            "the second SET acknowledged",
            Duration::from_secs(15),
            || async move { tx.acks().contains(jti2) },
        )
        .await;
    }
    bin.signal(libc::SIGKILL);
    drop(bin);

    // Phase 4: restart. Both revocations hold; nothing is delivered again.
    let polls_before = tx.polls();
    let bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    {
        let tx = &tx;
        wait_until(
            "the restarted proxy polled",
            Duration::from_secs(10),
            || async move { tx.polls() > polls_before },
        )
        .await;
    }
    for (sub, t) in [("crash-1", &victim1), ("crash-2", &old("crash-2"))] {
        let (st, body) = status_of(&bin, t).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{sub}: {body}");
        assert!(
            body.contains("TokenIssuedBeforeRevocationTimestamp"),
            "{body}"
        );
    }
    assert_eq!(status_of(&bin, &control).await.0, StatusCode::OK);
    let acks = tx.acks();
    assert_eq!(acks, vec![jti1, jti2], "each SET acknowledged exactly once");
    assert!(tx.queued().is_empty());
    let m = metrics_of(&bin).await;
    assert_eq!(metric(&m, &committed) + metric(&m, &duplicate), 0.0, "{m}");
    let stats = admin_get_at(&bin.url("admin", "/admin/stats")).await;
    assert_eq!(stats["revocations"], 2, "{stats}");
}
