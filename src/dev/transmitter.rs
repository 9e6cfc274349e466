//! `DevTransmitter`: a development Shared Signals (SSF 1.0) transmitter with stream management
//! (SSF §8.1: create, read, update, replace, delete, status, subjects, verification; every
//! management request recorded), push delivery (RFC 8935) and poll delivery (RFC 8936), plus
//! builders for CAEP / RISC / OAuth SET payloads (docs/protocols.md §3, §5). A paused stream holds
//! its events until it is enabled again, a disabled one drops them (SSF §8.1.2), and a removed
//! subject's events are no longer sent to that stream (SSF §8.1.3.3).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::keys::{KeyAlg, SigningKey};
use super::{
    json_response, now_secs, query_param, random_id, read_body, status_response, DevBody, DevError,
    ServerHandle,
};

pub use super::subjects::{complex, email, ip_addresses, iss_sub, jwt_id, opaque};
/// The URIs the transmitter speaks: the receiver's own vocabulary, written once.
pub use crate::signals::vocabulary::{CAEP, OAUTH, POLL_METHOD, PUSH_METHOD, RISC, SSF};

/// Largest management or poll request body accepted.
const MAX_REQUEST: usize = 1 << 20;
/// Longest long poll, whatever the request asks.
const MAX_POLL_WAIT: Duration = Duration::from_secs(25);
/// SETs returned by a poll that gives no `maxEvents`.
const DEFAULT_MAX_EVENTS: usize = 100;

/// Settings of a [`DevTransmitter`].
#[derive(Debug, Clone)]
pub struct TransmitterOptions {
    /// `aud` of streams and of SETs built by [`DevTransmitter::sign_set`] (when absent).
    pub audience: String,
    /// When set, every `/ssf/...` call (management and poll) needs `Authorization: Bearer <it>`.
    pub management_token: Option<String>,
    /// Event types offered (`events_supported`); empty: whatever is requested is delivered.
    pub events_supported: Vec<String>,
    /// Algorithm of the signing key.
    pub alg: KeyAlg,
    /// Longest long poll (capped at 25 s).
    pub poll_wait: Duration,
    /// Issuer of the users named by `sub` in `POST /dev/events` when the request gives no `iss`
    /// (the development issuer's URL in `cae-proxy dev transmitter`).
    pub subject_issuer: Option<String>,
    /// `false`: `PATCH` of a stream configuration answers `405` (a transmitter that only
    /// replaces configurations with `PUT`).
    pub patch_supported: bool,
}

impl Default for TransmitterOptions {
    fn default() -> Self {
        TransmitterOptions {
            audience: "cae-proxy".into(),
            management_token: None,
            events_supported: Vec::new(),
            alg: KeyAlg::Rs256,
            poll_wait: MAX_POLL_WAIT,
            subject_issuer: None,
            patch_supported: true,
        }
    }
}

/// One push made by the transmitter on its own (verification, stream-updated, [`DevTransmitter::deliver`]).
#[derive(Debug, Clone)]
pub struct PushRecord {
    /// Receiver URL.
    pub url: String,
    /// HTTP status, or `None` when the request failed.
    pub status: Option<u16>,
    /// Response body, or the error.
    pub body: String,
}

/// One management request the transmitter received (every `/ssf/...` call but polls).
#[derive(Debug, Clone, PartialEq)]
pub struct ManagementRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// `stream_id` of the query, when given.
    pub stream_id: Option<String>,
    /// The JSON body (`Null` when empty, a string when it is not JSON).
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Clone)]
struct Stream {
    config: Value,
    status: String,
    reason: Option<String>,
    /// Subjects added (SSF §8.1.3.2).
    subjects: Vec<Value>,
    /// Subjects removed (SSF §8.1.3.3): their events are not sent to this stream any more.
    removed: Vec<Value>,
    /// SETs held while the stream is paused, sent in order once it is enabled again.
    held: Vec<String>,
}

impl Stream {
    fn new(config: Value) -> Stream {
        Stream {
            config,
            status: "enabled".into(),
            reason: None,
            subjects: Vec::new(),
            removed: Vec::new(),
            held: Vec::new(),
        }
    }

    fn delivery_method(&self) -> &str {
        self.config
            .pointer("/delivery/method")
            .and_then(Value::as_str)
            .unwrap_or(POLL_METHOD)
    }

    fn push_target(&self) -> (String, Option<String>) {
        let url = self
            .config
            .pointer("/delivery/endpoint_url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let auth = self
            .config
            .pointer("/delivery/authorization_header")
            .and_then(Value::as_str)
            .map(str::to_string);
        (url, auth)
    }

    /// Whether events about `subject` go to this stream: not when the receiver removed it (or,
    /// for a complex subject, one of its members).
    fn includes(&self, subject: Option<&Value>) -> bool {
        let Some(subject) = subject else {
            return true;
        };
        let members = subject
            .as_object()
            .filter(|m| m.get("format").and_then(Value::as_str) == Some("complex"))
            .map(|m| m.values().filter(|v| v.is_object()).collect::<Vec<_>>())
            .unwrap_or_default();
        !self
            .removed
            .iter()
            .any(|r| r == subject || members.contains(&r))
    }
}

/// The subject of a SET: `sub_id`, else the first event's `subject`.
fn set_subject(set: &str) -> Option<Value> {
    let (_, p) = super::keys::decode_unverified(set).ok()?;
    p.get("sub_id").cloned().or_else(|| {
        p.get("events")?
            .as_object()?
            .values()
            .find_map(|e| e.get("subject").cloned())
    })
}

struct Keys {
    keys: Vec<SigningKey>,
    signing: usize,
}

struct Inner {
    issuer: String,
    opts: TransmitterOptions,
    keys: Mutex<Keys>,
    streams: Mutex<HashMap<String, Stream>>,
    queue: Mutex<Vec<(String, String)>>,
    notify: Notify,
    acks: Mutex<Vec<String>>,
    set_errs: Mutex<Vec<(String, Value)>>,
    pushes: Mutex<Vec<PushRecord>>,
    polls: AtomicUsize,
    jwks_fetches: AtomicUsize,
    available: AtomicBool,
    /// `false`: verification requests are answered `204` but no verification event is sent.
    verifications: AtomicBool,
    /// The bearer `/ssf/...` calls need now (starts as `opts.management_token`).
    management_token: Mutex<Option<String>>,
    /// Every management request, in order.
    management: Mutex<Vec<ManagementRequest>>,
    /// How long each management request waits before it is served (a slow transmitter).
    management_delay: Mutex<Duration>,
}

/// Where one SET goes (see `Inner::route`).
#[derive(Default)]
struct Route {
    /// (stream id, endpoint URL, authorization header) of push streams.
    push: Vec<(String, String, Option<String>)>,
    /// Poll streams (one shared queue).
    poll: Vec<String>,
    /// Paused streams that hold it.
    held: Vec<String>,
}

/// A development SSF transmitter.
pub struct DevTransmitter {
    inner: Arc<Inner>,
    server: ServerHandle,
}

impl std::fmt::Debug for DevTransmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevTransmitter")
            .field("issuer", &self.inner.issuer)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error(status: StatusCode, err: &str, description: &str) -> Response<DevBody> {
    json_response(status, &json!({"err": err, "description": description}))
}

fn bad_request(description: &str) -> Response<DevBody> {
    error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn not_found(description: &str) -> Response<DevBody> {
    error(StatusCode::NOT_FOUND, "not_found", description)
}

/// `jti` of a compact SET (its payload decoded without verification).
fn set_jti(set: &str) -> Option<String> {
    super::keys::decode_unverified(set)
        .ok()
        .and_then(|(_, p)| p.get("jti").and_then(Value::as_str).map(str::to_string))
}

/// Fills `iss`, `iat`, `jti` and `aud` when absent; members set to `null` are removed.
fn fill_set_payload(mut payload: Value, issuer: &str, audience: &str, now: i64) -> Value {
    if let Value::Object(map) = &mut payload {
        let defaults = [
            ("iss", json!(issuer)),
            ("iat", json!(now)),
            ("jti", json!(random_id(16))),
            ("aud", json!(audience)),
        ];
        for (k, v) in defaults {
            map.entry(k).or_insert(v);
        }
        map.retain(|_, v| !v.is_null());
    }
    payload
}

/// Wait asked by a `Prefer: wait=N` header (RFC 7240), if any.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .find_map(|n| n.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn events_delivered(supported: &[String], requested: &Value) -> Value {
    let requested: Vec<&str> = requested
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if supported.is_empty() {
        return json!(requested);
    }
    json!(requested
        .into_iter()
        .filter(|r| supported.iter().any(|s| s == r))
        .collect::<Vec<_>>())
}

impl Inner {
    fn signing_key(&self) -> SigningKey {
        let keys = lock(&self.keys);
        keys.keys[keys.signing.min(keys.keys.len() - 1)].clone()
    }

    fn sign_set(&self, payload: Value) -> String {
        let payload = fill_set_payload(payload, &self.issuer, &self.opts.audience, now_secs());
        self.signing_key().sign_set(&payload)
    }

    fn queue(&self, set: &str) {
        let jti = set_jti(set).unwrap_or_else(|| random_id(16));
        {
            let mut q = lock(&self.queue);
            if let Some(entry) = q.iter_mut().find(|(j, _)| *j == jti) {
                entry.1 = set.to_string();
            } else {
                q.push((jti, set.to_string()));
            }
        }
        self.notify.notify_waiters();
    }

    async fn push_and_record(
        &self,
        url: &str,
        authorization: Option<&str>,
        set: &str,
    ) -> PushRecord {
        let record = match push(url, authorization, set).await {
            Ok((status, _, body)) => PushRecord {
                url: url.to_string(),
                status: Some(status),
                body,
            },
            Err(e) => PushRecord {
                url: url.to_string(),
                status: None,
                body: e.to_string(),
            },
        };
        lock(&self.pushes).push(record.clone());
        record
    }

    /// `POST /dev/events`: signs the described event and delivers it to every enabled stream
    /// (push streams synchronously, so the answer carries each receiver's status) and to the
    /// request's `push_to` endpoint.
    async fn emit(&self, m: &Map<String, Value>) -> Response<DevBody> {
        let r = match super::emit::parse(m, self.opts.subject_issuer.as_deref(), now_secs()) {
            Ok(r) => r,
            Err(e) => return bad_request(&e),
        };
        let set = self.sign_set(r.payload);
        let mut delivered = Vec::new();
        let pushed = |stream_id: Option<&str>, rec: PushRecord| {
            let mut v = json!({"method": PUSH_METHOD, "endpoint_url": rec.url,
                               "status": rec.status, "response": rec.body});
            if let Some(id) = stream_id {
                v["stream_id"] = json!(id);
            }
            v
        };
        if r.deliver {
            let route = self.route(&set);
            for (id, url, auth) in route.push {
                let rec = self.push_and_record(&url, auth.as_deref(), &set).await;
                delivered.push(pushed(Some(&id), rec));
            }
            if !route.poll.is_empty() {
                self.queue(&set);
            }
            for id in route.poll {
                delivered.push(json!({"method": POLL_METHOD, "stream_id": id, "queued": true}));
            }
            for id in route.held {
                delivered.push(json!({"stream_id": id, "held": true}));
            }
        }
        if let Some(p) = &r.push_to {
            let rec = self
                .push_and_record(&p.endpoint_url, p.authorization_header.as_deref(), &set)
                .await;
            delivered.push(pushed(None, rec));
        }
        json_response(
            StatusCode::OK,
            &json!({"jti": set_jti(&set), "event": r.event_type, "set": set, "delivered": delivered}),
        )
    }

    /// Where `set` goes now: each enabled stream that includes its subject (push streams with
    /// their target; poll streams share one queue); a paused stream that includes it holds it;
    /// a disabled one drops it.
    fn route(&self, set: &str) -> Route {
        let subject = set_subject(set);
        let mut route = Route::default();
        for (id, s) in lock(&self.streams).iter_mut() {
            if !s.includes(subject.as_ref()) {
                continue;
            }
            match s.status.as_str() {
                "enabled" if s.delivery_method() == PUSH_METHOD => {
                    let (url, auth) = s.push_target();
                    route.push.push((id.clone(), url, auth));
                }
                "enabled" => route.poll.push(id.clone()),
                "paused" => {
                    s.held.push(set.to_string());
                    route.held.push(id.clone());
                }
                _ => {}
            }
        }
        route
    }

    /// Sends `sets` to one stream, in order, whatever its status (verification, stream-updated,
    /// then what was held): pushed one after the other in a task, or queued for poll.
    fn send_to_stream(self: &Arc<Self>, stream: &Stream, sets: Vec<String>) {
        if stream.delivery_method() == PUSH_METHOD {
            let (url, auth) = stream.push_target();
            let inner = self.clone();
            tokio::spawn(async move {
                for set in sets {
                    inner.push_and_record(&url, auth.as_deref(), &set).await;
                }
            });
        } else {
            for set in sets {
                self.queue(&set);
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = lock(&self.management_token).clone() else {
            return true;
        };
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, cred)| {
                scheme.eq_ignore_ascii_case("bearer") && cred.trim() == token
            })
    }

    fn configuration(&self) -> Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "jwks_uri": format!("{i}/jwks"),
            "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
            "configuration_endpoint": format!("{i}/ssf/stream"),
            "status_endpoint": format!("{i}/ssf/status"),
            "add_subject_endpoint": format!("{i}/ssf/subjects:add"),
            "remove_subject_endpoint": format!("{i}/ssf/subjects:remove"),
            "verification_endpoint": format!("{i}/ssf/verify"),
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "default_subjects": "ALL",
            "spec_version": "1_0",
        })
    }

    fn build_stream_config(
        &self,
        stream_id: &str,
        body: &Map<String, Value>,
    ) -> Result<Value, String> {
        let mut delivery = match body.get("delivery") {
            None | Some(Value::Null) => json!({"method": POLL_METHOD}),
            Some(Value::Object(d)) => Value::Object(d.clone()),
            Some(_) => return Err("delivery is not an object".into()),
        };
        let method = delivery
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or(POLL_METHOD)
            .to_string();
        match method.as_str() {
            PUSH_METHOD => {
                if !delivery
                    .get("endpoint_url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
                {
                    return Err("push delivery needs an http(s) endpoint_url".into());
                }
            }
            POLL_METHOD => {
                delivery["endpoint_url"] = json!(format!("{}/ssf/poll", self.issuer));
            }
            other => return Err(format!("unsupported delivery method {other:?}")),
        }
        delivery["method"] = json!(method);
        let requested = body
            .get("events_requested")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if !requested.is_array() {
            return Err("events_requested is not an array".into());
        }
        let mut config = json!({
            "stream_id": stream_id,
            "iss": self.issuer,
            "aud": self.opts.audience,
            "delivery": delivery,
            "events_supported": self.opts.events_supported,
            "events_requested": requested,
            "events_delivered": events_delivered(&self.opts.events_supported, &requested),
        });
        if let Some(d) = body.get("description").filter(|d| !d.is_null()) {
            config["description"] = d.clone();
        }
        Ok(config)
    }

    /// Serves one request; management requests (every `/ssf/...` call but polls) are recorded
    /// with the status answered.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<DevBody> {
        let path = req.uri().path().to_string();
        if !path.starts_with("/ssf/") || path == "/ssf/poll" {
            return self.serve(req, &mut Value::Null).await;
        }
        let method = req.method().to_string();
        let stream_id = query_param(req.uri().query(), "stream_id");
        let delay = *lock(&self.management_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut body = Value::Null;
        let resp = self.clone().serve(req, &mut body).await;
        lock(&self.management).push(ManagementRequest {
            method,
            path,
            stream_id,
            body,
            status: resp.status().as_u16(),
        });
        resp
    }

    /// `seen_body`: set to the request body (JSON, else a string) once it was read.
    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        seen_body: &mut Value,
    ) -> Response<DevBody> {
        if !self.available.load(Ordering::SeqCst) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the development transmitter is switched off",
            );
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/.well-known/ssf-configuration") => {
                return json_response(StatusCode::OK, &self.configuration())
            }
            (&Method::GET, "/jwks") => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let keys = lock(&self.keys);
                let jwks = json!({"keys": keys.keys.iter().map(|k| k.public_jwk().clone()).collect::<Vec<_>>()});
                return json_response(StatusCode::OK, &jwks);
            }
            _ => {}
        }
        if !path.starts_with("/ssf/") && path != "/dev/events" {
            return not_found("no such endpoint");
        }
        if !self.authorized(req.headers()) {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "authentication_failed",
                "bearer token required",
            );
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        let query = req.uri().query().map(str::to_string);
        let (parts, body) = req.into_parts();
        let body = match read_body(body, MAX_REQUEST).await {
            Ok(b) => b,
            Err(e) => return bad_request(&e.to_string()),
        };
        if !body.iter().all(u8::is_ascii_whitespace) {
            *seen_body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        }
        let json_body = || -> Result<Map<String, Value>, String> {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(Map::new());
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err("body is not a JSON object".to_string()),
                Err(e) => Err(format!("body is not JSON: {e}")),
            }
        };
        let stream_id_of = |m: &Map<String, Value>| -> Option<String> {
            m.get("stream_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| query_param(query.as_deref(), "stream_id"))
        };
        match (&method, path.as_str()) {
            (&Method::POST, "/dev/events") => match json_body() {
                Ok(m) => self.emit(&m).await,
                Err(e) => bad_request(&e),
            },
            (&Method::POST, "/ssf/poll") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                self.poll(&parts.headers, &m).await
            }
            (&Method::POST, "/ssf/stream") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                let id = random_id(8);
                match self.build_stream_config(&id, &m) {
                    Ok(config) => {
                        lock(&self.streams).insert(id, Stream::new(config.clone()));
                        json_response(StatusCode::CREATED, &config)
                    }
                    Err(e) => bad_request(&e),
                }
            }
            (&Method::GET, "/ssf/stream") => {
                let streams = lock(&self.streams);
                match query_param(query.as_deref(), "stream_id") {
                    Some(id) => match streams.get(&id) {
                        Some(s) => json_response(StatusCode::OK, &s.config),
                        None => not_found("no such stream"),
                    },
                    None => json_response(
                        StatusCode::OK,
                        &Value::Array(streams.values().map(|s| s.config.clone()).collect()),
                    ),
                }
            }
            (&Method::PATCH, "/ssf/stream") if !self.opts.patch_supported => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "stream configurations are replaced with PUT",
                );
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    HeaderValue::from_static("GET, POST, PUT, DELETE"),
                );
                r
            }
            (&Method::PATCH, "/ssf/stream") | (&Method::PUT, "/ssf/stream") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                let Some(id) = stream_id_of(&m) else {
                    return bad_request("stream_id is required");
                };
                let mut streams = lock(&self.streams);
                let Some(stream) = streams.get_mut(&id) else {
                    return not_found("no such stream");
                };
                let merged = if method == Method::PATCH {
                    let mut merged = stream.config.as_object().cloned().unwrap_or_default();
                    for (k, v) in m {
                        merged.insert(k, v);
                    }
                    merged
                } else {
                    m
                };
                match self.build_stream_config(&id, &merged) {
                    Ok(config) => {
                        stream.config = config.clone();
                        json_response(StatusCode::OK, &config)
                    }
                    Err(e) => bad_request(&e),
                }
            }
            (&Method::DELETE, "/ssf/stream") => {
                let Some(id) = query_param(query.as_deref(), "stream_id") else {
                    return bad_request("stream_id is required");
                };
                match lock(&self.streams).remove(&id) {
                    Some(_) => status_response(StatusCode::NO_CONTENT),
                    None => not_found("no such stream"),
                }
            }
            (&Method::GET, "/ssf/status") => {
                let streams = lock(&self.streams);
                let stream = match query_param(query.as_deref(), "stream_id") {
                    Some(id) => streams.get(&id).map(|s| (id, s)),
                    None if streams.len() == 1 => {
                        streams.iter().next().map(|(id, s)| (id.clone(), s))
                    }
                    None => return bad_request("stream_id is required"),
                };
                match stream {
                    Some((id, s)) => json_response(StatusCode::OK, &status_json(&id, s)),
                    None => not_found("no such stream"),
                }
            }
            (&Method::POST, "/ssf/status") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                let Some(id) = stream_id_of(&m) else {
                    return bad_request("stream_id is required");
                };
                let status = m.get("status").and_then(Value::as_str).unwrap_or_default();
                if !["enabled", "paused", "disabled"].contains(&status) {
                    return bad_request("status must be enabled, paused or disabled");
                }
                let reason = m.get("reason").and_then(Value::as_str).map(str::to_string);
                // Enabled again: what was held while paused follows the stream-updated event;
                // disabled: what was held is dropped (SSF §8.1.2).
                let (snapshot, held) = {
                    let mut streams = lock(&self.streams);
                    let Some(stream) = streams.get_mut(&id) else {
                        return not_found("no such stream");
                    };
                    stream.status = status.to_string();
                    stream.reason = reason.clone();
                    let held = match status {
                        "paused" => Vec::new(),
                        _ => std::mem::take(&mut stream.held),
                    };
                    (stream.clone(), held)
                };
                let mut sets = vec![self.sign_set(DevTransmitter::stream_updated(
                    &id,
                    status,
                    reason.as_deref(),
                ))];
                if status == "enabled" {
                    sets.extend(held);
                }
                self.send_to_stream(&snapshot, sets);
                json_response(StatusCode::OK, &status_json(&id, &snapshot))
            }
            (&Method::POST, "/ssf/verify") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                let Some(id) = stream_id_of(&m) else {
                    return bad_request("stream_id is required");
                };
                let Some(stream) = lock(&self.streams).get(&id).cloned() else {
                    return not_found("no such stream");
                };
                if self.verifications.load(Ordering::SeqCst) {
                    let state = m.get("state").and_then(Value::as_str);
                    let set = self.sign_set(DevTransmitter::verification(&id, state));
                    self.send_to_stream(&stream, vec![set]);
                }
                status_response(StatusCode::NO_CONTENT)
            }
            (&Method::POST, "/ssf/subjects:add") | (&Method::POST, "/ssf/subjects:remove") => {
                let m = match json_body() {
                    Ok(m) => m,
                    Err(e) => return bad_request(&e),
                };
                let Some(id) = stream_id_of(&m) else {
                    return bad_request("stream_id is required");
                };
                let Some(subject) = m.get("subject").filter(|s| s.is_object()).cloned() else {
                    return bad_request("subject is required");
                };
                let mut streams = lock(&self.streams);
                let Some(stream) = streams.get_mut(&id) else {
                    return not_found("no such stream");
                };
                // Every subject is included by default (`default_subjects: ALL`): adding one
                // undoes its removal; removing one stops its events for this stream.
                if path.ends_with(":add") {
                    stream.removed.retain(|s| *s != subject);
                    if !stream.subjects.contains(&subject) {
                        stream.subjects.push(subject);
                    }
                    status_response(StatusCode::OK)
                } else {
                    stream.subjects.retain(|s| *s != subject);
                    if !stream.removed.contains(&subject) {
                        stream.removed.push(subject);
                    }
                    status_response(StatusCode::NO_CONTENT)
                }
            }
            _ => not_found("no such endpoint"),
        }
    }

    async fn poll(&self, headers: &HeaderMap, m: &Map<String, Value>) -> Response<DevBody> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let max_events = match m.get("maxEvents") {
            None | Some(Value::Null) => DEFAULT_MAX_EVENTS,
            Some(v) => match v.as_u64() {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => return bad_request("maxEvents is not a non-negative integer"),
            },
        };
        let return_immediately = m
            .get("returnImmediately")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let acks: Vec<String> = m
            .get("ack")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let errs: Vec<(String, Value)> = m
            .get("setErrs")
            .and_then(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        {
            let mut q = lock(&self.queue);
            q.retain(|(jti, _)| !acks.contains(jti) && !errs.iter().any(|(j, _)| j == jti));
        }
        lock(&self.acks).extend(acks);
        lock(&self.set_errs).extend(errs);

        if max_events > 0 && !return_immediately {
            let wait = preferred_wait(headers)
                .unwrap_or(self.opts.poll_wait)
                .min(self.opts.poll_wait)
                .min(MAX_POLL_WAIT);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !lock(&self.queue).is_empty() {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
        }
        let q = lock(&self.queue);
        let mut sets = Map::new();
        for (jti, set) in q.iter().take(max_events) {
            sets.insert(jti.clone(), Value::String(set.clone()));
        }
        json_response(
            StatusCode::OK,
            &json!({"sets": sets, "moreAvailable": q.len() > sets.len()}),
        )
    }
}

fn status_json(id: &str, s: &Stream) -> Value {
    let mut v = json!({"stream_id": id, "status": s.status});
    if let Some(r) = &s.reason {
        v["reason"] = json!(r);
    }
    v
}

/// POSTs `set` to a push endpoint (RFC 8935): `Content-Type: application/secevent+jwt`,
/// `Accept: application/json`, and `Authorization` when given. Returns status, headers, body.
pub async fn push(
    url: &str,
    authorization: Option<&str>,
    set: &str,
) -> Result<(u16, HeaderMap, String), DevError> {
    let mut headers = vec![
        ("content-type", "application/secevent+jwt"),
        ("accept", "application/json"),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    let (status, headers, body) = super::http_request(
        Method::POST,
        url,
        &headers,
        Bytes::copy_from_slice(set.as_bytes()),
    )
    .await?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn with_timestamp(mut body: Value, event_timestamp: Option<i64>) -> Value {
    if let (Some(ts), Value::Object(m)) = (event_timestamp, &mut body) {
        m.insert("event_timestamp".into(), json!(ts));
    }
    body
}

impl DevTransmitter {
    /// Starts the transmitter on `listener`; its issuer URL is `http://127.0.0.1:<port>`.
    pub fn start(
        listener: TcpListener,
        opts: TransmitterOptions,
    ) -> Result<DevTransmitter, DevError> {
        let addr = listener.local_addr()?;
        let key = SigningKey::generate(opts.alg)?;
        let inner = Arc::new(Inner {
            issuer: format!("http://127.0.0.1:{}", addr.port()),
            keys: Mutex::new(Keys {
                keys: vec![key],
                signing: 0,
            }),
            streams: Mutex::new(HashMap::new()),
            queue: Mutex::new(Vec::new()),
            notify: Notify::new(),
            acks: Mutex::new(Vec::new()),
            set_errs: Mutex::new(Vec::new()),
            pushes: Mutex::new(Vec::new()),
            polls: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            verifications: AtomicBool::new(true),
            management_token: Mutex::new(opts.management_token.clone()),
            management: Mutex::new(Vec::new()),
            management_delay: Mutex::new(Duration::ZERO),
            opts,
        });
        let handler_inner = inner.clone();
        let server = super::serve(listener, move |req, _peer: SocketAddr| {
            handler_inner.clone().handle(req)
        })?;
        Ok(DevTransmitter { inner, server })
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.server.shutdown();
    }

    /// The issuer URL, `http://127.0.0.1:<port>`.
    pub fn issuer_url(&self) -> String {
        self.inner.issuer.clone()
    }

    /// `<issuer>/.well-known/ssf-configuration`.
    pub fn configuration_url(&self) -> String {
        format!("{}/.well-known/ssf-configuration", self.inner.issuer)
    }

    /// `<issuer>/jwks`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.inner.issuer)
    }

    /// `<issuer>/ssf/poll`.
    pub fn poll_url(&self) -> String {
        format!("{}/ssf/poll", self.inner.issuer)
    }

    /// The options the transmitter was started with.
    pub fn options(&self) -> &TransmitterOptions {
        &self.inner.opts
    }

    /// The current signing key (to forge SETs in tests).
    pub fn signing_key(&self) -> SigningKey {
        self.inner.signing_key()
    }

    /// Adds a fresh key, makes it the signing key, returns its `kid`.
    ///
    /// # Panics
    /// Only if aws-lc fails to generate a key.
    pub fn rotate(&self, alg: KeyAlg) -> String {
        #[allow(clippy::expect_used)]
        let key = SigningKey::generate(alg).expect("dev transmitter key generation");
        let kid = key.kid().to_string();
        let mut keys = lock(&self.inner.keys);
        keys.keys.push(key);
        keys.signing = keys.keys.len() - 1;
        kid
    }

    /// Signs a SET: header `{"typ":"secevent+jwt","alg":…,"kid":…}`; fills `iss`, `iat`, `jti`
    /// and `aud` (the options' audience) when absent, keeps the caller's values, and drops
    /// members the caller set to `null` (to build SETs missing a claim).
    pub fn sign_set(&self, payload: Value) -> String {
        self.inner.sign_set(payload)
    }

    /// POSTs `set` to a push endpoint; see [`push`].
    pub async fn push(
        &self,
        url: &str,
        authorization: Option<&str>,
        set: &str,
    ) -> Result<(u16, HeaderMap, String), DevError> {
        push(url, authorization, set).await
    }

    /// Queues `set` for poll delivery (replacing a queued SET with the same `jti`).
    pub fn queue_for_poll(&self, set: &str) {
        self.inner.queue(set);
    }

    /// Delivers `set` as an event of the transmitter: pushed to every enabled push stream that
    /// includes its subject (recorded in [`pushes`](Self::pushes)), queued once for poll if an
    /// enabled poll stream includes it, held by paused streams, dropped by disabled ones.
    pub async fn deliver(&self, set: &str) {
        let route = self.inner.route(set);
        for (_, url, auth) in route.push {
            self.inner.push_and_record(&url, auth.as_deref(), set).await;
        }
        if !route.poll.is_empty() {
            self.inner.queue(set);
        }
    }

    /// SETs queued for poll and not yet acknowledged: `(jti, set)`.
    pub fn queued(&self) -> Vec<(String, String)> {
        lock(&self.inner.queue).clone()
    }

    /// Every `jti` acknowledged by pollers, in order.
    pub fn acks(&self) -> Vec<String> {
        lock(&self.inner.acks).clone()
    }

    /// Every `setErrs` entry received by the poll endpoint: `(jti, {"err","description"})`.
    pub fn set_errs(&self) -> Vec<(String, Value)> {
        lock(&self.inner.set_errs).clone()
    }

    /// Pushes made by the transmitter itself (verification, stream-updated, `deliver`).
    pub fn pushes(&self) -> Vec<PushRecord> {
        lock(&self.inner.pushes).clone()
    }

    /// Poll requests received.
    pub fn polls(&self) -> usize {
        self.inner.polls.load(Ordering::SeqCst)
    }

    /// `/jwks` requests received.
    pub fn jwks_fetches(&self) -> usize {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Stream configurations, as returned by the API.
    pub fn streams(&self) -> Vec<Value> {
        lock(&self.inner.streams)
            .values()
            .map(|s| s.config.clone())
            .collect()
    }

    /// Status (`enabled`, `paused`, `disabled`) of a stream.
    pub fn stream_status(&self, stream_id: &str) -> Option<String> {
        lock(&self.inner.streams)
            .get(stream_id)
            .map(|s| s.status.clone())
    }

    /// Subjects added to a stream.
    pub fn subjects(&self, stream_id: &str) -> Vec<Value> {
        lock(&self.inner.streams)
            .get(stream_id)
            .map(|s| s.subjects.clone())
            .unwrap_or_default()
    }

    /// Subjects removed from a stream (their events are not sent to it).
    pub fn removed_subjects(&self, stream_id: &str) -> Vec<Value> {
        lock(&self.inner.streams)
            .get(stream_id)
            .map(|s| s.removed.clone())
            .unwrap_or_default()
    }

    /// SETs a paused stream holds.
    pub fn held(&self, stream_id: &str) -> Vec<String> {
        lock(&self.inner.streams)
            .get(stream_id)
            .map(|s| s.held.clone())
            .unwrap_or_default()
    }

    /// Every management request received so far (every `/ssf/...` call but polls), in order.
    pub fn management_requests(&self) -> Vec<ManagementRequest> {
        lock(&self.inner.management).clone()
    }

    /// Adds a stream configuration as given (`stream_id` and `iss` included: a stream of
    /// another issuer, or one created by someone else), enabled; returns its id.
    pub fn insert_stream(&self, config: Value) -> String {
        let id = config
            .get("stream_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| random_id(8));
        lock(&self.inner.streams).insert(id.clone(), Stream::new(config));
        id
    }

    /// Every management request waits `delay` before it is served (a slow transmitter).
    pub fn set_management_delay(&self, delay: Duration) {
        *lock(&self.inner.management_delay) = delay;
    }

    /// `false`: verification requests are answered `204` but no verification event is sent
    /// (a transmitter that lost its delivery); `true`: back to normal.
    pub fn set_verification_delivery(&self, on: bool) {
        self.inner.verifications.store(on, Ordering::SeqCst);
    }

    /// Replaces the bearer every `/ssf/...` call needs (a token that expired or was revoked
    /// early is refused with 401 from then on); `None`: no bearer needed.
    pub fn set_management_token(&self, token: Option<String>) {
        *lock(&self.inner.management_token) = token;
    }

    /// `false`: every endpoint answers 503 (an outage); `true`: back to normal.
    pub fn set_available(&self, available: bool) {
        self.inner.available.store(available, Ordering::SeqCst);
    }

    // ---- SET payload builders (sign them with `sign_set`) ----

    /// A payload with one event: `{"sub_id": sub_id, "events": {event_type: event}}`.
    pub fn event(sub_id: Value, event_type: &str, event: Value) -> Value {
        let mut events = Map::new();
        events.insert(event_type.to_string(), event);
        json!({"sub_id": sub_id, "events": events})
    }

    /// CAEP session-revoked.
    pub fn session_revoked(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}session-revoked"),
            with_timestamp(json!({"initiating_entity": "policy"}), event_timestamp),
        )
    }

    /// CAEP credential-change (`credential_type` e.g. `password`, `change_type` e.g. `update`).
    pub fn credential_change(
        sub_id: Value,
        credential_type: &str,
        change_type: &str,
        event_timestamp: Option<i64>,
    ) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}credential-change"),
            with_timestamp(
                json!({"credential_type": credential_type, "change_type": change_type}),
                event_timestamp,
            ),
        )
    }

    /// CAEP token-claims-change.
    pub fn token_claims_change(
        sub_id: Value,
        claims: Value,
        event_timestamp: Option<i64>,
    ) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}token-claims-change"),
            with_timestamp(json!({"claims": claims}), event_timestamp),
        )
    }

    /// CAEP assurance-level-change (`change_direction`: `increase` / `decrease`).
    pub fn assurance_level_change(
        sub_id: Value,
        namespace: &str,
        current_level: &str,
        previous_level: Option<&str>,
        change_direction: Option<&str>,
        event_timestamp: Option<i64>,
    ) -> Value {
        let mut body = json!({"namespace": namespace, "current_level": current_level});
        if let Some(p) = previous_level {
            body["previous_level"] = json!(p);
        }
        if let Some(d) = change_direction {
            body["change_direction"] = json!(d);
        }
        Self::event(
            sub_id,
            &format!("{CAEP}assurance-level-change"),
            with_timestamp(body, event_timestamp),
        )
    }

    /// CAEP device-compliance-change (`compliant` / `not-compliant`).
    pub fn device_compliance_change(
        sub_id: Value,
        previous_status: &str,
        current_status: &str,
        event_timestamp: Option<i64>,
    ) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}device-compliance-change"),
            with_timestamp(
                json!({"previous_status": previous_status, "current_status": current_status}),
                event_timestamp,
            ),
        )
    }

    /// CAEP risk-level-change (`principal` e.g. `USER`, level `LOW`/`MEDIUM`/`HIGH`).
    pub fn risk_level_change(
        sub_id: Value,
        principal: &str,
        current_level: &str,
        event_timestamp: Option<i64>,
    ) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}risk-level-change"),
            with_timestamp(
                json!({"principal": principal, "current_level": current_level}),
                event_timestamp,
            ),
        )
    }

    /// CAEP session-established.
    pub fn session_established(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{CAEP}session-established"),
            with_timestamp(json!({}), event_timestamp),
        )
    }

    /// RISC account-disabled (optional `reason`, e.g. `hijacking`).
    pub fn account_disabled(
        sub_id: Value,
        reason: Option<&str>,
        event_timestamp: Option<i64>,
    ) -> Value {
        let mut body = json!({});
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        Self::event(
            sub_id,
            &format!("{RISC}account-disabled"),
            with_timestamp(body, event_timestamp),
        )
    }

    /// RISC account-enabled.
    pub fn account_enabled(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{RISC}account-enabled"),
            with_timestamp(json!({}), event_timestamp),
        )
    }

    /// RISC account-purged.
    pub fn account_purged(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{RISC}account-purged"),
            with_timestamp(json!({}), event_timestamp),
        )
    }

    /// RISC credential-compromise.
    pub fn credential_compromise(
        sub_id: Value,
        credential_type: &str,
        event_timestamp: Option<i64>,
    ) -> Value {
        Self::event(
            sub_id,
            &format!("{RISC}credential-compromise"),
            with_timestamp(json!({"credential_type": credential_type}), event_timestamp),
        )
    }

    /// RISC sessions-revoked (deprecated form of CAEP session-revoked).
    pub fn sessions_revoked(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{RISC}sessions-revoked"),
            with_timestamp(json!({}), event_timestamp),
        )
    }

    /// OAuth tokens-revoked (Google).
    pub fn tokens_revoked(sub_id: Value, event_timestamp: Option<i64>) -> Value {
        Self::event(
            sub_id,
            &format!("{OAUTH}tokens-revoked"),
            with_timestamp(json!({}), event_timestamp),
        )
    }

    /// SSF verification for `stream_id` (`state` omitted when `None`).
    pub fn verification(stream_id: &str, state: Option<&str>) -> Value {
        let body = match state {
            Some(s) => json!({"state": s}),
            None => json!({}),
        };
        Self::event(opaque(stream_id), &format!("{SSF}verification"), body)
    }

    /// SSF stream-updated for `stream_id`.
    pub fn stream_updated(stream_id: &str, status: &str, reason: Option<&str>) -> Value {
        let mut body = json!({"status": status});
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        Self::event(opaque(stream_id), &format!("{SSF}stream-updated"), body)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dev::keys::decode_unverified;

    async fn start(opts: TransmitterOptions) -> DevTransmitter {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        DevTransmitter::start(l, opts).unwrap()
    }

    async fn post(url: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let (s, _, b) = crate::dev::http_request(Method::POST, url, &headers, body.to_string())
            .await
            .unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    #[test]
    fn fill_keeps_caller_values_and_drops_nulls() {
        let p = fill_set_payload(
            json!({"jti": "mine", "aud": ["a", "b"], "iat": null}),
            "http://t",
            "aud",
            42,
        );
        assert_eq!(p["jti"], "mine");
        assert_eq!(p["aud"], json!(["a", "b"]));
        assert_eq!(p["iss"], "http://t");
        assert!(p.get("iat").is_none());
        let p = fill_set_payload(json!({}), "http://t", "aud", 42);
        assert_eq!(p["iat"], 42);
        assert_eq!(p["aud"], "aud");
        assert_eq!(p["jti"].as_str().unwrap().len(), 32);
    }

    #[tokio::test]
    async fn sign_set_fills_fields_and_header() {
        let t = start(TransmitterOptions::default()).await;
        let payload = DevTransmitter::session_revoked(iss_sub("http://idp", "alice"), Some(1000));
        let set = t.sign_set(payload);
        let (h, p) = decode_unverified(&set).unwrap();
        assert_eq!(h["typ"], "secevent+jwt");
        assert_eq!(h["alg"], "RS256");
        assert_eq!(h["kid"], t.signing_key().kid());
        assert_eq!(p["iss"], t.issuer_url());
        assert_eq!(p["aud"], "cae-proxy");
        assert!(p["iat"].is_i64());
        assert!(p["jti"].is_string());
        assert_eq!(
            p["events"][format!("{CAEP}session-revoked")]["event_timestamp"],
            1000
        );
        assert_eq!(p["sub_id"]["sub"], "alice");
        // jsonwebtoken verifies it with the published key.
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["cae-proxy"]);
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(&set, &t.signing_key().decoding_key().unwrap(), &v).unwrap();
    }

    #[test]
    fn builders_follow_the_spec_shapes() {
        let p = DevTransmitter::credential_change(opaque("u"), "password", "update", None);
        let e = &p["events"][format!("{CAEP}credential-change")];
        assert_eq!(e["credential_type"], "password");
        assert_eq!(e["change_type"], "update");
        assert!(e.get("event_timestamp").is_none());
        let p = DevTransmitter::account_disabled(email("a@b.c"), Some("hijacking"), Some(5));
        assert_eq!(
            p["events"][format!("{RISC}account-disabled")]["reason"],
            "hijacking"
        );
        let p = DevTransmitter::verification("s1", Some("xyz"));
        assert_eq!(p["sub_id"], opaque("s1"));
        assert_eq!(p["events"][format!("{SSF}verification")]["state"], "xyz");
        let c = complex(&[("user", iss_sub("i", "s")), ("session", opaque("sid"))]);
        assert_eq!(c["format"], "complex");
        assert_eq!(c["session"]["id"], "sid");
    }

    #[test]
    fn prefer_wait_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert("prefer", HeaderValue::from_static("respond-async, wait=3"));
        assert_eq!(preferred_wait(&h), Some(Duration::from_secs(3)));
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn discovery_streams_and_poll() {
        let t = start(TransmitterOptions {
            management_token: Some("tok".into()),
            ..TransmitterOptions::default()
        })
        .await;
        let (s, _, b) = crate::dev::http_request(Method::GET, &t.configuration_url(), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 200);
        let conf: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(conf["issuer"], t.issuer_url());
        assert_eq!(conf["spec_version"], "1_0");

        let stream_url = format!("{}/ssf/stream", t.issuer_url());
        let (s, _) = post(&stream_url, json!({}), None).await;
        assert_eq!(s, 401);
        let (s, stream) = post(
            &stream_url,
            json!({"delivery": {"method": POLL_METHOD}, "events_requested": [format!("{CAEP}session-revoked")]}),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 201);
        assert_eq!(stream["iss"], t.issuer_url());
        assert_eq!(stream["delivery"]["endpoint_url"], t.poll_url());
        let id = stream["stream_id"].as_str().unwrap().to_string();

        let (s, _) = post(
            &format!("{}/ssf/verify", t.issuer_url()),
            json!({"stream_id": id, "state": "st"}),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 204);
        let (s, polled) = post(
            &t.poll_url(),
            json!({"returnImmediately": true}),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 200);
        let sets = polled["sets"].as_object().unwrap();
        assert_eq!(sets.len(), 1);
        let (jti, set) = sets.iter().next().unwrap();
        let (_, p) = decode_unverified(set.as_str().unwrap()).unwrap();
        assert_eq!(p["events"][format!("{SSF}verification")]["state"], "st");
        assert_eq!(polled["moreAvailable"], false);

        // Unacknowledged: served again; acknowledged: gone.
        let (_, again) = post(
            &t.poll_url(),
            json!({"returnImmediately": true}),
            Some("tok"),
        )
        .await;
        assert!(again["sets"].get(jti).is_some());
        let (_, after) = post(
            &t.poll_url(),
            json!({"returnImmediately": true, "ack": [jti], "setErrs": {"x": {"err": "invalid_key", "description": "d"}}}),
            Some("tok"),
        )
        .await;
        assert_eq!(after["sets"], json!({}));
        assert_eq!(t.acks(), vec![jti.clone()]);
        assert_eq!(t.set_errs()[0].0, "x");

        // Long poll wakes up when a SET is queued.
        let set = t.sign_set(DevTransmitter::session_revoked(opaque("u"), None));
        let poll_url = t.poll_url();
        let waiter =
            tokio::spawn(
                async move { post(&poll_url, json!({"maxEvents": 10}), Some("tok")).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.queue_for_poll(&set);
        let (s, got) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, 200);
        assert_eq!(got["sets"].as_object().unwrap().len(), 1);

        let (s, st) = post(
            &format!("{}/ssf/status", t.issuer_url()),
            json!({"stream_id": id, "status": "paused"}),
            Some("tok"),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(st["status"], "paused");
        assert_eq!(t.stream_status(&id).as_deref(), Some("paused"));

        let (s, _, _) = crate::dev::http_request(
            Method::DELETE,
            &format!("{stream_url}?stream_id={id}"),
            &[("authorization", "Bearer tok")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(s, 204);

        t.set_available(false);
        let (s, _, _) = crate::dev::http_request(Method::GET, &t.jwks_url(), &[], "")
            .await
            .unwrap();
        assert_eq!(s, 503);
    }
}
