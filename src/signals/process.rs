//! One SET from arrival to commit, shared by push and poll: parse, verify, plan the table
//! changes; for a verification with a `state`: a repeat is answered as such first, then the
//! `state` is checked against the store; commit durably, then the in-memory side effects, one
//! log line and the freshness sample.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::events::{self, Plan, VerificationState};
use super::set::{self, ErrCode, SetError, SetPolicy};
use super::transmitter::{
    DeliveryKind, FreshnessSample, SignalEvent, TransmitterRt, STATE_TTL_SECS,
};
use crate::store::{Batch, CommitOutcome, SignalStore, StoreError};

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

/// The stream id a verification or stream-updated SET names (an `opaque` subject, SSF
/// §8.1.4.2, §8.1.5), when it is not the stream this receiver manages. `None` when it is ours,
/// or when we cannot tell (no managed stream known yet, or a subject of another shape).
fn foreign_stream(rt: &TransmitterRt, set: &set::ValidSet) -> Option<String> {
    use super::vocabulary::EventType;
    let ours = rt.stream_state().stream_id?;
    set.claims
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventType::Verification | EventType::StreamUpdated))
        .find_map(|e| match &e.subject {
            Some(super::subject::Subject::Opaque { id }) if *id != ours => Some(id.clone()),
            _ => None,
        })
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
    let iss = crate::store::keys::normalize_iss(&valid.claims.iss).to_string();
    // A verification or status change of another stream (an old stream of ours still
    // delivering here, another receiver's): accepted and ignored, never counted as ours.
    let foreign = if plan.verification.is_some() || plan.stream_update.is_some() {
        foreign_stream(rt, &valid)
    } else {
        None
    };
    if let Some(other) = &foreign {
        let what = if plan.verification.is_some() {
            "verification event for another stream; accepted and ignored"
        } else {
            "stream-updated event for another stream; accepted and ignored"
        };
        tracing::warn!(target: "cae_proxy::signals", transmitter = %rt.name(), stream_id = %other, "{what}");
    }
    if let (Some(VerificationState::Given(state)), None) = (&plan.verification, &foreign) {
        // Deduplication first: a verification delivered again (after a restart too) is answered
        // like the first time (docs/protocols.md §3.4), whatever became of its state since.
        if store.seen(&iss, &valid.claims.jti).await? {
            rt.mark_verified(now, Some(state));
            return Ok(Processed {
                jti: valid.claims.jti,
                outcome: CommitOutcome::Duplicate,
                plan,
            });
        }
        if !store
            .state_outstanding(&rt.state_scope(), state, now)
            .await?
        {
            return Err(ProcessError::InvalidState);
        }
    }
    let batch = Batch {
        changes: plan.changes.clone(),
        set_id: Some((iss, valid.claims.jti.clone())),
        now,
    };
    let outcome = store.commit(batch).await?;
    if let (Some(v), None) = (&plan.verification, &foreign) {
        let state = match v {
            VerificationState::Given(s) => Some(s.as_str()),
            VerificationState::Unprompted => None,
        };
        if let Some(s) = state {
            // For whoever asked (another replica in fleet mode): not fatal, the event is
            // committed; the asker then reports the verification as missing.
            if let Err(e) = store
                .mark_state_answered(&rt.state_scope(), s, now + STATE_TTL_SECS)
                .await
            {
                tracing::warn!(target: "cae_proxy::signals", transmitter = %rt.name(), error = %crate::errors::Chain(&e), "could not record the verification as answered");
            }
        }
        rt.mark_verified(now, state);
    }
    if outcome == CommitOutcome::Committed {
        if let (Some(u), None) = (&plan.stream_update, &foreign) {
            if rt.update_stream_status(u) {
                let (name, status) = (rt.name(), u.status.as_str());
                let reason = u.reason.as_deref().unwrap_or("-");
                let msg = "the transmitter changed the stream status";
                if status == "enabled" {
                    tracing::info!(target: "cae_proxy::signals", transmitter = %name, status, reason, "{msg}");
                } else {
                    tracing::warn!(target: "cae_proxy::signals", transmitter = %name, status, reason, "{msg}");
                }
            }
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
