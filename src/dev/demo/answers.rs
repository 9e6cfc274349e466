//! How a step shows and checks an answer: the `WWW-Authenticate` challenge (one Bearer
//! challenge in canonical form, docs/protocols.md §2.1), its decoded `claims`, a token's claims,
//! and the identity headers the upstream received.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

use super::client::Answer;
use super::report::Step;
use super::style::Out;
use crate::dev::challenge_parser::{decode_claims, parse_one, Challenge, Syntax};
use crate::dev::{keys::decode_unverified, now_secs};

/// The claims request a revocation challenge must carry, encoded as Microsoft does
/// (docs/protocols.md §2.4).
pub(super) fn expected_nbf_claims(nbf: i64) -> String {
    STANDARD.encode(format!(
        r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{nbf}"}}}}}}"#
    ))
}

pub(super) fn expected_acrs_claims(ctx: &str) -> String {
    STANDARD.encode(format!(
        r#"{{"access_token":{{"acrs":{{"essential":true,"value":"{ctx}"}}}}}}"#
    ))
}

/// [`show_challenge`] of a claims challenge (`realm`, `authorization_uri`, `error`, `claims`,
/// in that order) whose `error` must be `insufficient_claims`.
pub(super) fn show_claims_challenge(
    step: &mut Step,
    out: &mut Out<'_>,
    a: &Answer,
) -> Option<Challenge> {
    let c = show_challenge(
        step,
        out,
        a,
        &["realm", "authorization_uri", "error", "claims"],
    )?;
    step.check(
        out,
        c.get("error") == Some("insufficient_claims"),
        "error must be insufficient_claims",
    );
    Some(c)
}

/// Prints the `WWW-Authenticate` header and checks it is one well-formed Bearer challenge with
/// exactly the parameter names `names`, in that order. Returns it when it parsed.
pub(super) fn show_challenge(
    step: &mut Step,
    out: &mut Out<'_>,
    a: &Answer,
    names: &[&str],
) -> Option<Challenge> {
    let count = a.headers.get_all("www-authenticate").iter().count();
    let Some(raw) = a.header("www-authenticate") else {
        step.check(out, false, "no WWW-Authenticate header");
        return None;
    };
    out.kv("WWW-Authenticate", raw);
    step.check(
        out,
        count == 1,
        format!("expected one WWW-Authenticate header, got {count}"),
    );
    let Ok(c) = parse_one(raw, Syntax::Tolerant) else {
        step.check(out, false, "WWW-Authenticate does not parse");
        return None;
    };
    step.check(
        out,
        c.scheme == "Bearer",
        format!("scheme is {:?}, expected Bearer", c.scheme),
    );
    step.check(
        out,
        c.names() == names,
        format!(
            "parameters are [{}], expected [{}]",
            c.names().join(", "),
            names.join(", ")
        ),
    );
    step.check(
        out,
        c.canonical() == raw,
        "header is not in canonical form (quoted values separated by \", \")",
    );
    if let Some(body) = a.json() {
        if let Some(code) = body.get("code").and_then(Value::as_str) {
            out.kv("body code", code);
        }
    }
    Some(c)
}

/// Prints and returns the decoded `claims` of a challenge.
pub(super) fn show_claims(
    step: &mut Step,
    out: &mut Out<'_>,
    c: &Challenge,
) -> Option<(String, Value)> {
    let b64 = c.get("claims")?.to_string();
    match decode_claims(&b64, Syntax::Tolerant) {
        Some(v) => {
            out.kv("claims (decoded)", &v.to_string());
            Some((b64, v))
        }
        None => {
            step.check(out, false, "claims is not base64 of JSON");
            None
        }
    }
}

pub(super) fn show_token_claims(out: &mut Out<'_>, token: &str) -> Option<Value> {
    let (_, claims) = decode_unverified(token).ok()?;
    let now = now_secs();
    let mut shown = serde_json::Map::new();
    for k in ["sub", "sid", "iat", "nbf", "ipaddr", "xms_cc", "acrs"] {
        if let Some(v) = claims.get(k) {
            shown.insert(k.to_string(), v.clone());
        }
    }
    out.kv("token claims", &Value::Object(shown).to_string());
    if let Some(iat) = claims.get("iat").and_then(Value::as_i64) {
        let age = now - iat;
        let when = if age > 0 {
            format!("{age}s ago")
        } else {
            "just now".to_string()
        };
        out.kv("issued", &format!("{iat} ({when})"));
    }
    Some(claims)
}

/// Prints the identity headers the upstream received (the echo answer) and returns them.
pub(super) fn show_upstream(out: &mut Out<'_>, a: &Answer) -> serde_json::Map<String, Value> {
    let headers = a
        .json()
        .and_then(|v| v.get("headers").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    let mut lines: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-user-") || k.as_str() == "x-forwarded-for")
        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("")))
        .collect();
    lines.sort();
    lines.push(match headers.get("authorization") {
        Some(_) => "authorization: (forwarded)".to_string(),
        None => "authorization: (not forwarded: forward_authorization = false)".to_string(),
    });
    out.kv("upstream received", &lines.join("\n"));
    headers
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expected_claims_match_the_protocol_vectors() {
        assert_eq!(expected_nbf_claims(1604106651), "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNjA0MTA2NjUxIn19fQ==");
        assert_eq!(
            expected_acrs_claims("c1"),
            "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"
        );
        assert_eq!(
            decode_claims(
                "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19",
                Syntax::Tolerant
            ),
            Some(json!({"access_token":{"acrs":{"essential":true,"value":"c1"}}}))
        );
    }
}
