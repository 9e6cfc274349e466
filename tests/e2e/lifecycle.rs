//! Lifecycle end to end (real binary, real signals): SIGHUP reloads, graceful SIGTERM, TLS rotation, connection limit, CLI exit codes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers

async fn echo() -> EchoUpstream {
    EchoUpstream::start(listener().await).expect("echo upstream")
}

/// Routes of these tests need no token.
const NO_AUTH: &str = "auth = \"none\"";

/// `[server]` (log level `info`, `server_extra`), a public listener, an admin listener (for
/// `/metrics`), the memory store, the `upstreams` (name, URL) and unauthenticated `routes`
/// (name, path prefix, upstream).
fn config(server_extra: &str, upstreams: &[(&str, &str)], routes: &[(&str, &str, &str)]) -> String {
    let mut t = Toml::new()
        .log_level("info")
        .server(server_extra)
        .public()
        .admin("");
    for (name, url) in upstreams {
        t = t.upstream(name, url, "");
    }
    for (name, prefix, upstream) in routes {
        t = t.route_to(name, prefix, upstream, NO_AUTH);
    }
    t.build()
}

/// Replaces the file in one step (write aside, rename), as a deployment tool would.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A config file in a fresh temp dir.
fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cae-proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Polls `/metrics` at `url` (bounded) until `series` has the value `want`; the exposition.
async fn wait_series(c: &TestClient, url: &str, series: &str, want: f64) -> String {
    let what = format!("{series} to reach {want}");
    wait_for(Duration::from_secs(10), &what, || async {
        let m = get(c, url, &[]).await.text();
        (metric(&m, series) == Some(want)).then_some(m)
    })
    .await
}

/// The JSON log lines of the binary whose `message` is `message`.
fn log_lines(bin: &Binary, message: &str) -> Vec<Value> {
    bin.json_log()
        .into_iter()
        .filter(|v| v["message"] == message)
        .collect()
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection, kept alive: every request on it goes over the same socket, and a
/// request after the server closed it fails instead of silently reconnecting.
async fn h1_connection(addr: SocketAddr) -> H1 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h1_get(send: &mut H1, path: &str) -> Result<(StatusCode, Bytes), String> {
    tokio::time::timeout(Duration::from_secs(10), async {
        send.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let req = Request::get(path)
            .header("host", "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// Connects, sends a request and reads until the server closes: the bytes it sent back.
/// `Err` when the server neither answered nor closed within `wait`.
async fn send_and_read_all(
    addr: SocketAddr,
    req: &[u8],
    wait: Duration,
) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may already have closed: a failed write is not an answer either way.
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => Ok(out),
        // A reset (unread request bytes at close) is also a close without an answer.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!(
            "neither answered nor closed within {wait:?}; got {:?}",
            String::from_utf8_lossy(&out)
        )),
    }
}

/// An upstream that records every request body it read to the end, and answers
/// `200 received N bytes`; `/hang` never answers.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    started: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let l = listener().await;
        let rec = Recorder {
            addr: l.local_addr().unwrap(),
            started: Arc::new(AtomicUsize::new(0)),
            bodies: Arc::new(Mutex::new(Vec::new())),
        };
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let r = r.clone();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let r = r.clone();
                    async move {
                        r.started.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path().to_string();
                        if path == "/hang" {
                            std::future::pending::<()>().await;
                        }
                        let resp = match req.into_body().collect().await {
                            Ok(b) => {
                                let b = b.to_bytes();
                                let text = format!("received {} bytes", b.len());
                                r.bodies.lock().unwrap().push((path, b));
                                Response::new(Full::new(Bytes::from(text)))
                            }
                            Err(e) => {
                                let mut resp = Response::new(Full::new(Bytes::from(e.to_string())));
                                *resp.status_mut() = StatusCode::BAD_REQUEST;
                                resp
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        rec
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until `n` requests reached the upstream.
    async fn wait_started(&self, n: usize) {
        eventually(
            Duration::from_secs(10),
            "the request to reach the upstream",
            || async { self.started.load(Ordering::SeqCst) >= n },
        )
        .await;
    }
}

/// Waits (bounded) until connecting to `addr` is refused: the listener was closed.
async fn wait_refused(addr: SocketAddr) {
    let what = format!("{addr} to refuse connections");
    eventually(Duration::from_secs(10), &what, || async {
        matches!(TcpStream::connect(addr).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 1. SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_old_routing_and_a_fixed_file_adds_the_route() {
    let a = echo().await;
    let b = echo().await;
    let old = config("", &[("a", &a.url())], &[("app", "/app", "a")]);
    let (_dir, cfg) = config_file(&old);
    let bin = Binary::start(&cfg, 2);
    let c = client();
    let metrics_url = bin.url("admin", "/metrics");

    let r = get(&c, &bin.url("public", "/app/x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(
        &c,
        &bin.url("public", "/v2/x"),
        &[("x-request-id", "before")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"error": "no_route", "message": "no route matches this request", "request_id": "before"})
    );

    // The new file adds the route but has two errors: nothing of it may apply.
    let upstreams = [("a", a.url()), ("b", b.url())];
    let upstreams: Vec<(&str, &str)> = upstreams.iter().map(|(n, u)| (*n, u.as_str())).collect();
    let new = config("", &upstreams, &[("app", "/app", "a"), ("v2", "/v2", "b")]);
    let broken = config(
        "idle_timeout = \"forever\"",
        &upstreams,
        &[
            ("app", "/app", "a"),
            ("v2", "/v2", "b"),
            ("typo", "/typo", "missing"),
        ],
    );
    replace_file(&cfg, &broken);
    bin.signal(libc::SIGHUP);
    let m = wait_series(
        &c,
        &metrics_url,
        "cae_reloads_total{result=\"failed\",reason=\"\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"ok\",reason=\"\"}"),
        None
    );
    assert_eq!(metric(&m, "cae_config_generation"), Some(1.0));
    let line = bin
        .wait_message("configuration reload failed; the previous configuration keeps serving")
        .await;
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(
        line["error"],
        "server.idle_timeout (line 3, column 16): invalid duration \"forever\": expected number at 0 (examples: \"30s\", \"500ms\", \"28h 5m\"); route[2].upstream (line 29, column 12): no [upstreams.missing] is defined",
        "every error with its TOML path and position"
    );
    // The old configuration serves: /app still reaches a, /v2 is still unrouted.
    let before = a.requests();
    let r = get(&c, &bin.url("public", "/app/still"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["path"], "/app/still");
    assert_eq!(a.requests(), before + 1);
    let r = get(
        &c,
        &bin.url("public", "/v2/x"),
        &[("x-request-id", "after-broken")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["request_id"], "after-broken");
    assert_eq!(b.requests(), 0);

    // The corrected file applies on the next SIGHUP.
    replace_file(&cfg, &new);
    bin.signal(libc::SIGHUP);
    let m = wait_series(
        &c,
        &metrics_url,
        "cae_reloads_total{result=\"ok\",reason=\"\"}",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"failed\",reason=\"\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "cae_config_generation"), Some(2.0));
    assert_eq!(
        bin.wait_message("configuration reloaded").await["generation"],
        2
    );
    let r = get(&c, &bin.url("public", "/v2/x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/v2/x");
    assert_eq!(b.requests(), 1);
    let r = get(&c, &bin.url("public", "/app/y"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A file with a value of the wrong type, a route without its required `upstream`, an unknown key
/// and a route naming an undefined upstream, in the order they appear.
fn four_mistakes(upstream_url: &str) -> String {
    format!(
        "[server]
log_level = \"info\"
[[listener]]
name = \"public\"
address = \"127.0.0.1:0\"
[admin]
address = \"127.0.0.1:0\"
[store]
backend = \"memory\"
[upstreams.a]
url = \"{upstream_url}\"
[[route]]
name = \"app\"
path_prefix = \"/app\"
auth = \"none\"
[[route]]
name = \"v2\"
path_prefix = \"/v2\"
upstream = \"b\"
auth = \"none\"
strip_prefix = \"yes\"
cache = true
"
    )
}

/// The errors of [`four_mistakes`], each with its TOML path, line and column, in file order.
const FOUR_MISTAKES: [&str; 4] = [
    "route[0].upstream (line 12, column 1): required (only a route of a configuration with a role = \"authz\" listener may omit it: it then only answers authorization checks)",
    "route[1].upstream (line 19, column 12): no [upstreams.b] is defined",
    "route[1].strip_prefix (line 21, column 16): expected a boolean (true or false), found the string \"yes\"",
    "route[1].cache (line 22, column 1): unknown key (see docs/configuration.md)",
];

/// A reload of a file with a type error, a missing required key, an unknown key and a semantic
/// error, by SIGHUP and by `POST /reload`: refused with all four at once (log line and answer),
/// each with its path, line and column; the old configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_report_every_error_with_its_position_and_keep_the_old_config() {
    let a = echo().await;
    let old = config("", &[("a", &a.url())], &[("app", "/app", "a")]);
    let (_dir, cfg) = config_file(&old);
    let bin = Binary::start(&cfg, 2);
    let c = client();
    let metrics_url = bin.url("admin", "/metrics");
    let all = FOUR_MISTAKES.join("; ");

    replace_file(&cfg, &four_mistakes(&a.url()));
    bin.signal(libc::SIGHUP);
    let line = bin
        .wait_message("configuration reload failed; the previous configuration keeps serving")
        .await;
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["error"], all.as_str());
    let m = wait_series(
        &c,
        &metrics_url,
        "cae_reloads_total{result=\"failed\",reason=\"\"}",
        1.0,
    )
    .await;
    assert_eq!(metric(&m, "cae_config_generation"), Some(1.0));

    let r = send(
        &c,
        Method::POST,
        &bin.admin_url("/reload"),
        &[("x-request-id", "reload-1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"error": "bad_request", "message": all, "request_id": "reload-1"})
    );
    let m = wait_series(
        &c,
        &metrics_url,
        "cae_reloads_total{result=\"failed\",reason=\"\"}",
        2.0,
    )
    .await;
    assert_eq!(metric(&m, "cae_config_generation"), Some(1.0));
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"ok\",reason=\"\"}"),
        None
    );

    // The old configuration serves: /app reaches a (the broken file's route[0] has no upstream),
    // /v2 is still unrouted.
    let before = a.requests();
    let r = get(&c, &bin.url("public", "/app/still"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/app/still");
    assert_eq!(a.requests(), before + 1);
    let r = get(&c, &bin.url("public", "/v2/x"), &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_keep_alive_load_fails_no_request() {
    const CONNECTIONS: usize = 4;
    const MIN_REQUESTS: usize = 200;
    const RELOADS: usize = 5;
    let a = echo().await;
    let b = echo().await;
    let conf = |url: &str| config("", &[("app", url)], &[("app", "/", "app")]);
    let (_dir, cfg) = config_file(&conf(&a.url()));
    let bin = Binary::start(&cfg, 2);
    let public = bin.addrs["public"];
    let c = client();
    let metrics_url = bin.url("admin", "/metrics");

    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for n in 0..CONNECTIONS {
        let (done, stop) = (done.clone(), stop.clone());
        let mut conn = h1_connection(public).await;
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                // Every other request waits at the upstream: requests are in flight at the reloads.
                let path = if i.is_multiple_of(2) {
                    format!("/slow?ms=10&c={n}&i={i}")
                } else {
                    format!("/fast?c={n}&i={i}")
                };
                match h1_get(&mut conn, &path).await {
                    Ok((StatusCode::OK, body)) => {
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if v["method"] != "GET" {
                            failures.push(format!("{path}: body {body:?}"));
                        }
                    }
                    Ok((status, body)) => failures.push(format!("{path}: {status} {body:?}")),
                    Err(e) => failures.push(format!("{path}: {e}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            (i, failures, conn.is_closed())
        }));
    }
    let wait_done = |n: usize| {
        let done = done.clone();
        async move {
            let what = format!("{n} requests of the load");
            eventually(Duration::from_secs(15), &what, || async {
                done.load(Ordering::SeqCst) >= n
            })
            .await;
        }
    };
    for k in 0..RELOADS {
        wait_done(done.load(Ordering::SeqCst) + 20).await;
        let target = if k.is_multiple_of(2) { &b } else { &a };
        let before = target.requests();
        replace_file(&cfg, &conf(&target.url()));
        bin.signal(libc::SIGHUP);
        wait_series(
            &c,
            &metrics_url,
            "cae_reloads_total{result=\"ok\",reason=\"\"}",
            (k + 1) as f64,
        )
        .await;
        // The load now reaches the newly routed upstream.
        let what = format!("the load at the upstream routed by reload {k}");
        eventually(Duration::from_secs(10), &what, || async {
            target.requests() >= before + 5
        })
        .await;
    }
    wait_done(MIN_REQUESTS.max(done.load(Ordering::SeqCst) + 20)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut failures = Vec::new();
    for l in load {
        let (n, f, closed) = l.await.unwrap();
        assert!(!closed, "a keep-alive connection was closed by a reload");
        total += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:#?}",
        failures.len()
    );
    assert!(total >= MIN_REQUESTS, "{total}");
    println!("{total} requests on {CONNECTIONS} keep-alive connections across {RELOADS} SIGHUP reloads: 0 failed");
    // Both upstreams served: the reloads really switched routing under this load.
    assert!(a.requests() > 0 && b.requests() > 0);
    let m = get(&c, &metrics_url, &[]).await.text();
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"ok\",reason=\"\"}"),
        Some(RELOADS as f64)
    );
    assert_eq!(
        metric(&m, "cae_config_generation"),
        Some((RELOADS + 1) as f64)
    );
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"failed\",reason=\"\"}"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_while_starting_is_a_reload_not_a_kill() {
    let a = echo().await;
    // An https upstream without a CA: building the first snapshot reads the system roots, which
    // keeps the start busy for a while after the store is open.
    let text = config(
        "",
        &[("app", &a.url()), ("tls", "https://localhost:1")],
        &[("app", "/", "app"), ("tls", "/tls", "tls")],
    );
    let (_dir, cfg) = config_file(&text);
    // The store is opened before the listeners are bound: SIGHUP arrives mid-start.
    let bin = Binary::start_with_hook(&cfg, 2, Some("signal store open"), |pid| {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGHUP);
        }
    });
    let c = client();
    let r = get(&c, &bin.url("public", "/x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The signal was not lost either: it reloaded the file once the proxy ran.
    wait_series(
        &c,
        &bin.url("admin", "/metrics"),
        "cae_reloads_total{result=\"ok\",reason=\"\"}",
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Graceful shutdown

/// An authenticated request in flight finishes after SIGTERM; then the exit is 0.
#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    let toml = Toml::new()
        .log_level("info")
        .public()
        .admin_token()
        .store(&redb_store(dir.path()))
        .app(&up.url())
        .dev_issuer(&idp.issuer_url(), "")
        .route("api", "/api", "")
        .build();
    std::fs::write(&cfg, toml).unwrap();
    let mut bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let t = idp.mint("slow", json!({}));
    let url = bin.url("public", "/api/slow?ms=1500");
    let slow = tokio::spawn(async move { call_with(&url, &t).await });
    eventually(
        Duration::from_secs(10),
        "the slow request in flight at the upstream",
        || async { up.requests() > 0 },
    )
    .await;
    assert_eq!(up.requests(), 1, "the slow request reached the upstream");
    bin.signal(libc::SIGTERM);
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    let code = tokio::task::spawn_blocking(move || bin.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// The names of the threads of process `pid` (`/proc/<pid>/task/*/comm`), sorted.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect();
    names.sort();
    names
}

/// `worker_threads = 2`: two worker threads serve the public listener, each with its own
/// runtime; many kept-alive connections are all answered; SIGTERM lets a slow request on a worker
/// finish, closes the listener and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_kept_alive_connections_and_drain_on_sigterm() {
    let up = echo().await;
    let (_dir, cfg) = config_file(&config(
        "worker_threads = 2",
        &[("app", &up.url())],
        &[("all", "/", "app")],
    ));
    let mut bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let workers: Vec<String> = thread_names(bin.child.id())
        .into_iter()
        .filter(|n| n.starts_with("cae-worker"))
        .collect();
    assert_eq!(workers, ["cae-worker-0", "cae-worker-1"]);
    let public = bin.addrs["public"];
    let mut clients = Vec::new();
    for c in 0..8 {
        clients.push(tokio::spawn(async move {
            let mut send = h1_connection(public).await;
            let mut statuses = Vec::new();
            for i in 0..5 {
                let (status, body) = h1_get(&mut send, &format!("/c{c}/r{i}")).await?;
                let echoed: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                if echoed["path"] != format!("/c{c}/r{i}") {
                    return Err(format!("connection {c}, request {i}: {echoed}"));
                }
                statuses.push(status);
            }
            Ok::<_, String>(statuses)
        }));
    }
    for c in clients {
        assert_eq!(c.await.unwrap().unwrap(), [StatusCode::OK; 5]);
    }
    let url = bin.url("public", "/slow?ms=1500");
    let before = up.requests();
    let slow = tokio::spawn(async move { get(&client(), &url, &[]).await });
    eventually(
        Duration::from_secs(10),
        "the slow request in flight at the upstream",
        || async { up.requests() > before },
    )
    .await;
    bin.signal(libc::SIGTERM);
    wait_refused(public).await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "the in-flight request finished");
    assert_eq!(bin.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_upload_lets_it_finish_refuses_new_connections_and_exits_0() {
    const SIZE: usize = 256 * 1024;
    let rec = Recorder::start().await;
    let text = config(
        "shutdown_grace = \"10s\"",
        &[("app", &rec.url())],
        &[("app", "/", "app")],
    );
    let (_dir, cfg) = config_file(&text);
    let mut bin = Binary::start(&cfg, 2);
    let (public, admin) = (bin.addrs["public"], bin.addrs["admin"]);

    let body: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let mut s = TcpStream::connect(public).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body[..SIZE / 3]).await.unwrap();
    // The proxy forwards as it reads: the upstream has the request before its body is complete.
    rec.wait_started(1).await;
    let t0 = Instant::now();
    bin.signal(libc::SIGTERM);

    // Every listener stops accepting while the upload is still open.
    wait_refused(public).await;
    wait_refused(admin).await;
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "exited before the upload finished"
    );
    assert!(rec.bodies.lock().unwrap().is_empty());

    // The rest of the body, still within the grace period.
    s.write_all(&body[SIZE / 3..]).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer, then the close")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        out.ends_with(&format!("\r\n\r\nreceived {SIZE} bytes")),
        "{out}"
    );
    {
        let bodies = rec.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "/upload");
        assert!(
            bodies[0].1 == body,
            "the upstream got the whole body, intact"
        );
    }

    assert_eq!(bin.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "it exited when drained, not at the end of the grace period ({:?})",
        t0.elapsed()
    );
    // The reader thread may still be catching up with the last lines after the exit.
    assert_eq!(bin.wait_message("stopped").await["drained"], true);
    assert!(log_lines(
        &bin,
        "shutdown grace period over; closing remaining connections"
    )
    .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_completes_is_cut_at_the_grace_period_and_the_exit_is_0() {
    let rec = Recorder::start().await;
    let text = config(
        "shutdown_grace = \"1s\"",
        &[("app", &rec.url())],
        &[("app", "/", "app")],
    );
    let (_dir, cfg) = config_file(&text);
    let mut bin = Binary::start(&cfg, 2);
    let mut s = TcpStream::connect(bin.addrs["public"]).await.unwrap();
    s.write_all(b"GET /hang HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    rec.wait_started(1).await;
    let t0 = Instant::now();
    bin.signal(libc::SIGTERM);
    // docs/operations.md: exit 0 "also when the drain deadline passed: that is logged as a warning".
    let code = bin.wait_exit(Duration::from_secs(6)).await;
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "log: {:#?}", bin.log());
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}: the grace period was not given"
    );
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(bin.wait_message("stopped").await["drained"], false);
    // Logged before `stopped`, so present by now.
    let warn = log_lines(
        &bin,
        "shutdown grace period over; closing remaining connections",
    );
    assert_eq!(warn.len(), 1, "{:#?}", bin.log());
    assert_eq!(warn[0]["level"], "WARN");
    // The client got no answer: the connection just ended with the process.
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed");
    assert!(
        read.is_ok() || read.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "unexpected read error"
    );
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
}

// ---------------------------------------------------------------------------------------------
// 3. TLS certificate rotation

/// TLS handshake to `addr` as `localhost`, trusting only `ca`: the leaf the server presented.
async fn server_leaf(addr: SocketAddr, ca: &Path) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in cae_proxy::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(leaf)
}

fn leaf_der(pem: &Path) -> Vec<u8> {
    cae_proxy::tls::load_certs(pem).unwrap()[0].to_vec()
}

#[tokio::test]
async fn tls_certificates_rotate_on_reload_and_bad_files_keep_the_old_certificate() {
    let up = echo().await;
    let dir = tempfile::tempdir().unwrap();
    let a = certs(dir.path());
    let (b, c3) = {
        let (pb, pc) = (dir.path().join("b"), dir.path().join("c"));
        std::fs::create_dir(&pb).unwrap();
        std::fs::create_dir(&pc).unwrap();
        (certs(&pb), certs(&pc))
    };
    let (leaf_a, leaf_b) = (leaf_der(&a.cert), leaf_der(&b.cert));
    assert_ne!(leaf_a, leaf_b);
    let text = Toml::new()
        .tls_listener("tls", &a, false, "")
        .admin("")
        .app(&up.url())
        .route("app", "/", NO_AUTH)
        .build();
    let h = Harness::start_in(dir, &text).await;
    let addr = h.proxy.addr("tls").unwrap();
    let url = format!("https://localhost:{}/rot", addr.port());
    let ok = |r: Result<Reply, String>| {
        let r = r.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["path"], "/rot");
    };
    let https = |certs: &Certs| {
        let (c, url) = (tls_client(certs, false, false), url.clone());
        async move { try_send(&c, Method::GET, &url, &[], Bytes::new()).await }
    };

    // Certificate A.
    assert_eq!(server_leaf(addr, &a.ca).await.unwrap(), leaf_a);
    let e = server_leaf(addr, &b.ca).await.unwrap_err();
    // Every test CA has the same name: the chain fails on its signature.
    assert!(e.contains("invalid peer certificate: BadSignature"), "{e}");
    ok(https(&a).await);
    assert!(https(&b).await.is_err());

    // Rotate: certificate and key of B (another CA) in place of A's files, then reload.
    std::fs::copy(&b.cert, &a.cert).unwrap();
    std::fs::copy(&b.key, &a.key).unwrap();
    assert_eq!(h.proxy.reload().unwrap(), 2);
    assert_eq!(server_leaf(addr, &b.ca).await.unwrap(), leaf_b);
    let e = server_leaf(addr, &a.ca).await.unwrap_err();
    assert!(e.contains("invalid peer certificate: BadSignature"), "{e}");
    ok(https(&b).await);
    let e = https(&a).await.unwrap_err();
    assert!(e.contains("invalid peer certificate: BadSignature"), "{e}");

    // Bad material on reload: each reload fails, naming the file, and B keeps serving.
    let pem_b = std::fs::read_to_string(&b.cert).unwrap();
    let key_b = std::fs::read(&b.key).unwrap();
    let cert_path = a.cert.display().to_string();
    let key_path = a.key.display().to_string();
    // (what, how the files are broken, how the reload error starts)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, String);
    let cases: Vec<Case> = vec![
        (
            "garbled certificate",
            Box::new(|| std::fs::write(&a.cert, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap()),
            format!("listener tls: cannot read certificates from {cert_path}: "),
        ),
        (
            "not PEM at all",
            Box::new(|| std::fs::write(&a.cert, "garbage").unwrap()),
            format!(
                "listener tls: cannot read certificates from {cert_path}: no PEM certificate found"
            ),
        ),
        (
            "garbled key",
            Box::new(|| {
                std::fs::write(&a.cert, &pem_b).unwrap();
                std::fs::write(&a.key, "-----BEGIN PRIVATE KEY-----\n!!!!\n").unwrap();
            }),
            format!("listener tls: cannot read private key from {key_path}: "),
        ),
        (
            // Checked by validation: reported with its TOML path.
            "missing key",
            Box::new(|| std::fs::remove_file(&a.key).unwrap()),
            format!("listener[0].tls.key (line 9, column 7): file {key_path} does not exist"),
        ),
        (
            // Half a rotation: the new certificate is in place, its key not yet.
            "certificate of another key",
            Box::new(|| {
                std::fs::copy(&c3.cert, &a.cert).unwrap();
                std::fs::write(&a.key, &key_b).unwrap();
            }),
            "listener tls: TLS configuration rejected: ".to_string(),
        ),
    ];
    for (i, (what, break_it, want)) in cases.iter().enumerate() {
        break_it();
        let e = h.proxy.reload().unwrap_err().to_string();
        assert!(e.starts_with(want.as_str()), "{what}: {e}");
        assert_eq!(h.proxy.shared.snapshot.load().generation, 2, "{what}");
        assert_eq!(server_leaf(addr, &b.ca).await.unwrap(), leaf_b, "{what}");
        ok(https(&b).await);
        let m = h.metrics().await;
        assert_eq!(
            metric(&m, "cae_reloads_total{result=\"failed\",reason=\"\"}"),
            Some((i + 1) as f64),
            "{what}"
        );
    }
    let m = h.metrics().await;
    assert_eq!(
        metric(&m, "cae_reloads_total{result=\"ok\",reason=\"\"}"),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Connection limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_at_once_until_one_closes() {
    const MAX_CONNECTIONS: usize = 2;
    // docs/configuration.md (`max_connections`): "one pool with 64 extra slots"; src/lib.rs
    // sizes the semaphore `max_connections + 64`.
    const LIMIT: usize = MAX_CONNECTIONS + 64;
    let up = echo().await;
    let text = config(
        &format!("max_connections = {MAX_CONNECTIONS}"),
        &[("app", &up.url())],
        &[("app", "/", "app")],
    );
    let (_dir, cfg) = config_file(&text);
    let bin = Binary::start(&cfg, 2);
    let public = bin.addrs["public"];
    let limit_msg = "connection limit reached; closing the new connection";

    let mut open = Vec::new();
    for i in 0..LIMIT {
        let mut conn = h1_connection(public).await;
        let (status, _) = h1_get(&mut conn, &format!("/held/{i}")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "connection {i}");
        open.push(conn);
    }
    assert!(log_lines(&bin, limit_msg).is_empty());
    let req = b"GET /over HTTP/1.1\r\nhost: app.test\r\n\r\n";
    let t0 = Instant::now();
    let out = send_and_read_all(public, req, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        out.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        t0.elapsed()
    );
    let line = bin.wait_message(limit_msg).await;
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["listener"], "public");
    // The held connections still work, and the admin listener has its own budget.
    let (status, _) = h1_get(&mut open[0], "/still").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get(&client(), &bin.url("admin", "/livez"), &[])
            .await
            .status,
        StatusCode::OK
    );

    // One closes: its slot serves a new connection (bounded polling: the close is noticed
    // asynchronously).
    drop(open.pop());
    let newcomer = wait_for(
        Duration::from_secs(10),
        "the freed slot to serve a connection",
        || async {
            let mut conn = h1_connection(public).await;
            matches!(
                h1_get(&mut conn, "/newcomer").await,
                Ok((StatusCode::OK, _))
            )
            .then_some(conn)
        },
    )
    .await;
    open.push(newcomer);
    // And the limit still holds.
    let out = send_and_read_all(public, req, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        out.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. `check` and `run` exit codes

/// Runs the binary to completion (bounded): exit code, stdout, stderr.
fn cli(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
        .args(args)
        .env_remove("CAE_PROXY_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = poll_until_blocking(within, || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("cae-proxy {args:?} still running after {within:?}");
    };
    (status.code(), o.join().unwrap(), e.join().unwrap())
}

#[test]
fn check_reports_every_error_with_its_path_and_exits_2_or_prints_ok() {
    let bad = r#"
[server]
idle_timeout = "forever"
max_connections = 0
[[listener]]
name = "public"
address = "nowhere"
[store]
backend = "memory"
[upstreams.app]
url = "ftp://x"
[[route]]
upstream = "missing"
auth = "none"
"#;
    let (dir, path) = config_file(bad);
    let p = path.display().to_string();
    let (code, out, err) = cli(&["check", "--config", &p], Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "{p}: 5 error(s)\n\
             \x20 server.idle_timeout (line 3, column 16): invalid duration \"forever\": expected number at 0 (examples: \"30s\", \"500ms\", \"28h 5m\")\n\
             \x20 server.max_connections (line 4, column 19): must be at least 1\n\
             \x20 listener[0].address (line 7, column 11): \"nowhere\" is not an address like 0.0.0.0:8443\n\
             \x20 upstreams.app.url (line 11, column 7): \"ftp://x\" must be an http:// or https:// URL\n\
             \x20 route[0].upstream (line 13, column 12): no [upstreams.missing] is defined\n"
        )
    );

    // Unknown keys are reported all at once with their TOML paths (at the key), beside the
    // other errors, in file order.
    let unknown = "[server]\nlog_level = \"info\"\nnot_a_key = 1\nshutdown_grace = \"soon\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nadress = \"x\"\n";
    replace_file(&path, unknown);
    let (code, out, err) = cli(&["check", "--config", &p], Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "{p}: 3 error(s)\n\
             \x20 server.not_a_key (line 3, column 1): unknown key (see docs/configuration.md)\n\
             \x20 server.shutdown_grace (line 4, column 18): invalid duration \"soon\": expected number at 0 (examples: \"30s\", \"500ms\", \"28h 5m\")\n\
             \x20 listener[0].adress (line 7, column 1): unknown key (see docs/configuration.md)\n"
        )
    );
    // A TOML syntax error stops the parse: reported alone, by line and column.
    let broken = "[server\nlog_level = 1\n";
    replace_file(&path, broken);
    let (code, _, err) = cli(&["check", "--config", &p], Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        format!(
            "{p}: 1 error(s)\n  line 1, column 8: invalid TOML: unclosed table, expected `]`\n"
        )
    );

    let missing = dir.path().join("absent.toml").display().to_string();
    let (code, _, err) = cli(&["check", "--config", &missing], Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert!(err.contains(&format!("cannot read {missing}: ")), "{err}");

    let good = config("", &[("app", "http://127.0.0.1:9")], &[("app", "/", "app")]);
    replace_file(&path, &good);
    let (code, out, err) = cli(&["check", "--config", &p], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("{p}: ok (1 listener, 1 route, 0 issuers, 0 transmitters)\n")
    );
    assert_eq!(err, "");
}

/// `check` and `run` on a file with a type error, a missing required key, an unknown key and a
/// semantic error: all four at once, each with its TOML path, line and column; exit 2.
#[test]
fn check_and_run_report_type_missing_unknown_and_semantic_errors_at_once_with_positions() {
    let (_dir, path) = config_file(&four_mistakes("http://127.0.0.1:9"));
    let p = path.display().to_string();
    let want = format!(
        "{p}: 4 error(s)\n{}",
        FOUR_MISTAKES.map(|e| format!("  {e}\n")).concat()
    );
    let (code, out, err) = cli(&["check", "--config", &p], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert_eq!(err, want);
    let (code, out, err) = cli(
        &["run", "--config", &p, "--log-format", "json"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert_eq!(err, want);
}

#[test]
fn run_exits_2_on_an_invalid_file_before_binding_and_1_when_the_port_is_taken() {
    // A port held here: binding it would fail (exit 1), so exit 2 proves validation came first.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.redb");
    let conf = |server_extra: &str| {
        Toml::new()
            .log_level("info")
            .server(server_extra)
            .listener_at("public", &taken.to_string(), "")
            .store(&format!("path = \"{}\"", store.display()))
            .upstream("app", "http://127.0.0.1:9", "")
            .route("app", "/", NO_AUTH)
            .build()
    };
    let path = dir.path().join("cae-proxy.toml");
    let p = path.display().to_string();
    std::fs::write(&path, conf("idle_timeout = \"forever\"")).unwrap();
    let (code, out, err) = cli(
        &["run", "--config", &p, "--log-format", "json"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!("{p}: 1 error(s)\n  server.idle_timeout (line 3, column 16): invalid duration \"forever\": expected number at 0 (examples: \"30s\", \"500ms\", \"28h 5m\")\n")
    );
    assert!(!store.exists(), "the store was opened before validation");

    std::fs::write(&path, conf("")).unwrap();
    let (code, _, err) = cli(
        &["run", "--config", &p, "--log-format", "json"],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "{err}");
    let line = err
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "cannot start")
        .unwrap_or_else(|| panic!("no `cannot start` line: {err}"));
    assert_eq!(line["level"], "ERROR");
    let e = line["error"].as_str().unwrap();
    assert!(
        e.starts_with(&format!("cannot listen on {taken} (public): ")),
        "{e}"
    );
    assert!(!err.contains("\"listening\""), "{err}");
    drop(held);
}

// 6. The header-read timeout against slowloris clients is covered elsewhere: resources.rs
// `memory_and_descriptors_of_the_binary_stay_bounded_and_return_to_baseline` (300 clients
// trickling a request head past `header_read_timeout = "1s"` are all cut off, their descriptors
// returned) and forwarding.rs `slowloris_clients_do_not_starve_a_normal_client`.
