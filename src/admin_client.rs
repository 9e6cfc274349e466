//! Client side of the admin API, for the `cae-proxy revoke|block|unblock` and `cae-proxy
//! stream …` commands.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::fetch::{FetchError, Fetcher};
use crate::store::SubjectKey;

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the admin API answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Builds the key named on the command line: `subject`, `session`, `token` (need `iss`),
/// `tenant`, `device`, `email`.
pub fn key(kind: &str, value: &str, iss: Option<&str>) -> Result<SubjectKey, AdminClientError> {
    let iss = || {
        iss.map(str::to_string).ok_or_else(|| {
            AdminClientError::Usage(format!(
                "--iss is required for a {kind} (use \"*\" for any issuer)"
            ))
        })
    };
    Ok(match kind {
        "subject" => SubjectKey::Subject {
            iss: iss()?,
            sub: value.into(),
        },
        "session" => SubjectKey::Session {
            iss: iss()?,
            sid: value.into(),
        },
        "token" => SubjectKey::Token {
            iss: iss()?,
            jti: value.into(),
        },
        "tenant" => SubjectKey::Tenant { tid: value.into() },
        "device" => SubjectKey::Device { id: value.into() },
        "email" => SubjectKey::Email {
            email: value.into(),
        },
        other => {
            return Err(AdminClientError::Usage(format!(
                "unknown kind {other:?}: subject, session, token, tenant, device or email"
            )))
        }
    })
}

/// The fetcher for an admin listener: system roots, or `ca` for a private CA; a client
/// certificate when the listener requires one (`[admin.tls] client_ca`).
pub fn fetcher(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Fetcher, AdminClientError> {
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(AdminClientError::Usage(
                "--cert and --key go together".into(),
            ))
        }
    };
    if ca.is_none() && client.is_none() {
        return Ok(Fetcher::new());
    }
    crate::tls::client_config(ca, client)
        .map(Fetcher::with_tls)
        .map_err(|e| AdminClientError::Usage(e.to_string()))
}

/// POSTs `{"key": …, "at": …}` to `/admin/<action>` and returns the answer body.
pub async fn call(
    fetcher: &Fetcher,
    admin: &str,
    token: Option<&str>,
    action: &str,
    key: SubjectKey,
    at: Option<i64>,
) -> Result<String, AdminClientError> {
    let mut body = json!({ "key": key });
    if let Some(at) = at {
        body["at"] = json!(at);
    }
    request(
        fetcher,
        admin,
        token,
        Method::POST,
        &format!("/admin/{action}"),
        Some(body),
        Duration::from_secs(10),
    )
    .await
}

/// Sends one admin API request (`body` as JSON) and returns the answer body; an answer other
/// than 2xx is [`AdminClientError::Refused`]. `timeout` bounds the whole exchange.
pub async fn request(
    fetcher: &Fetcher,
    admin: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<String, AdminClientError> {
    let (mut headers, bytes) = crate::fetch::json_request(body);
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let url = format!("{}{path}", admin.trim_end_matches('/'));
    let r = fetcher
        .request(method, &url, &headers, bytes, timeout)
        .await?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if !r.status.is_success() {
        return Err(AdminClientError::Refused {
            status: r.status.as_u16(),
            body: text,
        });
    }
    Ok(text)
}

/// `/admin/streams/{transmitter}[/action]`, the name percent-encoded.
pub fn stream_path(transmitter: &str, action: Option<&str>) -> String {
    let name =
        percent_encoding::utf8_percent_encode(transmitter, percent_encoding::NON_ALPHANUMERIC);
    match action {
        Some(a) => format!("/admin/streams/{name}/{a}"),
        None => format!("/admin/streams/{name}"),
    }
}

/// A subject identifier given on the command line: an RFC 9493 JSON object
/// (`{"format":"email","email":"alice@example.com"}`).
pub fn subject(arg: &str) -> Result<Value, AdminClientError> {
    match serde_json::from_str::<Value>(arg) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(AdminClientError::Usage(format!(
            "{arg:?} is not a subject identifier: give an RFC 9493 JSON object such as '{{\"format\":\"email\",\"email\":\"alice@example.com\"}}'"
        ))),
    }
}
