//! Security events on request for the development transmitter: `POST /dev/events` turns a short
//! JSON description (`{"event":"session-revoked","sub":"alice","sid":"s1"}`) into a CAEP, RISC or
//! OAuth SET payload, which the transmitter signs and delivers.

use serde_json::{json, Map, Value};

use super::subjects::{complex, email, iss_sub, opaque};
use crate::signals::vocabulary::{CAEP, OAUTH, RISC};

/// Short event names, their event-type URI prefix, and the event members a real transmitter would
/// send when the request gives none.
const EVENTS: &[(&str, &str, &str)] = &[
    ("session-revoked", CAEP, r#"{"initiating_entity":"policy"}"#),
    (
        "credential-change",
        CAEP,
        r#"{"credential_type":"password","change_type":"update"}"#,
    ),
    ("token-claims-change", CAEP, r#"{"claims":{}}"#),
    (
        "assurance-level-change",
        CAEP,
        r#"{"namespace":"RFC8176","current_level":"nist-aal1","change_direction":"decrease"}"#,
    ),
    (
        "device-compliance-change",
        CAEP,
        r#"{"previous_status":"compliant","current_status":"not-compliant"}"#,
    ),
    (
        "risk-level-change",
        CAEP,
        r#"{"principal":"USER","current_level":"HIGH"}"#,
    ),
    ("session-established", CAEP, "{}"),
    ("account-disabled", RISC, "{}"),
    ("account-enabled", RISC, "{}"),
    ("account-purged", RISC, "{}"),
    (
        "credential-compromise",
        RISC,
        r#"{"credential_type":"password"}"#,
    ),
    ("sessions-revoked", RISC, "{}"),
    ("tokens-revoked", OAUTH, "{}"),
];

/// Fields `POST /dev/events` understands; anything else is refused (a typo must not be ignored).
const FIELDS: &[&str] = &[
    "event",
    "subject",
    "iss",
    "sub",
    "sid",
    "device",
    "tid",
    "email",
    "event_timestamp",
    "event_fields",
    "deliver",
    "push_to",
];

/// Where an event goes besides the transmitter's streams: a push endpoint named in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub endpoint_url: String,
    pub authorization_header: Option<String>,
}

/// A parsed `POST /dev/events` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRequest {
    /// The SET payload to sign (`sub_id` and `events`; `iss`, `iat`, `jti`, `aud` are filled
    /// when signing).
    pub payload: Value,
    /// The full event-type URI.
    pub event_type: String,
    /// Deliver to every enabled stream (default `true`); `false` only signs.
    pub deliver: bool,
    pub push_to: Option<PushTarget>,
}

/// The short names accepted in `event`.
pub fn event_names() -> impl Iterator<Item = &'static str> {
    EVENTS.iter().map(|(n, _, _)| *n)
}

/// Builds the event from the request body. `default_iss` names the issuer of `sub` when the
/// request gives no `iss`; `now` is the default `event_timestamp`.
pub fn parse(
    m: &Map<String, Value>,
    default_iss: Option<&str>,
    now: i64,
) -> Result<EventRequest, String> {
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {k:?}; fields are {}",
            FIELDS.join(", ")
        ));
    }
    let str_field = |k: &str| -> Result<Option<&str>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(format!("{k} must be a non-empty string")),
        }
    };
    let name = str_field("event")?.ok_or_else(|| {
        format!(
            "event is required: one of {} or an event-type URI",
            event_names().collect::<Vec<_>>().join(", ")
        )
    })?;
    let (event_type, mut body) = match EVENTS.iter().find(|(n, _, _)| *n == name) {
        Some((n, prefix, defaults)) => (
            format!("{prefix}{n}"),
            serde_json::from_str::<Value>(defaults).map_err(|e| e.to_string())?,
        ),
        None if name.starts_with("https://") || name.starts_with("urn:") => {
            (name.to_string(), json!({}))
        }
        None => {
            return Err(format!(
                "unknown event {name:?}: one of {} or an event-type URI",
                event_names().collect::<Vec<_>>().join(", ")
            ))
        }
    };
    match m.get("event_fields") {
        None | Some(Value::Null) => {}
        Some(Value::Object(extra)) => {
            for (k, v) in extra {
                body[k.as_str()] = v.clone();
            }
        }
        Some(_) => return Err("event_fields must be an object".into()),
    }
    let at = match m.get("event_timestamp") {
        None | Some(Value::Null) => now,
        Some(v) => v
            .as_i64()
            .ok_or("event_timestamp must be an integer (epoch seconds)")?,
    };
    body["event_timestamp"] = json!(at);

    let sub_id = match m.get("subject") {
        Some(Value::Object(s)) => {
            if str_field("sub")?.is_some() || str_field("sid")?.is_some() {
                return Err("give either subject or sub/sid/device/tid/email, not both".into());
            }
            Value::Object(s.clone())
        }
        Some(Value::Null) | None => subject_from_shortcuts(
            str_field("iss")?.or(default_iss),
            str_field("sub")?,
            str_field("sid")?,
            str_field("device")?,
            str_field("tid")?,
            str_field("email")?,
        )?,
        Some(_) => return Err("subject must be a subject identifier object (RFC 9493)".into()),
    };
    let deliver = match m.get("deliver") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("deliver must be true or false".into()),
    };
    let push_to = match m.get("push_to") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let url = p
                .get("endpoint_url")
                .and_then(Value::as_str)
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
                .ok_or("push_to.endpoint_url must be an http(s) URL")?;
            let auth = match p.get("authorization_header") {
                None | Some(Value::Null) => None,
                Some(Value::String(a)) => Some(a.clone()),
                Some(_) => return Err("push_to.authorization_header must be a string".into()),
            };
            Some(PushTarget {
                endpoint_url: url.to_string(),
                authorization_header: auth,
            })
        }
        Some(_) => return Err("push_to must be an object".into()),
    };
    let mut events = Map::new();
    events.insert(event_type.clone(), body);
    Ok(EventRequest {
        payload: json!({"sub_id": sub_id, "events": events}),
        event_type,
        deliver,
        push_to,
    })
}

/// The subject identifier from shortcut fields: `iss_sub` for a user alone, `email` for an
/// address alone, otherwise a `complex` subject with `user`, `session`, `device` and `tenant`.
fn subject_from_shortcuts(
    iss: Option<&str>,
    sub: Option<&str>,
    sid: Option<&str>,
    device: Option<&str>,
    tid: Option<&str>,
    mail: Option<&str>,
) -> Result<Value, String> {
    let user = match sub {
        Some(sub) => {
            let iss = iss.ok_or("sub needs iss (the issuer of the user's tokens)")?;
            Some(iss_sub(iss, sub))
        }
        None => None,
    };
    let mut members: Vec<(&str, Value)> = Vec::new();
    if let Some(u) = user {
        members.push(("user", u));
    } else if let Some(e) = mail {
        members.push(("user", email(e)));
    }
    for (name, id) in [("session", sid), ("device", device), ("tenant", tid)] {
        if let Some(id) = id {
            members.push((name, opaque(id)));
        }
    }
    match members.as_slice() {
        [] => Err("name a subject: subject, or sub (with iss), sid, device, tid or email".into()),
        [("user", id)] => Ok(id.clone()),
        _ => Ok(complex(&members)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<EventRequest, String> {
        parse(v.as_object().unwrap(), Some("https://idp"), 1000)
    }

    #[test]
    fn a_session_revocation_names_user_and_session() {
        let r = req(json!({"event": "session-revoked", "sub": "alice", "sid": "s1"})).unwrap();
        assert_eq!(
            r.payload,
            json!({
                "sub_id": {"format": "complex",
                           "user": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"},
                           "session": {"format": "opaque", "id": "s1"}},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked":
                           {"initiating_entity": "policy", "event_timestamp": 1000}}
            })
        );
        assert!(r.deliver);
        assert_eq!(r.push_to, None);
    }

    #[test]
    fn risc_events_defaults_and_overrides() {
        let r = req(
            json!({"event": "account-disabled", "sub": "bob", "iss": "https://other",
                           "event_timestamp": 5, "event_fields": {"reason": "hijacking"},
                           "deliver": false}),
        )
        .unwrap();
        assert_eq!(
            r.payload,
            json!({
                "sub_id": {"format": "iss_sub", "iss": "https://other", "sub": "bob"},
                "events": {"https://schemas.openid.net/secevent/risc/event-type/account-disabled":
                           {"reason": "hijacking", "event_timestamp": 5}}
            })
        );
        assert!(!r.deliver);
        let r = req(json!({"event": "credential-change", "email": "a@example.com"})).unwrap();
        assert_eq!(
            r.payload["sub_id"],
            json!({"format": "email", "email": "a@example.com"})
        );
    }

    #[test]
    fn every_short_name_builds() {
        for n in event_names() {
            let r = req(json!({"event": n, "sub": "u"})).unwrap();
            assert!(r.event_type.ends_with(n), "{n}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, want) in [
            (json!({}), "event is required"),
            (
                json!({"event": "nope", "sub": "u"}),
                "unknown event \"nope\"",
            ),
            (json!({"event": "session-revoked"}), "name a subject"),
            (
                json!({"event": "session-revoked", "sub": "u", "typo": 1}),
                "unknown field \"typo\"",
            ),
            (
                json!({"event": "session-revoked", "sub": 3}),
                "sub must be a non-empty string",
            ),
            (
                json!({"event": "session-revoked", "sub": "u", "push_to": {"endpoint_url": "ftp://x"}}),
                "push_to.endpoint_url must be an http(s) URL",
            ),
            (
                json!({"event": "session-revoked", "sub": "u", "event_timestamp": "now"}),
                "event_timestamp must be an integer",
            ),
        ] {
            let e = req(body.clone()).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let e = parse(
            json!({"event": "session-revoked", "sub": "u"})
                .as_object()
                .unwrap(),
            None,
            0,
        )
        .unwrap_err();
        assert_eq!(e, "sub needs iss (the issuer of the user's tokens)");
    }
}
