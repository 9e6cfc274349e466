//! The signals side of a configuration: one [`TransmitterRt`] per configured transmitter (kept
//! across reloads), push paths per snapshot, poller and stream-manager tasks (a reload asks the
//! manager to reconcile; a removed transmitter's stream is deleted unless `on_remove = "keep"`),
//! readiness and the metrics observers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::transmitter::{Tally, TransmitterRt, VerificationCounters, VerificationOutcome};
use super::{lifecycle, poll};
use crate::auth::keys::KeySets;
use crate::config::{Config, Delivery, OnRemove};
use crate::fetch::Fetcher;
use crate::metrics::{
    Metrics, PollLabels, SetLabels, TransmitterLabel, TransmitterReasonLabels,
    TransmitterResultLabels,
};
use crate::store::SignalStore;

/// What building the signals side needs of the process state.
pub struct Deps<'a> {
    pub key_sets: &'a KeySets,
    pub fetcher: &'a Fetcher,
    pub store: &'a Arc<SignalStore>,
    pub metrics: &'a Metrics,
    pub shutdown: &'a tokio::sync::watch::Sender<bool>,
    /// Where pollers and stream managers are spawned (a shutdown waits for them).
    pub tasks: &'a tokio_util::task::TaskTracker,
}

/// Signals state derived from one configuration.
#[derive(Default)]
pub struct SignalsSnapshot {
    /// Push path → transmitter.
    pub push: HashMap<String, Arc<TransmitterRt>>,
    pub transmitters: Vec<Arc<TransmitterRt>>,
}

/// A transmitter's runtime, the switch that stops its background tasks and which ones run.
struct Running {
    rt: Arc<TransmitterRt>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Turns true on process shutdown or when the transmitter leaves the configuration.
    stopping: tokio::sync::watch::Receiver<bool>,
    poller: bool,
    manager: bool,
}

/// Signals state that survives reloads.
#[derive(Default)]
pub struct SignalsShared {
    running: Mutex<HashMap<String, Running>>,
}

/// Builds (or reconfigures) the transmitter runtimes of a configuration. New transmitters get
/// their poller and stream manager started, existing ones the tasks a new `poll` or `stream`
/// needs, and their stream manager reconciles the stream with the new configuration; removed
/// ones are stopped, and their stream is deleted (`on_remove = "delete"`, the default) by a
/// tracked task, so a shutdown right after the reload still sends the deletion.
pub fn build(deps: &Deps<'_>, shared: &SignalsShared, config: &Config) -> SignalsSnapshot {
    let mut snap = SignalsSnapshot::default();
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    for t in &config.transmitters {
        // A `{tenantid}` template names no one issuer a token carries: opaque ids of such a
        // transmitter match every issuer (`*`), as without `token_issuer`.
        let token_iss = t
            .token_issuer
            .as_ref()
            .and_then(|n| config.issuers.iter().find(|i| &i.name == n))
            .map(|i| i.issuer.as_str())
            .filter(|iss| !iss.contains("{tenantid}"));
        let rt = match running.get_mut(&t.name) {
            Some(r) => {
                r.rt.reconfigure(t.clone(), token_iss);
                // A manager started now reconciles anyway; a running one is asked to.
                let running_manager = r.manager;
                spawn_tasks(deps, r);
                if running_manager {
                    r.rt.request_reconcile();
                }
                r.rt.clone()
            }
            None => {
                let keys = deps.key_sets.get_or_start(
                    &t.name,
                    &t.keys,
                    &t.issuer,
                    &t.key_policy,
                    t.min_rsa_bits,
                    deps.fetcher,
                    deps.shutdown,
                );
                let rt = Arc::new(TransmitterRt::new(t.clone(), keys, token_iss));
                install_observers(deps.metrics, &rt);
                let (stop, stopping) = stop_switch(deps);
                let mut r = Running {
                    rt: rt.clone(),
                    stop,
                    stopping,
                    poller: false,
                    manager: false,
                };
                spawn_tasks(deps, &mut r);
                running.insert(t.name.clone(), r);
                rt
            }
        };
        if let Some(p) = &t.push {
            snap.push.insert(p.path.clone(), rt.clone());
        }
        snap.transmitters.push(rt);
    }
    running.retain(|name, r| {
        let keep = config.transmitters.iter().any(|t| &t.name == name);
        if !keep {
            let _ = r.stop.send(true);
            let cfg = r.rt.cfg();
            match cfg.stream.as_ref().map(|s| s.on_remove) {
                Some(OnRemove::Delete) => {
                    deps.tasks.spawn(lifecycle::remove_stream(
                        r.rt.clone(),
                        deps.store.clone(),
                        deps.fetcher.clone(),
                    ));
                }
                Some(OnRemove::Keep) => {
                    tracing::info!(target: "cae_proxy::signals", transmitter = %name, stream_id = r.rt.stream_state().stream_id.as_deref().unwrap_or("-"), "the transmitter was removed from the configuration; its SSF stream is kept (on_remove = \"keep\")");
                }
                None => {}
            }
        }
        keep
    });
    snap
}

/// A stop switch for a transmitter's tasks, and a receiver that turns true when it is pulled
/// or when the process shuts down.
fn stop_switch(
    deps: &Deps<'_>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    let (stop, mut own) = tokio::sync::watch::channel(false);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut global = deps.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = global.changed() => {}
            _ = own.changed() => {}
        }
        let _ = tx.send(true);
    });
    (stop, rx)
}

/// Starts the tasks the transmitter's configuration needs and that do not run yet: the poller
/// (`[transmitter.poll]`, or a managed poll stream) and the stream manager.
fn spawn_tasks(deps: &Deps<'_>, r: &mut Running) {
    let t = r.rt.cfg();
    let polls = t.poll.is_some()
        || t.stream
            .as_ref()
            .is_some_and(|s| s.delivery == Delivery::Poll);
    if polls && !r.poller {
        r.poller = true;
        deps.tasks.spawn(poll::run_poller(
            r.rt.clone(),
            deps.store.clone(),
            deps.fetcher.clone(),
            r.stopping.clone(),
        ));
    }
    if t.stream.is_some() && !r.manager {
        r.manager = true;
        deps.tasks.spawn(lifecycle::run_stream_manager(
            r.rt.clone(),
            deps.store.clone(),
            deps.fetcher.clone(),
            r.stopping.clone(),
        ));
    }
}

fn install_observers(metrics: &Metrics, rt: &Arc<TransmitterRt>) {
    let (latency, lag) = (
        metrics.set_enforce_latency.clone(),
        metrics.set_event_lag.clone(),
    );
    rt.freshness.set_observer(Box::new(move |s| {
        let l = TransmitterLabel {
            transmitter: s.transmitter.clone(),
        };
        latency
            .get_or_create(&l)
            .observe(s.commit_latency.as_secs_f64());
        lag.get_or_create(&l)
            .observe(s.event_lag_ms.max(0) as f64 / 1000.0);
    }));
    rt.set_token_refetch_metric(
        metrics
            .management_token_refetches
            .get_or_create(&TransmitterLabel {
                transmitter: rt.name(),
            })
            .clone(),
    );
    let (polls, auth_failures) = (metrics.polls.clone(), metrics.push_auth_failures.clone());
    rt.set_tally_observer(Box::new(move |transmitter, t| match t {
        Tally::Poll(result) => {
            polls
                .get_or_create(&PollLabels {
                    transmitter: transmitter.to_string(),
                    result,
                })
                .inc();
        }
        Tally::PushAuthFailure(reason) => {
            auth_failures
                .get_or_create(&TransmitterReasonLabels {
                    transmitter: transmitter.to_string(),
                    reason,
                })
                .inc();
        }
    }));
    let counter = |result: &'static str| {
        metrics
            .stream_verifications
            .get_or_create(&TransmitterResultLabels {
                transmitter: rt.name(),
                result,
            })
            .clone()
    };
    rt.set_verification_counters(VerificationCounters {
        verified: counter("verified"),
        missing: counter("missing"),
        failed: counter("failed"),
    });
    let received = metrics.sets_received.clone();
    let last_received = metrics.set_last_received.clone();
    rt.set_event_observer(Box::new(move |e| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        last_received
            .get_or_create(&TransmitterLabel {
                transmitter: e.transmitter.to_string(),
            })
            .set(now);
        let events: &[&str] = if e.events.is_empty() {
            &["none"]
        } else {
            &e.events
        };
        for ev in events {
            received
                .get_or_create(&SetLabels {
                    transmitter: e.transmitter.to_string(),
                    event: (*ev).to_string(),
                    result: e.result,
                })
                .inc();
        }
    }));
}

/// What keeps the signals side from being ready: keys not loaded; a managed stream not created
/// (or deleted by an operator), not verified (when `ready_needs_verification`: before the first
/// verification event, and after a requested one did not arrive), paused or disabled.
pub fn not_ready(s: &SignalsSnapshot) -> Vec<String> {
    let mut missing = Vec::new();
    for rt in &s.transmitters {
        if !rt.keys.is_loaded() {
            missing.push(match rt.keys.last_error() {
                Some(e) => format!("transmitter {} has no keys yet: {e}", rt.name()),
                None => format!("transmitter {} has no keys yet", rt.name()),
            });
        }
        if let Some(sm) = rt.cfg().stream.as_ref() {
            let st = rt.stream_state();
            let verification = rt.verification();
            let why = if st.deleted_by_operator {
                Some("deleted by an operator".to_string())
            } else if st.stream_id.is_none() {
                Some(match &st.last_error {
                    Some(e) => format!("not created: {e}"),
                    None => "not created".to_string(),
                })
            } else if let (true, Some(VerificationOutcome::Missing { asked_at, waited })) =
                (sm.ready_needs_verification, &verification)
            {
                Some(format!(
                    "verification event missing: none within {} of the request at {asked_at}",
                    humantime::format_duration(*waited)
                ))
            } else if sm.ready_needs_verification && sm.verify && rt.verified_at().is_none() {
                Some("not verified".to_string())
            } else if !rt.stream_active() {
                st.status.map(|s| s.as_str().to_string())
            } else {
                None
            };
            if let Some(why) = why {
                missing.push(format!(
                    "transmitter {} stream is not active ({why})",
                    rt.name()
                ));
            }
        }
    }
    missing
}

/// Scrape-time stream gauges: `cae_stream_status{transmitter,status}` (1 for the status the
/// transmitter reports now, 0 for the others; `unknown` for a status outside SSF's three) and
/// `cae_stream_last_verified_timestamp_seconds{transmitter}`, for the transmitters with a
/// managed stream in `s` (removed ones drop out).
pub fn refresh_stream_gauges(s: &SignalsSnapshot, metrics: &Metrics) {
    use crate::metrics::StreamStatusLabels;
    metrics.stream_status.clear();
    metrics.stream_last_verified.clear();
    for rt in s.transmitters.iter().filter(|rt| rt.cfg().stream.is_some()) {
        let name = rt.name();
        let current = rt.stream_state().status;
        let current = current.as_ref().map(|c| match c {
            super::events::StreamStatus::Other(_) => "unknown",
            c => c.as_str(),
        });
        for status in ["enabled", "paused", "disabled", "unknown"] {
            if status == "unknown" && current != Some("unknown") {
                continue;
            }
            metrics
                .stream_status
                .get_or_create(&StreamStatusLabels {
                    transmitter: name.clone(),
                    status,
                })
                .set(i64::from(current == Some(status)));
        }
        if let Some(at) = rt.verified_at() {
            metrics
                .stream_last_verified
                .get_or_create(&TransmitterLabel {
                    transmitter: name.clone(),
                })
                .set(at);
        }
    }
}
