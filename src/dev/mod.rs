//! Development tooling, fenced off in one place: a dev identity provider, a dev SSF transmitter, an
//! echo upstream and signing keys (used by the demo and by tests), the demo itself, and the fuzz
//! target bodies.
//!
//! None of this is meant for production. Every server is started on a [`tokio::net::TcpListener`]
//! that the caller binds (usually `127.0.0.1:0`), serves HTTP/1.1 and HTTP/2 (prior knowledge) via
//! the hyper-util auto builder, exposes `addr()`, and stops on `shutdown()` or when dropped.
//!
//! - [`keys`]: fresh RS256 / ES256 signing keys, their public JWKs, and token forging helpers.
//! - [`issuer`]: [`DevIssuer`], an OIDC-like issuer (discovery, JWKS, `/token`, claims requests).
//! - [`transmitter`]: [`DevTransmitter`], a Shared Signals transmitter (push and poll delivery).
//! - [`upstream`]: [`EchoUpstream`], an upstream that echoes what it received.
//! - [`emit`]: `POST /dev/events` of the transmitter: a short JSON description → a SET payload.
//! - [`challenge_parser`]: the one `WWW-Authenticate` parser (RFC 9110 §11), strict or tolerant.
//! - [`demo`]: `cae-proxy demo` (narrated CAE walkthrough) and `cae-proxy dev issuer|transmitter`.
//! - `fuzz` (hidden): the fuzz target bodies run by `fuzz/` and `tests/fuzz_corpus.rs`.

pub mod challenge_parser;
pub mod demo;
pub mod emit;
/// Fuzz target bodies (`fuzz/`, `tests/fuzz_corpus.rs`); not part of the API.
#[doc(hidden)]
pub mod fuzz;
pub mod issuer;
pub mod keys;
pub mod subjects;
pub mod transmitter;
pub mod upstream;

pub use issuer::{DevIssuer, IssuerOptions};
pub use keys::{KeyAlg, SigningKey};
pub use transmitter::{DevTransmitter, TransmitterOptions};
pub use upstream::EchoUpstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Boxed error used by the response bodies of the dev servers.
pub use crate::errors::BoxError;

/// Response body type of the dev servers (full, streamed or echoed bodies).
pub type DevBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Errors of the development servers and helpers.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Socket error (reading the listener address, connecting).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Key generation or signing failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// jsonwebtoken refused a key or a token.
    #[error("jwt error: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// JSON (de)serialisation failed.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// A request could not be built or sent, or its answer not read.
    #[error("http error: {0}")]
    Http(String),
    /// Input given to a helper was not acceptable.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Handle on a running dev server: its address and its shutdown switch.
///
/// Dropping the handle stops the accept loop and closes every open connection.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl ServerHandle {
    /// Address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes open connections (in-flight requests are dropped).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Resolves when `rx` says shut down, or when its sender is gone.
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serves `handler` on `listener` (HTTP/1.1 with upgrades, and HTTP/2 with extended CONNECT)
/// until the returned handle is dropped or shut down. The handler gets the peer address.
pub fn serve<H, Fut>(listener: TcpListener, handler: H) -> Result<ServerHandle, DevError>
where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<DevBody>> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut accept_rx = rx.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown_signalled(&mut accept_rx) => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(%err, "dev server accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let mut conn_rx = rx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fut = handler(req, peer);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(err) = res {
                            tracing::debug!(%err, "dev server connection ended with an error");
                        }
                    }
                    _ = shutdown_signalled(&mut conn_rx) => {}
                }
            });
        }
    });
    Ok(ServerHandle { addr, shutdown: tx })
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Random identifier: `n` random bytes as lower-case hex.
pub fn random_id(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> DevBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An empty body.
pub fn empty_body() -> DevBody {
    full_body(Bytes::new())
}

/// A response with the given status, content type and body.
pub fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<DevBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<DevBody> {
    response(status, "application/json", value.to_string())
}

/// A response without a body.
pub fn status_response(status: StatusCode) -> Response<DevBody> {
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = status;
    resp
}

/// Reads a request body whole, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, DevError> {
    let limited = http_body_util::Limited::new(body, limit);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| DevError::Http(format!("reading request body: {e}")))
}

/// Parses a query string into (name, value) pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// First value of a query parameter.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Sends one HTTP/1.1 request with a fresh hyper-util client (plain `http` only) and reads the
/// whole answer: `(status, headers, body)`.
pub async fn http_request(
    method: hyper::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<(u16, hyper::HeaderMap, Bytes), DevError> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder
        .body(Full::new(body.into()))
        .map_err(|e| DevError::Http(format!("building request to {url}: {e}")))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| DevError::Http(format!("request to {url}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| DevError::Http(format!("reading answer from {url}: {e}")))?
        .to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}
