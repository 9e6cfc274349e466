//! The push endpoint (RFC 8935): a pushed SET takes effect and is acknowledged only once durable;
//! every negative vector of docs/protocols.md §7 is refused with its `err` and changes nothing; the
//! tolerated shapes are accepted; duplicates apply once; a SET naming another transmitter is
//! `invalid_issuer`; a client certificate pinned to a transmitter (mTLS) is its identity;
//! acknowledged pushes survive SIGKILL; enforcement latency is measured.

use std::time::Duration;

use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{hs256_token, unsigned_token};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, iss_sub, opaque, DevTransmitter, TransmitterOptions, CAEP, RISC, SSF,
};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn pushed_session_revoked_challenges_that_session_only() {
    let s = setup().await;
    let old = token(&s, "alice", 100, json!({"sid": "sess-a"}));
    let sibling = token(&s, "alice", 100, json!({"sid": "sess-a2"}));
    let other = token(&s, "bob", 100, json!({"sid": "sess-b"}));
    for t in [&old, &sibling, &other] {
        assert_passes(&s, t, "t").await;
    }
    let at = now_secs() - 10;
    let set = s.tx.sign_set(DevTransmitter::session_revoked(
        complex(&[("session", opaque("sess-a")), ("user", user(&s, "alice"))]),
        Some(at),
    ));
    accepted(&s, "/ssf/tx", &set).await;

    assert_revoked(&s, &old, at, "old").await;
    // A token issued after the event (the client answered the challenge) passes.
    let fresh = s.idp.mint("alice", json!({"sid": "sess-a"}));
    assert_passes(&s, &fresh, "fresh").await;
    // Only that session: another session of alice and bob's session are untouched.
    assert_passes(&s, &sibling, "sibling").await;
    assert_passes(&s, &other, "other").await;
    let st = stats(&s.h).await;
    assert_eq!(st["revocations"], 1, "{st}");
}

#[tokio::test]
async fn every_negative_vector_is_refused_with_its_err_and_nothing_is_applied() {
    let s = setup().await;
    let victim = token(&s, "victim", 100, json!({}));
    assert_passes(&s, &victim, "victim").await;
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
        let r = push(&s.h, path, set).await;
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
    let r = push(&s.h, "/ssf/tx", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // A declared length above the limit is refused before the body is sent.
    let addr = s.h.proxy.addr("signals").unwrap();
    let head = format!(
        "POST /ssf/tx HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {SECEVENT}\r\nauthorization: {PUSH_AUTH}\r\ncontent-length: 10000000\r\n\r\neyJ"
    );
    let answer = raw(addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Nothing was applied.
    assert_passes(&s, &victim, "victim").await;
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
    let m = s.h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"cae_sets_received_total{transmitter="tx",event="credential-change",result="committed"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
    // The very same SET with the right Authorization is then accepted and applied.
    accepted(&s, "/ssf/tx", &valid).await;
    assert_revoked(&s, &victim, at, "victim").await;
}

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
        let r = push(&s.h, path, set).await;
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
        assert_revoked(&s, &t, at, "t").await;
        // Issued after the event: passes (milliseconds were read as milliseconds).
        assert_passes(&s, &token(&s, sub, 5, json!({})), sub).await;
    }
    // The top-level `sub` beside `sub_id` was ignored.
    assert_passes(
        &s,
        &token(&s, "someone-else", 100, json!({})),
        "someone else",
    )
    .await;
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
    assert_passes(
        &s,
        &token(&s, "unknown", 100, json!({})),
        "an unknown subject",
    )
    .await;
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
    assert_revoked(&s, &token(&s, "dup", 100, json!({})), at, "dup").await;
    let m = s.h.metrics().await;
    let series = |result: &str| sets_series("tx", "credential-change", result);
    assert_eq!(metric(&m, &series("committed")), Some(1.0), "{m}");
    assert_eq!(metric(&m, &series("duplicate")), Some(1.0), "{m}");
    let entries = admin_get(&s.h.admin_url("/admin/entries/revocations")).await;
    assert_eq!(entries["total"], 1, "{entries}");
    // Only the first one is a freshness sample.
    assert_eq!(
        metric(
            &m,
            r#"cae_set_enforce_latency_seconds_count{transmitter="tx"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_set_naming_another_transmitter_is_refused_with_invalid_issuer() {
    let s = setup().await;
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
    let m = s.h.metrics().await;
    assert_eq!(
        metric(
            &m,
            &sets_series("tx", "credential-change", "invalid_issuer")
        ),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &sets_series("legacy", "credential-change", "invalid_issuer")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &sets_series("tx", "credential-change", "invalid_key")),
        Some(1.0),
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

fn sha256_hex(pem: &std::path::Path) -> String {
    let der = cae_proxy::tls::load_certs(pem).unwrap().remove(0);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn a_pinned_client_certificate_pushes_for_its_transmitter_only() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let (second_cert, second_key) = (
        dir.path().join("client2.pem"),
        dir.path().join("client2.key"),
    );
    let toml = format!(
        r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[admin]
address = "127.0.0.1:0"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api://cae-demo"]
[[route]]
upstream = "app"
[[transmitter]]
name = "pinned"
issuer = "{txi}"
jwks_uri = "{txi}/jwks"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/pinned"
client_cert_sha256 = ["{pin}"]
"#,
        cert = c.cert.display(),
        key = c.key.display(),
        ca = c.ca.display(),
        up = up.url(),
        iss = idp.issuer_url(),
        txi = tx.issuer_url(),
        pin = sha256_hex(&c.client_cert).to_lowercase(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let url = format!(
        "https://localhost:{}/ssf/pinned",
        h.proxy.addr("signals").unwrap().port()
    );
    let now = cae_proxy::dev::now_secs();
    let set = |sid: &str| {
        tx.sign_set(DevTransmitter::session_revoked(
            complex(&[
                ("session", opaque(sid)),
                ("user", iss_sub(&idp.issuer_url(), "alice")),
            ]),
            Some(now - 5),
        ))
    };
    let push = |client: TestClient, body: String| {
        let url = url.clone();
        async move {
            send(
                &client,
                Method::POST,
                &url,
                &[("content-type", "application/secevent+jwt")],
                Bytes::from(body),
            )
            .await
        }
    };

    // Another certificate of the same CA: the handshake succeeds, the push is refused.
    let r = push(tls_client_as(&c, &second_cert, &second_key), set("s-other")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-language"), Some("en-US"));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({"err": "access_denied", "description": "this client certificate may not send for this transmitter"})
    );
    // The pinned certificate: stored and enforced.
    let r = push(tls_client(&c, false, true), set("s-pinned")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stats = get(&client(), &h.admin_url("/admin/stats"), &[])
        .await
        .json();
    assert_eq!(
        stats["revocations"], 1,
        "only the pinned push was stored: {stats}"
    );
    let old = idp.mint("alice", json!({"sid": "s-pinned", "iat": now - 60}));
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[("authorization", &format!("Bearer {old}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let other = idp.mint("alice", json!({"sid": "s-other", "iat": now - 60}));
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the refused push changed nothing");
}

#[test]
fn a_pin_needs_mtls_signals_listeners_and_well_formed_fingerprints() {
    let base = r#"
[[listener]]
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[[transmitter]]
name = "t"
issuer = "https://ssf.example.com"
jwks_uri = "https://ssf.example.com/jwks"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/t"
authorization = "Bearer x"
"#;
    let err = cae_proxy::config::Config::parse(
        &format!(
            "{base}client_cert_sha256 = [\"{}\", \"zz\"]\n",
            "ab".repeat(32)
        ),
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "transmitter[0].push.client_cert_sha256[1] (line 16, column 91): \"zz\" is not a SHA-256 fingerprint"
        ),
        "{err}"
    );
    assert!(
        err.contains("transmitter[0].push.client_cert_sha256 (line 16, column 22): needs every signals listener to require client certificates"),
        "{err}"
    );
}

#[tokio::test]
async fn acknowledged_pushes_survive_sigkill() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = redb_store(dir.path());
    let text = base(&idp.issuer_url(), &up.url())
        .log_level("info")
        .store(&store)
        .signals()
        .push_transmitter(
            "tx",
            &tx.issuer_url(),
            &tx.jwks_url(),
            AUD,
            "algorithms = [\"RS256\"]",
        )
        .build();
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

#[tokio::test]
async fn pushes_record_enforcement_latency() {
    let s = setup().await;
    let m = s.h.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"cae_set_enforce_latency_seconds_count{transmitter="tx"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
    let set =
        s.tx.sign_set(DevTransmitter::session_revoked(user(&s, "fresh"), None));
    accepted(&s, "/ssf/tx", &set).await;
    let es =
        s.es.sign_set(DevTransmitter::session_revoked(user(&s, "fresh-es"), None));
    accepted(&s, "/ssf/es", &es).await;
    let m = s.h.metrics().await;
    for name in ["tx", "es"] {
        let n = metric(
            &m,
            &format!(r#"cae_set_enforce_latency_seconds_count{{transmitter="{name}"}}"#),
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{name}: {m}");
        let lag = metric(
            &m,
            &format!(r#"cae_set_event_lag_seconds_count{{transmitter="{name}"}}"#),
        );
        assert!(lag.unwrap_or(0.0) >= 1.0, "{name}: {m}");
    }
}
