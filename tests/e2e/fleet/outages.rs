//! Outages: while Redis is down replicas keep serving from their tables, refuse pushes (no 202
//! without a durable write) and lose no acknowledged change; Redis SIGKILLed and back, replicas
//! resume on their own; two of three replicas SIGKILLed, the third serves and they catch up
//! before they call themselves ready.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_serving_refuses_pushes_and_loses_no_acknowledged_change() {
    let mut w = world(Redis::start(true), TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", Delivery::Push, "").await;
    let b = Replica::in_process(&w, "b", Delivery::Push, "").await;
    let mut c = Replica::process(&w, "c", Delivery::Push);
    for r in [&a, &b, &c] {
        r.wait_ready().await;
    }

    // Valid-token traffic on A and B for the whole test: every request must be served.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let urls = [a.url("public", "/api"), b.url("public", "/api")];
        let good = token(&w, "good");
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            let auth = format!("Bearer {good}");
            let (mut served, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                for u in &urls {
                    match try_send(
                        &c,
                        Method::GET,
                        u,
                        &[("authorization", &auth)],
                        Bytes::new(),
                    )
                    .await
                    {
                        Ok(r) if r.status == StatusCode::OK => served += 1,
                        Ok(r) => failed.push(format!("{u}: {}", r.status)),
                        Err(e) => failed.push(format!("{u}: {e}")),
                    }
                }
                // Pacing of the load, not a wait.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (served, failed)
        })
    };

    // Acknowledged changes before the outage.
    let mut acknowledged = Vec::new();
    for i in 0..6 {
        let sub = format!("before-{i}");
        let via = if i % 2 == 0 { &a } else { &b };
        let r = via.push(&revoke_set(&w, &sub)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        acknowledged.push(sub);
    }

    // Redis goes away.
    w.redis.stop();
    let during = revoke_set(&w, "during");
    let r = a.push(&during).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "never 202 without the fleet log: {}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
    let r = b
        .admin_post("/admin/revoke", json!({"key": subject(&w, "during-admin")}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // Not acknowledged, yet enforced at once by the replica that received it (a revocation only
    // narrows access: fail closed); the fleet learns of it when the SET is delivered again.
    assert_refused(
        &a,
        &token(&w, "during"),
        "a refused push still narrows its replica",
    )
    .await;
    assert_served(
        &b,
        &token(&w, "during"),
        "a refused push never reached the fleet log",
    )
    .await;

    // C restarted while Redis is down: starts from its embedded copy, not ready until caught up.
    c.kill();
    c.restart();
    let ready = wait_for(
        Duration::from_secs(5),
        "C to say it has not replayed the fleet log",
        || async {
            let r = c.readyz().await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE
                && r.json()["missing"] == json!([cae_proxy::fleet::NOT_REPLAYED]))
            .then_some(r)
        },
    )
    .await;
    assert_eq!(
        ready.json()["missing"],
        json!([cae_proxy::fleet::NOT_REPLAYED])
    );
    for sub in &acknowledged {
        assert_refused(
            &c,
            &token(&w, sub),
            &format!("C from its embedded copy: {sub}"),
        )
        .await;
    }

    // Redis back (same AOF): the refused push is retried and accepted, C becomes ready.
    w.redis.restart();
    eventually(
        Duration::from_secs(10),
        "the push accepted again",
        || async {
            let r = a.push(&during).await;
            if r.status != StatusCode::ACCEPTED {
                assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
            }
            r.status == StatusCode::ACCEPTED
        },
    )
    .await;
    acknowledged.push("during".into());
    let r = b.push(&revoke_set(&w, "after")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    acknowledged.push("after".into());
    c.wait_ready().await;

    for sub in &acknowledged {
        let t = token(&w, sub);
        for (r, name) in [(&a, "A"), (&b, "B"), (&c, "C")] {
            refused_within(
                r,
                &t,
                Duration::from_secs(5),
                &format!("{name}: {sub} lost"),
            )
            .await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "requests with a valid token failed: {failed:?}"
    );
    assert!(served > 50, "traffic ran ({served} requests)");
    let m = a.metrics().await;
    assert!(
        metric(&m, r#"cae_fleet_redis_errors_total{op="append"}"#).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, r#"cae_fleet_commits_total{result="failed"}"#).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    eprintln!("outage: {served} requests with a valid token served, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_loses_no_acknowledged_change_and_replicas_resume_on_their_own() {
    let mut w = world(Redis::start(true), TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", Delivery::Push, "").await;
    let b = Replica::in_process(&w, "b", Delivery::Push, "").await;
    let c = Replica::process(&w, "c", Delivery::Push);
    let all = [(&a, "A"), (&b, "B"), (&c, "C")];
    for (r, _) in all {
        r.wait_ready().await;
    }

    // Acknowledged and seen everywhere before the kill.
    let mut before = Vec::new();
    for (i, (via, _)) in all.iter().enumerate() {
        let sub = format!("early-{i}");
        let r = via.push(&revoke_set(&w, &sub)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        before.push(sub);
    }
    for sub in &before {
        let t = token(&w, sub);
        for (r, name) in all {
            refused_within(r, &t, PROMPT, &format!("{name}: {sub}")).await;
        }
    }

    // Valid-token traffic (and a revoked token) on every replica for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        all.iter().map(|(r, _)| r.url("public", "/api")).collect(),
        token(&w, "good"),
        Some(token(&w, &before[0])),
        Duration::from_millis(5),
        stop.clone(),
    );

    // A burst of pushes round-robin over A and B; Redis is SIGKILLed in the middle of it. C gets
    // no write until Redis is back.
    let burst: Vec<(String, String)> = (0..300)
        .map(|i| {
            let sub = format!("burst-{i}");
            let set = revoke_set(&w, &sub);
            (sub, set)
        })
        .collect();
    let urls: Vec<String> = all[..2]
        .iter()
        .map(|(r, _)| r.url("signals", "/ssf/tx"))
        .collect();
    let acked = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let pusher = async {
        let cl = client();
        let (mut ok, mut refused_after_kill) = (Vec::new(), 0);
        for (i, (sub, set)) in burst.iter().enumerate() {
            let r = push_to(&cl, &urls[i % urls.len()], set).await;
            match r.status {
                StatusCode::ACCEPTED => {
                    ok.push((sub.clone(), i % urls.len()));
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
                    if killed.load(Ordering::Relaxed) {
                        refused_after_kill += 1;
                    }
                }
                s => panic!("push {sub}: {s} {}", r.text()),
            }
            if refused_after_kill >= 6 {
                break;
            }
        }
        ok
    };
    let redis = &mut w.redis;
    let killer = async {
        eventually(
            Duration::from_secs(30),
            "20 acknowledged pushes",
            || async { acked.load(Ordering::Relaxed) >= 20 },
        )
        .await;
        redis.kill();
        killed.store(true, Ordering::Relaxed);
    };
    let (acknowledged, ()) = tokio::join!(pusher, killer);
    assert!(acknowledged.len() >= 20, "{acknowledged:?}");
    assert!(
        acknowledged.len() < burst.len(),
        "pushes were refused once Redis was gone"
    );
    eprintln!(
        "{} pushes acknowledged before Redis was SIGKILLed",
        acknowledged.len()
    );

    // Redis down: every replica keeps enforcing what it had, stays ready (an outage after start
    // does not change readiness) and refuses new pushes and admin writes with 503.
    let r = a.push(&revoke_set(&w, "during")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let r = b
        .admin_post("/admin/revoke", json!({"key": subject(&w, "during-admin")}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    for (r, name) in all {
        for sub in &before {
            assert_refused(
                r,
                &token(&w, sub),
                &format!("{name} during the outage: {sub}"),
            )
            .await;
        }
        assert_eq!(r.readyz().await.status, StatusCode::OK, "{name}");
    }
    // Each replica enforces at least what it acknowledged itself.
    for (sub, via) in &acknowledged {
        assert_refused(all[*via].0, &token(&w, sub), &format!("own ack {sub}")).await;
    }

    // Redis back on the same port and directory: the AOF holds every acknowledged change.
    w.redis.spawn();
    let mut conn = w.redis.conn();
    let n: i64 = redis::cmd("XLEN")
        .arg(format!("{}changes", w.prefix))
        .query(&mut conn)
        .unwrap();
    assert!(
        n as usize >= before.len() + acknowledged.len(),
        "the log after the restart has {n} entries"
    );
    for (sub, _) in &acknowledged {
        for (r, name) in all {
            refused_within(
                r,
                &token(&w, sub),
                RECONNECT,
                &format!("{name}: {sub} lost"),
            )
            .await;
        }
    }

    // They resume without a restart of their own: the first change each one receives is taken
    // (C's pooled commit connection is the one Redis dropped: it got no write during the
    // outage) and shared again.
    for (i, (via, name)) in all.iter().enumerate() {
        let sub = format!("after-{i}");
        let r = via.push(&revoke_set(&w, &sub)).await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "{name}, first push after Redis came back: {}",
            r.text()
        );
        let t = token(&w, &sub);
        for (r, other) in all {
            refused_within(r, &t, PROMPT, &format!("{other}: {sub} from {name}")).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (requests, bad) = load.await.unwrap();
    assert!(bad.is_empty(), "unexpected answers: {bad:?}");
    assert!(requests > 50, "traffic ran ({requests} requests)");
    eprintln!("Redis SIGKILL: {requests} requests during the test, every answer as expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_replicas_killed_the_third_serves_and_they_catch_up_before_ready() {
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let mut a = Replica::process(&w, "a", Delivery::Push);
    let mut b = Replica::process(&w, "b", Delivery::Push);
    let c = Replica::process(&w, "c", Delivery::Push);
    for r in [&a, &b, &c] {
        r.wait_ready().await;
    }
    let early = token(&w, "early");
    let r = a.push(&revoke_set(&w, "early")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    for r in [&a, &b, &c] {
        refused_within(r, &early, PROMPT, "early").await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        vec![c.url("public", "/api")],
        token(&w, "good"),
        Some(early.clone()),
        Duration::from_millis(5),
        stop.clone(),
    );
    // Not a readiness wait: traffic is to be running before, during and after the kill.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A and B are SIGKILLed at once.
    a.sigkill();
    b.sigkill();
    a.reap();
    b.reap();

    // C alone: keeps serving and enforcing, accepts changes (push, admin revoke, admin block).
    let pushed = token(&w, "pushed");
    let r = c.push(&revoke_set(&w, "pushed")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let revoked = token(&w, "revoked");
    let r = c
        .admin_post("/admin/revoke", json!({"key": subject(&w, "revoked")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let blocked = token(&w, "blocked");
    let r = c
        .admin_post("/admin/block", json!({"key": subject(&w, "blocked")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for t in [&early, &pushed, &revoked, &blocked] {
        assert_refused(&c, t, "C while alone").await;
    }
    // Not a readiness wait: C serves alone, under traffic, for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A and B restarted: the moment they report ready they enforce what C took meanwhile.
    a.restart();
    b.restart();
    for (r, name) in [(&a, "A"), (&b, "B")] {
        r.wait_ready().await;
        for (t, who) in [
            (&early, "early"),
            (&pushed, "pushed"),
            (&revoked, "revoked"),
            (&blocked, "blocked"),
        ] {
            assert_refused(r, t, &format!("{name} once ready: {who}")).await;
        }
        assert_served(r, &token(&w, "good"), &format!("{name} once ready")).await;
        let m = r.metrics().await;
        assert_eq!(metric(&m, "cae_fleet_caught_up").unwrap_or(0.0), 1.0, "{m}");
        assert!(
            metric(&m, "cae_fleet_applied_entries_total").unwrap_or(0.0) >= 3.0,
            "replayed what it missed: {m}"
        );
    }
    let r = b.call(&blocked).await;
    assert_eq!(r.json()["code"], "AccountBlocked", "{}", r.text());

    // The fleet is whole again: a change on a restarted replica reaches the others.
    let late = token(&w, "late");
    let r = a.push(&revoke_set(&w, "late")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused_within(&b, &late, PROMPT, "B: late").await;
    refused_within(&c, &late, PROMPT, "C: late").await;

    stop.store(true, Ordering::Relaxed);
    let (requests, bad) = load.await.unwrap();
    assert!(bad.is_empty(), "C's unexpected answers: {bad:?}");
    assert!(requests > 20, "traffic ran ({requests} requests)");
    eprintln!("two replicas killed: C answered {requests} requests as expected meanwhile");
}
