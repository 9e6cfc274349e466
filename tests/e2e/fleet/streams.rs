//! Stream management in a fleet: replicas that start together against a transmitter without a
//! stream of theirs create one stream between them (a claim in Redis), each uses it, and each
//! counts as verified when the verification it asked for was taken by another replica.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_one_stream_and_all_use_it() {
    let redis = Redis::start(false);
    let w = world(
        redis,
        TransmitterOptions {
            management_token: Some(MGMT.into()),
            poll_wait: Duration::from_millis(300),
            ..TransmitterOptions::default()
        },
    )
    .await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tomls: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(n, d)| {
            replica_toml(&w, n, d.path(), Delivery::ManagedPoll, "")
                .log_level("warn")
                .build()
        })
        .collect();
    // All three at once: each lists the transmitter's streams before any has created one.
    let (a, b, c) = tokio::join!(
        Harness::start(&tomls[0]),
        Harness::start(&tomls[1]),
        Harness::start(&tomls[2]),
    );
    // Ready means verified: each replica asked for a verification, and the one holding the poll
    // lease took every event; the askers learn it from the store.
    for h in [&a, &b, &c] {
        h.wait_ready().await;
    }
    let streams = w.tx.streams();
    assert_eq!(streams.len(), 1, "one stream for the fleet: {streams:#?}");
    let id = streams[0]["stream_id"].as_str().unwrap().to_string();
    for h in [&a, &b, &c] {
        let v = admin_get(&h.admin_url("/admin/streams/managed")).await;
        assert_eq!(v["receiver"]["stream_id"], id.as_str(), "{v}");
    }
}
