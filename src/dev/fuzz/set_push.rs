//! Fuzz target `set_push`: SET bodies as the push endpoint receives them (RFC 8935), checked
//! as push would (verification, then the event plan).

use serde_json::{json, Value};

use super::common::{
    check_change, merge, protocol_vectors, seed, set_base, set_fixture, sign_bytes,
    signature_verifies, signed_seed, Input, NOW, SET_AUD, SET_ISS, SIGN_ALGS, TOKEN_ISS,
};
use crate::config;
use crate::signals::events::{self, EventPolicy};
use crate::signals::set;

/// Checks one SET as push would: verification, then the event plan.
pub(super) fn check_set(compact: &str) {
    let fx = set_fixture();
    let unverified = set::parse_unverified(compact);
    let result = set::verify_set(compact, &fx.parsed, &fx.policy, NOW);
    match (&unverified, &result) {
        (Err(a), Err(b)) => assert_eq!(a, b, "structure errors come first"),
        (Err(e), Ok(_)) => panic!("verify_set accepted what parse_unverified refused: {e}"),
        _ => {}
    }
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            let (code, desc) = e.err_code();
            assert!(!code.is_empty());
            // The description goes into a JSON error body and the log.
            let _ = crate::signals::push::error_response(code, &desc);
            return;
        }
    };
    let kid = v
        .kid
        .as_deref()
        .expect("two keys: an accepted SET names its kid");
    let key = fx
        .keys
        .iter()
        .find(|k| k.kid() == kid)
        .unwrap_or_else(|| panic!("accepted SET with unknown kid {kid:?}"));
    assert_eq!(
        v.alg,
        key.alg().jwt_algorithm(),
        "the JWK alg binds the SET alg"
    );
    assert!(fx.policy.algorithms.contains(&v.alg));
    assert!(
        signature_verifies(compact, key, v.alg),
        "accepted SET with a bad signature"
    );
    assert_eq!(
        crate::store::keys::normalize_iss(&v.claims.iss),
        crate::store::keys::normalize_iss(SET_ISS)
    );
    assert!(v.claims.aud.iter().any(|a| fx.policy.audiences.contains(a)));
    assert!(!v.claims.events.is_empty());
    assert!(!v.claims.jti.is_empty());
    for e in &v.claims.events {
        if e.kind.requires_subject() {
            assert!(
                e.subject.is_some(),
                "event {} without subject accepted",
                e.uri
            );
        }
    }
    for policy in [
        EventPolicy::default(),
        EventPolicy {
            risk_revoke_level: config::RiskLevel::Low,
            opaque_iss: Some(TOKEN_ISS.into()),
        },
    ] {
        let plan = events::plan(&v, &policy);
        assert_eq!(plan.notes.len(), v.claims.events.len());
        for c in &plan.changes {
            check_change(c);
        }
    }
}

/// Fuzz target `set_push`. Modes: 0 the raw body, 1 a SET signed from fuzzed header and payload
/// JSON, 2 fuzzed overrides of the docs/protocols.md §7 vector, signed.
///
/// Asserts: an accepted SET has a known `kid`, the key's `alg`, a signature that verifies (checked
/// independently), our issuer and audience, events, subjects where required; every refusal has an
/// RFC 8935 error code; the plan's changes are well formed.
pub fn set_push(data: &[u8]) {
    let fx = set_fixture();
    let mut inp = Input(data);
    let mode = inp.byte() % 3;
    let compact = match mode {
        0 => String::from_utf8_lossy(inp.rest()).into_owned(),
        _ => {
            let key = &fx.keys[usize::from(inp.byte()) % fx.keys.len()];
            let alg = SIGN_ALGS[usize::from(inp.byte()) % SIGN_ALGS.len()];
            let tamper = inp.byte();
            let header = inp.field();
            let payload = inp.field();
            if mode == 1 {
                sign_bytes(key, alg, header, payload, tamper)
            } else {
                let mut h =
                    json!({"typ": "secevent+jwt", "alg": key.alg().as_str(), "kid": key.kid()});
                let mut p = set_base();
                if let Ok(v) = serde_json::from_slice::<Value>(header) {
                    merge(&mut h, &v);
                }
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    merge(&mut p, &v);
                }
                sign_bytes(
                    key,
                    alg,
                    h.to_string().as_bytes(),
                    p.to_string().as_bytes(),
                    tamper,
                )
            }
        }
    };
    check_set(&compact);
}

/// Payload overrides that turn §6 vectors and negative cases into `set_push` mode-2 seeds.
fn set_overrides() -> Vec<Value> {
    let mut v: Vec<Value> = protocol_vectors()
        .into_iter()
        .map(|mut p| {
            // Make every vector verifiable against the fixture transmitter, keeping its shape.
            merge(&mut p, &json!({"iss": SET_ISS, "aud": SET_AUD}));
            if p.get("sub_id").is_none() {
                merge(&mut p, &json!({"sub_id": null}));
            }
            p
        })
        .collect();
    v.extend([
        json!({"iss": "https://other.example/"}),
        json!({"aud": ["x", "y"]}),
        json!({"jti": null}),
        json!({"iat": "yesterday"}),
        json!({"events": {}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": "x"}}),
        json!({"sub_id": null, "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}}),
        json!({"exp": 1, "sub": "top-level"}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": 1_615_304_991_123u64}}}),
        json!({"sub_id": {"user": {"format": "email", "email": "Jane@Example.COM"}, "ip-addresses": {"format": "ip-addresses", "ip-addresses": ["192.0.2.1", "2001:db8::/32"]}},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/session-established": {}}}),
        json!({"events": {"https://schemas.openid.net/secevent/risc/event-type/account-enabled": {}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/risk-level-change": {"principal": "USER", "current_level": "high"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/device-compliance-change": {"previous_status": "compliant", "current_status": "non-compliant"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/token-claims-change": {"claims": {"role": "x"}}}, "sub_id": {"format": "jwt_id", "iss": TOKEN_ISS, "jti": "t1"}}),
        json!({"events": {"https://schemas.openid.net/secevent/caep/event-type/assurance-level-change": {"namespace": "NIST-AAL", "current_level": "aal1", "previous_level": "aal2", "change_direction": "decrease"}}}),
        json!({"events": {"https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked": {}}, "sub_id": {"format": "id_token_claims", "sub": "x", "email": "a@b"}}),
        json!({"events": {"https://example.com/vendor/unknown": {"subject": 7}}}),
        json!({"events": {"https://schemas.openid.net/secevent/ssf/event-type/stream-updated": {"status": "paused", "reason": "x"}}}),
    ]);
    v
}

/// Seeds for `set_push`.
pub fn seed_set_push() -> Vec<Vec<u8>> {
    let mut out = vec![
        seed(0, &[b"not.a.jws"]),
        seed(0, &[b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."]),
    ];
    for (i, o) in set_overrides().iter().enumerate() {
        let key = (i % 2) as u8;
        let alg = if key == 0 { 0 } else { 3 };
        out.push(signed_seed(
            2,
            [key, alg, 0],
            &[b"{}", o.to_string().as_bytes()],
        ));
    }
    for typ in ["JWT", "application/secevent+jwt", "at+jwt"] {
        out.push(signed_seed(
            2,
            [0, 0, 0],
            &[json!({"typ": typ}).to_string().as_bytes(), b"{}"],
        ));
    }
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"typ":null}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"alg":"HS256"}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 0], &[br#"{"kid":"nope"}"#, b"{}"]));
    out.push(signed_seed(2, [0, 0, 1], &[b"{}", b"{}"]));
    out.push(signed_seed(2, [1, 0, 0], &[b"{}", b"{}"]));
    out.push(signed_seed(
        1,
        [0, 0, 0],
        &[
            br#"{"alg":"RS256","kid":"tx-rsa"}"#,
            set_base().to_string().as_bytes(),
        ],
    ));
    out
}
