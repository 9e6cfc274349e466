//! Durability and signal-channel defects (issue 17): what a restart, a shutdown, a redelivery or
//! an expiring management token must not undo. The real binary wherever a restart or a signal
//! is involved, a real `redis-server` for fleet mode, the development issuer, transmitter and
//! echo upstream, SETs over HTTP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::redis_server::Redis;
use crate::common::*;
use base64::Engine;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    complex, iss_sub, opaque, DevTransmitter, TransmitterOptions, CAEP, RISC, SSF,
};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::ServerHandle;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

const ADMIN: &str = "Bearer admin-secret";
const PUSH_AUTH: &str = "Bearer push-secret";
const AUD: &str = "cae-proxy";
const SECEVENT: &str = "application/secevent+jwt";
const MGMT: &str = "mgmt-static";

// ---- the world of a test ----

struct World {
    idp: DevIssuer,
    up: EchoUpstream,
    tx: Arc<DevTransmitter>,
}

async fn world(opts: TransmitterOptions) -> World {
    World {
        idp: DevIssuer::start(listener().await, IssuerOptions::default()).unwrap(),
        up: EchoUpstream::start(listener().await).unwrap(),
        tx: Arc::new(DevTransmitter::start(listener().await, opts).unwrap()),
    }
}

/// Public, signals and admin listeners; routes `/api` (no CAE option) and `/bound` (signal-fed
/// IP bindings); `store` and `transmitter` are TOML fragments.
fn toml(w: &World, store: &str, transmitter: &str) -> String {
    format!(
        r#"
[server]
log_level = "info"
shutdown_grace = "5s"
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
{store}
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
[[route]]
name = "bound"
path_prefix = "/bound"
upstream = "app"
cae = {{ signal_ip = true }}
{transmitter}"#,
        up = w.up.url(),
        iss = w.idp.issuer_url(),
    )
}

fn redb(dir: &std::path::Path) -> String {
    format!(
        "backend = \"redb\"\npath = \"{}/state.redb\"",
        dir.display()
    )
}

/// A transmitter pushing to `/ssf/tx`.
fn push_transmitter(w: &World) -> String {
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
}

fn write_config(dir: &std::path::Path, text: &str) -> PathBuf {
    let p = dir.join("cae-proxy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// SIGTERM, then the exit code (bounded wait).
async fn stop(mut bin: Binary) -> (Option<i32>, Vec<String>) {
    bin.signal(libc::SIGTERM);
    tokio::task::spawn_blocking(move || {
        let code = bin.wait(Duration::from_secs(15));
        (code, bin.log())
    })
    .await
    .unwrap()
}

async fn push(url: &str, set: &str) -> Reply {
    send(
        &client(),
        Method::POST,
        url,
        &[("content-type", SECEVENT), ("authorization", PUSH_AUTH)],
        Bytes::from(set.to_string()),
    )
    .await
}

async fn admin_post(url: &str, body: Value) -> Reply {
    send(
        &client(),
        Method::POST,
        url,
        &[
            ("authorization", ADMIN),
            ("content-type", "application/json"),
        ],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn admin_get(url: &str) -> Reply {
    get(&client(), url, &[("authorization", ADMIN)]).await
}

async fn call(url: &str, token: &str) -> Reply {
    get(
        &client(),
        url,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Every table as `/admin/entries` lists it.
async fn all_entries(admin: impl Fn(&str) -> String) -> Value {
    let mut out = serde_json::Map::new();
    for t in ["revocations", "blocks", "bindings"] {
        let r = admin_get(&admin(&format!("/admin/entries/{t}?limit=1000"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        out.insert(t.to_string(), r.json());
    }
    Value::Object(out)
}

/// The payload of a compact JWS, unverified.
fn payload(jws: &str) -> Value {
    let p = jws.split('.').nth(1).expect("three segments");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

fn is_verification(set: &str) -> bool {
    payload(set)["events"]
        .as_object()
        .is_some_and(|e| e.contains_key(&format!("{SSF}verification")))
}

/// The value of the metric line starting with `series ` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Waits (bounded) until `/readyz` answers 200.
async fn ready_within(url: &str, within: Duration) {
    eventually(within, "ready", || async move {
        try_send(&client(), Method::GET, url, &[], Bytes::new())
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
}

/// A recording HTTP forwarder: every request's body is kept with the answer it got; requests
/// go on to `target` (same method, body, `Authorization` and `Content-Type`) unless `hold` is
/// set (then `503`, nothing forwarded) or `swallow` says so for this request (then it is held
/// open until the test ends, as an in-flight request the proxy abandons).
struct Forwarder {
    _server: ServerHandle,
    url: String,
    target: Arc<Mutex<Option<String>>>,
    /// `(request body, status answered, response body)`.
    log: Arc<Mutex<Vec<(String, u16, String)>>>,
    hold: Arc<AtomicBool>,
    swallow: Arc<Mutex<Option<SwallowFn>>>,
}

type SwallowFn = Box<dyn Fn(&Value) -> bool + Send + Sync>;

impl Forwarder {
    async fn start() -> Forwarder {
        let l = listener().await;
        let url = format!("http://{}/fwd", l.local_addr().unwrap());
        let target: Arc<Mutex<Option<String>>> = Arc::default();
        let log: Arc<Mutex<Vec<(String, u16, String)>>> = Arc::default();
        let hold = Arc::new(AtomicBool::new(false));
        let swallow: Arc<Mutex<Option<SwallowFn>>> = Arc::default();
        let (t, lg, h, sw) = (target.clone(), log.clone(), hold.clone(), swallow.clone());
        let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
            let (t, lg, h, sw) = (t.clone(), lg.clone(), h.clone(), sw.clone());
            async move {
                let method = req.method().clone();
                let header = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let (auth, ct) = (header("authorization"), header("content-type"));
                let body = cae_proxy::dev::read_body(req.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&body).into_owned();
                let swallowed = serde_json::from_str::<Value>(&text)
                    .ok()
                    .is_some_and(|v| sw.lock().unwrap().as_ref().is_some_and(|f| f(&v)));
                if swallowed {
                    lg.lock().unwrap().push((text.clone(), 0, String::new()));
                    std::future::pending::<()>().await;
                }
                let target = t.lock().unwrap().clone();
                let (status, answer) = match target.filter(|_| !h.load(Ordering::SeqCst)) {
                    None => (503, String::new()),
                    Some(url) => {
                        let mut headers = vec![("accept", "application/json")];
                        if let Some(a) = &auth {
                            headers.push(("authorization", a.as_str()));
                        }
                        if let Some(c) = &ct {
                            headers.push(("content-type", c.as_str()));
                        }
                        match cae_proxy::dev::http_request(method, &url, &headers, body).await {
                            Ok((s, _, b)) => (s, String::from_utf8_lossy(&b).into_owned()),
                            Err(_) => (502, String::new()),
                        }
                    }
                };
                lg.lock().unwrap().push((text, status, answer.clone()));
                let mut r = cae_proxy::dev::response(
                    StatusCode::from_u16(status).unwrap(),
                    "application/json",
                    answer,
                );
                if status == 503 {
                    r.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                }
                r
            }
        })
        .unwrap();
        Forwarder {
            _server: server,
            url,
            target,
            log,
            hold,
            swallow,
        }
    }

    fn point_at(&self, url: &str) {
        *self.target.lock().unwrap() = Some(url.to_string());
    }

    fn log(&self) -> Vec<(String, u16, String)> {
        self.log.lock().unwrap().clone()
    }
}

// ---- 1. an acknowledged unbind stays after a restart ----

/// Session-established for session `S` from 203.0.113.9 (legacy `ips`), event time `at`, with a
/// fresh `jti`.
fn bind_set(w: &World, at: i64) -> String {
    w.tx.sign_set(DevTransmitter::event(
        complex(&[("session", opaque("S"))]),
        &format!("{CAEP}session-established"),
        json!({"ips": ["203.0.113.9"], "event_timestamp": at}),
    ))
}

#[tokio::test]
async fn an_acknowledged_unbind_stays_after_a_restart_and_the_tables_match_the_store() {
    let w = world(TransmitterOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &toml(&w, &redb(dir.path()), &push_transmitter(&w)),
    );
    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let t1 = now_secs() - 100;
    let token = w.idp.mint("alice", json!({"sid": "S"}));

    let r = push(&bin.url("signals", "/ssf/tx"), &bind_set(&w, t1)).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    let r = call(&bin.url("public", "/bound"), &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "bound to 203.0.113.9");
    let unbind = json!({"key": {"type": "session", "iss": "*", "sid": "S"}, "at": t1 + 10});
    let r = admin_post(&bin.url("admin", "/admin/unbind"), unbind).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        call(&bin.url("public", "/bound"), &token).await.status,
        StatusCode::OK
    );
    // The same event again (a new jti, the old time): older than the unbind, ignored.
    let r = push(&bin.url("signals", "/ssf/tx"), &bind_set(&w, t1)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        call(&bin.url("public", "/bound"), &token).await.status,
        StatusCode::OK,
        "an older bind does not undo a newer unbind"
    );
    let before = all_entries(|p| bin.url("admin", p)).await;
    assert_eq!(
        before["bindings"]["entries"],
        json!([{"key": {"type": "session", "iss": "*", "sid": "S"}, "nets": [], "at": t1 + 10}]),
        "the unbind is kept as a tombstone with its time"
    );
    let (code, log) = stop(bin).await;
    assert_eq!(code, Some(0), "{log:?}");

    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let r = call(&bin.url("public", "/bound"), &token).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the acknowledged unbind came back after a restart: {}",
        r.text()
    );
    let after = all_entries(|p| bin.url("admin", p)).await;
    assert_eq!(after, before, "tables rebuilt from the store differ");
}

// ---- 2. a redelivered verification is answered like the first time ----

/// A managed push stream with verification, its push endpoint behind `fwd`.
fn managed_push(w: &World, fwd: &Forwarder) -> String {
    format!(
        r#"
[[transmitter]]
name = "managed"
issuer = "{iss}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/managed"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "{fwd}"
bearer = "{MGMT}"
verify = true
events_requested = ["{CAEP}session-revoked"]
"#,
        iss = w.tx.issuer_url(),
        disc = w.tx.configuration_url(),
        fwd = fwd.url,
    )
}

fn mgmt_tx() -> TransmitterOptions {
    TransmitterOptions {
        management_token: Some(MGMT.into()),
        poll_wait: Duration::from_millis(300),
        ..TransmitterOptions::default()
    }
}

/// Verification SETs the forwarder saw, in order.
fn verifications(fwd: &Forwarder) -> Vec<(String, u16)> {
    fwd.log()
        .into_iter()
        .filter(|(b, _, _)| is_verification(b))
        .map(|(b, s, _)| (b, s))
        .collect()
}

#[tokio::test]
async fn verifications_are_answered_like_the_first_time_across_restarts() {
    let w = world(mgmt_tx()).await;
    let fwd = Forwarder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &toml(&w, &redb(dir.path()), &managed_push(&w, &fwd)),
    );

    // Run 1: the verification asked for is pushed, accepted, and accepted again.
    let bin = Binary::start(&cfg, 3);
    fwd.point_at(&bin.url("signals", "/ssf/managed"));
    bin.wait_ready().await;
    // The forwarder logs a push once the proxy has answered it, so readiness may come first.
    eventually(
        Duration::from_secs(5),
        "run 1's verification logged",
        || {
            let n = verifications(&fwd).len();
            async move { n >= 1 }
        },
    )
    .await;
    let v = verifications(&fwd);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].1, 202);
    let first = v[0].0.clone();
    assert!(payload(&first)["events"][format!("{SSF}verification")]["state"].is_string());
    let r = push(&bin.url("signals", "/ssf/managed"), &first).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    // From now on the transmitter's pushes do not arrive (the receiver is "down" for it).
    fwd.hold.store(true, Ordering::SeqCst);
    let (code, log) = stop(bin).await;
    assert_eq!(code, Some(0), "{log:?}");

    // Run 2: the first verification, redelivered after the restart, is a repeat: 202.
    let bin = Binary::start(&cfg, 3);
    eventually(
        Duration::from_secs(15),
        "run 2 asked for a verification",
        || {
            let n = verifications(&fwd).len();
            async move { n == 2 }
        },
    )
    .await;
    let r = push(&bin.url("signals", "/ssf/managed"), &first).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::ACCEPTED, ""),
        "a redelivered verification after a restart"
    );
    let second = verifications(&fwd)[1].0.clone();
    let (code, log) = stop(bin).await;
    assert_eq!(code, Some(0), "{log:?}");

    // Run 3: run 2's verification, delivered late (first time), is still one we asked for.
    let bin = Binary::start(&cfg, 3);
    eventually(
        Duration::from_secs(15),
        "run 3 asked for a verification",
        || {
            let n = verifications(&fwd).len();
            async move { n == 3 }
        },
    )
    .await;
    let r = push(&bin.url("signals", "/ssf/managed"), &second).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::ACCEPTED, ""),
        "a verification asked for before a restart, first delivered after it"
    );
    bin.wait_ready().await;
}

/// A managed poll stream with verification; polls go through `fwd` to the transmitter.
fn managed_poll(w: &World, fwd: &Forwarder, credentials: &str) -> String {
    format!(
        r#"
[[transmitter]]
name = "managed"
issuer = "{iss}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.poll]
endpoint = "{fwd}"
interval = "100ms"
timeout = "5s"
[transmitter.stream]
delivery = "poll"
{credentials}
events_requested = ["{CAEP}session-revoked", "{RISC}account-disabled"]
"#,
        iss = w.tx.issuer_url(),
        disc = w.tx.configuration_url(),
        fwd = fwd.url,
    )
}

#[tokio::test]
async fn a_polled_verification_redelivered_after_a_restart_is_acknowledged_not_refused() {
    let w = world(mgmt_tx()).await;
    let fwd = Forwarder::start().await;
    fwd.point_at(&w.tx.poll_url());
    let dir = tempfile::tempdir().unwrap();
    let creds = format!("bearer = \"{MGMT}\"\nverify = true");
    let cfg = write_config(
        dir.path(),
        &toml(&w, &redb(dir.path()), &managed_poll(&w, &fwd, &creds)),
    );
    let bin = Binary::start(&cfg, 3);
    ready_within(&bin.url("admin", "/readyz"), Duration::from_secs(30)).await;
    // The verification SET the poll returned, and its acknowledgement.
    let polled: Vec<String> = fwd
        .log()
        .iter()
        .filter_map(|(_, _, answer)| serde_json::from_str::<Value>(answer).ok())
        .flat_map(|v| {
            v["sets"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .filter(|s| is_verification(s))
        .collect();
    assert_eq!(polled.len(), 1, "{:?}", fwd.log());
    let v = polled[0].clone();
    let jti = payload(&v)["jti"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(5),
        "the verification is acknowledged",
        || {
            let acked = w.tx.acks().contains(&jti);
            async move { acked }
        },
    )
    .await;
    let (code, log) = stop(bin).await;
    assert_eq!(code, Some(0), "{log:?}");

    // The transmitter delivers it again (it never saw that acknowledgement, say).
    w.tx.queue_for_poll(&v);
    let bin = Binary::start(&cfg, 3);
    eventually(
        Duration::from_secs(15),
        "the redelivery is acknowledged",
        || {
            let n = w.tx.acks().iter().filter(|a| **a == jti).count();
            async move { n == 2 }
        },
    )
    .await;
    assert_eq!(w.tx.set_errs(), vec![], "nothing refused");
    ready_within(&bin.url("admin", "/readyz"), Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_verification_naming_another_stream_does_not_verify_ours() {
    let w = world(mgmt_tx()).await;
    let fwd = Forwarder::start().await;
    // The transmitter's own verification never arrives: only the test's pushes count.
    fwd.hold.store(true, Ordering::SeqCst);
    let h = Harness::start(
        &toml(&w, "backend = \"memory\"", &managed_push(&w, &fwd))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    eventually(Duration::from_secs(15), "the stream exists", || {
        let n = w.tx.streams().len();
        async move { n == 1 }
    })
    .await;
    let ours = w.tx.streams()[0]["stream_id"].as_str().unwrap().to_string();
    let not_verified = json!({"ready": false, "missing": ["transmitter managed stream is not active (not verified)"]});
    eventually(
        Duration::from_secs(15),
        "the proxy asked for verification",
        || {
            let n = verifications(&fwd).len();
            async move { n == 1 }
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "only the verification is missing",
        || {
            let url = h.admin_url("/readyz");
            let want = not_verified.clone();
            async move { get(&client(), &url, &[]).await.json() == want }
        },
    )
    .await;

    // An unprompted verification of another stream: accepted (202), ignored.
    let other =
        w.tx.sign_set(DevTransmitter::verification("another-stream", None));
    let r = push(&h.url("signals", "/ssf/managed"), &other).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    let r = get(&client(), &h.admin_url("/readyz"), &[]).await;
    assert_eq!(
        r.json(),
        not_verified,
        "a verification of another stream counted as ours"
    );
    // The same for our stream verifies it.
    let mine = w.tx.sign_set(DevTransmitter::verification(&ours, None));
    let r = push(&h.url("signals", "/ssf/managed"), &mine).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    h.wait_ready().await;
}

// ---- 3. a management token refused early is replaced ----

/// A client-credentials token endpoint that issues `mgmt-1`, `mgmt-2`, … and makes the
/// transmitter accept only the newest one.
struct TokenEndpoint {
    _server: ServerHandle,
    url: String,
    issued: Arc<AtomicUsize>,
}

async fn token_endpoint(tx: Arc<DevTransmitter>) -> TokenEndpoint {
    let l = listener().await;
    let url = format!("http://{}/oauth2/token", l.local_addr().unwrap());
    let issued = Arc::new(AtomicUsize::new(0));
    let n = issued.clone();
    let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
        let (n, tx) = (n.clone(), tx.clone());
        async move {
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("cae-proxy:secret")
            );
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some(basic.as_str());
            if !ok {
                return cae_proxy::dev::json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid_client"}),
                );
            }
            let token = format!("mgmt-{}", n.fetch_add(1, Ordering::SeqCst) + 1);
            tx.set_management_token(Some(token.clone()));
            cae_proxy::dev::json_response(
                StatusCode::OK,
                &json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            )
        }
    })
    .unwrap();
    TokenEndpoint {
        _server: server,
        url,
        issued,
    }
}

#[tokio::test]
async fn a_management_token_refused_early_is_replaced_and_delivery_goes_on() {
    let w = world(TransmitterOptions {
        management_token: Some("nobody has this yet".into()),
        poll_wait: Duration::from_millis(300),
        ..TransmitterOptions::default()
    })
    .await;
    let te = token_endpoint(w.tx.clone()).await;
    let fwd = Forwarder::start().await;
    fwd.point_at(&w.tx.poll_url());
    let creds = format!(
        "token_endpoint = \"{}\"\nclient_id = \"cae-proxy\"\nclient_secret = \"secret\"\nverify = false",
        te.url
    );
    let h = Harness::start(
        &toml(&w, "backend = \"memory\"", &managed_poll(&w, &fwd, &creds))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    h.wait_ready().await;
    let at = now_secs() - 10;
    let revoke = |sub: &str| {
        w.tx.sign_set(DevTransmitter::account_disabled(
            iss_sub(&w.idp.issuer_url(), sub),
            None,
            Some(at),
        ))
    };
    let first = revoke("first");
    w.tx.queue_for_poll(&first);
    let jti = |s: &str| payload(s)["jti"].as_str().unwrap().to_string();
    let j1 = jti(&first);
    eventually(
        Duration::from_secs(10),
        "the first SET is acknowledged",
        || {
            let acked = w.tx.acks().contains(&j1);
            async move { acked }
        },
    )
    .await;
    assert_eq!(te.issued.load(Ordering::SeqCst), 1);

    // The transmitter revokes the token early: every call with it is now 401.
    w.tx.set_management_token(Some("revoked-early".into()));
    let second = revoke("second");
    w.tx.queue_for_poll(&second);
    let j2 = jti(&second);
    eventually(
        Duration::from_secs(5),
        "the SET queued after the token was revoked is acknowledged",
        || {
            let acked = w.tx.acks().contains(&j2);
            async move { acked }
        },
    )
    .await;
    assert_eq!(te.issued.load(Ordering::SeqCst), 2, "one new token");
    let old = w.idp.mint("second", json!({"iat": at - 60}));
    assert_eq!(
        call(&h.url("public", "/api"), &old).await.status,
        StatusCode::UNAUTHORIZED
    );
    let m = get(&client(), &h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(
            &m,
            r#"cae_management_token_refetches_total{transmitter="managed"}"#
        ),
        1.0,
        "{m}"
    );
}

// ---- 4. shutdown finishes the background work ----

fn fleet_store(redis: &Redis, prefix: &str, replica: &str, dir: &std::path::Path) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\nreplica_id = \"{replica}\"\npath = \"{}/state.redb\"\nredis_timeout = \"500ms\"\npoll_lease = \"3s\"",
        redis.url(),
        dir.display()
    )
}

fn static_poll(w: &World, endpoint: &str) -> String {
    format!(
        r#"
[[transmitter]]
name = "poller"
issuer = "{iss}"
jwks_uri = "{jwks}"
audiences = ["{AUD}"]
[transmitter.poll]
endpoint = "{endpoint}"
interval = "100ms"
timeout = "5s"
"#,
        iss = w.tx.issuer_url(),
        jwks = w.tx.jwks_url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_the_poll_lease_up_and_another_replica_polls_at_once() {
    let w = world(TransmitterOptions {
        poll_wait: Duration::from_millis(500),
        ..TransmitterOptions::default()
    })
    .await;
    let redis = Redis::start(false);
    let prefix = format!("t{}:", cae_proxy::dev::random_id(4));
    let lease_key = format!("{prefix}lease:poll:poller");
    let holder = || -> Option<String> {
        redis::cmd("GET")
            .arg(&lease_key)
            .query(&mut redis.conn())
            .unwrap()
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = write_config(
        da.path(),
        &toml(
            &w,
            &fleet_store(&redis, &prefix, "a", da.path()),
            &static_poll(&w, &w.tx.poll_url()),
        ),
    );
    let a = Binary::start(&ca, 3);
    a.wait_ready().await;
    eventually(Duration::from_secs(5), "A holds the lease", || {
        let h = holder();
        async move { h.as_deref() == Some("a") }
    })
    .await;
    let cb = write_config(
        db.path(),
        &toml(
            &w,
            &fleet_store(&redis, &prefix, "b", db.path()),
            &static_poll(&w, &w.tx.poll_url()),
        ),
    );
    let b = Binary::start(&cb, 3);
    b.wait_ready().await;
    assert_eq!(holder().as_deref(), Some("a"), "B stands by");

    let (code, log) = stop(a).await;
    assert_eq!(code, Some(0), "{log:?}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&lease_key)
        .query(&mut redis.conn())
        .unwrap();
    assert!(
        pttl == -2 || holder().as_deref() == Some("b"),
        "A exited but its lease stays for {pttl} ms"
    );
    // B takes over within a third of poll_lease (its renewal period), plus a margin.
    eventually(Duration::from_millis(1500), "B holds the lease", || {
        let h = holder();
        async move { h.as_deref() == Some("b") }
    })
    .await;
    let set = w.tx.sign_set(DevTransmitter::account_disabled(
        iss_sub(&w.idp.issuer_url(), "late"),
        None,
        Some(now_secs() - 10),
    ));
    let jti = payload(&set)["jti"].as_str().unwrap().to_string();
    w.tx.queue_for_poll(&set);
    eventually(Duration::from_secs(3), "B polls and acknowledges", || {
        let acked = w.tx.acks().contains(&jti);
        async move { acked }
    })
    .await;
    drop(b);
}

#[tokio::test]
async fn sigterm_delivers_the_pollers_pending_acknowledgements() {
    let w = world(TransmitterOptions {
        poll_wait: Duration::from_millis(500),
        ..TransmitterOptions::default()
    })
    .await;
    let fwd = Forwarder::start().await;
    fwd.point_at(&w.tx.poll_url());
    // A poll that carries acknowledgements and asks for more is held open: the proxy's next
    // poll after committing a SET never reaches the transmitter.
    *fwd.swallow.lock().unwrap() = Some(Box::new(|v: &Value| {
        v["ack"].as_array().is_some_and(|a| !a.is_empty()) && v["maxEvents"] != json!(0)
    }));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &toml(&w, &redb(dir.path()), &static_poll(&w, &fwd.url)),
    );
    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let set = w.tx.sign_set(DevTransmitter::account_disabled(
        iss_sub(&w.idp.issuer_url(), "acked"),
        None,
        Some(now_secs() - 10),
    ));
    let jti = payload(&set)["jti"].as_str().unwrap().to_string();
    w.tx.queue_for_poll(&set);
    eventually(
        Duration::from_secs(10),
        "the poll carrying the acknowledgement is in flight",
        || {
            let held = fwd
                .log()
                .iter()
                .any(|(b, s, _)| *s == 0 && b.contains(&jti));
            async move { held }
        },
    )
    .await;
    assert!(!w.tx.acks().contains(&jti));
    let (code, log) = stop(bin).await;
    assert_eq!(code, Some(0), "{log:?}");
    assert_eq!(
        w.tx.acks(),
        vec![jti],
        "the committed SET was not acknowledged on shutdown"
    );
    assert_eq!(w.tx.queued(), vec![], "nothing left to redeliver");
}

// ---- 5. the spec's session-revoked example ----

#[tokio::test]
async fn session_revoked_with_an_opaque_subject_revokes_that_session_and_that_subject() {
    let w = world(TransmitterOptions::default()).await;
    let h = Harness::start(
        &toml(&w, "backend = \"memory\"", &push_transmitter(&w))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    h.wait_ready().await;
    let at = now_secs() - 10;
    let iat = json!(at - 60);
    let by_sid = w.idp.mint("bob", json!({"sid": "sess-42", "iat": iat}));
    let by_sub = w.idp.mint("sess-42", json!({"iat": iat}));
    let other = w.idp.mint("bob", json!({"sid": "sess-43", "iat": iat}));
    let set =
        w.tx.sign_set(DevTransmitter::session_revoked(opaque("sess-42"), Some(at)));
    let r = push(&h.url("signals", "/ssf/tx"), &set).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    let url = h.url("public", "/api");
    assert_eq!(
        call(&url, &by_sid).await.status,
        StatusCode::UNAUTHORIZED,
        "the session named by the opaque subject still passes"
    );
    assert_eq!(call(&url, &by_sub).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&url, &other).await.status, StatusCode::OK);
    let fresh = w.idp.mint("bob", json!({"sid": "sess-42"}));
    assert_eq!(call(&url, &fresh).await.status, StatusCode::OK);
}

// ---- 6. the admin API and the docs agree with the code ----

#[tokio::test]
async fn lifting_an_entry_that_does_not_exist_is_404_and_names_the_wildcard_issuer() {
    let w = world(TransmitterOptions::default()).await;
    let h = Harness::start(
        &toml(&w, "backend = \"memory\"", &push_transmitter(&w))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    h.wait_ready().await;
    let at = now_secs() - 10;
    // An opaque subject names no issuer: the block lives under "*".
    let set = w.tx.sign_set(DevTransmitter::account_disabled(
        opaque("u-9"),
        None,
        Some(at),
    ));
    assert_eq!(
        push(&h.url("signals", "/ssf/tx"), &set).await.status,
        StatusCode::ACCEPTED
    );
    let iss = w.idp.issuer_url();
    let named = json!({"type": "subject", "iss": iss, "sub": "u-9"});
    let r = admin_post(&h.admin_url("/admin/unblock"), json!({"key": named})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "not_found");
    assert_eq!(
        body["message"],
        "no blocks entry for this key (nothing changed); an entry for the same value exists under issuer \"*\": SETs whose subject names no issuer (opaque ids) are stored there"
    );
    let tok = w.idp.mint("u-9", json!({}));
    assert_eq!(
        call(&h.url("public", "/api"), &tok).await.status,
        StatusCode::UNAUTHORIZED,
        "still blocked"
    );
    let any = json!({"type": "subject", "iss": "*", "sub": "u-9"});
    let r = admin_post(
        &h.admin_url("/admin/unblock"),
        json!({"key": any, "at": at + 1}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"stored": {"op": "unblock", "key": any, "at": at + 1}, "changed": 1})
    );
    assert_eq!(
        call(&h.url("public", "/api"), &tok).await.status,
        StatusCode::OK
    );
    // A lift older than what is recorded is stored and changes nothing: said so.
    let r = admin_post(
        &h.admin_url("/admin/unblock"),
        json!({"key": any, "at": at}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["changed"], 0);
    // Unbind and delete of absent entries, too.
    for (path, body) in [
        (
            "/admin/unbind",
            json!({"key": {"type": "session", "iss": iss, "sid": "nope"}}),
        ),
        (
            "/admin/delete",
            json!({"table": "revocations", "key": named}),
        ),
    ] {
        let r = admin_post(&h.admin_url(path), body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text());
    }
    // Narrowing writes report what they changed.
    let r = admin_post(
        &h.admin_url("/admin/revoke"),
        json!({"key": named, "at": at}),
    )
    .await;
    assert_eq!(r.json()["changed"], 1);
    let r = admin_post(
        &h.admin_url("/admin/revoke"),
        json!({"key": named, "at": at - 5}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["changed"].clone()),
        (StatusCode::OK, json!(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_refused_during_a_redis_outage_is_enforced_here_and_listed_as_local_only() {
    let w = world(TransmitterOptions::default()).await;
    let mut redis = Redis::start(false);
    let prefix = format!("t{}:", cae_proxy::dev::random_id(4));
    let dir = tempfile::tempdir().unwrap();
    let store = fleet_store(&redis, &prefix, "a", dir.path());
    let h = Harness::start_in(
        dir,
        &toml(&w, &store, &push_transmitter(&w))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    h.wait_ready().await;
    let at = now_secs() - 10;
    let tok = w.idp.mint("outage", json!({"iat": at - 60}));
    let key = json!({"type": "subject", "iss": w.idp.issuer_url(), "sub": "outage"});
    redis.stop();
    let r = admin_post(&h.admin_url("/admin/revoke"), json!({"key": key, "at": at})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        call(&h.url("public", "/api"), &tok).await.status,
        StatusCode::UNAUTHORIZED,
        "refused writes that narrow access stay enforced here (fail closed)"
    );
    let list = admin_get(&h.admin_url("/admin/entries/revocations"))
        .await
        .json();
    assert_eq!(
        list["entries"],
        json!([{"key": key, "revoked_at": at, "local_only": true}])
    );
    let m = get(&client(), &h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "cae_store_local_only_entries"), 1.0, "{m}");

    redis.spawn();
    eventually(Duration::from_secs(10), "the retry is stored", || {
        let url = h.admin_url("/admin/revoke");
        let key = key.clone();
        async move {
            admin_post(&url, json!({"key": key, "at": at})).await.status == StatusCode::OK
        }
    })
    .await;
    let list = admin_get(&h.admin_url("/admin/entries/revocations"))
        .await
        .json();
    assert_eq!(list["entries"], json!([{"key": key, "revoked_at": at}]));
    let m = get(&client(), &h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "cae_store_local_only_entries"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_mode_a_verification_asked_for_by_one_replica_is_accepted_by_another() {
    let w = world(mgmt_tx()).await;
    let redis = Redis::start(false);
    let prefix = format!("t{}:", cae_proxy::dev::random_id(4));
    let fwd = Forwarder::start().await;
    fwd.hold.store(true, Ordering::SeqCst);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a_store = fleet_store(&redis, &prefix, "a", da.path());
    let a = Harness::start_in(
        da,
        &toml(&w, &a_store, &managed_push(&w, &fwd))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "A asked for a verification",
        || {
            let n = verifications(&fwd).len();
            async move { n == 1 }
        },
    )
    .await;
    let v = verifications(&fwd)[0].0.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}vstate:*"))
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(keys.len(), 1, "the state is kept in Redis: {keys:?}");
    // Replica B (plain push, same transmitter) gets the verification A asked for.
    let b_store = fleet_store(&redis, &prefix, "b", db.path());
    let b = Harness::start_in(
        db,
        &toml(&w, &b_store, &push_transmitter(&w))
            .replace("log_level = \"info\"", "log_level = \"warn\""),
    )
    .await;
    b.wait_ready().await;
    let r = push(&b.url("signals", "/ssf/tx"), &v).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    // Delivered again, to A this time: a repeat, fleet-wide.
    let r = push(&a.url("signals", "/ssf/managed"), &v).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::ACCEPTED, ""));
    let m = get(&client(), &a.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains(r#"cae_sets_received_total{transmitter="managed",event="verification",result="duplicate"} 1"#),
        "{m}"
    );
    a.wait_ready().await;
}
