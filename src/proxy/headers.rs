//! Header rules: hop-by-hop removal (RFC 9110 §7.6.1), client address, `X-Forwarded-*`, request
//! id, identity headers.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

use serde_json::Value;

use crate::auth::token::Principal;
use crate::config::{ClientIpHeader, Route, Server};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// [`named_host`] as a header value (`X-Forwarded-Host`): the `Host` line itself when that is
/// where the host comes from (no copy).
pub fn authority_value(uri: &http::Uri, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    match uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => host.filter(|v| v.to_str().is_ok()).cloned(),
    }
}

/// The request's host as the client named it: the target's authority (HTTP/2 `:authority`, an
/// absolute-form target), else `Host`.
pub fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    named_host(req.uri(), req.headers().get(http::header::HOST))
}

/// [`authority`] from the target and the `Host` line already found.
pub fn named_host<'a>(uri: &'a http::Uri, host: Option<&'a HeaderValue>) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|v| v.to_str().ok()))
}

/// Removes hop-by-hop headers and those named in `Connection` (RFC 9110 §7.6.1). With
/// `upgrade`, the `Upgrade` value to forward (already reduced to the allowed protocols), sets
/// `Connection: upgrade` and that `Upgrade` so the upstream sees the handshake; without, no
/// `Upgrade` survives.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    // One pass over the names finds the hop-by-hop ones present; only those are removed. Most
    // requests carry none, most responses only `Connection: keep-alive`.
    let present = h
        .keys()
        .fold(0u16, |set, n| set | hop_by_hop_bit(n.as_str()));
    if upgrade.is_none() && present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` taken out with its values in one lookup, then the names it lists;
        // `keep-alive`, the usual option, goes below anyway.
        if let http::header::Entry::Occupied(e) = h.entry(CONNECTION) {
            let mut named = Vec::new();
            for v in e.remove_entry_mult().1 {
                let Ok(v) = v.to_str() else { continue };
                named.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|n| !n.eq_ignore_ascii_case("keep-alive"))
                        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
                );
            }
            for n in named {
                h.remove(&n);
            }
        }
    }
    // Bit 0, `Connection`, is gone already.
    for (i, n) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            h.remove(*n);
        }
    }
    if let Some(u) = upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, u.clone());
    }
}

/// Headers that describe one hop only (RFC 9110 §7.6.1; `HTTP2-Settings` belongs to the h2c
/// upgrade, RFC 7540 §3.2.1), plus the proxy credentials; bit `i` of [`hop_by_hop_bit`] is
/// `HOP_BY_HOP[i]`.
static HOP_BY_HOP: [&HeaderName; 10] = [
    &CONNECTION,
    &UPGRADE,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &PROXY_AUTHORIZATION,
    &PROXY_AUTHENTICATE,
    &HTTP2_SETTINGS,
];

/// The bit of a name in [`HOP_BY_HOP`], 0 for any other name.
fn hop_by_hop_bit(n: &str) -> u16 {
    match n {
        "connection" => 1,
        "upgrade" => 1 << 1,
        "te" => 1 << 2,
        "trailer" => 1 << 3,
        "transfer-encoding" => 1 << 4,
        "keep-alive" => 1 << 5,
        "proxy-connection" => 1 << 6,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        "http2-settings" => 1 << 9,
        _ => 0,
    }
}

/// The comma-separated tokens of every line of a header.
fn tokens<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The protocol upgrade an HTTP/1.1 request asks for (`Connection: upgrade` and `Upgrade`, RFC
/// 9110 §7.8), reduced to the protocols in `allowed` (lower-case names): the `Upgrade` value to
/// forward, or `None` when nothing allowed is offered — the request then goes upstream as an
/// ordinary one, without `Upgrade` (an `h2c` or unknown tunnel would carry later requests past
/// authentication).
pub fn allowed_upgrade(h: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if allowed.is_empty()
        || !h.contains_key(UPGRADE)
        || !tokens(h, &CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let offered: Vec<&str> = tokens(h, &UPGRADE)
        .filter(|t| allowed.iter().any(|a| a.eq_ignore_ascii_case(t)))
        .collect();
    if offered.is_empty() {
        return None;
    }
    HeaderValue::from_str(&offered.join(", ")).ok()
}

/// Whether a `101` answer switches only to protocols the request offered (RFC 9110 §15.2.2: the
/// server names them in `Upgrade`).
pub fn switched_as_offered(response: &HeaderMap, offered: &HeaderValue) -> bool {
    let offered = offered.to_str().unwrap_or_default();
    let mut chosen = tokens(response, &UPGRADE).peekable();
    chosen.peek().is_some()
        && chosen.all(|c| offered.split(',').any(|o| o.trim().eq_ignore_ascii_case(c)))
}

/// The size of a request head as the limit `server.max_header_bytes` counts it: the request
/// line and every header line (HTTP/2 pseudo-headers are in the target and method).
pub fn head_size<B>(req: &http::Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The client address: the peer, or — when the peer is a trusted proxy — the right-most
/// untrusted entry of `server.client_ip_header` (`X-Forwarded-For`, or `Forwarded: for=`; the
/// other header is ignored). Never a header from an untrusted peer.
/// An entry that is not an address (`unknown`, an RFC 7239 obfuscated `_id`, garbage) ends the
/// walk: nothing to its left was vouched for by a trusted hop, so the last trusted hop is used.
pub fn client_ip(peer: IpAddr, h: &HeaderMap, server: &Server) -> IpAddr {
    let peer = peer.to_canonical();
    if !server.is_trusted(peer) {
        return peer;
    }
    let chain: Vec<Option<IpAddr>> = match server.client_ip_header {
        ClientIpHeader::XForwardedFor => h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_addr)
            .collect(),
        ClientIpHeader::Forwarded => h
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_addr(v.trim().trim_matches('"')))
            })
            .collect(),
    };
    let mut client = peer;
    for ip in chain.iter().rev() {
        let Some(ip) = ip else {
            break;
        };
        client = ip.to_canonical();
        if !server.is_trusted(client) {
            break;
        }
    }
    client
}

/// Parses `192.0.2.1`, `192.0.2.1:443`, `[2001:db8::1]:443` or `2001:db8::1`.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

/// Sets `X-Forwarded-For/Proto/Host`, keeping incoming values only from a trusted peer.
/// `peer_value` is the peer address as a header value (built once per connection).
pub fn set_forwarded(
    h: &mut HeaderMap,
    peer_value: &HeaderValue,
    trusted_peer: bool,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    // Every incoming line, in order: several `X-Forwarded-For` lines are one list (RFC 9110
    // §5.3), read the same way as `client_ip` reads them. Keeping only the first line would drop
    // the entries the trusted hop added and pass the client's own claim on as the client.
    let mut prev = String::new();
    if trusted_peer {
        for line in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            prev.push_str(line);
            prev.push_str(", ");
        }
    }
    let xff = if prev.is_empty() {
        Some(peer_value.clone())
    } else {
        prev.push_str(peer_value.to_str().unwrap_or_default());
        HeaderValue::from_str(&prev).ok()
    };
    if let Some(v) = xff {
        h.insert(&X_FORWARDED_FOR, v);
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted_peer && h.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => {
                h.insert(&X_FORWARDED_HOST, v);
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The header value for a claim: strings as they are, arrays joined with commas, others as JSON.
pub fn claim_header(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// The route's identity headers (`identity_headers`) for a request: each name with the value of
/// its claim in `principal`, or `None` where there is no principal, no such claim, or a value
/// that is no valid header value. A `None` header is removed from the request, so that a
/// client's own copy never passes for the identity (proxy: before forwarding; authorization
/// service: what the gateway is told to remove).
pub fn identity<'r>(
    route: &'r Route,
    principal: Option<&'r Principal>,
) -> impl Iterator<Item = (&'r HeaderName, Option<HeaderValue>)> + 'r {
    route.identity_headers.iter().map(move |(name, claim)| {
        let value = principal
            .and_then(|p| p.claim(claim))
            .map(claim_header)
            .and_then(|s| HeaderValue::from_str(&s).ok());
        (name, value)
    })
}

/// The peer address as an `X-Forwarded-For` entry.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The incoming `X-Request-Id` when it is short printable ASCII, else a new random id.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: [u8; 16] = rand::random();
    let mut id = [0u8; 32];
    for (i, b) in n.iter().enumerate() {
        id[2 * i] = HEX[usize::from(b >> 4)];
        id[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn server(trusted: &str) -> Server {
        let text = format!(
            "[server]\ntrusted_proxies = [{trusted}]\n[[listener]]\naddress = \"127.0.0.1:0\"\n"
        );
        Config::parse(&text, std::path::Path::new("."))
            .unwrap()
            .server
    }

    #[test]
    fn hop_by_hop_bits_name_the_table() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(n.as_str()), 1 << i, "{n}");
        }
        assert_eq!(hop_by_hop_bit("x-kept"), 0);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert(
            "http2-settings",
            "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap(),
        );
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn only_allowed_upgrades_are_kept() {
        let ws = vec!["websocket".to_string()];
        let req = |conn: &str, up: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, conn.parse().unwrap());
            h.insert(UPGRADE, up.parse().unwrap());
            h
        };
        assert_eq!(
            allowed_upgrade(&req("Upgrade", "WebSocket"), &ws).unwrap(),
            "WebSocket"
        );
        assert_eq!(
            allowed_upgrade(&req("keep-alive, upgrade", "h2c, websocket"), &ws).unwrap(),
            "websocket"
        );
        assert!(allowed_upgrade(&req("Upgrade, HTTP2-Settings", "h2c"), &ws).is_none());
        assert!(allowed_upgrade(&req("Upgrade", "foo/1"), &ws).is_none());
        assert!(allowed_upgrade(&req("keep-alive", "websocket"), &ws).is_none());
        assert!(allowed_upgrade(&req("Upgrade", "websocket"), &[]).is_none());

        let offered = HeaderValue::from_static("websocket");
        let mut resp = HeaderMap::new();
        assert!(!switched_as_offered(&resp, &offered));
        resp.insert(UPGRADE, "h2c".parse().unwrap());
        assert!(!switched_as_offered(&resp, &offered));
        resp.insert(UPGRADE, "WebSocket".parse().unwrap());
        assert!(switched_as_offered(&resp, &offered));
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let s = server("\"10.0.0.0/8\"");
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            "203.0.113.9, 198.51.100.1, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(
            client_ip("192.0.2.7".parse().unwrap(), &h, &s),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &h, &s),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        let mut f = HeaderMap::new();
        f.insert(
            http::header::FORWARDED,
            "for=\"[2001:db8::1]:443\";proto=https".parse().unwrap(),
        );
        let fs = Server {
            client_ip_header: ClientIpHeader::Forwarded,
            ..s.clone()
        };
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &f, &fs),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Only the configured header counts: with both present, the other one is ignored.
        let mut both = f.clone();
        both.insert(&X_FORWARDED_FOR, "198.51.100.1".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &both, &fs),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &both, &s),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("10.0.0.2".parse().unwrap(), &f, &s),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        // A trusted hop that could not name the client (`unknown`, an obfuscated `_id`): the
        // spoofable entries to its left are not believed.
        for (name, value) in [
            (&X_FORWARDED_FOR, "203.0.113.9, unknown"),
            (&X_FORWARDED_FOR, "203.0.113.9, garbage, 10.1.1.1"),
            (&http::header::FORWARDED, "for=203.0.113.9, for=_hidden"),
            (
                &http::header::FORWARDED,
                "for=203.0.113.9, for=unknown;proto=https",
            ),
        ] {
            let mut u = HeaderMap::new();
            u.insert(name.clone(), value.parse().unwrap());
            let server = if *name == X_FORWARDED_FOR { &s } else { &fs };
            let got = client_ip("10.0.0.2".parse().unwrap(), &u, server);
            assert!(s.is_trusted(got), "{value}: {got} is a spoofable entry");
        }

        let mut out = h.clone();
        set_forwarded(
            &mut out,
            &peer_value("192.0.2.7".parse().unwrap()),
            false,
            "https",
            Some(HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(out[&X_FORWARDED_FOR], "192.0.2.7");
        set_forwarded(
            &mut h,
            &peer_value("10.0.0.2".parse().unwrap()),
            true,
            "https",
            Some(HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "203.0.113.9, 198.51.100.1, 10.1.1.1, 10.0.0.2"
        );
    }
}
