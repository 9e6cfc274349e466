//! Load-benchmark helper (benches/load/run.sh): `gen` writes keys, JWKS, PEMs, token lists and a
//! store with a million revocations; `probe` measures SET push → first refused request latency;
//! `handshakes` drives one TLS 1.3 connection per request (full or resumed handshakes); `idle`
//! opens and holds keep-alive connections; `sink` is an upstream that reads every request body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::store::{Batch, Change, Durable, RedbStore, SubjectKey};
use serde_json::json;

const ISS: &str = "https://idp.bench.example";
const TX_ISS: &str = "https://tx.bench.example";
const AUD: &str = "api://bench";

fn now() -> i64 {
    cae_proxy::store::now_secs()
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn claims(sub: &str, sid: &str, iat: i64) -> serde_json::Value {
    json!({"iss": ISS, "sub": sub, "aud": AUD, "iat": iat, "nbf": iat, "exp": iat + 6 * 3600,
           "sid": sid, "jti": format!("jti-{sub}"), "xms_cc": ["cp1"], "scp": "read",
           "ipaddr": "127.0.0.1"})
}

fn gen(dir: &Path, tokens: usize, revocations: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let rs = SigningKey::generate_with_kid(KeyAlg::Rs256, "bench-rs256").unwrap();
    let es = SigningKey::generate_with_kid(KeyAlg::Es256, "bench-es256").unwrap();
    let tx = SigningKey::generate_with_kid(KeyAlg::Rs256, "bench-tx").unwrap();
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    w("issuer-rs256.pem", rs.private_pem());
    w("issuer-es256.pem", es.private_pem());
    w("transmitter.pem", tx.private_pem());
    w("rs256.pub.pem", rs.public_pem());
    w("es256.pub.pem", es.public_pem());
    w(
        "jwks.json",
        json!({"keys": [rs.public_jwk(), es.public_jwk()]}).to_string(),
    );
    w(
        "tx-jwks.json",
        json!({"keys": [tx.public_jwk()]}).to_string(),
    );
    let t0 = now() - 30;
    w(
        "token-rs256.txt",
        rs.sign(None, &claims("repeat-user", "repeat-sid", t0)) + "\n",
    );
    w(
        "token-es256.txt",
        es.sign(None, &claims("repeat-user", "repeat-sid", t0)) + "\n",
    );
    for (key, file) in [(&rs, "tokens-rs256.txt"), (&es, "tokens-es256.txt")] {
        let mut out = String::new();
        for i in 0..tokens {
            out.push_str(&key.sign(None, &claims(&format!("user-{i}"), &format!("sid-{i}"), t0)));
            out.push('\n');
        }
        w(file, out);
    }
    if revocations > 0 {
        let path = dir.join("store-revoked.redb");
        let _ = std::fs::remove_file(&path);
        let store = RedbStore::open(&path, false).unwrap();
        let changes = (0..revocations)
            .map(|i| Change::Revoke {
                key: SubjectKey::Subject {
                    iss: ISS.into(),
                    sub: format!("revoked-user-{i:08}"),
                },
                at: now(),
            })
            .collect();
        store
            .commit(&Batch {
                changes,
                set_id: None,
                now: now(),
            })
            .unwrap();
    }
    println!(
        "wrote {} (tokens: {tokens} per algorithm, revocations: {revocations})",
        dir.display()
    );
}

async fn probe(dir: &Path, proxy: &str, push: &str, auth: &str, n: usize) {
    let rs = SigningKey::from_private_pem(
        KeyAlg::Rs256,
        "bench-rs256",
        &std::fs::read_to_string(dir.join("issuer-rs256.pem")).unwrap(),
    )
    .unwrap();
    let tx = SigningKey::from_private_pem(
        KeyAlg::Rs256,
        "bench-tx",
        &std::fs::read_to_string(dir.join("transmitter.pem")).unwrap(),
    )
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let get = |token: String| {
        let client = client.clone();
        let url = proxy.to_string();
        async move {
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client
                .request(req)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let mut lat = Vec::new();
    let run = cae_proxy::dev::random_id(4);
    for i in 0..n {
        let (sub, sid) = (format!("probe-{run}-{i}"), format!("probe-sid-{run}-{i}"));
        let token = rs.sign(None, &claims(&sub, &sid, now() - 5));
        assert_eq!(
            get(token.clone()).await,
            200,
            "probe token accepted before the push"
        );
        let set = tx.sign(
            Some(json!({"typ": "secevent+jwt"})),
            &json!({"iss": TX_ISS, "jti": format!("probe-{run}-{i}"), "iat": now(), "aud": "cae-proxy",
                "sub_id": {"format": "complex", "session": {"format": "opaque", "id": sid}, "user": {"format": "iss_sub", "iss": ISS, "sub": sub}},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": now()}}}),
        );
        // The clock starts when the push is sent; the probe asks with the revoked token
        // meanwhile, so the time to the first refusal does not wait for the 202.
        let t0 = Instant::now();
        let req = http::Request::post(push)
            .header("content-type", "application/secevent+jwt")
            .header("authorization", auth)
            .body(http_body_util::Full::new(bytes::Bytes::from(set)))
            .unwrap();
        let pushed = tokio::spawn(client.request(req));
        let refused_after = loop {
            if get(token.clone()).await == 401 {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "revocation not enforced within 5 s"
            );
        };
        let status = pushed
            .await
            .unwrap()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        assert_eq!(status, 202, "push accepted");
        lat.push(refused_after.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        json!({"n": n, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)})
    );
}

/// The TLS 1.3 client of `handshakes` and `idle`: trusts only the benchmark CA and offers X25519
/// only, as OpenSSL 3.0's wrk and h2load do (rustls would otherwise offer X25519MLKEM768, which
/// the rustls server picks and nginx 1.22 cannot, and the servers would not do the same work).
/// Sessions are resumed only when asked.
fn tls_client(ca: &Path, resume: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in cae_proxy::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(4)
    } else {
        rustls::client::Resumption::disabled()
    };
    cfg
}

/// Address, TLS server name and path of an `http(s)://IP:PORT/path` URL.
fn target(url: &str) -> (String, rustls::pki_types::ServerName<'static>, String) {
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    (format!("{host}:{port}"), name, path)
}

/// The status code of a response's first line (0 when there is none).
fn status_of(response: &[u8]) -> u16 {
    response
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// utime + stime (clock ticks) of every process in process group `pgid`, as run.sh's cpu_ticks.
fn group_cpu_ticks(pgid: i32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if f.len() > 12 && f[2].parse::<i32>().ok() == Some(pgid) {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    total
}

/// One request on a fresh TLS connection with `Connection: close`, read to the server's close:
/// the status and whether the handshake was a resumption.
async fn one_shot(
    tls: &tokio_rustls::TlsConnector,
    addr: &str,
    name: &rustls::pki_types::ServerName<'static>,
    request: &[u8],
) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls.connect(name.clone(), tcp).await?;
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    s.write_all(request).await?;
    let mut buf = Vec::with_capacity(512);
    match s.read_to_end(&mut buf).await {
        Ok(_) => {}
        // A close without close_notify after the response is still a complete exchange.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok((status_of(&buf), resumed))
}

/// New TLS 1.3 connections per second: `conns` clients, each opening a connection, sending one
/// request with the bearer token and `Connection: close`, reading the response to the close, and
/// starting over. With `resume`, each client keeps its own session cache (as separate clients
/// would) and resumes with the last ticket it got; without, every handshake is full. Requests
/// completed in the `measure` window after `warmup` are counted; the server's CPU (process group
/// `pgid`) is sampled at the window's edges. Prints one JSON line.
#[allow(clippy::too_many_arguments)]
async fn handshakes(
    url: &str,
    ca: &Path,
    token: &str,
    conns: usize,
    warmup: Duration,
    measure: Duration,
    resume: bool,
    pgid: i32,
) {
    let (addr, name, path) = target(url);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let shared = Arc::new(tls_client(ca, false));
    let start = tokio::time::Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(from).await;
        let c0 = group_cpu_ticks(pgid);
        tokio::time::sleep_until(until).await;
        group_cpu_ticks(pgid) - c0
    });
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let cfg = if resume {
            Arc::new(tls_client(ca, true))
        } else {
            shared.clone()
        };
        let (addr, name, request) = (addr.clone(), name.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let tls = tokio_rustls::TlsConnector::from(cfg);
            // (latencies µs, 2xx, other statuses or I/O errors, resumed handshakes, first error)
            let (mut lat, mut ok, mut bad, mut resumed) = (Vec::new(), 0u64, 0u64, 0u64);
            let mut first_err = None;
            loop {
                let t0 = tokio::time::Instant::now();
                if t0 >= until {
                    break;
                }
                let r = one_shot(&tls, &addr, &name, request.as_bytes()).await;
                let t1 = tokio::time::Instant::now();
                if t1 < from || t1 > until {
                    continue;
                }
                lat.push((t1 - t0).as_micros() as u64);
                match r {
                    Ok((status, res)) => {
                        if (200..300).contains(&status) {
                            ok += 1;
                        } else {
                            bad += 1;
                        }
                        resumed += u64::from(res);
                    }
                    Err(e) => {
                        bad += 1;
                        first_err.get_or_insert(e.to_string());
                    }
                }
            }
            (lat, ok, bad, resumed, first_err)
        }));
    }
    let (mut lat, mut ok, mut bad, mut resumed, mut first_err) = (Vec::new(), 0, 0, 0, None);
    for t in tasks {
        let (l, o, b, r, e) = t.await.unwrap();
        lat.extend(l);
        ok += o;
        bad += b;
        resumed += r;
        first_err = first_err.or(e);
    }
    let ticks = cpu.await.unwrap();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let requests = ok + bad;
    println!(
        "{}",
        json!({"requests": requests, "ok": ok, "non2xx": bad, "resumed": resumed,
               "rps": requests as f64 / measure.as_secs_f64(), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
               "cpu_ticks": ticks, "first_error": first_err})
    );
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body) and returns its status, leaving
/// the connection open.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let complete = match length {
            Some(len) => buf.len() >= end + 4 + len,
            None => buf.ends_with(b"0\r\n\r\n"),
        };
        if complete {
            return Ok(status_of(&buf));
        }
    }
}

/// One kept-alive connection (TLS when `tls` is given) that has served one request.
async fn open_idle(
    addr: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    request: Arc<String>,
) -> std::io::Result<Box<dyn std::any::Any + Send>> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let bad = |status| std::io::Error::other(format!("status {status}"));
    match tls {
        Some((connector, name)) => {
            let mut s = connector.connect(name, tcp).await?;
            s.write_all(request.as_bytes()).await?;
            match read_response(&mut s).await? {
                200 => Ok(Box::new(s)),
                status => Err(bad(status)),
            }
        }
        None => {
            let mut s = tcp;
            s.write_all(request.as_bytes()).await?;
            match read_response(&mut s).await? {
                200 => Ok(Box::new(s)),
                status => Err(bad(status)),
            }
        }
    }
}

/// Opens `conns` keep-alive connections (at most 200 being set up at once), sends one request
/// with the bearer token on each, writes `{"open": n, "failed": m, "error": …}` to `ready`, then
/// holds them, idle, until killed.
async fn idle(url: &str, ca: Option<&Path>, token: &str, conns: usize, ready: &Path) {
    let (addr, name, path) = target(url);
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ));
    let connector = ca.map(|ca| tokio_rustls::TlsConnector::from(Arc::new(tls_client(ca, false))));
    let limit = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let tls = connector.clone().map(|c| (c, name.clone()));
        let (addr, request) = (addr.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let r = open_idle(addr, tls, request).await;
            drop(permit);
            r
        }));
    }
    let (mut held, mut failed, mut error) = (Vec::with_capacity(conns), 0, None);
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => held.push(c),
            Err(e) => {
                failed += 1;
                error.get_or_insert(e.to_string());
            }
        }
    }
    std::fs::write(
        ready,
        json!({"open": held.len(), "failed": failed, "error": error}).to_string(),
    )
    .unwrap();
    std::future::pending::<()>().await;
}

/// An upstream that reads every request body to its end before answering `received N`, so an
/// upload is only complete once its last byte has crossed the proxy (nginx `return 200` answers
/// first and discards the body afterwards).
async fn sink(listen: &str) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut body = req.into_body();
                    let mut n = 0usize;
                    while let Some(frame) = body.frame().await {
                        n += frame?.data_ref().map_or(0, |d| d.len());
                    }
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(format!("received {n}\n")),
                    )))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => gen(&PathBuf::from(arg(&args, "--dir", "target/bench")), arg(&args, "--tokens", "2000").parse().unwrap(), arg(&args, "--revocations", "1000000").parse().unwrap()),
        Some("probe") => {
            rt().block_on(probe(
                &PathBuf::from(arg(&args, "--dir", "target/bench")),
                &arg(&args, "--proxy", "http://127.0.0.1:18080/"),
                &arg(&args, "--push", "http://127.0.0.1:18090/ssf/bench"),
                &arg(&args, "--auth", "Bearer bench-push"),
                arg(&args, "--n", "50").parse().unwrap(),
            ));
        }
        Some("handshakes") => rt().block_on(handshakes(
            &arg(&args, "--url", "https://127.0.0.1:18443/"),
            &PathBuf::from(arg(&args, "--ca", "target/bench/tls/ca.pem")),
            arg(&args, "--token", "").trim(),
            arg(&args, "--conns", "64").parse().unwrap(),
            Duration::from_secs_f64(arg(&args, "--warmup", "1").parse().unwrap()),
            Duration::from_secs_f64(arg(&args, "--seconds", "5").parse().unwrap()),
            args.iter().any(|a| a == "--resume"),
            arg(&args, "--pgid", "0").parse().unwrap(),
        )),
        Some("idle") => {
            let ca = args.iter().any(|a| a == "--ca").then(|| PathBuf::from(arg(&args, "--ca", "")));
            rt().block_on(idle(
                &arg(&args, "--url", "http://127.0.0.1:18080/"),
                ca.as_deref(),
                arg(&args, "--token", "").trim(),
                arg(&args, "--conns", "10000").parse().unwrap(),
                &PathBuf::from(arg(&args, "--ready", "idle-ready.json")),
            ))
        }
        Some("sink") => rt().block_on(sink(&arg(&args, "--listen", "127.0.0.1:18081"))),
        _ => eprintln!("usage: benchkit gen --dir D [--tokens N] [--revocations M] | probe --dir D --proxy URL --push URL [--auth A] [--n N] | handshakes --url URL --ca PEM --token T [--conns N] [--warmup S] [--seconds S] [--resume] [--pgid G] | idle --url URL [--ca PEM] --token T [--conns N] --ready FILE | sink --listen ADDR"),
    }
}
