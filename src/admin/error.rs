//! Admin API failures: one variant per kind, each with its status and `error` code, mapped
//! exhaustively so that a new kind cannot fall into a default answer.

use http::StatusCode;

use crate::signals::stream::StreamError;
use crate::state::ReloadError;
use crate::store::StoreError;

use super::MAX_BODY;

/// Why an admin request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (body, parameters); the message says what.
    #[error("{0}")]
    BadRequest(String),
    /// No such endpoint, entry or transmitter.
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("the body exceeds {MAX_BODY} bytes or was cut short")]
    BodyTooLarge,
    /// `POST /reload` with a configuration that does not load: the old one keeps running.
    #[error(transparent)]
    Reload(#[from] ReloadError),
    /// The change could not be made durable (local store or fleet log): nothing was applied.
    #[error("not stored: {0}")]
    NotStored(#[source] StoreError),
    /// Stream management failed (transmitter, network, store).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A stream was created, but asking for its verification failed.
    #[error("stream {stream_id} was created, but the verification request failed: {reason}")]
    RecreatedUnverified { stream_id: String, reason: String },
}

impl ApiError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Reload(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RecreatedUnverified { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Stream(e) => stream_status(e),
        }
    }

    /// The answer's `error` member.
    pub fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::BAD_GATEWAY => "transmitter_error",
            StatusCode::SERVICE_UNAVAILABLE => "store_unavailable",
            _ => "bad_request",
        }
    }
}

/// Stream management: the transmitter's or the network's fault → 502, no stream to act on →
/// 409, no stream configured → 404, the store (or another replica creating the stream) → 503.
fn stream_status(e: &StreamError) -> StatusCode {
    match e {
        StreamError::NoStream(_) | StreamError::DeletedByOperator => StatusCode::CONFLICT,
        StreamError::NotConfigured => StatusCode::NOT_FOUND,
        StreamError::Store(_) | StreamError::Claim(_) | StreamError::CreationClaimed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        StreamError::NoDiscovery
        | StreamError::BadDiscovery(_)
        | StreamError::IssuerMismatch { .. }
        | StreamError::NoEndpoint(_)
        | StreamError::NoCredentials
        | StreamError::TokenRefused(_)
        | StreamError::Fetch(_)
        | StreamError::Status { .. }
        | StreamError::BadResponse { .. }
        | StreamError::StreamIssuerMismatch { .. }
        | StreamError::BadUrl(_) => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_and_code() {
        let cases = [
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::BodyTooLarge, 413, "body_too_large"),
            (
                ApiError::Stream(StreamError::DeletedByOperator),
                409,
                "conflict",
            ),
            (
                ApiError::Stream(StreamError::NotConfigured),
                404,
                "not_found",
            ),
            (
                ApiError::Stream(StreamError::TokenRefused(401)),
                502,
                "transmitter_error",
            ),
            (
                ApiError::NotStored(StoreError::Write("disk full".into())),
                503,
                "store_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code), "{e}");
        }
    }
}
