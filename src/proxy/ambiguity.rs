//! Requests whose host or framing two parsers could read differently (request smuggling): found
//! before routing and refused, never forwarded.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Version};

/// Requests whose target host or body framing two parsers could read differently are refused,
/// never forwarded (RFC 9112 §3.2 and §6.3, RFC 9113 §8.3.1). hyper already refuses
/// conflicting `Content-Length` values, obsolete line folding and bad header syntax; this adds the
/// rules it leaves to the application.
pub fn ambiguity<B>(req: &Request<B>) -> Option<&'static str> {
    // Userinfo in an absolute-form target or an HTTP/2 `:authority` (RFC 9110 §4.2.4: a sender
    // must not generate it, a recipient should treat it as an error; RFC 9113 §8.3.1: it must
    // not be there): `u:p@a.test` names no route's host and would go upstream as the host.
    if req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
    {
        return Some("userinfo in the request target");
    }
    let h = req.headers();
    let mut hosts = h.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(host), Some(auth)) = (host, req.uri().authority()) {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(auth.as_str().as_bytes())
                {
                    return Some("the Host header disagrees with :authority");
                }
            }
        }
        Version::HTTP_11 if host.is_none() => {
            return Some("an HTTP/1.1 request needs a Host header")
        }
        _ => {}
    }
    if let Some(host) = host.filter(|h| !h.is_empty()) {
        let valid = host
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@'));
        if !valid {
            return Some("the Host header is not a valid host");
        }
    }
    if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Some("both Transfer-Encoding and Content-Length");
    }
    if h.get_all(CONTENT_LENGTH).iter().nth(1).is_some() {
        return Some("more than one Content-Length header");
    }
    None
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
