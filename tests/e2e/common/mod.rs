//! End-to-end test support: the real proxy on 127.0.0.1:0 from a TOML file in a temp dir (or the
//! real binary), TLS material made with rcgen, plain/TLS HTTP/1.1 and HTTP/2 clients, and the
//! helpers every concern shares (configuration builder, metrics, waiting, admin API calls).
#![allow(dead_code)]

pub mod config;
pub mod gateways;
pub mod hostile;
pub mod metrics;
pub mod net;
pub mod netns;
pub mod otlp;
pub mod procfs;
pub mod redis_server;
pub mod wait;

pub use config::*;
pub use metrics::metric;
pub use net::*;
pub use wait::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cae_proxy::config::Config;
use cae_proxy::{Proxy, StartOptions};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub type TestClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A running proxy with its configuration file.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub proxy: Proxy,
}

impl Harness {
    /// Writes `toml` (with `{dir}` replaced by the temp dir) and starts the proxy from it.
    pub async fn start(toml: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::start_in(dir, toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Harness {
        let config_path = dir.path().join("cae-proxy.toml");
        std::fs::write(
            &config_path,
            toml.replace("{dir}", &dir.path().display().to_string()),
        )
        .expect("write config");
        let config =
            Config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let proxy = Proxy::start(
            config,
            StartOptions {
                config_path: Some(config_path.clone()),
                on_reload: None,
            },
        )
        .await
        .expect("proxy starts");
        Harness {
            dir,
            config_path,
            proxy,
        }
    }

    /// Rewrites the configuration file (for reload tests).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(
            &self.config_path,
            toml.replace("{dir}", &self.dir.path().display().to_string()),
        )
        .expect("write config");
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.proxy.addr(listener).expect("listener exists")
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.proxy.admin_addr().expect("admin listener")
        )
    }

    /// Waits (bounded) until `/readyz` says ready: keys loaded, streams verified.
    pub async fn wait_ready(&self) {
        let c = client();
        let url = self.admin_url("/readyz");
        eventually(READY_WITHIN, "the proxy to be ready", || async {
            get(&c, &url, &[]).await.status == StatusCode::OK
        })
        .await;
    }

    /// The admin listener's `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        get(&client(), &self.admin_url("/metrics"), &[])
            .await
            .text()
    }
}

/// How long a log line may take to appear.
pub const LOG_WITHIN: Duration = Duration::from_secs(10);

/// How long a proxy may take to become ready (keys fetched, streams verified).
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// TLS material for one test: a CA, a server certificate for localhost/127.0.0.1, a client certificate.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn certs(dir: &std::path::Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cae-proxy test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server cert");
    let ckey = KeyPair::generate().expect("client key");
    let mut cparams = CertificateParams::new(Vec::<String>::new()).expect("params");
    cparams
        .distinguished_name
        .push(DnType::CommonName, "test client");
    let ccert = cparams.signed_by(&ckey, &ca, &ca_key).expect("client cert");
    let w = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    // A second client of the same CA (dir/client2.pem, dir/client2.key), for tests that tell
    // clients apart.
    let ckey2 = KeyPair::generate().expect("client key");
    let mut cparams2 = CertificateParams::new(Vec::<String>::new()).expect("params");
    cparams2
        .distinguished_name
        .push(DnType::CommonName, "second test client");
    let ccert2 = cparams2
        .signed_by(&ckey2, &ca, &ca_key)
        .expect("client cert");
    w("client2.pem", ccert2.pem());
    w("client2.key", ckey2.serialize_pem());
    Certs {
        ca: w("ca.pem", ca.pem()),
        cert: w("server.pem", cert.pem()),
        key: w("server.key", key.serialize_pem()),
        client_cert: w("client.pem", ccert.pem()),
        client_key: w("client.key", ckey.serialize_pem()),
    }
}

fn tls_config(certs: Option<&Certs>, client_auth: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(c) = certs {
        for cert in cae_proxy::tls::load_certs(&c.ca).expect("ca") {
            roots.add(cert).expect("add root");
        }
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (certs, client_auth) {
        (Some(c), true) => b
            .with_client_auth_cert(
                cae_proxy::tls::load_certs(&c.client_cert).expect("cert"),
                cae_proxy::tls::load_key(&c.client_key).expect("key"),
            )
            .expect("client auth"),
        _ => b.with_no_client_auth(),
    }
}

fn build(tls: rustls::ClientConfig, h2_only: bool) -> TestClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if h2_only {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2_only)
        .build(https)
}

/// Plain HTTP/1.1 client (also speaks https with no trusted roots: use `tls_client`).
pub fn client() -> TestClient {
    build(tls_config(None, false), false)
}

/// Plain HTTP/1.1 client whose connections come from `local` (another loopback address such as
/// 127.0.0.2 tells a client apart from a gateway on 127.0.0.1).
pub fn client_from(local: std::net::IpAddr) -> TestClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_local_address(Some(local));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(None, false))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// HTTPS (HTTP/1.1) client trusting the test CA, presenting the given client certificate.
pub fn tls_client_as(certs: &Certs, cert: &std::path::Path, key: &std::path::Path) -> TestClient {
    let as_client = Certs {
        ca: certs.ca.clone(),
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        client_cert: cert.to_path_buf(),
        client_key: key.to_path_buf(),
    };
    build(tls_config(Some(&as_client), true), false)
}

/// HTTPS client trusting the test CA; `h2` selects HTTP/2 by ALPN, else HTTP/1.1.
pub fn tls_client(certs: &Certs, h2: bool, client_auth: bool) -> TestClient {
    build(tls_config(Some(certs), client_auth), h2)
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    try_send(c, method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

pub async fn try_send(
    c: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| cae_proxy::errors::Chain(&e).to_string())?;
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version,
    })
}

pub async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    send(c, Method::GET, url, headers, Bytes::new()).await
}

/// `Bearer <token>`, an `Authorization` value.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// GET `url` with `Authorization: Bearer <token>`.
pub async fn call_with(url: &str, token: &str) -> Reply {
    get(&client(), url, &[("authorization", &bearer(token))]).await
}

/// POST `body` as JSON to the admin API at `url`, with the admin token.
pub async fn admin_post(url: &str, body: serde_json::Value) -> Reply {
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

/// GET the admin API at `url` with the admin token; expects 200 and returns the JSON body.
pub async fn admin_get(url: &str) -> serde_json::Value {
    let r = get(&client(), url, &[("authorization", ADMIN)]).await;
    assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
    r.json()
}

/// The JSON of the `claims` parameter of a claims challenge (`WWW-Authenticate`), which is
/// standard base64.
pub fn decode_claims(header: &str) -> serde_json::Value {
    use base64::Engine;
    let b64 = header
        .split("claims=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no claims parameter in {header}"));
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("standard base64"),
    )
    .expect("claims JSON")
}

/// Runs `script` with `sh -c`, as a user pasting a printed command would (on the blocking pool);
/// expects success and returns the standard output.
pub async fn shell(script: &str) -> String {
    let script = script.to_string();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh (and curl) must be installed");
        assert!(
            out.status.success(),
            "{script}\nexit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    })
    .await
    .expect("the shell task")
}

/// Runs the real `cae-proxy` binary with `args` (`CAE_ADMIN_TOKEN` set to `env_token`, else
/// unset); returns (exit code, stdout, stderr).
pub async fn cli(args: &[&str], env_token: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cae-proxy"));
    cmd.args(args).env_remove("CAE_ADMIN_TOKEN");
    if let Some(t) = env_token {
        cmd.env("CAE_ADMIN_TOKEN", t);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Raw bytes over a plain TCP connection; returns what the server sent until it closed or `wait` passed.
pub async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// The real binary, started with a configuration file; its JSON log tells the bound addresses.
pub struct Binary {
    pub child: std::process::Child,
    pub addrs: std::collections::HashMap<String, std::net::SocketAddr>,
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    /// Set once the thread that reads stderr into `stderr` met its end: every line the process
    /// wrote is in `stderr`.
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Binary {
    /// Starts `cae-proxy run` and waits (bounded) until `expect` listeners logged their address.
    pub fn start(config: &std::path::Path, expect: usize) -> Binary {
        Binary::start_with_hook(config, expect, None, |_| {})
    }

    /// [`Binary::start`], calling `early` with the pid as soon as a log line with the message
    /// `at` appears (before the listeners are up, when `at` comes earlier in the start).
    pub fn start_with_hook(
        config: &std::path::Path,
        expect: usize,
        at: Option<&str>,
        early: impl FnOnce(u32),
    ) -> Binary {
        Binary::start_inner(&[], config, expect, at, early)
    }

    /// [`Binary::start`] through a command prefix (`ip netns exec NAME`: the process is the
    /// proxy itself once it starts, so its pid is the proxy's).
    pub fn start_via(prefix: &[String], config: &std::path::Path, expect: usize) -> Binary {
        Binary::start_inner(prefix, config, expect, None, |_| {})
    }

    fn start_inner(
        prefix: &[String],
        config: &std::path::Path,
        expect: usize,
        at: Option<&str>,
        early: impl FnOnce(u32),
    ) -> Binary {
        use std::io::BufRead;
        let bin = env!("CARGO_BIN_EXE_cae-proxy");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        let mut child = cmd
            .args([
                "run",
                "--config",
                &config.display().to_string(),
                "--log-format",
                "json",
            ])
            .env_remove("CAE_PROXY_CONFIG")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn cae-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = lines.clone();
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stderr_done.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut early = Some(early);
        let mut addrs = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while addrs.len() < expect {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "cae-proxy did not report {expect} listeners (exit: {:?}); log: {:#?}",
                    child.try_wait().ok().flatten(),
                    lines.lock().unwrap()
                );
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if at.is_some_and(|at| v["message"] == at) {
                if let Some(f) = early.take() {
                    f(child.id());
                }
            }
            if v["message"] == "listening" {
                let name = v["listener"].as_str().unwrap_or_default().to_string();
                let addr = v["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("addr field");
                addrs.insert(name, addr);
            }
        }
        Binary {
            child,
            addrs,
            stderr: lines,
            stderr_done,
        }
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addrs[listener])
    }

    pub fn admin_url(&self, path: &str) -> String {
        self.url("admin", path)
    }

    /// Waits (bounded) until the admin listener's `/readyz` says ready.
    pub async fn wait_ready(&self) {
        let c = client();
        let url = self.admin_url("/readyz");
        let ready = poll_until(READY_WITHIN, || async {
            let r = try_send(&c, Method::GET, &url, &[], Bytes::new()).await;
            r.is_ok_and(|r| r.status == StatusCode::OK).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "cae-proxy never became ready; log: {:?}",
            self.log()
        );
    }

    /// The admin listener's `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        get(&client(), &self.admin_url("/metrics"), &[])
            .await
            .text()
    }

    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.child.id() as i32, sig);
    }

    /// Waits (bounded) for the process to exit; returns its exit code, `None` if it is still
    /// running after `within` (or was killed by a signal). Once it exited, [`log`](Self::log)
    /// holds every line it wrote.
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let status = poll_until_blocking(within, || self.child.try_wait().expect("try_wait"));
        if status.is_some() {
            let done = &self.stderr_done;
            poll_until_blocking(LOG_WITHIN, || {
                done.load(std::sync::atomic::Ordering::SeqCst).then_some(())
            })
            .expect("the log reader to reach the end of the exited process's stderr");
        }
        status.and_then(|s| s.code())
    }

    /// Waits (bounded) for the process to exit without blocking the runtime; its exit code.
    /// Once it exited, [`log`](Self::log) holds every line it wrote.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = poll_until(within, || {
            std::future::ready(child.try_wait().expect("try_wait"))
        })
        .await;
        if status.is_some() {
            let done = &self.stderr_done;
            let read = poll_until(LOG_WITHIN, || {
                std::future::ready(done.load(std::sync::atomic::Ordering::SeqCst).then_some(()))
            })
            .await;
            read.expect("the log reader to reach the end of the exited process's stderr");
        }
        status.and_then(|s| s.code())
    }

    /// The log lines read so far: while the process runs, a line it just wrote may not be here
    /// yet (wait for it with [`wait_log`](Self::wait_log)); after [`wait`](Self::wait) or
    /// [`wait_exit`](Self::wait_exit) saw it exit, all of them.
    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The log lines that are JSON objects, parsed.
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        self.log()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for the first JSON log line whose `message` is `message`.
    pub async fn wait_message(&self, message: &str) -> serde_json::Value {
        self.wait_log(message, |v| v["message"] == message).await
    }

    /// Waits (bounded) for a JSON log line satisfying `pred`; returns the first one.
    pub async fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let found = poll_until(LOG_WITHIN, || async {
            self.json_log().into_iter().find(|v| pred(v))
        })
        .await;
        found.unwrap_or_else(|| panic!("no log line {what}; log: {:#?}", self.log()))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; pid is our own child.
    unsafe {
        libc::kill(pid, sig);
    }
}
