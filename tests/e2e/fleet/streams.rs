//! Stream management in a fleet: replicas that start together against a transmitter without a
//! stream of theirs create one stream between them (a claim in Redis), each uses it, and each
//! counts as verified when the verification it asked for was taken by another replica.

use super::*;

const MGMT: &str = "mgmt-token";

/// A managed poll stream of `tx` with verification, for a fleet replica.
fn managed(w: &World) -> String {
    format!(
        "issuer = \"{iss}\"\ndiscovery = \"{disc}\"\naudiences = [\"{AUD}\"]\n[transmitter.stream]\ndelivery = \"poll\"\nbearer = \"{MGMT}\"\nverify = true\nevents_requested = [\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\"]",
        iss = w.tx.issuer_url(),
        disc = w.tx.configuration_url(),
    )
}

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
    let config = |name: &str, dir: &Path| {
        let store = format!(
            "backend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nreplica_id = \"{name}\"\npath = \"{dir}/state.redb\"\nredis_timeout = \"500ms\"\npoll_lease = \"1s\"",
            url = w.redis.url(),
            prefix = w.prefix,
            dir = dir.display(),
        );
        Toml::new()
            .log_level("warn")
            .public()
            .signals()
            .admin_token()
            .store(&store)
            .app(&w.up.url())
            .dev_issuer(&w.idp.issuer_url(), "")
            .route("api", "/api", "")
            .transmitter("managed", &managed(&w))
            .build()
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tomls: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(&dirs)
        .map(|(n, d)| config(n, d.path()))
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
        let r = get(
            &client(),
            &h.admin_url("/admin/streams/managed"),
            &[("authorization", ADMIN)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.json()["receiver"]["stream_id"],
            id.as_str(),
            "{}",
            r.text()
        );
    }
}
