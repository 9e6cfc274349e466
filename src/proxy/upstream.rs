//! The only place that dials upstreams: pooled hyper-util clients, one per upstream definition and
//! worker (`server::workers`), kept across reloads; connect, response-head and pool-idle timeouts.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::body::BodyError;
use crate::config::Upstream;
use crate::reply::BoxedBody;
use crate::tls::{self, TlsError};

/// Why forwarding failed, classified by side (client fault 4xx, upstream fault 502/504).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the request body exceeds the limit")]
    BodyTooLarge,
    /// The client's body stalled or trickled below `server.min_body_rate`
    /// (`proxy::body::Paced`); the upstream request was aborted.
    #[error("the request body arrived too slowly")]
    BodyTimeout(#[source] BodyError),
    #[error("the upstream connection failed")]
    Upstream(#[source] hyper_util::client::legacy::Error),
    /// A 101 to a protocol the request did not offer: never relayed as a tunnel.
    #[error("the upstream switched protocols to one the request did not offer")]
    UnofferedSwitch,
    /// The client's request body broke off or was malformed (bad chunked framing, oversize
    /// trailers) while it was being forwarded: the client's fault, not the upstream's.
    #[error("the request body could not be read")]
    ClientBody(#[source] hyper_util::client::legacy::Error),
}

impl ForwardError {
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) => "connect",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::BodyTooLarge => "body_too_large",
            ForwardError::BodyTimeout(_) => "body_timeout",
            ForwardError::Upstream(_) | ForwardError::UnofferedSwitch => "protocol",
            ForwardError::ClientBody(_) => "client_body",
        }
    }
}

/// A pooled client for one upstream definition.
pub struct UpstreamClient {
    pub cfg: Upstream,
    /// The parts of every target URI and the `Host` header, built once instead of per request.
    scheme: Scheme,
    /// The upstream's own authority (traces name it).
    pub authority: Option<Authority>,
    pub host: HeaderValue,
    /// One pool per worker, indexed by `server::workers::index()`: a connection's task runs on
    /// the worker that dialled it, and only that worker's requests use it.
    clients: Box<[Client<Pinned, BoxedBody>]>,
}

/// The authority of every target URI: the client's pool is keyed by scheme and authority and
/// hashes the authority byte by byte (SipHash, twice per request: checkout and return), which
/// cost ≈ 1,500 instructions per request with `127.0.0.1:8080`. One client serves one upstream,
/// so a one-byte stand-in names its only pool entry just as well; [`Pinned`] dials the real
/// address. The upstream never sees it: HTTP/1 requests go out in origin form, with the `Host`
/// header set from the upstream URL.
const POOL_KEY: &str = "u";

/// The connector of one upstream: ignores the stand-in authority it is asked for and dials the
/// upstream's own URL (TLS name and all). The client clones its connector for every request
/// (checkout races a lazy connect), so the connector and URL sit behind one `Arc`: one reference
/// count instead of one per `Arc` inside the TLS connector and the URL.
#[derive(Clone)]
struct Pinned(Arc<(Https, http::Uri)>);

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

impl Service<http::Uri> for Pinned {
    type Response = <Https as Service<http::Uri>>::Response;
    type Error = <Https as Service<http::Uri>>::Error;
    type Future = <Https as Service<http::Uri>>::Future;

    /// Always ready, as the connector it wraps: an `HttpConnector` with its default resolver
    /// (`GaiResolver`, and `hyper-rustls` around it) has nothing to wait for before a call.
    /// Another resolver would have to be polled here.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _stand_in: http::Uri) -> Self::Future {
        let (connector, dst) = &*self.0;
        connector.clone().call(dst.clone())
    }
}

/// `Host` for an upstream URL: its host, and its port unless it is the scheme's default.
fn host_header(url: &http::Uri) -> HeaderValue {
    let host = url.host().unwrap_or_default();
    let default_port = match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let text = match url.port_u16() {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl UpstreamClient {
    /// The client of `cfg`, with one pool for each of `workers` workers (at least one).
    pub fn new(cfg: &Upstream, workers: usize) -> Result<UpstreamClient, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let tls = tls::client_config(
            cfg.ca.as_deref(),
            cfg.client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
        )?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let connector = Pinned(Arc::new((https, cfg.url.clone())));
        let clients = (0..workers.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(cfg.idle_timeout)
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(1024)
                    .build(connector.clone())
            })
            .collect();
        Ok(UpstreamClient {
            cfg: cfg.clone(),
            scheme: cfg.url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: cfg.url.authority().cloned(),
            host: host_header(&cfg.url),
            clients,
        })
    }

    /// The URI to hand the client for `pq`: the upstream's scheme and the pool's stand-in
    /// authority ([`POOL_KEY`]; [`Pinned`] dials the real one).
    pub fn target(&self, pq: http::uri::PathAndQuery) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(Authority::from_static(POOL_KEY))
            .path_and_query(pq)
            .build()
    }

    /// Sends the request and waits for the response head within the request timeout.
    pub async fn send(&self, req: Request<BoxedBody>) -> Result<Response<Incoming>, ForwardError> {
        let timeout = self.cfg.request_timeout;
        let pools = &self.clients;
        let client = &pools[crate::server::workers::index() % pools.len()];
        match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(ForwardError::Timeout(timeout)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(classify(e)),
        }
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> ForwardError {
    let chain = || std::iter::successors(std::error::Error::source(&e), |s| s.source());
    // Our own verdict on the body first: it sits under hyper's "user body" error.
    if let Some(b) = chain().find_map(|s| s.downcast_ref::<BodyError>()) {
        return match b {
            BodyError::TooLarge(_) => ForwardError::BodyTooLarge,
            slow @ BodyError::TooSlow { .. } => ForwardError::BodyTimeout(slow.clone()),
        };
    }
    // hyper's "error from user's Body stream": our request body, i.e. the client's.
    let client_body = chain().any(|s| {
        s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
    });
    if client_body {
        ForwardError::ClientBody(e)
    } else if e.is_connect() {
        ForwardError::Connect(e)
    } else {
        ForwardError::Upstream(e)
    }
}
