//! Fuzz target `challenge`: every deny reason's answer parses back to its facts.

use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::common::{Input, NOW};
use crate::auth::challenge::{self, ChallengeCtx};
use crate::auth::decide::{DenyReason, IpRule, RevokedBy};
use crate::auth::token::TokenError;
use crate::dev::challenge_parser::{decode_claims, parse_one, Syntax};

fn reason_from(inp: &mut Input<'_>) -> DenyReason {
    let token_errors = [
        TokenError::MultipleAuthorization,
        TokenError::TokenInQuery,
        TokenError::TooLarge,
        TokenError::Malformed("fuzz"),
        TokenError::SecurityEventToken,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::MissingClaim("exp"),
    ];
    match inp.byte() % 9 {
        0 => DenyReason::MissingToken,
        1 => DenyReason::InvalidToken(
            token_errors[usize::from(inp.byte()) % token_errors.len()].clone(),
        ),
        2 => DenyReason::Revoked {
            by: [
                RevokedBy::Subject,
                RevokedBy::Session,
                RevokedBy::Token,
                RevokedBy::Tenant,
                RevokedBy::Device,
                RevokedBy::Email,
            ][usize::from(inp.byte()) % 6],
            revoked_at: inp.i64(),
        },
        3 => DenyReason::AccountBlocked { since: inp.i64() },
        4 => DenyReason::IpNotAllowed {
            rule: [IpRule::TokenAddress, IpRule::Binding, IpRule::Location]
                [usize::from(inp.byte()) % 3],
        },
        5 => DenyReason::AuthContextRequired {
            context: inp.text(),
        },
        6 => {
            let n = inp.byte();
            let max_age = (n & 1 == 1).then(|| inp.i64() as u64);
            let acr = inp.text();
            DenyReason::StepUpRequired {
                acr_values: acr
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                max_age,
            }
        }
        7 => DenyReason::InsufficientScope { scope: inp.text() },
        _ => DenyReason::ClaimNotAllowed { claim: inp.text() },
    }
}

fn quotable(s: &str) -> bool {
    s.chars()
        .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
}

/// Fuzz target `challenge`: a deny reason and context decoded from the input; the answer
/// `respond` builds must parse back to the same facts ([`check_challenge`]; `nbf` = revocation or
/// decision time, `acrs` = the context).
pub fn challenge(data: &[u8]) {
    let mut inp = Input(data);
    let flags = inp.byte();
    let reason = reason_from(&mut inp);
    let now = inp.i64();
    let realm = inp.text();
    let auth_uri = inp.text();
    let request_id = inp.text();
    let ctx = ChallengeCtx {
        realm: &realm,
        authorization_uri: (flags & 2 == 2).then_some(auth_uri.as_str()),
        cp1: flags & 1 == 1,
        request_id: &request_id,
        now,
    };
    check_challenge(&reason, &ctx);
}

/// The answer `respond` builds for `reason` parses back (one challenge, [`Syntax::Strict`]) to the same
/// facts: the status, the error code, quotable values, each parameter once, and a `claims` that
/// decodes to exactly the claims request for the reason.
pub(super) fn check_challenge(reason: &DenyReason, ctx: &ChallengeCtx<'_>) {
    let (realm, request_id, now) = (ctx.realm, ctx.request_id, ctx.now);
    let c = challenge::respond(reason, ctx);
    assert!(
        HeaderValue::from_str(&c.www_authenticate).is_ok(),
        "not a header value: {:?}",
        c.www_authenticate
    );
    let p = parse_one(&c.www_authenticate, Syntax::Strict)
        .unwrap_or_else(|e| panic!("{e}: {:?}", c.www_authenticate));
    assert!(
        p.token68.is_none(),
        "a token68 where parameters belong: {:?}",
        c.www_authenticate
    );
    assert_eq!(p.scheme, "Bearer");
    for (i, (k, v)) in p.params.iter().enumerate() {
        assert!(quotable(v), "{k} is not quotable: {v:?}");
        assert!(
            p.params[..i].iter().all(|(k2, _)| k2 != k),
            "parameter {k} twice"
        );
    }
    assert!(!c.www_authenticate.contains('\n') && !c.www_authenticate.contains('\r'));
    let body: Value = serde_json::from_str(&c.body).expect("the body is JSON");
    assert_eq!(body["request_id"], Value::String(request_id.to_string()));
    assert_eq!(body["code"], Value::String(c.code.into()));
    let forbidden = matches!(
        reason,
        DenyReason::InsufficientScope { .. } | DenyReason::ClaimNotAllowed { .. }
    );
    assert_eq!(
        c.status,
        if forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        }
    );
    let error = p.get("error");
    let expected_claims = match reason {
        DenyReason::Revoked { revoked_at, .. } => Some(
            json!({"access_token": {"nbf": {"essential": true, "value": revoked_at.to_string()}}}),
        ),
        DenyReason::AccountBlocked { .. } | DenyReason::IpNotAllowed { .. } => {
            Some(json!({"access_token": {"nbf": {"essential": true, "value": now.to_string()}}}))
        }
        DenyReason::AuthContextRequired { context } => {
            Some(json!({"access_token": {"acrs": {"essential": true, "value": context}}}))
        }
        _ => None,
    };
    match (reason, expected_claims) {
        (_, Some(want)) => {
            if ctx.cp1 {
                assert_eq!(error, Some("insufficient_claims"));
                let claims = p.get("claims").expect("a claims challenge has claims");
                assert_eq!(
                    decode_claims(claims, Syntax::Strict),
                    Some(want),
                    "claims do not round-trip"
                );
                // Standard base64 with padding, as Microsoft emits.
                assert_eq!(claims.len() % 4, 0);
                if let Some(u) = ctx.authorization_uri {
                    if quotable(u) {
                        assert_eq!(p.get("authorization_uri"), Some(u));
                    }
                }
            } else {
                assert_eq!(error, Some("invalid_token"));
                assert!(p.get("claims").is_none());
            }
        }
        (DenyReason::MissingToken, None) => {
            assert_eq!(
                p.params.len(),
                1,
                "no error code without a token (RFC 6750 §3)"
            );
        }
        (DenyReason::InvalidToken(_), None) => assert_eq!(error, Some("invalid_token")),
        (DenyReason::StepUpRequired { max_age, .. }, None) => {
            assert_eq!(error, Some("insufficient_user_authentication"));
            assert_eq!(
                p.get("max_age").map(str::to_string),
                max_age.map(|m| m.to_string())
            );
        }
        (DenyReason::InsufficientScope { .. } | DenyReason::ClaimNotAllowed { .. }, None) => {
            assert_eq!(error, Some("insufficient_scope"));
        }
        (r, None) => panic!("unexpected reason without claims: {r:?}"),
    }
    if let Some(r) = p.get("realm") {
        if quotable(realm) {
            assert_eq!(r, realm);
        }
    }
}

/// Seeds for `challenge`: every reason, with and without `cp1`, including the vectors of
/// docs/protocols.md §2.4 (nbf 1604106651 and 1700000000, acrs c1).
pub fn seed_challenge() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let ctx = |flags: u8, reason: Vec<u8>, now: i64| {
        let mut v = vec![flags];
        v.extend(reason);
        v.extend(now.to_le_bytes());
        v.extend(b"api\0https://login.microsoftonline.com/common/oauth2/authorize\0req-1");
        v
    };
    let t = |x: i64| x.to_le_bytes().to_vec();
    for flags in [0u8, 3] {
        out.push(ctx(flags, vec![0], NOW));
        out.push(ctx(flags, vec![1, 8], NOW));
        out.push(ctx(flags, [vec![2, 1], t(1_604_106_651)].concat(), NOW));
        out.push(ctx(flags, [vec![3], t(10)].concat(), 1_700_000_000));
        out.push(ctx(flags, vec![4, 2], NOW));
        out.push(ctx(flags, [vec![5], b"c1\0".to_vec()].concat(), NOW));
        out.push(ctx(
            flags,
            [vec![6, 1], t(300), b"urn:mfa urn:phr\0".to_vec()].concat(),
            NOW,
        ));
        out.push(ctx(
            flags,
            [vec![7], b"read write\0".to_vec()].concat(),
            NOW,
        ));
        out.push(ctx(flags, [vec![8], b"tid\0".to_vec()].concat(), NOW));
    }
    out.push(ctx(
        3,
        [vec![5], "c\"1\\ é\u{7f}\0".as_bytes().to_vec()].concat(),
        NOW,
    ));
    out
}
