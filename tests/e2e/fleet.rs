//! Fleet mode end to end against a real Redis: each test starts its own `redis-server` on a free
//! loopback port in a temp dir (never the machine's own Redis), replicas in-process and as real
//! processes (to SIGKILL them), a dev issuer, transmitter and echo upstream.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::redis_server::Redis;
use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{iss_sub, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;

const ADMIN: &str = "Bearer admin-secret";
const PUSH_AUTH: &str = "Bearer push-secret";
const AUD: &str = "cae-proxy";
const SECEVENT: &str = "application/secevent+jwt";
/// How long a change may take to reach another replica in these tests.
const PROMPT: Duration = Duration::from_secs(2);

// ---- the world of a test ----

struct World {
    idp: DevIssuer,
    tx: DevTransmitter,
    up: EchoUpstream,
    redis: Redis,
    /// Key prefix of this test's fleet.
    prefix: String,
}

async fn world(appendonly: bool, tx_opts: TransmitterOptions) -> World {
    World {
        idp: DevIssuer::start(listener().await, IssuerOptions::default()).unwrap(),
        tx: DevTransmitter::start(listener().await, tx_opts).unwrap(),
        up: EchoUpstream::start(listener().await).unwrap(),
        redis: Redis::start(appendonly),
        prefix: format!("t{}:", cae_proxy::dev::random_id(4)),
    }
}

/// One replica's configuration; `dir` holds its redb copy. `poll`: the transmitter is polled.
fn replica_toml(w: &World, replica: &str, dir: &Path, poll: bool) -> String {
    let transmitter = if poll {
        format!(
            r#"
[[transmitter]]
name = "poller"
issuer = "{iss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.poll]
endpoint = "{poll}"
interval = "100ms"
timeout = "5s"
"#,
            iss = w.tx.issuer_url(),
            jwks = w.tx.jwks_url(),
            poll = w.tx.poll_url()
        )
    } else {
        format!(
            r#"
[[transmitter]]
name = "tx"
issuer = "{iss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/tx"
authorization = "{PUSH_AUTH}"
"#,
            iss = w.tx.issuer_url(),
            jwks = w.tx.jwks_url(),
        )
    };
    format!(
        r#"
[server]
log_level = "info"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "redis"
redis_url = "{url}"
key_prefix = "{prefix}"
replica_id = "{replica}"
path = "{dir}/state.redb"
redis_timeout = "500ms"
poll_lease = "1s"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
{transmitter}"#,
        url = w.redis.url(),
        prefix = w.prefix,
        dir = dir.display(),
        up = w.up.url(),
        iss = w.idp.issuer_url(),
    )
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
    async fn in_process(w: &World, name: &str, poll: bool) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let toml = replica_toml(w, name, dir.path(), poll)
            .replace("log_level = \"info\"", "log_level = \"warn\"");
        Replica::InProcess(Harness::start_in(dir, &toml).await)
    }

    fn process(w: &World, name: &str, poll: bool) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cae-proxy.toml");
        std::fs::write(&config, replica_toml(w, name, dir.path(), poll)).unwrap();
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
            Replica::Process { bin, .. } => bin.url("admin", path),
        }
    }

    async fn wait_ready(&self) {
        match self {
            Replica::InProcess(h) => h.wait_ready().await,
            Replica::Process { bin, .. } => bin.wait_ready().await,
        }
    }

    /// SIGKILL (process replicas only).
    fn kill(&mut self) {
        if let Replica::Process { bin, .. } = self {
            bin.signal(libc::SIGKILL);
            bin.wait(Duration::from_secs(5));
        }
    }

    /// Starts the process again from the same configuration and redb copy.
    fn restart(&mut self) {
        if let Replica::Process { bin, config, .. } = self {
            *bin = Binary::start(config, 3);
        }
    }

    async fn call(&self, token: &str) -> Reply {
        get(
            &client(),
            &self.url("public", "/api"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    async fn push(&self, set: &str) -> Reply {
        send(
            &client(),
            Method::POST,
            &self.url("signals", "/ssf/tx"),
            &[("content-type", SECEVENT), ("authorization", PUSH_AUTH)],
            Bytes::from(set.to_string()),
        )
        .await
    }

    async fn admin_post(&self, path: &str, body: serde_json::Value) -> Reply {
        send(
            &client(),
            Method::POST,
            &self.admin(path),
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
            Bytes::from(body.to_string()),
        )
        .await
    }

    async fn readyz(&self) -> Reply {
        get(&client(), &self.admin("/readyz"), &[]).await
    }

    async fn metrics(&self) -> String {
        get(&client(), &self.admin("/metrics"), &[]).await.text()
    }
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
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

/// Waits (bounded by `within`) until `replica` answers `token` with 401; returns how long it took.
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

fn xlen(w: &World) -> i64 {
    redis::cmd("XLEN")
        .arg(format!("{}changes", w.prefix))
        .query(&mut w.redis.conn())
        .unwrap()
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_or_admin_change_on_one_replica_is_enforced_by_all_and_a_restart_catches_up() {
    let w = world(false, TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", false).await;
    let b = Replica::in_process(&w, "b", false).await;
    let mut c = Replica::process(&w, "c", false);
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
    assert_eq!(metric(&m, "cae_fleet_caught_up"), 1.0, "{m}");
    // It replays from its cursor: only what it missed while down.
    assert!(metric(&m, "cae_fleet_applied_entries_total") >= 2.0, "{m}");
    let m = b.metrics().await;
    assert!(
        metric(&m, "cae_fleet_replication_delay_seconds_count") >= 2.0,
        "{m}"
    );
    assert_eq!(xlen(&w), 4, "two pushes, two admin changes in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_set_pushed_to_two_replicas_is_accepted_by_both_and_applied_once() {
    let w = world(false, TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", false).await;
    let b = Replica::in_process(&w, "b", false).await;
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
    let sum = |series: &str| metric(&ma, series) + metric(&mb, series);
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
async fn redis_outage_keeps_serving_refuses_pushes_and_loses_no_acknowledged_change() {
    let mut w = world(true, TransmitterOptions::default()).await;
    let a = Replica::in_process(&w, "a", false).await;
    let b = Replica::in_process(&w, "b", false).await;
    let mut c = Replica::process(&w, "c", false);
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
    let t0 = Instant::now();
    let ready = loop {
        let r = c.readyz().await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE
            && r.json()["missing"] == json!([cae_proxy::fleet::NOT_REPLAYED])
        {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "readyz: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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
    let t0 = Instant::now();
    loop {
        let r = a.push(&during).await;
        if r.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "push never accepted again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        metric(&m, r#"cae_fleet_redis_errors_total{op="append"}"#) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, r#"cae_fleet_commits_total{result="failed"}"#) >= 1.0,
        "{m}"
    );
    eprintln!("outage: {served} requests with a valid token served, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_lease_moves_when_its_holder_is_killed() {
    let w = world(
        false,
        TransmitterOptions {
            poll_wait: Duration::from_millis(500),
            ..TransmitterOptions::default()
        },
    )
    .await;
    let lease_key = format!("{}lease:poll:poller", w.prefix);
    let holder = |w: &World| -> Option<String> {
        redis::cmd("GET")
            .arg(&lease_key)
            .query(&mut w.redis.conn())
            .unwrap()
    };
    let mut a = Replica::process(&w, "a", true);
    a.wait_ready().await;
    let t0 = Instant::now();
    while holder(&w).as_deref() != Some("a") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "A never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = Replica::in_process(&w, "b", true).await;
    b.wait_ready().await;

    // A polls; B learns the SET through the fleet log, not by polling.
    let gina = token(&w, "gina");
    w.tx.queue_for_poll(&revoke_set(&w, "gina"));
    refused_within(&a, &gina, Duration::from_secs(5), "A polled gina").await;
    refused_within(&b, &gina, PROMPT, "B got gina from the log").await;
    assert_eq!(holder(&w).as_deref(), Some("a"));
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, r#"cae_fleet_poll_lease_held{transmitter="poller"}"#),
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
    while holder(&w).as_deref() != Some("b") {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "B never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        metric(&m, r#"cae_fleet_poll_lease_held{transmitter="poller"}"#),
        1.0,
        "{m}"
    );
    let t0 = Instant::now();
    while w.tx.acks().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "acks: {:?}",
            w.tx.acks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_gives_its_poll_lease_up_at_once() {
    let w = world(
        false,
        TransmitterOptions {
            poll_wait: Duration::from_millis(500),
            ..TransmitterOptions::default()
        },
    )
    .await;
    let lease_key = format!("{}lease:poll:poller", w.prefix);
    let holder = |w: &World| -> Option<String> {
        redis::cmd("GET")
            .arg(&lease_key)
            .query(&mut w.redis.conn())
            .unwrap()
    };
    let Replica::InProcess(a) = Replica::in_process(&w, "a", true).await else {
        unreachable!()
    };
    a.wait_ready().await;
    let t0 = Instant::now();
    while holder(&w).as_deref() != Some("a") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "A never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.proxy.shutdown().await;
    let t0 = Instant::now();
    while holder(&w).is_some() {
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "lease not released on shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_blocks_are_republished_so_a_replica_joining_after_trimming_learns_them() {
    use cae_proxy::config::{RedisBackend, Secret, DEFAULT_RETENTION};
    use cae_proxy::store::{Batch, Change, Durable, RedbStore, RedisLink, RedisStore, SubjectKey};
    use std::sync::Arc;

    let w = world(false, TransmitterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = RedisBackend {
        url: Secret::from_value(w.redis.url()),
        key_prefix: w.prefix.clone(),
        path: dir.path().join("state.redb"),
        replica_id: Some("old-timer".into()),
        timeout: Duration::from_secs(2),
        poll_lease: Duration::from_secs(1),
        tls: None,
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

    let late = Replica::in_process(&w, "late", false).await;
    late.wait_ready().await;
    let r = late.call(&token(&w, "ivan")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "AccountBlocked", "{}", r.text());
}
