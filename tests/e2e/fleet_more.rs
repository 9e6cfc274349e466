//! Fleet mode, more: Redis over TLS with a private CA and client certificates, Redis SIGKILLed, two of three replicas SIGKILLed at once, cross-replica freshness under load.

// Each test starts its own `redis-server` on a free loopback port in a temp dir (never the
// machine's own Redis); replicas run in-process or as real processes (to SIGKILL them). The
// Redis/World/Replica support is a copy of tests/fleet.rs, extended with TLS and SIGKILL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

async fn world(redis: Redis) -> World {
    World {
        idp: DevIssuer::start(listener().await, IssuerOptions::default()).unwrap(),
        tx: DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap(),
        up: EchoUpstream::start(listener().await).unwrap(),
        redis,
        prefix: format!("t{}:", cae_proxy::dev::random_id(4)),
    }
}

/// One replica's configuration; `dir` holds its redb copy; `store_extra`: more `[store]` lines.
fn replica_toml(w: &World, replica: &str, dir: &Path, store_extra: &str) -> String {
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
{store_extra}
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
[[transmitter]]
name = "tx"
issuer = "{txiss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/tx"
authorization = "{PUSH_AUTH}"
"#,
        url = w.redis.url(),
        prefix = w.prefix,
        dir = dir.display(),
        up = w.up.url(),
        iss = w.idp.issuer_url(),
        txiss = w.tx.issuer_url(),
        jwks = w.tx.jwks_url(),
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
    async fn in_process(w: &World, name: &str, store_extra: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let toml = replica_toml(w, name, dir.path(), store_extra)
            .replace("log_level = \"info\"", "log_level = \"warn\"");
        Replica::InProcess(Harness::start_in(dir, &toml).await)
    }

    fn process(w: &World, name: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cae-proxy.toml");
        std::fs::write(&config, replica_toml(w, name, dir.path(), "")).unwrap();
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
        get(
            &client(),
            &self.url("public", "/api"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
    }

    async fn push(&self, set: &str) -> Reply {
        push_to(&client(), &self.url("signals", "/ssf/tx"), set).await
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
                    let auth = format!("Bearer {t}");
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

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_client_certificates() {
    let w = world(Redis::start_with(false, true)).await;
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
    let a = Replica::in_process(&w, "a", &full).await;
    let b = Replica::in_process(&w, "b", &full).await;
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
    let no_cert = Replica::in_process(&w, "no-cert", &format!("redis_ca = \"{ca}\"")).await;
    let no_ca = Replica::in_process(
        &w,
        "no-ca",
        &format!("redis_client_cert = \"{cert}\"\nredis_client_key = \"{key}\""),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
            metric(&m, r#"cae_fleet_redis_errors_total{op="connect"}"#) >= 1.0,
            "{name}: {m}"
        );
        assert_eq!(metric(&m, "cae_fleet_caught_up"), 0.0, "{name}: {m}");
        assert_eq!(
            metric(&m, "cae_fleet_applied_entries_total"),
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
            metric(&m, r#"cae_fleet_commits_total{result="failed"}"#) >= 1.0,
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
            &replica_toml(&w, "bad", dir.path(), &extra),
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
async fn redis_sigkilled_loses_no_acknowledged_change_and_replicas_resume_on_their_own() {
    let mut w = world(Redis::start(true)).await;
    let a = Replica::in_process(&w, "a", "").await;
    let b = Replica::in_process(&w, "b", "").await;
    let c = Replica::process(&w, "c");
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
        while acked.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
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
    let w = world(Redis::start(false)).await;
    let mut a = Replica::process(&w, "a");
    let mut b = Replica::process(&w, "b");
    let c = Replica::process(&w, "c");
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
        assert_eq!(metric(&m, "cae_fleet_caught_up"), 1.0, "{m}");
        assert!(
            metric(&m, "cae_fleet_applied_entries_total") >= 3.0,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_under_load_every_push_on_a_reaches_b() {
    const N: usize = 50;
    let w = world(Redis::start(false)).await;
    let a = Replica::process(&w, "a");
    let b = Replica::process(&w, "b");
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
