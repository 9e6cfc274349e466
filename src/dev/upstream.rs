//! `EchoUpstream`: a demo and test upstream that answers every request with a JSON description of
//! what it received, plus a few special paths (slow answers, chosen statuses, large streamed
//! bodies, request body echo, WebSocket-style upgrades).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use super::{
    json_response, query_param, response, status_response, BoxError, DevBody, DevError,
    ServerHandle,
};

/// Chunk size of `/stream` bodies.
const STREAM_CHUNK: usize = 64 * 1024;
/// Longest `/slow` delay honoured.
const MAX_SLOW: Duration = Duration::from_secs(120);
/// RFC 6455 §1.3 GUID appended to `Sec-WebSocket-Key`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Inner {
    requests: AtomicUsize,
    last_headers: Mutex<HeaderMap>,
}

/// An upstream that echoes what it receives.
pub struct EchoUpstream {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl std::fmt::Debug for EchoUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoUpstream")
            .field("addr", &self.server.addr())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(WS_GUID.as_bytes());
    STANDARD.encode(ctx.finish().as_ref())
}

/// A body of `remaining` bytes sent in 64 KiB chunks, generated on the fly.
struct SizedStream {
    chunk: Bytes,
    remaining: u64,
}

impl Body for SizedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(self.chunk.len());
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(0..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// All headers, lower-case names, repeated ones joined with `, `.
fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(name.as_str().to_string(), Value::String(joined));
    }
    Value::Object(out)
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Echoes raw bytes on an upgraded connection until either side closes.
fn spawn_echo(on_upgrade: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                if let Err(err) = tokio::io::copy(&mut r, &mut w).await {
                    tracing::debug!(%err, "echo upstream: upgraded connection ended");
                }
            }
            Err(err) => tracing::debug!(%err, "echo upstream: upgrade failed"),
        }
    });
}

impl Inner {
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<DevBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_headers) = req.headers().clone();

        // HTTP/1.1 upgrade to websocket.
        if header_has_token(req.headers(), CONNECTION, "upgrade")
            && header_has_token(req.headers(), UPGRADE, "websocket")
        {
            let Some(key) = req
                .headers()
                .get("sec-websocket-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
            else {
                return response(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "Sec-WebSocket-Key missing\n",
                );
            };
            spawn_echo(hyper::upgrade::on(&mut req));
            let mut resp = status_response(StatusCode::SWITCHING_PROTOCOLS);
            let h = resp.headers_mut();
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(v) = HeaderValue::from_str(&websocket_accept(&key)) {
                h.insert("sec-websocket-accept", v);
            }
            return resp;
        }
        // HTTP/2 extended CONNECT (RFC 8441).
        if req.method() == Method::CONNECT
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        {
            spawn_echo(hyper::upgrade::on(&mut req));
            return status_response(StatusCode::OK);
        }

        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);

        if path == "/echo-body" {
            let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return resp;
        }
        if path == "/stream" {
            let bytes = query_param(query.as_deref(), "bytes")
                .and_then(|b| b.parse::<u64>().ok())
                .unwrap_or(0);
            // Drain the request body first so the connection stays reusable.
            let _ = count_body(req.into_body()).await;
            let body = SizedStream {
                chunk: Bytes::from(vec![b'x'; STREAM_CHUNK]),
                remaining: bytes,
            };
            let mut resp = Response::new(body.boxed());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return resp;
        }

        let mut status = StatusCode::OK;
        if path == "/slow" {
            let ms = query_param(query.as_deref(), "ms")
                .and_then(|m| m.parse::<u64>().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
        } else if let Some(code) = path.strip_prefix("/status/") {
            match code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(s) if s.as_u16() >= 200 => status = s,
                _ => {
                    return response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "status must be 200-999\n",
                    )
                }
            }
        }

        let method = req.method().to_string();
        let headers = headers_json(req.headers());
        let body_bytes = match count_body(req.into_body()).await {
            Ok(n) => n,
            Err(e) => {
                return response(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("reading body: {e}\n"),
                )
            }
        };
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return status_response(status);
        }
        json_response(
            status,
            &json!({
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "body_bytes": body_bytes,
            }),
        )
    }
}

/// Reads a body to its end, counting bytes and keeping at most one chunk.
async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

impl EchoUpstream {
    /// Starts the upstream on `listener` (HTTP/1.1 and HTTP/2).
    pub fn start(listener: TcpListener) -> Result<EchoUpstream, DevError> {
        let inner = Arc::new(Inner {
            requests: AtomicUsize::new(0),
            last_headers: Mutex::new(HeaderMap::new()),
        });
        let handler_inner = inner.clone();
        let server = super::serve(listener, move |req, _peer: SocketAddr| {
            handler_inner.clone().handle(req)
        })?;
        Ok(EchoUpstream { inner, server })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.addr().port())
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Headers of the last request received.
    pub fn last_headers(&self) -> HeaderMap {
        lock(&self.inner.last_headers).clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dev::http_request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> EchoUpstream {
        EchoUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap()
    }

    #[test]
    fn websocket_accept_matches_rfc6455_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn echoes_request() {
        let up = start().await;
        let (s, _, b) = http_request(
            Method::POST,
            &format!("{}/a/b?x=1", up.url()),
            &[("X-Test", "one"), ("x-test", "two")],
            "hello",
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["headers"]["x-test"], "one, two");
        assert_eq!(v["body_bytes"], 5);
        assert_eq!(up.requests(), 1);
        assert_eq!(up.last_headers().get_all("x-test").iter().count(), 2);
    }

    #[tokio::test]
    async fn special_paths() {
        let up = start().await;
        let (s, _, _) = http_request(Method::GET, &format!("{}/status/418", up.url()), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 418);
        let (s, _, b) = http_request(Method::GET, &format!("{}/status/204", up.url()), &[], "")
            .await
            .unwrap();
        assert_eq!((s, b.len()), (204, 0));
        let (s, _, b) = http_request(
            Method::GET,
            &format!("{}/stream?bytes=200000", up.url()),
            &[],
            "",
        )
        .await
        .unwrap();
        assert_eq!((s, b.len()), (200, 200_000));
        let payload = vec![7u8; 300_000];
        let (s, _, b) = http_request(
            Method::POST,
            &format!("{}/echo-body", up.url()),
            &[],
            payload.clone(),
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        assert_eq!(b.as_ref(), payload.as_slice());
        let start = std::time::Instant::now();
        let (s, _, _) = http_request(Method::GET, &format!("{}/slow?ms=150", up.url()), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 200);
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn websocket_upgrade_echoes_bytes() {
        let up = start().await;
        let mut tcp = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
        tcp.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"));
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
        tcp.write_all(b"ping-bytes").await.unwrap();
        let mut echo = [0u8; 10];
        tcp.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping-bytes");
    }

    #[tokio::test]
    async fn http2_prior_knowledge() {
        let up = start().await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<http_body_util::Full<Bytes>>();
        let resp = client
            .request(
                Request::get(format!("{}/h2", up.url()))
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn transmitter_push_sends_set_headers() {
        let up = start().await;
        let t = crate::dev::DevTransmitter::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            crate::dev::TransmitterOptions::default(),
        )
        .unwrap();
        let set = t.sign_set(json!({"events": {}}));
        let (s, _, body) = t
            .push(&format!("{}/signals", up.url()), Some("Bearer x"), &set)
            .await
            .unwrap();
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["headers"]["content-type"], "application/secevent+jwt");
        assert_eq!(v["headers"]["accept"], "application/json");
        assert_eq!(v["headers"]["authorization"], "Bearer x");
        assert_eq!(v["body_bytes"], set.len());
    }
}
