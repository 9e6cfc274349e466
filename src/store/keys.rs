//! What a table entry is about (subject, session, token, tenant, device, e-mail) and its compact map key.

use serde::{Deserialize, Serialize};

/// Issuer wildcard: the entry applies to tokens of any issuer (opaque subject ids carry none).
pub const ANY_ISSUER: &str = "*";

/// The thing a revocation, block or binding applies to. Issuers are stored without one trailing
/// slash (docs/protocols.md §3.2), e-mail addresses in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubjectKey {
    /// Token `sub` (or Entra `oid`) of an issuer.
    Subject { iss: String, sub: String },
    /// Token `sid`.
    Session { iss: String, sid: String },
    /// Token `jti` (Entra `uti`).
    Token { iss: String, jti: String },
    /// Token `tid`.
    Tenant { tid: String },
    /// Token device claim (Entra `deviceid`).
    Device { id: String },
    /// Token `email`, `upn` or `preferred_username`.
    Email { email: String },
}

/// Separates kind, issuer and value in an encoded key.
pub const SEP: char = '\u{1f}';

/// The issuer as table keys and SET marks store it: without trailing slashes. All of them, so
/// that normalising twice changes nothing (`https:///` is `https:`, not `https://` then
/// `https:/`). Whether two issuers are the same one is [`same_issuer`], which is stricter.
pub fn normalize_iss(iss: &str) -> &str {
    iss.trim_end_matches('/')
}

/// Whether two issuer identifiers name the same issuer: equal after dropping one trailing slash
/// each (`https://idp/` and `https://idp`), and no looser (`https://idp//` is another issuer).
pub fn same_issuer(a: &str, b: &str) -> bool {
    fn one(s: &str) -> &str {
        s.strip_suffix('/').unwrap_or(s)
    }
    one(a) == one(b)
}

/// Writes the map key of (kind, iss, value) into `buf`, replacing its contents.
pub fn encode_into(buf: &mut String, kind: char, iss: &str, value: &str) {
    buf.clear();
    buf.push(kind);
    buf.push(SEP);
    buf.push_str(normalize_iss(iss));
    buf.push(SEP);
    buf.push_str(value);
}

pub const KIND_SUBJECT: char = 'u';
pub const KIND_SESSION: char = 's';
pub const KIND_TOKEN: char = 't';
pub const KIND_TENANT: char = 'n';
pub const KIND_DEVICE: char = 'd';
pub const KIND_EMAIL: char = 'e';

impl SubjectKey {
    /// Builds a key, normalising issuer and e-mail.
    pub fn normalized(self) -> SubjectKey {
        match self {
            SubjectKey::Subject { iss, sub } => SubjectKey::Subject {
                iss: normalize_iss(&iss).to_string(),
                sub,
            },
            SubjectKey::Session { iss, sid } => SubjectKey::Session {
                iss: normalize_iss(&iss).to_string(),
                sid,
            },
            SubjectKey::Token { iss, jti } => SubjectKey::Token {
                iss: normalize_iss(&iss).to_string(),
                jti,
            },
            SubjectKey::Email { email } => SubjectKey::Email {
                email: email.to_lowercase(),
            },
            k => k,
        }
    }

    /// The compact map key.
    pub fn encode(&self) -> Box<str> {
        let mut buf = String::new();
        match self {
            SubjectKey::Subject { iss, sub } => encode_into(&mut buf, KIND_SUBJECT, iss, sub),
            SubjectKey::Session { iss, sid } => encode_into(&mut buf, KIND_SESSION, iss, sid),
            SubjectKey::Token { iss, jti } => encode_into(&mut buf, KIND_TOKEN, iss, jti),
            SubjectKey::Tenant { tid } => encode_into(&mut buf, KIND_TENANT, "", tid),
            SubjectKey::Device { id } => encode_into(&mut buf, KIND_DEVICE, "", id),
            SubjectKey::Email { email } => {
                encode_into(&mut buf, KIND_EMAIL, "", &email.to_lowercase())
            }
        }
        buf.into_boxed_str()
    }

    /// Inverse of [`SubjectKey::encode`].
    pub fn decode(key: &str) -> Option<SubjectKey> {
        let mut parts = key.splitn(3, SEP);
        let kind = parts.next()?;
        let iss = parts.next()?.to_string();
        let value = parts.next()?.to_string();
        Some(match kind {
            "u" => SubjectKey::Subject { iss, sub: value },
            "s" => SubjectKey::Session { iss, sid: value },
            "t" => SubjectKey::Token { iss, jti: value },
            "n" => SubjectKey::Tenant { tid: value },
            "d" => SubjectKey::Device { id: value },
            "e" => SubjectKey::Email { email: value },
            _ => return None,
        })
    }

    /// Short label for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            SubjectKey::Subject { .. } => "subject",
            SubjectKey::Session { .. } => "session",
            SubjectKey::Token { .. } => "token",
            SubjectKey::Tenant { .. } => "tenant",
            SubjectKey::Device { .. } => "device",
            SubjectKey::Email { .. } => "email",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_issuers_are_idempotent_and_sameness_tolerates_one_slash() {
        for iss in [
            "https://idp",
            "https://idp/",
            "https://idp//",
            "https:///",
            "/",
        ] {
            let once = normalize_iss(iss);
            assert_eq!(normalize_iss(once), once, "{iss}");
        }
        assert!(same_issuer("https://idp/", "https://idp"));
        assert!(same_issuer("https://idp", "https://idp"));
        assert!(!same_issuer("https://idp//", "https://idp"));
        assert!(!same_issuer("https://idp", "https://idp2"));
    }

    #[test]
    fn encode_round_trips_and_normalises() {
        let k = SubjectKey::Subject {
            iss: "https://idp.example.com/".into(),
            sub: "a\u{1f}b".into(),
        };
        let enc = k.encode();
        assert_eq!(&*enc, "u\u{1f}https://idp.example.com\u{1f}a\u{1f}b");
        assert_eq!(
            SubjectKey::decode(&enc),
            Some(SubjectKey::Subject {
                iss: "https://idp.example.com".into(),
                sub: "a\u{1f}b".into()
            })
        );
        let e = SubjectKey::Email {
            email: "Jane@Example.COM".into(),
        };
        assert_eq!(
            SubjectKey::decode(&e.encode()),
            Some(SubjectKey::Email {
                email: "jane@example.com".into()
            })
        );
        assert_eq!(SubjectKey::decode("x"), None);
    }
}
