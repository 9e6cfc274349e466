//! Redis as people run it: a primary, a replica and three sentinels (real `redis-server`
//! processes on loopback), cae-proxy replicas (two in-process, one real process) that find the
//! primary through the sentinels and acknowledge a change only once a Redis replica holds it
//! (`min_replicas_acked = 1`). The primary is SIGKILLed during a burst of pushes: after the
//! failover every acknowledged change is enforced by every replica, also by one started from the
//! new primary's log alone (0 lost); while no Redis replica can acknowledge (during the failover,
//! then a primary without replicas) every push is answered 503, never 202; once the old primary
//! is back as a replica, the refused SETs delivered again are acknowledged and enforced too.

use std::sync::atomic::{AtomicUsize, Ordering};

use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;

use super::*;
use crate::common::redis_server::Sentinel;

/// The name the sentinels know the primary by.
const MASTER: &str = "cae";
/// Sentinels notice a dead primary after 1 s and promote its replica within a few more.
const FAILOVER: Duration = Duration::from_secs(30);

fn sentinel_store(sentinels: &[Sentinel]) -> String {
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    format!(
        "redis_sentinels = [{}]\nredis_sentinel_master = \"{MASTER}\"\nmin_replicas_acked = 1\nreplicas_ack_timeout = \"300ms\"\n",
        list.join(", ")
    )
}

async fn sum_metric(replicas: &[&Replica], series: &str) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += metric(&r.metrics().await, series).unwrap_or(0.0);
    }
    total
}

/// Pushes a new SET while no Redis replica can hold it: it must be refused (503), never 202.
async fn push_refused(w: &World, cl: &TestClient, url: &str, n: usize) -> (String, String) {
    let sub = format!("failover-{n}");
    let set = revoke_set(w, &sub);
    let r = push_to(cl, url, &set).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{sub}: no Redis replica can hold it, so no acknowledgement: {}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
    (sub, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_burst_loses_no_acknowledged_change_and_nothing_unreplicated_is_acknowledged(
) {
    // No AOF: what keeps an acknowledged change across the failover is the replica that
    // acknowledged it.
    let primary = Redis::start(false);
    let replica = Redis::start_args(
        false,
        &["--replicaof", "127.0.0.1", &primary.port().to_string()],
    );
    eventually(
        Duration::from_secs(10),
        "the Redis replica to sync",
        || async { replica.replicating() },
    )
    .await;
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(MASTER, primary.port(), 2))
        .collect();
    eventually(
        FAILOVER,
        "three sentinels that know each other and the replica",
        || async { sentinels.iter().all(|s| s.ready_for_failover(MASTER, 1)) },
    )
    .await;
    let mut w = world(primary, TransmitterOptions::default()).await;
    let store = sentinel_store(&sentinels);
    let a = Replica::in_process(&w, "a", Delivery::Push, &store).await;
    let b = Replica::in_process(&w, "b", Delivery::Push, &store).await;
    let c = Replica::process_with(&w, "c", Delivery::Push, &store);
    let all = [(&a, "A"), (&b, "B"), (&c, "C")];
    for (r, name) in all {
        r.wait_ready().await;
        eventually(PROMPT, &format!("{name} to be writable"), || async {
            r.write_readyz().await.status == StatusCode::OK
        })
        .await;
    }
    let v = a.fleet_view().await;
    assert_eq!(v["mode"], "sentinel", "{v}");
    assert_eq!(
        v["primary"],
        format!("127.0.0.1:{}", w.redis.port()),
        "the sentinels' primary: {v}"
    );
    assert_eq!(v["min_replicas_acked"], 1, "{v}");

    let early = token(&w, "early");
    let r = a.push(&revoke_set(&w, "early")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        all.iter().map(|(r, _)| r.url("public", "/api")).collect(),
        token(&w, "good"),
        Some(early.clone()),
        Duration::from_millis(5),
        stop.clone(),
    );
    for (r, name) in all {
        refused_within(r, &early, PROMPT, &format!("{name}: early")).await;
    }

    // A burst of pushes round-robin over A, B and C; the primary is SIGKILLed in the middle.
    let burst: Vec<(String, String)> = (0..400)
        .map(|i| {
            let sub = format!("burst-{i}");
            let set = revoke_set(&w, &sub);
            (sub, set)
        })
        .collect();
    let urls: Vec<String> = all
        .iter()
        .map(|(r, _)| r.url("signals", "/ssf/tx"))
        .collect();
    let acked_count = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let pusher = async {
        let cl = client();
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        let mut refused_after_kill = 0;
        for (i, (sub, set)) in burst.iter().enumerate() {
            let r = push_to(&cl, &urls[i % urls.len()], set).await;
            match r.status {
                StatusCode::ACCEPTED => {
                    acked.push(sub.clone());
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
                    refused.push((sub.clone(), set.clone()));
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
        (acked, refused)
    };
    let redis = &mut w.redis;
    let killer = async {
        eventually(
            Duration::from_secs(30),
            "20 acknowledged pushes",
            || async { acked_count.load(Ordering::Relaxed) >= 20 },
        )
        .await;
        redis.kill();
        killed.store(true, Ordering::Relaxed);
    };
    let ((mut acked, mut refused), ()) = tokio::join!(pusher, killer);
    let killed_at = Instant::now();
    assert!(acked.len() >= 20, "{acked:?}");
    let acked_before_kill = acked.len();

    // The sentinels promote the replica. Until then, and after it while the new primary has no
    // replica, nothing can be acknowledged: every push is refused.
    let new_port = replica.port();
    let cl = client();
    let mut during = 0;
    let deadline = Instant::now() + FAILOVER;
    loop {
        refused.push(push_refused(&w, &cl, &urls[during % urls.len()], during).await);
        during += 1;
        // Pacing of the pushes (a transmitter's retries), not a wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if sentinels
            .iter()
            .all(|s| s.primary_port(MASTER) == Some(new_port))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinels did not promote the replica"
        );
    }
    let failover = killed_at.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        refused.push(push_refused(&w, &cl, &urls[during % urls.len()], during).await);
        during += 1;
        let not_replicated = sum_metric(
            &[&a, &b, &c],
            r#"cae_fleet_commits_total{result="not_replicated"}"#,
        )
        .await;
        if not_replicated >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no change refused because the new primary has no replica to acknowledge it"
        );
    }
    for (r, name) in all {
        let ready = wait_for(
            Duration::from_secs(10),
            &format!("{name} to say changes cannot be acknowledged"),
            || async {
                let r = r.write_readyz().await;
                (r.status == StatusCode::SERVICE_UNAVAILABLE
                    && r.json()["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("min_replicas_acked")))
                .then_some(r)
            },
        )
        .await;
        assert_eq!(ready.json()["writable"], false, "{}", ready.text());
        assert_eq!(
            metric(&r.metrics().await, "cae_fleet_writable"),
            Some(0.0),
            "{name}"
        );
        // Serving goes on: readiness is about the log, not about writes.
        assert_eq!(r.readyz().await.status, StatusCode::OK, "{name}");
    }
    let v = b.fleet_view().await;
    assert_eq!(
        v["primary"],
        format!("127.0.0.1:{new_port}"),
        "B follows the new primary: {v}"
    );

    // The old primary comes back as a replica of the new one: changes are acknowledged again.
    w.redis.args = ["--replicaof", "127.0.0.1", &new_port.to_string()]
        .map(String::from)
        .to_vec();
    w.redis.spawn();
    eventually(
        Duration::from_secs(15),
        "the old primary to sync as a replica",
        || async { w.redis.replicating() },
    )
    .await;
    for (r, name) in all {
        eventually(
            Duration::from_secs(10),
            &format!("{name} to be writable again"),
            || async { r.write_readyz().await.status == StatusCode::OK },
        )
        .await;
    }

    // The transmitter delivers every refused SET again: each is acknowledged now (appended, or a
    // repeat of an entry that a replica holds now).
    let refused_count = refused.len();
    for (i, (sub, set)) in refused.drain(..).enumerate() {
        eventually(
            Duration::from_secs(10),
            &format!("{sub} acknowledged on delivery again"),
            || async {
                let r = push_to(&cl, &urls[i % urls.len()], &set).await;
                if r.status != StatusCode::ACCEPTED {
                    assert_eq!(
                        r.status,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{sub}: {}",
                        r.text()
                    );
                }
                r.status == StatusCode::ACCEPTED
            },
        )
        .await;
        acked.push(sub);
    }

    // 0 lost: every acknowledged change is enforced by every replica, and by one started now
    // from the new primary's log alone.
    let d = Replica::in_process(&w, "d", Delivery::Push, &store).await;
    d.wait_ready().await;
    for sub in &acked {
        let t = token(&w, sub);
        for (r, name) in [(&a, "A"), (&b, "B"), (&c, "C"), (&d, "D (new)")] {
            refused_within(r, &t, RECONNECT, &format!("{name}: {sub} lost")).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (requests, bad) = load.await.unwrap();
    assert!(bad.is_empty(), "unexpected answers: {bad:?}");
    assert!(requests > 50, "traffic ran ({requests} requests)");
    eprintln!(
        "Sentinel failover: {acked_before_kill} pushes acknowledged before the primary was SIGKILLed, promotion after {failover:?}, {refused_count} refused (503) while no replica could acknowledge and all acknowledged when delivered again; {} acknowledged changes enforced by 4 replicas; {requests} requests answered as expected meanwhile",
        acked.len()
    );
}
