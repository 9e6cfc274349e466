//! The signals side of a configuration: one [`TransmitterRt`] per configured transmitter (kept
//! across reloads), push paths per snapshot, poller and stream-manager tasks, readiness and the
//! metrics observers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::transmitter::Tally;
use super::transmitter::TransmitterRt;
use super::{poll, stream};
use crate::auth::keys::KeySets;
use crate::config::{Config, Delivery};
use crate::fetch::Fetcher;
use crate::metrics::{Metrics, PollLabels, SetLabels, TransmitterLabel, TransmitterReasonLabels};
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

/// A transmitter's runtime and the switch that stops its background tasks.
struct Running {
    rt: Arc<TransmitterRt>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Signals state that survives reloads.
#[derive(Default)]
pub struct SignalsShared {
    running: Mutex<HashMap<String, Running>>,
}

/// Builds (or reconfigures) the transmitter runtimes of a configuration. New transmitters get
/// their poller and stream manager started; removed ones are stopped.
pub fn build(deps: &Deps<'_>, shared: &SignalsShared, config: &Config) -> SignalsSnapshot {
    let mut snap = SignalsSnapshot::default();
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    for t in &config.transmitters {
        let token_iss = t
            .token_issuer
            .as_ref()
            .and_then(|n| config.issuers.iter().find(|i| &i.name == n))
            .map(|i| i.issuer.as_str());
        let rt = match running.get(&t.name) {
            Some(r) => {
                r.rt.reconfigure(t.clone(), token_iss);
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
                let (stop, stop_rx) = tokio::sync::watch::channel(false);
                spawn_tasks(deps, &rt, t, stop_rx);
                running.insert(
                    t.name.clone(),
                    Running {
                        rt: rt.clone(),
                        stop,
                    },
                );
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
        }
        keep
    });
    snap
}

fn spawn_tasks(
    deps: &Deps<'_>,
    rt: &Arc<TransmitterRt>,
    t: &crate::config::Transmitter,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // Stop on process shutdown or when the transmitter leaves the configuration.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut global = deps.shutdown.subscribe();
    let mut own = stop;
    tokio::spawn(async move {
        tokio::select! {
            _ = global.changed() => {}
            _ = own.changed() => {}
        }
        let _ = tx.send(true);
    });
    let polls = t.poll.is_some()
        || t.stream
            .as_ref()
            .is_some_and(|s| s.delivery == Delivery::Poll);
    if polls {
        deps.tasks.spawn(poll::run_poller(
            rt.clone(),
            deps.store.clone(),
            deps.fetcher.clone(),
            rx.clone(),
        ));
    }
    if t.stream.is_some() {
        deps.tasks.spawn(stream::run_stream_manager(
            rt.clone(),
            deps.store.clone(),
            deps.fetcher.clone(),
            rx,
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

/// What keeps the signals side from being ready: keys not loaded, streams not active.
pub fn not_ready(s: &SignalsSnapshot) -> Vec<String> {
    let mut missing = Vec::new();
    for rt in &s.transmitters {
        if !rt.keys.is_loaded() {
            missing.push(match rt.keys.last_error() {
                Some(e) => format!("transmitter {} has no keys yet: {e}", rt.name()),
                None => format!("transmitter {} has no keys yet", rt.name()),
            });
        }
        // A managed stream counts once it exists, was verified (when asked) and is not paused.
        if let Some(sm) = rt.cfg().stream.as_ref() {
            let st = rt.stream_state();
            let why = if st.stream_id.is_none() {
                Some(match &st.last_error {
                    Some(e) => format!("not created: {e}"),
                    None => "not created".to_string(),
                })
            } else if sm.verify && rt.verified_at().is_none() {
                Some("not verified".to_string())
            } else if !rt.stream_active() {
                st.status.map(|s| format!("{s:?}").to_lowercase())
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
