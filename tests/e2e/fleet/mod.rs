//! Fleet mode end to end against a real Redis: each test starts its own `redis-server`
//! (`common::redis_server`: a reserved loopback port, files in a temp dir, never the machine's
//! own Redis), replicas in-process and as real processes (to SIGKILL them), a dev issuer,
//! transmitter and echo upstream. This module holds the fixture; `replication` (changes reaching
//! every replica, over TLS too, under load), `outages` (Redis or replicas gone), `poll_lease`
//! (one poller per fleet), `health` (readiness, write readiness, the fleet view, the metrics of
//! fleet health and Redis persistence), `sentinel` (a Sentinel failover during a burst),
//! `cluster` (a Redis Cluster, its slot migrating), `partition` (one replica cut off from
//! Redis by a network namespace) and `streams` (one managed SSF stream for replicas starting
//! together) the tests.

mod cluster;
mod health;
mod outages;
mod partition;
mod poll_lease;
mod replication;
mod sentinel;
mod streams;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{iss_sub, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;

use crate::common::redis_server::Redis;
use crate::common::*;

const AUD: &str = "cae-proxy";
const SECEVENT: &str = "application/secevent+jwt";
/// How long a change may take to reach another replica in these tests (never a timing claim).
const PROMPT: Duration = Duration::from_secs(2);
/// How long a replica may take to reconnect to a Redis that came back (backoff up to 2 s).
const RECONNECT: Duration = Duration::from_secs(8);

// ---- the world of a test ----

struct World {
    idp: DevIssuer,
    tx: DevTransmitter,
    up: EchoUpstream,
    redis: Redis,
    /// Key prefix of this test's fleet.
    prefix: String,
}

async fn world(redis: Redis, tx_opts: TransmitterOptions) -> World {
    World {
        idp: DevIssuer::start(listener().await, IssuerOptions::default()).unwrap(),
        tx: DevTransmitter::start(listener().await, tx_opts).unwrap(),
        up: EchoUpstream::start(listener().await).unwrap(),
        redis,
        prefix: format!("t{}:", cae_proxy::dev::random_id(4)),
    }
}

/// How the replicas' transmitter delivers: pushes to `/ssf/tx`, polled as `poller`, or polled
/// through a managed stream (`[transmitter.stream]`, verified) as `managed`, whose management
/// API wants the bearer `MGMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Push,
    Poll,
    ManagedPoll,
}

/// The management API bearer of [`Delivery::ManagedPoll`].
const MGMT: &str = "mgmt-token";

/// One replica's configuration; `dir` holds its redb copy; `store_extra`: more `[store]` lines.
fn replica_toml(
    w: &World,
    replica: &str,
    dir: &Path,
    delivery: Delivery,
    store_extra: &str,
) -> Toml {
    let store = format!(
        "backend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nreplica_id = \"{replica}\"\npath = \"{dir}/state.redb\"\nredis_timeout = \"500ms\"\npoll_lease = \"1s\"\n{store_extra}",
        url = w.redis.url(),
        prefix = w.prefix,
        dir = dir.display(),
    );
    let t = Toml::new()
        .log_level("info")
        .public()
        .signals()
        .admin_token()
        .store(&store)
        .app(&w.up.url())
        .dev_issuer(&w.idp.issuer_url(), "")
        .route("api", "/api", "");
    match delivery {
        Delivery::Push => t.push_transmitter("tx", &w.tx.issuer_url(), &w.tx.jwks_url(), AUD, ""),
        Delivery::ManagedPoll => t.transmitter(
            "managed",
            &format!(
                "issuer = \"{}\"\ndiscovery = \"{}\"\naudiences = [\"{AUD}\"]\n[transmitter.stream]\ndelivery = \"poll\"\nbearer = \"{MGMT}\"\nverify = true\nevents_requested = [\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\"]",
                w.tx.issuer_url(),
                w.tx.configuration_url(),
            ),
        ),
        Delivery::Poll => t.transmitter(
            "poller",
            &format!(
                "issuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\n[transmitter.poll]\nendpoint = \"{}\"\ninterval = \"100ms\"\ntimeout = \"5s\"",
                w.tx.issuer_url(),
                w.tx.jwks_url(),
                w.tx.poll_url()
            ),
        ),
    }
}

/// A replica: in-process or a real process (to SIGKILL it).
enum Replica {
    InProcess(Harness),
    Process {
        bin: Binary,
        config: PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl Replica {
    async fn in_process(w: &World, name: &str, delivery: Delivery, store_extra: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let toml = replica_toml(w, name, dir.path(), delivery, store_extra)
            .log_level("warn")
            .build();
        Replica::InProcess(Harness::start_in(dir, &toml).await)
    }

    fn process(w: &World, name: &str, delivery: Delivery) -> Replica {
        Replica::process_with(w, name, delivery, "")
    }

    /// A real process with more `[store]` lines.
    fn process_with(w: &World, name: &str, delivery: Delivery, store_extra: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cae-proxy.toml");
        let toml = replica_toml(w, name, dir.path(), delivery, store_extra).build();
        std::fs::write(&config, toml).unwrap();
        Replica::Process {
            bin: Binary::start(&config, 3),
            config,
            _dir: dir,
        }
    }

    fn url(&self, listener: &str, path: &str) -> String {
        match self {
            Replica::InProcess(h) => h.url(listener, path),
            Replica::Process { bin, .. } => bin.url(listener, path),
        }
    }

    fn admin(&self, path: &str) -> String {
        match self {
            Replica::InProcess(h) => h.admin_url(path),
            Replica::Process { bin, .. } => bin.admin_url(path),
        }
    }

    async fn wait_ready(&self) {
        match self {
            Replica::InProcess(h) => h.wait_ready().await,
            Replica::Process { bin, .. } => bin.wait_ready().await,
        }
    }

    /// Waits (bounded) for the JSON log line of a process replica whose `message` is `message`.
    async fn log_message(&self, message: &str) -> serde_json::Value {
        match self {
            Replica::Process { bin, .. } => bin.wait_message(message).await,
            Replica::InProcess(_) => panic!("in-process replicas log to the test's output"),
        }
    }

    /// SIGKILL (process replicas only), and wait (bounded) for the process to be gone.
    fn kill(&mut self) {
        if let Replica::Process { bin, .. } = self {
            bin.signal(libc::SIGKILL);
            bin.wait(Duration::from_secs(5));
        }
    }

    /// Sends SIGKILL (process replicas only) without waiting.
    fn sigkill(&self) {
        if let Replica::Process { bin, .. } = self {
            bin.signal(libc::SIGKILL);
        }
    }

    /// Waits (bounded) for a killed process to be gone.
    fn reap(&mut self) {
        if let Replica::Process { bin, .. } = self {
            bin.wait(Duration::from_secs(5));
            assert!(
                bin.child.try_wait().unwrap().is_some(),
                "killed replica gone"
            );
        }
    }

    /// Starts the process again from the same configuration and redb copy.
    fn restart(&mut self) {
        if let Replica::Process { bin, config, .. } = self {
            *bin = Binary::start(config, 3);
        }
    }

    async fn call(&self, token: &str) -> Reply {
        call_with(&self.url("public", "/api"), token).await
    }

    async fn push(&self, set: &str) -> Reply {
        push_to(&client(), &self.url("signals", "/ssf/tx"), set).await
    }

    async fn admin_post(&self, path: &str, body: serde_json::Value) -> Reply {
        admin_post(&self.admin(path), body).await
    }

    async fn readyz(&self) -> Reply {
        get(&client(), &self.admin("/readyz"), &[]).await
    }

    async fn write_readyz(&self) -> Reply {
        get(&client(), &self.admin("/readyz/write"), &[]).await
    }

    /// `GET /admin/fleet` (expects 200).
    async fn fleet_view(&self) -> serde_json::Value {
        admin_get(&self.admin("/admin/fleet")).await
    }

    async fn metrics(&self) -> String {
        get(&client(), &self.admin("/metrics"), &[]).await.text()
    }
}

/// Pushes a SET as the transmitter does.
async fn push_to(c: &TestClient, url: &str, set: &str) -> Reply {
    send(
        c,
        Method::POST,
        url,
        &[("content-type", SECEVENT), ("authorization", PUSH_AUTH)],
        Bytes::from(set.to_string()),
    )
    .await
}

/// A token of `sub` issued 100 s ago.
fn token(w: &World, sub: &str) -> String {
    let t = now_secs() - 100;
    w.idp.mint(sub, json!({"iat": t, "nbf": t}))
}

/// A SET revoking the tokens of `sub` issued before 10 s ago.
fn revoke_set(w: &World, sub: &str) -> String {
    w.tx.sign_set(DevTransmitter::credential_change(
        iss_sub(&w.idp.issuer_url(), sub),
        "password",
        "update",
        Some(now_secs() - 10),
    ))
}

fn subject(w: &World, sub: &str) -> serde_json::Value {
    json!({"type": "subject", "iss": w.idp.issuer_url(), "sub": sub})
}

/// Waits (bounded by `within`) until `replica` answers `token` with 401; returns how long it
/// took. Polls as fast as the replica answers: the time is a measurement.
async fn refused_within(r: &Replica, token: &str, within: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let reply = r.call(token).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            return t0.elapsed();
        }
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        assert!(
            t0.elapsed() < within,
            "{what}: not refused within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn assert_refused(r: &Replica, token: &str, what: &str) {
    let reply = r.call(token).await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        reply.text()
    );
}

async fn assert_served(r: &Replica, token: &str, what: &str) {
    let reply = r.call(token).await;
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
}

/// Entries in the fleet's change stream.
fn xlen(w: &World) -> i64 {
    redis::cmd("XLEN")
        .arg(format!("{}changes", w.prefix))
        .query(&mut w.redis.conn())
        .unwrap()
}

/// Steady traffic with `good` (always 200 expected) and `revoked` (always 401 expected) at
/// `urls`, one request every `every`, until `stop`. Returns (requests, unexpected answers).
fn traffic(
    urls: Vec<String>,
    good: String,
    revoked: Option<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let c = client();
        let (mut n, mut bad) = (0u64, Vec::new());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for u in &urls {
                tick.tick().await;
                let mut cases = vec![(&good, StatusCode::OK)];
                if let Some(r) = &revoked {
                    if n % 4 == 0 {
                        cases.push((r, StatusCode::UNAUTHORIZED));
                    }
                }
                for (t, want) in cases {
                    let auth = bearer(t);
                    n += 1;
                    match try_send(
                        &c,
                        Method::GET,
                        u,
                        &[("authorization", &auth)],
                        Bytes::new(),
                    )
                    .await
                    {
                        Ok(r) if r.status == want => {}
                        Ok(r) => bad.push(format!("{u}: {} (want {want})", r.status)),
                        Err(e) => bad.push(format!("{u}: {e}")),
                    }
                }
            }
        }
        (n, bad)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
