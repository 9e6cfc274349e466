//! The poll lease: one replica of a fleet polls a transmitter; the lease moves when its holder
//! is SIGKILLed and is given up at once by a replica shut down.

use std::time::{Duration, Instant};

use cae_proxy::dev::transmitter::TransmitterOptions;

use super::*;

/// A fleet whose transmitter answers a long poll after 500 ms.
async fn poll_world() -> World {
    world(
        Redis::start(false),
        TransmitterOptions {
            poll_wait: Duration::from_millis(500),
            ..TransmitterOptions::default()
        },
    )
    .await
}

/// The replica holding the fleet's poll lease of `poller`, if any.
fn holder(w: &World) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{}lease:poll:poller", w.prefix))
        .query(&mut w.redis.conn())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_lease_moves_when_its_holder_is_killed() {
    let w = poll_world().await;
    let mut a = Replica::process(&w, "a", Delivery::Poll);
    a.wait_ready().await;
    eventually(Duration::from_secs(5), "A to take the lease", || async {
        holder(&w).as_deref() == Some("a")
    })
    .await;
    let b = Replica::in_process(&w, "b", Delivery::Poll, "").await;
    b.wait_ready().await;

    // A polls; B learns the SET through the fleet log, not by polling.
    let gina = token(&w, "gina");
    w.tx.queue_for_poll(&revoke_set(&w, "gina"));
    refused_within(&a, &gina, Duration::from_secs(5), "A polled gina").await;
    refused_within(&b, &gina, PROMPT, "B got gina from the log").await;
    assert_eq!(holder(&w).as_deref(), Some("a"));
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, r#"cae_fleet_poll_lease_held{transmitter="poller"}"#).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert!(
        !m.contains(r#"cae_sets_received_total{transmitter="poller""#),
        "B did not poll while A held the lease: {m}"
    );

    // A dies: its lease expires and B takes over polling.
    a.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(5), "B to take the lease", || async {
        holder(&w).as_deref() == Some("b")
    })
    .await;
    eprintln!(
        "poll lease moved {:?} after the holder was killed",
        killed.elapsed()
    );
    let hal = token(&w, "hal");
    w.tx.queue_for_poll(&revoke_set(&w, "hal"));
    refused_within(
        &b,
        &hal,
        Duration::from_secs(5),
        "B polls after the takeover",
    )
    .await;
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, r#"cae_fleet_poll_lease_held{transmitter="poller"}"#).unwrap_or(0.0),
        1.0,
        "{m}"
    );
    eventually(Duration::from_secs(5), "both SETs acknowledged", || async {
        w.tx.acks().len() >= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_gives_its_poll_lease_up_at_once() {
    let w = poll_world().await;
    let Replica::InProcess(a) = Replica::in_process(&w, "a", Delivery::Poll, "").await else {
        unreachable!()
    };
    a.wait_ready().await;
    eventually(Duration::from_secs(5), "A to take the lease", || async {
        holder(&w).as_deref() == Some("a")
    })
    .await;
    // The shutdown waits for the poller's release and for the lease keeper (whose renewal in
    // flight must not take the lease again): once it returns, the lease is gone, long before
    // its 1 s lifetime would have ended it.
    a.proxy.shutdown().await;
    assert_eq!(holder(&w), None, "the lease released by the shutdown");
}
