//! The per-transmitter runtime ([`TransmitterRt`]) that push, poll and stream management share:
//! configuration, keys, stream status, the cached management token, counters, freshness.
//! Outstanding verification states live in the store (they must survive restarts).
//!
//! Locks: `TransmitterRt` keeps its small mutable state (stream status, verification outcome,
//! recently answered states) behind `std::sync::Mutex`es held for a field update only, never
//! across `.await`; the management token behind a `tokio::sync::Mutex` (held across its fetch,
//! so concurrent callers share one fetch); compound stream operations (set-up, reconcile,
//! operator actions, deletion on removal) behind another `tokio::sync::Mutex`, so that they do
//! not interleave; configuration is swapped through `ArcSwap` on reload.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::events::{EventPolicy, StreamStatus, StreamUpdate};
use super::set::{self, SetError, SetPolicy, ValidSet};
use crate::auth::keys::{KeySet, VerifyKey};
use crate::config::Transmitter;

/// How long a verification `state` we asked for stays acceptable (redeliveries included).
pub const STATE_TTL_SECS: i64 = 24 * 3600;
/// How many answered verification states a transmitter remembers in memory.
const ANSWERED_KEPT: usize = 32;

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
    /// Event time of the status (epoch milliseconds): an event's time, or when the transmitter
    /// answered a status read or change.
    pub at_ms: i64,
    /// Why stream management last failed (cleared by a success), for readiness.
    pub last_error: Option<String>,
    /// An operator deleted the stream (admin API): the manager does not create it again until
    /// an operator re-creates it, or the process restarts.
    pub deleted_by_operator: bool,
    /// SHA-256 of the `authorization_header` this process last sent in the stream's delivery
    /// (to tell, on reload, that a rotated push secret must reach the transmitter).
    pub authorization_sent: Option<[u8; 32]>,
    /// The stream the last verification was asked for (the manager asks once per stream).
    pub verification_asked_for: Option<String>,
    /// When the stream manager last set the stream up (epoch milliseconds; 0: never).
    pub checked_at_ms: i64,
}

/// What became of the last verification this receiver asked for (SSF §8.1.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerificationOutcome {
    /// Asked, the event has not arrived yet (the wait is not over).
    Pending { asked_at: i64 },
    /// The event with our `state` arrived (or a later verification of the stream did).
    Verified { asked_at: Option<i64>, at: i64 },
    /// No verification event within `waited` of the request.
    Missing { asked_at: i64, waited: Duration },
    /// The transmitter did not accept the request (or could not be reached).
    Failed { asked_at: i64, error: String },
}

impl VerificationOutcome {
    /// The `result` label of `cae_stream_verifications_total`.
    pub fn label(&self) -> &'static str {
        match self {
            VerificationOutcome::Pending { .. } => "pending",
            VerificationOutcome::Verified { .. } => "verified",
            VerificationOutcome::Missing { .. } => "missing",
            VerificationOutcome::Failed { .. } => "failed",
        }
    }
}

/// `cae_stream_verifications_total` of one transmitter, by result, once installed.
pub struct VerificationCounters {
    pub verified: prometheus_client::metrics::counter::Counter,
    pub missing: prometheus_client::metrics::counter::Counter,
    pub failed: prometheus_client::metrics::counter::Counter,
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
    token_refetch_metric: OnceLock<prometheus_client::metrics::counter::Counter>,
    /// Serialises compound stream operations (set-up and reconcile, operator actions, the
    /// deletion when the transmitter is removed).
    pub(super) management: tokio::sync::Mutex<()>,
    /// Woken by a reload: the stream manager sets the stream up and reconciles it again.
    reconcile: tokio::sync::Notify,
    /// Woken when stream management supplies a poll target: the poller polls at once.
    poll_target_set: tokio::sync::Notify,
    /// Bumped on every accepted verification event (waiters check their `state` again).
    verifications: tokio::sync::watch::Sender<u64>,
    /// The `state`s of the last accepted verification events.
    answered: Mutex<VecDeque<String>>,
    verification: Mutex<Option<VerificationOutcome>>,
    verification_counters: OnceLock<VerificationCounters>,
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
            token_refetch_metric: OnceLock::new(),
            management: tokio::sync::Mutex::new(()),
            reconcile: tokio::sync::Notify::new(),
            poll_target_set: tokio::sync::Notify::new(),
            verifications: tokio::sync::watch::Sender::new(0),
            answered: Mutex::new(VecDeque::new()),
            verification: Mutex::new(None),
            verification_counters: OnceLock::new(),
        }
    }

    /// Installs `cae_stream_verifications_total` of this transmitter (metrics).
    pub fn set_verification_counters(&self, c: VerificationCounters) {
        let _ = self.verification_counters.set(c);
    }

    /// Asks the stream manager to set the stream up and reconcile it again (a reload).
    pub fn request_reconcile(&self) {
        self.reconcile.notify_one();
    }

    /// Resolves when [`request_reconcile`](Self::request_reconcile) was called (once per call;
    /// a call made while nobody waits is kept for the next waiter).
    pub async fn reconcile_requested(&self) {
        self.reconcile.notified().await;
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

    /// The verification we asked for arrived, here or (fleet mode) at another replica, which
    /// recorded it in the store: the stream counts as verified at `at` on this replica too.
    pub fn note_verified(&self, at: i64) {
        self.verified_at.fetch_max(at, Ordering::Relaxed);
    }

    /// An accepted verification event of our stream, with the `state` it carried (`None`:
    /// unprompted): the stream counts as verified again, and whoever waits for that `state`
    /// is woken.
    pub fn mark_verified(&self, now: i64, state: Option<&str>) {
        self.verified_at.store(now, Ordering::Relaxed);
        if let Some(st) = state {
            if let Ok(mut a) = self.answered.lock() {
                if a.len() >= ANSWERED_KEPT {
                    a.pop_front();
                }
                a.push_back(st.to_string());
            }
        }
        // A verification arriving after a miss (or without a request) shows the stream works;
        // a pending request is settled by whoever waits for its own state.
        if let Ok(mut v) = self.verification.lock() {
            let asked_at = match v.as_ref() {
                Some(VerificationOutcome::Pending { .. }) => None,
                Some(
                    VerificationOutcome::Missing { asked_at, .. }
                    | VerificationOutcome::Failed { asked_at, .. },
                ) => Some(Some(*asked_at)),
                Some(VerificationOutcome::Verified { asked_at, .. }) => Some(*asked_at),
                None => Some(None),
            };
            if let Some(asked_at) = asked_at {
                *v = Some(VerificationOutcome::Verified { asked_at, at: now });
            }
        }
        self.verifications.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a verification event with `state` was accepted here recently.
    pub fn answered_here(&self, state: &str) -> bool {
        self.answered
            .lock()
            .map(|a| a.iter().any(|s| s == state))
            .unwrap_or(false)
    }

    /// A receiver of the verification counter, to wait for the next accepted event.
    pub fn verification_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.verifications.subscribe()
    }

    /// The outcome of the last verification asked for.
    pub fn verification(&self) -> Option<VerificationOutcome> {
        self.verification.lock().ok().and_then(|v| v.clone())
    }

    /// Records the outcome of a verification request (counted unless it is `Pending`).
    pub fn set_verification(&self, outcome: VerificationOutcome) {
        if let Some(c) = self.verification_counters.get() {
            match outcome {
                VerificationOutcome::Verified { .. } => c.verified.inc(),
                VerificationOutcome::Missing { .. } => c.missing.inc(),
                VerificationOutcome::Failed { .. } => c.failed.inc(),
                VerificationOutcome::Pending { .. } => 0,
            };
        }
        if let Ok(mut v) = self.verification.lock() {
            *v = Some(outcome);
        }
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

    /// Records the stream in use (`None`: there is none); a different stream starts without
    /// a known status.
    pub fn set_stream_id(&self, id: Option<String>) {
        if let Ok(mut s) = self.stream.lock() {
            if s.stream_id != id {
                s.status = None;
                s.reason = None;
                s.at_ms = 0;
                s.authorization_sent = None;
            }
            s.stream_id = id;
        }
    }

    /// Records that a verification was asked for `stream_id`.
    pub fn set_verification_asked_for(&self, stream_id: &str) {
        if let Ok(mut s) = self.stream.lock() {
            s.verification_asked_for = Some(stream_id.to_string());
        }
    }

    /// Records that the stream manager just set the stream up (or found it deleted by an
    /// operator).
    pub fn set_checked(&self, at_ms: i64) {
        if let Ok(mut s) = self.stream.lock() {
            s.checked_at_ms = at_ms;
        }
    }

    /// Marks the stream as deleted by an operator (`true`), or re-created (`false`).
    pub fn set_deleted_by_operator(&self, deleted: bool) {
        if let Ok(mut s) = self.stream.lock() {
            s.deleted_by_operator = deleted;
        }
    }

    /// Remembers (a digest of) the `authorization_header` sent to the transmitter.
    pub fn set_authorization_sent(&self, digest: Option<[u8; 32]>) {
        if let Ok(mut s) = self.stream.lock() {
            s.authorization_sent = digest;
        }
    }

    /// Applies a status update unless a newer one was seen; returns whether the status or its
    /// reason changed.
    pub fn update_stream_status(&self, u: &StreamUpdate) -> bool {
        let Ok(mut s) = self.stream.lock() else {
            return false;
        };
        if s.status.is_none() || u.at_ms >= s.at_ms {
            let changed = s.status.as_ref() != Some(&u.status) || s.reason != u.reason;
            s.status = Some(u.status.clone());
            s.reason = u.reason.clone();
            s.at_ms = u.at_ms;
            return changed;
        }
        false
    }

    /// False when the transmitter says the stream is paused or disabled (for readiness).
    pub fn stream_active(&self) -> bool {
        !matches!(
            self.stream_state().status,
            Some(StreamStatus::Paused | StreamStatus::Disabled)
        )
    }

    /// Sets where the poller polls; a new target wakes it at once.
    pub fn set_poll_target(&self, t: Option<PollTarget>) {
        let set = t.is_some();
        self.poll_target.store(t.map(Arc::new));
        if set {
            self.poll_target_set.notify_one();
        }
    }

    /// Resolves when a poll target was set (kept for the next waiter when nobody waits).
    pub async fn poll_target_changed(&self) {
        self.poll_target_set.notified().await;
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
