//! A token's payload read in one pass: its top-level members kept as raw JSON borrowed from the
//! payload, typed values read only where validation and the principal need them, and the whole
//! claims map built only when a route's claim rules or claim headers ask for it.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::token::TokenError;

/// A member validation reads whose value serde_json cannot hold.
const UNREADABLE: TokenError = TokenError::Malformed("a claim's value cannot be read");

/// A JSON string, borrowed from the payload unless an escape forced a copy.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The top-level members of a token's payload, in order, each value still raw JSON.
pub struct Members<'a> {
    list: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// The members as serde reads them (an object, nothing else).
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some(Text(name)) = m.next_key::<Text<'de>>()? {
                    list.push((name, m.next_value::<&'de RawValue>()?));
                }
                Ok(Object(list))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    /// Reads a payload: one JSON object with nothing after it, no member named twice (RFC 7519
    /// §4 lets a parser refuse duplicates; taking one of them would let two parsers disagree).
    pub fn parse(json: &'a str) -> Result<Members<'a>, TokenError> {
        // A map visitor takes an object only (unlike a struct's, which takes an array too).
        let Object(list) = serde_json::from_str(json)
            .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
        for (i, (name, _)) in list.iter().enumerate() {
            // Length and first octet first: claim names seldom share both.
            let same = |n: &Cow<str>| {
                n.len() == name.len()
                    && n.as_bytes().first() == name.as_bytes().first()
                    && n == name
            };
            if list[..i].iter().any(|(n, _)| same(n)) {
                return Err(TokenError::Malformed("a claim is named twice"));
            }
        }
        Ok(Members { list })
    }

    /// A member's raw JSON.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        // Claim names are short and many have three letters: length and first byte rule out
        // nearly every other member without a `memcmp` call.
        let (len, first) = (name.len(), name.as_bytes().first());
        self.list
            .iter()
            .find(|(n, _)| n.len() == len && n.as_bytes().first() == first && n == name)
            .map(|(_, v)| v.get())
    }

    /// Whether the member is present (whatever its value).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A member that is a string (`None`: absent or another type). A string that cannot be
    /// decoded (a lone surrogate escape) is an error: what validation reads fails closed.
    pub fn str(&self, name: &str) -> Result<Option<Cow<'a, str>>, TokenError> {
        match self.get(name) {
            Some(raw) if raw.starts_with('"') => text(raw).map(Some).ok_or(UNREADABLE),
            _ => Ok(None),
        }
    }

    /// A member that is a number (`None`: absent or another type). A number beyond `f64` is an
    /// error: what validation reads fails closed.
    pub fn number(&self, name: &str) -> Result<Option<Number>, TokenError> {
        match self.get(name) {
            Some(raw) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                // The usual integer without a second parse (`raw` is already a valid JSON number).
                match raw.parse::<i64>() {
                    Ok(i) => Ok(Some(Number::from(i))),
                    Err(_) => serde_json::from_str(raw).map(Some).map_err(|_| UNREADABLE),
                }
            }
            _ => Ok(None),
        }
    }

    /// A member that is a number, as whole seconds: an integer, a fraction truncated, an integer
    /// beyond `i64` saturated.
    pub fn int(&self, name: &str) -> Result<Option<i64>, TokenError> {
        Ok(self
            .number(name)?
            .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))))
    }

    /// A member that is a string or an array: the string, or the array's strings (others
    /// skipped). `None` for anything else or when absent.
    pub fn strings(&self, name: &str) -> Option<StrOrList<'a>> {
        let raw = self.get(name)?;
        match raw.as_bytes().first() {
            Some(b'"') => text(raw).map(StrOrList::One),
            Some(b'[') => {
                let items: Vec<&'a RawValue> = serde_json::from_str(raw).ok()?;
                Some(StrOrList::Many(
                    items.into_iter().filter_map(|v| text(v.get())).collect(),
                ))
            }
            _ => None,
        }
    }

    /// A member parsed whole (rarely needed: `cnf`), or an error when it cannot be.
    pub fn value(&self, name: &str) -> Result<Option<Value>, TokenError> {
        self.get(name)
            .map(|raw| serde_json::from_str(raw).map_err(|_| UNREADABLE))
            .transpose()
    }
}

/// A raw value that is a JSON string (`None`: another type, or an undecodable string).
pub fn text(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?;
    match inner.strip_suffix('"') {
        // Without escapes the string is its raw text (already checked for control characters
        // when the payload was read).
        Some(plain) if !plain.contains('\\') => Some(Cow::Borrowed(plain)),
        _ => serde_json::from_str::<Text>(raw).ok().map(|t| t.0),
    }
}

/// A claim given as one string or as an array of strings.
pub enum StrOrList<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl StrOrList<'_> {
    /// The items: a string's space-separated words (OAuth `scope` style), an array's strings.
    pub fn words(&self) -> Vec<String> {
        match self {
            StrOrList::One(s) => s
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect(),
            StrOrList::Many(a) => a.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Whether the string is `value`, or the array holds it.
    pub fn holds(&self, value: &str) -> bool {
        match self {
            StrOrList::One(s) => s == value,
            StrOrList::Many(a) => a.iter().any(|s| s == value),
        }
    }
}

/// The claims of a validated token: the payload as received, parsed into a map the first time
/// a claim is asked for by name (claim rules, claim headers), at most once per cached token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    json: Box<str>,
    map: OnceLock<Map<String, Value>>,
}

impl Claims {
    /// The claims of a payload [`Members::parse`] accepted.
    pub fn new(json: String) -> Claims {
        Claims {
            json: json.into_boxed_str(),
            map: OnceLock::new(),
        }
    }

    /// The claims as a map. A member whose value `serde_json` cannot hold (a number beyond
    /// `f64`, a lone surrogate escape: validation skips members it does not read) reads as
    /// absent, which claim rules refuse.
    pub fn map(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| {
            serde_json::from_str(&self.json).unwrap_or_else(|_| {
                Members::parse(&self.json)
                    .map(|m| {
                        m.list
                            .iter()
                            .filter_map(|(n, v)| {
                                Some((n.to_string(), serde_json::from_str(v.get()).ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
        })
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(map: Map<String, Value>) -> Claims {
        Claims {
            json: serde_json::to_string(&map)
                .unwrap_or_default()
                .into_boxed_str(),
            map: OnceLock::from(map),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_read_as_the_claims_map_would() {
        let json = r#" {"iss":"https://i","s\u0075b":"a\"b","exp":1.5e3,"big":18446744073709551615,
            "neg":-3,"scp":"read  write","roles":["a",7,"b"],"aud":["x","y"],"n":null,"o":{"k":1}} "#;
        let m = Members::parse(json).unwrap();
        assert_eq!(m.str("iss").unwrap().as_deref(), Some("https://i"));
        assert_eq!(m.str("sub").unwrap().as_deref(), Some("a\"b"));
        assert_eq!(m.int("exp"), Ok(Some(1500)));
        assert_eq!(m.int("big"), Ok(Some(i64::MAX)));
        assert_eq!(m.int("neg"), Ok(Some(-3)));
        assert_eq!(m.int("iss"), Ok(None));
        assert_eq!(m.str("exp"), Ok(None));
        assert_eq!(m.strings("scp").unwrap().words(), ["read", "write"]);
        assert_eq!(m.strings("roles").unwrap().words(), ["a", "b"]);
        assert!(m.strings("aud").unwrap().holds("y"));
        assert!(!m.strings("aud").unwrap().holds("z"));
        assert!(m.strings("n").is_none() && m.has("n") && !m.has("missing"));
        assert_eq!(m.value("o"), Ok(Some(serde_json::json!({"k": 1}))));
        let claims = Claims::new(json.to_string());
        assert_eq!(claims.map().get("sub"), Some(&Value::from("a\"b")));
        assert_eq!(claims.map().len(), 10);
    }

    #[test]
    fn values_serde_json_cannot_hold_are_errors_where_read_and_absent_from_the_map() {
        let json = r#"{"iss":"i","big":1e400,"lone":"\ud800","list":[1e999],"sub":"s"}"#;
        let m = Members::parse(json).unwrap();
        assert_eq!(
            (m.int("big"), m.str("lone")),
            (Err(UNREADABLE), Err(UNREADABLE))
        );
        assert_eq!(m.value("big"), Err(UNREADABLE));
        assert!(m.strings("list").is_some_and(|l| l.words().is_empty()));
        let claims = Claims::new(json.to_string());
        assert_eq!(
            claims.map().keys().collect::<Vec<_>>(),
            ["iss", "sub"],
            "the readable members only"
        );
    }

    #[test]
    fn payloads_that_are_not_one_object_with_unique_names_are_refused() {
        for (json, e) in [
            (r#"["iss"]"#, "payload is not a JSON object"),
            (r#""iss""#, "payload is not a JSON object"),
            (r#"{"iss":"a"}x"#, "payload is not a JSON object"),
            (r#"{"iss":"a""#, "payload is not a JSON object"),
            (r#"{"iss":"a","exp":01}"#, "payload is not a JSON object"),
            (
                r#"{"sub":"a","iss":"b","sub":"c"}"#,
                "a claim is named twice",
            ),
            (r#"{"sub":"a","s\u0075b":"c"}"#, "a claim is named twice"),
        ] {
            assert_eq!(
                Members::parse(json).err(),
                Some(TokenError::Malformed(e)),
                "{json}"
            );
        }
    }
}
