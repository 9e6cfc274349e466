//! The life of a managed SSF stream (SSF 1.0 §8, the interoperability profile's receiver
//! duties): the manager task (at start and after every reload: create or reuse the stream and
//! reconcile its configuration with `[transmitter.stream]`; read the status every 5 minutes;
//! verify once the stream exists and every `verify_interval`), verification with a deadline,
//! the operator's actions of the admin API (read, update, replace, status, subjects, delete,
//! re-create, re-verify), and the deletion of the stream when its transmitter leaves the
//! configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::events::{StreamStatus, StreamUpdate};
use super::stream::{redacted, Field, StreamClient, StreamError, StreamInfo, Write};
use super::transmitter::{TransmitterRt, VerificationOutcome};
use crate::fetch::Fetcher;
use crate::store::{now_secs, SignalStore};

/// How often the manager re-reads the stream (and its status).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(300);
/// How often a verification wait asks the store whether another replica accepted the event.
const ANSWER_RECHECK: Duration = Duration::from_millis(250);
/// Longest backoff between failed set-ups.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What reconciling a stream's configuration did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    /// The stream as the transmitter answered (or read, when nothing was sent).
    pub stream: StreamInfo,
    /// The members that differed from `[transmitter.stream]`.
    pub changed: Vec<Field>,
    /// How the change was sent (`None`: nothing differed).
    pub write: Option<Write>,
}

/// One verification asked for and waited for.
#[derive(Debug, Clone)]
pub struct Verification {
    pub stream_id: String,
    pub state: String,
    /// `Verified` or `Missing`.
    pub outcome: VerificationOutcome,
    /// From the request to the event, or the whole wait.
    pub waited: Duration,
}

impl Verification {
    pub fn verified(&self) -> bool {
        matches!(self.outcome, VerificationOutcome::Verified { .. })
    }
}

/// A re-created stream.
#[derive(Debug, Clone)]
pub struct Recreated {
    pub previous: Option<String>,
    pub stream: StreamInfo,
    pub verification: Result<Verification, String>,
}

/// The stream operations of one transmitter (cheap to create).
pub struct Lifecycle {
    client: StreamClient,
    rt: Arc<TransmitterRt>,
    store: Arc<SignalStore>,
}

impl Lifecycle {
    pub fn new(rt: Arc<TransmitterRt>, store: Arc<SignalStore>, fetcher: Fetcher) -> Lifecycle {
        Lifecycle {
            client: StreamClient::new(rt.clone(), store.clone(), fetcher),
            rt,
            store,
        }
    }

    pub fn client(&self) -> &StreamClient {
        &self.client
    }

    /// The stream in use, or why there is none.
    pub fn stream_id(&self) -> Result<String, StreamError> {
        if self.rt.cfg().stream.is_none() {
            return Err(StreamError::NotConfigured);
        }
        let st = self.rt.stream_state();
        match st.stream_id {
            Some(id) => Ok(id),
            None if st.deleted_by_operator => Err(StreamError::DeletedByOperator),
            None => Err(StreamError::NoStream(st.last_error)),
        }
    }

    /// Creates or reuses the stream, reconciles its configuration when `reconcile` (not for a
    /// stream created now) and reads its status. `Ok(None)`: an operator deleted the stream,
    /// nothing was done.
    pub async fn set_up(&self, reconcile: bool) -> Result<Option<(StreamInfo, bool)>, StreamError> {
        let _one = self.rt.management.lock().await;
        let r = self.set_up_locked(reconcile).await;
        self.rt.set_checked(now_ms());
        r
    }

    async fn set_up_locked(
        &self,
        reconcile: bool,
    ) -> Result<Option<(StreamInfo, bool)>, StreamError> {
        if self.rt.stream_state().deleted_by_operator {
            return Ok(None);
        }
        let (mut info, created) = self.client.ensure_stream().await?;
        if reconcile && !created {
            info = self.reconcile_locked(info, false).await?.stream;
        }
        self.client.status(&info.stream_id).await?;
        Ok(Some((info, created)))
    }

    /// Sends what differs from `[transmitter.stream]` (`PATCH`, or `PUT` where the transmitter
    /// lacks `PATCH`); `replace`: the whole configuration with `PUT` whatever differs. Holds
    /// the management lock (taken by the caller).
    async fn reconcile_locked(
        &self,
        info: StreamInfo,
        replace: bool,
    ) -> Result<Reconciled, StreamError> {
        let changed = self.client.differences(&info);
        let id = info.stream_id.clone();
        let (stream, write) = if replace {
            (self.client.replace_stream(&id).await?, Write::Put)
        } else if changed.is_empty() {
            return Ok(Reconciled {
                stream: info,
                changed,
                write: None,
            });
        } else {
            self.client.update_stream(&id, &changed).await?
        };
        let fields: Vec<&str> = changed.iter().map(|f| f.name()).collect();
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %id, method = write.method(), differed = ?fields, "SSF stream configuration brought in line with [transmitter.stream]");
        Ok(Reconciled {
            stream,
            changed,
            write: Some(write),
        })
    }

    /// The operator's update (`replace = false`: `PATCH` of what differs) or replacement
    /// (`PUT` of the whole configuration) of the stream with `[transmitter.stream]`.
    pub async fn update(&self, replace: bool) -> Result<Reconciled, StreamError> {
        let _one = self.rt.management.lock().await;
        let id = self.stream_id()?;
        let info = self.client.read_stream(&id).await?;
        self.reconcile_locked(info, replace).await
    }

    /// Asks for a verification event of the stream in use and waits for it (at most
    /// `timeout`).
    pub async fn verify(&self, timeout: Duration) -> Result<Verification, StreamError> {
        let id = self.stream_id()?;
        self.verify_stream(&id, timeout).await
    }

    /// Asks for a verification event (a new random `state`, SSF §8.1.4.2) and waits for it;
    /// records the outcome (readiness, `cae_stream_verifications_total`) and logs a missing
    /// event with the reason.
    pub async fn verify_stream(
        &self,
        stream_id: &str,
        timeout: Duration,
    ) -> Result<Verification, StreamError> {
        let asked_at = now_secs();
        self.rt
            .set_verification(VerificationOutcome::Pending { asked_at });
        let name = self.rt.name();
        let state = match self.client.request_verification(stream_id, asked_at).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "cae_proxy::signals", transmitter = %name, stream_id, error = %crate::errors::Chain(&e), "the verification request failed");
                self.rt.set_verification(VerificationOutcome::Failed {
                    asked_at,
                    error: e.to_string(),
                });
                return Err(e);
            }
        };
        self.rt.set_verification_asked_for(stream_id);
        let started = Instant::now();
        let arrived = self.wait_answered(&state, timeout).await;
        let waited = started.elapsed();
        let outcome = if arrived {
            self.rt.note_verified(now_secs());
            tracing::info!(target: "cae_proxy::signals", transmitter = %name, stream_id, waited_ms = waited.as_millis() as u64, "SSF stream verified");
            VerificationOutcome::Verified {
                asked_at: Some(asked_at),
                at: now_secs(),
            }
        } else {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %name, stream_id, timeout = ?timeout, reason = "the transmitter accepted the verification request but no verification event with its state arrived", "verification event missing");
            VerificationOutcome::Missing {
                asked_at,
                waited: timeout,
            }
        };
        self.rt.set_verification(outcome.clone());
        Ok(Verification {
            stream_id: stream_id.to_string(),
            state,
            outcome,
            waited,
        })
    }

    /// Whether a verification event with `state` arrives within `timeout`: accepted here, or
    /// (fleet mode) by another replica, which records it in the store.
    async fn wait_answered(&self, state: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.rt.verification_events();
        let scope = self.rt.state_scope();
        loop {
            if self.rt.answered_here(state)
                || self
                    .store
                    .state_answered(&scope, state, now_secs())
                    .await
                    .unwrap_or(false)
            {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let recheck = (deadline - now).min(ANSWER_RECHECK);
            tokio::select! {
                _ = events.changed() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }

    /// The stream as the transmitter reports it now (configuration and status, read live) and
    /// as this receiver sees it. The push secret in the configuration is redacted.
    pub async fn show(&self) -> Result<Value, StreamError> {
        let id = self.stream_id()?;
        let info = self.client.read_stream(&id).await?;
        let status = self.client.status(&id).await?;
        Ok(json!({
            "transmitter": self.rt.name(),
            "stream_id": id,
            "configuration": redacted(&info.raw),
            "status": {"status": status.status.as_str(), "reason": status.reason},
            "differs_from_configuration": self.client.differences(&info).iter().map(|f| f.name()).collect::<Vec<_>>(),
            "receiver": receiver_view(&self.rt),
        }))
    }

    /// Sets the stream status at the transmitter (SSF §8.1.2.2). `Ok(None)`: accepted for later.
    pub async fn set_status(
        &self,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(String, Option<StreamUpdate>), StreamError> {
        let id = self.stream_id()?;
        let u = self.client.set_status(&id, status, reason).await?;
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %id, status, reason = reason.unwrap_or("-"), "stream status set by an operator");
        Ok((id, u))
    }

    /// Adds (`add`) or removes a subject (SSF §8.1.3.2, §8.1.3.3); returns the stream id.
    pub async fn subject(
        &self,
        add: bool,
        subject: &Value,
        verified: Option<bool>,
    ) -> Result<String, StreamError> {
        let id = self.stream_id()?;
        if add {
            self.client.add_subject(&id, subject, verified).await?;
        } else {
            self.client.remove_subject(&id, subject).await?;
        }
        let format = subject.get("format").and_then(Value::as_str).unwrap_or("-");
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %id, format, action = if add { "add" } else { "remove" }, "stream subject changed by an operator");
        Ok(id)
    }

    /// Deletes the stream at the transmitter (SSF §8.1.1.5) and keeps the manager from
    /// creating another one until [`recreate`](Self::recreate). Returns the id and whether the
    /// transmitter still had it.
    pub async fn delete(&self) -> Result<(String, bool), StreamError> {
        let _one = self.rt.management.lock().await;
        let id = self.stream_id()?;
        let deleted = self.client.delete_stream(&id).await?;
        self.rt.set_deleted_by_operator(true);
        tracing::warn!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %id, "SSF stream deleted by an operator; no events arrive until it is re-created");
        Ok((id, deleted))
    }

    /// Deletes the stream in use (when there is one), reads the SSF configuration again,
    /// creates a stream (its `iss` checked), reads its status and asks for a verification
    /// event, waiting at most `timeout` for it.
    pub async fn recreate(&self, timeout: Duration) -> Result<Recreated, StreamError> {
        let (previous, stream) = {
            let _one = self.rt.management.lock().await;
            if self.rt.cfg().stream.is_none() {
                return Err(StreamError::NotConfigured);
            }
            let previous = self.rt.stream_state().stream_id;
            if let Some(id) = &previous {
                self.client.delete_stream(id).await?;
            }
            self.rt.set_stream_id(None);
            self.rt.set_poll_target(None);
            self.rt
                .keys
                .refresh()
                .await
                .map_err(|e| StreamError::BadDiscovery(e.to_string()))?;
            let stream = self.client.create_stream().await?;
            self.rt.set_deleted_by_operator(false);
            self.rt.set_stream_error(None);
            self.client.refresh_poll_target(&stream).await?;
            self.client.status(&stream.stream_id).await?;
            tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), previous = previous.as_deref().unwrap_or("-"), stream_id = %stream.stream_id, "SSF stream re-created by an operator");
            (previous, stream)
        };
        let verification = self
            .verify_stream(&stream.stream_id, timeout)
            .await
            .map_err(|e| e.to_string());
        Ok(Recreated {
            previous,
            stream,
            verification,
        })
    }

    /// With `verify`: asks for a verification of `stream` unless one was asked for it already
    /// (once per stream; a stream an operator re-created was verified then). A request the
    /// transmitter refused is an error (the set-up is tried again); a missing event is not.
    async fn verify_once(&self, stream: &StreamInfo) -> Result<(), StreamError> {
        let Some(sm) = self.rt.cfg().stream.clone().filter(|s| s.verify) else {
            return Ok(());
        };
        let asked = self.rt.stream_state().verification_asked_for;
        if asked.as_deref() == Some(stream.stream_id.as_str()) {
            return Ok(());
        }
        self.verify_stream(&stream.stream_id, sm.verify_timeout)
            .await
            .map(|_| ())
    }

    /// The periodic verification interval for `stream`: `verify_interval`, but never below the
    /// transmitter's `min_verification_interval` (SSF §8.1.1).
    fn verify_every(&self, stream: &StreamInfo) -> Option<Duration> {
        let every = self.rt.cfg().stream.as_ref()?.verify_interval?;
        let min = Duration::from_secs(stream.min_verification_interval.unwrap_or(0));
        if every < min {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %self.rt.name(), verify_interval = ?every, min_verification_interval = ?min, "verify_interval is shorter than the transmitter's min_verification_interval; verifying every min_verification_interval");
        }
        Some(every.max(min))
    }
}

/// This receiver's view of a transmitter's stream (no network).
pub fn receiver_view(rt: &TransmitterRt) -> Value {
    let st = rt.stream_state();
    let cfg = rt.cfg();
    let verification = rt.verification().map(|v| match v {
        VerificationOutcome::Pending { asked_at } => json!({"result": "pending", "asked_at": asked_at}),
        VerificationOutcome::Verified { asked_at, at } => json!({"result": "verified", "asked_at": asked_at, "at": at}),
        VerificationOutcome::Missing { asked_at, waited } => json!({"result": "missing", "asked_at": asked_at, "waited_seconds": waited.as_secs_f64()}),
        VerificationOutcome::Failed { asked_at, error } => json!({"result": "failed", "asked_at": asked_at, "error": error}),
    });
    json!({
        "transmitter": cfg.name,
        "delivery": cfg.stream.as_ref().map(|s| match s.delivery {
            crate::config::Delivery::Push => "push",
            crate::config::Delivery::Poll => "poll",
        }),
        "stream_id": st.stream_id,
        "status": st.status.as_ref().map(StreamStatus::as_str),
        "reason": st.reason,
        "status_at": (st.at_ms > 0).then_some(st.at_ms / 1000),
        "verified_at": rt.verified_at(),
        "verification": verification,
        "deleted_by_operator": st.deleted_by_operator,
        "checked_at_ms": (st.checked_at_ms > 0).then_some(st.checked_at_ms),
        "last_error": st.last_error,
        "poll_endpoint": rt.poll_target().map(|t| t.endpoint.clone()),
    })
}

/// Deletes the stream of a transmitter removed from the configuration (`on_remove = "delete"`):
/// the known stream, else the one of ours the transmitter lists. Run as a tracked task, so a
/// shutdown waits for it.
pub async fn remove_stream(rt: Arc<TransmitterRt>, store: Arc<SignalStore>, fetcher: Fetcher) {
    let l = Lifecycle::new(rt.clone(), store, fetcher);
    let _one = rt.management.lock().await;
    let name = rt.name();
    match l.client.find_ours().await {
        Ok(Some(id)) => match l.client.delete_stream(&id).await {
            Ok(_) => {
                tracing::info!(target: "cae_proxy::signals", transmitter = %name, stream_id = %id, "the transmitter was removed from the configuration; its SSF stream is deleted")
            }
            Err(e) => {
                tracing::warn!(target: "cae_proxy::signals", transmitter = %name, stream_id = %id, error = %crate::errors::Chain(&e), "the transmitter was removed from the configuration; its SSF stream could not be deleted")
            }
        },
        Ok(None) => {
            tracing::info!(target: "cae_proxy::signals", transmitter = %name, "the transmitter was removed from the configuration; it had no SSF stream to delete")
        }
        Err(e) => {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %name, error = %crate::errors::Chain(&e), "the transmitter was removed from the configuration; its SSF stream could not be found to delete it")
        }
    }
}

/// Epoch milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs until shutdown: sets the stream up (with backoff: create or reuse, reconcile, status,
/// and with `verify` a verification once per stream), asks for one every `verify_interval`,
/// re-reads the stream every [`STATUS_INTERVAL`] (refreshing the poll target), and sets it up
/// and reconciles it again after each reload.
pub async fn run_stream_manager(
    rt: Arc<TransmitterRt>,
    store: Arc<SignalStore>,
    fetcher: Fetcher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let l = Lifecycle::new(rt.clone(), store, fetcher);
    let name = rt.name();
    let mut backoff = Duration::from_secs(1);
    let (mut set_up, mut reconcile) = (false, true);
    let mut next_status = tokio::time::Instant::now() + STATUS_INTERVAL;
    let mut next_verify: Option<tokio::time::Instant> = None;
    let mut every: Option<Duration> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !set_up {
            let r = tokio::select! {
                r = async {
                    let up = l.set_up(reconcile).await?;
                    if let Some((info, _)) = &up {
                        l.verify_once(info).await?;
                    }
                    Ok::<_, StreamError>(up)
                } => r,
                _ = shutdown.changed() => return,
            };
            match r {
                Ok(Some((info, _created))) => {
                    (set_up, reconcile) = (true, false);
                    backoff = Duration::from_secs(1);
                    rt.set_stream_error(None);
                    next_status = tokio::time::Instant::now() + STATUS_INTERVAL;
                    if !rt.stream_active() {
                        let st = rt.stream_state();
                        tracing::warn!(target: "cae_proxy::signals", transmitter = %name, status = st.status.as_ref().map(StreamStatus::as_str).unwrap_or("-"), reason = st.reason.as_deref().unwrap_or("-"), "SSF stream is not enabled");
                    }
                    every = l.verify_every(&info);
                    if next_verify.is_none() || every.is_none() {
                        next_verify = every.map(|d| tokio::time::Instant::now() + d);
                    }
                }
                Ok(None) => {
                    (set_up, reconcile) = (true, false);
                    next_verify = None;
                }
                Err(e) => {
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    rt.set_stream_error(Some(e.to_string()));
                    tracing::warn!(target: "cae_proxy::signals", transmitter = %name, error = %crate::errors::Chain(&e), retry_in = ?w, "SSF stream management failed");
                    tokio::select! {
                        _ = tokio::time::sleep(w) => {}
                        _ = rt.reconcile_requested() => reconcile = true,
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_status) => {
                next_status = tokio::time::Instant::now() + STATUS_INTERVAL;
                set_up = false;
            }
            _ = sleep_until(next_verify) => {
                if let (Ok(id), Some(sm)) = (l.stream_id(), rt.cfg().stream.clone()) {
                    tokio::select! {
                        _ = l.verify_stream(&id, sm.verify_timeout) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                next_verify = every.map(|d| tokio::time::Instant::now() + d);
            }
            _ = rt.reconcile_requested() => {
                (set_up, reconcile) = (false, true);
                // A changed verify_interval applies from now.
                next_verify = None;
            }
            _ = shutdown.changed() => return,
        }
    }
}
