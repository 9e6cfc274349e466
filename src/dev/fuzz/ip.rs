//! Fuzz target `ip`: IP addresses, CIDR lists, `X-Forwarded-For` and `Forwarded`.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::common::Input;
use crate::config::{self, Config};
use crate::signals::subject;

/// Fuzz target `ip`. Fields: an address or CIDR, an `X-Forwarded-For` value, a `Forwarded`
/// value, the trusted proxies (comma-separated), the peer address.
///
/// Asserts: parsers agree with `std` on plain addresses and networks round-trip through their text;
/// the client address is the peer unless the peer is trusted, and otherwise an address that the
/// headers named.
pub fn ip(data: &[u8]) {
    let mut inp = Input(data);
    let net_text = inp.text();
    let xff = inp.field().to_vec();
    let fwd = inp.field().to_vec();
    let trusted_text = inp.text();
    let peer_text = inp.text();

    let cfg_net = config::parse_net(&net_text);
    let sig_net = subject::parse_net(&net_text);
    if let Some(n) = cfg_net {
        assert_eq!(
            config::parse_net(&n.to_string()),
            Some(n),
            "CIDR text round-trips"
        );
    }
    if let Ok(n) = &sig_net {
        assert_eq!(subject::parse_net(&n.to_string()).as_ref(), Ok(n));
    }
    assert_eq!(
        cfg_net.is_some(),
        sig_net.is_ok(),
        "both CIDR parsers accept the same text"
    );
    if let Ok(a) = net_text.trim().parse::<IpAddr>() {
        assert!(cfg_net.is_some_and(|n| n.contains(&a)));
        assert!(sig_net
            .as_ref()
            .is_ok_and(|n| n.contains(&a.to_canonical())));
        assert_eq!(crate::proxy::headers::parse_addr(net_text.trim()), Some(a));
    }
    let list: Vec<Value> = net_text
        .split(',')
        .map(|s| Value::String(s.into()))
        .collect();
    let _ = subject::parse_ip_list(&Value::Array(list));

    let mut server = Config::minimal().server;
    server.trusted_proxies = trusted_text
        .split(',')
        .filter_map(config::parse_net)
        .collect();
    let peer: IpAddr =
        crate::proxy::headers::parse_addr(peer_text.trim()).unwrap_or(IpAddr::from([10, 0, 0, 1]));
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        h.append(crate::proxy::headers::X_FORWARDED_FOR.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&fwd) {
        h.append(http::header::FORWARDED, v);
    }
    let got = crate::proxy::headers::client_ip(peer, &h, &server);
    let canon = peer.to_canonical();
    if !server.is_trusted(canon) {
        assert_eq!(got, canon, "an untrusted peer's headers are ignored");
    } else if got != canon {
        // The forwarding chain as the specification reads it: X-Forwarded-For entries, else the
        // `for=` parameters of Forwarded; `None` for an entry that is not an address.
        let text = |b: &[u8]| {
            HeaderValue::from_bytes(b)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_string))
        };
        let parse = crate::proxy::headers::parse_addr;
        let mut chain: Vec<Option<IpAddr>> = text(&xff)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(parse)
                    .collect()
            })
            .unwrap_or_default();
        if chain.is_empty() {
            chain = text(&fwd)
                .map(|v| {
                    v.split([',', ';'])
                        .filter_map(|p| {
                            let (k, v) = p.trim().split_once('=')?;
                            k.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| parse(v.trim().trim_matches('"')))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        // `got` must be an entry every hop to its right vouched for: only trusted addresses
        // between it and the peer, and no entry that is not an address.
        let mut vouched = false;
        for e in chain.iter().rev() {
            match e {
                Some(a) if a.to_canonical() == got => {
                    vouched = true;
                    break;
                }
                Some(a) if server.is_trusted(a.to_canonical()) => continue,
                _ => break,
            }
        }
        assert!(
            vouched,
            "client address {got} was not vouched for by trusted hops"
        );
    }
}

/// Seeds for `ip`.
pub fn seed_ip() -> Vec<Vec<u8>> {
    let s = |f: [&str; 5]| f.join("\0").into_bytes();
    vec![
        s([
            "192.0.2.1",
            "203.0.113.9, 198.51.100.1, 10.1.1.1",
            "",
            "10.0.0.0/8",
            "10.0.0.2",
        ]),
        s(["10.0.0.0/8", "203.0.113.9", "", "10.0.0.0/8", "192.0.2.7"]),
        s([
            "2001:db8::/32",
            "",
            "for=\"[2001:db8::1]:443\";proto=https",
            "10.0.0.0/8,::1",
            "10.0.0.2",
        ]),
        s([
            "::ffff:192.0.2.1",
            "::ffff:10.1.1.1, 192.0.2.4:8080",
            "",
            "10.0.0.0/8",
            "::ffff:10.0.0.2",
        ]),
        s([
            "192.0.2.1/33",
            "unknown, 198.51.100.1",
            "for=unknown",
            "0.0.0.0/0",
            "127.0.0.1",
        ]),
        s([
            " 2001:db8::1 ",
            "[2001:db8::2]:80",
            "For=192.0.2.60;by=203.0.113.43",
            "::/0",
            "[::1]:9",
        ]),
    ]
}
