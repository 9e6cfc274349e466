//! One exhaustive mapping from deny reason to status, `WWW-Authenticate` and JSON body
//! (docs/protocols.md §2), in the `Bearer` scheme (RFC 6750 §3) or the `DPoP` scheme (RFC 9449
//! §7.1: the same parameters after `algs`).

use base64::Engine;
use http::StatusCode;

use super::decide::{DenyReason, IpRule};

/// What the challenge needs to know besides the reason.
#[derive(Debug, Clone, Default)]
pub struct ChallengeCtx<'a> {
    pub realm: &'a str,
    pub authorization_uri: Option<&'a str>,
    /// The client declared `cp1` (`xms_cc`): it understands claims challenges.
    pub cp1: bool,
    pub request_id: &'a str,
    /// Decision time, epoch seconds (the `nbf` of an IP challenge).
    pub now: i64,
}

/// A refusal, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub status: StatusCode,
    /// Empty for the one answer that is no challenge (503: a DPoP replay check unavailable).
    pub www_authenticate: String,
    /// Machine-readable code (Microsoft Graph style).
    pub code: &'static str,
    pub body: String,
}

/// Claims request asking for a token issued at or after `nbf` (minified JSON, standard base64).
pub fn nbf_claims(nbf: i64) -> String {
    encode_claims(&format!(
        r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{nbf}"}}}}}}"#
    ))
}

/// Claims request asking for an auth context in `acrs`.
pub fn acrs_claims(context: &str) -> String {
    let v = serde_json::json!({"access_token": {"acrs": {"essential": true, "value": context}}});
    encode_claims(&v.to_string())
}

fn encode_claims(json: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// Keeps a parameter value quotable: printable ASCII without `"` or `\`.
fn q(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

/// One challenge of `scheme`: parameters quoted, separated by `, `, in the order given.
fn challenge(scheme: &str, params: &[(&str, &str)]) -> String {
    let mut out = format!("{scheme} ");
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(&q(v));
        out.push('"');
    }
    out
}

/// Maps a deny reason to its `Bearer` answer ([`respond_as`] without DPoP).
pub fn respond(reason: &DenyReason, ctx: &ChallengeCtx<'_>) -> Challenge {
    respond_as(reason, ctx, None)
}

/// Maps a deny reason to its answer. No wildcard arm: a new reason must be mapped here. The
/// challenge's parameters are chosen first; the header and the body's `error` (the same one,
/// absent for a request without a token) both come from them. With `dpop_algs` (the accepted
/// proof algorithms, space-separated) the challenge is `DPoP algs="…", ` and the same parameters
/// (RFC 9449 §7.1), so that a DPoP client gets its proof errors and a CAE client its claims
/// challenge.
pub fn respond_as(
    reason: &DenyReason,
    ctx: &ChallengeCtx<'_>,
    dpop_algs: Option<&str>,
) -> Challenge {
    let invalid_as = |error: &str, desc: &str| {
        vec![
            ("realm", ctx.realm.to_string()),
            ("error", error.to_string()),
            ("error_description", desc.to_string()),
        ]
    };
    let invalid = |desc: &str| invalid_as("invalid_token", desc);
    // A CAE client gets a claims challenge; any other client must sign in again.
    let cae = |claims: String, desc: &str| {
        if !ctx.cp1 {
            return invalid(desc);
        }
        let mut p = vec![("realm", ctx.realm.to_string())];
        if let Some(u) = ctx.authorization_uri {
            p.push(("authorization_uri", u.to_string()));
        }
        p.push(("error", "insufficient_claims".to_string()));
        p.push(("claims", claims));
        p
    };
    let (status, params, code, message): (StatusCode, Vec<(&str, String)>, &'static str, String) =
        match reason {
            DenyReason::MissingToken => (
                StatusCode::UNAUTHORIZED,
                vec![("realm", ctx.realm.to_string())],
                "MissingToken",
                "a bearer token is required".into(),
            ),
            DenyReason::InvalidToken(e) => match e.error_code() {
                Some(error) => (
                    StatusCode::UNAUTHORIZED,
                    invalid_as(error, &e.to_string()),
                    match e.kind() {
                        "invalid_dpop_proof" => "InvalidDpopProof",
                        "use_dpop_nonce" => "UseDpopNonce",
                        "sender_binding" => "SenderConstraintNotMet",
                        _ => "InvalidAuthenticationToken",
                    },
                    e.to_string(),
                ),
                // Fail closed, but the client is not at fault: no challenge, retry later.
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Vec::new(),
                    "DpopReplayCheckUnavailable",
                    e.to_string(),
                ),
            },
            DenyReason::Revoked { revoked_at, .. } => {
                let desc = "the token was issued before a revocation of its subject, session or id";
                (
                    StatusCode::UNAUTHORIZED,
                    cae(nbf_claims(*revoked_at), desc),
                    "TokenIssuedBeforeRevocationTimestamp",
                    desc.into(),
                )
            }
            DenyReason::AccountBlocked { .. } => {
                let desc = "the account is disabled";
                (
                    StatusCode::UNAUTHORIZED,
                    cae(nbf_claims(ctx.now), desc),
                    "AccountBlocked",
                    desc.into(),
                )
            }
            DenyReason::IpNotAllowed { rule } => {
                let desc = match rule {
                    IpRule::TokenAddress => {
                        "the request comes from another address than the token was issued to"
                    }
                    IpRule::Binding => "the request address is not allowed for this session",
                    IpRule::Location => {
                        "the request address is not in a location this route allows"
                    }
                };
                (
                    StatusCode::UNAUTHORIZED,
                    cae(nbf_claims(ctx.now), desc),
                    "LocationConditionEvaluationSatisfied",
                    desc.into(),
                )
            }
            DenyReason::AuthContextRequired { context } => {
                let desc = format!("authentication context {context} is required");
                (
                    StatusCode::UNAUTHORIZED,
                    cae(acrs_claims(context), &desc),
                    "InsufficientAuthenticationContext",
                    desc,
                )
            }
            DenyReason::StepUpRequired {
                acr_values,
                max_age,
            } => {
                let desc = "a stronger or more recent authentication is required";
                let mut p = vec![
                    ("error", "insufficient_user_authentication".to_string()),
                    ("error_description", desc.to_string()),
                ];
                if !acr_values.is_empty() {
                    p.push(("acr_values", acr_values.join(" ")));
                }
                if let Some(a) = max_age {
                    p.push(("max_age", a.to_string()));
                }
                (
                    StatusCode::UNAUTHORIZED,
                    p,
                    "InsufficientUserAuthentication",
                    desc.into(),
                )
            }
            DenyReason::InsufficientScope { scope } => (
                StatusCode::FORBIDDEN,
                vec![
                    ("realm", ctx.realm.to_string()),
                    ("error", "insufficient_scope".to_string()),
                    ("scope", scope.clone()),
                ],
                "InsufficientScope",
                format!("the token lacks a required scope or role: {scope}"),
            ),
            DenyReason::ClaimNotAllowed { claim } => (
                StatusCode::FORBIDDEN,
                vec![
                    ("realm", ctx.realm.to_string()),
                    ("error", "insufficient_scope".to_string()),
                    ("error_description", format!("claim {claim} is not allowed")),
                ],
                "ClaimNotAllowed",
                format!("the token's {claim} claim is not allowed on this route"),
            ),
        };
    let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let error = pairs.iter().find(|(k, _)| *k == "error").map(|(_, v)| *v);
    let body_error = match error {
        None if status == StatusCode::SERVICE_UNAVAILABLE => Some("temporarily_unavailable"),
        e => e,
    };
    let body = serde_json::json!({"error": body_error, "code": code, "message": message, "request_id": ctx.request_id}).to_string();
    let www_authenticate = match dpop_algs {
        _ if pairs.is_empty() => String::new(),
        None => challenge("Bearer", &pairs),
        Some(algs) => {
            pairs.insert(0, ("algs", algs));
            challenge("DPoP", &pairs)
        }
    };
    Challenge {
        status,
        www_authenticate,
        code,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::TokenError;

    #[test]
    fn vectors_from_protocols_md() {
        assert_eq!(nbf_claims(1604106651), "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNjA0MTA2NjUxIn19fQ==");
        assert_eq!(nbf_claims(1700000000), "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzAwMDAwMDAwIn19fQ==");
        assert_eq!(
            acrs_claims("c1"),
            "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"
        );
    }

    #[test]
    fn revoked_cae_client_gets_claims_challenge() {
        let ctx = ChallengeCtx {
            realm: "",
            authorization_uri: Some("https://login.example/authorize"),
            cp1: true,
            request_id: "r1",
            now: 5,
        };
        let c = respond(
            &DenyReason::Revoked {
                by: crate::auth::decide::RevokedBy::Session,
                revoked_at: 1604106651,
            },
            &ctx,
        );
        assert_eq!(c.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            c.www_authenticate,
            r#"Bearer realm="", authorization_uri="https://login.example/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNjA0MTA2NjUxIn19fQ==""#
        );
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["code"], "TokenIssuedBeforeRevocationTimestamp");
        assert_eq!(body["request_id"], "r1");
        let legacy = respond(
            &DenyReason::Revoked {
                by: crate::auth::decide::RevokedBy::Session,
                revoked_at: 1,
            },
            &ChallengeCtx {
                cp1: false,
                realm: "api",
                ..ctx
            },
        );
        assert!(
            legacy
                .www_authenticate
                .starts_with(r#"Bearer realm="api", error="invalid_token", error_description=""#),
            "{}",
            legacy.www_authenticate
        );
    }

    #[test]
    fn dpop_answers() {
        use crate::auth::dpop::ProofError;
        let ctx = ChallengeCtx {
            realm: "api",
            authorization_uri: Some("https://login.example/authorize"),
            cp1: true,
            request_id: "r",
            now: 5,
        };
        let algs = Some("ES256 PS256");
        let c = respond_as(
            &DenyReason::InvalidToken(TokenError::DpopProof(ProofError::Method)),
            &ctx,
            algs,
        );
        assert_eq!(
            (c.status, c.www_authenticate.as_str()),
            (
                StatusCode::UNAUTHORIZED,
                r#"DPoP algs="ES256 PS256", realm="api", error="invalid_dpop_proof", error_description="the DPoP proof htm does not match the request method""#
            )
        );
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof");
        let n = respond_as(&DenyReason::InvalidToken(TokenError::DpopNonce), &ctx, algs);
        assert!(
            n.www_authenticate
                .starts_with(r#"DPoP algs="ES256 PS256", realm="api", error="use_dpop_nonce""#),
            "{}",
            n.www_authenticate
        );
        assert_eq!(
            respond_as(&DenyReason::MissingToken, &ctx, algs).www_authenticate,
            r#"DPoP algs="ES256 PS256", realm="api""#
        );
        let revoked = respond_as(
            &DenyReason::Revoked {
                by: crate::auth::decide::RevokedBy::Session,
                revoked_at: 1604106651,
            },
            &ctx,
            algs,
        );
        assert_eq!(
            revoked.www_authenticate,
            r#"DPoP algs="ES256 PS256", realm="api", authorization_uri="https://login.example/authorize", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNjA0MTA2NjUxIn19fQ==""#
        );
        let down = respond_as(
            &DenyReason::InvalidToken(TokenError::ReplayCheckUnavailable),
            &ctx,
            algs,
        );
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.www_authenticate, "");
        let body: serde_json::Value = serde_json::from_str(&down.body).unwrap();
        assert_eq!(body["error"], "temporarily_unavailable");
    }

    #[test]
    fn plain_answers() {
        let ctx = ChallengeCtx {
            realm: "api",
            request_id: "r",
            ..Default::default()
        };
        assert_eq!(
            respond(&DenyReason::MissingToken, &ctx).www_authenticate,
            r#"Bearer realm="api""#
        );
        assert_eq!(
            respond(&DenyReason::InvalidToken(TokenError::Expired), &ctx).www_authenticate,
            r#"Bearer realm="api", error="invalid_token", error_description="the token is expired""#
        );
        let s = respond(
            &DenyReason::InsufficientScope {
                scope: "a b".into(),
            },
            &ctx,
        );
        assert_eq!(
            (s.status, s.www_authenticate.as_str()),
            (
                StatusCode::FORBIDDEN,
                r#"Bearer realm="api", error="insufficient_scope", scope="a b""#
            )
        );
        let st = respond(
            &DenyReason::StepUpRequired {
                acr_values: vec!["urn:mfa".into()],
                max_age: Some(300),
            },
            &ctx,
        );
        assert_eq!(
            st.www_authenticate,
            r#"Bearer error="insufficient_user_authentication", error_description="a stronger or more recent authentication is required", acr_values="urn:mfa", max_age="300""#
        );
    }
}
