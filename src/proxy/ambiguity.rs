//! Requests whose host or framing two parsers could read differently (request smuggling): found
//! before routing and refused, never forwarded.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, Version};

/// What the one pass of [`ambiguity`] found, so that nothing after it looks these up again.
#[derive(Debug)]
pub struct Framing<'a> {
    /// The request's host as the client named it (`headers::authority`).
    pub host: Option<&'a str>,
    /// The one `Host` line, if any.
    pub host_line: Option<&'a HeaderValue>,
    /// The one `Content-Length` line, if any.
    pub content_length: Option<&'a HeaderValue>,
    /// A `Transfer-Encoding` line is present ([`unsupported_coding`] reads it).
    pub transfer_encoding: bool,
}

/// Requests whose target host or body framing two parsers could read differently are refused,
/// never forwarded (RFC 9112 §3.2 and §6.3, RFC 9113 §8.3.1). hyper already refuses
/// conflicting `Content-Length` values, obsolete line folding and bad header syntax; this adds the
/// rules it leaves to the application.
pub fn ambiguity<B>(req: &Request<B>) -> Result<Framing<'_>, &'static str> {
    // Userinfo in an absolute-form target or an HTTP/2 `:authority` (RFC 9110 §4.2.4: a sender
    // must not generate it, a recipient should treat it as an error; RFC 9113 §8.3.1: it must
    // not be there): `u:p@a.test` names no route's host and would go upstream as the host.
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Err("userinfo in the request target");
    }
    // One pass over the header lines instead of a hashed lookup per name.
    let (mut host, mut hosts, mut te, mut cl, mut cls) = (None, 0u32, false, None, 0u32);
    for (name, value) in req.headers() {
        if name == HOST {
            host.get_or_insert(value);
            hosts += 1;
        } else if name == TRANSFER_ENCODING {
            te = true;
        } else if name == CONTENT_LENGTH {
            cl.get_or_insert(value);
            cls += 1;
        }
    }
    if hosts > 1 {
        return Err("more than one Host header");
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(host), Some(auth)) = (host, req.uri().authority()) {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(auth.as_str().as_bytes())
                {
                    return Err("the Host header disagrees with :authority");
                }
            }
        }
        Version::HTTP_11 if host.is_none() => {
            return Err("an HTTP/1.1 request needs a Host header")
        }
        _ => {}
    }
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        if !valid_host(host.as_bytes()) {
            return Err("the Host header is not a valid host");
        }
    }
    if te && cls > 0 {
        return Err("both Transfer-Encoding and Content-Length");
    }
    if cls > 1 {
        return Err("more than one Content-Length header");
    }
    Ok(Framing {
        host: super::headers::named_host(req.uri(), host),
        host_line: host,
        content_length: cl,
        transfer_encoding: te,
    })
}

/// The octets a reg-name or IPv4 address may hold besides `%`-escapes (RFC 3986 §3.2.2: unreserved
/// and sub-delims), as a table: one lookup per octet.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// Whether a `Host` value is an authority without userinfo (RFC 9110 §7.2, RFC 3986 §3.2): a
/// bracketed IP literal or a reg-name/IPv4 of unreserved, sub-delims and percent-encoded octets,
/// then an optional `:` and digits. Read byte by byte, with no copy.
pub(crate) fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
                {
                    return false;
                }
                match &host[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&[][..], port),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon + 1..]),
            None => (host, &[][..]),
        },
    };
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' if name
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3
            }
            b if REG_NAME[usize::from(b)] => i += 1,
            _ => return false,
        }
    }
    port.iter().all(u8::is_ascii_digit)
}

/// The `Transfer-Encoding` of a request when it is anything but `chunked` alone (one field line,
/// one coding, any case): another coding before it (`gzip, chunked`, `identity, chunked`), or a
/// second field line. hyper reads only the chunked framing and would forward the still-encoded
/// bytes as if they were the content; RFC 9112 §6.1 answers a coding the server does not
/// implement with 501.
pub fn unsupported_coding(h: &HeaderMap) -> Option<String> {
    let mut lines = h.get_all(TRANSFER_ENCODING).iter();
    let first = lines.next()?;
    let exact = lines.next().is_none()
        && first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if exact {
        return None;
    }
    let all: Vec<String> = h
        .get_all(TRANSFER_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect();
    Some(all.join(", "))
}

#[cfg(test)]
mod tests {
    use super::ambiguity;
    use http::{Request, Version};

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_are_authorities_without_userinfo() {
        for ok in [
            "a.test",
            "A-b_c~d.test:8443",
            "a.test:",
            "192.0.2.1:80",
            "[2001:db8::1]",
            "[::ffff:192.0.2.1]:443",
            "xn--bcher-kva.test",
            "a%2Db.test",
            "!$&'()*+,;=",
        ] {
            assert!(super::valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "u@a.test",
            "u:p@a.test",
            "[abc",
            "[]",
            "[::1]x",
            "[::1]:8a",
            "a.test:8a",
            "a.test:80:80",
            "a test",
            "a/b",
            "a\\b",
            "a%2",
            "a%zz",
            "a.test\t",
            "é.test",
        ] {
            assert!(!super::valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn each_ambiguity_is_named() {
        let h1 = |headers: &[(&str, &str)]| ambiguity(&req(Version::HTTP_11, "/", headers)).err();
        assert_eq!(h1(&[("host", "a.test")]), None);
        assert_eq!(
            h1(&[("host", "a.test"), ("content-length", "3")]),
            None,
            "one Content-Length"
        );
        assert_eq!(h1(&[]), Some("an HTTP/1.1 request needs a Host header"));
        assert_eq!(
            h1(&[("host", "a.test"), ("host", "b.test")]),
            Some("more than one Host header")
        );
        assert_eq!(
            h1(&[("host", "[abc")]),
            Some("the Host header is not a valid host")
        );
        assert_eq!(
            h1(&[("host", "u@a.test")]),
            Some("the Host header is not a valid host")
        );
        assert_eq!(
            h1(&[
                ("host", "a.test"),
                ("transfer-encoding", "chunked"),
                ("content-length", "3")
            ]),
            Some("both Transfer-Encoding and Content-Length")
        );
        assert_eq!(
            h1(&[
                ("host", "a.test"),
                ("content-length", "3"),
                ("content-length", "3")
            ]),
            Some("more than one Content-Length header")
        );
        let h2 = |uri: &str, headers: &[(&str, &str)]| {
            ambiguity(&req(Version::HTTP_2, uri, headers)).err()
        };
        assert_eq!(
            h2("https://a.test/", &[]),
            None,
            "no Host beside :authority"
        );
        assert_eq!(h2("https://a.test/", &[("host", "A.test")]), None);
        assert_eq!(
            h2("https://a.test/", &[("host", "b.test")]),
            Some("the Host header disagrees with :authority")
        );
        assert_eq!(
            h2("https://u:p@a.test/", &[]),
            Some("userinfo in the request target")
        );
    }

    #[test]
    fn the_pass_hands_on_host_and_framing() {
        let r = req(
            Version::HTTP_11,
            "/",
            &[("host", "a.test:8443"), ("content-length", "12")],
        );
        let f = ambiguity(&r).unwrap();
        assert_eq!(f.host, Some("a.test:8443"));
        assert_eq!(f.content_length.map(|v| v.as_bytes()), Some(&b"12"[..]));
        assert!(!f.transfer_encoding);
        let r = req(Version::HTTP_2, "https://b.test/x", &[("te", "trailers")]);
        let f = ambiguity(&r).unwrap();
        assert_eq!(f.host, Some("b.test"), ":authority names the host");
        assert_eq!(f.content_length, None);
        let r = req(
            Version::HTTP_11,
            "/",
            &[("host", "a.test"), ("transfer-encoding", "chunked")],
        );
        assert!(ambiguity(&r).unwrap().transfer_encoding);
    }
}
