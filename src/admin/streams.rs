//! The stream endpoints of the admin API (docs/admin-api.yaml, tag `streams`): per transmitter,
//! its managed SSF stream read live, updated (`PATCH`) or replaced (`PUT`) with
//! `[transmitter.stream]`, verified with a deadline, its status set, subjects added and
//! removed, deleted and re-created (SSF 1.0 §8.1: the receiver actions of the OpenID SSF
//! receiver test plan). Each call is sent to the transmitter before the answer.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body_bytes, body_json, json_response, ApiError};
use crate::reply::BoxedBody;
use crate::signals::lifecycle::{receiver_view, Lifecycle, Verification};
use crate::signals::stream::redacted;
use crate::signals::subject::Subject;
use crate::signals::transmitter::TransmitterRt;
use crate::state::Shared;

/// Longest verification wait a request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `POST …/verify` and `…/recreate`: how long to wait for the verification event.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WaitBody {
    timeout_seconds: Option<f64>,
}

/// `POST …/status` (SSF §8.1.2.2).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    reason: Option<String>,
}

/// `POST …/subjects:add` and `…/subjects:remove` (SSF §8.1.3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectBody {
    subject: Value,
    /// `subjects:add` only: whether the subject's identity was verified (SSF §8.1.3.2).
    verified: Option<bool>,
}

/// What a path and method ask of one transmitter's stream.
enum Op {
    Show,
    Delete,
    Verify,
    Status,
    AddSubject,
    RemoveSubject,
    Recreate,
    Update,
    Replace,
}

fn not_found(msg: impl Into<String>) -> ApiError {
    ApiError::NotFound(msg.into())
}

/// A path under `/admin/streams`: the list, or an operation on one transmitter's stream.
enum Route {
    List,
    One(String, Op),
}

fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let rest = path
        .strip_prefix("/admin/streams")
        .unwrap_or_default()
        .trim_start_matches('/');
    if rest.is_empty() {
        return match *method {
            Method::GET => Ok(Route::List),
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .map_err(|_| not_found("no transmitter with this name"))?
        .into_owned();
    let op = match (action, method) {
        ("", &Method::GET) => Op::Show,
        ("", &Method::DELETE) => Op::Delete,
        ("verify", &Method::POST) => Op::Verify,
        ("status", &Method::POST) => Op::Status,
        ("subjects:add", &Method::POST) => Op::AddSubject,
        ("subjects:remove", &Method::POST) => Op::RemoveSubject,
        ("recreate", &Method::POST) => Op::Recreate,
        ("update", &Method::POST) => Op::Update,
        ("replace", &Method::POST) => Op::Replace,
        (
            "" | "verify" | "status" | "subjects:add" | "subjects:remove" | "recreate" | "update"
            | "replace",
            _,
        ) => return Err(ApiError::MethodNotAllowed),
        _ => return Err(not_found("no admin endpoint at this path")),
    };
    Ok(Route::One(name, op))
}

/// The transmitter `name` of the current configuration, if it has a managed stream.
fn transmitter(shared: &Shared, name: &str) -> Result<Arc<TransmitterRt>, ApiError> {
    let snap = shared.snapshot.load();
    let rt = snap
        .signals
        .transmitters
        .iter()
        .find(|t| t.name() == name)
        .cloned()
        .ok_or_else(|| not_found(format!("no transmitter named {name:?}")))?;
    if rt.cfg().stream.is_none() {
        return Err(not_found(format!(
            "transmitter {name:?} has no [transmitter.stream]: its stream is not managed here"
        )));
    }
    Ok(rt)
}

fn wait(body: &[u8], default: Duration) -> Result<Duration, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(default);
    }
    let b: WaitBody = body_json(body)?;
    match b.timeout_seconds {
        None => Ok(default),
        Some(t) if t > 0.0 && t <= MAX_WAIT.as_secs_f64() => Ok(Duration::from_secs_f64(t)),
        Some(_) => Err(ApiError::BadRequest(format!(
            "timeout_seconds must be above 0 and at most {}",
            MAX_WAIT.as_secs()
        ))),
    }
}

/// A subject identifier (RFC 9493) the proxy understands, as given.
fn subject(b: &SubjectBody) -> Result<Value, ApiError> {
    let bad = ApiError::BadRequest;
    if b.subject.get("format").and_then(Value::as_str).is_none() {
        return Err(bad(
            "subject must be an RFC 9493 subject identifier with a format".into(),
        ));
    }
    match Subject::parse(&b.subject) {
        Ok(Subject::Unknown { format }) => Err(bad(format!("unknown subject format {format:?}"))),
        Ok(_) => Ok(b.subject.clone()),
        Err(e) => Err(bad(format!("invalid subject: {e}"))),
    }
}

/// The answer of a verification: 200 when the event arrived, 504 `verification_timeout` when
/// it did not within the wait.
fn verification_answer(
    name: &str,
    v: &Verification,
    mut extra: Value,
    rid: &str,
) -> Response<BoxedBody> {
    let waited_ms = v.waited.as_millis() as u64;
    let mut body = json!({
        "transmitter": name,
        "stream_id": v.stream_id,
        "verified": v.verified(),
        "waited_ms": waited_ms,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object_mut()) {
        b.append(e);
    }
    if v.verified() {
        return json_response(StatusCode::OK, body);
    }
    body["error"] = json!("verification_timeout");
    body["message"] = json!(format!(
        "the transmitter accepted the verification request, but no verification event with its state arrived within {waited_ms} ms"
    ));
    body["request_id"] = json!(rid);
    json_response(StatusCode::GATEWAY_TIMEOUT, body)
}

/// Serves `/admin/streams` and `/admin/streams/{transmitter}[/action]`.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    rid: &str,
) -> Result<Response<BoxedBody>, ApiError> {
    let Route::One(name, op) = route(req.method(), req.uri().path())? else {
        let snap = shared.snapshot.load();
        let streams: Vec<Value> = snap
            .signals
            .transmitters
            .iter()
            .filter(|t| t.cfg().stream.is_some())
            .map(|t| receiver_view(t))
            .collect();
        return Ok(json_response(StatusCode::OK, json!({"streams": streams})));
    };
    let rt = transmitter(shared, &name)?;
    let l = Lifecycle::new(rt.clone(), shared.store.clone(), shared.fetcher.clone());
    let default_wait = rt
        .cfg()
        .stream
        .as_ref()
        .map(|s| s.verify_timeout)
        .unwrap_or(Duration::from_secs(30));
    let body = body_bytes(req).await?;
    let no_body = || {
        if body.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(ApiError::BadRequest(
                "this endpoint takes no body".to_string(),
            ))
        }
    };
    let r = match op {
        Op::Show => {
            no_body()?;
            json_response(StatusCode::OK, l.show().await?)
        }
        Op::Delete => {
            no_body()?;
            let (id, existed) = l.delete().await?;
            tracing::info!(request_id = rid, transmitter = %name, stream_id = %id, "admin: stream deleted");
            json_response(
                StatusCode::OK,
                json!({"transmitter": name, "stream_id": id, "deleted": existed}),
            )
        }
        Op::Verify => {
            let timeout = wait(&body, default_wait)?;
            let v = l.verify(timeout).await?;
            verification_answer(&name, &v, json!({}), rid)
        }
        Op::Status => {
            let b: StatusBody = body_json(&body)?;
            if !["enabled", "paused", "disabled"].contains(&b.status.as_str()) {
                return Err(ApiError::BadRequest(
                    "status must be enabled, paused or disabled".into(),
                ));
            }
            let (id, u) = l.set_status(&b.status, b.reason.as_deref()).await?;
            let (status, reason, pending) = match u {
                Some(u) => (u.status.as_str().to_string(), u.reason, false),
                None => (b.status, b.reason, true),
            };
            json_response(
                StatusCode::OK,
                json!({"transmitter": name, "stream_id": id, "status": status, "reason": reason, "pending": pending}),
            )
        }
        Op::AddSubject | Op::RemoveSubject => {
            let add = matches!(op, Op::AddSubject);
            let b: SubjectBody = body_json(&body)?;
            if !add && b.verified.is_some() {
                return Err(ApiError::BadRequest(
                    "verified applies to subjects:add only".into(),
                ));
            }
            let s = subject(&b)?;
            let id = l.subject(add, &s, b.verified).await?;
            json_response(
                StatusCode::OK,
                json!({"transmitter": name, "stream_id": id, "subject": s, "action": if add { "added" } else { "removed" }}),
            )
        }
        Op::Recreate => {
            let timeout = wait(&body, default_wait)?;
            let r = l.recreate(timeout).await?;
            let extra = json!({"previous": r.previous, "configuration": redacted(&r.stream.raw)});
            match &r.verification {
                Ok(v) => verification_answer(&name, v, extra, rid),
                Err(e) => {
                    return Err(ApiError::RecreatedUnverified {
                        stream_id: r.stream.stream_id.clone(),
                        reason: e.clone(),
                    })
                }
            }
        }
        Op::Update | Op::Replace => {
            no_body()?;
            let r = l.update(matches!(op, Op::Replace)).await?;
            json_response(
                StatusCode::OK,
                json!({
                    "transmitter": name,
                    "stream_id": r.stream.stream_id,
                    "method": r.write.map(|w| w.method()),
                    "differed": r.changed.iter().map(|f| f.name()).collect::<Vec<_>>(),
                    "configuration": redacted(&r.stream.raw),
                }),
            )
        }
    };
    Ok(r)
}
