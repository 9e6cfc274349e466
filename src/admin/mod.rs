//! Admin listener: probes, Prometheus metrics, reload, the revocation admin API and (in
//! [`streams`]) the SSF stream endpoints (docs/admin-api.yaml). Never served on a public
//! listener; protected by a bearer secret and/or mTLS.

mod error;
mod streams;

pub use error::ApiError;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::reply::{full, json_error, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::Shared;
use crate::store::keys::ANY_ISSUER;
use crate::store::{now_secs, Batch, Change, SubjectKey, TableName};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn json_response(status: StatusCode, v: serde_json::Value) -> Response<BoxedBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<BoxedBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Entry point for the admin listener.
pub async fn handle(
    shared: Arc<Shared>,
    _conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, Infallible> {
    let rid = crate::proxy::headers::request_id(req.headers());
    let rid = rid.to_str().unwrap_or_default().to_string();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/livez") => text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") => {
            let missing = shared.not_ready();
            if missing.is_empty() {
                json_response(StatusCode::OK, json!({"ready": true}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "missing": missing}),
                )
            }
        }
        (&Method::GET, "/readyz/write") => write_ready(&shared),
        (&Method::GET, "/metrics") => {
            // One scrape at a time refreshes and encodes: the stream gauges are cleared and set
            // again, which a concurrent scrape must not see half done.
            let _one = shared
                .metrics
                .scrape
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            refresh_gauges(&shared);
            // Prometheus asks for OpenMetrics first; everything else (promtool, agents, curl)
            // gets the classic text format.
            let openmetrics = req
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                text(
                    StatusCode::OK,
                    shared.metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                text(
                    StatusCode::OK,
                    shared.metrics.encode_prometheus(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
        }
        _ => match authorize(&shared, &req) {
            Err(r) => *r,
            Ok(()) => api(&shared, req, &rid)
                .await
                .unwrap_or_else(|e| json_error(e.status(), e.code(), &e.to_string(), &rid)),
        },
    };
    tracing::debug!(target: "admin", method = %method, path = %path, status = resp.status().as_u16(), request_id = %rid);
    Ok(resp)
}

/// `GET /readyz/write`: whether a change sent now would be acknowledged. Fleet mode: the last
/// commit or heartbeat reached the Redis primary (and, with `store.min_replicas_acked`, that many
/// Redis replicas); otherwise the local store takes every write.
fn write_ready(shared: &Shared) -> Response<BoxedBody> {
    let backend = shared.store.backend_name();
    match shared.fleet.get().map(|f| f.writable()) {
        Some(Err(why)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"writable": false, "backend": backend, "reason": why}),
        ),
        Some(Ok(())) | None => json_response(
            StatusCode::OK,
            json!({"writable": true, "backend": backend}),
        ),
    }
}

/// Bearer secret check (constant time) when one is configured.
fn authorize(shared: &Shared, req: &Request<Incoming>) -> Result<(), Box<Response<BoxedBody>>> {
    let snap = shared.snapshot.load();
    let Some(admin) = snap.config.admin.as_ref() else {
        // [admin] was removed by a reload: the socket stays bound until a restart, but it
        // serves no admin API any more (fail closed).
        let r = json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "message": "the admin API is disabled by the current configuration"}),
        );
        return Err(Box::new(r));
    };
    let Some(secret) = admin.token.as_ref() else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if secret.matches(presented.as_bytes()) {
        return Ok(());
    }
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "unauthorized", "message": "the admin API needs the configured bearer token"}),
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cae-proxy-admin\""),
    );
    Err(Box::new(r))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: SubjectKey,
    /// Event time, epoch seconds; default now.
    at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    key: SubjectKey,
    nets: Vec<String>,
    at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    table: TableName,
    key: SubjectKey,
}

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Ok(Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::BodyTooLarge)?
        .to_bytes())
}

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The table change a `POST` to one of the change endpoints (`/admin/revoke`, `/admin/block`,
/// `/admin/unblock`, `/admin/bind`, `/admin/unbind`, `/admin/delete`) asks for. Pure: the
/// body parsing the admin API does, apart from the HTTP exchange (fuzzed in `fuzz/`).
pub fn change_from_body(path: &str, body: &[u8], now: i64) -> Result<Change, ApiError> {
    Ok(match path {
        "/admin/revoke" => {
            let b: KeyBody = body_json(body)?;
            Change::Revoke {
                key: b.key.normalized(),
                at: b.at.unwrap_or(now),
            }
        }
        "/admin/block" => {
            let b: KeyBody = body_json(body)?;
            Change::Block {
                key: b.key.normalized(),
                at: b.at.unwrap_or(now),
            }
        }
        "/admin/unblock" => {
            let b: KeyBody = body_json(body)?;
            Change::Unblock {
                key: b.key.normalized(),
                at: b.at.unwrap_or(now),
            }
        }
        "/admin/bind" => {
            let b: BindBody = body_json(body)?;
            let mut nets = Vec::new();
            for n in &b.nets {
                nets.push(crate::config::parse_net(n).ok_or_else(|| {
                    ApiError::BadRequest(format!("{n:?} is not an IP address or CIDR"))
                })?);
            }
            if !matches!(
                b.key,
                SubjectKey::Session { .. } | SubjectKey::Subject { .. }
            ) {
                return Err(ApiError::BadRequest(
                    "bindings apply to a session or a subject".into(),
                ));
            }
            if nets.is_empty() {
                return Err(ApiError::BadRequest(
                    "nets must not be empty (use /admin/unbind)".into(),
                ));
            }
            Change::Bind {
                key: b.key.normalized(),
                nets,
                at: b.at.unwrap_or(now),
            }
        }
        "/admin/unbind" => {
            let b: KeyBody = body_json(body)?;
            Change::Unbind {
                key: b.key.normalized(),
                at: b.at.unwrap_or(now),
            }
        }
        "/admin/delete" => {
            let b: DeleteBody = body_json(body)?;
            Change::Delete {
                table: b.table,
                key: b.key.normalized(),
            }
        }
        _ => return Err(ApiError::NotFound("no admin endpoint at this path".into())),
    })
}

async fn api(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    rid: &str,
) -> Result<Response<BoxedBody>, ApiError> {
    let now = now_secs();
    let path = req.uri().path().to_string();
    if path == "/admin/streams" || path.starts_with("/admin/streams/") {
        return streams::handle(shared, req, rid).await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let change = match (req.method().clone(), path.as_str()) {
        (Method::POST, "/reload") => {
            return match shared.reload() {
                Ok(g) => Ok(json_response(StatusCode::OK, json!({"generation": g}))),
                Err(e) => Err(e.into()),
            }
        }
        (Method::GET, "/admin/stats") => {
            let s = shared.store.tables().stats();
            return Ok(json_response(
                StatusCode::OK,
                json!({"revocations": s.revocations, "blocks": s.blocks, "bindings": s.bindings, "backend": shared.store.backend_name()}),
            ));
        }
        (Method::GET, "/admin/fleet") => return fleet_view(shared).await,
        (Method::GET, p) if p.starts_with("/admin/entries/") => {
            return list(shared, &p["/admin/entries/".len()..], &query)
        }
        (
            Method::POST,
            "/admin/revoke" | "/admin/block" | "/admin/unblock" | "/admin/bind" | "/admin/unbind"
            | "/admin/delete",
        ) => change_from_body(&path, &body_bytes(req).await?, now)?,
        (
            _,
            "/reload" | "/admin/stats" | "/admin/fleet" | "/admin/revoke" | "/admin/block"
            | "/admin/unblock" | "/admin/bind" | "/admin/unbind" | "/admin/delete",
        ) => return Err(ApiError::MethodNotAllowed),
        _ => return Err(ApiError::NotFound("no admin endpoint at this path".into())),
    };
    let (table, key) = target(&change);
    let enc = key.encode();
    let tables = shared.store.tables();
    let before = tables.entry(table, &enc);
    // Lifting what is not there changes nothing: say so instead of a silent 200. The usual
    // cause is the issuer: entries from SETs whose subject names none live under "*".
    if before.is_none()
        && matches!(
            change,
            Change::Unblock { .. } | Change::Unbind { .. } | Change::Delete { .. }
        )
    {
        return Err(ApiError::NotFound(absent(shared, table, key)));
    }
    shared
        .store
        .commit(Batch {
            changes: vec![change.clone()],
            set_id: None,
            now,
        })
        .await
        .map_err(ApiError::NotStored)?;
    let changed = usize::from(tables.entry(table, &enc) != before);
    tracing::info!(request_id = rid, change = ?change_summary(&change), changed, "admin change stored");
    Ok(json_response(
        StatusCode::OK,
        json!({"stored": change, "changed": changed}),
    ))
}

/// `GET /admin/fleet`: the replicas Redis heard from (cursor, lag, writability, last
/// heartbeat), the poll leases of the configured polled transmitters and their holders, the
/// log's length and ends, and this replica's own view. 404 outside fleet mode.
async fn fleet_view(shared: &Shared) -> Result<Response<BoxedBody>, ApiError> {
    let Some(fleet) = shared.fleet.get() else {
        return Err(ApiError::NotFound(
            "fleet mode is off (store.backend is not \"redis\")".into(),
        ));
    };
    let snap = shared.snapshot.load();
    let polled: Vec<String> = snap
        .config
        .transmitters
        .iter()
        .filter(|t| {
            t.poll.is_some()
                || t.stream
                    .as_ref()
                    .is_some_and(|s| s.delivery == crate::config::Delivery::Poll)
        })
        .map(|t| t.name.clone())
        .collect();
    Ok(json_response(StatusCode::OK, fleet.view(&polled).await))
}

/// The table and key a change is about.
fn target(c: &Change) -> (TableName, &SubjectKey) {
    match c {
        Change::Revoke { key, .. } => (TableName::Revocations, key),
        Change::Block { key, .. } | Change::Unblock { key, .. } => (TableName::Blocks, key),
        Change::Bind { key, .. } | Change::Unbind { key, .. } => (TableName::Bindings, key),
        Change::Delete { table, key } => (*table, key),
    }
}

fn table_name(t: TableName) -> &'static str {
    match t {
        TableName::Revocations => "revocations",
        TableName::Blocks => "blocks",
        TableName::Bindings => "bindings",
    }
}

/// Why a lift found nothing, with a pointer to the same value under issuer `"*"` if it is there.
fn absent(shared: &Shared, table: TableName, key: &SubjectKey) -> String {
    let any = |iss: &str| iss != ANY_ISSUER;
    let wildcard = match key {
        SubjectKey::Subject { iss, sub } if any(iss) => Some(SubjectKey::Subject {
            iss: ANY_ISSUER.into(),
            sub: sub.clone(),
        }),
        SubjectKey::Session { iss, sid } if any(iss) => Some(SubjectKey::Session {
            iss: ANY_ISSUER.into(),
            sid: sid.clone(),
        }),
        SubjectKey::Token { iss, jti } if any(iss) => Some(SubjectKey::Token {
            iss: ANY_ISSUER.into(),
            jti: jti.clone(),
        }),
        _ => None,
    };
    let mut msg = format!(
        "no {} entry for this key (nothing changed)",
        table_name(table)
    );
    if wildcard.is_some_and(|w| shared.store.tables().contains(table, &w.encode())) {
        msg.push_str("; an entry for the same value exists under issuer \"*\": SETs whose subject names no issuer (opaque ids) are stored there");
    }
    msg
}

fn change_summary(c: &Change) -> String {
    match c {
        Change::Revoke { key, at } => format!("revoke {} at {at}", key.kind_name()),
        Change::Block { key, at } => format!("block {} at {at}", key.kind_name()),
        Change::Unblock { key, at } => format!("unblock {} at {at}", key.kind_name()),
        Change::Bind { key, nets, at } => {
            format!("bind {} to {} nets at {at}", key.kind_name(), nets.len())
        }
        Change::Unbind { key, at } => format!("unbind {} at {at}", key.kind_name()),
        Change::Delete { table, key } => format!("delete {} from {table:?}", key.kind_name()),
    }
}

fn list(shared: &Shared, table: &str, query: &str) -> Result<Response<BoxedBody>, ApiError> {
    let table = match table {
        "revocations" => TableName::Revocations,
        "blocks" => TableName::Blocks,
        "bindings" => TableName::Bindings,
        _ => {
            return Err(ApiError::NotFound(
                "tables are revocations, blocks and bindings".into(),
            ))
        }
    };
    let mut search = None;
    let (mut offset, mut limit) = (0usize, 100usize);
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = url::form_urlencoded::parse(format!("v={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        match k {
            "search" => search = Some(v),
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest("offset must be a number".into()))?
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::BadRequest("limit must be a number".into()))?
                    .min(1000)
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {k:?}"
                )))
            }
        }
    }
    let (total, entries) = shared.store.list(table, search.as_deref(), offset, limit);
    Ok(json_response(
        StatusCode::OK,
        json!({"total": total, "offset": offset, "entries": entries}),
    ))
}

/// Scrape-time gauges: table sizes, the fleet lag (key sets are read by their own collector).
fn refresh_gauges(shared: &Shared) {
    use crate::metrics::TableLabel;
    let m = &shared.metrics;
    let s = shared.store.tables().stats();
    m.table_entries
        .get_or_create(&TableLabel {
            table: "revocations",
        })
        .set(s.revocations as i64);
    m.table_entries
        .get_or_create(&TableLabel { table: "blocks" })
        .set(s.blocks as i64);
    m.table_entries
        .get_or_create(&TableLabel { table: "bindings" })
        .set(s.bindings as i64);
    m.local_only_entries
        .set(shared.store.local_only_count() as i64);
    if let Some(f) = shared.fleet.get() {
        f.refresh_metrics();
    }
    crate::signals::runtime::refresh_stream_gauges(&shared.snapshot.load().signals, m);
}
