//! Adversarial HTTP against the real listener: request smuggling shapes (conflicting framing,
//! folding, bad header syntax), odd request targets, and HTTP/2 abuse (Host vs `:authority`,
//! stream-limit abuse, oversize headers), each HTTP/2 attack both over cleartext (h2c, prior
//! knowledge) and over the TLS listener with ALPN `h2`. Every test states what the upstream
//! actually received. The floods that also check this process's descriptors and memory (rapid
//! reset, CONTINUATION) are in `tests/process_bounds/`; resource bounds of the real binary under
//! load are measured in `resources.rs`.

use std::time::Duration;

use crate::common::hostile::*;
use crate::common::*;
use http::StatusCode;
use serde_json::Value;

fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw response (the echo upstream's description, or our error).
fn json_body(raw: &str) -> Value {
    raw.find("\r\n\r\n")
        .and_then(|i| serde_json::from_str(&raw[i + 4..]).ok())
        .unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

#[tokio::test]
async fn http1_framing_and_header_syntax_attacks_never_reach_the_upstream() {
    let env = Env::start().await;
    let big = "a".repeat(20_000);
    let many: String = (0..2000).map(|i| format!("X-T{i}: v\r\n")).collect();
    let cases: Vec<(&str, String, u16)> = vec![
        ("Transfer-Encoding not ending in chunked", "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into(), 400),
        ("Transfer-Encoding gzip only", "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\n\r\nabc".into(), 400),
        ("unknown Transfer-Encoding with Content-Length", "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc".into(), 400),
        ("space before the colon of Transfer-Encoding", "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
        ("duplicate Content-Length, different values", "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400),
        ("Content-Length list", "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3, 4\r\n\r\nabcd".into(), 400),
        ("signed Content-Length", "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +3\r\n\r\nabc".into(), 400),
        ("chunk size overflow", "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\na\r\n0\r\n\r\n".into(), 400),
        ("obsolete line folding", "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\n\r\n".into(), 400),
        ("space before the colon", "GET / HTTP/1.1\r\nHost: app.test\r\nX-A : b\r\n\r\n".into(), 400),
        ("space inside a header name", "GET / HTTP/1.1\r\nHost: app.test\r\nX A: b\r\n\r\n".into(), 400),
        ("bare CR inside a value", "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\rb\r\n\r\n".into(), 400),
        ("NUL inside a value", "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\0b\r\n\r\n".into(), 400),
        ("two Host headers", "GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n".into(), 400),
        ("no Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("Host that is not a host", "GET / HTTP/1.1\r\nHost: [abc\r\n\r\n".into(), 400),
        ("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@app.test\r\n\r\n".into(), 400),
        ("Host with a port that is not a number", "GET / HTTP/1.1\r\nHost: app.test:8x\r\n\r\n".into(), 400),
        ("Host with a slash", "GET / HTTP/1.1\r\nHost: app.test/x\r\n\r\n".into(), 400),
        ("oversize header", format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n"), 431),
        ("oversize trailer", format!("POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: {big}\r\n\r\n"), 400),
        ("too many trailers", format!("POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{many}\r\n"), 400),
        ("authority-form CONNECT", "CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\nConnection: close\r\n\r\n".into(), 404),
        ("asterisk-form OPTIONS", "OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into(), 404),
        ("absolute-form naming another host", "GET http://evil.test/ HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into(), 404),
    ];
    let mut report = Vec::new();
    for (name, req, want) in cases {
        let before = env.upstream_requests().await;
        let out = raw(env.addr(), req.as_bytes(), Duration::from_secs(3)).await;
        let after = env.upstream_requests().await;
        report.push(format!(
            "{name}: {} upstream+{}",
            status_of(&out),
            after - before
        ));
        assert_eq!(status_of(&out), want, "{name}: {out}");
        assert_eq!(after, before, "{name}: the upstream received it");
        // The answer is the only one: nothing after it was read as a second request.
        assert_eq!(out.matches("\r\n\r\n").count(), 1, "{name}: {out}");
    }
    println!("{}", report.join("\n"));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_the_connection_closes() {
    let env = Env::start().await;
    // CL.TE: a front end trusting Content-Length would forward `0\r\n\r\nGET /smuggled…` as the body.
    for order in [
        "Content-Length: 40\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 40",
    ] {
        let before = env.upstream_requests().await;
        let req = format!(
            "POST /first HTTP/1.1\r\nHost: app.test\r\n{order}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
        );
        let out = raw(env.addr(), req.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(status_of(&out), 200, "{out}");
        let echo = json_body(&out);
        assert_eq!(echo["path"], "/first");
        assert_eq!(
            echo["body_bytes"], 0,
            "the body is the chunked one, not 40 bytes"
        );
        assert!(
            echo["headers"].get("content-length").is_none(),
            "the stale Content-Length went upstream: {echo}"
        );
        assert!(
            !out.contains("/smuggled"),
            "a second request was read: {out}"
        );
        assert_eq!(
            out.matches("HTTP/1.1 ").count(),
            1,
            "the connection closes after it"
        );
        assert_eq!(env.upstream_requests().await, before + 1);
    }
}

#[tokio::test]
async fn repeated_identical_content_length_reaches_the_upstream_once() {
    let env = Env::start().await;
    let out = raw(
        env.addr(),
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    let h = env.up.last_headers();
    assert_eq!(h.get_all("content-length").iter().count(), 1);
    assert_eq!(h["content-length"], "3");
    assert_eq!(json_body(&out)["body_bytes"], 3);
}

#[tokio::test]
async fn bare_lf_line_ends_reach_the_upstream_as_separate_well_formed_headers() {
    let env = Env::start().await;
    // RFC 9112 §2.2 lets a recipient accept a bare LF as a line end; what matters is that the
    // upstream gets two clean fields, never a value with an LF in it.
    let out = raw(
        env.addr(),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\nX-B: c\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    let h = env.up.last_headers();
    assert_eq!(h["x-a"], "a");
    assert_eq!(h["x-b"], "c");
    assert!(h.values().all(|v| !v.as_bytes().contains(&b'\n')));
}

#[tokio::test]
async fn absolute_form_routes_by_its_authority_and_the_host_header_is_not_forwarded() {
    let env = Env::start().await;
    // RFC 9112 §3.2.2: with an absolute-form target the Host header is ignored.
    let before = env.upstream_requests().await;
    let out = raw(
        env.addr(),
        b"GET http://app.test/abs?q=1 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(env.upstream_requests().await, before + 1);
    let echo = json_body(&out);
    assert_eq!(echo["path"], "/abs");
    let h = env.up.last_headers();
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["host"], env.up.addr().to_string());
    assert!(
        h.values()
            .all(|v| !v.as_bytes().windows(9).any(|w| w == b"evil.test")),
        "{h:?}"
    );
}

#[tokio::test]
async fn well_formed_trailers_and_chunk_extensions_pass_and_framing_is_regenerated() {
    let env = Env::start().await;
    let out = raw(
        env.addr(),
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), 200, "{out}");
    assert_eq!(json_body(&out)["body_bytes"], 3);
    let h = env.up.last_headers();
    // Not both framings upstream, and the client's hop-by-hop header is gone.
    assert!(!(h.contains_key("content-length") && h.contains_key("transfer-encoding")));
    assert!(h.get("connection").is_none_or(|v| v != "close"));
}

// ---------------------------------------------------------------------------------------------
// HTTP/2, each attack over h2c (prior knowledge) and over TLS (ALPN h2)

/// `Host` contradicting `:authority` is refused before routing; agreeing (case-insensitively) is
/// forwarded with the `:authority` as the only client host, and the transport's scheme.
async fn host_must_agree_with_authority(t: Transport) {
    let env = Env::start().await;
    let send = h2_client(&env, t).await;
    let url = format!("{}://app.test/x", t.scheme());
    let before = env.upstream_requests().await;
    let (status, body) = h2_get(send.clone(), &url, &[("host", "evil.test")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{t:?}: {body}");
    assert_eq!(body["error"], "ambiguous_request");
    assert_eq!(
        env.upstream_requests().await,
        before,
        "{t:?}: forwarded upstream"
    );
    // Agreeing (case-insensitively) is fine; the upstream sees one host, the :authority.
    let (status, body) = h2_get(send.clone(), &url, &[("host", "APP.test")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{t:?}: {body}");
    assert_eq!(body["headers"]["x-forwarded-host"], "app.test");
    assert_eq!(body["headers"]["x-forwarded-proto"], t.scheme());
    let h = env.up.last_headers();
    assert_eq!(h["host"], env.up.addr().to_string());
    assert!(
        h.values()
            .all(|v| !v.as_bytes().windows(9).any(|w| w == b"evil.test")),
        "{t:?}: {h:?}"
    );
    let (status, _) = h2_get(send, &url, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.upstream_requests().await, before + 2);
}

#[tokio::test]
async fn h2_host_header_must_agree_with_authority() {
    host_must_agree_with_authority(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_host_header_must_agree_with_authority() {
    host_must_agree_with_authority(Transport::Tls).await;
}

/// 64 open POST streams (no END_STREAM) on one connection, each of which would hold an upstream
/// request: at most `max_h2_streams` reach the upstream, the rest are refused.
async fn stream_limit(t: Transport) {
    let env = Env::start().await;
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(&env, t).await;
    for i in 0..64u32 {
        let req = c.request(&format!("/open/{i}"));
        if c.frame(HEADERS, END_HEADERS, 1 + 2 * i, &req)
            .await
            .is_err()
        {
            break;
        }
    }
    let (frames, closed) = c.read_frames(Duration::from_secs(2)).await;
    let refused = frames.iter().filter(|f| f.0 == RST_STREAM).count();
    let reached = env.upstream_requests().await - before;
    println!(
        "{t:?} stream limit {MAX_H2_STREAMS}: 64 opened, {reached} reached the upstream, {refused} RST_STREAM, GOAWAY {:?}, closed {closed}",
        goaway_code(&frames)
    );
    assert!(
        reached <= MAX_H2_STREAMS as usize,
        "{t:?}: {reached} upstream requests"
    );
    assert!(
        refused > 0 || closed || goaway_code(&frames).is_some(),
        "{t:?}: excess streams were not refused"
    );
    // A refusal of a stream the client opened beyond the limit is REFUSED_STREAM (0x7) or
    // PROTOCOL_ERROR (0x1), never a response to it.
    for f in frames
        .iter()
        .filter(|f| f.0 == RST_STREAM && f.3.len() == 4)
    {
        let code = u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]);
        assert!(
            code == 0x7 || code == 0x1,
            "{t:?}: RST_STREAM code {code:#x} on stream {}",
            f.2
        );
    }
}

#[tokio::test]
async fn h2_streams_beyond_the_limit_are_refused_and_never_forwarded() {
    stream_limit(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_streams_beyond_the_limit_are_refused_and_never_forwarded() {
    stream_limit(Transport::Tls).await;
}

/// A header list over `max_header_bytes`: `431` or a reset, never forwarded.
async fn oversize_header_list(t: Transport) {
    let env = Env::start().await;
    let before = env.upstream_requests().await;
    let send = h2_client(&env, t).await;
    let big = "a".repeat(12_000);
    let r = h2_get(
        send,
        &format!("{}://app.test/x", t.scheme()),
        &[("x-big", &big)],
    )
    .await;
    println!(
        "{t:?} oversize header list: {:?}",
        r.as_ref().map(|(s, _)| *s)
    );
    match r {
        Ok((status, _)) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(!e.is_empty()),
    }
    assert_eq!(env.upstream_requests().await, before, "{t:?}: forwarded");
}

#[tokio::test]
async fn h2_oversize_header_list_is_refused_before_the_upstream() {
    oversize_header_list(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_oversize_header_list_is_refused_before_the_upstream() {
    oversize_header_list(Transport::Tls).await;
}
