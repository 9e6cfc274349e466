//! The narration: the steps a to f run against a running [`Demo`], each request and answer
//! printed, every check recorded in the [`Report`].

use std::io::Write;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::answers::{
    expected_acrs_claims, expected_nbf_claims, show_challenge, show_claims, show_claims_challenge,
    show_token_claims, show_upstream,
};
use super::client::{Answer, Http};
use super::report::{Report, Step};
use super::style::{abbreviate, Out, Style};
use super::Demo;
use crate::dev::challenge_parser::{parse_one, Syntax};
use crate::dev::{keys::decode_unverified, now_secs, random_id, DevTransmitter};

/// The address a token is bound to in step e (TEST-NET-3, never the caller).
const FOREIGN_IP: &str = "203.0.113.7";

/// Values passed from one step to the next.
#[derive(Default)]
struct Story {
    sid: String,
    token_a: Option<String>,
    revoked_at: Option<i64>,
    revocation_claims: Option<String>,
    token_c: Option<String>,
}

/// Requests a token from the issuer's `/token` endpoint (form or JSON body) and shows it.
async fn get_token(
    http: &Http,
    out: &mut Out<'_>,
    step: &mut Step,
    demo: &Demo,
    body: TokenBody<'_>,
    note: &str,
) -> Option<String> {
    let url = demo.issuer.token_url();
    out.request("POST", &url, note);
    let sent = match body {
        TokenBody::Form(pairs) => {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            let form = s.finish();
            out.kv("form", &form);
            http.send(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                form,
            )
            .await
        }
        TokenBody::Json(v) => {
            out.kv("json", &v.to_string());
            http.send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                v.to_string(),
            )
            .await
        }
    };
    let a = match sent {
        Ok(a) => a,
        Err(e) => {
            step.check(out, false, format!("token request failed: {e}"));
            return None;
        }
    };
    out.status(a.status);
    if !step.expect_status(out, a.status, 200) {
        out.kv("body", &a.text());
        return None;
    }
    let token = a.json().and_then(|v| {
        v.get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(token) = token else {
        step.check(out, false, "the /token answer has no access_token");
        return None;
    };
    out.kv("access_token", &abbreviate(&token));
    show_token_claims(out, &token);
    Some(token)
}

enum TokenBody<'a> {
    Form(&'a [(&'a str, &'a str)]),
    Json(Value),
}

async fn call_api(
    http: &Http,
    out: &mut Out<'_>,
    step: &mut Step,
    url: &str,
    token: &str,
) -> Option<Answer> {
    out.request("GET", url, "Authorization: Bearer <token>");
    let auth = format!("Bearer {token}");
    match http
        .send(Method::GET, url, &[("authorization", &auth)], Bytes::new())
        .await
    {
        Ok(a) => {
            out.status(a.status);
            Some(a)
        }
        Err(e) => {
            step.check(out, false, format!("request failed: {e}"));
            None
        }
    }
}

/// Runs every step against a running demo, printing to `w`; returns what passed and failed.
pub async fn narrate(demo: &Demo, w: &mut dyn Write, style: Style) -> Report {
    let mut out = Out { w, s: style };
    let http = Http::new();
    let mut report = Report::default();
    let mut story = Story {
        sid: format!("sess-{}", random_id(4)),
        ..Story::default()
    };
    let out = &mut out;
    let title = out
        .s
        .bold("cae-proxy demo: continuous access evaluation, live on loopback");
    out.line(&title);
    out.blank();
    demo.print_map(out);

    step_a(demo, &http, out, &mut story, &mut report).await;
    step_b(demo, &http, out, &mut story, &mut report).await;
    step_c(demo, &http, out, &mut story, &mut report).await;
    step_d(demo, &http, out, &mut story, &mut report).await;
    step_e(demo, &http, out, &mut report).await;
    step_f(demo, &http, out, &mut story, &mut report).await;
    step_g(demo, &http, out, &mut report).await;

    print_summary(out, &report);
    report
}

fn print_summary(out: &mut Out<'_>, report: &Report) {
    out.title("", "summary");
    for s in &report.steps {
        if s.passed() {
            let mark = out.s.green("✓ pass");
            out.line(&format!("  {mark}  {:<4} {}", s.id, s.title));
        } else {
            let mark = out.s.red("✗ FAIL");
            out.line(&format!("  {mark}  {:<4} {}", s.id, s.title));
            for f in &s.failures {
                let f = out.s.red(f);
                out.line(&format!("                 {f}"));
            }
        }
    }
    let failed = report.failed();
    let passed = report.steps.len() - failed.len();
    out.blank();
    if failed.is_empty() {
        let t = out
            .s
            .green(&format!("all {} steps passed", report.steps.len()));
        out.line(&format!("  {t}"));
    } else {
        let ids = failed.iter().map(|s| s.id).collect::<Vec<_>>().join(", ");
        let t = out.s.red(&format!(
            "{passed} of {} steps passed; failed: {ids}",
            report.steps.len()
        ));
        out.line(&format!("  {t}"));
    }
}

async fn step_a(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(out, "a", "a CAE client signs in and calls the API");
    out.explain(
        "alice's client (xms_cc: [\"cp1\"], a CAE-capable client like MSAL) gets a token from \
         the issuer. It was issued a minute ago (iat backdated by 60 s) and is bound to the \
         address she signed in from (ipaddr 127.0.0.1).",
    );
    let t = now_secs() - 60;
    let body = json!({
        "sub": "alice",
        "claims": {"sid": story.sid, "ipaddr": "127.0.0.1", "iat": t, "nbf": t, "xms_cc": ["cp1"]},
    });
    let token = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Json(body),
        "token request",
    )
    .await;
    if let Some(token) = &token {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, token).await {
            if step.expect_status(out, a.status, 200) {
                let h = show_upstream(out, &a);
                let got = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                step.check(
                    out,
                    got("x-user-sub") == "alice",
                    format!(
                        "upstream saw x-user-sub {:?}, expected \"alice\"",
                        got("x-user-sub")
                    ),
                );
                step.check(
                    out,
                    got("x-user-sid") == story.sid,
                    format!(
                        "upstream saw x-user-sid {:?}, expected {:?}",
                        got("x-user-sid"),
                        story.sid
                    ),
                );
            } else {
                out.kv("body", &a.text());
            }
        }
    }
    story.token_a = token;
    out.explain(
        "The proxy checked signature (JWKS from discovery), iss, aud, exp, the revocation tables \
         and the IP binding, then forwarded the call with the identity headers the route names.",
    );
    step.finish(
        out,
        report,
        "token accepted; the upstream got the identity headers",
    );
}

async fn step_b(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    // b.1: the transmitter pushes a signed session-revoked SET.
    let mut step = Step::new(
        out,
        "b.1",
        "the identity provider revokes the session: a signed SET is pushed",
    );
    out.explain(
        "The transmitter signs a CAEP session-revoked Security Event Token for alice's session \
         and pushes it (RFC 8935) to the proxy's signals listener. The proxy verifies it, stores \
         the revocation, and answers 202 with an empty body.",
    );
    let revoked_at = now_secs();
    let sub_id = json!({
        "format": "complex",
        "session": {"format": "opaque", "id": story.sid},
        "user": {"format": "iss_sub", "iss": demo.issuer.issuer_url(), "sub": "alice"},
    });
    let set = demo
        .transmitter
        .sign_set(DevTransmitter::session_revoked(sub_id, Some(revoked_at)));
    if let Ok((h, p)) = decode_unverified(&set) {
        out.kv("SET header", &h.to_string());
        out.kv(
            "SET iss, aud, jti",
            &format!("{}  {}  {}", p["iss"], p["aud"], p["jti"]),
        );
        out.kv("SET sub_id", &p["sub_id"].to_string());
        if let Some(events) = p["events"].as_object() {
            for (uri, body) in events {
                out.kv("SET event", &format!("{uri}\n{body}"));
            }
        }
    }
    let url = demo.push_url();
    out.request(
        "POST",
        &url,
        "Content-Type: application/secevent+jwt, Authorization: <push secret>",
    );
    let pushed = demo
        .transmitter
        .push(&url, demo.plan.push_authorization.as_deref(), &set)
        .await;
    let accepted = match pushed {
        Ok((status, _, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            out.status(status);
            if !body.is_empty() {
                out.kv("body", &body);
            }
            let ok = step.expect_status(out, status, 202);
            if status == StatusCode::NOT_FOUND {
                out.explain(
                    "404: the signals listener serves no SSF push endpoint at this path (the \
                     push endpoint is not wired, or [transmitter.push] path differs).",
                );
            }
            if ok {
                step.check(
                    out,
                    body.is_empty(),
                    "202 must come with an empty body (RFC 8935 §2.2)",
                )
            } else {
                false
            }
        }
        Err(e) => {
            step.check(out, false, format!("push failed: {e}"));
            false
        }
    };
    step.finish(out, report, "the proxy accepted and stored the SET (202)");

    if !accepted {
        out.warn(
            "fallback: the push was not accepted, so the demo revokes the same session through \
             the admin API to go on with the story (b.1 stays failed).",
        );
        let url = format!("{}/admin/revoke", demo.admin_url());
        let body = json!({"key": {"type": "session", "iss": demo.issuer.issuer_url(), "sid": story.sid}, "at": revoked_at});
        out.request("POST", &url, &body.to_string());
        match http
            .send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
        {
            Ok(a) => {
                out.status(a.status);
                if a.status != StatusCode::OK {
                    out.kv("body", &a.text());
                }
            }
            Err(e) => out.fail(&format!("admin revoke failed: {e}")),
        }
    }
    story.revoked_at = Some(revoked_at);

    // b.2: the same token is refused with a claims challenge.
    let mut step = Step::new(
        out,
        "b.2",
        "the same, unexpired token is refused with a claims challenge",
    );
    out.explain(
        "Nothing changed in the token: it is still signed and unexpired. But it was issued \
         before the revocation, so the proxy refuses it. Because the client declared cp1, it \
         gets a claims challenge it knows how to answer, instead of a dead end.",
    );
    if let Some(token) = story.token_a.clone() {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            step.expect_status(out, a.status, 401);
            if let Some(c) = show_claims_challenge(&mut step, out, &a) {
                step.check(
                    out,
                    c.get("realm") == Some(""),
                    "realm must be empty (authorization_uri names the issuer)",
                );
                let auth_uri = demo.issuer.authorize_url();
                step.check(
                    out,
                    c.get("authorization_uri") == Some(auth_uri.as_str()),
                    format!("authorization_uri must be {auth_uri}"),
                );
                if let Some((b64, v)) = show_claims(&mut step, out, &c) {
                    let want = expected_nbf_claims(revoked_at);
                    step.check(
                        out,
                        b64 == want,
                        format!("claims must be {want} (nbf = revocation time {revoked_at}, standard base64 with padding)"),
                    );
                    out.explain(&format!(
                        "Decoded: \"give me an access token whose nbf is at least {}\" (the revocation time, {}).",
                        v.pointer("/access_token/nbf/value").and_then(Value::as_str).unwrap_or("?"),
                        if revoked_at == now_secs() { "a moment ago" } else { "moments ago" }
                    ));
                    story.revocation_claims = Some(b64);
                }
            }
        }
    } else {
        step.check(out, false, "skipped: step a produced no token");
    }
    step.finish(
        out,
        report,
        "401 insufficient_claims with the nbf claims request",
    );
}

async fn step_c(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(
        out,
        "c",
        "the client answers the challenge: a new token, accepted again",
    );
    out.explain(
        "The client sends the claims of the challenge back to the token endpoint (form-encoded, \
         as an OAuth client would). The issuer honours them: the new token's iat/nbf are at or \
         after the revocation time, so the revocation no longer applies to it.",
    );
    let Some(claims) = story.revocation_claims.clone() else {
        step.check(out, false, "skipped: step b.2 produced no claims challenge");
        step.finish(out, report, "");
        return;
    };
    let sid = story.sid.clone();
    let pairs = [
        ("sub", "alice"),
        ("sid", sid.as_str()),
        ("ipaddr", "127.0.0.1"),
        ("xms_cc", "cp1"),
        ("claims", claims.as_str()),
    ];
    let token = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Form(&pairs),
        "claims = the challenge's claims",
    )
    .await;
    if let Some(token) = &token {
        if let (Ok((_, p)), Some(at)) = (decode_unverified(token), story.revoked_at) {
            let iat = p.get("iat").and_then(Value::as_i64).unwrap_or(0);
            step.check(
                out,
                iat >= at,
                format!("the new token's iat {iat} is before the revocation time {at}"),
            );
        }
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, token).await {
            if step.expect_status(out, a.status, 200) {
                show_upstream(out, &a);
            } else {
                out.kv("body", &a.text());
            }
        }
    }
    story.token_c = token;
    step.finish(
        out,
        report,
        "same session, new token: 200 again, no sign-in loop",
    );
}

async fn step_d(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let ctx = demo.plan.auth_context.clone();
    let mut step = Step::new(
        out,
        "d",
        "step-up: the admin route wants authentication context c1",
    );
    out.explain(&format!(
        "{}/… requires auth context {ctx} (Microsoft's acrs dialect). The token from step c \
         does not carry it, so the proxy asks for it with a claims challenge.",
        demo.plan.admin_path
    ));
    let Some(token) = story.token_c.clone() else {
        step.check(out, false, "skipped: step c produced no token");
        step.finish(out, report, "");
        return;
    };
    let url = format!("{}{}/settings", demo.proxy_url(), demo.plan.admin_path);
    let Some(a) = call_api(http, out, &mut step, &url, &token).await else {
        step.finish(out, report, "");
        return;
    };
    step.expect_status(out, a.status, 401);
    let mut claims = None;
    if let Some(c) = show_claims_challenge(&mut step, out, &a) {
        if let Some((b64, _)) = show_claims(&mut step, out, &c) {
            let want = expected_acrs_claims(&ctx);
            step.check(out, b64 == want, format!("claims must be {want}"));
            claims = Some(b64);
        }
    }
    if let Some(claims) = claims {
        out.explain(
            "The client re-authenticates as the policy for c1 requires (MFA, a compliant \
             device, …) and asks for a token with those claims.",
        );
        let sid = story.sid.clone();
        let pairs = [
            ("sub", "alice"),
            ("sid", sid.as_str()),
            ("ipaddr", "127.0.0.1"),
            ("xms_cc", "cp1"),
            ("claims", claims.as_str()),
        ];
        if let Some(token) = get_token(
            http,
            out,
            &mut step,
            demo,
            TokenBody::Form(&pairs),
            "claims = the acrs challenge",
        )
        .await
        {
            if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
                if step.expect_status(out, a.status, 200) {
                    let h = show_upstream(out, &a);
                    let acrs = h.get("x-user-acrs").and_then(Value::as_str).unwrap_or("");
                    step.check(
                        out,
                        acrs.split(',').any(|a| a.trim() == ctx),
                        format!("upstream saw x-user-acrs {acrs:?}, expected it to contain {ctx}"),
                    );
                } else {
                    out.kv("body", &a.text());
                }
            }
        }
    }
    step.finish(out, report, "acrs challenge, token with c1, 200");
}

async fn step_e(demo: &Demo, http: &Http, out: &mut Out<'_>, report: &mut Report) {
    let mut step = Step::new(
        out,
        "e",
        "a token used from another address than it was issued to",
    );
    out.explain(&format!(
        "bob's token says he signed in from {FOREIGN_IP} (ipaddr), but this request comes from \
         127.0.0.1. The route enforces token_ip (Entra's strict location enforcement), so the \
         token is refused at once, with a claims challenge whose nbf is the decision time."
    ));
    let sid = format!("sess-{}", random_id(4));
    let pairs = [
        ("sub", "bob"),
        ("sid", sid.as_str()),
        ("ipaddr", FOREIGN_IP),
        ("xms_cc", "cp1"),
    ];
    if let Some(token) = get_token(http, out, &mut step, demo, TokenBody::Form(&pairs), "").await {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        let before = now_secs();
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            let after = now_secs();
            step.expect_status(out, a.status, 401);
            if let Some(c) = show_claims_challenge(&mut step, out, &a) {
                if let Some((_, v)) = show_claims(&mut step, out, &c) {
                    let nbf = v
                        .pointer("/access_token/nbf/value")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<i64>().ok());
                    let shape_ok = v.pointer("/access_token/nbf/essential") == Some(&json!(true))
                        && v.as_object().is_some_and(|o| o.len() == 1);
                    step.check(
                        out,
                        shape_ok && nbf.is_some_and(|n| (before..=after).contains(&n)),
                        format!(
                            "claims must ask for nbf = the decision time ({before}..={after}), got {v}"
                        ),
                    );
                }
            }
        }
    }
    step.finish(out, report, "IP mismatch: 401 claims challenge");
}

async fn step_f(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(
        out,
        "f",
        "a client without cp1, after the revocation: invalid_token",
    );
    out.explain(
        "An older client in alice's revoked session did not declare cp1 (\"xms_cc\": []). It \
         would not understand a claims challenge, so it gets a plain RFC 6750 invalid_token and \
         must sign in again.",
    );
    let t = now_secs() - 60;
    let body = json!({
        "sub": "alice",
        "claims": {"sid": story.sid, "ipaddr": "127.0.0.1", "iat": t, "nbf": t, "xms_cc": []},
    });
    if let Some(token) = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Json(body),
        "xms_cc: [] (no capabilities)",
    )
    .await
    {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            step.expect_status(out, a.status, 401);
            if let Some(c) =
                show_challenge(&mut step, out, &a, &["realm", "error", "error_description"])
            {
                step.check(
                    out,
                    c.get("error") == Some("invalid_token"),
                    "error must be invalid_token",
                );
                step.check(
                    out,
                    c.get("error_description").is_some_and(|d| !d.is_empty()),
                    "error_description must not be empty",
                );
            }
        }
    }
    step.finish(out, report, "no cp1: 401 invalid_token, no claims");
}

impl Demo {
    /// The servers, routes and listeners of the running demo, one line each.
    fn print_map(&self, out: &mut Out<'_>) {
        let p = &self.plan;
        let rows = [
            (
                "issuer",
                self.issuer.issuer_url(),
                "development identity provider: discovery, JWKS, /token",
            ),
            (
                "transmitter",
                self.transmitter.issuer_url(),
                "development SSF transmitter: signs SETs",
            ),
            (
                "upstream",
                self.upstream.url(),
                "echo: answers with the request it received",
            ),
            (
                "proxy",
                self.proxy_url(),
                "the CAE proxy: routes below, in front of the upstream",
            ),
            (
                "  route",
                format!("{}/…", p.api_path),
                "token required, revocations, token_ip = true",
            ),
            (
                "  route",
                format!("{}/…", p.admin_path),
                "same, plus step-up: auth context must include the required one",
            ),
            (
                "signals",
                self.push_url(),
                "SSF push endpoint (RFC 8935) on the signals listener",
            ),
            (
                "admin",
                self.admin_url(),
                "probes, metrics, admin API (revoke, block, bind)",
            ),
        ];
        for (k, url, what) in rows {
            let url_pad = " ".repeat(36usize.saturating_sub(url.chars().count()));
            let what = out.s.dim(what);
            out.line(&format!("  {k:<12} {url}{url_pad} {what}"));
        }
    }
}

/// A DPoP-bound token (RFC 9449): stolen, it is useless without the client's key; with a proof it
/// passes once, and a replayed proof is refused.
async fn step_g(demo: &Demo, http: &Http, out: &mut Out<'_>, report: &mut Report) {
    use crate::dev::keys::{b64url, KeyAlg, SigningKey};
    let mut step = Step::new(
        out,
        "g",
        "a DPoP-bound token: useless without the client's key",
    );
    out.explain(
        "The client holds a key pair and the IdP binds the token to it (cnf.jkt, the key's \
         RFC 7638 thumbprint). Sent as a bearer token, as a thief would, it is refused; sent as \
         DPoP with a fresh proof signed by the key it passes, and that proof cannot be replayed.",
    );
    let Ok(key) = SigningKey::generate(KeyAlg::Es256) else {
        step.check(out, false, "cannot make an ES256 client key");
        return step.finish(out, report, "DPoP: not run");
    };
    let jwk = key.public_jwk();
    let member = |m: &str| jwk.get(m).and_then(Value::as_str).unwrap_or_default();
    let jkt = b64url(
        &crate::auth::keys::PublicJwk::Ec {
            crv: member("crv"),
            x: member("x"),
            y: member("y"),
        }
        .thumbprint(),
    );
    let pairs = [("sub", "carol"), ("dpop_jkt", jkt.as_str())];
    let Some(token) = get_token(http, out, &mut step, demo, TokenBody::Form(&pairs), "").await
    else {
        return step.finish(out, report, "DPoP: no token");
    };
    let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
    if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
        step.expect_status(out, a.status, 401);
        let raw = a.header("www-authenticate").unwrap_or_default();
        out.kv("WWW-Authenticate", raw);
        let c = parse_one(raw, Syntax::Tolerant);
        step.check(
            out,
            c.as_ref().is_ok_and(|c| {
                c.scheme == "DPoP"
                    && c.get("algs").is_some()
                    && c.get("error") == Some("invalid_token")
            }),
            "a DPoP challenge with algs and error=invalid_token",
        );
    }
    let proof = key.sign_raw(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
        &json!({"jti": random_id(16), "htm": "GET", "htu": url, "iat": now_secs(),
                "ath": crate::auth::dpop::access_token_hash(&token)}),
    );
    let auth = format!("DPoP {token}");
    for (want, note) in [(200, "with a fresh proof"), (401, "the same proof again")] {
        out.request(
            "GET",
            &url,
            &format!("Authorization: DPoP <token>, DPoP: <proof> ({note})"),
        );
        let sent = http
            .send(
                Method::GET,
                &url,
                &[("authorization", &auth), ("dpop", &proof)],
                Bytes::new(),
            )
            .await;
        match sent {
            Ok(a) => {
                out.status(a.status);
                step.expect_status(out, a.status, want);
                if want == 401 {
                    let error = a
                        .json()
                        .and_then(|v| v["error"].as_str().map(str::to_string));
                    step.check(
                        out,
                        error.as_deref() == Some("invalid_dpop_proof"),
                        "a replayed proof must be invalid_dpop_proof",
                    );
                }
            }
            Err(e) => {
                step.check(out, false, format!("request failed: {e}"));
            }
        }
    }
    step.finish(
        out,
        report,
        "DPoP: bearer use refused, proof once, replay refused",
    );
}
