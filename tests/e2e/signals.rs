//! Shared Signals end to end: SETs pushed (RFC 8935) and polled (RFC 8936) from a real
//! transmitter, every vector of protocols.md §6, CAEP/RISC effects checked with real requests,
//! SSF stream management and verification, durability across SIGKILL, and freshness metrics.

use std::time::Duration;

use crate::common::*;
use base64::Engine;
use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{hs256_token, unsigned_token, KeyAlg};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, ip_addresses, iss_sub, jwt_id, opaque, DevTransmitter, TransmitterOptions, CAEP, RISC,
    SSF,
};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin-secret";
const PUSH_AUTH: &str = "Bearer push-secret";
/// Receiver id the dev transmitters put in `aud`.
const AUD: &str = "cae-proxy";
/// Issuer and audience of the RFC 8935 §2.1 example.
const LEGACY_ISS: &str = "https://idp.example.com/";
const LEGACY_AUD: &str = "636C69656E745F6964";
const SECEVENT: &str = "application/secevent+jwt";
/// The `state` of the SSF verification example (protocols.md §6), never asked for by us.
const FOREIGN_STATE: &str = "VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo=";

struct Setup {
    h: Harness,
    idp: DevIssuer,
    /// RS256 transmitter at `/ssf/tx`; its key also signs for `legacy` at `/ssf/legacy`.
    tx: DevTransmitter,
    /// ES256 transmitter at `/ssf/es`.
    es: DevTransmitter,
    _up: EchoUpstream,
}

fn base_config(iss: &str, up: &str, store: &str) -> String {
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
[[route]]
name = "bound"
path_prefix = "/bound"
upstream = "app"
cae = {{ signal_ip = true }}
"#
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

fn push_transmitter(name: &str, issuer: &str, jwks: &str, aud: &str, alg: &str) -> String {
    format!(
        r#"
[[transmitter]]
name = "{name}"
issuer = "{issuer}"
jwks_uri = "{jwks}"
audiences = ["{aud}"]
algorithms = ["{alg}"]
[transmitter.push]
path = "/ssf/{name}"
authorization = "{PUSH_AUTH}"
"#
    )
}

const REDB: &str = "backend = \"redb\"\npath = \"{dir}/state.redb\"";

async fn setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let es = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            alg: KeyAlg::Es256,
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let toml = base_config(&idp.issuer_url(), &up.url(), REDB)
        + &signals_listener("127.0.0.1:0")
        + &push_transmitter("tx", &tx.issuer_url(), &tx.jwks_url(), AUD, "RS256")
        + &push_transmitter("es", &es.issuer_url(), &es.jwks_url(), AUD, "ES256")
        + &push_transmitter("legacy", LEGACY_ISS, &tx.jwks_url(), LEGACY_AUD, "RS256");
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup {
        h,
        idp,
        tx,
        es,
        _up: up,
    }
}

// ---- requests ----

async fn push_raw(
    h: &Harness,
    path: &str,
    auth: Option<&str>,
    ct: Option<&str>,
    body: &str,
) -> Reply {
    let mut headers = vec![("accept", "application/json")];
    if let Some(ct) = ct {
        headers.push(("content-type", ct));
    }
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(
        &client(),
        Method::POST,
        &h.url("signals", path),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
}

async fn push(s: &Setup, path: &str, set: &str) -> Reply {
    push_raw(&s.h, path, Some(PUSH_AUTH), Some(SECEVENT), set).await
}

/// Pushes and expects `202 Accepted` with an empty body.
async fn accepted(s: &Setup, path: &str, set: &str) {
    let r = push(s, path, set).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert!(r.body.is_empty(), "202 has an empty body: {:?}", r.text());
    assert_eq!(r.header("content-type"), None);
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
    let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 2, "only err and description: {}", r.text());
}

async fn call_path(h: &Harness, path: &str, token: &str) -> Reply {
    get(
        &client(),
        &h.url("public", path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn call(s: &Setup, token: &str) -> Reply {
    call_path(&s.h, "/api", token).await
}

async fn admin_get(h: &Harness, path: &str) -> Value {
    let r = get(&client(), &h.admin_url(path), &[("authorization", ADMIN)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
}

async fn stats(h: &Harness) -> Value {
    admin_get(h, "/admin/stats").await
}

async fn metrics(h: &Harness) -> String {
    get(&client(), &h.admin_url("/metrics"), &[]).await.text()
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

// ---- tokens and answers ----

/// A token of the dev issuer issued `ago` seconds before now.
fn token(s: &Setup, sub: &str, ago: i64, extra: Value) -> String {
    let t = now_secs() - ago;
    let mut claims = json!({"iat": t, "nbf": t});
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    s.idp.mint(sub, claims)
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

/// 401 with the claims challenge of a revocation at `at` (dev issuer tokens).
async fn assert_revoked(s: &Setup, token: &str, at: i64) {
    let r = call(s, token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{}/authorize", error="insufficient_claims", claims="{}""#,
        s.idp.issuer_url(),
        nbf_claims(at)
    );
    assert_eq!(r.header("www-authenticate"), Some(expected.as_str()));
    assert_eq!(
        decode_claims(&expected),
        json!({"access_token": {"nbf": {"essential": true, "value": at.to_string()}}})
    );
    assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");
}

async fn assert_passes(s: &Setup, token: &str) {
    let r = call(s, token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn assert_blocked(s: &Setup, token: &str) {
    let r = call(s, token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "AccountBlocked", "{}", r.text());
}

// ---- SET construction ----

/// Fills `iss`, `iat`, `jti`, `aud` like `DevTransmitter::sign_set` (to sign with a custom header).
fn filled(tx: &DevTransmitter, payload: Value) -> Value {
    let mut p = payload;
    let m = p.as_object_mut().unwrap();
    m.entry("iss").or_insert(json!(tx.issuer_url()));
    m.entry("iat").or_insert(json!(now_secs()));
    m.entry("jti")
        .or_insert(json!(cae_proxy::dev::random_id(16)));
    m.entry("aud").or_insert(json!(AUD));
    m.retain(|_, v| !v.is_null());
    p
}

/// Signed with the transmitter's key under `header` verbatim.
fn sign_raw(tx: &DevTransmitter, header: Value, payload: Value) -> String {
    tx.signing_key().sign_raw(&header, &filled(tx, payload))
}

fn rs_header(tx: &DevTransmitter) -> Value {
    json!({"typ": "secevent+jwt", "alg": "RS256", "kid": tx.signing_key().kid()})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn user(s: &Setup, sub: &str) -> Value {
    iss_sub(&s.idp.issuer_url(), sub)
}

fn uri(kind: &str, name: &str) -> String {
    format!("{kind}{name}")
}

// ---- 1. push happy path ----

#[tokio::test]
async fn pushed_session_revoked_challenges_that_session_only() {
    let s = setup().await;
    let old = token(&s, "alice", 100, json!({"sid": "sess-a"}));
    let sibling = token(&s, "alice", 100, json!({"sid": "sess-a2"}));
    let other = token(&s, "bob", 100, json!({"sid": "sess-b"}));
    for t in [&old, &sibling, &other] {
        assert_passes(&s, t).await;
    }
    let at = now_secs() - 10;
    let set = s.tx.sign_set(DevTransmitter::session_revoked(
        complex(&[("session", opaque("sess-a")), ("user", user(&s, "alice"))]),
        Some(at),
    ));
    accepted(&s, "/ssf/tx", &set).await;

    assert_revoked(&s, &old, at).await;
    // A token issued after the event (the client answered the challenge) passes.
    let fresh = s.idp.mint("alice", json!({"sid": "sess-a"}));
    assert_passes(&s, &fresh).await;
    // Only that session: another session of alice and bob's session are untouched.
    assert_passes(&s, &sibling).await;
    assert_passes(&s, &other).await;
    let st = stats(&s.h).await;
    assert_eq!(st["revocations"], 1, "{st}");
}

// ---- 2. every negative vector ----

#[tokio::test]
async fn every_negative_vector_is_refused_with_its_err_and_nothing_is_applied() {
    let s = setup().await;
    let victim = token(&s, "victim", 100, json!({}));
    assert_passes(&s, &victim).await;
    let at = now_secs() - 10;
    let revoke =
        || DevTransmitter::credential_change(user(&s, "victim"), "password", "update", Some(at));
    let cc = uri(CAEP, "credential-change");
    let sr = uri(CAEP, "session-revoked");
    let tx = &s.tx;

    let corrupted = {
        let good = tx.sign_set(revoke());
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", sig.into_iter().collect::<String>())
    };
    let legacy_hs256 = hs256_token(
        b"a shared secret",
        &json!({"typ": "secevent+jwt", "alg": "HS256"}),
        &json!({"iss": LEGACY_ISS, "jti": "756E69717565206964656E746966696572", "iat": 1508184845, "aud": LEGACY_AUD,
            "events": {uri(RISC, "account-disabled"): {"subject": {"subject_type": "iss-sub", "iss": LEGACY_ISS, "sub": "7375626A656374"}, "reason": "hijacking"}}}),
    );
    let cases: Vec<(&str, &str, String, &str, String)> = vec![
        (
            "unsigned",
            "/ssf/tx",
            unsigned_token(&json!({"typ": "secevent+jwt", "kid": tx.signing_key().kid()}), &filled(tx, revoke())),
            "invalid_key",
            "the SET is not signed (alg none)".into(),
        ),
        ("corrupted signature", "/ssf/tx", corrupted, "invalid_key", "the SET signature is invalid".into()),
        (
            "unknown kid",
            "/ssf/tx",
            sign_raw(tx, json!({"typ": "secevent+jwt", "alg": "RS256", "kid": "nope"}), revoke()),
            "invalid_key",
            "no key of the transmitter matches kid \"nope\"".into(),
        ),
        (
            "HS256",
            "/ssf/tx",
            hs256_token(
                b"a shared secret",
                &json!({"typ": "secevent+jwt", "kid": tx.signing_key().kid()}),
                &filled(tx, revoke()),
            ),
            "invalid_key",
            "symmetric algorithm HS256 is never accepted".into(),
        ),
        ("RFC 8935 example as given (HS256)", "/ssf/legacy", legacy_hs256, "invalid_key", "symmetric algorithm HS256 is never accepted".into()),
        (
            "ES256 where only RS256 is allowed",
            "/ssf/tx",
            s.es.signing_key().sign(Some(json!({"typ": "secevent+jwt"})), &filled(tx, revoke())),
            "invalid_key",
            "algorithm ES256 is not allowed for this transmitter".into(),
        ),
        (
            "wrong iss",
            "/ssf/tx",
            tx.sign_set(with(revoke(), "iss", json!("https://evil.example.com"))),
            "invalid_issuer",
            "the SET issuer is not the configured transmitter".into(),
        ),
        (
            "wrong aud",
            "/ssf/tx",
            tx.sign_set(with(revoke(), "aud", json!(["https://other.example.com", "cae"]))),
            "invalid_audience",
            "the SET audience does not name this receiver".into(),
        ),
        (
            "typ at+jwt",
            "/ssf/tx",
            sign_raw(tx, with(rs_header(tx), "typ", json!("at+jwt")), revoke()),
            "invalid_request",
            "the typ header \"at+jwt\" is not acceptable for a SET".into(),
        ),
        ("missing jti", "/ssf/tx", tx.sign_set(with(revoke(), "jti", Value::Null)), "invalid_request", "the SET lacks the required claim jti".into()),
        ("missing iat", "/ssf/tx", tx.sign_set(with(revoke(), "iat", Value::Null)), "invalid_request", "the SET lacks the required claim iat".into()),
        (
            "missing events",
            "/ssf/tx",
            tx.sign_set(json!({"sub_id": user(&s, "victim")})),
            "invalid_request",
            "the SET lacks the required claim events".into(),
        ),
        (
            "events = {}",
            "/ssf/tx",
            tx.sign_set(json!({"sub_id": user(&s, "victim"), "events": {}})),
            "invalid_request",
            "the events claim must be an object with at least one member".into(),
        ),
        (
            "non-object event value",
            "/ssf/tx",
            tx.sign_set(json!({"sub_id": user(&s, "victim"), "events": {&sr: "revoked"}})),
            "invalid_request",
            format!("the value of event {sr} is not a JSON object"),
        ),
        (
            "no subject anywhere",
            "/ssf/tx",
            tx.sign_set(json!({"events": {&cc: {"credential_type": "password", "change_type": "update", "event_timestamp": at}}})),
            "invalid_request",
            format!("no subject identifier for event {cc}"),
        ),
        (
            "verification with a foreign state",
            "/ssf/tx",
            tx.sign_set(DevTransmitter::verification("f67e39a0a4d34d56b3aa1bc4cff0069f", Some(FOREIGN_STATE))),
            "invalid_state",
            "the verification state was not requested by this receiver".into(),
        ),
    ];
    for (name, path, set, err, description) in &cases {
        let r = push(&s, path, set).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text());
        assert_push_error(&r, err, description);
    }

    // Transmitter authentication: missing or wrong Authorization, even for a valid SET.
    let valid = tx.sign_set(revoke());
    for auth in [None, Some("Bearer wrong"), Some("Bearer push-secret2")] {
        let r = push_raw(&s.h, "/ssf/tx", auth, Some(SECEVENT), &valid).await;
        assert_push_error(
            &r,
            "authentication_failed",
            "the transmitter is not authenticated",
        );
    }
    // Wrong or missing content type: 415.
    for ct in [Some("application/json"), Some("text/plain"), None] {
        let r = push_raw(&s.h, "/ssf/tx", Some(PUSH_AUTH), ct, &valid).await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct:?}: {}",
            r.text()
        );
    }
    // Above the 64 KiB limit: a valid SET padded past it is 413.
    let big = tx.sign_set(with(revoke(), "padding", json!("x".repeat(70 * 1024))));
    let r = push(&s, "/ssf/tx", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // A declared length above the limit is refused before the body is sent.
    let addr = s.h.proxy.addr("signals").unwrap();
    let head = format!(
        "POST /ssf/tx HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {SECEVENT}\r\nauthorization: {PUSH_AUTH}\r\ncontent-length: 10000000\r\n\r\neyJ"
    );
    let answer = raw(addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Nothing was applied.
    assert_passes(&s, &victim).await;
    let st = stats(&s.h).await;
    assert_eq!(
        (
            st["revocations"].as_i64(),
            st["blocks"].as_i64(),
            st["bindings"].as_i64()
        ),
        (Some(0), Some(0), Some(0)),
        "{st}"
    );
    let m = metrics(&s.h).await;
    assert_eq!(
        metric(
            &m,
            r#"cae_sets_received_total{transmitter="tx",event="credential-change",result="committed"}"#
        ),
        0.0,
        "{m}"
    );
    // The very same SET with the right Authorization is then accepted and applied.
    accepted(&s, "/ssf/tx", &valid).await;
    assert_revoked(&s, &victim, at).await;
}

// ---- 3. every positive edge case ----

#[tokio::test]
async fn every_tolerated_shape_is_accepted_and_takes_effect() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let tx = &s.tx;
    let at = now_secs() - 10;
    let cc = uri(CAEP, "credential-change");
    let change = |sub: &str| {
        DevTransmitter::credential_change(user(&s, sub), "password", "update", Some(at))
    };

    let cases: Vec<(&str, &str, String)> = vec![
        ("typ JWT", "/ssf/tx", sign_raw(tx, with(rs_header(tx), "typ", json!("JWT")), change("typ-jwt"))),
        ("typ application/secevent+jwt", "/ssf/tx", sign_raw(tx, with(rs_header(tx), "typ", json!("Application/SecEvent+JWT")), change("typ-media"))),
        ("typ absent", "/ssf/tx", sign_raw(tx, json!({"alg": "RS256", "kid": tx.signing_key().kid()}), change("typ-none"))),
        ("exp in the past", "/ssf/tx", tx.sign_set(with(change("with-exp"), "exp", json!(now_secs() - 3600)))),
        ("top-level sub beside sub_id", "/ssf/tx", tx.sign_set(with(change("with-sub"), "sub", json!("someone-else")))),
        (
            "subject inside the event with subject_type and iss-sub",
            "/ssf/tx",
            tx.sign_set(json!({"events": {&cc: {"subject": {"subject_type": "iss-sub", "iss": iss, "sub": "in-event"},
                "credential_type": "password", "change_type": "update", "event_timestamp": at}}})),
        ),
        (
            "sub_id and the same in-event subject (applied once)",
            "/ssf/tx",
            tx.sign_set(json!({"sub_id": user(&s, "both"), "events": {&cc: {"subject": user(&s, "both"),
                "credential_type": "password", "change_type": "update", "event_timestamp": at}}})),
        ),
        (
            "complex subject without format",
            "/ssf/tx",
            tx.sign_set(DevTransmitter::credential_change(json!({"user": user(&s, "no-format"), "tenant": opaque("t-1")}), "password", "update", Some(at))),
        ),
        (
            "millisecond event_timestamp",
            "/ssf/tx",
            tx.sign_set(DevTransmitter::credential_change(user(&s, "millis"), "password", "update", Some(at * 1000 + 999))),
        ),
        (
            "ES256 transmitter",
            "/ssf/es",
            s.es.sign_set(DevTransmitter::credential_change(user(&s, "es256"), "password", "update", Some(at))),
        ),
        (
            "array aud naming us among others",
            "/ssf/tx",
            tx.sign_set(with(change("aud-array"), "aud", json!(["https://other.example.com", AUD]))),
        ),
        (
            "unknown members and an unknown event beside a known one",
            "/ssf/tx",
            tx.sign_set(json!({"sub_id": user(&s, "mixed"), "txn": "8675309", "vendor": {"x": 1},
                "events": {&cc: {"credential_type": "fido2-roaming", "change_type": "create", "event_timestamp": at},
                           "https://vendor.example.com/event-type/odd": {"x": 1}}})),
        ),
    ];
    for (name, path, set) in &cases {
        let r = push(&s, path, set).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.text());
        assert!(r.body.is_empty(), "{name}");
    }
    // `application/jwt` (parameters ignored) is accepted like `application/secevent+jwt`.
    let r = push_raw(
        &s.h,
        "/ssf/tx",
        Some(PUSH_AUTH),
        Some("application/jwt; charset=utf-8"),
        &tx.sign_set(change("ct-jwt")),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());

    let subs = [
        "ct-jwt",
        "typ-jwt",
        "typ-media",
        "typ-none",
        "with-exp",
        "with-sub",
        "in-event",
        "both",
        "no-format",
        "millis",
        "es256",
        "aud-array",
        "mixed",
    ];
    for sub in subs {
        let t = token(&s, sub, 100, json!({}));
        assert_revoked(&s, &t, at).await;
        // Issued after the event: passes (milliseconds were read as milliseconds).
        assert_passes(&s, &token(&s, sub, 5, json!({}))).await;
    }
    // The top-level `sub` beside `sub_id` was ignored.
    assert_passes(&s, &token(&s, "someone-else", 100, json!({}))).await;
    assert_eq!(stats(&s.h).await["revocations"], subs.len());

    // Verification with `state: null` and without state: accepted (unprompted).
    for body in [json!({"state": null}), json!({})] {
        let set = tx.sign_set(
            json!({"sub_id": opaque("stream-1"), "events": {uri(SSF, "verification"): body}}),
        );
        accepted(&s, "/ssf/tx", &set).await;
    }
    // Unknown event type: 202, no effect, whatever its shape.
    let before = stats(&s.h).await;
    for set in [
        tx.sign_set(json!({"sub_id": user(&s, "unknown"), "events": {"https://vendor.example.com/event-type/odd": {"x": 1}}})),
        tx.sign_set(json!({"events": {"https://vendor.example.com/event-type/bare": {"subject": "not an identifier"}}})),
        tx.sign_set(json!({"sub_id": {"format": "x-vendor", "handle": "u"}, "events": {&cc: {"credential_type": "password", "change_type": "update"}}})),
    ] {
        accepted(&s, "/ssf/tx", &set).await;
    }
    assert_eq!(stats(&s.h).await, before);
    assert_passes(&s, &token(&s, "unknown", 100, json!({}))).await;
}

#[tokio::test]
async fn top_level_sub_alone_names_a_subject_of_the_set_issuer() {
    let s = setup().await;
    // `legacy` shares its issuer URL with the `legacy` token issuer.
    let at = now_secs() - 10;
    let mint = |sub: &str, ago: i64| {
        let t = now_secs() - ago;
        s.idp
            .mint(sub, json!({"iss": LEGACY_ISS, "iat": t, "nbf": t}))
    };
    let old = mint("top-sub", 100);
    assert_passes(&s, &old).await;
    let set = sign_raw(
        &s.tx,
        rs_header(&s.tx),
        json!({"iss": LEGACY_ISS, "aud": LEGACY_AUD, "sub": "top-sub",
            "events": {uri(CAEP, "credential-change"): {"credential_type": "password", "change_type": "update", "event_timestamp": at}}}),
    );
    accepted(&s, "/ssf/legacy", &set).await;
    let r = call(&s, &old).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"Bearer realm="", authorization_uri="https://idp.example.com/authorize", error="insufficient_claims", claims="{}""#,
                nbf_claims(at)
            )
            .as_str()
        )
    );
    assert_passes(&s, &mint("top-sub", 5)).await;
}

#[tokio::test]
async fn same_set_twice_is_accepted_twice_and_applied_once() {
    let s = setup().await;
    let at = now_secs() - 10;
    let set = s.tx.sign_set(DevTransmitter::credential_change(
        user(&s, "dup"),
        "password",
        "update",
        Some(at),
    ));
    accepted(&s, "/ssf/tx", &set).await;
    accepted(&s, "/ssf/tx", &set).await;
    assert_revoked(&s, &token(&s, "dup", 100, json!({})), at).await;
    let m = metrics(&s.h).await;
    let series = |result: &str| {
        format!(
            r#"cae_sets_received_total{{transmitter="tx",event="credential-change",result="{result}"}}"#
        )
    };
    assert_eq!(metric(&m, &series("committed")), 1.0, "{m}");
    assert_eq!(metric(&m, &series("duplicate")), 1.0, "{m}");
    let entries = admin_get(&s.h, "/admin/entries/revocations").await;
    assert_eq!(entries["total"], 1, "{entries}");
    // Only the first one is a freshness sample.
    assert_eq!(
        metric(
            &m,
            r#"cae_set_enforce_latency_seconds_count{transmitter="tx"}"#
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn rfc8935_example_resigned_blocks_until_a_later_account_enabled() {
    let s = setup().await;
    let mint = |ago: i64| {
        let t = now_secs() - ago;
        s.idp.mint(
            "7375626A656374",
            json!({"iss": LEGACY_ISS, "iat": t, "nbf": t}),
        )
    };
    assert_passes(&s, &mint(0)).await;
    // protocols.md §6 legacy push example, byte for byte, re-signed RS256 with the transmitter key.
    let payload: Value = serde_json::from_str(
        r#"{"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964","events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}}"#,
    )
    .unwrap();
    let set = s.tx.signing_key().sign_raw(&rs_header(&s.tx), &payload);
    accepted(&s, "/ssf/legacy", &set).await;
    // Blocked: even a token issued now is refused.
    let fresh = mint(0);
    let r = call(&s, &fresh).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "AccountBlocked");
    // An account-enabled older than the disable does not unblock.
    let enable = |jti: &str, ts: i64| {
        s.tx.signing_key().sign_raw(
            &rs_header(&s.tx),
            &json!({"iss": LEGACY_ISS, "jti": jti, "iat": now_secs(), "aud": LEGACY_AUD,
                "sub_id": {"format": "iss_sub", "iss": LEGACY_ISS, "sub": "7375626A656374"},
                "events": {uri(RISC, "account-enabled"): {"event_timestamp": ts}}}),
        )
    };
    accepted(&s, "/ssf/legacy", &enable("en-old", 1508184000)).await;
    assert_blocked(&s, &fresh).await;
    accepted(&s, "/ssf/legacy", &enable("en-new", now_secs() - 1)).await;
    assert_passes(&s, &fresh).await;
}

// ---- 4. RISC ordering, credential and claims changes, signal-fed IP bindings ----

#[tokio::test]
async fn account_disabled_and_enabled_follow_event_time() {
    let s = setup().await;
    let now = now_secs();
    let (t0, t1, t2) = (now - 300, now - 200, now - 100);
    let disable = |ts: i64| {
        s.tx.sign_set(DevTransmitter::account_disabled(
            user(&s, "rita"),
            Some("hijacking"),
            Some(ts),
        ))
    };
    let enable = |ts: i64| {
        s.tx.sign_set(DevTransmitter::account_enabled(user(&s, "rita"), Some(ts)))
    };
    let fresh = token(&s, "rita", 0, json!({}));
    let before_t0 = token(&s, "rita", 350, json!({}));
    let between = token(&s, "rita", 250, json!({}));
    let after_t1 = token(&s, "rita", 150, json!({}));

    accepted(&s, "/ssf/tx", &disable(t0)).await;
    assert_blocked(&s, &fresh).await;
    accepted(&s, "/ssf/tx", &enable(t2)).await;
    assert_passes(&s, &fresh).await;
    assert_revoked(&s, &before_t0, t0).await;
    assert_passes(&s, &between).await;

    // A late account-disabled older than the enable: no re-block, but its revocation counts.
    accepted(&s, "/ssf/tx", &disable(t1)).await;
    assert_passes(&s, &fresh).await;
    assert_revoked(&s, &between, t1).await;
    assert_passes(&s, &after_t1).await;

    // Equal times: block wins, whatever the arrival order.
    let t = now - 50;
    let sam = token(&s, "sam", 0, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &s.tx.sign_set(DevTransmitter::account_disabled(
            user(&s, "sam"),
            None,
            Some(t),
        )),
    )
    .await;
    accepted(
        &s,
        "/ssf/tx",
        &s.tx
            .sign_set(DevTransmitter::account_enabled(user(&s, "sam"), Some(t))),
    )
    .await;
    assert_blocked(&s, &sam).await;
    // account-purged blocks too.
    let pat = token(&s, "pat", 0, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &s.tx
            .sign_set(DevTransmitter::account_purged(user(&s, "pat"), Some(t))),
    )
    .await;
    assert_blocked(&s, &pat).await;
}

#[tokio::test]
async fn credential_change_and_token_claims_change_revoke() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let at = now_secs() - 10;
    // credential-change: the whole subject, every session, whatever the change_type.
    let carl1 = token(&s, "carl", 100, json!({"sid": "c-1"}));
    let carl2 = token(&s, "carl", 100, json!({"sid": "c-2"}));
    accepted(
        &s,
        "/ssf/tx",
        &s.tx.sign_set(DevTransmitter::credential_change(
            user(&s, "carl"),
            "fido2-roaming",
            "create",
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &carl1, at).await;
    assert_revoked(&s, &carl2, at).await;

    // token-claims-change with a jwt_id subject: that token only.
    let tok = token(&s, "tina", 100, json!({"jti": "tok-1"}));
    let other = token(&s, "tina", 100, json!({"jti": "tok-2"}));
    accepted(
        &s,
        "/ssf/tx",
        &s.tx.sign_set(DevTransmitter::token_claims_change(
            jwt_id(&iss, "tok-1"),
            json!({"role": "ro-admin"}),
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &tok, at).await;
    assert_passes(&s, &other).await;
    // token-claims-change with a user subject: the subject.
    accepted(
        &s,
        "/ssf/tx",
        &s.tx.sign_set(DevTransmitter::token_claims_change(
            user(&s, "tina"),
            json!({"role": "ro-admin"}),
            Some(at),
        )),
    )
    .await;
    assert_revoked(&s, &other, at).await;
    assert_passes(&s, &token(&s, "tina", 5, json!({"jti": "tok-3"}))).await;
}

#[tokio::test]
async fn ip_addresses_of_session_established_bind_where_the_route_asks() {
    let s = setup().await;
    let now = now_secs();
    let established = |members: &[(&str, Value)], ts: i64| {
        s.tx.sign_set(DevTransmitter::session_established(
            complex(members),
            Some(ts),
        ))
    };
    let ivan = token(&s, "ivan", 0, json!({"sid": "i-1"}));
    assert_eq!(
        call_path(&s.h, "/bound", &ivan).await.status,
        StatusCode::OK
    );
    accepted(
        &s,
        "/ssf/tx",
        &established(
            &[
                ("user", user(&s, "ivan")),
                ("ip-addresses", ip_addresses(&["10.9.8.7", "2001:db8::1"])),
            ],
            now - 20,
        ),
    )
    .await;
    let r = call_path(&s.h, "/bound", &ivan).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_claims""#));
    // Routes that do not ask for signal-fed bindings are not affected.
    assert_passes(&s, &ivan).await;
    // An older event does not replace the binding; a newer one does.
    accepted(
        &s,
        "/ssf/tx",
        &established(
            &[
                ("user", user(&s, "ivan")),
                ("ip-addresses", ip_addresses(&["127.0.0.1"])),
            ],
            now - 30,
        ),
    )
    .await;
    assert_eq!(
        call_path(&s.h, "/bound", &ivan).await.status,
        StatusCode::UNAUTHORIZED
    );
    accepted(
        &s,
        "/ssf/tx",
        &established(
            &[
                ("user", user(&s, "ivan")),
                ("ip-addresses", ip_addresses(&["127.0.0.1"])),
            ],
            now - 10,
        ),
    )
    .await;
    assert_eq!(
        call_path(&s.h, "/bound", &ivan).await.status,
        StatusCode::OK
    );

    // With a session member, the binding is the session's only.
    let bound = token(&s, "vera", 0, json!({"sid": "v-1"}));
    let free = token(&s, "vera", 0, json!({"sid": "v-2"}));
    accepted(
        &s,
        "/ssf/tx",
        &established(
            &[
                ("user", user(&s, "vera")),
                ("session", opaque("v-1")),
                ("ip-addresses", ip_addresses(&["192.0.2.7"])),
            ],
            now - 10,
        ),
    )
    .await;
    assert_eq!(
        call_path(&s.h, "/bound", &bound).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call_path(&s.h, "/bound", &free).await.status,
        StatusCode::OK
    );
}

// ---- 5. poll delivery ----

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn polled_sets_are_applied_acknowledged_or_reported() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(2),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let toml = base_config(&idp.issuer_url(), &up.url(), REDB)
        + &format!(
            r#"
[[transmitter]]
name = "poller"
issuer = "{iss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.poll]
endpoint = "{poll}"
interval = "100ms"
timeout = "5s"
"#,
            iss = tx.issuer_url(),
            jwks = tx.jwks_url(),
            poll = tx.poll_url()
        );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let s = Setup {
        h,
        idp,
        // Not configured here; only to reuse the `Setup` helpers.
        es: DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap(),
        tx,
        _up: up,
    };
    let at = now_secs() - 10;
    let p1 = token(&s, "poll-1", 100, json!({"sid": "ps-1"}));
    let p2 = token(&s, "poll-2", 100, json!({}));
    let p3 = token(&s, "poll-3", 100, json!({}));
    let jti = |set: &str| {
        cae_proxy::dev::keys::decode_unverified(set).unwrap().1["jti"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let v1 = s.tx.sign_set(DevTransmitter::session_revoked(
        complex(&[("user", user(&s, "poll-1")), ("session", opaque("ps-1"))]),
        Some(at),
    ));
    let v2 = s.tx.sign_set(DevTransmitter::credential_change(
        user(&s, "poll-2"),
        "password",
        "update",
        Some(at),
    ));
    let bad_aud = s.tx.sign_set(with(
        DevTransmitter::credential_change(user(&s, "poll-3"), "password", "update", Some(at)),
        "aud",
        json!("someone-else"),
    ));
    let bad_sig = {
        let other = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
        // Signed by another key under our transmitter's kid.
        other.signing_key().sign_raw(
            &rs_header(&s.tx),
            &filled(
                &s.tx,
                DevTransmitter::credential_change(
                    user(&s, "poll-3"),
                    "password",
                    "update",
                    Some(at),
                ),
            ),
        )
    };
    for set in [&v1, &bad_aud, &v2, &bad_sig] {
        s.tx.queue_for_poll(set);
    }
    let tx = &s.tx;
    eventually("acks and setErrs for four SETs", || {
        tx.acks().len() >= 2 && tx.set_errs().len() >= 2
    })
    .await;
    let mut acks = tx.acks();
    acks.sort();
    let mut want = vec![jti(&v1), jti(&v2)];
    want.sort();
    assert_eq!(acks, want, "exactly the valid SETs are acknowledged");
    let mut errs = tx.set_errs();
    errs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want_errs = vec![
        (
            jti(&bad_aud),
            json!({"err": "invalid_audience", "description": "the SET audience does not name this receiver"}),
        ),
        (
            jti(&bad_sig),
            json!({"err": "invalid_key", "description": "the SET signature is invalid"}),
        ),
    ];
    want_errs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(errs, want_errs);
    assert!(tx.queued().is_empty(), "{:?}", tx.queued());

    assert_revoked(&s, &p1, at).await;
    assert_revoked(&s, &p2, at).await;
    assert_passes(&s, &p3).await;
    assert_passes(&s, &token(&s, "poll-1", 100, json!({"sid": "ps-other"}))).await;

    // Redelivery of an acknowledged SET: acknowledged again, applied once.
    tx.queue_for_poll(&v1);
    eventually("the redelivered SET is acknowledged", || {
        tx.acks().len() >= 3
    })
    .await;
    assert_eq!(tx.acks()[2], jti(&v1));
    assert_eq!(tx.set_errs().len(), 2);
    let m = metrics(&s.h).await;
    let series = |result: &str| {
        format!(
            r#"cae_sets_received_total{{transmitter="poller",event="session-revoked",result="{result}"}}"#
        )
    };
    assert_eq!(metric(&m, &series("committed")), 1.0, "{m}");
    assert_eq!(metric(&m, &series("duplicate")), 1.0, "{m}");
    assert_eq!(stats(&s.h).await["revocations"], 2);
}

// ---- 6. stream management and verification ----

async fn readyz(h: &Harness) -> Reply {
    get(&client(), &h.admin_url("/readyz"), &[]).await
}

async fn ready_eventually(h: &Harness, want: StatusCode, what: &str) -> Reply {
    for _ in 0..1000 {
        let r = readyz(h).await;
        if r.status == want {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "/readyz never answered {want} ({what}): {}",
        readyz(h).await.text()
    );
}

#[tokio::test]
async fn managed_stream_is_created_and_verified_before_ready_and_pausing_shows() {
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
    // The transmitter is down when the proxy starts.
    tx.set_available(false);
    // The push URL goes into the stream configuration, so the signals port is chosen up front.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let push_url = format!("http://127.0.0.1:{port}/ssf/managed");
    let toml = base_config(&idp.issuer_url(), &up.url(), REDB)
        + &signals_listener(&format!("127.0.0.1:{port}"))
        + &format!(
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
bearer = "mgmt-token"
events_requested = ["{CAEP}session-revoked", "{CAEP}credential-change"]
"#,
            iss = tx.issuer_url(),
            disc = tx.configuration_url(),
        );
    let h = Harness::start(&toml).await;
    // Once the token issuers' keys are in, only the transmitter holds readiness back, and says
    // why (once its first attempts failed).
    let mut r = readyz(&h).await;
    for _ in 0..1000 {
        if !r.text().contains("issuer ") && r.text().matches("yet: ").count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        r = readyz(&h).await;
    }
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": [
            format!("transmitter managed has no keys yet: {}/.well-known/ssf-configuration answered HTTP 503", tx.issuer_url()),
            "transmitter managed stream is not active (not created: the SSF configuration was not loaded yet)"
        ]})
    );
    assert!(tx.streams().is_empty());

    tx.set_available(true);
    ready_eventually(&h, StatusCode::OK, "stream created and verified").await;
    let streams = tx.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let stream = &streams[0];
    assert_eq!(stream["delivery"]["method"], "urn:ietf:rfc:8935");
    assert_eq!(stream["delivery"]["endpoint_url"], push_url.as_str());
    assert_eq!(stream["delivery"]["authorization_header"], PUSH_AUTH);
    let stream_id = stream["stream_id"].as_str().unwrap().to_string();
    // The transmitter's verification SET (with our state) was pushed to us and accepted.
    let pushes = tx.pushes();
    assert!(
        pushes
            .iter()
            .any(|p| p.url == push_url && p.status == Some(202)),
        "{pushes:?}"
    );

    // A verification with a state we never asked for.
    let foreign = tx.sign_set(DevTransmitter::verification(
        &stream_id,
        Some(FOREIGN_STATE),
    ));
    let (status, headers, body) = tx.push(&push_url, Some(PUSH_AUTH), &foreign).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(headers.get("content-language").unwrap(), "en-US");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"err": "invalid_state", "description": "the verification state was not requested by this receiver"})
    );

    // Events pushed by the stream take effect.
    let at = now_secs() - 10;
    let s = Setup {
        h,
        idp,
        // Not configured here; only to reuse the `Setup` helpers.
        es: DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap(),
        tx,
        _up: up,
    };
    let old = token(&s, "streamed", 100, json!({}));
    s.tx.deliver(&s.tx.sign_set(DevTransmitter::credential_change(
        user(&s, "streamed"),
        "password",
        "update",
        Some(at),
    )))
    .await;
    assert_eq!(s.tx.pushes().last().unwrap().status, Some(202));
    assert_revoked(&s, &old, at).await;

    // Pausing the stream at the transmitter: it announces stream-updated, readiness reports it.
    let set_status = |status: &'static str| {
        let url = format!("{}/ssf/status", s.tx.issuer_url());
        let body =
            json!({"stream_id": stream_id, "status": status, "reason": "maintenance"}).to_string();
        async move {
            send(
                &client(),
                Method::POST,
                &url,
                &[
                    ("authorization", "Bearer mgmt-token"),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body),
            )
            .await
        }
    };
    assert_eq!(set_status("paused").await.status, StatusCode::OK);
    let r = ready_eventually(
        &s.h,
        StatusCode::SERVICE_UNAVAILABLE,
        "paused stream reported",
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (paused)"]})
    );
    assert_eq!(set_status("enabled").await.status, StatusCode::OK);
    ready_eventually(&s.h, StatusCode::OK, "enabled again").await;
}

// ---- 7. durability across SIGKILL ----

#[tokio::test]
async fn acknowledged_pushes_survive_sigkill() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = (base_config(
        &idp.issuer_url(),
        &up.url(),
        &format!(
            "backend = \"redb\"\npath = \"{}/state.redb\"",
            dir.path().display()
        ),
    ) + &signals_listener("127.0.0.1:0")
        + &push_transmitter("tx", &tx.issuer_url(), &tx.jwks_url(), AUD, "RS256"))
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    let cfg = dir.path().join("cae-proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    let now = now_secs();
    let at = now - 10;
    let c = client();
    let users: Vec<String> = (0..5).map(|i| format!("durable-{i}")).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|u| idp.mint(u, json!({"iat": now - 100, "nbf": now - 100})))
        .collect();
    let api = |bin: &Binary, t: &str| {
        let url = bin.url("public", "/api");
        let auth = format!("Bearer {t}");
        let c = c.clone();
        async move { get(&c, &url, &[("authorization", &auth)]).await }
    };

    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    for (u, t) in users.iter().zip(&tokens) {
        assert_eq!(api(&bin, t).await.status, StatusCode::OK);
        let set = tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), u),
            "password",
            "update",
            Some(at),
        ));
        let (status, _, body) = tx
            .push(&bin.url("signals", "/ssf/tx"), Some(PUSH_AUTH), &set)
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (202, ""));
    }
    // Killed right after the last 202.
    bin.signal(libc::SIGKILL);
    drop(bin);

    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let control = idp.mint("control", json!({"iat": now - 100, "nbf": now - 100}));
    assert_eq!(
        api(&bin, &control).await.status,
        StatusCode::OK,
        "a token nobody revoked passes"
    );
    for (u, t) in users.iter().zip(&tokens) {
        let r = api(&bin, t).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{u}: revocation acknowledged with 202 was lost"
        );
        assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");
    }
}

// ---- 8. freshness ----

#[tokio::test]
async fn pushes_record_enforcement_latency() {
    let s = setup().await;
    let m = metrics(&s.h).await;
    assert_eq!(
        metric(
            &m,
            r#"cae_set_enforce_latency_seconds_count{transmitter="tx"}"#
        ),
        0.0,
        "{m}"
    );
    let set =
        s.tx.sign_set(DevTransmitter::session_revoked(user(&s, "fresh"), None));
    accepted(&s, "/ssf/tx", &set).await;
    let es =
        s.es.sign_set(DevTransmitter::session_revoked(user(&s, "fresh-es"), None));
    accepted(&s, "/ssf/es", &es).await;
    let m = metrics(&s.h).await;
    for name in ["tx", "es"] {
        let n = metric(
            &m,
            &format!(r#"cae_set_enforce_latency_seconds_count{{transmitter="{name}"}}"#),
        );
        assert!(n >= 1.0, "{name}: {m}");
        let lag = metric(
            &m,
            &format!(r#"cae_set_event_lag_seconds_count{{transmitter="{name}"}}"#),
        );
        assert!(lag >= 1.0, "{name}: {m}");
    }
}
