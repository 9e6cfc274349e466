//! A network partition: one replica (the real binary under `ip netns exec`, in a network
//! namespace of the test) is cut off from Redis while it serves traffic; the rest of the fleet
//! (on this host) keeps Redis. The cut replica keeps enforcing what it had, refuses writes with
//! 503, says so in `/readyz/write`, in `/readyz` once the lag passes `store.max_fleet_lag`, and in
//! its metrics; after the cut heals it catches up within a bounded time. Needs root (network
//! namespaces): skipped with a message elsewhere, unless `CAE_REQUIRE_NETNS=1`.

use std::net::SocketAddr;

use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;

use super::*;
use crate::common::netns::{netns_or_skip, Netns};

/// How long the cut replica may take to catch up once the partition heals: the reconnect
/// backoff (at most 2 s) and one Redis timeout, with room.
const CATCH_UP: Duration = Duration::from_secs(10);

/// The cut replica's configuration: listeners on its namespace's service address, Redis at the
/// host's end of the Redis link, keys from files (nothing else of the host is reachable from
/// the namespace), the upstream at `upstream`.
async fn namespaced_toml(
    w: &World,
    ns: &Netns,
    dir: &Path,
    upstream: SocketAddr,
    redis_port: u16,
) -> String {
    let issuer_jwks = dir.join("issuer-jwks.json");
    std::fs::write(&issuer_jwks, w.idp.jwks().to_string()).unwrap();
    let tx_jwks = dir.join("tx-jwks.json");
    let keys = get(&client(), &w.tx.jwks_url(), &[]).await;
    assert_eq!(keys.status, StatusCode::OK);
    std::fs::write(&tx_jwks, &keys.body).unwrap();
    let at = format!("{}:0", ns.service_ns);
    Toml::new()
        .log_level("info")
        .listener_at("public", &at, "")
        .signals_at(&at)
        .admin_token_at(&at)
        .store(&format!(
            "backend = \"redis\"\nredis_url = \"redis://{}:{redis_port}\"\nkey_prefix = \"{}\"\nreplica_id = \"cut\"\npath = \"{}/state.redb\"\nredis_timeout = \"500ms\"\npoll_lease = \"1s\"\nmax_fleet_lag = \"2s\"\n",
            ns.redis_host,
            w.prefix,
            dir.display()
        ))
        .app(&format!("http://{upstream}"))
        .issuer(
            "dev",
            &w.idp.issuer_url(),
            &format!(
                "jwks_file = \"{}\"\naudiences = [\"{API_AUDIENCE}\"]",
                issuer_jwks.display()
            ),
        )
        .route("api", "/api", "")
        .transmitter(
            "tx",
            &format!(
                "issuer = \"{}\"\njwks_file = \"{}\"\naudiences = [\"{AUD}\"]\n[transmitter.push]\npath = \"/ssf/tx\"\nauthorization = \"{PUSH_AUTH}\"",
                w.tx.issuer_url(),
                tx_jwks.display()
            ),
        )
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_keeps_enforcing_refuses_writes_reports_it_and_catches_up() {
    let Some(ns) = netns_or_skip("fleet::partition") else {
        return;
    };
    let redis = Redis::start_args(
        false,
        &[
            "--bind",
            "127.0.0.1",
            &ns.redis_host.to_string(),
            // Reached off loopback (the Redis link) without a password: only in this test.
            "--protected-mode",
            "no",
        ],
    );
    let redis_port = redis.port();
    let w = world(redis, TransmitterOptions::default()).await;
    // The host side of the fleet.
    let a = Replica::in_process(&w, "a", Delivery::Push, "").await;
    // The upstream of the cut replica, on the service link.
    let up_listener = tokio::net::TcpListener::bind((ns.service_host, 0))
        .await
        .unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    let _up = cae_proxy::dev::upstream::EchoUpstream::start(up_listener).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cae-proxy.toml");
    std::fs::write(
        &config,
        namespaced_toml(&w, &ns, dir.path(), up_addr, redis_port).await,
    )
    .unwrap();
    let cut = Replica::Process {
        bin: Binary::start_via(&ns.exec_prefix(), &config, 3),
        config,
        _dir: dir,
    };
    a.wait_ready().await;
    cut.wait_ready().await;
    eventually(PROMPT, "the namespaced replica to be writable", || async {
        cut.write_readyz().await.status == StatusCode::OK
    })
    .await;

    // Before the cut: a change made on A reaches the namespaced replica.
    let before = token(&w, "before");
    let r = a.push(&revoke_set(&w, "before")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused_within(&cut, &before, PROMPT, "cut replica, before the cut").await;

    // Steady traffic on the namespaced replica for the rest of the test: a valid token is
    // served and the revoked one refused, partition or not.
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(
        vec![cut.url("public", "/api")],
        token(&w, "good"),
        Some(before.clone()),
        Duration::from_millis(5),
        stop.clone(),
    );

    ns.cut_redis();
    let cut_at = Instant::now();

    // Writes are refused (no 202 without the fleet log), within the Redis timeout and change.
    let t0 = Instant::now();
    let during = revoke_set(&w, "during");
    let r = cut.push(&during).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "never 202 without the fleet log: {}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "503 carries Retry-After");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "refused in {:?}",
        t0.elapsed()
    );
    let r = cut
        .admin_post("/admin/revoke", json!({"key": subject(&w, "during-admin")}))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // The refused revocation still narrows this replica (fail closed); it is nowhere else.
    assert_refused(&cut, &token(&w, "during"), "refused push, on its replica").await;
    assert_served(&a, &token(&w, "during"), "refused push, elsewhere").await;

    // The rest of the fleet takes changes the cut replica cannot know of yet.
    let while_cut = token(&w, "while-cut");
    let r = a.push(&revoke_set(&w, "while-cut")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_served(&cut, &while_cut, "a change made elsewhere during the cut").await;

    // It reports the partition: not writable at once, not ready once the lag passes 2 s.
    let r = cut.write_readyz().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["writable"], false, "{}", r.text());
    let r = wait_for(
        Duration::from_secs(10),
        "the cut replica to be not ready",
        || async {
            let r = cut.readyz().await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    )
    .await;
    let unready_after = cut_at.elapsed();
    let reason = r.json()["missing"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.starts_with(cae_proxy::fleet::LAGGING)
            && reason.contains("(store.max_fleet_lag = 2s)")
            && (reason.ends_with("Redis did not answer in time")
                || reason.ends_with("connection to Redis failed")),
        "{reason}"
    );
    let m = cut.metrics().await;
    assert!(
        metric(&m, "cae_fleet_lag_seconds").is_some_and(|l| l > 2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "cae_fleet_writable"), Some(0.0), "{m}");
    assert!(
        metric(&m, r#"cae_fleet_redis_errors_total{op="read"}"#).unwrap_or(0.0)
            + metric(&m, r#"cae_fleet_redis_errors_total{op="connect"}"#).unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // A, on the Redis side, is fine and sees the cut replica's heartbeats stop.
    assert_eq!(a.readyz().await.status, StatusCode::OK);
    let v = wait_for(
        Duration::from_secs(10),
        "A to see the cut replica's heartbeats stop",
        || async {
            let v = a.fleet_view().await;
            let cut = v["replicas"]
                .as_array()?
                .iter()
                .find(|r| r["replica"] == "cut")?
                .clone();
            (cut["live"] == false).then_some(cut)
        },
    )
    .await;
    assert!(v["seen_seconds_ago"].as_f64() > Some(5.0), "{v}");

    // The cut heals: the replica catches up (the change made meanwhile is enforced), is ready
    // and writable again, and the push it refused is taken when delivered again.
    ns.heal_redis();
    let healed = Instant::now();
    refused_within(&cut, &while_cut, CATCH_UP, "the change made during the cut").await;
    let caught_up = healed.elapsed();
    eventually(CATCH_UP, "ready again", || async {
        cut.readyz().await.status == StatusCode::OK
    })
    .await;
    eventually(CATCH_UP, "writable again", || async {
        cut.write_readyz().await.status == StatusCode::OK
    })
    .await;
    let r = cut.push(&during).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    refused_within(&a, &token(&w, "during"), PROMPT, "the retried push, on A").await;

    stop.store(true, Ordering::Relaxed);
    let (requests, bad) = load.await.unwrap();
    assert!(
        bad.is_empty(),
        "the cut replica's unexpected answers: {bad:?}"
    );
    assert!(requests > 50, "traffic ran ({requests} requests)");
    eprintln!(
        "partition: not ready {unready_after:?} after the cut (max_fleet_lag 2 s); caught up {caught_up:?} after it healed; {requests} requests answered as expected meanwhile"
    );
}
