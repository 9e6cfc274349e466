//! Replication: a change pushed to or made on one replica is enforced by every replica (a
//! restarted one catches up), one SET pushed to two replicas applies once, old blocks are
//! republished for a replica joining after trimming, Redis over TLS with a private CA and client
//! certificates, and cross-replica freshness under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_or_admin_change_on_one_replica_is_enforced_by_all_and_a_restart_catches_up() {
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", Delivery::Push, "").await;
    let b = Replica::in_process(&w, "b", Delivery::Push, "").await;
    let mut c = Replica::process(&w, "c", Delivery::Push);
    for r in [&a, &b, &c] {
        r.wait_ready().await;
    }

    // A SET pushed to A: B and C refuse the token promptly.
    let alice = token(&w, "alice");
    for r in [&a, &b, &c] {
        assert_served(r, &alice, "before the push").await;
    }
    let pushed = Instant::now();
    let reply = a.push(&revoke_set(&w, "alice")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let ack = pushed.elapsed();
    assert_refused(&a, &alice, "A, after its own 202").await;
    let to_b = refused_within(&b, &alice, PROMPT, "B refuses alice").await;
    let to_c = refused_within(&c, &alice, PROMPT, "C refuses alice").await;
    eprintln!("push acknowledged in {ack:?}; refused by B after +{to_b:?}, by C after +{to_c:?}");

    // An admin revoke on B is enforced on A and C.
    let bob = token(&w, "bob");
    let r = b
        .admin_post("/admin/revoke", json!({"key": subject(&w, "bob")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    refused_within(&a, &bob, PROMPT, "A refuses bob").await;
    refused_within(&c, &bob, PROMPT, "C refuses bob").await;

    // C dies; changes happen meanwhile; C restarted catches up before it reports ready.
    c.kill();
    let carol = token(&w, "carol");
    let dave = token(&w, "dave");
    let reply = a.push(&revoke_set(&w, "carol")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    let r = b
        .admin_post("/admin/block", json!({"key": subject(&w, "dave")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    c.restart();
    c.wait_ready().await;
    for (t, who) in [
        (&alice, "alice"),
        (&bob, "bob"),
        (&carol, "carol"),
        (&dave, "dave"),
    ] {
        assert_refused(&c, t, &format!("C after restart: {who}")).await;
    }
    assert_served(
        &c,
        &token(&w, "erin"),
        "C after restart: nobody revoked erin",
    )
    .await;
    let m = c.metrics().await;
    assert_eq!(metric(&m, "cae_fleet_caught_up").unwrap_or(0.0), 1.0, "{m}");
    // It replays from its cursor: only what it missed while down.
    assert!(
        metric(&m, "cae_fleet_applied_entries_total").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    let m = b.metrics().await;
    assert!(
        metric(&m, "cae_fleet_replication_delay_seconds_count").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert_eq!(xlen(&w), 4, "two pushes, two admin changes in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_set_pushed_to_two_replicas_is_accepted_by_both_and_applied_once() {
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", Delivery::Push, "").await;
    let b = Replica::in_process(&w, "b", Delivery::Push, "").await;
    a.wait_ready().await;
    b.wait_ready().await;
    let set = revoke_set(&w, "frank");
    let (ra, rb) = tokio::join!(a.push(&set), b.push(&set));
    assert_eq!(ra.status, StatusCode::ACCEPTED, "{}", ra.text());
    assert_eq!(rb.status, StatusCode::ACCEPTED, "{}", rb.text());
    // A redelivery to A later: still 202.
    let again = a.push(&set).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text());

    let frank = token(&w, "frank");
    refused_within(&a, &frank, PROMPT, "A").await;
    refused_within(&b, &frank, PROMPT, "B").await;
    assert_eq!(xlen(&w), 1, "one entry in the fleet log");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let sum =
        |series: &str| metric(&ma, series).unwrap_or(0.0) + metric(&mb, series).unwrap_or(0.0);
    assert_eq!(
        sum(r#"cae_fleet_commits_total{result="appended"}"#),
        1.0,
        "{ma}\n{mb}"
    );
    assert_eq!(
        sum(r#"cae_fleet_commits_total{result="duplicate"}"#),
        2.0,
        "{ma}\n{mb}"
    );
    let received = |result: &str| {
        sum(&format!(
            r#"cae_sets_received_total{{transmitter="tx",event="credential-change",result="{result}"}}"#
        ))
    };
    assert_eq!(received("committed"), 1.0, "{ma}\n{mb}");
    assert_eq!(received("duplicate"), 2.0, "{ma}\n{mb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_blocks_are_republished_so_a_replica_joining_after_trimming_learns_them() {
    use cae_proxy::config::{RedisBackend, RedisTopology, Secret, DEFAULT_RETENTION};
    use cae_proxy::store::{Batch, Change, Durable, RedbStore, RedisLink, RedisStore, SubjectKey};
    use std::sync::Arc;

    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisBackend {
        url: Secret::from_value(w.redis.url()),
        key_prefix: w.prefix.clone(),
        path: dir.path().join("state.redb"),
        replica_id: Some("old-timer".into()),
        timeout: Duration::from_secs(2),
        poll_lease: Duration::from_secs(1),
        tls: None,
        topology: RedisTopology::Standalone,
        min_replicas_acked: 0,
        replicas_ack_timeout: Duration::from_secs(1),
        max_fleet_lag: None,
    };
    let retention = DEFAULT_RETENTION.as_secs() as i64;
    let store = RedisStore::new(
        Arc::new(RedbStore::open(&cfg.path, false).unwrap()),
        Arc::new(RedisLink::new(&cfg, "old-timer".into()).unwrap()),
        retention,
    );
    let now = now_secs();
    let key = SubjectKey::Subject {
        iss: w.idp.issuer_url(),
        sub: "ivan".into(),
    };
    // A block made three days ago; the log has long been trimmed past it.
    store
        .commit(&Batch {
            changes: vec![Change::Block {
                key: key.clone(),
                at: now - 3 * 86_400,
            }],
            set_id: None,
            now,
        })
        .unwrap();
    let _: i64 = redis::cmd("XTRIM")
        .arg(format!("{}changes", w.prefix))
        .arg("MINID")
        .arg((now + 10) * 1000)
        .query(&mut w.redis.conn())
        .unwrap();
    assert_eq!(xlen(&w), 0);

    assert_eq!(store.republish_old_blocks(now).unwrap(), 1);
    assert_eq!(
        store.republish_old_blocks(now).unwrap(),
        0,
        "one re-publication per slot (a quarter of the retention) for the whole fleet"
    );
    assert_eq!(xlen(&w), 1);

    let late = Replica::in_process(&w, "late", Delivery::Push, "").await;
    late.wait_ready().await;
    let r = late.call(&token(&w, "ivan")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "AccountBlocked", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_client_certificates() {
    let w = world(
        Redis::start_with(false, true),
        TransmitterOptions::default(),
    )
    .await;
    let c = w.redis.tls.as_ref().unwrap();
    let (ca, cert, key) = (
        c.ca.display().to_string(),
        c.client_cert.display().to_string(),
        c.client_key.display().to_string(),
    );
    let full = format!(
        "redis_ca = \"{ca}\"\nredis_client_cert = \"{cert}\"\nredis_client_key = \"{key}\""
    );
    assert!(w.redis.url().starts_with("rediss://127.0.0.1:"));

    // Two replicas with the private CA and a client certificate share a revocation.
    let a = Replica::in_process(&w, "a", Delivery::Push, &full).await;
    let b = Replica::in_process(&w, "b", Delivery::Push, &full).await;
    a.wait_ready().await;
    b.wait_ready().await;
    let bob = token(&w, "bob");
    assert_served(&b, &bob, "B before the revoke").await;
    let r = a
        .admin_post("/admin/revoke", json!({"key": subject(&w, "bob")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    refused_within(&b, &bob, PROMPT, "B refuses bob (admin write on A)").await;
    let alice = token(&w, "alice");
    let r = b.push(&revoke_set(&w, "alice")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused_within(&a, &alice, PROMPT, "A refuses alice (push to B)").await;

    // Without the client certificate Redis ends the handshake (tls-auth-clients yes); without
    // the private CA the replica does not trust Redis's certificate (system roots). Either way
    // it never reads the fleet log: not ready, connect errors counted, pushes refused with 503.
    let no_cert = Replica::in_process(
        &w,
        "no-cert",
        Delivery::Push,
        &format!("redis_ca = \"{ca}\""),
    )
    .await;
    let no_ca = Replica::in_process(
        &w,
        "no-ca",
        Delivery::Push,
        &format!("redis_client_cert = \"{cert}\"\nredis_client_key = \"{key}\""),
    )
    .await;
    for r in [&no_cert, &no_ca] {
        eventually(
            Duration::from_secs(10),
            "a refused Redis connection",
            || async {
                let m = r.metrics().await;
                metric(&m, r#"cae_fleet_redis_errors_total{op="connect"}"#).unwrap_or(0.0) >= 1.0
            },
        )
        .await;
    }
    for (r, name) in [
        (&no_cert, "no client certificate"),
        (&no_ca, "no private CA"),
    ] {
        let ready = r.readyz().await;
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: {}",
            ready.text()
        );
        assert_eq!(
            ready.json()["missing"],
            json!([cae_proxy::fleet::NOT_REPLAYED]),
            "{name}"
        );
        let m = r.metrics().await;
        assert!(
            metric(&m, r#"cae_fleet_redis_errors_total{op="connect"}"#).unwrap_or(0.0) >= 1.0,
            "{name}: {m}"
        );
        assert_eq!(
            metric(&m, "cae_fleet_caught_up").unwrap_or(0.0),
            0.0,
            "{name}: {m}"
        );
        assert_eq!(
            metric(&m, "cae_fleet_applied_entries_total").unwrap_or(0.0),
            0.0,
            "{name}: {m}"
        );
        let pushed = r.push(&revoke_set(&w, "carol")).await;
        assert_eq!(
            pushed.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: a push is never acknowledged without the fleet log: {}",
            pushed.text()
        );
        let m = r.metrics().await;
        assert!(
            metric(&m, r#"cae_fleet_commits_total{result="failed"}"#).unwrap_or(0.0) >= 1.0,
            "{name}: {m}"
        );
    }
    // Unusable TLS files fail the start, naming the key: a key of another certificate, a CA
    // file without a certificate.
    let other_key = c.client_cert.with_file_name("client2.key");
    let not_pem = c.ca.with_file_name("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (extra, key) in [
        (
            format!(
                "redis_ca = \"{ca}\"\nredis_client_cert = \"{cert}\"\nredis_client_key = \"{}\"",
                other_key.display()
            ),
            "store.redis_client_key",
        ),
        (
            format!("redis_ca = \"{}\"", not_pem.display()),
            "store.redis_ca",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = cae_proxy::config::Config::parse(
            &replica_toml(&w, "bad", dir.path(), Delivery::Push, &extra).build(),
            dir.path(),
        )
        .unwrap();
        let err = cae_proxy::Proxy::start(config, cae_proxy::StartOptions::default())
            .await
            .err()
            .expect("start refused");
        assert!(err.to_string().contains(key), "{key}: {err}");
        eprintln!("start refused: {err}");
    }

    // Nothing from them reached the log: the two changes above only.
    let n: i64 = redis::cmd("XLEN")
        .arg(format!("{}changes", w.prefix))
        .query(&mut w.redis.conn())
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_under_load_every_push_on_a_reaches_b() {
    const N: usize = 50;
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let a = Replica::process(&w, "a", Delivery::Push);
    let b = Replica::process(&w, "b", Delivery::Push);
    a.wait_ready().await;
    b.wait_ready().await;

    // Steady traffic at B: one request every 3 ms (a few hundred per second).
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        vec![b.url("public", "/api")],
        token(&w, "good"),
        None,
        Duration::from_millis(3),
        stop.clone(),
    );
    // Not a readiness wait: the traffic is to be running before the first push.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut from_ack, mut from_send) = (Vec::new(), Vec::new());
    let cl = client();
    let b_api = b.url("public", "/api");
    let a_push = a.url("signals", "/ssf/tx");
    for i in 0..N {
        let sub = format!("fresh-{i}");
        let t = token(&w, &sub);
        let set = revoke_set(&w, &sub);
        assert_served(&b, &t, "B before the push").await;
        let auth = format!("Bearer {t}");
        let sent = Instant::now();
        let r = push_to(&cl, &a_push, &set).await;
        let acked = Instant::now();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        // Poll B tightly until it refuses.
        let refused = loop {
            let r = send(
                &cl,
                Method::GET,
                &b_api,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await;
            if r.status == StatusCode::UNAUTHORIZED {
                break Instant::now();
            }
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert!(
                acked.elapsed() < Duration::from_secs(5),
                "change {i} never reached B"
            );
        };
        from_ack.push(refused.saturating_duration_since(acked));
        from_send.push(refused - sent);
    }
    stop.store(true, Ordering::Relaxed);
    let (requests, bad) = load.await.unwrap();
    assert!(bad.is_empty(), "B's unexpected answers: {bad:?}");

    // Every change reached B (and stays enforced there and on A).
    for i in 0..N {
        let t = token(&w, &format!("fresh-{i}"));
        assert_refused(&b, &t, "B after the run").await;
        assert_refused(&a, &t, "A after the run").await;
    }
    from_ack.sort();
    from_send.sort();
    eprintln!(
        "freshness, {N} SETs pushed to A one by one, B polled until it refused, {requests} background requests at B:\n  \
         A's 202 -> B refuses: p50 {:?}, p99 {:?}, max {:?}\n  \
         push sent -> B refuses: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&from_ack, 0.5),
        percentile(&from_ack, 0.99),
        percentile(&from_ack, 1.0),
        percentile(&from_send, 0.5),
        percentile(&from_send, 0.99),
        percentile(&from_send, 1.0),
    );
}
