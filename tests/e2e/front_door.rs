//! The front door's edges end to end (issue 16, items 1–6): which protocol upgrades are
//! tunnelled, upgrade requests with a body, tunnels closed when their token stops being good,
//! userinfo in the request target, transfer codings and request-body limits and timeouts, and the
//! keep-alive and header-read timeouts, each against the real listener with a real upstream
//! (the echo upstream, or a hand-written HTTP/1.1 upstream that records the bytes it received).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 on the wire, both ends

/// One HTTP/1.1 message read off the wire.
#[derive(Debug, Clone)]
struct Msg {
    /// The start line and header lines, as sent.
    head: String,
    body: Vec<u8>,
    /// The body arrived whole (its `Content-Length`, or the last chunk and the trailer section).
    complete: bool,
}

impl Msg {
    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The request target of a request.
    fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }

    /// Every value of a header (names compared case-insensitively).
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with a read buffer: reads whole HTTP/1.1 messages or raw bytes.
struct Wire {
    s: Box<dyn Io>,
    buf: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Wire {
    fn new(s: impl Io + 'static) -> Wire {
        Wire {
            s: Box::new(s),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    /// Reads more bytes into the buffer; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn until(&mut self, pat: &[u8]) -> Option<usize> {
        loop {
            if let Some(i) = find(&self.buf, pat) {
                return Some(i);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        let i = self.until(b"\r\n").await?;
        let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
        self.buf.drain(..i + 2);
        Some(l)
    }

    /// The next message head (`None` at EOF before a whole head).
    async fn head(&mut self) -> Option<String> {
        let i = self.until(b"\r\n\r\n").await?;
        let h = String::from_utf8_lossy(&self.buf[..i]).into_owned();
        self.buf.drain(..i + 4);
        Some(h)
    }

    /// The body that `head` announces: chunked, `Content-Length`, none, or (a response with
    /// neither) up to EOF.
    async fn body(&mut self, head: &str, response: bool) -> (Vec<u8>, bool) {
        let m = Msg {
            head: head.to_string(),
            body: Vec::new(),
            complete: true,
        };
        let status = m.status();
        if response && (100..200).contains(&status) || status == 204 || status == 304 {
            return (Vec::new(), true);
        }
        if m.header("transfer-encoding")
            .last()
            .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let Some(size) = self.line().await else {
                    return (body, false);
                };
                let hex = size.split(';').next().unwrap_or_default().trim();
                let Ok(n) = usize::from_str_radix(hex, 16) else {
                    return (body, false);
                };
                if n == 0 {
                    // The trailer section ends with an empty line.
                    loop {
                        match self.line().await {
                            None => return (body, false),
                            Some(l) if l.is_empty() => return (body, true),
                            Some(_) => {}
                        }
                    }
                }
                let Some(data) = self.take(n + 2).await else {
                    body.append(&mut self.buf);
                    return (body, false);
                };
                body.extend_from_slice(&data[..n]);
            }
        }
        if let Some(n) = m
            .header("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok())
        {
            return match self.take(n).await {
                Some(b) => (b, true),
                None => (self.buf.drain(..).collect(), false),
            };
        }
        if response {
            while self.fill().await {}
            return (self.buf.drain(..).collect(), true);
        }
        (Vec::new(), true)
    }

    async fn message(&mut self, response: bool) -> Option<Msg> {
        let head = self.head().await?;
        let (body, complete) = self.body(&head, response).await;
        Some(Msg {
            head,
            body,
            complete,
        })
    }

    /// The next response, within 10 s.
    async fn response(&mut self) -> Option<Msg> {
        tokio::time::timeout(Duration::from_secs(10), self.message(true))
            .await
            .ok()
            .flatten()
    }

    /// Whether the peer closed the connection within `d` (bytes that arrive meanwhile are kept).
    async fn closed_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, async { while self.fill().await {} })
            .await
            .is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// A hand-written upstream that records what reached it

/// How the recording upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `101` to a request with an `Upgrade` header (naming its first protocol), `200 plain`
    /// otherwise: a server that accepts any upgrade it is offered.
    UpgradeWhenAsked,
    /// `101 Upgrade: h2c` to every request: a broken or hostile upstream.
    AlwaysSwitch,
    /// `200 plain` only after the whole body was read.
    AfterBody,
}

/// One request as the upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    msg: Msg,
    /// Read after the upstream had switched protocols on that connection.
    in_tunnel: bool,
}

struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(answer: Answer) -> RawUpstream {
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_raw(Wire::new(s), answer, log.clone()));
            }
        });
        RawUpstream { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests were read in full or in part.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.seen()
    }
}

async fn serve_raw(mut w: Wire, answer: Answer, log: Arc<Mutex<Vec<Seen>>>) {
    let mut tunnel = false;
    loop {
        let Some(msg) = w.message(false).await else {
            return;
        };
        let offered = msg
            .header("upgrade")
            .first()
            .map(|u| u.split(',').next().unwrap_or_default().trim().to_string());
        let switch = !tunnel
            && match answer {
                Answer::UpgradeWhenAsked => offered.is_some(),
                Answer::AlwaysSwitch => true,
                Answer::AfterBody => false,
            };
        let complete = msg.complete;
        log.lock().unwrap().push(Seen {
            msg,
            in_tunnel: tunnel,
        });
        if !complete {
            return;
        }
        let resp = if switch {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {}\r\n\r\n",
                offered.unwrap_or_else(|| "h2c".into())
            )
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nplain".into()
        };
        if w.s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        tunnel |= switch;
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy under test

const ADMIN: &str = "Bearer admin-secret";

struct Env {
    idp: DevIssuer,
    echo: EchoUpstream,
    raw: RawUpstream,
    h: Harness,
    /// Trusts the test CA; offers `h2` and `http/1.1` as configured per connection.
    ca: Arc<rustls::RootCertStore>,
}

/// Routes: `a` (host `a.test`, no auth), `raw` (`/raw`, the recording upstream), `ws` (`/ws`, the
/// echo upstream, IP bindings enforced), `extra_routes`, and `default` (any other host and path,
/// no auth). `server` goes into `[server]`, `app` into `[upstreams.app]`.
fn config(
    iss: &str,
    echo: &str,
    raw: &str,
    certs: &Certs,
    server: &str,
    app: &str,
    extra_routes: &str,
) -> String {
    format!(
        r#"
[server]
log_level = "warn"
{server}
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "tls"
address = "127.0.0.1:0"
[listener.tls]
cert = "{cert}"
key = "{key}"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "memory"
[upstreams.app]
url = "{echo}"
{app}
[upstreams.raw]
url = "{raw}"
request_timeout = "5s"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "a"
hosts = ["a.test"]
upstream = "app"
auth = "none"
[[route]]
name = "raw"
path_prefix = "/raw"
upstream = "raw"
[[route]]
name = "ws"
path_prefix = "/ws"
upstream = "app"
cae = {{ signal_ip = true }}
{extra_routes}
[[route]]
name = "default"
upstream = "app"
auth = "none"
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

impl Env {
    async fn start(answer: Answer, server: &str, app: &str, extra_routes: &str) -> Env {
        let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
        let echo = EchoUpstream::start(listener().await).unwrap();
        let raw = RawUpstream::start(answer).await;
        let dir = tempfile::tempdir().unwrap();
        let c = certs(dir.path());
        let toml = config(
            &idp.issuer_url(),
            &echo.url(),
            &raw.url(),
            &c,
            server,
            app,
            extra_routes,
        );
        let h = Harness::start_in(dir, &toml).await;
        h.wait_ready().await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in cae_proxy::tls::load_certs(&c.ca).unwrap() {
            roots.add(cert).unwrap();
        }
        Env {
            idp,
            echo,
            raw,
            h,
            ca: Arc::new(roots),
        }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.h.proxy.addr(listener).unwrap()
    }

    /// A token for `sub`, issued a minute ago (so that a revocation made now covers it).
    fn token(&self, sub: &str, extra: Value) -> String {
        let mut claims = json!({"iat": cae_proxy::dev::now_secs() - 60});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.idp.mint(sub, claims)
    }

    async fn plain(&self) -> Wire {
        Wire::new(TcpStream::connect(self.addr("public")).await.unwrap())
    }

    /// A TLS session with the TLS listener that verified its certificate; ALPN offers `alpn`.
    async fn tls_stream(&self, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(self.ca.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.addr("tls")).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            alpn.first().copied(),
            "ALPN"
        );
        tls
    }

    async fn tls(&self) -> Wire {
        Wire::new(self.tls_stream(&[b"http/1.1"]).await)
    }

    async fn admin(&self, path: &str, body: Value) {
        let r = send(
            &client(),
            Method::POST,
            &self.h.admin_url(path),
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    }

    /// The `/metrics` value of one sample (`name{labels}`), if present.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = get(&client(), &self.h.admin_url("/metrics"), &[])
            .await
            .text();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("metrics parse");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }
}

fn status(m: &Option<Msg>) -> u16 {
    m.as_ref().map_or(0, Msg::status)
}

// ---------------------------------------------------------------------------------------------
// 1. Only WebSocket is upgraded

/// `Upgrade: h2c` (with `HTTP2-Settings`) and `Upgrade: foo/1` on an authenticated request: the
/// upstream (which would accept any upgrade) receives an ordinary request without `Upgrade` or
/// `HTTP2-Settings`, the client gets that ordinary answer, and a request without a token sent
/// next on the same connection is an ordinary request too — refused, never read by the upstream.
#[tokio::test]
async fn upgrades_other_than_websocket_are_stripped_and_never_tunnelled() {
    let env = Env::start(Answer::UpgradeWhenAsked, "", "", "").await;
    let token = env.token("alice", json!({}));
    for (offer, connection, extra) in [
        (
            "h2c",
            "Upgrade, HTTP2-Settings",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        ),
        ("foo/1", "Upgrade", ""),
    ] {
        let before = env.raw.seen().len();
        let mut c = env.plain().await;
        c.send(format!(
            "GET /raw/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: {connection}\r\nUpgrade: {offer}\r\n{extra}\r\n"
        ).as_bytes())
        .await;
        let first = c.response().await;
        // Inside a tunnel this would reach the upstream unauthenticated.
        c.send(b"GET /raw/anything HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        let second = c.response().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = env.raw.seen()[before..].to_vec();
        assert!(
            seen.iter().all(|s| !s.msg.target().contains("anything")),
            "{offer}: a request without a token reached the upstream: {seen:#?}"
        );
        assert_eq!(status(&first), 200, "{offer}: {first:?}");
        assert_eq!(first.as_ref().unwrap().body, b"plain");
        assert_eq!(status(&second), 401, "{offer}: {second:?}");
        assert_eq!(seen.len(), 1, "{offer}: {seen:#?}");
        let up = &seen[0].msg;
        assert_eq!(up.target(), "/raw/x");
        assert!(!seen[0].in_tunnel);
        for h in ["upgrade", "http2-settings"] {
            assert!(up.header(h).is_empty(), "{offer}: upstream got {h}: {up:?}");
        }
        assert!(
            up.header("connection")
                .iter()
                .all(|v| !v.to_ascii_lowercase().contains("upgrade")),
            "{offer}: {up:?}"
        );
    }
}

/// An upstream that answers `101` to a request that did not ask for an upgrade is not relayed as
/// a tunnel: the client gets `502`, and its next request (without a token) is refused by the
/// proxy, never read by the upstream.
#[tokio::test]
async fn an_unrequested_101_from_the_upstream_is_a_502_never_a_tunnel() {
    let env = Env::start(Answer::AlwaysSwitch, "", "", "").await;
    let token = env.token("alice", json!({}));
    for (offer, connection) in [("", ""), ("h2c", "Upgrade, HTTP2-Settings")] {
        let before = env.raw.seen().len();
        let mut c = env.plain().await;
        let upgrade = if offer.is_empty() {
            String::new()
        } else {
            format!("Connection: {connection}\r\nUpgrade: {offer}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
        };
        c.send(
            format!(
                "GET /raw/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n{upgrade}\r\n"
            )
            .as_bytes(),
        )
        .await;
        let first = c.response().await;
        c.send(b"GET /raw/anything HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        let second = c.response().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = env.raw.seen()[before..].to_vec();
        assert!(
            seen.iter().all(|s| !s.msg.target().contains("anything")),
            "{offer:?}: a request without a token reached the upstream: {seen:#?}"
        );
        assert_eq!(status(&first), 502, "{offer:?}: {first:?}");
        assert_eq!(first.unwrap().json()["error"], "upstream_unavailable");
        // The connection is either still HTTP (the request is refused) or closed.
        assert!(matches!(status(&second), 0 | 401), "{offer:?}: {second:?}");
    }
}

/// WebSocket is upgraded by default; `upgrades = []` turns upgrades off for a route (the request
/// goes upstream as an ordinary one); any token other than `websocket` in the list is a
/// configuration error with its path.
#[tokio::test]
async fn websocket_upgrades_follow_the_route_allow_list() {
    let env = Env::start(
        Answer::UpgradeWhenAsked,
        "",
        "",
        "[[route]]\nname = \"noup\"\npath_prefix = \"/noup\"\nupstream = \"app\"\nupgrades = []\n",
    )
    .await;
    let token = env.token("alice", json!({}));
    let ws = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    };
    let mut c = env.plain().await;
    c.send(ws("/ws/chat").as_bytes()).await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status(), 101, "{r:?}");
    c.send(b"hello").await;
    assert_eq!(c.take(5).await.as_deref(), Some(&b"hello"[..]));

    // Of several offered protocols only the allowed one goes upstream.
    let mut c = env.plain().await;
    c.send(
        ws("/raw/chat")
            .replace("Upgrade: websocket", "Upgrade: websocket, h2c")
            .as_bytes(),
    )
    .await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status(), 101, "{r:?}");
    let seen = env.raw.wait_for(1).await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].msg.header("upgrade"), ["websocket"]);

    let mut c = env.plain().await;
    c.send(ws("/noup/chat").as_bytes()).await;
    let r = c.response().await.expect("answer");
    assert_eq!(r.status(), 200, "{r:?}");
    let echo = r.json();
    assert!(echo["headers"].get("upgrade").is_none(), "{echo}");

    let bad = config(
        "https://idp.test",
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        &Certs {
            ca: "ca.pem".into(),
            cert: "/dev/null".into(),
            key: "/dev/null".into(),
            client_cert: "/dev/null".into(),
            client_key: "/dev/null".into(),
        },
        "",
        "",
        "[[route]]\nname = \"h2c\"\nupstream = \"app\"\nupgrades = [\"websocket\", \"h2c\"]\n",
    );
    let errs = cae_proxy::config::Config::parse(&bad, std::path::Path::new("."))
        .unwrap_err()
        .0;
    assert!(
        errs.iter().any(|e| e.path == "route[3].upgrades[1]"
            && e.message
                .starts_with("\"h2c\": only \"websocket\" can be upgraded to")
            && e.position.is_some()),
        "{errs:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. An upgrade request with a body

/// WebSocket upgrade headers with a body (`Content-Length` or chunked): `400` at once, nothing
/// sent upstream (neither to the recording upstream, which would wait for the body, nor to the
/// echo upstream, which would switch at once and take the body's bytes as tunnel data), the
/// connection closed. Without a body (`Content-Length: 0`) the upgrade goes through.
#[tokio::test]
async fn an_upgrade_request_with_a_body_is_refused_before_the_upstream() {
    let env = Env::start(Answer::AfterBody, "", "request_timeout = \"3s\"", "").await;
    let token = env.token("alice", json!({}));
    let upgrade = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    };
    for path in ["/raw/chat", "/ws/chat"] {
        for framing in [
            "Content-Length: 38\r\n\r\n{\"a\":\"0123456789012345678901234567\"}\r\n",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let before = (env.echo.requests(), env.raw.seen().len());
            let mut c = env.plain().await;
            let t0 = Instant::now();
            c.send(format!("{}{framing}", upgrade(path)).as_bytes())
                .await;
            let r = c.response().await;
            let took = t0.elapsed();
            assert_eq!(status(&r), 400, "{path} {framing:?}: {r:?} after {took:?}");
            let r = r.unwrap();
            assert_eq!(r.json()["error"], "bad_request", "{r:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            assert_eq!(r.header("connection"), ["close"], "{r:?}");
            assert!(c.closed_within(Duration::from_secs(2)).await);
            assert_eq!(
                (env.echo.requests(), env.raw.seen().len()),
                before,
                "{path} {framing:?}: forwarded"
            );
        }
    }
    let mut c = env.plain().await;
    c.send(format!("{}Content-Length: 0\r\n\r\n", upgrade("/ws/chat")).as_bytes())
        .await;
    assert_eq!(status(&c.response().await), 101);
    c.send(b"hello").await;
    assert_eq!(c.take(5).await.as_deref(), Some(&b"hello"[..]));
}

// ---------------------------------------------------------------------------------------------
// 3. Tunnels close when their token stops being good

/// A WebSocket tunnel through `/ws` for `token`, with one round trip through it.
async fn open_tunnel(env: &Env, token: &str) -> Wire {
    let mut c = env.plain().await;
    c.send(format!("GET /ws/chat HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
        .await;
    assert_eq!(status(&c.response().await), 101);
    assert!(echoes(&mut c).await, "a fresh tunnel carries bytes");
    c
}

/// Whether the tunnel still carries a round trip.
async fn echoes(c: &mut Wire) -> bool {
    if c.s.write_all(b"ping").await.is_err() {
        return false;
    }
    let got = tokio::time::timeout(Duration::from_secs(2), c.take(4)).await;
    matches!(got, Ok(Some(b)) if b == b"ping")
}

/// A revocation, a block or an IP binding that refuses the tunnel's token closes the tunnel
/// within a second (the re-run of the request path's decision); a change about someone else
/// leaves it open. Each close is counted by reason, and the open-tunnel gauge returns to 0.
#[tokio::test]
async fn a_tunnel_closes_within_a_second_of_a_revocation_block_or_binding_change() {
    let env = Env::start(Answer::AfterBody, "", "", "").await;
    let iss = env.idp.issuer_url();
    let cases = [
        (
            "/admin/revoke",
            json!({"key": {"type": "subject", "iss": iss, "sub": "u-revoked"}}),
            "u-revoked",
            "revoked",
        ),
        (
            "/admin/block",
            json!({"key": {"type": "subject", "iss": iss, "sub": "u-blocked"}}),
            "u-blocked",
            "account_blocked",
        ),
        (
            "/admin/bind",
            json!({"key": {"type": "session", "iss": iss, "sid": "s-u-bound"}, "nets": ["10.0.0.0/8"]}),
            "u-bound",
            "ip_not_allowed",
        ),
    ];
    for (path, body, sub, reason) in cases {
        let token = env.token(sub, json!({"sid": format!("s-{sub}")}));
        let mut c = open_tunnel(&env, &token).await;
        assert_eq!(env.metric("cae_tunnels_open", &[]).await, Some(1.0));
        // A change about someone else: the tunnel stays.
        env.admin(
            path,
            body.to_string()
                .replace(sub, "someone-else")
                .parse()
                .unwrap(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            echoes(&mut c).await,
            "{path}: closed by another subject's change"
        );
        let t0 = Instant::now();
        env.admin(path, body.clone()).await;
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "{path}: the tunnel is still open 3 s after the change"
        );
        let took = t0.elapsed();
        println!("{path}: the tunnel closed {took:?} after the admin call was sent");
        assert!(
            took <= Duration::from_secs(1),
            "{path}: closed after {took:?}"
        );
        // The same token on a new request is refused the same way.
        let r = get(
            &client(),
            &env.h.url("public", "/ws/x"),
            &[
                ("host", "app.test"),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
        assert_eq!(
            env.metric("cae_tunnels_closed_total", &[("reason", reason)])
                .await,
            Some(1.0),
            "{path}"
        );
        assert_eq!(env.metric("cae_tunnels_open", &[]).await, Some(0.0));
    }
}

/// A tunnel closes when its token expires (at its `exp`), not later.
#[tokio::test]
async fn a_tunnel_closes_when_its_token_expires() {
    let env = Env::start(Answer::AfterBody, "", "", "").await;
    let exp = cae_proxy::dev::now_secs() + 3;
    let token = env.token("u-short", json!({"exp": exp}));
    let mut c = open_tunnel(&env, &token).await;
    let closed = c.closed_within(Duration::from_secs(8)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(closed, "the tunnel outlived its token by 5 s");
    assert!(
        now >= exp as f64 && now <= exp as f64 + 2.0,
        "closed at {now}, the token expired at {exp}"
    );
    assert_eq!(
        env.metric("cae_tunnels_closed_total", &[("reason", "token_expired")])
            .await,
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Userinfo in the request target

/// An HTTP/2 request over `conn` (h2c with prior knowledge, or TLS with ALPN `h2`): status and
/// body.
async fn h2_request(
    conn: impl Io + 'static,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Vec<u8>), String> {
    let (send, driver) = h2::client::handshake(conn)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
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
    Ok((status, bytes))
}

/// `http://u:p@a.test/x` as an HTTP/1.1 absolute-form target (cleartext and TLS), and
/// `:authority: u:p@a.test` over h2c and over TLS with ALPN `h2`: `400` before routing (RFC 9110
/// §4.2.4, RFC 9113 §8.3.1), nothing forwarded; without the userinfo the same request is routed
/// to the `a.test` route.
#[tokio::test]
async fn userinfo_in_the_request_target_is_refused_on_every_transport() {
    let env = Env::start(Answer::AfterBody, "", "", "").await;
    for userinfo in ["u:p@", "u@", "@"] {
        for tls in [false, true] {
            let before = env.echo.requests();
            let mut c = if tls {
                env.tls().await
            } else {
                env.plain().await
            };
            c.send(
                format!("GET http://{userinfo}a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let r = c.response().await;
            assert_eq!(status(&r), 400, "HTTP/1.1 tls={tls} {userinfo}: {r:?}");
            assert_eq!(r.unwrap().json()["error"], "ambiguous_request");
            assert_eq!(env.echo.requests(), before, "{userinfo}: forwarded");
        }
        for tls in [false, true] {
            let before = env.echo.requests();
            let scheme = if tls { "https" } else { "http" };
            let uri = format!("{scheme}://{userinfo}a.test/x");
            let got = if tls {
                h2_request(env.tls_stream(&[b"h2"]).await, &uri, &[]).await
            } else {
                h2_request(
                    TcpStream::connect(env.addr("public")).await.unwrap(),
                    &uri,
                    &[],
                )
                .await
            };
            let (st, body) = got.unwrap_or_else(|e| panic!("h2 tls={tls} {userinfo}: {e}"));
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            assert_eq!(
                st,
                StatusCode::BAD_REQUEST,
                "h2 tls={tls} {userinfo}: {body}"
            );
            assert_eq!(body["error"], "ambiguous_request");
            assert_eq!(env.echo.requests(), before, "h2 {userinfo}: forwarded");
        }
    }
    // The same targets without userinfo reach the `a.test` route.
    let mut c = env.plain().await;
    c.send(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-forwarded-host"], "a.test");
    let (st, _) = h2_request(env.tls_stream(&[b"h2"]).await, "https://a.test/x", &[])
        .await
        .unwrap();
    assert_eq!(st, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 5. Transfer codings, body limits and body timeouts

/// A request to the recording upstream with a token, head only (the caller sends the body).
fn post_head(path: &str, token: &str, framing: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n{framing}\r\n\r\n")
}

/// `Transfer-Encoding` other than exactly `chunked` (another coding before it, two field lines):
/// `501` with the JSON body (RFC 9112 §6.1), nothing forwarded, connection closed. `chunked` in
/// any case passes, with the body.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let env = Env::start(Answer::AfterBody, "", "", "").await;
    let token = env.token("alice", json!({}));
    for te in [
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ] {
        let before = env.raw.seen().len();
        let mut c = env.plain().await;
        c.send(
            format!(
                "{}5\r\nhello\r\n0\r\n\r\n",
                post_head("/raw/up", &token, te)
            )
            .as_bytes(),
        )
        .await;
        let r = c.response().await;
        assert_eq!(status(&r), 501, "{te:?}: {r:?}");
        let r = r.unwrap();
        assert_eq!(r.json()["error"], "unsupported_transfer_coding", "{r:?}");
        assert_eq!(r.header("connection"), ["close"], "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(env.raw.seen().len(), before, "{te:?}: forwarded");
    }
    let mut c = env.plain().await;
    c.send(
        format!(
            "{}5\r\nhello\r\n0\r\n\r\n",
            post_head("/raw/up", &token, "Transfer-Encoding: Chunked")
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status(&c.response().await), 200);
    let seen = env.raw.wait_for(1).await;
    assert_eq!(seen.last().unwrap().msg.body, b"hello");
    assert!(seen.last().unwrap().msg.complete);
}

/// A chunked body that grows past `max_request_body`: `413` with the JSON body, and the upstream
/// request is aborted (the upstream reads an incomplete body, never a complete request).
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_the_upstream_request_aborted() {
    let env = Env::start(Answer::AfterBody, "max_request_body = 1000", "", "").await;
    let token = env.token("alice", json!({}));
    let mut c = env.plain().await;
    let chunk = format!("258\r\n{}\r\n", "a".repeat(600));
    c.send(post_head("/raw/up", &token, "Transfer-Encoding: chunked").as_bytes())
        .await;
    c.send(chunk.as_bytes()).await;
    // The upstream has the first chunk before the second one breaks the limit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(format!("{chunk}{chunk}0\r\n\r\n").as_bytes()).await;
    let r = c.response().await;
    assert_eq!(status(&r), 413, "{r:?}");
    let r = r.unwrap();
    assert_eq!(r.json()["error"], "body_too_large", "{r:?}");
    assert_eq!(r.header("connection"), ["close"], "{r:?}");
    let seen = env.raw.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    let up = &seen[0].msg;
    assert!(!up.complete, "the upstream read a complete request: {up:?}");
    assert!(up.body.len() <= 1000, "{} bytes forwarded", up.body.len());
}

/// `[server]` of the body-timeout tests.
const SLOW_BODIES: &str = "body_timeout = \"1s\"\nmin_body_rate = 100";

/// A body that stops arriving before any answer: `408` with the JSON body after
/// `body_timeout` (1 s here), the connection closed, the upstream request aborted.
#[tokio::test]
async fn a_stalled_body_is_408_and_the_upstream_request_aborted() {
    let env = Env::start(Answer::AfterBody, SLOW_BODIES, "", "").await;
    let token = env.token("alice", json!({}));
    let mut c = env.plain().await;
    let t0 = Instant::now();
    c.send(
        format!(
            "{}0123456789",
            post_head("/raw/up", &token, "Content-Length: 100")
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await;
    let took = t0.elapsed();
    assert_eq!(status(&r), 408, "{r:?} after {took:?}");
    let r = r.unwrap();
    assert_eq!(r.json()["error"], "body_timeout", "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(c.closed_within(Duration::from_secs(2)).await);
    let seen = env.raw.wait_for(1).await;
    assert!(!seen[0].msg.complete, "{seen:?}");
    assert_eq!(seen[0].msg.body, b"0123456789");
    // A zero window would refuse every body: a configuration error.
    let err = cae_proxy::config::Config::parse(
        "[server]\nbody_timeout = \"0s\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "server.body_timeout (line 2, column 16): must be longer than 0s"
    );
}

/// Twenty clients trickling their bodies (a byte every 200 ms, under `min_body_rate` = 100 B/s)
/// are each answered `408` within a few `body_timeout` windows, their upstream requests aborted,
/// while a normal client is served.
#[tokio::test]
async fn slow_drip_bodies_are_cut_at_the_minimum_rate_while_others_are_served() {
    let env = Env::start(Answer::AfterBody, SLOW_BODIES, "", "").await;
    let token = env.token("alice", json!({}));
    let mut drips = Vec::new();
    for _ in 0..20 {
        let mut c = env.plain().await;
        let head = post_head("/raw/up", &token, "Content-Length: 1000");
        drips.push(tokio::spawn(async move {
            let t0 = Instant::now();
            c.send(head.as_bytes()).await;
            let answer = async {
                loop {
                    if c.s.write_all(b"x").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if !c.buf.is_empty() || t0.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    // Pick up an answer that arrived meanwhile, without blocking the drip.
                    let mut b = [0u8; 4096];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(1), c.s.read(&mut b)).await
                    {
                        if n == 0 {
                            break;
                        }
                        c.buf.extend_from_slice(&b[..n]);
                    }
                }
                c.response().await
            };
            (answer.await, t0.elapsed())
        }));
    }
    // Meanwhile a normal request is served.
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        get(
            &client(),
            &env.h.url("public", "/x"),
            &[("host", "app.test")],
        ),
    )
    .await
    .expect("a normal client is served while the slow ones hold connections");
    assert_eq!(r.status, StatusCode::OK);
    for d in drips {
        let (r, took) = d.await.unwrap();
        assert_eq!(status(&r), 408, "{r:?} after {took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
    let seen = env.raw.wait_for(20).await;
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| !s.msg.complete), "{seen:?}");
}

/// A body that stalls after the upstream started answering (the echo upstream streams the body
/// back): after `body_timeout` the upstream request is aborted and so is the client's response
/// (the connection closes without the last chunk).
#[tokio::test]
async fn a_body_that_stalls_mid_response_aborts_both_sides() {
    let env = Env::start(Answer::AfterBody, SLOW_BODIES, "", "").await;
    let mut c = env.plain().await;
    c.send(b"POST /echo-body HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    let head = tokio::time::timeout(Duration::from_secs(5), c.head())
        .await
        .expect("response head")
        .expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let t0 = Instant::now();
    let (body, complete) = tokio::time::timeout(Duration::from_secs(5), c.body(&head, true))
        .await
        .expect("the response is cut off within 5 s");
    assert!(!complete, "the response completed: {body:?}");
    assert_eq!(body, b"hello");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 6. Keep-alive lasts `idle_timeout`; the head timeout runs from a head's first byte

/// With `header_read_timeout` 1 s and `idle_timeout` 3 s, over cleartext HTTP/1.1 and over TLS:
/// a keep-alive connection idle for 2 s still carries a POST; a connection that sent half a head
/// is cut about 1 s after that head's first byte; an idle connection is closed after about 3 s.
#[tokio::test]
async fn keep_alive_lasts_idle_timeout_and_the_head_timeout_counts_from_the_first_byte() {
    let env = Env::start(
        Answer::AfterBody,
        "header_read_timeout = \"1s\"\nidle_timeout = \"3s\"",
        "",
        "",
    )
    .await;
    for tls in [false, true] {
        let connect = || async {
            if tls {
                env.tls().await
            } else {
                env.plain().await
            }
        };
        // Reused after 2 s of idleness (more than the head timeout, less than the idle one).
        let mut c = connect().await;
        c.send(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert_eq!(status(&c.response().await), 200, "tls={tls}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.send(b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nhi")
            .await;
        let r = c.response().await;
        assert_eq!(
            status(&r),
            200,
            "tls={tls}: the idle connection was closed: {r:?}"
        );
        assert_eq!(r.unwrap().json()["body_bytes"], 2);

        // Half a head, 1.5 s into the connection's idleness: cut about 1 s after its first byte.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.send(b"GET /x HTTP/1.1\r\nHost: app.test\r\nX-A: ").await;
        let t0 = Instant::now();
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "tls={tls}: half a head held for 5 s"
        );
        let took = t0.elapsed();
        println!("tls={tls}: half a head cut after {took:?}");
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_millis(1700),
            "tls={tls}: cut after {took:?}"
        );

        // An idle keep-alive connection is closed after idle_timeout, not before.
        let mut c = connect().await;
        c.send(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
        assert_eq!(status(&c.response().await), 200);
        let t0 = Instant::now();
        assert!(c.closed_within(Duration::from_secs(6)).await, "tls={tls}");
        let took = t0.elapsed();
        println!("tls={tls}: idle connection closed after {took:?}");
        assert!(
            took >= Duration::from_millis(2900) && took <= Duration::from_millis(4500),
            "tls={tls}: idle connection closed after {took:?}"
        );

        // A new connection must send its first head within header_read_timeout.
        let mut c = connect().await;
        let t0 = Instant::now();
        assert!(c.closed_within(Duration::from_secs(5)).await, "tls={tls}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took <= Duration::from_millis(1700),
            "tls={tls}: a silent new connection closed after {took:?}"
        );
    }
    // HTTP/2 connections have no request heads to time: an idle h2 connection lives past the
    // head timeout and serves another request.
    for tls in [false, true] {
        let io: Box<dyn Io> = if tls {
            Box::new(env.tls_stream(&[b"h2"]).await)
        } else {
            Box::new(TcpStream::connect(env.addr("public")).await.unwrap())
        };
        let (send, driver) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(async move {
            let _ = driver.await;
        });
        let scheme = if tls { "https" } else { "http" };
        for _ in 0..2 {
            let mut s = send.clone().ready().await.expect("h2 connection open");
            let req = http::Request::get(format!("{scheme}://app.test/x"))
                .body(())
                .unwrap();
            let (resp, _) = s.send_request(req, true).unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), resp)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "h2 tls={tls}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
}
