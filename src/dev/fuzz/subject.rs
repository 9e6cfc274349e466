//! Fuzz target `subject`: subject identifiers (RFC 9493, SSF §3).

use serde_json::{json, Value};

use super::common::{check_key, protocol_vectors, SET_ISS, TOKEN_ISS};
use crate::signals::subject::{KeyContext, Subject};

/// Fuzz target `subject`: `Subject::parse` on arbitrary JSON; an accepted subject renders,
/// resolves to well-formed store keys, and parsing is deterministic.
pub fn subject(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(s) = Subject::parse(&v) else {
        return;
    };
    assert_eq!(Subject::parse(&v).as_ref(), Ok(&s));
    assert!(!s.format().is_empty() || matches!(s, Subject::Unknown { .. }));
    let _ = s.fingerprint();
    for ctx in [
        KeyContext::new(SET_ISS),
        KeyContext {
            opaque_iss: Some(TOKEN_ISS.into()),
            account_as_email: false,
            ..KeyContext::new("")
        },
    ] {
        let r = s.resolve(&ctx);
        for k in r
            .user
            .iter()
            .chain(&r.session)
            .chain(&r.device)
            .chain(&r.tenant)
            .chain(&r.token)
        {
            check_key(k);
        }
        assert!(r.principal().iter().all(|k| r.user.contains(k)
            || r.token.contains(k)
            || r.session.contains(k)
            || r.device.contains(k)
            || r.tenant.contains(k)));
    }
}

/// Seeds for `subject`: every format of docs/protocols.md §4 and the tolerated legacy shapes.
pub fn seed_subject() -> Vec<Vec<u8>> {
    let mut v = vec![
        json!({"format":"account","uri":"acct:jane@example.com"}),
        json!({"format":"email","email":"Jane.Smith@Example.com"}),
        json!({"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"}),
        json!({"format":"opaque","id":"11112222333344445555"}),
        json!({"format":"phone_number","phone_number":"+12065550100"}),
        json!({"format":"did","url":"did:example:123456"}),
        json!({"format":"uri","uri":"https://example.com/users/12345"}),
        json!({"format":"aliases","identifiers":[{"format":"email","email":"a@b"},{"format":"opaque","id":"x"}]}),
        json!({"format":"aliases","identifiers":[{"format":"aliases","identifiers":[]}]}),
        json!({"format":"jwt_id","iss":"https://idp.example.com/","jti":"t1"}),
        json!({"format":"saml_assertion_id","issuer":"https://idp/","assertion_id":"_8e8dc5f69a98cc4c1ff3427e5ce34606fd672f91e6"}),
        json!({"format":"ip-addresses","ip-addresses":["10.29.37.75","2001:db8::/32"]}),
        json!({"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"x"}),
        json!({"id_token_claims":{"sub":"x","email":"a@b"},"format":"id_token_claims"}),
        json!({"format":"unknown-format","x":1}),
        json!({"user":{"format":"email","email":"a@b"},"device":{"format":"opaque","id":"d1"}}),
        json!({"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"complex","user":{"format":"opaque","id":"deep"}}}}}}),
    ];
    v.extend(
        protocol_vectors()
            .into_iter()
            .filter_map(|p| p.get("sub_id").cloned()),
    );
    v.into_iter().map(|x| x.to_string().into_bytes()).collect()
}
