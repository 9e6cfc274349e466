//! Fleet health: readiness fails, saying why, while a replica may be missing fleet-log entries
//! older than `store.max_fleet_lag` (a hung Redis here; a network partition in `partition`);
//! `/readyz/write` and `cae_fleet_writable` say whether a change would be acknowledged; the
//! admin fleet view lists every replica Redis heard from (cursor, lag, last heartbeat) and the
//! poll-lease holder; Redis's persistence settings are read and a risky or unreadable one is
//! warned about; polls, push authentication failures and the last SET are counted per
//! transmitter.

use cae_proxy::dev::transmitter::TransmitterOptions;
use http::StatusCode;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_why_while_a_hung_redis_leaves_the_fleet_log_lagging_past_the_bound() {
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", Delivery::Push, "max_fleet_lag = \"2s\"\n").await;
    // "0s": readiness ignores the lag (availability first); the metric still tells it.
    let b = Replica::in_process(&w, "b", Delivery::Push, "max_fleet_lag = \"0s\"\n").await;
    for r in [&a, &b] {
        r.wait_ready().await;
        eventually(PROMPT, "a lag of 0 while following the log", || async {
            metric(&r.metrics().await, "cae_fleet_lag_seconds") == Some(0.0)
        })
        .await;
    }

    // Redis stops answering (SIGSTOP): connections stay open, nothing comes back.
    w.redis.pause();
    let paused = Instant::now();
    let r = wait_for(
        Duration::from_secs(15),
        "A to be not ready because of the lag",
        || async {
            let r = a.readyz().await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    )
    .await;
    let after = paused.elapsed();
    let missing = r.json()["missing"].clone();
    let reason = missing[0].as_str().unwrap_or_default().to_string();
    assert_eq!(missing.as_array().map(Vec::len), Some(1), "{missing}");
    assert!(
        reason.starts_with(cae_proxy::fleet::LAGGING)
            && reason.contains("(store.max_fleet_lag = 2s)")
            && reason.ends_with("Redis did not answer in time"),
        "{reason}"
    );
    // Not before the bound (the last read at the log's end was sent at most 1 s before the
    // pause), and not long after it (that read's answer was due 1.5 s after it was sent).
    assert!(
        after >= Duration::from_secs(1) && after < Duration::from_secs(8),
        "not ready {after:?} after Redis hung"
    );
    let lag = metric(&a.metrics().await, "cae_fleet_lag_seconds").unwrap();
    assert!(lag > 2.0, "cae_fleet_lag_seconds {lag}");
    assert_eq!(b.readyz().await.status, StatusCode::OK, "B ignores the lag");
    eventually(Duration::from_secs(3), "B's lag past 2 s too", || async {
        metric(&b.metrics().await, "cae_fleet_lag_seconds").is_some_and(|l| l > 2.0)
    })
    .await;

    // Redis answers again: ready again, the lag back to 0 (bounded by the reconnect backoff).
    w.redis.resume();
    let resumed = Instant::now();
    a.wait_ready().await;
    eventually(RECONNECT, "A's lag back to 0", || async {
        metric(&a.metrics().await, "cae_fleet_lag_seconds") == Some(0.0)
    })
    .await;
    eprintln!(
        "hung Redis: A not ready after {after:?} (max_fleet_lag 2 s), ready again {:?} after Redis answered",
        resumed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_readiness_and_the_fleet_view_show_each_replica_its_cursor_lag_and_the_lease_holder()
{
    let mut w = world(
        Redis::start(true),
        TransmitterOptions {
            poll_wait: Duration::from_millis(200),
            ..TransmitterOptions::default()
        },
    )
    .await;
    let a = Replica::in_process(&w, "a", Delivery::Poll, "").await;
    let b = Replica::process(&w, "b", Delivery::Poll);
    for r in [&a, &b] {
        r.wait_ready().await;
        eventually(PROMPT, "the replica to be writable", || async {
            r.write_readyz().await.status == StatusCode::OK
        })
        .await;
    }
    let r = a.write_readyz().await;
    assert_eq!(r.json(), json!({"writable": true, "backend": "redis"}));
    let r = a
        .admin_post("/admin/revoke", json!({"key": subject(&w, "x")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Both replicas reported, each at the log's end, and one holds the poll lease.
    let v = wait_for(
        Duration::from_secs(5),
        "a fleet view with both replicas at the log's end and a poll lease holder",
        || async {
            let v = a.fleet_view().await;
            let replicas = v["replicas"].as_array()?;
            let at_end = replicas.len() == 2
                && replicas.iter().all(|r| {
                    r["live"] == true
                        && r["cursor"] == v["log"]["last_id"]
                        && r["behind_seconds"] == 0.0
                        && r["caught_up"] == true
                        && r["writable"] == true
                });
            let held = v["poll_leases"][0]["holder"].is_string();
            (at_end && held).then_some(v)
        },
    )
    .await;
    assert_eq!(v["replica"], "a", "{v}");
    assert_eq!(v["mode"], "standalone", "{v}");
    assert_eq!(v["primary"], format!("127.0.0.1:{}", w.redis.port()), "{v}");
    assert_eq!(v["persistence"], "aof_always", "{v}");
    assert_eq!(v["redis_reachable"], true, "{v}");
    assert_eq!(v["max_fleet_lag_seconds"], 30.0, "the default bound: {v}");
    assert!(v["log"]["length"].as_u64() >= Some(1), "{v}");
    let names: Vec<&str> = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["replica"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{v}");
    let lease = &v["poll_leases"][0];
    assert_eq!(lease["transmitter"], "poller", "{v}");
    let holder = lease["holder"].as_str().unwrap();
    assert!(["a", "b"].contains(&holder), "{v}");
    assert!(lease["expires_in_seconds"].as_f64() > Some(0.0), "{v}");
    let holder_report = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["replica"] == holder)
        .unwrap();
    assert_eq!(holder_report["poll_leases"], json!(["poller"]), "{v}");
    assert_eq!(v["self"]["cursor"], v["log"]["last_id"], "{v}");
    let m = a.metrics().await;
    for (series, want) in [
        ("cae_fleet_writable", 1.0),
        ("cae_fleet_replicas_live", 2.0),
        ("cae_fleet_lag_seconds", 0.0),
        (r#"cae_fleet_redis_persistence{state="aof_always"}"#, 1.0),
        (r#"cae_fleet_redis_persistence{state="no_aof"}"#, 0.0),
        (r#"cae_fleet_redis_persistence{state="unknown"}"#, 0.0),
    ] {
        assert_eq!(metric(&m, series), Some(want), "{series}\n{m}");
    }

    // Redis gone: changes cannot be acknowledged (and say so); the view shows this replica.
    let last_id = v["log"]["last_id"].clone();
    w.redis.stop();
    let r = wait_for(
        Duration::from_secs(5),
        "A to say changes cannot be acknowledged",
        || async {
            let r = a.write_readyz().await;
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    )
    .await;
    let body = r.json();
    assert_eq!(body["writable"], false, "{body}");
    // The heartbeat's connection dropped, or a new one refused.
    assert!(
        ["connection to Redis failed", "Redis refused the connection"]
            .contains(&body["reason"].as_str().unwrap_or_default()),
        "{body}"
    );
    assert!(!r.text().contains("redis://"), "no URL in answers: {body}");
    assert_eq!(metric(&a.metrics().await, "cae_fleet_writable"), Some(0.0));
    let v = a.fleet_view().await;
    assert_eq!(v["redis_reachable"], false, "{v}");
    assert_eq!(v["redis_error"], "Redis refused the connection", "{v}");
    assert_eq!(v["self"]["writable"], false, "{v}");
    assert_eq!(v["self"]["cursor"], last_id, "{v}");
    assert!(v.get("replicas").is_none(), "{v}");

    // Back: writable again.
    w.redis.restart();
    for r in [&a, &b] {
        eventually(RECONNECT, "writable again", || async {
            r.write_readyz().await.status == StatusCode::OK
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_fleet_mode_there_is_no_fleet_view_and_the_local_store_takes_writes() {
    let h = Harness::start(&Toml::new().public().admin_token().build()).await;
    let r = get(&client(), &h.admin_url("/readyz/write"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"writable": true, "backend": "memory"}));
    let r = get(
        &client(),
        &h.admin_url("/admin/fleet"),
        &[("authorization", ADMIN)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found", "{}", r.text());
    let r = get(&client(), &h.admin_url("/admin/fleet"), &[]).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the view needs the admin token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_persistence_that_can_lose_acknowledged_changes_or_cannot_be_read_is_warned() {
    // appendonly no.
    let w = world(Redis::start(false), TransmitterOptions::default()).await;
    let a = Replica::process(&w, "a", Delivery::Push);
    a.wait_ready().await;
    let line = a
        .log_message("Redis may lose acknowledged changes on a crash: set appendonly yes and appendfsync always, or replicate them (store.min_replicas_acked with Sentinel)")
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["persistence"], "no_aof", "{line}");
    assert_eq!(
        line["primary"],
        format!("127.0.0.1:{}", w.redis.port()),
        "{line}"
    );
    eventually(PROMPT, "the persistence metric", || async {
        metric(
            &a.metrics().await,
            r#"cae_fleet_redis_persistence{state="no_aof"}"#,
        ) == Some(1.0)
    })
    .await;

    // CONFIG disabled (renamed away): not checked, said so; the fleet works as before.
    let w = world(
        Redis::start_args(true, &["--rename-command", "CONFIG", ""]),
        TransmitterOptions::default(),
    )
    .await;
    let b = Replica::process(&w, "b", Delivery::Push);
    b.wait_ready().await;
    let line = b
        .log_message("cannot read Redis's persistence settings: whether an acknowledged change survives a Redis crash is not checked")
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["persistence"], "unknown", "{line}");
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CONFIG is disabled, renamed or not allowed")),
        "{line}"
    );
    eventually(PROMPT, "the persistence metric", || async {
        metric(
            &b.metrics().await,
            r#"cae_fleet_redis_persistence{state="unknown"}"#,
        ) == Some(1.0)
    })
    .await;
    let r = b.push(&revoke_set(&w, "carol")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_refused(&b, &token(&w, "carol"), "with CONFIG disabled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_push_authentication_failures_and_the_last_set_are_counted_per_transmitter() {
    let w = world(
        Redis::start(false),
        TransmitterOptions {
            poll_wait: Duration::from_millis(200),
            ..TransmitterOptions::default()
        },
    )
    .await;
    let pushed = Replica::in_process(&w, "a", Delivery::Push, "").await;
    let polled = Replica::in_process(&w, "b", Delivery::Poll, "").await;
    pushed.wait_ready().await;
    polled.wait_ready().await;

    // Push authentication failures: a wrong and a missing Authorization.
    let set = revoke_set(&w, "dave");
    let url = pushed.url("signals", "/ssf/tx");
    for auth in [Some("Bearer wrong"), None] {
        let mut headers = vec![("content-type", SECEVENT)];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let r = send(
            &client(),
            Method::POST,
            &url,
            &headers,
            Bytes::from(set.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.json()["err"], "authentication_failed", "{}", r.text());
    }
    let m = pushed.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"cae_push_auth_failures_total{transmitter="tx",reason="authorization"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"cae_set_last_received_timestamp_seconds{transmitter="tx"}"#
        ),
        None,
        "no SET was read yet"
    );

    // The time of the last SET received.
    let before = now_secs() as f64;
    let r = pushed.push(&set).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let at = metric(
        &pushed.metrics().await,
        r#"cae_set_last_received_timestamp_seconds{transmitter="tx"}"#,
    )
    .unwrap();
    assert!(
        at >= before && at <= now_secs() as f64 + 1.0,
        "{at} not in [{before}, now]"
    );

    // Polls: answered, then failing while the transmitter is unavailable (503).
    let polls = |result: &'static str| {
        let polled = &polled;
        async move {
            metric(
                &polled.metrics().await,
                &format!(r#"cae_polls_total{{transmitter="poller",result="{result}"}}"#),
            )
            .unwrap_or(0.0)
        }
    };
    eventually(PROMPT, "answered polls", || async {
        polls("ok").await >= 2.0
    })
    .await;
    assert_eq!(polls("http_status").await, 0.0);
    w.tx.set_available(false);
    eventually(Duration::from_secs(5), "failed polls", || async {
        polls("http_status").await >= 1.0
    })
    .await;
    w.tx.set_available(true);
    let ok = polls("ok").await;
    eventually(Duration::from_secs(5), "answered polls again", || async {
        polls("ok").await > ok
    })
    .await;
}
