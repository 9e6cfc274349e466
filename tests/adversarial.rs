//! Adversarial HTTP against the real listener: request smuggling shapes (conflicting framing,
//! folding, bad header syntax), odd request targets, HTTP/2 abuse (Host vs `:authority`, rapid
//! reset, CONTINUATION floods, stream-limit abuse, oversize headers) and measured resource bounds
//! (open file descriptors and RSS of this test process, which hosts the proxy) under slow clients,
//! idle connections, many HTTP/2 streams and a flood of SET pushes. Every test states what the
//! upstream actually received. Tests run one at a time so that the measurements are the proxy's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cae_proxy::dev::transmitter::{DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time: the fd and RSS numbers are then the proxy's, not a neighbour's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MAX_H2_STREAMS: u32 = 8;

fn config(up: &str, extra_server: &str) -> String {
    format!(
        r#"
[server]
log_level = "error"
max_header_bytes = 8192
max_h2_streams = {MAX_H2_STREAMS}
header_read_timeout = "1s"
idle_timeout = "1s"
{extra_server}
[[listener]]
name = "public"
address = "127.0.0.1:0"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
# Pooled upstream connections close soon, so descriptor counts settle within the tests.
idle_timeout = "1s"
[[route]]
name = "app"
hosts = ["app.test", "127.0.0.1"]
upstream = "app"
auth = "none"
"#
    )
}

struct Env {
    up: EchoUpstream,
    h: Harness,
}

impl Env {
    async fn start() -> Env {
        let up = EchoUpstream::start(listener().await).unwrap();
        let h = Harness::start(&config(&up.url(), "")).await;
        Env { up, h }
    }

    fn addr(&self) -> SocketAddr {
        self.h.proxy.addr("public").unwrap()
    }

    /// Upstream requests counted after in-flight ones have landed.
    async fn upstream_requests(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.up.requests()
    }
}

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

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits (bounded) until the open fds fall to `limit` or below; returns the last count.
async fn fds_settle(limit: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = open_fds();
        if n <= limit || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

#[tokio::test]
async fn http1_framing_and_header_syntax_attacks_never_reach_the_upstream() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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
// HTTP/2 (cleartext, prior knowledge: the same hyper server serves TLS with ALPN h2)

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn h2_get(
    send: h2::client::SendRequest<Bytes>,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = send
        .send_request(req.body(()).unwrap(), true)
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn h2_host_header_must_agree_with_authority() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let send = h2_client(env.addr()).await;
    let before = env.upstream_requests().await;
    let (status, body) = h2_get(send.clone(), "http://app.test/x", &[("host", "evil.test")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "ambiguous_request");
    assert_eq!(env.upstream_requests().await, before, "forwarded upstream");
    // Agreeing (case-insensitively) is fine; the upstream sees one host, the :authority.
    let (status, body) = h2_get(send.clone(), "http://app.test/x", &[("host", "APP.test")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["x-forwarded-host"], "app.test");
    let (status, _) = h2_get(send, "http://app.test/x", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.upstream_requests().await, before + 2);
}

#[tokio::test]
async fn h2_rapid_reset_does_not_multiply_upstream_work_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let fds0 = open_fds();
    let before = env.upstream_requests().await;
    let send = h2_client(env.addr()).await;
    const ATTEMPTS: usize = 2_000;
    let mut sent = 0;
    let mut ended = None;
    let t0 = Instant::now();
    let mut s = send;
    for _ in 0..ATTEMPTS {
        s = match tokio::time::timeout(Duration::from_secs(5), s.ready()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                ended = Some(e.to_string());
                break;
            }
            Err(_) => {
                ended = Some("stalled".into());
                break;
            }
        };
        let req = http::Request::builder()
            .method("POST")
            .uri("http://app.test/slow?ms=2000")
            .body(())
            .unwrap();
        match s.send_request(req, false) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        }
    }
    let flood = t0.elapsed();
    let reached = env.upstream_requests().await - before;
    println!(
        "rapid reset: {sent} HEADERS+RST_STREAM in {flood:?}, ended by {ended:?}; upstream received {reached}"
    );
    // Each reset stream is cancelled upstream too; the flood never turns into `sent` upstream
    // requests held open (/slow would hold each for 2 s).
    assert!(reached <= sent, "{reached} > {sent}");
    // A normal client is still served at once.
    let t1 = Instant::now();
    let (status, _) = h2_get(h2_client(env.addr()).await, "http://app.test/ok", &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    assert!(fds <= fds0 + 8, "fds {fds0} → {fds}");
}

/// Raw HTTP/2 frames, for what a well-behaved client library will not send.
struct RawH2 {
    s: TcpStream,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl RawH2 {
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut r = RawH2 { s };
        r.frame(SETTINGS, 0, 0, &[]).await.unwrap();
        r
    }

    async fn frame(
        &mut self,
        ty: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await
    }

    /// HPACK: literal fields without indexing, new names, no Huffman.
    fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        fn int(out: &mut Vec<u8>, mut n: usize) {
            if n < 127 {
                out.push(n as u8);
                return;
            }
            out.push(127);
            n -= 127;
            while n >= 128 {
                out.push((n % 128 + 128) as u8);
                n /= 128;
            }
            out.push(n as u8);
        }
        let mut out = Vec::new();
        for (k, v) in fields {
            out.push(0);
            int(&mut out, k.len());
            out.extend_from_slice(k.as_bytes());
            int(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    fn request(path: &str) -> Vec<u8> {
        RawH2::block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "app.test"),
            (":path", path),
        ])
    }

    /// Reads frames until the peer closes or `wait` passes: (type, flags, stream, payload).
    async fn read_frames(&mut self, wait: Duration) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
        let mut buf = Vec::new();
        let deadline = Instant::now() + wait;
        let mut closed = false;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = (usize::from(buf[i]) << 16)
                | (usize::from(buf[i + 1]) << 8)
                | usize::from(buf[i + 2]);
            if i + 9 + len > buf.len() {
                break;
            }
            let stream =
                u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]) & 0x7fff_ffff;
            frames.push((
                buf[i + 3],
                buf[i + 4],
                stream,
                buf[i + 9..i + 9 + len].to_vec(),
            ));
            i += 9 + len;
        }
        (frames, closed)
    }
}

fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let rss0 = rss_kib();
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(env.addr()).await;
    c.frame(HEADERS, 0, 1, &RawH2::request("/flood"))
        .await
        .unwrap();
    // Endless CONTINUATION frames of valid fields, never END_HEADERS: up to 64 MiB.
    let field = RawH2::block(&[("x-flood", &"a".repeat(100))]);
    let payload: Vec<u8> = field
        .iter()
        .copied()
        .cycle()
        .take(field.len() * (16_000 / field.len()))
        .collect();
    let mut sent = 0usize;
    let t0 = Instant::now();
    while sent < 64 << 20 && t0.elapsed() < Duration::from_secs(20) {
        if tokio::time::timeout(
            Duration::from_secs(2),
            c.frame(CONTINUATION, 0, 1, &payload),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            break;
        }
        sent += payload.len();
    }
    let (frames, closed) = c.read_frames(Duration::from_secs(3)).await;
    let code = goaway_code(&frames);
    let grown = rss_kib().saturating_sub(rss0);
    println!(
        "CONTINUATION flood: sent {} KiB before the server stopped reading; GOAWAY {code:?}, closed {closed}, RSS +{grown} KiB",
        sent / 1024
    );
    assert!(closed || code.is_some(), "the server kept the flood open");
    assert!(sent < 64 << 20, "the server read 64 MiB of header block");
    assert_eq!(env.upstream_requests().await, before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn h2_streams_beyond_the_limit_are_refused_and_never_forwarded() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(env.addr()).await;
    // 64 open POST streams (no END_STREAM): each would hold an upstream request.
    for i in 0..64u32 {
        let path = format!("/open/{i}");
        if c.frame(HEADERS, END_HEADERS, 1 + 2 * i, &RawH2::request(&path))
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
        "stream limit {MAX_H2_STREAMS}: 64 opened, {reached} reached the upstream, {refused} RST_STREAM, GOAWAY {:?}, closed {closed}",
        goaway_code(&frames)
    );
    assert!(
        reached <= MAX_H2_STREAMS as usize,
        "{reached} upstream requests"
    );
    assert!(
        refused > 0 || closed || goaway_code(&frames).is_some(),
        "excess streams were not refused"
    );
}

#[tokio::test]
async fn h2_oversize_header_list_is_refused_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let before = env.upstream_requests().await;
    let send = h2_client(env.addr()).await;
    let big = "a".repeat(12_000);
    let r = h2_get(send, "http://app.test/x", &[("x-big", &big)]).await;
    println!("h2 oversize header list: {:?}", r.as_ref().map(|(s, _)| *s));
    match r {
        Ok((status, _)) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(!e.is_empty()),
    }
    assert_eq!(env.upstream_requests().await, before);
}

// ---------------------------------------------------------------------------------------------
// Resource bounds, measured

#[tokio::test]
async fn slow_clients_are_cut_off_and_their_resources_returned() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let (fds0, rss0) = (open_fds(), rss_kib());
    const CLIENTS: usize = 300;
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
            .await
            .unwrap();
        conns.push(s);
    }
    // Trickle a byte per connection every 200 ms for 3 s (header_read_timeout is 1 s).
    let t0 = Instant::now();
    let mut peak_fds = open_fds();
    while t0.elapsed() < Duration::from_secs(3) {
        for s in &mut conns {
            let _ = s.write_all(b"a").await;
        }
        peak_fds = peak_fds.max(open_fds());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak_rss = rss_kib();
    // A normal client is served meanwhile.
    let r = get(
        &client(),
        &format!("http://{}/ok", env.addr()),
        &[("host", "app.test")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut closed = 0;
    for s in &mut conns {
        let mut b = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
            // EOF, or the 408 hyper sends before closing.
            if n == 0 || b.starts_with(b"HTTP/1.1 408") {
                closed += 1;
            }
        }
    }
    drop(conns);
    let fds = fds_settle(fds0 + 4, Duration::from_secs(10)).await;
    println!(
        "slow clients: {CLIENTS} trickling headers; {closed} cut off by the header timeout; fds {fds0} → peak {peak_fds} → {fds}; RSS {rss0} → {peak_rss} KiB"
    );
    assert_eq!(closed, CLIENTS, "every slow client is cut off");
    assert!(fds <= fds0 + 4, "fds {fds0} → {fds}");
    assert!(peak_rss.saturating_sub(rss0) < 64 * 1024);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let (fds0, rss0) = (open_fds(), rss_kib());
    const CLIENTS: usize = 300;
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(env.addr()).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    // Read each response head, then stay idle.
    for s in &mut conns {
        let mut b = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(b[..n].starts_with(b"HTTP/1.1 200"));
    }
    let peak_fds = open_fds();
    let peak_rss = rss_kib();
    let t0 = Instant::now();
    let mut closed = 0;
    for s in &mut conns {
        let mut b = vec![0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    let took = t0.elapsed();
    drop(conns);
    let fds = fds_settle(fds0 + 4, Duration::from_secs(10)).await;
    println!(
        "idle connections: {CLIENTS} keep-alive, {closed} closed by the proxy within {took:?} (idle_timeout 1 s); fds {fds0} → peak {peak_fds} → {fds}; RSS {rss0} → {peak_rss} KiB"
    );
    assert_eq!(closed, CLIENTS);
    assert!(fds <= fds0 + 4, "fds {fds0} → {fds}");
    assert!(peak_rss.saturating_sub(rss0) < 64 * 1024);
}

#[tokio::test]
async fn many_h2_streams_keep_memory_and_descriptors_bounded() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    // Warm up (first connections allocate pools), then measure.
    let _ = h2_get(h2_client(env.addr()).await, "http://app.test/ok", &[]).await;
    let (fds0, rss0) = (open_fds(), rss_kib());
    const CONNS: usize = 8;
    const PER_CONN: usize = 500;
    let before = env.upstream_requests().await;
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let send = h2_client(env.addr()).await;
        // One request first, so the client has the server's SETTINGS (stream limit) before the
        // burst; streams sent above the limit before that are refused (REFUSED_STREAM).
        h2_get(send.clone(), "http://app.test/s", &[])
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ok = 1;
            let mut inflight = Vec::new();
            for _ in 1..PER_CONN {
                inflight.push(tokio::spawn(h2_get(send.clone(), "http://app.test/s", &[])));
                if inflight.len() == 32 {
                    for t in inflight.drain(..) {
                        if matches!(t.await, Ok(Ok((StatusCode::OK, _)))) {
                            ok += 1;
                        }
                    }
                }
            }
            for t in inflight {
                if matches!(t.await, Ok(Ok((StatusCode::OK, _)))) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    let mut peak_fds = 0;
    for t in tasks {
        ok += t.await.unwrap();
        peak_fds = peak_fds.max(open_fds());
    }
    let peak_rss = rss_kib();
    let reached = env.upstream_requests().await - before;
    let fds = fds_settle(fds0 + 2 * CONNS + 4, Duration::from_secs(10)).await;
    println!(
        "h2 streams: {CONNS} connections × {PER_CONN} streams (32 in flight per connection, limit {MAX_H2_STREAMS}); {ok} OK, upstream {reached}; fds {fds0} → peak {peak_fds} → {fds}; RSS {rss0} → {peak_rss} KiB"
    );
    assert_eq!(ok, CONNS * PER_CONN, "every stream is eventually served");
    assert_eq!(reached, CONNS * PER_CONN);
    assert!(
        peak_rss.saturating_sub(rss0) < 128 * 1024,
        "RSS grew {} KiB",
        peak_rss - rss0
    );
    // The upstream pool may keep a few idle connections; client connections are still open here.
    assert!(fds <= fds0 + 2 * CONNS + 4, "fds {fds0} → {fds}");
}

#[tokio::test]
async fn a_flood_of_set_pushes_keeps_memory_and_descriptors_bounded() {
    let _serial = SERIAL.lock().await;
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = config(&up.url(), "")
        + &format!(
            r#"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[[transmitter]]
name = "tx"
issuer = "{}"
jwks_uri = "{}"
audiences = ["cae-proxy"]
algorithms = ["RS256"]
[transmitter.push]
path = "/ssf/tx"
authorization = "Bearer push-secret"
"#,
            tx.issuer_url(),
            tx.jwks_url()
        );
    let h = Harness::start(&toml).await;
    let url = h.url("signals", "/ssf/tx");
    // Keys loaded (first push answers 202).
    let first = tx.sign_set(DevTransmitter::session_revoked(
        json!({"format": "opaque", "id": "warm-up"}),
        None,
    ));
    for _ in 0..100 {
        if matches!(
            tx.push(&url, Some("Bearer push-secret"), &first).await,
            Ok((202, _, _))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const SETS: usize = 2_000;
    let sets: Vec<String> = (0..SETS)
        .map(|i| {
            tx.sign_set(DevTransmitter::session_revoked(
                json!({"format": "opaque", "id": format!("session-{i}")}),
                None,
            ))
        })
        .collect();
    let (fds0, rss0) = (open_fds(), rss_kib());
    let t0 = Instant::now();
    let mut accepted = 0;
    let mut peak_fds = fds0;
    for batch in sets.chunks(64) {
        let mut tasks = Vec::new();
        for s in batch {
            let (url, s) = (url.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                cae_proxy::dev::transmitter::push(&url, Some("Bearer push-secret"), &s).await
            }));
        }
        peak_fds = peak_fds.max(open_fds());
        for t in tasks {
            if matches!(t.await.unwrap(), Ok((202, _, _))) {
                accepted += 1;
            }
        }
    }
    let took = t0.elapsed();
    // Oversize bodies are refused from Content-Length, unread.
    let big = "x".repeat(1 << 20);
    let r = send(
        &client(),
        Method::POST,
        &url,
        &[
            ("authorization", "Bearer push-secret"),
            ("content-type", "application/secevent+jwt"),
        ],
        Bytes::from(big),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let peak_rss = rss_kib();
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    let stats = h.proxy.shared.store.tables().stats();
    println!(
        "SET push flood: {accepted}/{SETS} accepted in {took:?} (64 concurrent); {} revocations stored; fds {fds0} → peak {peak_fds} → {fds}; RSS {rss0} → {peak_rss} KiB",
        stats.revocations
    );
    assert_eq!(accepted, SETS);
    assert!(stats.revocations >= SETS);
    assert!(fds <= fds0 + 8, "fds {fds0} → {fds}");
    assert!(
        peak_rss.saturating_sub(rss0) < 128 * 1024,
        "RSS grew {} KiB",
        peak_rss - rss0
    );
}
