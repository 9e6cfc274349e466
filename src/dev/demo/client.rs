//! The demo's HTTP client: one plain-HTTP request, its answer read whole, each within
//! `HTTP_TIMEOUT` (10 s).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer, read whole.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(super) fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(super) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub(super) fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body.into()))
            .map_err(|e| format!("cannot build the request to {url}: {e}"))?;
        let resp = tokio::time::timeout(HTTP_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {}s", HTTP_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{url}: {}", crate::errors::Chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(HTTP_TIMEOUT, body.collect())
            .await
            .map_err(|_| {
                format!(
                    "{url}: body not received within {}s",
                    HTTP_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
