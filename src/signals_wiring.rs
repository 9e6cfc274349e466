//! Glue between the proxy and the signals listener: one `TransmitterRt` per configured transmitter
//! (kept across reloads), push paths per snapshot, poller and stream-manager tasks, readiness and
//! the metrics observers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::{Config, Delivery};
use crate::metrics::{SetLabels, TransmitterLabel};
use crate::reply::{BoxError, BoxedBody};
use crate::server::ConnInfo;
use crate::signals::push::{self, TransmitterRt};
use crate::signals::{poll, stream};
use crate::state::Shared;

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
pub fn build(shared: &Arc<Shared>, config: &Config) -> SignalsSnapshot {
    let mut snap = SignalsSnapshot::default();
    let mut running = shared
        .signals
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner());
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
                let keys =
                    shared.key_set(&t.name, &t.keys, &t.issuer, &t.key_policy, t.min_rsa_bits);
                let rt = Arc::new(TransmitterRt::new(t.clone(), keys, token_iss));
                install_observers(shared, &rt);
                let (stop, stop_rx) = tokio::sync::watch::channel(false);
                spawn_tasks(shared, &rt, t, stop_rx);
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
    shared: &Arc<Shared>,
    rt: &Arc<TransmitterRt>,
    t: &crate::config::Transmitter,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // Stop on process shutdown or when the transmitter leaves the configuration.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut global = shared.shutdown.subscribe();
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
        tokio::spawn(poll::run_poller(
            rt.clone(),
            shared.store.clone(),
            shared.fetcher.clone(),
            rx.clone(),
        ));
    }
    if t.stream.is_some() {
        tokio::spawn(stream::run_stream_manager(
            rt.clone(),
            shared.fetcher.clone(),
            rx,
        ));
    }
}

fn install_observers(shared: &Arc<Shared>, rt: &Arc<TransmitterRt>) {
    let weak = Arc::downgrade(shared);
    rt.freshness.set_observer(Box::new(move |s| {
        if let Some(shared) = weak.upgrade() {
            let l = TransmitterLabel {
                transmitter: s.transmitter.clone(),
            };
            shared
                .metrics
                .set_enforce_latency
                .get_or_create(&l)
                .observe(s.commit_latency.as_secs_f64());
            shared
                .metrics
                .set_event_lag
                .get_or_create(&l)
                .observe(s.event_lag_ms.max(0) as f64 / 1000.0);
        }
    }));
    let weak = Arc::downgrade(shared);
    rt.set_event_observer(Box::new(move |e| {
        if let Some(shared) = weak.upgrade() {
            let events: &[&str] = if e.events.is_empty() {
                &["none"]
            } else {
                &e.events
            };
            for ev in events {
                shared
                    .metrics
                    .sets_received
                    .get_or_create(&SetLabels {
                        transmitter: e.transmitter.to_string(),
                        event: (*ev).to_string(),
                        result: e.result,
                    })
                    .inc();
            }
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

/// Entry point for listeners with `role = "signals"`: the configured push paths.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<BoxedBody>, Infallible> {
    let snap = shared.snapshot.load_full();
    let path = req.uri().path().to_string();
    let Some(rt) = snap.signals.push.get(&path).cloned() else {
        let id = crate::proxy::headers::request_id(req.headers());
        let id = id.to_str().unwrap_or_default().to_string();
        return Ok(crate::reply::json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no signals endpoint at this path",
            &id,
        ));
    };
    let t0 = std::time::Instant::now();
    let cert = conn.client_cert_sha256.get();
    let resp = push::handle_push(&rt, &shared.store, req, cert, crate::store::now_secs()).await;
    tracing::info!(target: "access", listener = "signals", path = %path, transmitter = %rt.name(), status = resp.status().as_u16(), duration_ms = t0.elapsed().as_secs_f64() * 1000.0);
    Ok(resp.map(|b| {
        b.map_err(|e: Infallible| -> BoxError { match e {} })
            .boxed()
    }))
}
