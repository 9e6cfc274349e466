//! Subject identifiers of SETs (RFC 9493, SSF §3) and their legacy shapes, parsed into [`Subject`]
//! and mapped onto the store's [`SubjectKey`]s (docs/protocols.md §4). Pure: no I/O, no clock.
//!
//! Tolerated shapes (docs/protocols.md §3.2): `subject_type` instead of `format`, `-` instead of
//! `_` in format names (`iss-sub`), a complex subject without `"format":"complex"` recognised by
//! its member names, and Google's `id_token_claims`. An unknown format parses to
//! [`Subject::Unknown`]: accepted, logged, no action.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::store::keys::{normalize_iss, ANY_ISSUER};
use crate::store::SubjectKey;

/// Member names of a complex subject (RFC 9493 §3.2.1 and SSF §3.2).
pub const COMPLEX_MEMBERS: &[&str] = &[
    "user",
    "device",
    "session",
    "application",
    "tenant",
    "org_unit",
    "group",
];

/// How deep aliases and complex subjects may nest before the subject is refused.
const MAX_DEPTH: usize = 4;

/// A parsed subject identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// `account`: an `acct:` URI.
    Account {
        uri: String,
    },
    Email {
        email: String,
    },
    IssSub {
        iss: String,
        sub: String,
    },
    Opaque {
        id: String,
    },
    PhoneNumber {
        phone_number: String,
    },
    Did {
        url: String,
    },
    Uri {
        uri: String,
    },
    /// Several identifiers of one subject (never nested aliases).
    Aliases {
        identifiers: Vec<Subject>,
    },
    JwtId {
        iss: String,
        jti: String,
    },
    SamlAssertionId {
        issuer: String,
        assertion_id: String,
    },
    /// SSF `ip-addresses`: the addresses the subject uses, as host networks.
    IpAddresses {
        nets: Vec<IpNet>,
    },
    /// Google RISC `id_token_claims`: like `iss_sub` (plus `email`); a missing `iss` is the SET's.
    IdTokenClaims {
        iss: Option<String>,
        sub: Option<String>,
        email: Option<String>,
    },
    Complex(Box<Complex>),
    /// A format we do not know: accepted and logged, no action.
    Unknown {
        format: String,
    },
}

/// Members of a complex subject; all describe one principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Complex {
    pub user: Option<Subject>,
    pub device: Option<Subject>,
    pub session: Option<Subject>,
    pub application: Option<Subject>,
    pub tenant: Option<Subject>,
    pub org_unit: Option<Subject>,
    pub group: Option<Subject>,
    /// Members with other names (`ip-addresses`, vendor members) that are subject identifiers.
    pub other: Vec<(String, Subject)>,
}

/// Why a subject identifier was refused (the SET is then `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("a subject identifier must be a JSON object")]
    NotAnObject,
    #[error("the subject identifier has no format")]
    NoFormat,
    #[error("subject format {format} lacks the string member {member}")]
    MissingMember {
        format: &'static str,
        member: &'static str,
    },
    #[error("aliases must be a non-empty array of identifiers")]
    BadAliases,
    #[error("aliases may not contain aliases")]
    NestedAliases,
    #[error("{0:?} is not an IP address")]
    BadIpAddress(String),
    #[error("ip-addresses must be a non-empty array of strings")]
    BadIpList,
    #[error("a complex subject needs at least one member")]
    EmptyComplex,
    #[error("the complex member {0} is not a subject identifier")]
    BadComplexMember(String),
    #[error("subject identifiers are nested too deeply")]
    TooDeep,
}

impl Subject {
    /// Parses one identifier, with the tolerances above.
    pub fn parse(v: &Value) -> Result<Subject, SubjectError> {
        parse_at(v, 0)
    }

    /// The format name as written by RFC 9493 (for logs).
    pub fn format(&self) -> &str {
        match self {
            Subject::Account { .. } => "account",
            Subject::Email { .. } => "email",
            Subject::IssSub { .. } => "iss_sub",
            Subject::Opaque { .. } => "opaque",
            Subject::PhoneNumber { .. } => "phone_number",
            Subject::Did { .. } => "did",
            Subject::Uri { .. } => "uri",
            Subject::Aliases { .. } => "aliases",
            Subject::JwtId { .. } => "jwt_id",
            Subject::SamlAssertionId { .. } => "saml_assertion_id",
            Subject::IpAddresses { .. } => "ip-addresses",
            Subject::IdTokenClaims { .. } => "id_token_claims",
            Subject::Complex(_) => "complex",
            Subject::Unknown { format } => format,
        }
    }

    /// A stable text of the identifying members, for a privacy-preserving hash in logs.
    pub fn fingerprint(&self) -> String {
        match self {
            Subject::Account { uri } | Subject::Uri { uri } => uri.clone(),
            Subject::Email { email } => email.to_lowercase(),
            Subject::IssSub { iss, sub } => format!("{}|{sub}", normalize_iss(iss)),
            Subject::Opaque { id } => id.clone(),
            Subject::PhoneNumber { phone_number } => phone_number.clone(),
            Subject::Did { url } => url.clone(),
            Subject::Aliases { identifiers } => identifiers
                .iter()
                .map(Subject::fingerprint)
                .collect::<Vec<_>>()
                .join(","),
            Subject::JwtId { iss, jti } => format!("{}|{jti}", normalize_iss(iss)),
            Subject::SamlAssertionId {
                issuer,
                assertion_id,
            } => format!("{issuer}|{assertion_id}"),
            Subject::IpAddresses { nets } => nets
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Subject::IdTokenClaims { iss, sub, email } => format!(
                "{}|{}|{}",
                iss.as_deref().unwrap_or(""),
                sub.as_deref().unwrap_or(""),
                email.as_deref().unwrap_or("")
            ),
            Subject::Complex(c) => c
                .members()
                .map(|(n, s)| format!("{n}={}", s.fingerprint()))
                .collect::<Vec<_>>()
                .join(";"),
            Subject::Unknown { format } => format!("unknown:{format}"),
        }
    }

    /// The store keys this subject names, by role (docs/protocols.md §4 mapping).
    pub fn resolve(&self, ctx: &KeyContext) -> Resolved {
        let mut out = Resolved::default();
        resolve_into(self, ctx, &mut out);
        out.dedup();
        out
    }
}

impl Complex {
    /// Present members, named.
    pub fn members(&self) -> impl Iterator<Item = (&str, &Subject)> {
        let named = [
            ("user", &self.user),
            ("device", &self.device),
            ("session", &self.session),
            ("application", &self.application),
            ("tenant", &self.tenant),
            ("org_unit", &self.org_unit),
            ("group", &self.group),
        ];
        named
            .into_iter()
            .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
            .chain(self.other.iter().map(|(n, s)| (n.as_str(), s)))
    }
}

/// Canonical format name: lower case, `-` → `_` (`iss-sub`, `ip-addresses`, `phone-number`).
fn canonical_format(f: &str) -> String {
    f.trim().to_ascii_lowercase().replace('-', "_")
}

fn looks_complex(m: &Map<String, Value>) -> bool {
    COMPLEX_MEMBERS
        .iter()
        .any(|n| m.get(*n).is_some_and(Value::is_object))
}

fn string(
    m: &Map<String, Value>,
    format: &'static str,
    member: &'static str,
) -> Result<String, SubjectError> {
    m.get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(SubjectError::MissingMember { format, member })
}

fn opt_string(m: &Map<String, Value>, member: &str) -> Option<String> {
    m.get(member)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses an IP address or a CIDR network into a network (a single address → /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, SubjectError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n);
    }
    t.parse::<IpAddr>()
        .map(|a| IpNet::from(a.to_canonical()))
        .map_err(|_| SubjectError::BadIpAddress(s.chars().take(64).collect()))
}

/// Parses a JSON array of IP strings (`ip-addresses`, the legacy CAEP `ips` claim).
pub fn parse_ip_list(v: &Value) -> Result<Vec<IpNet>, SubjectError> {
    let Some(items) = v.as_array().filter(|a| !a.is_empty()) else {
        return Err(SubjectError::BadIpList);
    };
    items
        .iter()
        .map(|i| {
            i.as_str()
                .ok_or(SubjectError::BadIpList)
                .and_then(parse_net)
        })
        .collect()
}

fn parse_at(v: &Value, depth: usize) -> Result<Subject, SubjectError> {
    if depth > MAX_DEPTH {
        return Err(SubjectError::TooDeep);
    }
    let Value::Object(m) = v else {
        return Err(SubjectError::NotAnObject);
    };
    let format = m
        .get("format")
        .or_else(|| m.get("subject_type"))
        .and_then(Value::as_str)
        .map(canonical_format);
    let format = match format {
        Some(f) => f,
        None if looks_complex(m) => "complex".to_string(),
        None => return Err(SubjectError::NoFormat),
    };
    Ok(match format.as_str() {
        "account" => Subject::Account {
            uri: string(m, "account", "uri")?,
        },
        "email" => Subject::Email {
            email: string(m, "email", "email")?,
        },
        "iss_sub" => Subject::IssSub {
            iss: string(m, "iss_sub", "iss")?,
            sub: string(m, "iss_sub", "sub")?,
        },
        "opaque" => Subject::Opaque {
            id: string(m, "opaque", "id")?,
        },
        "phone_number" => Subject::PhoneNumber {
            phone_number: string(m, "phone_number", "phone_number")?,
        },
        "did" => Subject::Did {
            url: string(m, "did", "url")?,
        },
        "uri" => Subject::Uri {
            uri: string(m, "uri", "uri")?,
        },
        "jwt_id" => Subject::JwtId {
            iss: string(m, "jwt_id", "iss")?,
            jti: string(m, "jwt_id", "jti")?,
        },
        "saml_assertion_id" => Subject::SamlAssertionId {
            issuer: string(m, "saml_assertion_id", "issuer")?,
            assertion_id: string(m, "saml_assertion_id", "assertion_id")?,
        },
        "ip_addresses" => {
            let list = m
                .get("ip-addresses")
                .or_else(|| m.get("ip_addresses"))
                .ok_or(SubjectError::BadIpList)?;
            Subject::IpAddresses {
                nets: parse_ip_list(list)?,
            }
        }
        "aliases" => {
            let Some(items) = m
                .get("identifiers")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
            else {
                return Err(SubjectError::BadAliases);
            };
            let mut identifiers = Vec::with_capacity(items.len());
            for i in items {
                let s = parse_at(i, depth + 1)?;
                if matches!(s, Subject::Aliases { .. }) {
                    return Err(SubjectError::NestedAliases);
                }
                identifiers.push(s);
            }
            Subject::Aliases { identifiers }
        }
        "id_token_claims" => {
            // Google RISC: the claims either nested under `id_token_claims` or beside `subject_type`.
            let claims = m
                .get("id_token_claims")
                .and_then(Value::as_object)
                .unwrap_or(m);
            let (iss, sub, email) = (
                opt_string(claims, "iss"),
                opt_string(claims, "sub"),
                opt_string(claims, "email"),
            );
            if sub.is_none() && email.is_none() {
                return Err(SubjectError::MissingMember {
                    format: "id_token_claims",
                    member: "sub",
                });
            }
            Subject::IdTokenClaims { iss, sub, email }
        }
        "complex" => {
            let mut c = Complex::default();
            for (name, value) in m {
                if name == "format" || name == "subject_type" {
                    continue;
                }
                let slot = match name.as_str() {
                    "user" => &mut c.user,
                    "device" => &mut c.device,
                    "session" => &mut c.session,
                    "application" => &mut c.application,
                    "tenant" => &mut c.tenant,
                    "org_unit" => &mut c.org_unit,
                    "group" => &mut c.group,
                    _ => {
                        // Vendor members: kept when they are identifiers, otherwise ignored.
                        if value.is_object() {
                            if let Ok(s) = parse_at(value, depth + 1) {
                                c.other.push((name.clone(), s));
                            }
                        }
                        continue;
                    }
                };
                *slot = Some(
                    parse_at(value, depth + 1)
                        .map_err(|_| SubjectError::BadComplexMember(name.clone()))?,
                );
            }
            if c.members().next().is_none() {
                return Err(SubjectError::EmptyComplex);
            }
            Subject::Complex(Box::new(c))
        }
        other => Subject::Unknown {
            format: other.to_string(),
        },
    })
}

/// What the mapping needs besides the subject (docs/protocols.md §4: configurable per issuer).
#[derive(Debug, Clone)]
pub struct KeyContext {
    /// The SET's `iss`: the issuer of an `id_token_claims` subject without one.
    pub set_iss: String,
    /// Issuer whose tokens opaque ids refer to (`token_issuer` of the transmitter, as the
    /// issuer URL); `None` = any issuer (`"*"`).
    pub opaque_iss: Option<String>,
    /// Map `account` (`acct:user@host`) subjects to the `email` claims.
    pub account_as_email: bool,
}

impl KeyContext {
    pub fn new(set_iss: &str) -> KeyContext {
        KeyContext {
            set_iss: set_iss.to_string(),
            opaque_iss: None,
            account_as_email: true,
        }
    }

    /// The issuer keys of opaque ids are stored under: `token_issuer`, else [`ANY_ISSUER`].
    pub fn opaque_iss(&self) -> &str {
        self.opaque_iss.as_deref().map_or(ANY_ISSUER, normalize_iss)
    }
}

/// Store keys of a subject, by the role they play in a complex subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The user (token `sub`/`oid` with issuer, or e-mail claims).
    pub user: Vec<SubjectKey>,
    /// `session` members (token `sid`).
    pub session: Vec<SubjectKey>,
    /// `device` members (the token's device claim).
    pub device: Vec<SubjectKey>,
    /// `tenant` members (token `tid`).
    pub tenant: Vec<SubjectKey>,
    /// `jwt_id` subjects (token `jti`/`uti`).
    pub token: Vec<SubjectKey>,
    /// `ip-addresses` found anywhere in the subject.
    pub ips: Vec<IpNet>,
}

impl Resolved {
    /// The keys to revoke for "the subject": the user, else the most specific other member.
    pub fn principal(&self) -> &[SubjectKey] {
        [
            &self.user,
            &self.token,
            &self.session,
            &self.device,
            &self.tenant,
        ]
        .into_iter()
        .find(|v| !v.is_empty())
        .map_or(&[], Vec::as_slice)
    }

    /// True when no key and no address was found (e.g. a phone number or unknown format).
    pub fn is_empty(&self) -> bool {
        self.principal().is_empty() && self.ips.is_empty()
    }

    fn dedup(&mut self) {
        for v in [
            &mut self.user,
            &mut self.session,
            &mut self.device,
            &mut self.tenant,
            &mut self.token,
        ] {
            let mut seen = std::collections::HashSet::new();
            v.retain(|k| seen.insert(k.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        self.ips.retain(|n| seen.insert(*n));
    }
}

/// `(issuer or none, value)` pairs of an identifier usable as a plain id (opaque id, iss_sub sub).
fn plain_ids(s: &Subject, out: &mut Vec<(Option<String>, String)>) {
    match s {
        Subject::Opaque { id } => out.push((None, id.clone())),
        Subject::IssSub { iss, sub } => out.push((Some(iss.clone()), sub.clone())),
        Subject::IdTokenClaims {
            iss,
            sub: Some(sub),
            ..
        } => out.push((iss.clone(), sub.clone())),
        Subject::Aliases { identifiers } => identifiers.iter().for_each(|i| plain_ids(i, out)),
        _ => {}
    }
}

fn collect_ips(s: &Subject, out: &mut Vec<IpNet>) {
    match s {
        Subject::IpAddresses { nets } => out.extend(nets.iter().copied()),
        Subject::Aliases { identifiers } => identifiers.iter().for_each(|i| collect_ips(i, out)),
        Subject::Complex(c) => c.members().for_each(|(_, m)| collect_ips(m, out)),
        _ => {}
    }
}

fn user_keys(s: &Subject, ctx: &KeyContext, out: &mut Vec<SubjectKey>) {
    match s {
        Subject::IssSub { iss, sub } => out.push(
            SubjectKey::Subject {
                iss: iss.clone(),
                sub: sub.clone(),
            }
            .normalized(),
        ),
        Subject::Opaque { id } => out.push(SubjectKey::Subject {
            iss: ctx.opaque_iss().to_string(),
            sub: id.clone(),
        }),
        Subject::Email { email } => out.push(
            SubjectKey::Email {
                email: email.clone(),
            }
            .normalized(),
        ),
        Subject::Account { uri } if ctx.account_as_email => {
            if let Some(addr) = uri.strip_prefix("acct:").filter(|a| a.contains('@')) {
                out.push(
                    SubjectKey::Email {
                        email: addr.to_string(),
                    }
                    .normalized(),
                );
            }
        }
        Subject::IdTokenClaims { iss, sub, email } => {
            if let Some(sub) = sub {
                let iss = iss.clone().unwrap_or_else(|| ctx.set_iss.clone());
                out.push(
                    SubjectKey::Subject {
                        iss,
                        sub: sub.clone(),
                    }
                    .normalized(),
                );
            }
            if let Some(e) = email {
                out.push(SubjectKey::Email { email: e.clone() }.normalized());
            }
        }
        Subject::Aliases { identifiers } => identifiers.iter().for_each(|i| user_keys(i, ctx, out)),
        _ => {}
    }
}

fn resolve_into(s: &Subject, ctx: &KeyContext, out: &mut Resolved) {
    match s {
        Subject::JwtId { iss, jti } => out.token.push(
            SubjectKey::Token {
                iss: iss.clone(),
                jti: jti.clone(),
            }
            .normalized(),
        ),
        Subject::Aliases { identifiers } => {
            identifiers.iter().for_each(|i| resolve_into(i, ctx, out))
        }
        Subject::IpAddresses { nets } => out.ips.extend(nets.iter().copied()),
        Subject::Complex(c) => {
            if let Some(u) = &c.user {
                resolve_into(u, ctx, out);
            }
            let mut ids = Vec::new();
            if let Some(sess) = &c.session {
                plain_ids(sess, &mut ids);
                for (iss, sid) in ids.drain(..) {
                    let iss = iss.map_or_else(
                        || ctx.opaque_iss().to_string(),
                        |i| normalize_iss(&i).to_string(),
                    );
                    out.session.push(SubjectKey::Session { iss, sid });
                }
            }
            if let Some(dev) = &c.device {
                plain_ids(dev, &mut ids);
                out.device
                    .extend(ids.drain(..).map(|(_, id)| SubjectKey::Device { id }));
            }
            if let Some(t) = &c.tenant {
                plain_ids(t, &mut ids);
                out.tenant
                    .extend(ids.drain(..).map(|(_, tid)| SubjectKey::Tenant { tid }));
            }
            collect_ips(s, &mut out.ips);
        }
        other => user_keys(other, ctx, &mut out.user),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> KeyContext {
        KeyContext::new("https://idp.example.com/")
    }

    fn subj(iss: &str, sub: &str) -> SubjectKey {
        SubjectKey::Subject {
            iss: iss.into(),
            sub: sub.into(),
        }
    }

    #[test]
    fn every_rfc9493_format_parses() {
        let cases = [
            (
                json!({"format":"account","uri":"acct:example.user@service.example.com"}),
                "account",
            ),
            (
                json!({"format":"email","email":"user@example.com"}),
                "email",
            ),
            (
                json!({"format":"iss_sub","iss":"https://issuer.example.com/","sub":"145234573"}),
                "iss_sub",
            ),
            (
                json!({"format":"opaque","id":"11112222333344445555"}),
                "opaque",
            ),
            (
                json!({"format":"phone_number","phone_number":"+12065550100"}),
                "phone_number",
            ),
            (json!({"format":"did","url":"did:example:123456"}), "did"),
            (
                json!({"format":"uri","uri":"https://user.example.com/"}),
                "uri",
            ),
            (
                json!({"format":"jwt_id","iss":"https://issuer.example.com/","jti":"B70BA622"}),
                "jwt_id",
            ),
            (
                json!({"format":"saml_assertion_id","issuer":"https://idp.example.com/","assertion_id":"_8e8dc5f69a98cc4c1ff3427e5ce34606fd672f91e6"}),
                "saml_assertion_id",
            ),
            (
                json!({"format":"ip-addresses","ip-addresses":["10.29.37.75","2001:db8::1"]}),
                "ip-addresses",
            ),
            (
                json!({"format":"aliases","identifiers":[{"format":"email","email":"a@b.c"},{"format":"phone_number","phone_number":"+1"}]}),
                "aliases",
            ),
            (
                json!({"format":"complex","user":{"format":"email","email":"a@b.c"}}),
                "complex",
            ),
        ];
        for (v, f) in cases {
            let s = Subject::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(s.format(), f, "{v}");
        }
    }

    #[test]
    fn legacy_shapes_are_tolerated() {
        let s = Subject::parse(&json!({"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"})).unwrap();
        assert_eq!(
            s,
            Subject::IssSub {
                iss: "https://idp.example.com/".into(),
                sub: "7375626A656374".into()
            }
        );
        let s = Subject::parse(&json!({"format":"ISS_SUB","iss":"i","sub":"s"})).unwrap();
        assert_eq!(s.format(), "iss_sub");
        // Complex without `format`.
        let s = Subject::parse(
            &json!({"user":{"format":"opaque","id":"u1"},"device":{"format":"opaque","id":"d1"}}),
        )
        .unwrap();
        let Subject::Complex(c) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(c.user, Some(Subject::Opaque { id: "u1".into() }));
        assert_eq!(c.device, Some(Subject::Opaque { id: "d1".into() }));
        // Google id_token_claims, nested or flat.
        let g = Subject::parse(&json!({"subject_type":"id_token_claims","id_token_claims":{"iss":"https://accounts.google.com/","sub":"1234","email":"A@Gmail.com"}})).unwrap();
        let r = g.resolve(&ctx());
        assert_eq!(
            r.user,
            vec![
                subj("https://accounts.google.com", "1234"),
                SubjectKey::Email {
                    email: "a@gmail.com".into()
                }
            ]
        );
        let g = Subject::parse(&json!({"subject_type":"id_token_claims","sub":"1234"})).unwrap();
        assert_eq!(
            g.resolve(&ctx()).user,
            vec![subj("https://idp.example.com", "1234")]
        );
        // Unknown formats are accepted without keys.
        let u = Subject::parse(&json!({"format":"oauth_token","token":"x"})).unwrap();
        assert_eq!(
            u,
            Subject::Unknown {
                format: "oauth_token".into()
            }
        );
        assert!(u.resolve(&ctx()).is_empty());
    }

    #[test]
    fn malformed_identifiers_are_errors() {
        assert_eq!(Subject::parse(&json!("x")), Err(SubjectError::NotAnObject));
        assert_eq!(
            Subject::parse(&json!({"id":"x"})),
            Err(SubjectError::NoFormat)
        );
        assert_eq!(
            Subject::parse(&json!({"format":"iss_sub","iss":"i"})),
            Err(SubjectError::MissingMember {
                format: "iss_sub",
                member: "sub"
            })
        );
        assert_eq!(
            Subject::parse(&json!({"format":"email","email":7})),
            Err(SubjectError::MissingMember {
                format: "email",
                member: "email"
            })
        );
        assert_eq!(
            Subject::parse(
                &json!({"format":"aliases","identifiers":[{"format":"aliases","identifiers":[{"format":"opaque","id":"x"}]}]})
            ),
            Err(SubjectError::NestedAliases)
        );
        assert_eq!(
            Subject::parse(&json!({"format":"aliases","identifiers":[]})),
            Err(SubjectError::BadAliases)
        );
        assert_eq!(
            Subject::parse(&json!({"format":"ip-addresses","ip-addresses":["nope"]})),
            Err(SubjectError::BadIpAddress("nope".into()))
        );
        assert_eq!(
            Subject::parse(&json!({"format":"complex"})),
            Err(SubjectError::EmptyComplex)
        );
        assert_eq!(
            Subject::parse(&json!({"format":"complex","user":{"format":"email"}})),
            Err(SubjectError::BadComplexMember("user".into()))
        );
        let mut deep = json!({"format":"opaque","id":"x"});
        for _ in 0..10 {
            deep = json!({"format":"complex","user":deep});
        }
        assert!(Subject::parse(&deep).is_err());
    }

    #[test]
    fn complex_maps_members_to_their_keys() {
        let v = json!({"format":"complex",
            "session":{"format":"opaque","id":"dMTlD|1600802906337.16|16008.16"},
            "user":{"format":"iss_sub","iss":"https://idp.example.com/123456789/","sub":"99beb27c-c1c2-4955-882a-e0dc4996fcbc"},
            "tenant":{"format":"opaque","id":"123456789"},
            "device":{"format":"iss_sub","iss":"https://idp.example.com/","sub":"dev-1"},
            "ip-addresses":{"format":"ip-addresses","ip-addresses":["192.0.2.1"]}});
        let r = Subject::parse(&v).unwrap().resolve(&ctx());
        assert_eq!(
            r.user,
            vec![subj(
                "https://idp.example.com/123456789",
                "99beb27c-c1c2-4955-882a-e0dc4996fcbc"
            )]
        );
        assert_eq!(
            r.session,
            vec![SubjectKey::Session {
                iss: "*".into(),
                sid: "dMTlD|1600802906337.16|16008.16".into()
            }]
        );
        assert_eq!(
            r.tenant,
            vec![SubjectKey::Tenant {
                tid: "123456789".into()
            }]
        );
        assert_eq!(r.device, vec![SubjectKey::Device { id: "dev-1".into() }]);
        assert_eq!(r.ips, vec!["192.0.2.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(r.principal(), r.user.as_slice());
        // Without a user, the most specific member is the principal.
        let r = Subject::parse(
            &json!({"tenant":{"format":"opaque","id":"t"},"session":{"format":"opaque","id":"s"}}),
        )
        .unwrap()
        .resolve(&ctx());
        assert_eq!(
            r.principal(),
            &[SubjectKey::Session {
                iss: "*".into(),
                sid: "s".into()
            }]
        );
    }

    #[test]
    fn simple_formats_map_to_token_claims() {
        let c = ctx();
        let r = |v: Value| Subject::parse(&v).unwrap().resolve(&c);
        assert_eq!(
            r(json!({"format":"opaque","id":"abc"})).user,
            vec![subj("*", "abc")]
        );
        let with_issuer = KeyContext {
            opaque_iss: Some("https://login.example/t/".into()),
            ..ctx()
        };
        assert_eq!(
            Subject::parse(&json!({"format":"opaque","id":"abc"}))
                .unwrap()
                .resolve(&with_issuer)
                .user,
            vec![subj("https://login.example/t", "abc")]
        );
        assert_eq!(
            r(json!({"format":"email","email":"Jane.Smith@Example.com"})).user,
            vec![SubjectKey::Email {
                email: "jane.smith@example.com".into()
            }]
        );
        assert_eq!(
            r(json!({"format":"account","uri":"acct:Jane@example.com"})).user,
            vec![SubjectKey::Email {
                email: "jane@example.com".into()
            }]
        );
        assert_eq!(
            r(json!({"format":"jwt_id","iss":"https://idp.example.com/","jti":"B70BA622"})).token,
            vec![SubjectKey::Token {
                iss: "https://idp.example.com".into(),
                jti: "B70BA622".into()
            }]
        );
        let a = r(
            json!({"format":"aliases","identifiers":[{"format":"email","email":"a@b.c"},{"format":"iss_sub","iss":"https://i/","sub":"s"},{"format":"email","email":"A@b.c"}]}),
        );
        assert_eq!(
            a.user,
            vec![
                SubjectKey::Email {
                    email: "a@b.c".into()
                },
                subj("https://i", "s")
            ]
        );
        assert!(r(json!({"format":"phone_number","phone_number":"+12065550100"})).is_empty());
        let ips =
            r(json!({"format":"ip-addresses","ip-addresses":["10.0.0.0/8","::ffff:192.0.2.7"]}));
        assert_eq!(
            ips.ips,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert!(ips.principal().is_empty());
    }
}
