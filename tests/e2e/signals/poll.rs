//! Poll delivery (RFC 8936): polled SETs are applied, then acknowledged, or reported in
//! `setErrs`; `moreAvailable` drains at once; a transmitter outage backs off and resumes; polled
//! SETs survive SIGKILL before and after the acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, iss_sub, opaque, DevTransmitter, TransmitterOptions, CAEP,
};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::ServerHandle;
use http::StatusCode;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn polled_sets_are_applied_acknowledged_or_reported() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(2),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let toml = poll_transmitter(
        base(&idp.issuer_url(), &up.url()).store(REDB),
        &tx,
        &tx.poll_url(),
        "interval = \"100ms\"\ntimeout = \"5s\"",
    )
    .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let s = Site { h, idp, _up: up };
    let at = now_secs() - 10;
    let p1 = token(&s, "poll-1", 100, json!({"sid": "ps-1"}));
    let p2 = token(&s, "poll-2", 100, json!({}));
    let p3 = token(&s, "poll-3", 100, json!({}));

    let v1 = tx.sign_set(DevTransmitter::session_revoked(
        complex(&[("user", user(&s, "poll-1")), ("session", opaque("ps-1"))]),
        Some(at),
    ));
    let v2 = tx.sign_set(DevTransmitter::credential_change(
        user(&s, "poll-2"),
        "password",
        "update",
        Some(at),
    ));
    let bad_aud = tx.sign_set(with(
        DevTransmitter::credential_change(user(&s, "poll-3"), "password", "update", Some(at)),
        "aud",
        json!("someone-else"),
    ));
    let bad_sig = {
        let other = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
        // Signed by another key under our transmitter's kid.
        other.signing_key().sign_raw(
            &rs_header(&tx),
            &filled(
                &tx,
                DevTransmitter::credential_change(
                    user(&s, "poll-3"),
                    "password",
                    "update",
                    Some(at),
                ),
            ),
        )
    };
    for set in [&v1, &bad_aud, &v2, &bad_sig] {
        tx.queue_for_poll(set);
    }
    let tx = &tx;
    eventually(
        Duration::from_secs(10),
        "acks and setErrs for four SETs",
        || async { tx.acks().len() >= 2 && tx.set_errs().len() >= 2 },
    )
    .await;
    let mut acks = tx.acks();
    acks.sort();
    let mut want = vec![jti_of(&v1), jti_of(&v2)];
    want.sort();
    assert_eq!(acks, want, "exactly the valid SETs are acknowledged");
    let mut errs = tx.set_errs();
    errs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want_errs = vec![
        (
            jti_of(&bad_aud),
            json!({"err": "invalid_audience", "description": "the SET audience does not name this receiver"}),
        ),
        (
            jti_of(&bad_sig),
            json!({"err": "invalid_key", "description": "the SET signature is invalid"}),
        ),
    ];
    want_errs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(errs, want_errs);
    assert!(tx.queued().is_empty(), "{:?}", tx.queued());

    assert_revoked(&s, &p1, at, "p1").await;
    assert_revoked(&s, &p2, at, "p2").await;
    assert_passes(&s, &p3, "p3").await;
    let other_session = token(&s, "poll-1", 100, json!({"sid": "ps-other"}));
    assert_passes(&s, &other_session, "other_session").await;

    // Redelivery of an acknowledged SET: acknowledged again, applied once.
    tx.queue_for_poll(&v1);
    eventually(
        Duration::from_secs(10),
        "the redelivered SET is acknowledged",
        || async { tx.acks().len() >= 3 },
    )
    .await;
    assert_eq!(tx.acks()[2], jti_of(&v1));
    assert_eq!(tx.set_errs().len(), 2);
    let m = s.h.metrics().await;
    let series = |result: &str| sets_series("poller", "session-revoked", result);
    assert_eq!(metric(&m, &series("committed")), Some(1.0), "{m}");
    assert_eq!(metric(&m, &series("duplicate")), Some(1.0), "{m}");
    assert_eq!(stats(&s.h).await["revocations"], 2);
}

/// One poll request seen by [`Forwarder`] and the transmitter's answer.
#[derive(Debug, Clone)]
struct Exchange {
    at: Instant,
    request: Value,
    content_language: Option<String>,
    status: u16,
    response: Value,
}

/// A recording HTTP forwarder in front of a transmitter's poll endpoint.
struct Forwarder {
    _server: ServerHandle,
    url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Forwarder {
    fn log(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

async fn forwarder(target: &str) -> Forwarder {
    let l = listener().await;
    let url = format!("http://{}", l.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
    let rec = log.clone();
    let target = Arc::new(target.to_string());
    let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
        let rec = rec.clone();
        let target = target.clone();
        async move {
            let at = Instant::now();
            let method = req.method().clone();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let mut headers: Vec<(String, String)> = Vec::new();
            for name in [
                "content-type",
                "accept",
                "authorization",
                "content-language",
            ] {
                if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                    headers.push((name.to_string(), v.to_string()));
                }
            }
            let body = cae_proxy::dev::read_body(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let Ok((status, rh, rb)) = cae_proxy::dev::http_request(
                method,
                &format!("{target}{path}"),
                &hdrs,
                body.clone(),
            )
            .await
            else {
                return cae_proxy::dev::status_response(StatusCode::BAD_GATEWAY);
            };
            rec.lock().unwrap().push(Exchange {
                at,
                request: serde_json::from_slice(&body).unwrap_or(Value::Null),
                content_language: headers
                    .iter()
                    .find(|(k, _)| k == "content-language")
                    .map(|(_, v)| v.clone()),
                status,
                response: serde_json::from_slice(&rb).unwrap_or(Value::Null),
            });
            let ct = rh
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            cae_proxy::dev::response(StatusCode::from_u16(status).unwrap(), &ct, rb)
        }
    })
    .unwrap();
    Forwarder {
        _server: server,
        url,
        log,
    }
}

#[tokio::test]
async fn poll_drains_more_available_at_once_acks_everything_and_reports_refused_sets() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let fwd = forwarder(&tx.issuer_url()).await;
    let at = now_secs() - 10;
    // 250 valid SETs and, in the second batch, one signed by another key under tx's kid.
    let forger = SigningKey::generate(KeyAlg::Rs256).unwrap();
    let mut valid = Vec::new();
    for i in 0..250 {
        let set = tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), &format!("drain-{i}")),
            "password",
            "update",
            Some(at),
        ));
        tx.queue_for_poll(&set);
        valid.push(jti_of(&set));
        if i == 149 {
            let payload = json!({"iss": tx.issuer_url(), "iat": now_secs(), "jti": "forged-1", "aud": AUD,
                "sub_id": iss_sub(&idp.issuer_url(), "forged-victim"),
                "events": {format!("{CAEP}credential-change"): {"credential_type": "password", "change_type": "update", "event_timestamp": at}}});
            let bad = forger.sign_raw(
                &json!({"typ": "secevent+jwt", "alg": "RS256", "kid": tx.signing_key().kid()}),
                &payload,
            );
            tx.queue_for_poll(&bad);
        }
    }
    assert_eq!(tx.queued().len(), 251);
    // Short polls (`long_poll = false`) every 6 s: only `moreAvailable` makes the proxy poll
    // again before that interval.
    let interval = Duration::from_secs(6);
    let toml = poll_transmitter(
        base(&idp.issuer_url(), &up.url()),
        &tx,
        &format!("{}/ssf/poll", fwd.url),
        "max_events = 100\nlong_poll = false\ninterval = \"6s\"\ntimeout = \"5s\"",
    )
    .build();
    let h = Harness::start(&toml).await;
    let fwd_ref = &fwd;
    eventually(
        Duration::from_secs(20),
        "four polls (the fourth acknowledges the last batch)",
        || async move { fwd_ref.log().len() >= 4 },
    )
    .await;
    let log = fwd.log();
    let batches: Vec<Vec<String>> = log[..3].iter().map(|e| jtis(&e.response["sets"])).collect();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 51],
        "{log:?}"
    );
    for (i, e) in log[..4].iter().enumerate() {
        assert_eq!(e.status, 200, "poll {i}");
        assert_eq!(e.request["maxEvents"], 100, "poll {i}: {}", e.request);
        assert_eq!(e.request["returnImmediately"], true, "poll {i}");
    }
    assert_eq!(log[0].request["ack"], json!([]));
    assert_eq!(log[0].response["moreAvailable"], true);
    assert_eq!(log[1].response["moreAvailable"], true);
    assert_eq!(log[2].response["moreAvailable"], false);
    // Each poll acknowledges the previous batch; the forged SET is in setErrs, not in ack.
    let bad_jti = "forged-1".to_string();
    assert!(batches[1].contains(&bad_jti));
    assert_eq!(jtis(&log[1].request["ack"]), batches[0]);
    assert_eq!(log[1].request.get("setErrs"), None);
    assert_eq!(log[1].content_language, None);
    let mut second = batches[1].clone();
    second.retain(|j| *j != bad_jti);
    assert_eq!(jtis(&log[2].request["ack"]), second);
    assert_eq!(
        log[2].request["setErrs"],
        json!({"forged-1": {"err": "invalid_key", "description": "the SET signature is invalid"}})
    );
    assert_eq!(log[2].content_language.as_deref(), Some("en-US"));
    assert_eq!(jtis(&log[3].request["ack"]), batches[2]);
    assert_eq!(log[3].request.get("setErrs"), None);
    // moreAvailable: the three batches were fetched well within one interval; after the last,
    // the proxy waited the interval.
    let drained = log[2].at.duration_since(log[0].at);
    assert!(drained < interval, "drained in {drained:?}");
    let waited = log[3].at.duration_since(log[2].at);
    assert!(
        waited >= interval - Duration::from_millis(500),
        "{waited:?}"
    );

    // The transmitter: every valid SET acknowledged once, the forged one refused, none left.
    let mut acked = tx.acks();
    acked.sort();
    valid.sort();
    assert_eq!(acked, valid);
    assert_eq!(
        tx.set_errs(),
        vec![(
            bad_jti.clone(),
            json!({"err": "invalid_key", "description": "the SET signature is invalid"})
        )]
    );
    assert!(tx.queued().is_empty());

    // All applied: 250 revocations, each enforced; the forged SET's subject is untouched.
    assert_eq!(table_sizes(&h).await, (250, 0, 0));
    let api = h.url("public", "/api");
    for i in [0, 99, 100, 149, 150, 249] {
        let t = mint(&idp, &format!("drain-{i}"), 100, json!({}));
        assert_revoked_at(&api, &idp, &t, at, &format!("drain-{i}")).await;
    }
    let r = call_with(&api, &mint(&idp, "forged-victim", 100, json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, &sets_series("poller", "credential-change", "committed")),
        Some(250.0)
    );
    assert_eq!(
        metric(
            &m,
            &sets_series("poller", "credential-change", "invalid_key")
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn poll_backs_off_during_a_transmitter_outage_and_resumes() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(1),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let fwd = forwarder(&tx.issuer_url()).await;
    let toml = poll_transmitter(
        base(&idp.issuer_url(), &up.url()),
        &tx,
        &format!("{}/ssf/poll", fwd.url),
        "interval = \"100ms\"\ntimeout = \"5s\"",
    )
    .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let api = h.url("public", "/api");
    let at = now_secs() - 10;
    let revoke = |sub: &str| {
        tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), sub),
            "password",
            "update",
            Some(at),
        ))
    };
    // Working: a SET is fetched by the long poll and acknowledged.
    let first = revoke("before-outage");
    tx.queue_for_poll(&first);
    let tx_ref = &tx;
    let jti = jti_of(&first);
    {
        let jti = &jti;
        eventually(
            Duration::from_secs(10),
            "the first SET acknowledged",
            || async move { tx_ref.acks().contains(jti) },
        )
        .await;
    }
    let t = mint(&idp, "before-outage", 100, json!({}));
    assert_revoked_at(&api, &idp, &t, at, "before the outage").await;

    // Outage: every endpoint answers 503. Once the long poll in flight has ended (the first
    // 503), a SET queued meanwhile cannot be fetched.
    tx.set_available(false);
    let outage = Instant::now();
    let fwd_ref = &fwd;
    eventually(
        Duration::from_secs(5),
        "the first failed poll",
        || async move {
            fwd_ref
                .log()
                .iter()
                .any(|e| e.at >= outage && e.status == 503)
        },
    )
    .await;
    let during = revoke("during-outage");
    tx.queue_for_poll(&during);
    // Watch the poller for a fixed window (not a readiness wait: the count is the point).
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let failed: Vec<Exchange> = fwd
        .log()
        .into_iter()
        .filter(|e| e.at >= outage && e.status == 503)
        .collect();
    // Retried (not given up), but a handful of times in 4 s, not a hot loop.
    assert!(
        (2..=8).contains(&failed.len()),
        "{} polls during the outage: {failed:?}",
        failed.len()
    );
    let gaps: Vec<Duration> = failed
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    // No retry before the shortest backoff (a lower bound: a late wake-up only lengthens a
    // gap). How the backoff grows is the unit test
    // `signals::poll::tests::failed_polls_back_off_doubling_with_jitter_up_to_a_minute_and_start_over`.
    for g in &gaps {
        assert!(*g >= Duration::from_millis(200), "{gaps:?}");
    }
    // The SET queued during the outage was not delivered.
    let victim = mint(&idp, "during-outage", 100, json!({}));
    let r = call_with(&api, &victim).await;
    assert_eq!(r.status, StatusCode::OK, "not delivered yet: {}", r.text());

    // Back: the next poll (after the current backoff) fetches and acknowledges it.
    tx.set_available(true);
    let back = Instant::now();
    let jti = jti_of(&during);
    {
        let jti = &jti;
        eventually(
            Duration::from_secs(15),
            "the SET queued during the outage acknowledged",
            || async move { tx_ref.acks().contains(jti) },
        )
        .await;
    }
    assert_revoked_at(&api, &idp, &victim, at, "after the outage").await;
    let after: Vec<Exchange> = fwd.log().into_iter().filter(|e| e.at >= back).collect();
    assert!(after.iter().all(|e| e.status == 200), "{after:?}");
    assert_eq!(tx.acks(), vec![jti_of(&first), jti]);
    assert!(tx.set_errs().is_empty());
}

#[tokio::test]
async fn polled_sets_survive_sigkill_before_and_after_the_ack() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            poll_wait: Duration::from_secs(1),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    let write_config = |poll: &str| {
        let store = redb_store(dir.path());
        let base = base(&idp.issuer_url(), &up.url())
            .log_level("info")
            .store(&store);
        let text = poll_transmitter(base, &tx, &tx.poll_url(), poll).build();
        std::fs::write(&cfg, text).unwrap();
    };
    let c = client();
    let now = now_secs();
    let at = now - 10;
    let old = |sub: &str| idp.mint(sub, json!({"iat": now - 100, "nbf": now - 100}));
    let revoke = |sub: &str| {
        tx.sign_set(DevTransmitter::credential_change(
            iss_sub(&idp.issuer_url(), sub),
            "password",
            "update",
            Some(at),
        ))
    };
    let status_of = |bin: &Binary, t: &str| {
        let url = bin.url("public", "/api");
        let auth = format!("Bearer {t}");
        let c = c.clone();
        async move {
            let r = get(&c, &url, &[("authorization", &auth)]).await;
            (r.status, r.text())
        }
    };
    let metrics_of = |bin: &Binary| {
        let url = bin.url("admin", "/metrics");
        let c = c.clone();
        async move { get(&c, &url, &[]).await.text() }
    };
    let committed = sets_series("poller", "credential-change", "committed");
    let duplicate = sets_series("poller", "credential-change", "duplicate");

    // Phase 1: the SET is polled and committed; the ack would go with the next poll, an hour
    // later (short polls, interval 1 h). SIGKILL before that.
    let set1 = revoke("crash-1");
    let jti1 = jti_of(&set1);
    tx.queue_for_poll(&set1);
    write_config("long_poll = false\ninterval = \"1h\"\ntimeout = \"5s\"");
    let bin = Binary::start(&cfg, 2);
    {
        let committed = &committed;
        eventually(Duration::from_secs(15), "the SET committed", || {
            let m = metrics_of(&bin);
            async move { metric(&m.await, committed) == Some(1.0) }
        })
        .await;
    }
    let victim1 = old("crash-1");
    let (st, body) = status_of(&bin, &victim1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(tx.acks().is_empty(), "not acknowledged yet");
    bin.signal(libc::SIGKILL);
    drop(bin);
    assert!(tx.acks().is_empty());
    assert_eq!(tx.queued().len(), 1, "still queued at the transmitter");

    // Phase 2: restart with the transmitter down. The revocation is enforced from the store
    // alone (nothing could be redelivered yet).
    write_config("interval = \"100ms\"\ntimeout = \"5s\"");
    tx.set_available(false);
    let bin = Binary::start(&cfg, 2);
    let control = old("crash-control");
    eventually(
        Duration::from_secs(15),
        "the public listener serves",
        || {
            let f = status_of(&bin, &control);
            async move { f.await.0 == StatusCode::OK }
        },
    )
    .await;
    let (st, body) = status_of(&bin, &victim1).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "lost across SIGKILL: {body}");
    assert!(
        body.contains("TokenIssuedBeforeRevocationTimestamp"),
        "{body}"
    );
    // Transmitter back: the SET is redelivered, recognised as a duplicate and acknowledged.
    tx.set_available(true);
    {
        let (tx, jti1) = (&tx, &jti1);
        eventually(
            Duration::from_secs(20),
            "the redelivered SET acknowledged",
            || async move { tx.acks().contains(jti1) },
        )
        .await;
    }
    let m = metrics_of(&bin).await;
    assert_eq!(metric(&m, &committed).unwrap_or(0.0), 0.0, "{m}");
    assert_eq!(metric(&m, &duplicate), Some(1.0), "{m}");
    let stats = admin_get(&bin.url("admin", "/admin/stats")).await;
    assert_eq!(stats["revocations"], 1, "{stats}");

    // Phase 3: a second SET polled, committed and acknowledged; SIGKILL right after the ack.
    let set2 = revoke("crash-2");
    let jti2 = jti_of(&set2);
    tx.queue_for_poll(&set2);
    {
        let (tx, jti2) = (&tx, &jti2);
        eventually(
            Duration::from_secs(15),
            "the second SET acknowledged",
            || async move { tx.acks().contains(jti2) },
        )
        .await;
    }
    bin.signal(libc::SIGKILL);
    drop(bin);

    // Phase 4: restart. Both revocations hold; nothing is delivered again.
    let polls_before = tx.polls();
    let bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    {
        let tx = &tx;
        eventually(
            Duration::from_secs(10),
            "the restarted proxy polled",
            || async move { tx.polls() > polls_before },
        )
        .await;
    }
    for (sub, t) in [("crash-1", &victim1), ("crash-2", &old("crash-2"))] {
        let (st, body) = status_of(&bin, t).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{sub}: {body}");
        assert!(
            body.contains("TokenIssuedBeforeRevocationTimestamp"),
            "{body}"
        );
    }
    assert_eq!(status_of(&bin, &control).await.0, StatusCode::OK);
    let acks = tx.acks();
    assert_eq!(acks, vec![jti1, jti2], "each SET acknowledged exactly once");
    assert!(tx.queued().is_empty());
    let m = metrics_of(&bin).await;
    assert_eq!(
        metric(&m, &committed).unwrap_or(0.0) + metric(&m, &duplicate).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    let stats = admin_get(&bin.url("admin", "/admin/stats")).await;
    assert_eq!(stats["revocations"], 2, "{stats}");
}
