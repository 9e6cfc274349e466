//! W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/ §3.2), pure: the
//! incoming header read strictly, the outgoing one written. `tracestate` is never parsed here:
//! it travels unchanged with the trace it belongs to.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` bit of `trace-flags` (§3.2.2.5).
pub const SAMPLED: u8 = 0x01;

/// A valid `traceparent`: the trace, the caller's span and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// What a request's `traceparent` header came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Absent,
    /// Present but unusable (malformed, all-zero ids, version `ff`, or repeated): the trace is
    /// restarted, the request goes on.
    Invalid,
    Valid(TraceParent),
}

/// Reads the request's `traceparent`. Two of them are invalid (§3.2: a vendor may not pick one).
pub fn incoming(headers: &HeaderMap) -> Incoming {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (None, _) => Incoming::Absent,
        (Some(_), Some(_)) => Incoming::Invalid,
        (Some(v), None) => parse(v.as_bytes()).map_or(Incoming::Invalid, Incoming::Valid),
    }
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, lower-case hex. Version `00` is exactly
/// 55 characters; a later version (`01`–`fe`) is read by its version-00 prefix and may go on
/// only after a `-` (§4.3, "versioning of traceparent"); `ff` is invalid.
pub fn parse(v: &[u8]) -> Option<TraceParent> {
    if v.len() < 55 {
        return None;
    }
    let version = hex::<1>(&v[0..2])?[0];
    match version {
        0x00 if v.len() != 55 => return None,
        0xff => return None,
        0x00 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = hex::<16>(&v[3..35])?;
    let parent_id = hex::<8>(&v[36..52])?;
    let flags = hex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The version-00 header for the span `span_id` of the trace `trace_id`.
pub fn format(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> HeaderValue {
    use std::fmt::Write;
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    for b in trace_id {
        let _ = write!(s, "{b:02x}");
    }
    s.push('-');
    for b in span_id {
        let _ = write!(s, "{b:02x}");
    }
    s.push_str(if sampled { "-01" } else { "-00" });
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `N` bytes from `2N` lower-case hex digits (§3.2.2: upper case is invalid).
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_round_trips() {
        let tp = parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(format(tp.trace_id, tp.parent_id, true), EXAMPLE);
        let unsampled = parse(EXAMPLE.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn strict_version_00() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            assert_eq!(parse(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_prefix() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse(v.as_bytes()).is_some());
        assert!(parse(&v.as_bytes()[..55]).is_some());
    }

    #[test]
    fn absent_invalid_repeated() {
        let mut h = HeaderMap::new();
        assert_eq!(incoming(&h), Incoming::Absent);
        h.insert(&TRACEPARENT, HeaderValue::from_static("nonsense"));
        assert_eq!(incoming(&h), Incoming::Invalid);
        h.insert(&TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert!(matches!(incoming(&h), Incoming::Valid(_)));
        h.append(&TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert_eq!(incoming(&h), Incoming::Invalid);
    }
}
