//! RFC 8935 push endpoint and the per-transmitter runtime ([`TransmitterRt`]) that push, poll and
//! stream management share: authenticate, bound and read the body, verify, persist, then `202`.
//!
//! Locks: `TransmitterRt` keeps its small mutable state (outstanding verification states, stream
//! status) behind `std::sync::Mutex`es that are held for a map operation only, never across
//! `.await`; configuration is swapped through `ArcSwap` on reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::events::{self, EventPolicy, Plan, StreamStatus, StreamUpdate, VerificationState};
use super::set::{self, ErrCode, SetError, SetPolicy, ValidSet};
use crate::auth::keys::{KeySet, VerifyKey};
use crate::config::{Secret, Transmitter};
use crate::store::{Batch, CommitOutcome, SignalStore, StoreError};

/// How long a verification `state` we asked for stays acceptable (redeliveries included).
pub const STATE_TTL_SECS: i64 = 24 * 3600;
/// `Retry-After` (seconds) when the store or the keys are unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// How a SET reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    Push,
    Poll,
}

impl DeliveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Push => "push",
            DeliveryKind::Poll => "poll",
        }
    }
}

/// Counters a transmitter keeps for metrics (monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    /// SETs received (push requests that passed authentication, polled SETs).
    pub received: AtomicU64,
    pub committed: AtomicU64,
    pub duplicates: AtomicU64,
    /// Refused SETs (any `err`).
    pub rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Store or key failures answered with 503 / left unacknowledged.
    pub unavailable: AtomicU64,
    pub polls: AtomicU64,
    pub poll_failures: AtomicU64,
}

/// One freshness measurement, taken when a SET's changes became durable.
#[derive(Debug, Clone)]
pub struct FreshnessSample {
    pub transmitter: String,
    pub delivery: DeliveryKind,
    /// Arrival (request or poll response read) → committed.
    pub commit_latency: Duration,
    /// Latest `event_timestamp` (or `iat`) → committed, in milliseconds (negative on clock skew).
    pub event_lag_ms: i64,
}

/// Callback for each SET's outcome (the metrics module installs one).
pub type EventObserver = Box<dyn Fn(&SignalEvent<'_>) + Send + Sync>;

/// Callback for freshness samples (the metrics module installs one).
pub type FreshnessObserver = Box<dyn Fn(&FreshnessSample) + Send + Sync>;

/// Latest freshness values plus an optional observer.
#[derive(Default)]
pub struct Freshness {
    pub last_commit_latency_us: AtomicU64,
    pub last_event_lag_ms: AtomicI64,
    /// Epoch seconds of the last committed SET (0 = none yet).
    pub last_commit_at: AtomicI64,
    observer: ArcSwapOption<FreshnessObserver>,
}

impl Freshness {
    pub fn set_observer(&self, f: FreshnessObserver) {
        self.observer.store(Some(Arc::new(f)));
    }

    fn record(&self, sample: &FreshnessSample, now: i64) {
        self.last_commit_latency_us.store(
            sample.commit_latency.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.last_event_lag_ms
            .store(sample.event_lag_ms, Ordering::Relaxed);
        self.last_commit_at.store(now, Ordering::Relaxed);
        if let Some(f) = self.observer.load().as_ref() {
            f(sample);
        }
    }
}

/// Stream state as the transmitter last announced or reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    pub stream_id: Option<String>,
    pub status: Option<StreamStatus>,
    pub reason: Option<String>,
    /// Event time of the status (epoch seconds).
    pub at: i64,
    /// Why stream management last failed (cleared by a success), for readiness.
    pub last_error: Option<String>,
}

/// Where and how to poll when stream management supplied the endpoint (RFC 8936 via SSF).
#[derive(Debug, Clone)]
pub struct PollTarget {
    pub endpoint: String,
    pub authorization: Option<Secret>,
}

/// Everything the proxy keeps per transmitter across reloads.
pub struct TransmitterRt {
    cfg: ArcSwap<Transmitter>,
    policy: ArcSwap<EventPolicy>,
    pub keys: Arc<KeySet>,
    /// Outstanding verification states → expiry (epoch seconds).
    states: Mutex<HashMap<String, i64>>,
    /// Epoch seconds of the last accepted verification (0 = never).
    verified_at: AtomicI64,
    stream: Mutex<StreamState>,
    poll_target: ArcSwapOption<PollTarget>,
    /// Called once per SET with what was logged (the metrics module installs one).
    event_observer: ArcSwapOption<EventObserver>,
    pub counters: Counters,
    pub freshness: Freshness,
}

impl std::fmt::Debug for TransmitterRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransmitterRt")
            .field("name", &self.cfg.load().name)
            .finish_non_exhaustive()
    }
}

impl TransmitterRt {
    /// `token_issuer_url`: the `issuer` of the configured issuer that `cfg.token_issuer` names.
    pub fn new(
        cfg: Transmitter,
        keys: Arc<KeySet>,
        token_issuer_url: Option<&str>,
    ) -> TransmitterRt {
        let policy = EventPolicy::from_transmitter(&cfg, token_issuer_url);
        TransmitterRt {
            cfg: ArcSwap::from_pointee(cfg),
            policy: ArcSwap::from_pointee(policy),
            keys,
            states: Mutex::new(HashMap::new()),
            verified_at: AtomicI64::new(0),
            stream: Mutex::new(StreamState::default()),
            poll_target: ArcSwapOption::empty(),
            event_observer: ArcSwapOption::empty(),
            counters: Counters::default(),
            freshness: Freshness::default(),
        }
    }

    /// Installs the per-SET observer (metrics).
    pub fn set_event_observer(&self, f: EventObserver) {
        self.event_observer.store(Some(Arc::new(f)));
    }

    /// Installs a reloaded configuration; states, status, counters survive.
    pub fn reconfigure(&self, cfg: Transmitter, token_issuer_url: Option<&str>) {
        self.policy.store(Arc::new(EventPolicy::from_transmitter(
            &cfg,
            token_issuer_url,
        )));
        self.cfg.store(Arc::new(cfg));
    }

    pub fn cfg(&self) -> Arc<Transmitter> {
        self.cfg.load_full()
    }

    pub fn name(&self) -> String {
        self.cfg.load().name.clone()
    }

    pub fn event_policy(&self) -> Arc<EventPolicy> {
        self.policy.load_full()
    }

    /// Creates, registers and returns a fresh random verification `state`.
    pub fn new_state(&self, now: i64) -> String {
        use base64::Engine;
        let bytes: [u8; 24] = rand::random();
        let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        self.register_state(&state, now);
        state
    }

    /// Registers a `state` we sent in a verification request.
    pub fn register_state(&self, state: &str, now: i64) {
        if let Ok(mut s) = self.states.lock() {
            s.retain(|_, exp| *exp > now);
            s.insert(state.to_string(), now + STATE_TTL_SECS);
        }
    }

    /// Whether `state` is one we asked for and that has not expired. It stays valid until it
    /// expires, so a redelivered verification SET is answered like the first one.
    pub fn state_outstanding(&self, state: &str, now: i64) -> bool {
        self.states
            .lock()
            .map(|s| s.get(state).is_some_and(|exp| *exp > now))
            .unwrap_or(false)
    }

    /// Epoch seconds of the last accepted verification event.
    pub fn verified_at(&self) -> Option<i64> {
        Some(self.verified_at.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    pub fn mark_verified(&self, now: i64) {
        self.verified_at.store(now, Ordering::Relaxed);
    }

    pub fn stream_state(&self) -> StreamState {
        self.stream.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records why stream management failed (`None` once it works again).
    pub fn set_stream_error(&self, e: Option<String>) {
        if let Ok(mut s) = self.stream.lock() {
            s.last_error = e;
        }
    }

    pub fn set_stream_id(&self, id: Option<String>) {
        if let Ok(mut s) = self.stream.lock() {
            s.stream_id = id;
        }
    }

    /// Applies a status update unless a newer one was seen.
    pub fn update_stream_status(&self, u: &StreamUpdate) {
        if let Ok(mut s) = self.stream.lock() {
            if s.status.is_none() || u.at >= s.at {
                s.status = Some(u.status.clone());
                s.reason = u.reason.clone();
                s.at = u.at;
            }
        }
    }

    /// False when the transmitter says the stream is paused or disabled (for readiness).
    pub fn stream_active(&self) -> bool {
        !matches!(
            self.stream_state().status,
            Some(StreamStatus::Paused | StreamStatus::Disabled)
        )
    }

    pub fn set_poll_target(&self, t: Option<PollTarget>) {
        self.poll_target.store(t.map(Arc::new));
    }

    pub fn poll_target(&self) -> Option<Arc<PollTarget>> {
        self.poll_target.load_full()
    }

    /// The key for `kid`; on a miss, one JWKS refetch shared by concurrent callers and at most
    /// once per `unknown_kid_cooldown` (`KeySet::get_or_refetch`).
    pub async fn key(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        self.keys.get_or_refetch(kid).await
    }

    /// Verifies a SET with this transmitter's keys and policy (async only for the key lookup).
    pub async fn verify(&self, compact: &str, now: i64) -> Result<ValidSet, SetError> {
        let policy = SetPolicy::from(self.cfg().as_ref());
        let set = set::parse_unverified(compact)?;
        set::allowed_alg(&set.alg, &policy)?;
        let key = self.key(set.kid.as_deref()).await;
        set::verify_with_key(set, key.as_deref(), &policy, now)
    }
}

/// Why a SET was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Invalid(#[from] SetError),
    #[error("the verification state was not requested by this receiver")]
    InvalidState,
    #[error("the transmitter's keys are not available")]
    KeysUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProcessError {
    /// The RFC 8935 `err` for errors that are the transmitter's fault; `None` = ours (retry).
    pub fn err_code(&self) -> Option<(&'static str, String)> {
        match self {
            ProcessError::Invalid(e) => Some(e.err_code()),
            ProcessError::InvalidState => Some((ErrCode::InvalidState.as_str(), self.to_string())),
            ProcessError::KeysUnavailable | ProcessError::Store(_) => None,
        }
    }
}

/// A SET that was committed (or recognised as a repeat).
#[derive(Debug)]
pub struct Processed {
    pub jti: String,
    pub outcome: CommitOutcome,
    pub plan: Plan,
}

/// One log line per SET: never the SET itself, only ids, event names and a subject hash.
#[derive(Debug, Clone)]
pub struct SignalEvent<'a> {
    pub transmitter: &'a str,
    pub delivery: DeliveryKind,
    pub jti: Option<&'a str>,
    pub events: Vec<&'static str>,
    pub effects: Vec<&'static str>,
    pub result: &'static str,
    pub subject_hash: Option<String>,
    pub reasons: Vec<String>,
}

impl SignalEvent<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "cae_proxy::signals",
            transmitter = self.transmitter,
            delivery = self.delivery.as_str(),
            jti = self.jti.unwrap_or("-"),
            events = ?self.events,
            effects = ?self.effects,
            result = self.result,
            subject = self.subject_hash.as_deref().unwrap_or("-"),
            reasons = ?self.reasons,
            "security event"
        );
    }
}

/// First 16 hex digits of SHA-256 of the subject's identifying members.
pub fn subject_hash(s: &super::subject::Subject) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.fingerprint().as_bytes());
    hex::encode(&d.as_ref()[..8])
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Verifies, checks a verification `state`, commits durably, then applies in-memory side
/// effects (verified flag, stream status) and records freshness. Shared by push and poll.
pub async fn process_set(
    rt: &TransmitterRt,
    store: &Arc<SignalStore>,
    compact: &str,
    arrival: Instant,
    now: i64,
    delivery: DeliveryKind,
) -> Result<Processed, ProcessError> {
    let name = rt.name();
    let mut log = SignalEvent {
        transmitter: &name,
        delivery,
        jti: None,
        events: Vec::new(),
        effects: Vec::new(),
        result: "",
        subject_hash: None,
        reasons: Vec::new(),
    };
    rt.counters.received.fetch_add(1, Ordering::Relaxed);
    let r = process_inner(rt, store, compact, arrival, now, delivery, &mut log).await;
    let jti_owned;
    match &r {
        Ok(p) => {
            jti_owned = p.jti.clone();
            log.jti = Some(&jti_owned);
            log.result = match p.outcome {
                CommitOutcome::Committed => "committed",
                CommitOutcome::Duplicate => "duplicate",
            };
            let c = if p.outcome == CommitOutcome::Committed {
                &rt.counters.committed
            } else {
                &rt.counters.duplicates
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            log.result = match e.err_code() {
                Some((code, _)) => {
                    rt.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    code
                }
                None => {
                    rt.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                    "unavailable"
                }
            };
        }
    }
    log.emit();
    if let Some(f) = rt.event_observer.load().as_ref() {
        f(&log);
    }
    r
}

async fn process_inner(
    rt: &TransmitterRt,
    store: &Arc<SignalStore>,
    compact: &str,
    arrival: Instant,
    now: i64,
    delivery: DeliveryKind,
    log: &mut SignalEvent<'_>,
) -> Result<Processed, ProcessError> {
    let cfg = rt.cfg();
    let policy = SetPolicy::from(cfg.as_ref());
    let unverified = set::parse_unverified(compact)?;
    log.events = unverified
        .claims
        .events
        .iter()
        .map(|e| e.kind.name())
        .collect();
    log.subject_hash = unverified
        .claims
        .events
        .iter()
        .find_map(|e| e.subject.as_ref())
        .map(subject_hash);
    set::allowed_alg(&unverified.alg, &policy)?;
    let key = rt.key(unverified.kid.as_deref()).await;
    if key.is_none() && !rt.keys.is_loaded() {
        return Err(ProcessError::KeysUnavailable);
    }
    let valid = set::verify_with_key(unverified, key.as_deref(), &policy, now)?;
    let plan = events::plan(&valid, &rt.event_policy());
    log.effects = plan.notes.iter().map(|n| n.effect.label()).collect();
    log.reasons = plan
        .notes
        .iter()
        .flat_map(|n| {
            [
                &n.reasons.initiating_entity,
                &n.reasons.reason_admin,
                &n.reasons.reason_user,
                &n.reasons.reason,
            ]
        })
        .flatten()
        .cloned()
        .collect();
    if let Some(VerificationState::Given(state)) = &plan.verification {
        if !rt.state_outstanding(state, now) {
            return Err(ProcessError::InvalidState);
        }
    }
    let iss = crate::store::keys::normalize_iss(&valid.claims.iss).to_string();
    let batch = Batch {
        changes: plan.changes.clone(),
        set_id: Some((iss, valid.claims.jti.clone())),
        now,
    };
    let outcome = store.commit(batch).await?;
    if plan.verification.is_some() {
        rt.mark_verified(now);
    }
    if outcome == CommitOutcome::Committed {
        if let Some(u) = &plan.stream_update {
            rt.update_stream_status(u);
        }
        let sample = FreshnessSample {
            transmitter: cfg.name.clone(),
            delivery,
            commit_latency: arrival.elapsed(),
            event_lag_ms: wall_ms() - plan.event_time_ms,
        };
        rt.freshness.record(&sample, now);
    }
    Ok(Processed {
        jti: valid.claims.jti,
        outcome,
        plan,
    })
}

#[derive(serde::Serialize)]
struct ErrBody<'a> {
    err: &'a str,
    description: &'a str,
}

/// `400` with the RFC 8935 §2.4 JSON error body.
pub fn error_response(err: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrBody { err, description }).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("en-US"));
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn unavailable() -> Response<Full<Bytes>> {
    let mut r = empty(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// `application/secevent+jwt` or `application/jwt`, parameters ignored.
fn content_type_ok(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = v.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/secevent+jwt")
        || media.eq_ignore_ascii_case("application/jwt")
}

/// The configured `Authorization` value, compared in constant time (RFC 8935 §2.3). Without a
/// configured value the listener's mTLS is the authentication.
fn authenticated(expected: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => expected.matches(v.as_bytes()),
        _ => false,
    }
}

/// Handles one push request (RFC 8935 §2). Order: method, transmitter authentication (before
/// anything is read or disclosed), the client certificate bound to the transmitter (400
/// `access_denied`), content type (415), declared length (413), bounded read (413),
/// verification and `state` (400), durable commit (503 on failure), then `202` with an empty
/// body. A SET seen before is answered `202` again. `client_cert`: SHA-256 of the certificate
/// the connection's mTLS handshake verified.
pub async fn handle_push<B>(
    rt: &TransmitterRt,
    store: &Arc<SignalStore>,
    req: Request<B>,
    client_cert: Option<&[u8; 32]>,
    now: i64,
) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let arrival = Instant::now();
    let cfg = rt.cfg();
    let Some(push) = cfg.push.as_ref() else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !authenticated(push.authorization.as_ref(), &parts.headers) {
        rt.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, "push request without the configured Authorization");
        return error_response(
            ErrCode::AuthenticationFailed.as_str(),
            "the transmitter is not authenticated",
        );
    }
    if !push.client_cert_sha256.is_empty() {
        let Some(cert) = client_cert else {
            rt.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            return error_response(
                ErrCode::AuthenticationFailed.as_str(),
                "a client certificate is required",
            );
        };
        if !push.client_cert_sha256.iter().any(|pinned| pinned == cert) {
            rt.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, "push with a client certificate not bound to this transmitter");
            return error_response(
                ErrCode::AccessDenied.as_str(),
                "this client certificate may not send for this transmitter",
            );
        }
    }
    if !content_type_ok(&parts.headers) {
        return empty(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let max = push.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64)
        || http_body::Body::size_hint(&body).lower() > max as u64
    {
        return empty(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return empty(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => {
            return error_response(
                ErrCode::InvalidRequest.as_str(),
                "the request body could not be read",
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return error_response(
            ErrCode::InvalidRequest.as_str(),
            "the body is not a compact JWS: not UTF-8",
        );
    };
    match process_set(rt, store, text, arrival, now, DeliveryKind::Push).await {
        Ok(_) => empty(StatusCode::ACCEPTED),
        Err(e) => match e.err_code() {
            Some((err, description)) => error_response(err, &description),
            None => {
                tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, error = %e, "SET not stored; asking the transmitter to retry");
                unavailable()
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{KeyPolicy, KeySource, Push, RiskLevel};
    use crate::dev::keys::set_kit::{self as kit, AUD, ISS};
    use crate::dev::keys::SigningKey;
    use crate::store::{Durable, MemoryStore, SubjectKey};
    use serde_json::{json, Value};

    pub(crate) fn transmitter(dir: &std::path::Path, signer: &SigningKey) -> Transmitter {
        let path = dir.join("jwks.json");
        std::fs::write(&path, kit::jwks(signer).to_string()).unwrap();
        Transmitter {
            name: "tx".into(),
            issuer: ISS.into(),
            keys: KeySource::JwksFile(path),
            key_policy: KeyPolicy {
                allow_insecure_http: false,
                refresh_interval: Duration::from_secs(300),
                min_refresh: Duration::from_secs(1),
                max_refresh: Duration::from_secs(3600),
                unknown_kid_cooldown: Duration::from_secs(3600),
            },
            audiences: vec![AUD.into()],
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            min_rsa_bits: 2048,
            risk_revoke_level: RiskLevel::High,
            token_issuer: None,
            push: Some(Push {
                client_cert_sha256: Vec::new(),
                path: "/ssf/push".into(),
                authorization: Some(Secret::from_value("Bearer push-secret")),
                max_body: 8 * 1024,
            }),
            poll: None,
            stream: None,
        }
    }

    pub(crate) async fn runtime(dir: &std::path::Path, signer: &SigningKey) -> Arc<TransmitterRt> {
        let cfg = transmitter(dir, signer);
        let keys = Arc::new(KeySet::new(
            &cfg.name,
            cfg.keys.clone(),
            &cfg.issuer,
            cfg.key_policy.clone(),
            cfg.min_rsa_bits,
            crate::fetch::Fetcher::new(),
        ));
        keys.refresh().await.unwrap();
        Arc::new(TransmitterRt::new(cfg, keys, None))
    }

    pub(crate) struct Failing;
    impl Durable for Failing {
        fn commit(&self, _: &Batch) -> Result<CommitOutcome, StoreError> {
            Err(StoreError::Write("disk full".into()))
        }
        fn load(&self) -> Result<Vec<crate::store::Change>, StoreError> {
            Ok(Vec::new())
        }
        fn purge(&self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn name(&self) -> &'static str {
            "failing"
        }
    }

    fn req(body: &str, ct: Option<&str>, auth: Option<&str>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method("POST")
            .uri("/ssf/push")
            .header("accept", "application/json");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    }

    fn good(body: &str) -> Request<Full<Bytes>> {
        req(
            body,
            Some("application/secevent+jwt"),
            Some("Bearer push-secret"),
        )
    }

    async fn parts(r: Response<Full<Bytes>>) -> (u16, Vec<(String, String)>, String) {
        let status = r.status().as_u16();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let body =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, headers, body)
    }

    fn err_headers() -> Vec<(String, String)> {
        vec![
            ("content-language".into(), "en-US".into()),
            ("content-type".into(), "application/json".into()),
        ]
    }

    fn claims(jti: &str, events: Value) -> Value {
        json!({"iss": ISS, "jti": jti, "iat": 1_700_000_000, "aud": AUD, "sub_id": {"format":"iss_sub","iss":"https://idp.example.com/","sub":"u1"}, "events": events})
    }

    fn revoke_events() -> Value {
        json!({"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": 1_700_000_000}})
    }

    #[tokio::test]
    async fn push_statuses_headers_and_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let store = Arc::new(
            SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 1_700_000_000).unwrap(),
        );
        let now = 1_700_000_100;
        let set = s.sign_set(&claims("p-1", revoke_events()));

        // Accepted: 202, empty body, no headers; the change is enforced.
        let (st, h, b) = parts(handle_push(&rt, &store, good(&set), None, now).await).await;
        assert_eq!((st, h, b.as_str()), (202, vec![], ""));
        let key = SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "u1".into(),
        };
        assert_eq!(
            store.tables().revoked_at(&key.encode()),
            Some(1_700_000_000)
        );
        assert_eq!(rt.counters.committed.load(Ordering::Relaxed), 1);
        assert!(rt.freshness.last_commit_at.load(Ordering::Relaxed) > 0);

        // The same SET again: 202 again, applied once.
        let (st, _, b) = parts(handle_push(&rt, &store, good(&set), None, now).await).await;
        assert_eq!((st, b.as_str()), (202, ""));
        assert_eq!(rt.counters.duplicates.load(Ordering::Relaxed), 1);

        // Content type with parameters and application/jwt are accepted.
        let r = handle_push(
            &rt,
            &store,
            req(
                &s.sign_set(&claims("p-2", revoke_events())),
                Some("application/JWT; charset=utf-8"),
                Some("Bearer push-secret"),
            ),
            None,
            now,
        )
        .await;
        assert_eq!(r.status(), 202);

        // Authentication.
        for auth in [None, Some("Bearer wrong"), Some("Bearer push-secret ")] {
            let (st, h, b) = parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, Some("application/secevent+jwt"), auth),
                    None,
                    now,
                )
                .await,
            )
            .await;
            assert_eq!(
                (st, h, b.as_str()),
                (
                    400,
                    err_headers(),
                    r#"{"err":"authentication_failed","description":"the transmitter is not authenticated"}"#
                ),
                "{auth:?}"
            );
        }

        // 415 and 413.
        assert_eq!(
            parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, Some("application/json"), Some("Bearer push-secret")),
                    None,
                    now
                )
                .await
            )
            .await
            .0,
            415
        );
        assert_eq!(
            parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, None, Some("Bearer push-secret")),
                    None,
                    now
                )
                .await
            )
            .await
            .0,
            415
        );
        let big = "a".repeat(9 * 1024);
        assert_eq!(
            parts(handle_push(&rt, &store, good(&big), None, now).await).await,
            (413, vec![], String::new())
        );
        // A declared length above the limit is refused before reading.
        let mut r = good("x");
        r.headers_mut()
            .insert("content-length", HeaderValue::from_static("100000"));
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 413);
        // Streaming body without a length: refused while reading.
        let stream =
            http_body_util::StreamBody::new(futures_util::stream::iter((0..20).map(|_| {
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'a'; 1024])))
            })));
        let r = Request::builder()
            .method("POST")
            .header("content-type", "application/secevent+jwt")
            .header("authorization", "Bearer push-secret")
            .body(stream)
            .unwrap();
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 413);
        // Method.
        let mut r = good(&set);
        *r.method_mut() = Method::GET;
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 405);

        // Invalid SETs.
        let cases: Vec<(String, &str)> = vec![
            ("not a jwt".into(), r#"{"err":"invalid_request","description":"the body is not a compact JWS: a JWS has exactly three segments"}"#),
            (s.sign(Some(json!({"typ": "at+jwt"})), &claims("p-3", revoke_events())), r#"{"err":"invalid_request","description":"the typ header \"at+jwt\" is not acceptable for a SET"}"#),
            (s.sign_set(&json!({"iss": ISS, "jti": "p-4", "iat": 1, "aud": AUD, "events": revoke_events()})), r#"{"err":"invalid_request","description":"no subject identifier for event https://schemas.openid.net/secevent/caep/event-type/session-revoked"}"#),
            ({
                let mut v = claims("p-5", revoke_events());
                v["iss"] = json!("https://evil.example.com");
                s.sign_set(&v)
            }, r#"{"err":"invalid_issuer","description":"the SET issuer is not the configured transmitter"}"#),
            ({
                let mut v = claims("p-6", revoke_events());
                v["aud"] = json!("https://other.example.com");
                s.sign_set(&v)
            }, r#"{"err":"invalid_audience","description":"the SET audience does not name this receiver"}"#),
            (s.sign_raw(&json!({"alg":"RS256","kid":"nope"}), &claims("p-7", revoke_events())), r#"{"err":"invalid_key","description":"no key of the transmitter matches kid \"nope\""}"#),
        ];
        for (body, want) in cases {
            let (st, h, b) = parts(handle_push(&rt, &store, good(&body), None, now).await).await;
            assert_eq!((st, h, b.as_str()), (400, err_headers(), want));
        }

        // Verification: outstanding state, null state, foreign state.
        let ver = |jti: &str, state: Value| {
            s.sign_set(&json!({"iss": ISS, "jti": jti, "iat": 1, "aud": AUD, "sub_id": {"format":"opaque","id":"stream-1"},
                "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": state}}}))
        };
        let state = rt.new_state(now);
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-1", json!(state))), None, now)
                .await
                .status(),
            202
        );
        assert_eq!(rt.verified_at(), Some(now));
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-1", json!(state))), None, now)
                .await
                .status(),
            202,
            "redelivery"
        );
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-2", Value::Null)), None, now)
                .await
                .status(),
            202
        );
        let (st, h, b) = parts(
            handle_push(
                &rt,
                &store,
                good(&ver(
                    "v-3",
                    json!("VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="),
                )),
                None,
                now,
            )
            .await,
        )
        .await;
        assert_eq!(
            (st, h, b.as_str()),
            (
                400,
                err_headers(),
                r#"{"err":"invalid_state","description":"the verification state was not requested by this receiver"}"#
            )
        );

        // Stream updated: paused is flagged.
        let upd = s.sign_set(&json!({"iss": ISS, "jti": "su-1", "iat": 5, "aud": AUD, "sub_id": {"format":"opaque","id":"stream-1"},
            "events": {"https://schemas.openid.net/secevent/ssf/event-type/stream-updated": {"status": "paused", "reason": "maintenance"}}}));
        assert_eq!(
            handle_push(&rt, &store, good(&upd), None, now)
                .await
                .status(),
            202
        );
        assert!(!rt.stream_active());
        assert_eq!(rt.stream_state().reason.as_deref(), Some("maintenance"));

        // Unknown event: 202, no effect.
        let before = store.tables().stats();
        let unk = s.sign_set(&claims(
            "u-1",
            json!({"https://vendor.example/evt": {"x": 1}}),
        ));
        assert_eq!(
            handle_push(&rt, &store, good(&unk), None, now)
                .await
                .status(),
            202
        );
        assert_eq!(store.tables().stats(), before);
    }

    /// Compile-time check: the proxy spawns these inside hyper services.
    #[allow(dead_code)]
    fn futures_are_send(
        rt: &TransmitterRt,
        store: &Arc<SignalStore>,
        req: Request<hyper::body::Incoming>,
    ) {
        fn send<T: Send>(_: T) {}
        send(handle_push(rt, store, req, None, 0));
        send(rt.verify("x", 0));
    }

    #[tokio::test]
    async fn freshness_observer_sees_committed_sets() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        rt.freshness
            .set_observer(Box::new(move |f: &FreshnessSample| {
                sink.lock()
                    .unwrap()
                    .push((f.transmitter.clone(), f.delivery, f.event_lag_ms))
            }));
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let set = s.sign_set(&claims("fr-1", revoke_events()));
        assert_eq!(
            handle_push(&rt, &store, good(&set), None, 1).await.status(),
            202
        );
        assert_eq!(
            handle_push(&rt, &store, good(&set), None, 1).await.status(),
            202
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "duplicates are not samples");
        assert_eq!((seen[0].0.as_str(), seen[0].1), ("tx", DeliveryKind::Push));
        assert!(seen[0].2 > 0, "event 1_700_000_000 lies in the past");
        assert_eq!(
            rt.freshness.last_event_lag_ms.load(Ordering::Relaxed),
            seen[0].2
        );
    }

    #[tokio::test]
    async fn store_failure_is_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let store = Arc::new(SignalStore::open(Arc::new(Failing), 100_000, 0).unwrap());
        let r = handle_push(
            &rt,
            &store,
            good(&s.sign_set(&claims("f-1", revoke_events()))),
            None,
            1,
        )
        .await;
        let (st, h, b) = parts(r).await;
        assert_eq!(
            (st, h, b.as_str()),
            (503, vec![("retry-after".into(), "5".into())], "")
        );
        assert_eq!(rt.counters.unavailable.load(Ordering::Relaxed), 1);
        // Not acknowledged, yet already enforced: a failed write never widens access.
        assert_eq!(store.tables().stats().revocations, 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_the_jwks_once() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = kit::rsa();
        let rt = runtime(dir.path(), &rsa).await;
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        // The transmitter rotates in an EC key after we loaded its JWKS.
        let ec = kit::ec();
        let both = json!({"keys": [kit::jwks(&rsa)["keys"][0].clone(), kit::jwks(&ec)["keys"][0].clone()]});
        std::fs::write(dir.path().join("jwks.json"), both.to_string()).unwrap();
        let r = handle_push(
            &rt,
            &store,
            good(&ec.sign_set(&claims("k-1", revoke_events()))),
            None,
            1,
        )
        .await;
        assert_eq!(r.status(), 202);
        // Within the cooldown a second unknown kid does not refetch.
        let fetches = rt.keys.stats.fetches.load(Ordering::Relaxed);
        let t = rsa.sign_raw(
            &json!({"alg":"RS256","kid":"later"}),
            &claims("k-2", revoke_events()),
        );
        assert_eq!(
            handle_push(&rt, &store, good(&t), None, 1).await.status(),
            400
        );
        assert_eq!(rt.keys.stats.fetches.load(Ordering::Relaxed), fetches);
    }

    #[tokio::test]
    async fn es256_transmitter_and_no_authorization_configured() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::ec();
        let rt = runtime(dir.path(), &s).await;
        let mut cfg = (*rt.cfg()).clone();
        if let Some(p) = cfg.push.as_mut() {
            p.authorization = None;
        }
        rt.reconfigure(cfg, None);
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let r = handle_push(
            &rt,
            &store,
            req(
                &s.sign_set(&claims("e-1", revoke_events())),
                Some("application/secevent+jwt"),
                None,
            ),
            None,
            1,
        )
        .await;
        assert_eq!(r.status(), 202);
    }
}
