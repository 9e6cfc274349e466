//! The per-transmitter runtime ([`TransmitterRt`]) that push, poll and stream management share:
//! configuration, keys, stream status, the cached management token, counters, freshness.
//! Outstanding verification states live in the store (they must survive restarts).
//!
//! Locks: `TransmitterRt` keeps its small mutable state (stream status) behind a
//! `std::sync::Mutex` held for a field update only, never across `.await`; the management token
//! behind a `tokio::sync::Mutex` (held across its fetch, so concurrent callers share one
//! fetch); configuration is swapped through `ArcSwap` on reload.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::events::{EventPolicy, StreamStatus, StreamUpdate};
use super::set::{self, SetError, SetPolicy, ValidSet};
use crate::auth::keys::{KeySet, VerifyKey};
use crate::config::Transmitter;

/// How long a verification `state` we asked for stays acceptable (redeliveries included).
pub const STATE_TTL_SECS: i64 = 24 * 3600;

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
    /// Management tokens dropped and fetched again because the transmitter answered 401.
    pub token_refetches: AtomicU64,
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

/// Callback for each SET's outcome (the metrics module installs one).
pub type EventObserver = Box<dyn Fn(&SignalEvent<'_>) + Send + Sync>;

/// What a transmitter counts besides SETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// One poll (RFC 8936) and its result: `ok` or the failure.
    Poll(&'static str),
    /// A push refused before its SET was read: the transmitter was not authenticated
    /// (RFC 8935 §2.3); the reason.
    PushAuthFailure(&'static str),
}

/// Callback for each [`Tally`], with the transmitter's name (the metrics module installs one).
pub type TallyObserver = Box<dyn Fn(&str, Tally) + Send + Sync>;

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

    pub(super) fn record(&self, sample: &FreshnessSample, now: i64) {
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

/// Where to poll when stream management supplied the endpoint (RFC 8936 via SSF); the poller
/// presents the management token (the same one stream management uses).
#[derive(Debug, Clone)]
pub struct PollTarget {
    pub endpoint: String,
}

/// Everything the proxy keeps per transmitter across reloads.
pub struct TransmitterRt {
    cfg: ArcSwap<Transmitter>,
    policy: ArcSwap<EventPolicy>,
    pub keys: Arc<KeySet>,
    /// OAuth client-credentials token for management and stream-supplied polls, and until when
    /// it is used (shortly before its `expires_in`, or until the transmitter refuses it).
    pub(super) mgmt_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    /// Epoch seconds of the last accepted verification (0 = never).
    verified_at: AtomicI64,
    stream: Mutex<StreamState>,
    poll_target: ArcSwapOption<PollTarget>,
    /// Called once per SET with what was logged (the metrics module installs one).
    pub(super) event_observer: ArcSwapOption<EventObserver>,
    tally_observer: ArcSwapOption<TallyObserver>,
    pub counters: Counters,
    pub freshness: Freshness,
    /// `cae_management_token_refetches_total` of this transmitter, once installed.
    token_refetch_metric: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
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
            mgmt_token: tokio::sync::Mutex::new(None),
            verified_at: AtomicI64::new(0),
            stream: Mutex::new(StreamState::default()),
            poll_target: ArcSwapOption::empty(),
            event_observer: ArcSwapOption::empty(),
            tally_observer: ArcSwapOption::empty(),
            counters: Counters::default(),
            freshness: Freshness::default(),
            token_refetch_metric: std::sync::OnceLock::new(),
        }
    }

    /// Installs the per-SET observer (metrics).
    pub fn set_event_observer(&self, f: EventObserver) {
        self.event_observer.store(Some(Arc::new(f)));
    }

    /// Installs the observer of polls and push authentication failures (metrics).
    pub fn set_tally_observer(&self, f: TallyObserver) {
        self.tally_observer.store(Some(Arc::new(f)));
    }

    /// Counts a poll or a push authentication failure.
    pub fn tally(&self, t: Tally) {
        match t {
            Tally::Poll("ok") => {}
            Tally::Poll(_) => {
                self.counters.poll_failures.fetch_add(1, Ordering::Relaxed);
            }
            Tally::PushAuthFailure(_) => {
                self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(f) = self.tally_observer.load().as_ref() {
            f(&self.cfg.load().name, t);
        }
    }

    /// Installs the counter of management tokens fetched again after a 401 (metrics).
    pub fn set_token_refetch_metric(&self, c: prometheus_client::metrics::counter::Counter) {
        let _ = self.token_refetch_metric.set(c);
    }

    /// Counts a management token dropped because the transmitter refused it (401).
    pub fn count_token_refetch(&self) {
        self.counters
            .token_refetches
            .fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.token_refetch_metric.get() {
            c.inc();
        }
    }

    /// Installs a reloaded configuration; status, token, counters survive.
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

    /// Whose verification states a `state` is looked up among: the transmitter's issuer
    /// (normalised), so that renaming the transmitter in the configuration keeps them.
    pub fn state_scope(&self) -> String {
        crate::store::keys::normalize_iss(&self.cfg.load().issuer).to_string()
    }

    /// A fresh random verification `state` (24 random bytes, base64url).
    pub fn random_state() -> String {
        use base64::Engine;
        let bytes: [u8; 24] = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
