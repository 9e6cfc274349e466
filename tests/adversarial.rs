//! Adversarial HTTP against the real listener: request smuggling shapes (conflicting framing,
//! folding, bad header syntax), odd request targets, and HTTP/2 abuse (Host vs `:authority`, rapid
//! reset, CONTINUATION floods, stream-limit abuse, oversize headers), each HTTP/2 attack both over
//! cleartext (h2c, prior knowledge) and over the TLS listener with ALPN `h2`. Every test states
//! what the upstream actually received. Tests run one at a time (`SERIAL`), so that the descriptor
//! and memory checks see only their own connections. Resource bounds of the real binary under load
//! are measured in `tests/resources.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cae_proxy::dev::upstream::EchoUpstream;
use common::*;
use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One test at a time: the fd and RSS numbers are then the proxy's, not a neighbour's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MAX_H2_STREAMS: u32 = 8;

/// A cleartext listener (`public`, HTTP/1.1 and h2c) and a TLS listener (`tls`, ALPN `h2` and
/// `http/1.1`) in front of one route to the echo upstream.
fn config(up: &str, certs: &Certs) -> String {
    format!(
        r#"
[server]
log_level = "error"
max_header_bytes = 8192
max_h2_streams = {MAX_H2_STREAMS}
header_read_timeout = "1s"
idle_timeout = "1s"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "tls"
address = "127.0.0.1:0"
[listener.tls]
cert = "{}"
key = "{}"
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
"#,
        certs.cert.display(),
        certs.key.display()
    )
}

/// How a test reaches the HTTP/2 server: cleartext with prior knowledge, or TLS where ALPN
/// selected `h2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    H2c,
    Tls,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Transport::H2c => "http",
            Transport::Tls => "https",
        }
    }
}

/// A client connection of either transport.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

struct Env {
    up: EchoUpstream,
    h: Harness,
    /// Trusts the test CA; offers only `h2` by ALPN.
    tls: tokio_rustls::TlsConnector,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let c = certs(dir.path());
        let up = EchoUpstream::start(listener().await).unwrap();
        let h = Harness::start_in(dir, &config(&up.url(), &c)).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in cae_proxy::tls::load_certs(&c.ca).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Env {
            up,
            h,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.h.proxy.addr("public").unwrap()
    }

    /// A connection ready for the HTTP/2 preface: plain TCP to the cleartext listener, or a TLS
    /// session with the TLS listener that verified its certificate and negotiated `h2`.
    async fn connect(&self, t: Transport) -> Conn {
        match t {
            Transport::H2c => Box::new(TcpStream::connect(self.addr()).await.unwrap()),
            Transport::Tls => {
                let tcp = TcpStream::connect(self.h.proxy.addr("tls").unwrap())
                    .await
                    .unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = self.tls.connect(name, tcp).await.unwrap();
                assert_eq!(
                    tls.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "ALPN did not select h2"
                );
                Box::new(tls)
            }
        }
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
// HTTP/2, each attack over h2c (prior knowledge) and over TLS (ALPN h2)

async fn h2_client(env: &Env, t: Transport) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(env.connect(t).await).await.unwrap();
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
    let _serial = SERIAL.lock().await;
    host_must_agree_with_authority(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_host_header_must_agree_with_authority() {
    let _serial = SERIAL.lock().await;
    host_must_agree_with_authority(Transport::Tls).await;
}

/// 2 000 requests reset at once through the `h2` client library (which may drop a reset stream
/// before its HEADERS reach the wire: `rapid_reset_raw` sends the frames themselves): at most one
/// upstream request per stream (each reset is cancelled upstream too), the proxy keeps serving,
/// descriptors come back.
async fn rapid_reset(t: Transport) {
    let env = Env::start().await;
    let fds0 = open_fds();
    let before = env.upstream_requests().await;
    let send = h2_client(&env, t).await;
    const ATTEMPTS: usize = 2_000;
    let mut sent = 0;
    let mut ended = None;
    let t0 = Instant::now();
    let mut s = send;
    let slow = format!("{}://app.test/slow?ms=2000", t.scheme());
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
            .uri(&slow)
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
        "{t:?} rapid reset: {sent} HEADERS+RST_STREAM in {flood:?}, ended by {ended:?}; upstream received {reached}"
    );
    // Each reset stream is cancelled upstream too; the flood never turns into `sent` upstream
    // requests held open (/slow would hold each for 2 s).
    assert!(reached <= sent, "{t:?}: {reached} > {sent}");
    // A normal client is still served at once.
    let t1 = Instant::now();
    let (status, _) = h2_get(
        h2_client(&env, t).await,
        &format!("{}://app.test/ok", t.scheme()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "{t:?}: {:?}",
        t1.elapsed()
    );
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    assert!(fds <= fds0 + 8, "{t:?}: fds {fds0} → {fds}");
}

#[tokio::test]
async fn h2_rapid_reset_does_not_multiply_upstream_work_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_rapid_reset_does_not_multiply_upstream_work_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset(Transport::Tls).await;
}

/// Raw HTTP/2 frames, for what a well-behaved client library will not send.
struct RawH2 {
    s: Conn,
    scheme: &'static str,
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl RawH2 {
    async fn connect(env: &Env, t: Transport) -> RawH2 {
        let mut s = env.connect(t).await;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut r = RawH2 {
            s,
            scheme: t.scheme(),
        };
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
        self.s.write_all(&f).await?;
        self.s.flush().await
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

    fn request(&self, path: &str) -> Vec<u8> {
        RawH2::block(&[
            (":method", "POST"),
            (":scheme", self.scheme),
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

/// The CVE-2023-44487 pattern on the wire, which a client library may not produce (it can drop a
/// stream reset before its HEADERS were written): HEADERS then RST_STREAM(CANCEL) for 2 000
/// new streams, as fast as the connection takes them. The server ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM once more than 50 streams were reset before it accepted them
/// (`max_pending_accept_reset_streams`), forwards (almost) none of them, and keeps serving others.
async fn rapid_reset_raw(t: Transport) {
    let env = Env::start().await;
    let fds0 = open_fds();
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(&env, t).await;
    const ATTEMPTS: u32 = 2_000;
    let mut sent = 0u32;
    let t0 = Instant::now();
    for i in 0..ATTEMPTS {
        let stream = 1 + 2 * i;
        let req = c.request("/slow?ms=2000");
        let ok = c.frame(HEADERS, END_HEADERS, stream, &req).await.is_ok()
            && c.frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
                .await
                .is_ok();
        if !ok {
            break;
        }
        sent += 1;
    }
    let flood = t0.elapsed();
    let (frames, closed) = c.read_frames(Duration::from_secs(2)).await;
    let code = goaway_code(&frames);
    let reached = env.upstream_requests().await - before;
    println!(
        "{t:?} raw rapid reset: {sent} HEADERS+RST_STREAM written in {flood:?}; GOAWAY {code:?}, closed {closed}; upstream received {reached}"
    );
    assert!(
        closed || code.is_some(),
        "{t:?}: the server kept the flood open"
    );
    if let Some(code) = code {
        assert_eq!(code, ENHANCE_YOUR_CALM, "{t:?}: GOAWAY code");
    }
    assert!(
        (reached as u32) < sent.min(60),
        "{t:?}: {reached} of {sent} reset streams reached the upstream"
    );
    // A normal client is still served at once.
    let t1 = Instant::now();
    let (status, _) = h2_get(
        h2_client(&env, t).await,
        &format!("{}://app.test/ok", t.scheme()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "{t:?}: {:?}",
        t1.elapsed()
    );
    drop(c);
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    assert!(fds <= fds0 + 8, "{t:?}: fds {fds0} → {fds}");
}

#[tokio::test]
async fn h2_raw_rapid_reset_is_not_forwarded_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset_raw(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_raw_rapid_reset_is_not_forwarded_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset_raw(Transport::Tls).await;
}

/// CANCEL (RFC 9113 §7).
const CANCEL: u32 = 0x8;
/// ENHANCE_YOUR_CALM (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Endless CONTINUATION frames of valid fields, never END_HEADERS: the server stops reading
/// (GOAWAY or close) long before 64 MiB, memory stays flat, nothing reaches the upstream.
async fn continuation_flood(t: Transport) {
    let env = Env::start().await;
    let rss0 = rss_kib();
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(&env, t).await;
    let req = c.request("/flood");
    c.frame(HEADERS, 0, 1, &req).await.unwrap();
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
        "{t:?} CONTINUATION flood: sent {} KiB before the server stopped reading; GOAWAY {code:?}, closed {closed}, RSS +{grown} KiB",
        sent / 1024
    );
    assert!(
        closed || code.is_some(),
        "{t:?}: the server kept the flood open"
    );
    if let Some(code) = code {
        assert_eq!(code, ENHANCE_YOUR_CALM, "{t:?}: GOAWAY code");
    }
    assert!(
        sent < 64 << 20,
        "{t:?}: the server read 64 MiB of header block"
    );
    assert_eq!(env.upstream_requests().await, before, "{t:?}: forwarded");
    assert!(grown < 64 * 1024, "{t:?}: RSS grew by {grown} KiB");
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    continuation_flood(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_continuation_flood_is_cut_off_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    continuation_flood(Transport::Tls).await;
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
    let _serial = SERIAL.lock().await;
    stream_limit(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_streams_beyond_the_limit_are_refused_and_never_forwarded() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
    oversize_header_list(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_oversize_header_list_is_refused_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    oversize_header_list(Transport::Tls).await;
}
