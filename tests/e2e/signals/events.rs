//! What each event does to real tokens, pushed from a real transmitter: CAEP (session revoked,
//! credential change, token claims change, assurance and risk level changes, session
//! established with IP addresses), RISC (account disabled/enabled/purged, credential compromise,
//! identifier changes) and OAuth token revocation; subjects in every format; event time order.

use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, ip_addresses, jwt_id, opaque, DevTransmitter, CAEP, OAUTH, RISC,
};
use http::StatusCode;
use serde_json::{json, Value};

use super::*;

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
    assert_passes(&s, &old, "old").await;
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
    assert_passes(&s, &mint("top-sub", 5), "a fresh top-sub token").await;
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
    assert_passes(&s, &mint(0), "a fresh token").await;
    // The RFC 8935 §2.1 push example (docs/protocols.md §7), byte for byte, re-signed RS256 with
    // the transmitter key.
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
    // (The challenge names the legacy issuer's authorization_uri, not the dev issuer's, which
    // `assert_blocked` expects.)
    let r = call(&s, &fresh).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "AccountBlocked", "{}", r.text());
    accepted(&s, "/ssf/legacy", &enable("en-new", now_secs() - 1)).await;
    assert_passes(&s, &fresh, "fresh").await;
}

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
    assert_blocked(&s, &fresh, "fresh").await;
    accepted(&s, "/ssf/tx", &enable(t2)).await;
    assert_passes(&s, &fresh, "fresh").await;
    assert_revoked(&s, &before_t0, t0, "before_t0").await;
    assert_passes(&s, &between, "between").await;

    // A late account-disabled older than the enable: no re-block, but its revocation counts.
    accepted(&s, "/ssf/tx", &disable(t1)).await;
    assert_passes(&s, &fresh, "fresh").await;
    assert_revoked(&s, &between, t1, "between").await;
    assert_passes(&s, &after_t1, "after_t1").await;

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
    assert_blocked(&s, &sam, "sam").await;
    // account-purged blocks too.
    let pat = token(&s, "pat", 0, json!({}));
    accepted(
        &s,
        "/ssf/tx",
        &s.tx
            .sign_set(DevTransmitter::account_purged(user(&s, "pat"), Some(t))),
    )
    .await;
    assert_blocked(&s, &pat, "pat").await;
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
    assert_revoked(&s, &carl1, at, "carl1").await;
    assert_revoked(&s, &carl2, at, "carl2").await;

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
    assert_revoked(&s, &tok, at, "tok").await;
    assert_passes(&s, &other, "other").await;
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
    assert_revoked(&s, &other, at, "other").await;
    assert_passes(
        &s,
        &token(&s, "tina", 5, json!({"jti": "tok-3"})),
        "another token of tina",
    )
    .await;
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
        call_with(&s.h.url("public", "/bound"), &ivan).await.status,
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
    let r = call_with(&s.h.url("public", "/bound"), &ivan).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_claims""#));
    // Routes that do not ask for signal-fed bindings are not affected.
    assert_passes(&s, &ivan, "ivan").await;
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
        call_with(&s.h.url("public", "/bound"), &ivan).await.status,
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
        call_with(&s.h.url("public", "/bound"), &ivan).await.status,
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
        call_with(&s.h.url("public", "/bound"), &bound).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call_with(&s.h.url("public", "/bound"), &free).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn caep_events_pushed_take_their_effect_on_real_tokens() {
    let s = setup().await;
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
    let s = setup().await;
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
    let s = setup().await;
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

#[tokio::test]
async fn opaque_subjects_of_a_transmitter_named_for_a_tenant_template_match_its_tokens() {
    // `token_issuer` names an Entra-style `{tenantid}` template: no token carries that text as
    // its `iss`, so the opaque ids of this transmitter must be stored for every issuer.
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let template = format!("{}/{{tenantid}}/v2.0", idp.issuer_url());
    let tenant_iss = format!("{}/t1/v2.0", idp.issuer_url());
    let toml = Toml::new()
        .public()
        .admin_token()
        .app(&up.url())
        .issuer(
            "entra",
            &template,
            &format!(
                "tenants = [\"t1\"]\njwks_uri = \"{}\"\naudiences = [\"{API_AUDIENCE}\"]",
                idp.jwks_url()
            ),
        )
        .route("api", "/api", "")
        .signals()
        .push_transmitter(
            "tenant-tx",
            &tx.issuer_url(),
            &tx.jwks_url(),
            AUD,
            "token_issuer = \"entra\"",
        )
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let site = Site { h, idp, _up: up };
    let t = now_secs() - 100;
    let token = site.idp.mint(
        "opaque-user-1",
        json!({"iss": tenant_iss, "iat": t, "nbf": t}),
    );
    assert_passes(&site, &token, "before the event").await;
    let at = now_secs() - 10;
    let set = sign_raw(
        &tx,
        rs_header(&tx),
        json!({"iss": tx.issuer_url(), "aud": AUD, "sub_id": opaque("opaque-user-1"),
            "events": {uri(CAEP, "credential-change"): {"credential_type": "password", "change_type": "update", "event_timestamp": at}}}),
    );
    accepted(&site, "/ssf/tenant-tx", &set).await;
    let r = call(&site, &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "TokenIssuedBeforeRevocationTimestamp");
}
