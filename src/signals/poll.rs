//! RFC 8936 poll client: one task per polled transmitter. Long polls (`returnImmediately: false`)
//! for up to `maxEvents` SETs, acknowledges only SETs that are durably committed, reports invalid
//! ones in `setErrs`, polls again at once while `moreAvailable`, backs off with jitter on errors
//! (a transmitter restart is just an error that passes). A stream-supplied endpoint is polled
//! as soon as stream management supplies it, with the management token; a 401 drops the token
//! and the poll is sent again, once, with a new one.
//! On shutdown the in-flight poll is abandoned and the acknowledgements not yet delivered are
//! sent in one last acknowledge-only poll (`maxEvents: 0`), bounded by [`FINAL_ACK_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};

use super::process::{process_set, ProcessError};
use super::stream::{StreamClient, StreamError};
use super::transmitter::{DeliveryKind, Tally, TransmitterRt};
use crate::config::Secret;
use crate::fetch::{FetchError, Fetcher};
use crate::store::SignalStore;

const DEFAULT_MAX_EVENTS: u32 = 100;
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A long poll answered faster than this with no SETs: the transmitter does not hold requests.
const LONG_POLL_MIN: Duration = Duration::from_secs(1);
/// Fleet mode: how often a replica without the poll lease checks whether it got it.
const LEASE_RECHECK: Duration = Duration::from_millis(200);
/// Longest wait for the acknowledge-only poll sent on shutdown.
pub const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// An entry of `setErrs` (RFC 8936 §2.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetErr {
    pub err: String,
    pub description: String,
}

/// Acknowledgements and errors not yet delivered to the transmitter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    pub ack: Vec<String>,
    pub set_errs: BTreeMap<String, SetErr>,
}

#[derive(Serialize)]
struct PollRequest<'a> {
    #[serde(rename = "maxEvents")]
    max_events: u32,
    #[serde(rename = "returnImmediately")]
    return_immediately: bool,
    ack: &'a [String],
    #[serde(rename = "setErrs", skip_serializing_if = "BTreeMap::is_empty")]
    set_errs: &'a BTreeMap<String, SetErr>,
}

/// A transmitter's poll answer (RFC 8936 §2.3).
#[derive(Debug, Deserialize)]
pub struct PollResponse {
    /// `jti` → compact SET.
    #[serde(default)]
    pub sets: BTreeMap<String, String>,
    #[serde(default, rename = "moreAvailable")]
    pub more_available: bool,
}

/// Parses a poll response body (pure, so it can be fuzzed apart from the HTTP exchange).
pub fn parse_response(body: &[u8]) -> Result<PollResponse, PollError> {
    serde_json::from_slice(body).map_err(|e| PollError::BadResponse(e.to_string()))
}

impl PollError {
    /// The `result` label of `cae_polls_total` for this failure.
    pub fn label(&self) -> &'static str {
        match self {
            PollError::NoEndpoint => "no_endpoint",
            PollError::Fetch(FetchError::Timeout { .. }) => "timeout",
            PollError::Fetch(FetchError::Connect { .. } | FetchError::Url(_)) => "unreachable",
            PollError::Fetch(FetchError::Body { .. }) | PollError::BadResponse(_) => "bad_response",
            PollError::Status(_) => "http_status",
            PollError::Unavailable(_) => "store_unavailable",
            PollError::Token(_) => "no_token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("no poll endpoint is known yet")]
    NoEndpoint,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the transmitter answered HTTP {0}")]
    Status(u16),
    #[error("the poll response is not valid JSON: {0}")]
    BadResponse(String),
    #[error("SETs could not be stored: {0}")]
    Unavailable(String),
    #[error("no management token for the stream-supplied endpoint: {0}")]
    Token(#[source] Box<StreamError>),
}

/// What one poll returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollCycle {
    pub received: usize,
    pub committed: usize,
    pub rejected: usize,
    pub more_available: bool,
}

/// What a poll presents as `Authorization`.
enum PollAuth {
    None,
    /// The configured `poll.authorization`.
    Static(Secret),
    /// The stream management token (client credentials or `stream.bearer`).
    Management,
}

/// Resolved poll settings: configured `[poll]`, else what stream management supplied.
struct Settings {
    endpoint: String,
    authorization: PollAuth,
    max_events: u32,
    long_poll: bool,
    interval: Duration,
    timeout: Duration,
}

fn settings(rt: &TransmitterRt) -> Option<Settings> {
    let cfg = rt.cfg();
    let target = rt.poll_target();
    // Without a configured `poll.authorization`, a managed stream's endpoint (supplied or
    // configured) is polled with the stream's management token.
    let managed = || {
        if cfg.stream.is_some() {
            PollAuth::Management
        } else {
            PollAuth::None
        }
    };
    match (&cfg.poll, target) {
        (Some(p), _) => Some(Settings {
            endpoint: p.endpoint.clone(),
            authorization: match &p.authorization {
                Some(a) => PollAuth::Static(a.clone()),
                None => managed(),
            },
            max_events: p.max_events,
            long_poll: p.long_poll,
            interval: p.interval,
            timeout: p.timeout,
        }),
        (None, Some(t)) => Some(Settings {
            endpoint: t.endpoint.clone(),
            authorization: managed(),
            max_events: DEFAULT_MAX_EVENTS,
            long_poll: true,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }),
        (None, None) => None,
    }
}

/// One poll: sends the pending acks/errors, processes the SETs returned. Pending entries are
/// cleared only when the transmitter answered 200 (then they were delivered).
pub async fn poll_once(
    rt: &Arc<TransmitterRt>,
    store: &Arc<SignalStore>,
    fetcher: &Fetcher,
    pending: &mut Pending,
) -> Result<PollCycle, PollError> {
    let s = settings(rt).ok_or(PollError::NoEndpoint)?;
    poll_with(rt, store, fetcher, pending, &s).await
}

async fn poll_with(
    rt: &Arc<TransmitterRt>,
    store: &Arc<SignalStore>,
    fetcher: &Fetcher,
    pending: &mut Pending,
    s: &Settings,
) -> Result<PollCycle, PollError> {
    rt.counters.polls.fetch_add(1, Ordering::Relaxed);
    let resp = send_poll(rt, store, fetcher, pending, s, s.max_events, !s.long_poll).await?;
    if resp.status != http::StatusCode::OK {
        return Err(PollError::Status(resp.status.as_u16()));
    }
    let parsed = parse_response(&resp.body)?;
    // The transmitter has our acknowledgements and errors now.
    *pending = Pending::default();
    let arrival = Instant::now();
    let mut cycle = PollCycle {
        received: parsed.sets.len(),
        more_available: parsed.more_available,
        ..PollCycle::default()
    };
    let mut failure = None;
    for (jti, compact) in &parsed.sets {
        match process_set(
            rt,
            store,
            compact,
            arrival,
            crate::store::now_secs(),
            DeliveryKind::Poll,
        )
        .await
        {
            Ok(_) => {
                cycle.committed += 1;
                pending.ack.push(jti.clone());
            }
            Err(e) => match e.err_code() {
                Some((err, description)) => {
                    cycle.rejected += 1;
                    pending.set_errs.insert(
                        jti.clone(),
                        SetErr {
                            err: err.to_string(),
                            description,
                        },
                    );
                }
                // Not stored: neither acknowledged nor refused; it comes back later.
                None => {
                    failure = Some(match e {
                        ProcessError::Store(se) => se.to_string(),
                        other => other.to_string(),
                    });
                    break;
                }
            },
        }
    }
    match failure {
        Some(f) => Err(PollError::Unavailable(f)),
        None => Ok(cycle),
    }
}

/// Sends one poll request carrying `pending`'s acknowledgements and errors (RFC 8936 §2.4).
#[allow(clippy::too_many_arguments)]
async fn send_poll(
    rt: &Arc<TransmitterRt>,
    store: &Arc<SignalStore>,
    fetcher: &Fetcher,
    pending: &Pending,
    s: &Settings,
    max_events: u32,
    return_immediately: bool,
) -> Result<crate::fetch::Fetched, PollError> {
    let body = serde_json::to_vec(&PollRequest {
        max_events,
        return_immediately,
        ack: &pending.ack,
        set_errs: &pending.set_errs,
    })
    .map_err(|e| PollError::BadResponse(e.to_string()))?;
    let mut headers: Vec<(&str, String)> = vec![
        ("content-type", "application/json".into()),
        ("accept", "application/json".into()),
    ];
    if !pending.set_errs.is_empty() {
        headers.push(("content-language", "en-US".into()));
    }
    match &s.authorization {
        PollAuth::Management => {
            // Same token cache as stream management; a 401 replaces the token, once.
            let client = StreamClient::new(rt.clone(), store.clone(), fetcher.clone());
            return client
                .send_authorized(
                    Method::POST,
                    &s.endpoint,
                    &headers,
                    Bytes::from(body),
                    s.timeout,
                )
                .await
                .map_err(|e| match e {
                    StreamError::Fetch(f) => PollError::Fetch(f),
                    other => PollError::Token(Box::new(other)),
                });
        }
        PollAuth::Static(a) => headers.push(("authorization", a.expose().to_string())),
        PollAuth::None => {}
    }
    Ok(fetcher
        .request(
            Method::POST,
            &s.endpoint,
            &headers,
            Bytes::from(body),
            s.timeout,
        )
        .await?)
}

/// On shutdown: delivers the acknowledgements and errors of SETs already committed (or refused)
/// in one acknowledge-only poll (`maxEvents: 0`, `returnImmediately: true`, RFC 8936 §2.4), so
/// the transmitter does not deliver them again; bounded by [`FINAL_ACK_TIMEOUT`]. If it fails,
/// they are redelivered later and deduplicated.
async fn final_acks(
    rt: &Arc<TransmitterRt>,
    store: &Arc<SignalStore>,
    fetcher: &Fetcher,
    pending: &Pending,
    name: &str,
) {
    let Some(mut s) = settings(rt) else {
        return;
    };
    s.timeout = s.timeout.min(FINAL_ACK_TIMEOUT);
    let sent = tokio::time::timeout(
        FINAL_ACK_TIMEOUT,
        send_poll(rt, store, fetcher, pending, &s, 0, true),
    )
    .await;
    match sent {
        Ok(Ok(r)) if r.status == http::StatusCode::OK => {
            tracing::info!(target: "cae_proxy::signals", transmitter = %name, acknowledged = pending.ack.len(), "poller stopping: acknowledgements delivered");
        }
        Ok(Ok(r)) => {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %name, unacknowledged = pending.ack.len(), status = r.status.as_u16(), "poller stopping: acknowledgements refused; committed SETs will be redelivered and deduplicated");
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %name, unacknowledged = pending.ack.len(), error = %crate::errors::Chain(&e), "poller stopping: acknowledgements not delivered; committed SETs will be redelivered and deduplicated");
        }
        Err(_) => {
            tracing::warn!(target: "cae_proxy::signals", transmitter = %name, unacknowledged = pending.ack.len(), "poller stopping: acknowledgements timed out; committed SETs will be redelivered and deduplicated");
        }
    }
}

/// The wait after each failed poll: uniformly in [d/2, d], `d` doubling from [`BACKOFF_START`]
/// to [`BACKOFF_MAX`]; a poll that works starts it over.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_START)
    }

    fn failed(&mut self) -> Duration {
        let half = self.0 / 2;
        let wait = half + Duration::from_secs_f64(rand::random::<f64>() * half.as_secs_f64());
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_START;
    }
}

/// Sleeps `d` unless shutdown fires first; returns false on shutdown.
async fn sleep_or_stop(d: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}

/// Runs until `shutdown` turns true (or its sender is dropped). Settings are re-read every
/// cycle, so a reload or a stream-supplied endpoint takes effect on the next poll.
pub async fn run_poller(
    rt: Arc<TransmitterRt>,
    store: Arc<SignalStore>,
    fetcher: Fetcher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut backoff = Backoff::new();
    let name = rt.name();
    tracing::info!(target: "cae_proxy::signals", transmitter = %name, "poller started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Fleet mode: one replica polls a transmitter at a time (a lease in Redis).
        if store.poll_gate().is_some_and(|g| !g.may_poll(&name)) {
            if !sleep_or_stop(LEASE_RECHECK, &mut shutdown).await {
                break;
            }
            continue;
        }
        let Some(s) = settings(&rt) else {
            // No endpoint yet: a managed poll stream is polled as soon as stream management
            // supplies its endpoint.
            tokio::select! {
                _ = rt.poll_target_changed() => {}
                _ = tokio::time::sleep(DEFAULT_INTERVAL) => {}
                _ = shutdown.changed() => break,
            }
            continue;
        };
        let started = Instant::now();
        let result = tokio::select! {
            r = poll_with(&rt, &store, &fetcher, &mut pending, &s) => r,
            _ = shutdown.changed() => break,
        };
        rt.tally(Tally::Poll(match &result {
            Ok(_) => "ok",
            // A long poll that outlived our timeout: nothing happened.
            Err(PollError::Fetch(FetchError::Timeout { .. })) if s.long_poll => "ok",
            Err(e) => e.label(),
        }));
        let wait = match result {
            Ok(c) => {
                backoff.reset();
                if c.more_available {
                    Duration::ZERO
                } else if !s.long_poll || (c.received == 0 && started.elapsed() < LONG_POLL_MIN) {
                    s.interval
                } else {
                    Duration::ZERO
                }
            }
            // A long poll that outlived our timeout just means nothing happened.
            Err(PollError::Fetch(FetchError::Timeout { .. })) if s.long_poll => Duration::ZERO,
            Err(e) => {
                let w = backoff.failed();
                tracing::warn!(target: "cae_proxy::signals", transmitter = %name, error = %crate::errors::Chain(&e), retry_in = ?w, "poll failed");
                w
            }
        };
        if !wait.is_zero() && !sleep_or_stop(wait, &mut shutdown).await {
            break;
        }
    }
    if !pending.ack.is_empty() || !pending.set_errs.is_empty() {
        final_acks(&rt, &store, &fetcher, &pending, &name).await;
    }
    if let Some(g) = store.poll_gate() {
        g.stopped(&name).await;
    }
    tracing::info!(target: "cae_proxy::signals", transmitter = %name, "poller stopped");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Poll;
    use crate::dev::keys::set_kit::{self as kit, AUD, ISS};
    use crate::dev::keys::SigningKey;
    use crate::store::{MemoryStore, SubjectKey};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use serde_json::{json, Value};
    use std::sync::Mutex;

    #[test]
    fn failed_polls_back_off_doubling_with_jitter_up_to_a_minute_and_start_over() {
        for _ in 0..50 {
            let mut b = Backoff::new();
            let mut d = BACKOFF_START;
            for _ in 0..10 {
                let w = b.failed();
                assert!(w >= d / 2 && w <= d, "{w:?} outside [{:?}, {d:?}]", d / 2);
                d = (d * 2).min(BACKOFF_MAX);
            }
            assert_eq!(d, BACKOFF_MAX);
            b.reset();
            let w = b.failed();
            assert!(w >= BACKOFF_START / 2 && w <= BACKOFF_START, "{w:?}");
        }
    }

    /// A scripted transmitter: answers each poll with the next scripted response, records bodies.
    struct Script {
        responses: Mutex<Vec<(u16, String)>>,
        requests: Mutex<Vec<(Value, Option<String>)>>,
    }

    async fn serve(script: Arc<Script>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let script = script.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let script = script.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            script
                                .requests
                                .lock()
                                .unwrap()
                                .push((serde_json::from_slice(&body).unwrap(), auth));
                            let next = {
                                let mut r = script.responses.lock().unwrap();
                                if r.is_empty() {
                                    None
                                } else {
                                    Some(r.remove(0))
                                }
                            };
                            let (status, body) = match next {
                                Some(x) => x,
                                None => {
                                    // Long poll with nothing to say: hold a while.
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                    (200, r#"{"sets":{},"moreAvailable":false}"#.to_string())
                                }
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}/poll")
    }

    fn set_json(s: &SigningKey, jti: &str, iss: &str) -> String {
        s.sign_set(&json!({"iss": iss, "jti": jti, "iat": 1_700_000_000, "aud": AUD,
            "sub_id": {"format":"email","email":"Jane@Example.com"},
            "events": {"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}}}))
    }

    #[tokio::test]
    async fn acks_committed_reports_invalid_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = crate::signals::push::tests::runtime(dir.path(), &s).await;
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let first = json!({"sets": {"a-1": set_json(&s, "a-1", ISS), "bad-1": set_json(&s, "bad-1", "https://evil.example.com")}, "moreAvailable": true}).to_string();
        let second =
            json!({"sets": {"a-1": set_json(&s, "a-1", ISS)}, "moreAvailable": false}).to_string();
        let script = Arc::new(Script {
            responses: Mutex::new(vec![(200, first), (503, "{}".into()), (200, second)]),
            requests: Mutex::new(Vec::new()),
        });
        let endpoint = serve(script.clone()).await;
        let mut cfg = (*rt.cfg()).clone();
        cfg.poll = Some(Poll {
            endpoint,
            authorization: Some(Secret::from_value("Bearer poll-secret")),
            max_events: 10,
            long_poll: true,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        });
        rt.reconfigure(cfg, None);

        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run_poller(rt.clone(), store.clone(), Fetcher::new(), rx));
        // Wait for: first poll, the 503 (backoff), the redelivery, then at least one idle long poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        while script.requests.lock().unwrap().len() < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = Instant::now();
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("poller stops promptly")
            .unwrap();
        assert!(stopped.elapsed() < Duration::from_secs(2));

        let reqs = script.requests.lock().unwrap().clone();
        assert!(reqs.len() >= 4, "{reqs:?}");
        assert_eq!(
            reqs[0].0,
            json!({"maxEvents": 10, "returnImmediately": false, "ack": []})
        );
        assert_eq!(reqs[0].1.as_deref(), Some("Bearer poll-secret"));
        let want_second = json!({"maxEvents": 10, "returnImmediately": false, "ack": ["a-1"],
            "setErrs": {"bad-1": {"err": "invalid_issuer", "description": "the SET issuer is not the configured transmitter"}}});
        assert_eq!(reqs[1].0, want_second);
        // The 503 did not lose the acknowledgements: they are sent again.
        assert_eq!(reqs[2].0, want_second);
        // The redelivered a-1 (a duplicate) is acknowledged again.
        assert_eq!(
            reqs[3].0,
            json!({"maxEvents": 10, "returnImmediately": false, "ack": ["a-1"]})
        );
        let key = SubjectKey::Email {
            email: "jane@example.com".into(),
        };
        assert_eq!(
            store.tables().blocked_since(&key.encode()),
            Some(1_700_000_000)
        );
        assert_eq!(rt.counters.committed.load(Ordering::Relaxed), 1);
        assert_eq!(rt.counters.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(rt.counters.poll_failures.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn no_endpoint_is_an_error_and_store_failure_keeps_sets_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = crate::signals::push::tests::runtime(dir.path(), &s).await;
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let mut pending = Pending::default();
        assert!(matches!(
            poll_once(&rt, &store, &Fetcher::new(), &mut pending).await,
            Err(PollError::NoEndpoint)
        ));
        // Stream-supplied target.
        let script = Arc::new(Script {
            responses: Mutex::new(vec![(
                200,
                json!({"sets": {"b-1": set_json(&s, "b-1", ISS)}}).to_string(),
            )]),
            requests: Mutex::new(Vec::new()),
        });
        let endpoint = serve(script.clone()).await;
        rt.set_poll_target(Some(crate::signals::transmitter::PollTarget { endpoint }));
        let failing = Arc::new(
            SignalStore::open(Arc::new(crate::signals::push::tests::Failing), 100_000, 0).unwrap(),
        );
        let r = poll_once(&rt, &failing, &Fetcher::new(), &mut pending).await;
        assert!(matches!(r, Err(PollError::Unavailable(_))), "{r:?}");
        assert_eq!(pending, Pending::default());
        assert_eq!(
            script.requests.lock().unwrap()[0].0,
            json!({"maxEvents": 100, "returnImmediately": false, "ack": []})
        );
    }
}
