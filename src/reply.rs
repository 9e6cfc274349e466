//! What every listener answers with: the boxed body type and the JSON error answer.
//!
//! Shared by the proxy pipeline, the signals endpoint and the admin API (named `reply`, not
//! `http`, so that it is never confused with the `http` crate).

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub use crate::errors::BoxError;
/// Body type of everything the proxy sends (upstream requests and client responses).
pub type BoxedBody = BoxBody<Bytes, BoxError>;

/// A complete answer (status, headers, body) held as parts: the proxy sends it as a response;
/// the authorization service relays it to a gateway as an HTTP answer or as a gRPC
/// `DeniedHttpResponse`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A JSON error naming the request id: `{"error", "message", "request_id"}`.
    pub fn json_error(status: StatusCode, error: &str, message: &str, request_id: &str) -> Answer {
        let body =
            serde_json::json!({"error": error, "message": message, "request_id": request_id})
                .to_string();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Answer {
            status,
            headers,
            body: body.into(),
        }
    }

    pub fn into_response(self) -> Response<BoxedBody> {
        let mut r = Response::new(full(self.body));
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers;
        r
    }
}

/// A JSON error response naming the request id.
pub fn json_error(
    status: StatusCode,
    error: &str,
    message: &str,
    request_id: &str,
) -> Response<BoxedBody> {
    Answer::json_error(status, error, message, request_id).into_response()
}

pub fn full(b: impl Into<Bytes>) -> BoxedBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> BoxedBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}
