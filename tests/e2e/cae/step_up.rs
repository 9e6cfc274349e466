//! Step-up in both dialects: an auth context (`acrs`, the Microsoft claims challenge) and RFC
//! 9470 (`acr_values`, `max_age`).

use cae_proxy::auth::challenge::acrs_claims;
use http::StatusCode;
use serde_json::json;

use super::*;

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
