//! The one `WWW-Authenticate` parser of the development tooling (the demo's checks and the fuzz
//! properties): RFC 9110 §11.2 challenges, read strictly (what the proxy must send,
//! docs/protocols.md §2.1) or tolerantly (what a client meets from identity providers,
//! docs/protocols.md §7).
//!
//! Grammar (RFC 9110 §11.2, §11.6.1): a header is a comma-separated list of challenges,
//! `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`,
//! `auth-param = token BWS "=" BWS ( token / quoted-string )`; a quoted-string may hold
//! quoted-pairs (`\"`, `\\`); each parameter name occurs once per challenge and is compared
//! case-insensitively.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;

/// How strictly a header is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// RFC 9110 §11 as the proxy must emit it: the only whitespace is spaces (a space after the
    /// scheme, none around `=`), no empty list elements, a value is a token or a quoted-string of
    /// printable ASCII or tab (a quoted-pair may escape any character), each parameter name once
    /// per challenge. The fuzz properties read with this.
    Strict,
    /// What a client meets in the wild (docs/protocols.md §7, Microsoft Graph): spaces or tabs
    /// around the header, `,` and `=`; empty list elements; an unquoted value that is not a token
    /// (Graph's `authorization_uri=https://…`) runs to the next comma; any character in a
    /// quoted-string; a repeated parameter name is kept (lookups see the first).
    Tolerant,
}

/// One challenge: its scheme, and either a token68 or parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    /// The `token68` form (`Negotiate YIIB…==`).
    pub token68: Option<String>,
    /// Parameters in order: names as written, values unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first value of a parameter (names are case-insensitive, RFC 9110 §11.2).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Parameter names in order, as written.
    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The canonical form of docs/protocols.md §2.1: every value quoted, `, ` between parameters.
    /// Values are not escaped: one that would need it (`"` or `\`) is not canonical.
    pub fn canonical(&self) -> String {
        if let Some(t) = &self.token68 {
            return format!("{} {t}", self.scheme);
        }
        let params = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ");
        if params.is_empty() {
            self.scheme.clone()
        } else {
            format!("{} {params}", self.scheme)
        }
    }
}

/// Why a header is not a well-formed list of challenges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("empty header: no challenge")]
    Empty,
    #[error("no auth-scheme at character {0}")]
    NoScheme(usize),
    #[error("auth-scheme {0} not followed by a space")]
    SchemeNotFollowedBySpace(String),
    #[error("nothing after the space that follows auth-scheme {0}")]
    NothingAfterScheme(String),
    #[error("parameter {0} follows auth-scheme {1} without a space")]
    ParamWithoutSpace(String, String),
    #[error("empty parameter name at character {0}")]
    EmptyName(usize),
    #[error("parameter {0} without '='")]
    NoEquals(String),
    #[error("parameter {0} without a value")]
    NoValue(String),
    #[error("unterminated quoted-string in parameter {0}")]
    Unterminated(String),
    #[error("{ch:?} in the quoted-string of parameter {name}")]
    BadQuotedChar { name: String, ch: char },
    #[error("{0:?} after a parameter or token68 (expected ',' or the end)")]
    Unexpected(char),
    #[error("parameter {0} twice in one challenge")]
    Repeated(String),
    #[error("empty list element (two commas, or a comma at the end)")]
    EmptyElement,
    #[error("parameter {0} after a token68")]
    ParamAfterToken68(String),
    #[error("{0} challenges where one was expected")]
    NotOne(usize),
}

/// Parses a `WWW-Authenticate` value into its challenges, in order.
pub fn parse(header: &str, syntax: Syntax) -> Result<Vec<Challenge>, ChallengeError> {
    let mut r = Reader {
        c: header.chars().collect(),
        i: 0,
        syntax,
    };
    if syntax == Syntax::Tolerant {
        r.skip_ws();
    }
    if r.at_end() {
        return Err(ChallengeError::Empty);
    }
    let mut out = Vec::new();
    loop {
        out.push(r.challenge()?);
        if r.at_end() {
            return Ok(out);
        }
    }
}

/// Parses a value that must hold exactly one challenge.
pub fn parse_one(header: &str, syntax: Syntax) -> Result<Challenge, ChallengeError> {
    let mut all = parse(header, syntax)?;
    match all.pop() {
        Some(c) if all.is_empty() => Ok(c),
        _ => Err(ChallengeError::NotOne(all.len() + 1)),
    }
}

/// Decodes a challenge's `claims` (docs/protocols.md §2.4: standard base64, padding optional)
/// into JSON; [`Syntax::Tolerant`] also reads base64url.
pub fn decode_claims(b64: &str, syntax: Syntax) -> Option<Value> {
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .or_else(|e| match syntax {
            Syntax::Strict => Err(e),
            Syntax::Tolerant => URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')),
        })
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// RFC 9110 §11.2 `token68` characters (before the trailing `=`s).
fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

/// What follows a list comma.
enum Next {
    End,
    Param,
    Challenge,
}

struct Reader {
    c: Vec<char>,
    i: usize,
    syntax: Syntax,
}

impl Reader {
    fn strict(&self) -> bool {
        self.syntax == Syntax::Strict
    }

    fn at_end(&self) -> bool {
        self.i >= self.c.len()
    }

    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn is_ws(&self, c: char) -> bool {
        c == ' ' || (c == '\t' && !self.strict())
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| self.is_ws(c)) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    /// One challenge; stops at the end or at the start of the next challenge.
    fn challenge(&mut self) -> Result<Challenge, ChallengeError> {
        let scheme = self.token();
        if scheme.is_empty() {
            return Err(ChallengeError::NoScheme(self.i));
        }
        let mut c = Challenge {
            scheme,
            token68: None,
            params: Vec::new(),
        };
        match self.peek() {
            None => return Ok(c),
            Some(',') => {
                self.i += 1;
                match self.after_comma()? {
                    Next::End | Next::Challenge => return Ok(c),
                    // `Scheme,name=value`: no space, so no parameters of this scheme.
                    Next::Param if self.strict() => {
                        let name = self.token();
                        return Err(ChallengeError::ParamWithoutSpace(name, c.scheme));
                    }
                    Next::Param => {}
                }
            }
            Some(ch) if self.is_ws(ch) => {
                self.skip_ws();
                if self.at_end() {
                    return if self.strict() {
                        Err(ChallengeError::NothingAfterScheme(c.scheme))
                    } else {
                        Ok(c)
                    };
                }
                if self.peek() == Some(',') && !self.strict() {
                    self.i += 1;
                    match self.after_comma()? {
                        Next::End | Next::Challenge => return Ok(c),
                        Next::Param => {}
                    }
                } else if let Some(t) = self.token68() {
                    c.token68 = Some(t);
                    return self.end_of_token68(c);
                }
            }
            Some(_) => return Err(ChallengeError::SchemeNotFollowedBySpace(c.scheme)),
        }
        loop {
            let (name, value) = self.param()?;
            if self.strict() && c.get(&name).is_some() {
                return Err(ChallengeError::Repeated(name));
            }
            c.params.push((name, value));
            match self.after_element()? {
                Next::End | Next::Challenge => return Ok(c),
                Next::Param => {}
            }
        }
    }

    /// After a token68: the end, or a comma and the next challenge.
    fn end_of_token68(&mut self, c: Challenge) -> Result<Challenge, ChallengeError> {
        match self.after_element()? {
            Next::End | Next::Challenge => Ok(c),
            Next::Param => Err(ChallengeError::ParamAfterToken68(self.token())),
        }
    }

    /// After a parameter or a token68: the end, or a comma and what follows it.
    fn after_element(&mut self) -> Result<Next, ChallengeError> {
        self.skip_ws();
        match self.bump() {
            None => Ok(Next::End),
            Some(',') => self.after_comma(),
            Some(ch) => Err(ChallengeError::Unexpected(ch)),
        }
    }

    /// After a list comma: skips whitespace (and, tolerant, empty elements) and says what comes.
    fn after_comma(&mut self) -> Result<Next, ChallengeError> {
        loop {
            self.skip_ws();
            match self.peek() {
                None if self.strict() => return Err(ChallengeError::EmptyElement),
                None => return Ok(Next::End),
                Some(',') if self.strict() => return Err(ChallengeError::EmptyElement),
                Some(',') => self.i += 1,
                Some(_) => {
                    return Ok(if self.param_ahead() {
                        Next::Param
                    } else {
                        Next::Challenge
                    })
                }
            }
        }
    }

    /// Whether a parameter (`token [BWS] =`) starts here, rather than a challenge.
    fn param_ahead(&self) -> bool {
        let mut j = self.i;
        while self.c.get(j).is_some_and(|c| is_tchar(*c)) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while self.c.get(j).is_some_and(|c| self.is_ws(*c)) && !self.strict() {
            j += 1;
        }
        self.c.get(j) == Some(&'=')
    }

    /// A token68 followed by the end or a comma; the position stays put when there is none.
    fn token68(&mut self) -> Option<String> {
        let start = self.i;
        let mut j = start;
        while self.c.get(j).is_some_and(|c| is_token68_char(*c)) {
            j += 1;
        }
        if j == start {
            return None;
        }
        while self.c.get(j) == Some(&'=') {
            j += 1;
        }
        let mut k = j;
        while self.c.get(k).is_some_and(|c| self.is_ws(*c)) {
            k += 1;
        }
        if k < self.c.len() && self.c[k] != ',' {
            return None;
        }
        self.i = j;
        Some(self.c[start..j].iter().collect())
    }

    fn param(&mut self) -> Result<(String, String), ChallengeError> {
        let name = self.token();
        if name.is_empty() {
            return Err(ChallengeError::EmptyName(self.i));
        }
        if !self.strict() {
            self.skip_ws();
        }
        if self.bump() != Some('=') {
            return Err(ChallengeError::NoEquals(name));
        }
        if !self.strict() {
            self.skip_ws();
        }
        if self.peek() == Some('"') {
            self.i += 1;
            let value = self.quoted(&name)?;
            return Ok((name, value));
        }
        if self.strict() {
            let value = self.token();
            if value.is_empty() {
                return Err(ChallengeError::NoValue(name));
            }
            return Ok((name, value));
        }
        // Tolerant: an unquoted value runs to the next comma (Graph's unquoted URLs).
        let start = self.i;
        while self.peek().is_some_and(|c| c != ',') {
            self.i += 1;
        }
        let value: String = self.c[start..self.i].iter().collect();
        Ok((name, value.trim_matches([' ', '\t']).to_string()))
    }

    /// The rest of a quoted-string (the opening `"` is read), unescaped.
    fn quoted(&mut self, name: &str) -> Result<String, ChallengeError> {
        let printable = |c: char| c == '\t' || (' '..='~').contains(&c);
        let mut value = String::new();
        loop {
            let ch = match self.bump() {
                None => return Err(ChallengeError::Unterminated(name.to_string())),
                Some('"') => return Ok(value),
                // A quoted-pair: any character after the backslash is taken as is.
                Some('\\') => {
                    let ch = self
                        .bump()
                        .ok_or_else(|| ChallengeError::Unterminated(name.to_string()))?;
                    value.push(ch);
                    continue;
                }
                Some(ch) => ch,
            };
            if self.strict() && !printable(ch) {
                return Err(ChallengeError::BadQuotedChar {
                    name: name.to_string(),
                    ch,
                });
            }
            value.push(ch);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn challenge_parser_and_canonical_form() {
        let raw = r#"Bearer realm="", authorization_uri="http://127.0.0.1:1/authorize", error="insufficient_claims", claims="eyJ=""#;
        let c = parse_one(raw, Syntax::Tolerant).unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.names(), ["realm", "authorization_uri", "error", "claims"]);
        assert_eq!(c.get("claims"), Some("eyJ="));
        assert_eq!(c.canonical(), raw);
        // Unquoted values parse but are not canonical.
        let c = parse_one("Bearer error=invalid_token,realm=\"x\"", Syntax::Tolerant).unwrap();
        assert_eq!(c.get("error"), Some("invalid_token"));
        assert_ne!(c.canonical(), "Bearer error=invalid_token,realm=\"x\"");
        assert!(parse_one("Bearer realm=\"open", Syntax::Tolerant).is_err());
    }

    #[test]
    fn strict_reads_what_the_proxy_sends() {
        let c = parse_one(
            r#"Bearer realm="api", error="invalid_token", error_description="a \"b\" \\ c""#,
            Syntax::Strict,
        )
        .unwrap();
        assert_eq!(c.get("ERROR"), Some("invalid_token"));
        assert_eq!(c.get("error_description"), Some(r#"a "b" \ c"#));
        assert_eq!(parse_one("Bearer", Syntax::Strict).unwrap().params, []);
        assert_eq!(
            parse_one("Bearer error=invalid_token ,  max_age=300", Syntax::Strict)
                .unwrap()
                .get("max_age"),
            Some("300")
        );
    }

    #[test]
    fn strict_refuses_what_tolerant_reads() {
        for (h, e) in [
            (" Bearer realm=\"x\"", ChallengeError::NoScheme(0)),
            (
                "Bearer\trealm=\"x\"",
                ChallengeError::SchemeNotFollowedBySpace("Bearer".into()),
            ),
            (
                "Bearer ",
                ChallengeError::NothingAfterScheme("Bearer".into()),
            ),
            (
                "Bearer realm = \"x\"",
                ChallengeError::NoEquals("realm".into()),
            ),
            ("Bearer realm=\"x\",", ChallengeError::EmptyElement),
            (
                "Bearer realm=\"x\",, error=\"y\"",
                ChallengeError::EmptyElement,
            ),
            (
                "Bearer authorization_uri=https://login.example/authorize, error=\"e\"",
                ChallengeError::Unexpected(':'),
            ),
            (
                "Bearer realm=\"x\", REALM=\"y\"",
                ChallengeError::Repeated("REALM".into()),
            ),
            (
                "Bearer realm=\"caf\u{e9}\"",
                ChallengeError::BadQuotedChar {
                    name: "realm".into(),
                    ch: '\u{e9}',
                },
            ),
        ] {
            assert_eq!(parse_one(h, Syntax::Strict), Err(e), "{h}");
            assert!(parse(h, Syntax::Tolerant).is_ok(), "{h}");
        }
        // `realm=` with nothing after it is a token68, not a parameter without a value.
        assert_eq!(
            parse_one("Bearer realm=", Syntax::Strict)
                .unwrap()
                .token68
                .as_deref(),
            Some("realm=")
        );
        for h in [
            "",
            "Bearer realm=\"x\" error=\"y\"",
            "Bearer realm=\"x",
            "Bearer \"x\"",
        ] {
            assert!(parse(h, Syntax::Strict).is_err(), "{h}");
            assert!(parse(h, Syntax::Tolerant).is_err(), "{h}");
        }
    }

    #[test]
    fn several_challenges_and_token68() {
        // docs/protocols.md §7: Graph puts a PoP and a Bearer challenge in one header, the
        // authorization_uri unquoted.
        let h = "PoP realm=\"\", authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize, nonce=\"n1\", \
                 Bearer realm=\"\", authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize, errorDescription=\"x\"";
        let all = parse(h, Syntax::Tolerant).unwrap();
        assert_eq!(
            all.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["PoP", "Bearer"]
        );
        assert_eq!(
            all[1].get("authorization_uri"),
            Some("https://login.microsoftonline.com/common/oauth2/authorize")
        );
        assert_eq!(all[0].get("nonce"), Some("n1"));
        assert_eq!(
            parse_one(h, Syntax::Tolerant),
            Err(ChallengeError::NotOne(2))
        );

        let all = parse(
            "Negotiate YIIBdz09==, Basic realm=\"r\", Bearer",
            Syntax::Strict,
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].token68.as_deref(), Some("YIIBdz09=="));
        assert_eq!(all[0].canonical(), "Negotiate YIIBdz09==");
        assert_eq!(all[1].get("realm"), Some("r"));
        assert_eq!(all[2].scheme, "Bearer");
        assert_eq!(
            parse("Negotiate abc=, realm=\"r\"", Syntax::Strict),
            Err(ChallengeError::ParamAfterToken68("realm".into()))
        );
    }

    #[test]
    fn claims_decode_by_syntax() {
        let want = json!({"access_token":{"acrs":{"essential":true,"value":"c1"}}});
        let padded = "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19";
        for s in [Syntax::Strict, Syntax::Tolerant] {
            assert_eq!(decode_claims(padded, s), Some(want.clone()));
        }
        // Characters where base64url differs from base64 (`-`, `_`).
        let url_safe = URL_SAFE_NO_PAD.encode(r#"{"a":"??>"}"#);
        assert!(url_safe.contains('-') || url_safe.contains('_'));
        assert_eq!(decode_claims(&url_safe, Syntax::Strict), None);
        assert_eq!(
            decode_claims(&url_safe, Syntax::Tolerant),
            Some(json!({"a": "??>"}))
        );
    }
}
