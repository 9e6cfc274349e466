//! CAEP 1.0, RISC 1.0, OAuth and SSF events → store changes (docs/protocols.md §5). Pure: the
//! verified SET and the transmitter's policy in, a [`Plan`] (changes, verification, stream
//! status, log notes) out. Event time is `event_timestamp` (milliseconds above 10^11), else `iat`.

use std::fmt::Write as _;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::set::{SetEvent, ValidSet};
use super::subject::{parse_ip_list, KeyContext, Resolved, Subject};
use super::vocabulary::{Caep, EventType, OAuth, Risc};
use crate::config::{RiskLevel, Transmitter};
use crate::store::{Change, SubjectKey};

/// Events below 10^11 are seconds, above are milliseconds (Okta).
const MS_THRESHOLD: f64 = 1e11;

/// Per-transmitter mapping choices.
#[derive(Debug, Clone)]
pub struct EventPolicy {
    /// Lowest CAEP risk level that revokes.
    pub risk_revoke_level: RiskLevel,
    /// Issuer URL opaque subject ids refer to (the transmitter's `token_issuer`); `None` = any.
    pub opaque_iss: Option<String>,
}

impl EventPolicy {
    /// `token_issuer_url`: the `issuer` of the configured issuer named by `t.token_issuer`.
    pub fn from_transmitter(t: &Transmitter, token_issuer_url: Option<&str>) -> EventPolicy {
        EventPolicy {
            risk_revoke_level: t.risk_revoke_level,
            opaque_iss: token_issuer_url.map(str::to_string),
        }
    }
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy {
            risk_revoke_level: RiskLevel::High,
            opaque_iss: None,
        }
    }
}

/// The `state` of a verification event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationState {
    /// Absent or `null`: an unprompted verification, accepted (SSF §8.1.4.2).
    Unprompted,
    /// Must match a request we made, else `invalid_state`.
    Given(String),
}

/// Stream status announced by `stream-updated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    Enabled,
    Paused,
    Disabled,
    Other(String),
}

impl StreamStatus {
    pub fn parse(s: &str) -> StreamStatus {
        match s.to_ascii_lowercase().as_str() {
            "enabled" => StreamStatus::Enabled,
            "paused" => StreamStatus::Paused,
            "disabled" => StreamStatus::Disabled,
            _ => StreamStatus::Other(s.chars().take(40).collect()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            StreamStatus::Enabled => "enabled",
            StreamStatus::Paused => "paused",
            StreamStatus::Disabled => "disabled",
            StreamStatus::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUpdate {
    pub status: StreamStatus,
    pub reason: Option<String>,
    /// Event time (epoch milliseconds): a late older update must not win over a newer one.
    pub at_ms: i64,
}

/// What one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Revoke,
    RevokeAndBlock,
    Unblock,
    Bind,
    Verification,
    StreamUpdated,
    /// A known event whose fields ask for nothing (compliant, risk below threshold, …).
    NoChange,
    /// Known event that only gets logged (RISC opt-in, OAuth token-revoked, …).
    Logged,
    /// Event needs a subject but the subject names no token claim (phone number, unknown format).
    NoKeys,
    /// Unknown or vendor event type.
    Ignored,
}

impl Effect {
    pub fn label(self) -> &'static str {
        match self {
            Effect::Revoke => "revoke",
            Effect::RevokeAndBlock => "revoke_block",
            Effect::Unblock => "unblock",
            Effect::Bind => "bind",
            Effect::Verification => "verification",
            Effect::StreamUpdated => "stream_updated",
            Effect::NoChange => "no_change",
            Effect::Logged => "logged",
            Effect::NoKeys => "no_keys",
            Effect::Ignored => "ignored",
        }
    }
}

/// Reasons an event carries, for the log (CAEP §2, RISC `reason`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reasons {
    pub initiating_entity: Option<String>,
    pub reason_admin: Option<String>,
    pub reason_user: Option<String>,
    pub reason: Option<String>,
}

/// One event of the SET, as the log sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub uri: String,
    pub kind: EventType,
    pub effect: Effect,
    /// Event time, epoch seconds.
    pub at: i64,
    pub reasons: Reasons,
}

/// Everything a SET asks for.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub verification: Option<VerificationState>,
    pub stream_update: Option<StreamUpdate>,
    pub notes: Vec<EventNote>,
    /// Latest event time of the SET, in milliseconds (freshness lag).
    pub event_time_ms: i64,
}

impl Plan {
    pub fn event_names(&self) -> Vec<&'static str> {
        self.notes.iter().map(|n| n.kind.name()).collect()
    }
}

/// Event time in milliseconds: `event_timestamp` (ms detected above 10^11), else `iat`.
pub fn event_time_ms(body: &Map<String, Value>, iat: i64) -> i64 {
    match body
        .get("event_timestamp")
        .and_then(Value::as_f64)
        .filter(|f| f.is_finite() && *f > 0.0)
    {
        Some(t) if t > MS_THRESHOLD => t as i64,
        Some(t) => (t * 1000.0) as i64,
        None => iat.saturating_mul(1000),
    }
}

/// Text of a reason: a string, or a language map (`{"en":"…"}`) flattened to `en: …; de: …`.
fn reason_text(v: Option<&Value>) -> Option<String> {
    let mut s = match v? {
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            let mut out = String::new();
            for (lang, text) in m {
                if let Some(t) = text.as_str() {
                    if !out.is_empty() {
                        out.push_str("; ");
                    }
                    let _ = write!(out, "{lang}: {t}");
                }
            }
            out
        }
        _ => return None,
    };
    if s.len() > 256 {
        let mut cut = 256;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    Some(s).filter(|s| !s.is_empty())
}

fn reasons(body: &Map<String, Value>) -> Reasons {
    Reasons {
        initiating_entity: reason_text(body.get("initiating_entity")),
        reason_admin: reason_text(body.get("reason_admin")),
        reason_user: reason_text(body.get("reason_user")),
        reason: reason_text(body.get("reason")),
    }
}

fn str_field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn revoke(keys: &[SubjectKey], at: i64, out: &mut Vec<Change>) -> Effect {
    if keys.is_empty() {
        return Effect::NoKeys;
    }
    out.extend(keys.iter().map(|k| Change::Revoke { key: k.clone(), at }));
    Effect::Revoke
}

/// Only sessions and subjects can be bound to addresses (that is what the decision checks).
fn bindable(k: &SubjectKey) -> bool {
    matches!(k, SubjectKey::Subject { .. } | SubjectKey::Session { .. })
}

/// Only subjects and e-mail addresses can be blocked (that is what the decision checks).
fn blockable(k: &SubjectKey) -> bool {
    matches!(k, SubjectKey::Subject { .. } | SubjectKey::Email { .. })
}

fn plan_event(
    e: &SetEvent,
    iat: i64,
    policy: &EventPolicy,
    ctx: &KeyContext,
    plan: &mut Plan,
) -> Effect {
    let at_ms = event_time_ms(&e.body, iat);
    let at = at_ms.div_euclid(1000);
    plan.event_time_ms = plan.event_time_ms.max(at_ms);
    let r: Resolved = e
        .subject
        .as_ref()
        .map(|s| s.resolve(ctx))
        .unwrap_or_default();
    let subject = r.principal();
    let out = &mut plan.changes;
    match e.kind {
        EventType::Caep(c) => match c {
            Caep::SessionRevoked => {
                if !r.session.is_empty() {
                    revoke(&r.session, at, out)
                } else if let Some(Subject::Opaque { id }) = &e.subject {
                    // CAEP 1.0 §3.1's own example: a top-level opaque subject names the session.
                    // Revoke that `sid` and that `sub`/`oid` (docs/protocols.md §5): ids do not
                    // collide in practice, and either reading stops the session.
                    let sid = SubjectKey::Session {
                        iss: ctx.opaque_iss().to_string(),
                        sid: id.clone(),
                    };
                    let mut keys = vec![sid];
                    keys.extend(subject.iter().cloned());
                    revoke(&keys, at, out)
                } else {
                    revoke(subject, at, out)
                }
            }
            Caep::CredentialChange => revoke(subject, at, out),
            Caep::TokenClaimsChange => revoke(
                if r.token.is_empty() {
                    subject
                } else {
                    &r.token
                },
                at,
                out,
            ),
            Caep::AssuranceLevelChange => {
                if str_field(&e.body, "change_direction")
                    .is_some_and(|d| d.eq_ignore_ascii_case("decrease"))
                {
                    revoke(subject, at, out)
                } else {
                    Effect::NoChange
                }
            }
            Caep::DeviceComplianceChange => {
                let status = str_field(&e.body, "current_status")
                    .map(|s| s.to_ascii_lowercase().replace('_', "-"));
                if matches!(
                    status.as_deref(),
                    Some("not-compliant" | "non-compliant" | "noncompliant")
                ) {
                    revoke(
                        if r.device.is_empty() {
                            subject
                        } else {
                            &r.device
                        },
                        at,
                        out,
                    )
                } else {
                    Effect::NoChange
                }
            }
            Caep::RiskLevelChange => {
                let level = str_field(&e.body, "current_level").and_then(RiskLevel::parse);
                if level.is_some_and(|l| l >= policy.risk_revoke_level) {
                    let principal = str_field(&e.body, "principal").map(str::to_ascii_lowercase);
                    let keys = match principal.as_deref() {
                        Some("device") if !r.device.is_empty() => &r.device,
                        Some("session") if !r.session.is_empty() => &r.session,
                        _ => subject,
                    };
                    revoke(keys, at, out)
                } else {
                    Effect::NoChange
                }
            }
            Caep::SessionEstablished | Caep::SessionPresented => {
                let mut nets: Vec<IpNet> = r.ips.clone();
                if let Some(list) = e.body.get("ips") {
                    // Legacy CAEP draft `ips`; unparsable entries were refused nowhere else, skip them.
                    if let Ok(more) = parse_ip_list(list) {
                        nets.extend(more);
                    }
                }
                nets.sort();
                nets.dedup();
                // Only session and subject bindings are enforced (`decide`); binding another key
                // kind (an e-mail, a device) would be stored and never checked.
                let keys: Vec<&SubjectKey> = if r.session.is_empty() {
                    subject.iter().filter(|k| bindable(k)).collect()
                } else {
                    r.session.iter().collect()
                };
                if nets.is_empty() {
                    Effect::Logged
                } else if keys.is_empty() {
                    Effect::NoKeys
                } else {
                    out.extend(keys.into_iter().map(|k| Change::Bind {
                        key: k.clone(),
                        nets: nets.clone(),
                        at,
                    }));
                    Effect::Bind
                }
            }
        },
        EventType::Risc(rc) => match rc {
            Risc::AccountDisabled | Risc::AccountPurged => {
                if subject.is_empty() {
                    return Effect::NoKeys;
                }
                revoke(subject, at, out);
                out.extend(
                    subject
                        .iter()
                        .filter(|k| blockable(k))
                        .map(|k| Change::Block { key: k.clone(), at }),
                );
                Effect::RevokeAndBlock
            }
            Risc::AccountEnabled => {
                let keys: Vec<_> = subject.iter().filter(|k| blockable(k)).collect();
                if keys.is_empty() {
                    return Effect::NoKeys;
                }
                out.extend(
                    keys.into_iter()
                        .map(|k| Change::Unblock { key: k.clone(), at }),
                );
                Effect::Unblock
            }
            Risc::CredentialCompromise | Risc::SessionsRevoked => revoke(subject, at, out),
            _ => Effect::Logged,
        },
        EventType::OAuth(OAuth::TokensRevoked) => revoke(subject, at, out),
        EventType::OAuth(OAuth::TokenRevoked) => Effect::Logged,
        EventType::Verification => {
            let state = match e.body.get("state") {
                None | Some(Value::Null) => VerificationState::Unprompted,
                Some(Value::String(s)) => VerificationState::Given(s.clone()),
                Some(other) => VerificationState::Given(other.to_string()),
            };
            // Several verification events in one SET: any given state must be checked.
            if !matches!(plan.verification, Some(VerificationState::Given(_))) {
                plan.verification = Some(state);
            }
            Effect::Verification
        }
        EventType::StreamUpdated => {
            let status = StreamStatus::parse(str_field(&e.body, "status").unwrap_or(""));
            let update = StreamUpdate {
                status,
                reason: reason_text(e.body.get("reason")),
                at_ms,
            };
            if plan.stream_update.as_ref().is_none_or(|u| u.at_ms <= at_ms) {
                plan.stream_update = Some(update);
            }
            Effect::StreamUpdated
        }
        EventType::Other => Effect::Ignored,
    }
}

/// The plan of a verified SET under a transmitter's policy.
pub fn plan(set: &ValidSet, policy: &EventPolicy) -> Plan {
    let ctx = KeyContext {
        opaque_iss: policy.opaque_iss.clone(),
        ..KeyContext::new(&set.claims.iss)
    };
    let mut plan = Plan::default();
    for e in &set.claims.events {
        let effect = plan_event(e, set.claims.iat, policy, &ctx, &mut plan);
        let at = event_time_ms(&e.body, set.claims.iat).div_euclid(1000);
        plan.notes.push(EventNote {
            uri: e.uri.clone(),
            kind: e.kind,
            effect,
            at,
            reasons: reasons(&e.body),
        });
    }
    // The store's merges are idempotent; drop exact repeats anyway (one subject, several events).
    let mut seen = Vec::with_capacity(plan.changes.len());
    plan.changes.retain(|c| {
        if seen.contains(c) {
            false
        } else {
            seen.push(c.clone());
            true
        }
    });
    plan
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::keys::parse_jwks;
    use crate::dev::keys::set_kit::{self as kit, AUD, ISS};
    use crate::signals::set::{tests::policy, verify_set};
    use crate::signals::vocabulary::{CAEP, OAUTH, RISC, STREAM_UPDATED_URI, VERIFICATION_URI};
    use serde_json::json;

    fn valid(claims: Value) -> ValidSet {
        let s = kit::rsa();
        let keys = parse_jwks(kit::jwks(&s).to_string().as_bytes(), "t", 2048).expect("jwks");
        verify_set(&s.sign_set(&claims), &keys, &policy(), 1_700_000_000).expect("valid SET")
    }

    fn set(sub_id: Value, uri: &str, body: Value) -> Value {
        json!({"iss": ISS, "jti": "j", "iat": 1_615_305_159, "aud": AUD, "sub_id": sub_id, "events": {uri: body}})
    }

    fn user() -> Value {
        json!({"format":"iss_sub","iss":"https://idp.example.com/","sub":"u1"})
    }

    fn ukey() -> SubjectKey {
        SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "u1".into(),
        }
    }

    fn run(v: Value) -> Plan {
        plan(&valid(v), &EventPolicy::default())
    }

    fn caep(n: &str) -> String {
        format!("{CAEP}{n}")
    }

    fn risc(n: &str) -> String {
        format!("{RISC}{n}")
    }

    #[test]
    fn spec_vector_session_revoked_revokes_the_session_only() {
        let v = json!({"iss":"https://idp.example.com/123456789/","jti":"24c63fb56e5a2d77a6b512616ca9fa24","iat":1615305159,"aud":"https://sp.example.com/caep","txn":"8675309",
            "sub_id":{"format":"complex","session":{"format":"opaque","id":"dMTlD|1600802906337.16|16008.16"},
              "user":{"format":"iss_sub","iss":"https://idp.example.com/123456789/","sub":"99beb27c-c1c2-4955-882a-e0dc4996fcbc"},
              "tenant":{"format":"opaque","id":"123456789"}},
            "events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{"initiating_entity":"policy",
              "reason_admin":{"en":"Landspeed Policy Violation: C076E82F"},"event_timestamp":1615304991}}});
        let s = kit::rsa();
        let keys = parse_jwks(kit::jwks(&s).to_string().as_bytes(), "t", 2048).expect("jwks");
        let pol = crate::signals::set::SetPolicy {
            issuer: "https://idp.example.com/123456789".into(),
            ..policy()
        };
        let vs = verify_set(&s.sign_set(&v), &keys, &pol, 0).expect("valid");
        let p = plan(&vs, &EventPolicy::default());
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: SubjectKey::Session {
                    iss: "*".into(),
                    sid: "dMTlD|1600802906337.16|16008.16".into()
                },
                at: 1615304991
            }]
        );
        assert_eq!(p.notes[0].effect, Effect::Revoke);
        assert_eq!(
            p.notes[0].reasons.initiating_entity.as_deref(),
            Some("policy")
        );
        assert_eq!(
            p.notes[0].reasons.reason_admin.as_deref(),
            Some("en: Landspeed Policy Violation: C076E82F")
        );
        assert_eq!(p.event_time_ms, 1_615_304_991_000);
    }

    #[test]
    fn spec_vector_credential_change() {
        let v = json!({"iss": ISS,"jti":"07efd930f0977e4fcc1149a733ce7f78","iat":1615305159,"aud":"https://sp.example.com/caep","txn":"8675309",
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/3456789/","sub":"jane.smith@example.com"},
            "events":{"https://schemas.openid.net/secevent/caep/event-type/credential-change":{"credential_type":"fido2-roaming","change_type":"create","initiating_entity":"user","event_timestamp":1615304991}}});
        let p = run(v);
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: SubjectKey::Subject {
                    iss: "https://idp.example.com/3456789".into(),
                    sub: "jane.smith@example.com".into()
                },
                at: 1615304991
            }]
        );
    }

    #[test]
    fn spec_vector_account_disabled_blocks_and_enabled_unblocks() {
        let v = json!({"iss": ISS,"jti":"756E69717565206964656E746966696572","iat":1508184845,"aud": AUD,
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"},
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"reason":"hijacking"}}});
        let p = run(v);
        let k = SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "7375626A656374".into(),
        };
        assert_eq!(
            p.changes,
            vec![
                Change::Revoke {
                    key: k.clone(),
                    at: 1508184845
                },
                Change::Block {
                    key: k.clone(),
                    at: 1508184845
                }
            ]
        );
        assert_eq!(p.notes[0].reasons.reason.as_deref(), Some("hijacking"));
        let p = run(set(
            json!({"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"}),
            &risc("account-enabled"),
            json!({"event_timestamp": 1508190000}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Unblock {
                key: k,
                at: 1508190000
            }]
        );
        let p = run(set(user(), &risc("account-purged"), json!({})));
        assert_eq!(p.notes[0].effect, Effect::RevokeAndBlock);
    }

    #[test]
    fn rfc8935_legacy_example_resigned_is_applied() {
        let mut v: Value = serde_json::from_str(kit::RFC8935_PAYLOAD).expect("json");
        v["iss"] = json!(ISS);
        v["aud"] = json!(AUD);
        let p = run(v);
        let k = SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "7375626A656374".into(),
        };
        assert_eq!(
            p.changes,
            vec![
                Change::Revoke {
                    key: k.clone(),
                    at: 1508184845
                },
                Change::Block {
                    key: k,
                    at: 1508184845
                }
            ]
        );
    }

    #[test]
    fn spec_vector_verification_state() {
        let v = json!({"jti":"123456","iss": ISS,"aud": AUD,"iat":1493856000,
            "sub_id":{"format":"opaque","id":"f67e39a0a4d34d56b3aa1bc4cff0069f"},
            "events":{"https://schemas.openid.net/secevent/ssf/event-type/verification":{"state":"VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="}}});
        let p = run(v);
        assert_eq!(
            p.verification,
            Some(VerificationState::Given(
                "VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo=".into()
            ))
        );
        assert!(p.changes.is_empty());
        let p = run(set(user(), VERIFICATION_URI, json!({"state": null})));
        assert_eq!(p.verification, Some(VerificationState::Unprompted));
        let p = run(set(
            user(),
            "https://schemas.openid.net/secevent/sse/event-type/verification",
            json!({}),
        ));
        assert_eq!(p.verification, Some(VerificationState::Unprompted));
    }

    #[test]
    fn caep_events_map_per_table() {
        // Session-revoked without a session member revokes the subject.
        assert_eq!(
            run(set(user(), &caep("session-revoked"), json!({}))).changes,
            vec![Change::Revoke {
                key: ukey(),
                at: 1_615_305_159
            }]
        );
        // Token-claims-change on a jwt_id subject revokes that token.
        let p = run(set(
            json!({"format":"jwt_id","iss":"https://idp.example.com/","jti":"tok-1"}),
            &caep("token-claims-change"),
            json!({"claims":{"role":"x"}}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: SubjectKey::Token {
                    iss: "https://idp.example.com".into(),
                    jti: "tok-1".into()
                },
                at: 1_615_305_159
            }]
        );
        assert_eq!(
            run(set(
                user(),
                &caep("token-claims-change"),
                json!({"claims":{}})
            ))
            .changes
            .len(),
            1
        );
        // Assurance level: only a decrease revokes.
        assert_eq!(run(set(user(), &caep("assurance-level-change"), json!({"namespace":"NIST-AAL","current_level":"nist-aal1","change_direction":"decrease"}))).changes.len(), 1);
        let p = run(set(
            user(),
            &caep("assurance-level-change"),
            json!({"namespace":"NIST-AAL","current_level":"nist-aal2","change_direction":"increase"}),
        ));
        assert!(p.changes.is_empty());
        assert_eq!(p.notes[0].effect, Effect::NoChange);
        // Device compliance: the device member, else the subject; non-compliant is not-compliant.
        let dev =
            json!({"format":"complex","user": user(),"device":{"format":"opaque","id":"dev-9"}});
        let p = run(set(
            dev.clone(),
            &caep("device-compliance-change"),
            json!({"previous_status":"compliant","current_status":"not-compliant"}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: SubjectKey::Device { id: "dev-9".into() },
                at: 1_615_305_159
            }]
        );
        let p = run(set(
            user(),
            &caep("device-compliance-change"),
            json!({"current_status":"non-compliant"}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: ukey(),
                at: 1_615_305_159
            }]
        );
        assert!(run(set(
            dev,
            &caep("device-compliance-change"),
            json!({"current_status":"compliant"})
        ))
        .changes
        .is_empty());
        // Sessions: bind addresses from an ip-addresses member and the legacy `ips`.
        let sess = json!({"format":"complex","user": user(),"session":{"format":"opaque","id":"s-1"},"ip-addresses":{"format":"ip-addresses","ip-addresses":["192.0.2.10"]}});
        let p = run(set(
            sess,
            &caep("session-established"),
            json!({"ips":["198.51.100.0/24"],"fp_ua":"abc","acr":"x","amr":["pwd"]}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Bind {
                key: SubjectKey::Session {
                    iss: "*".into(),
                    sid: "s-1".into()
                },
                nets: vec![
                    "192.0.2.10/32".parse().expect("net"),
                    "198.51.100.0/24".parse().expect("net")
                ],
                at: 1_615_305_159
            }]
        );
        let p = run(set(
            user(),
            &caep("session-presented"),
            json!({"ips":["2001:db8::1"]}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Bind {
                key: ukey(),
                nets: vec!["2001:db8::1/128".parse().expect("net")],
                at: 1_615_305_159
            }]
        );
        assert_eq!(
            run(set(user(), &caep("session-established"), json!({}))).notes[0].effect,
            Effect::Logged
        );
        // An e-mail subject: nothing the decision would consult, so nothing is bound.
        let p = run(set(
            json!({"format":"email","email":"a@example.com"}),
            &caep("session-established"),
            json!({"ips":["192.0.2.1"]}),
        ));
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.notes[0].effect, Effect::NoKeys);
    }

    #[test]
    fn risk_level_threshold_is_configurable_and_case_insensitive() {
        let ev = |lvl: &str| {
            set(
                user(),
                &caep("risk-level-change"),
                json!({"principal":"USER","current_level": lvl,"previous_level":"LOW"}),
            )
        };
        assert_eq!(run(ev("HIGH")).changes.len(), 1);
        assert_eq!(run(ev("high")).changes.len(), 1);
        assert!(run(ev("medium")).changes.is_empty());
        let medium = EventPolicy {
            risk_revoke_level: RiskLevel::Medium,
            opaque_iss: None,
        };
        assert_eq!(plan(&valid(ev("Medium")), &medium).changes.len(), 1);
        assert!(plan(&valid(ev("LOW")), &medium).changes.is_empty());
        assert!(run(ev("unknown")).changes.is_empty());
    }

    #[test]
    fn risc_and_oauth_lists() {
        for (n, revokes) in [
            ("credential-compromise", true),
            ("sessions-revoked", true),
            ("account-credential-change-required", false),
            ("identifier-changed", false),
            ("identifier-recycled", false),
            ("opt-in", false),
            ("opt-out-initiated", false),
            ("opt-out-cancelled", false),
            ("opt-out-effective", false),
            ("recovery-activated", false),
            ("recovery-information-changed", false),
        ] {
            let p = run(set(user(), &risc(n), json!({"credential_type":"password"})));
            assert_eq!(!p.changes.is_empty(), revokes, "{n}");
            assert_ne!(p.notes[0].kind, EventType::Other, "{n}");
        }
        assert_eq!(
            run(set(user(), &format!("{OAUTH}tokens-revoked"), json!({})))
                .changes
                .len(),
            1
        );
        let p = run(set(user(), &format!("{OAUTH}token-revoked"), json!({})));
        assert!(p.changes.is_empty());
        assert_eq!(p.notes[0].effect, Effect::Logged);
    }

    #[test]
    fn event_time_and_unknown_events() {
        // Milliseconds (Okta) are detected.
        let p = run(set(
            user(),
            &caep("credential-change"),
            json!({"credential_type":"password","change_type":"update","event_timestamp": 1_700_000_000_123_i64}),
        ));
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: ukey(),
                at: 1_700_000_000
            }]
        );
        assert_eq!(p.event_time_ms, 1_700_000_000_123);
        // Unknown event: accepted, no effect.
        let p = run(set(
            user(),
            "https://schemas.okta.com/secevent/okta/event-type/device-risk-change",
            json!({"x":1}),
        ));
        assert!(p.changes.is_empty());
        assert_eq!(p.notes[0].effect, Effect::Ignored);
        // Unknown subject format: no keys, logged.
        let p = run(set(
            json!({"format":"oauth_token","token":"x"}),
            &caep("credential-change"),
            json!({}),
        ));
        assert!(p.changes.is_empty());
        assert_eq!(p.notes[0].effect, Effect::NoKeys);
        // Opaque subjects bind to the configured token issuer.
        let pol = EventPolicy {
            opaque_iss: Some("https://login.example/".into()),
            ..EventPolicy::default()
        };
        let p = plan(
            &valid(set(
                json!({"format":"opaque","id":"o1"}),
                &caep("credential-change"),
                json!({}),
            )),
            &pol,
        );
        assert_eq!(
            p.changes,
            vec![Change::Revoke {
                key: SubjectKey::Subject {
                    iss: "https://login.example".into(),
                    sub: "o1".into()
                },
                at: 1_615_305_159
            }]
        );
    }

    #[test]
    fn stream_updated() {
        let p = run(set(
            json!({"format":"opaque","id":"stream-1"}),
            STREAM_UPDATED_URI,
            json!({"status":"paused","reason":"maintenance"}),
        ));
        assert_eq!(
            p.stream_update,
            Some(StreamUpdate {
                status: StreamStatus::Paused,
                reason: Some("maintenance".into()),
                at_ms: 1_615_305_159_000
            })
        );
        let v = json!({"iss": ISS, "jti":"j", "iat": 5, "aud": AUD, "events": {"https://schemas.openid.net/secevent/caep/event-type/stream-updated": {"status":"Disabled"}}});
        assert_eq!(
            run(v).stream_update.map(|u| u.status),
            Some(StreamStatus::Disabled)
        );
    }
}
