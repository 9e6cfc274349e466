//! IP rules: a token's `ipaddr` binding, signal- and admin-fed bindings, named locations (allow
//! and deny lists), each answered with the location challenge or `invalid_token`; the client
//! address is the rightmost untrusted `X-Forwarded-For` entry, or RFC 7239 `Forwarded` when so
//! configured, and only through trusted peers.

use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::now_secs;
use http::StatusCode;
use serde_json::json;

use super::*;

/// Message of every location / IP-binding refusal by a named location.
const OUTSIDE_LOCATIONS: &str = "the request address is not in a location this route allows";

/// Message of a refusal by a binding fed by signals or the admin API.
const NOT_BOUND_HERE: &str = "the request address is not allowed for this session";

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
async fn token_ip_binding_named_locations_and_spoofed_forwarded_for() {
    let s = setup().await;
    let elsewhere = s.idp.mint("gina", json!({"ipaddr": "203.0.113.5"}));
    let here = s.idp.mint("gina", json!({"ipaddr": "127.0.0.1"}));
    assert_eq!(call(&s, "/ip", &here).await.status, StatusCode::OK);
    let before = cae_proxy::dev::now_secs();
    // The caller claims to be the token's address; the peer is not a trusted proxy.
    let r = get(
        &client(),
        &s.h.url("public", "/ip"),
        &[
            ("authorization", &format!("Bearer {elsewhere}")),
            ("x-forwarded-for", "203.0.113.5"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    let www = r.header("www-authenticate").unwrap();
    assert!(www.contains(r#"error="insufficient_claims""#), "{www}");
    let nbf: i64 = decode_claims(www)["access_token"]["nbf"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        nbf >= before && nbf <= cae_proxy::dev::now_secs(),
        "nbf {nbf} is the decision time"
    );
    // The token's ipaddr is not checked where the route does not ask for it.
    assert_eq!(call(&s, "/api", &elsewhere).await.status, StatusCode::OK);
    // Named locations: 127.0.0.1 is outside 10.0.0.0/8.
    let r = call(&s, "/loc", &here).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json()["message"],
        "the request address is not in a location this route allows"
    );
}

#[tokio::test]
async fn signal_fed_bindings_apply_where_the_route_asks() {
    let s = setup().await;
    let iss = s.idp.issuer_url();
    let t = s.idp.mint("hank", json!({"sid": "s-bound"}));
    let key = json!({"type": "session", "iss": iss, "sid": "s-bound"});
    assert_eq!(
        admin(
            &s,
            "/admin/bind",
            json!({"key": key, "nets": ["10.0.0.0/8"]})
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, "/bound", &t).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&s, "/api", &t).await.status, StatusCode::OK);
    admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["127.0.0.0/8"]}),
    )
    .await;
    assert_eq!(call(&s, "/bound", &t).await.status, StatusCode::OK);
    let r = admin(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["not-an-ip"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["message"],
        "\"not-an-ip\" is not an IP address or CIDR"
    );
}

#[tokio::test]
async fn deny_listed_locations_get_the_location_challenge() {
    let s = setup_trusting(TRUSTED, "").await;
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
        let r = call_from(
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
    let r = call_from(
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
    let r = call_from(
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
        let r = call_from(&c, &s, "/deny", &cp1, &extra).await;
        assert_eq!(r.status, StatusCode::OK, "{xff:?}: {}", r.text());
    }
    assert_eq!(s.up.requests(), 4);
    // The same address on a route without a location policy passes.
    let r = call_from(&c, &s, "/api", &cp1, &[("x-forwarded-for", "203.0.113.7")]).await;
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
        let r = call_from(
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
    let r = call_from(
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
    let s = setup_trusting(TRUSTED, "").await;
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
        let r = call_from(
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
    let r = call_from(
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
    let r = call_from(
        &c,
        &s,
        "/ip",
        &bound,
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let before = now_secs();
    let r = call_from(
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
    let r = call_from(&c, &s, "/ip", &bound, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The same headers from a peer that is not a trusted proxy are ignored.
    let u = setup_trusting(UNTRUSTED, "").await;
    let c = client();
    let t = u.idp.mint("olga", json!({}));
    let local = u.idp.mint("olga", json!({"ipaddr": "127.0.0.1"}));
    for (name, value) in [
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-for", "198.51.100.7, 192.0.2.10"),
        ("forwarded", "for=198.51.100.7"),
    ] {
        let before = now_secs();
        let r = call_from(
            &c,
            &u,
            "/corp",
            &t,
            &[(name, value), ("x-request-id", "spoof")],
        )
        .await;
        assert_ip_claims_challenge(&r, &u.idp.issuer_url(), before, OUTSIDE_LOCATIONS, "spoof");
        // Spoofing into a denied range does not get a request refused either.
        let r = call_from(&c, &u, "/deny", &t, &[(name, "203.0.113.7")]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        // The token issued to 127.0.0.1 is used from 127.0.0.1, whatever the header says.
        let r = call_from(&c, &u, "/ip", &local, &[(name, "203.0.113.5")]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }
    // The spoofed chain is not passed on: the upstream sees the peer only.
    assert_eq!(u.up.last_headers()["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn with_client_ip_header_forwarded_only_rfc_7239_names_the_client() {
    let s = setup_trusting(TRUSTED, "client_ip_header = \"forwarded\"").await;
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
        let r = call_from(&c, &s, "/corp", &t, &h).await;
        if *allowed {
            assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.text());
        } else {
            assert_ip_claims_challenge(&r, &iss, before, OUTSIDE_LOCATIONS, &rid);
        }
    }
    let bound = s.idp.mint("olga", json!({"ipaddr": "198.51.100.7"}));
    let r = call_from(&c, &s, "/ip", &bound, &[("forwarded", "for=198.51.100.7")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn subject_ip_bindings_from_the_admin_api() {
    let s = setup_trusting(TRUSTED, "").await;
    let iss = s.idp.issuer_url();
    let c = client();
    let kate = s.idp.mint("kate", json!({"sid": "k-1"}));
    let kate_other_session = s.idp.mint("kate", json!({"sid": "k-2"}));
    let kate_legacy = s.idp.mint("kate", json!({"xms_cc": []}));
    let leo = s.idp.mint("leo", json!({}));
    let key = json!({"type": "subject", "iss": iss, "sub": "kate"});

    // Unbound: passes from anywhere.
    assert_eq!(
        call_from(&c, &s, "/bound", &kate, &[]).await.status,
        StatusCode::OK
    );

    let r = admin_ok(
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
        let r = call_from(&c, &s, "/bound", t, &extra).await;
        assert_ip_claims_challenge(&r, &iss, before, NOT_BOUND_HERE, "bind-out");
    }
    let r = call_from(
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
        let r = call_from(&c, &s, "/bound", &kate, &[("x-forwarded-for", xff)]).await;
        assert_eq!(r.status, StatusCode::OK, "{xff}: {}", r.text());
    }
    // Another subject, and a route that does not ask for bindings: untouched.
    assert_eq!(
        call_from(&c, &s, "/bound", &leo, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call_from(&c, &s, "/api", &kate, &[]).await.status,
        StatusCode::OK
    );

    // A binding for the subject under any issuer, and one by Entra object id.
    admin_ok(
        &s,
        "/admin/bind",
        json!({"key": {"type": "subject", "iss": "*", "sub": "leo"}, "nets": ["192.0.2.0/24"]}),
    )
    .await;
    assert_eq!(
        call_from(&c, &s, "/bound", &leo, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let entra = s.idp.mint("pairwise-sub", json!({"oid": "object-id-1"}));
    assert_eq!(
        call_from(&c, &s, "/bound", &entra, &[]).await.status,
        StatusCode::OK
    );
    admin_ok(
        &s,
        "/admin/bind",
        json!({"key": {"type": "subject", "iss": iss, "sub": "object-id-1"}, "nets": ["198.51.100.0/24"]}),
    )
    .await;
    assert_eq!(
        call_from(&c, &s, "/bound", &entra, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Clearing the binding: passes from anywhere again.
    let r = admin_ok(&s, "/admin/unbind", json!({"key": key})).await;
    assert_eq!(r.json()["stored"]["op"], "unbind");
    for t in [&kate, &kate_other_session, &kate_legacy] {
        assert_eq!(
            call_from(&c, &s, "/bound", t, &[]).await.status,
            StatusCode::OK
        );
    }
    // An older bind does not undo the newer unbind.
    admin_ok(
        &s,
        "/admin/bind",
        json!({"key": key, "nets": ["198.51.100.0/24"], "at": now_secs() - 3600}),
    )
    .await;
    assert_eq!(
        call_from(&c, &s, "/bound", &kate, &[]).await.status,
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
