//! Outbound HTTP(S) client for identity-provider calls (discovery, JWKS, SSF polls and stream management).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::errors::{BoxError, Chain};

/// Largest response body accepted from an identity provider.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("request to {url} failed: {}", Chain(.source))]
    Connect {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("request to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("response from {url} is larger than {MAX_RESPONSE_BYTES} bytes or broken: {source}")]
    Body {
        url: String,
        #[source]
        source: BoxError,
    },
}

/// A response, fully read (bounded by [`MAX_RESPONSE_BYTES`]).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A pooled client shared by key sets, pollers and stream management.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Fetcher {
    pub fn new() -> Fetcher {
        let roots = crate::tls::system_roots();
        Fetcher::with_tls(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A fetcher with its own TLS settings (a private CA, a client certificate).
    pub fn with_tls(tls: rustls::ClientConfig) -> Fetcher {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Fetcher {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https),
        }
    }

    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        self.request(Method::GET, url, headers, Bytes::new(), timeout)
            .await
    }

    /// Sends a request and reads the whole (bounded) response within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Url(url.to_string()))?;
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            let v = HeaderValue::from_str(value)
                .map_err(|_| FetchError::Url(format!("bad header value for {name}")))?;
            req = req.header(*name, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| FetchError::Url(e.to_string()))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|source| FetchError::Connect {
                    url: url.to_string(),
                    source,
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|source| FetchError::Body {
                    url: url.to_string(),
                    source,
                })?
                .to_bytes();
            Ok(Fetched {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_string(),
                after: timeout,
            })?
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new()
    }
}

/// The headers and body of a JSON request: `Accept: application/json`, and with a body its
/// `Content-Type`.
pub fn json_request(body: Option<serde_json::Value>) -> (Vec<(&'static str, String)>, Bytes) {
    let mut headers = vec![("accept", "application/json".to_string())];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json".to_string()));
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    (headers, bytes)
}

/// `max-age` of a `Cache-Control` header, if any.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::CACHE_CONTROL)?.to_str().ok()?;
    v.split(',').find_map(|d| {
        let d = d.trim();
        let n = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="))?;
        n.trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}
