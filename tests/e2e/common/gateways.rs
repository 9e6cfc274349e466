//! Real gateways (nginx, Envoy, Caddy, Traefik) as child processes on loopback, each configured
//! from a shipped example in `docs/deploy/` with its placeholders (`cae-proxy:9100`, `app:8080`,
//! the listen port) replaced by the test's addresses.
//!
//! No port is guessed: nginx (`NGINX="3;"`), Caddy (`bind fd/3`) and Traefik (systemd socket
//! activation: `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`) get a listening socket the test bound
//! on 127.0.0.1:0; Envoy binds port 0 itself and tells its port through its admin API (itself on
//! port 0, its address written to `--admin-address-path`). Readiness is polled with a deadline.
//! Every gateway runs in its own process group, killed (SIGKILL) when the [`Gateway`] drops.
//!
//! Binaries: `$CAE_NGINX`, `$CAE_ENVOY`, `$CAE_CADDY`, `$CAE_TRAEFIK`, else the program on `PATH`
//! (`.ci/run` installs them all and sets `CAE_REQUIRE_GATEWAYS=1`). An absent one skips the test
//! with a message, unless `CAE_REQUIRE_GATEWAYS=1`, where it is a failure.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{client, try_send};

/// Set to `1` to make an absent gateway binary a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CAE_REQUIRE_GATEWAYS";

/// How long a gateway may take to start.
const START_WITHIN: Duration = Duration::from_secs(30);
/// Pause between two readiness polls.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// The gateways the tests can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Envoy,
    Caddy,
    Traefik,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Envoy => "envoy",
            Kind::Caddy => "caddy",
            Kind::Traefik => "traefik",
        }
    }

    /// The environment variable naming the binary.
    pub fn env_var(self) -> &'static str {
        match self {
            Kind::Nginx => "CAE_NGINX",
            Kind::Envoy => "CAE_ENVOY",
            Kind::Caddy => "CAE_CADDY",
            Kind::Traefik => "CAE_TRAEFIK",
        }
    }
}

/// The gateway's executable: `$CAE_<KIND>` when set, else the program on `PATH` (or in
/// `/usr/sbin`, where Debian puts nginx). `None`, with a message on stderr, when there is none;
/// a panic instead when `CAE_REQUIRE_GATEWAYS=1`.
pub fn binary(kind: Kind) -> Option<PathBuf> {
    let found = match std::env::var_os(kind.env_var()).filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join(kind.name()))
            .find(|p| p.is_file()),
    };
    if found.is_none() {
        let why = format!(
            "{} not found (set {} to its binary or put `{}` on PATH; .ci/run installs it)",
            kind.name(),
            kind.env_var(),
            kind.name()
        );
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{why}; {REQUIRE_ENV}=1 makes that a failure");
        }
        eprintln!("skipped: {why}");
    }
    found
}

/// `template` with every `from` replaced by its `to`. Panics when a `from` does not occur: the
/// shipped example and the test would have drifted apart.
pub fn substitute(template: &str, pairs: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "the example configuration no longer contains {from:?}; update tests/common/gateways.rs"
        );
        out = out.replace(from, to);
    }
    out
}

/// A socket bound on 127.0.0.1 that never listens: a connection to its address is refused for
/// as long as it lives (and nothing else can take the port meanwhile). Stands for a cae-proxy
/// that is down.
pub fn refusing() -> (socket2::Socket, SocketAddr) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = s
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet address");
    (s, addr)
}

/// A gateway process of one test, with its files in a temp dir; killed when dropped.
pub struct Gateway {
    pub kind: Kind,
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the gateway wrote on stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Panics with the log when the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited during start-up ({status}); its log:\n{}",
                self.kind.name(),
                self.log()
            );
        }
    }

    fn deadline_passed(&self, since: Instant, waiting_for: &str) {
        if since.elapsed() > START_WITHIN {
            panic!(
                "{} did not get ready within {START_WITHIN:?} ({waiting_for}); its log:\n{}",
                self.kind.name(),
                self.log()
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // The whole process group: nginx's workers too.
        // SAFETY: kill(2) has no memory effects; the group is our child's own.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback listener to hand to a gateway (std: it is inherited, not served here).
fn loopback_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// Starts `cmd` in its own process group, output to `dir/gateway.log`, with `inherit[i]` as
/// file descriptor `3 + i`.
fn spawn(
    kind: Kind,
    mut cmd: Command,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    inherit: &[&std::net::TcpListener],
) -> Gateway {
    let log = std::fs::File::create(dir.path().join("gateway.log")).expect("create gateway.log");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .process_group(0);
    let fds: Vec<RawFd> = inherit.iter().map(|l| l.as_raw_fd()).collect();
    if !fds.is_empty() {
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) run.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in fds.iter().enumerate() {
                    let target = 3 + i as RawFd;
                    // Any descriptor we are about to overwrite must not be one still to move.
                    if fds[i + 1..].contains(&target) {
                        return Err(std::io::Error::other("listener fds overlap 3.."));
                    }
                    if fd == target {
                        // dup2 onto itself keeps close-on-exec: clear it instead.
                        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, target) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", kind.name()));
    Gateway {
        kind,
        addr,
        child,
        dir,
    }
}

/// Sends a request line without a Host header: nginx and Caddy (Go's net/http) answer it with a
/// 400 of their own, so a status line means "accepting, configuration loaded", and no request
/// reaches the auth service or the upstream.
async fn answers_bad_request(addr: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf.starts_with(b"HTTP/1.1 400")
    )
}

async fn wait_bad_request(gw: &mut Gateway) {
    let since = Instant::now();
    while !answers_bad_request(gw.addr).await {
        gw.check_alive();
        gw.deadline_passed(since, "no HTTP answer on its listener");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// GET on a gateway's own API; `None` when it does not answer (yet).
async fn api_get(url: &str) -> Option<(StatusCode, Bytes)> {
    try_send(&client(), Method::GET, url, &[], Bytes::new())
        .await
        .ok()
        .map(|r| (r.status, r.body))
}

/// nginx with `site` (docs/deploy/nginx-auth-request.conf: `upstream`s and a `server`, included
/// in `http {}`), its `listen 8080` replaced by an inherited 127.0.0.1:0 socket (`NGINX="3;"`).
/// nginx 1.22 crashes (SIGSEGV) with inherited sockets and `master_process off`, so a master
/// and one worker run; the worker keeps root's uid when the test runs as root.
pub async fn nginx(site: &str, authz: SocketAddr, app: SocketAddr) -> Option<Gateway> {
    let bin = binary(Kind::Nginx)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = loopback_listener();
    let addr = listener.local_addr().expect("addr");
    let site = substitute(
        site,
        &[
            ("server cae-proxy:9100;", format!("server {authz};")),
            ("server app:8080;", format!("server {app};")),
            ("listen 8080;", format!("listen {addr};")),
        ],
    );
    std::fs::write(dir.path().join("site.conf"), site).expect("write site.conf");
    let d = dir.path().display();
    // SAFETY: geteuid(2) has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    let main = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}\npid {d}/nginx.pid;\n\
         error_log stderr notice;\nevents {{ worker_connections 256; }}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d}/client_body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         include {d}/site.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(format!("{d}/"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-e", "stderr"])
        .env("NGINX", "3;");
    let mut gw = spawn(Kind::Nginx, cmd, dir, addr, &[&listener]);
    drop(listener);
    wait_bad_request(&mut gw).await;
    Some(gw)
}

/// Caddy with `caddyfile` (docs/deploy/Caddyfile), its site `:8080` bound to an inherited
/// 127.0.0.1:0 socket (`bind fd/3`, Caddy 2.9 and later), admin API off, data in the temp dir.
pub async fn caddy(caddyfile: &str, authz: SocketAddr, app: SocketAddr) -> Option<Gateway> {
    let bin = binary(Kind::Caddy)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = loopback_listener();
    let addr = listener.local_addr().expect("addr");
    let body = substitute(
        caddyfile,
        &[
            (
                "forward_auth cae-proxy:9100 {",
                format!("forward_auth {authz} {{"),
            ),
            ("reverse_proxy app:8080", format!("reverse_proxy {app}")),
            (":8080 {", ":8080 {\n\tbind fd/3".to_string()),
        ],
    );
    let global = "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n}\n";
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, format!("{global}{body}")).expect("write Caddyfile");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("HOME", dir.path());
    let mut gw = spawn(Kind::Caddy, cmd, dir, addr, &[&listener]);
    drop(listener);
    wait_bad_request(&mut gw).await;
    Some(gw)
}

/// Traefik with `dynamic` (docs/deploy/traefik-forwardauth.yml, file provider) and a static
/// configuration of the test: entry points `web` (clients) and `traefik` (its API) on inherited
/// 127.0.0.1:0 sockets by socket activation. Ready once the API shows router `app@file` enabled.
pub async fn traefik(dynamic: &str, authz: SocketAddr, app: SocketAddr) -> Option<Gateway> {
    let bin = binary(Kind::Traefik)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let web = loopback_listener();
    let api = loopback_listener();
    let addr = web.local_addr().expect("addr");
    let api_addr = api.local_addr().expect("addr");
    let dynamic = substitute(
        dynamic,
        &[
            (
                "address: \"http://cae-proxy:9100/authz\"",
                format!("address: \"http://{authz}/authz\""),
            ),
            ("url: \"http://app:8080\"", format!("url: \"http://{app}\"")),
        ],
    );
    let d = dir.path().display();
    std::fs::write(dir.path().join("dynamic.yml"), dynamic).expect("write dynamic.yml");
    // The entry points' addresses are ignored: the sockets named `web` and `traefik` are used.
    let static_config = format!(
        "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n\
         entryPoints:\n  web:\n    address: \"127.0.0.1:0\"\n  traefik:\n    address: \"127.0.0.1:0\"\n\
         api:\n  insecure: true\n  dashboard: false\n\
         providers:\n  file:\n    filename: \"{d}/dynamic.yml\"\n    watch: false\n\
         log:\n  level: INFO\n  noColor: true\n"
    );
    let path = dir.path().join("traefik.yml");
    std::fs::write(&path, static_config).expect("write traefik.yml");
    // LISTEN_PID must be the pid of traefik itself: a shell sets it to its own pid ($$) and
    // execs traefik, which keeps that pid.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin)
        .arg(format!("--configFile={}", path.display()))
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "web:traefik");
    let mut gw = spawn(Kind::Traefik, cmd, dir, addr, &[&web, &api]);
    drop(web);
    drop(api);
    let since = Instant::now();
    let router = format!("http://{api_addr}/api/http/routers/app@file");
    loop {
        if let Some((StatusCode::OK, body)) = api_get(&router).await {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["status"] == "enabled" {
                break;
            }
        }
        gw.check_alive();
        gw.deadline_passed(since, "router app@file not enabled in its API");
        tokio::time::sleep(POLL_EVERY).await;
    }
    Some(gw)
}

/// Envoy with `bootstrap` (docs/deploy/envoy-ext-authz-http.yaml or -grpc.yaml): listener and
/// admin on 127.0.0.1:0; the admin address comes from `--admin-address-path`, the listener's
/// port from the admin API `/listeners?format=json` once `/ready` says LIVE.
pub async fn envoy(bootstrap: &str, authz: SocketAddr, app: SocketAddr) -> Option<Gateway> {
    let bin = binary(Kind::Envoy)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = |a: SocketAddr| format!("address: {}, port_value: {}", a.ip(), a.port());
    let bootstrap = substitute(
        bootstrap,
        &[
            (
                "address: 0.0.0.0, port_value: 8080",
                "address: 127.0.0.1, port_value: 0".to_string(),
            ),
            ("port_value: 9901", "port_value: 0".to_string()),
            ("address: cae-proxy, port_value: 9100", sock(authz)),
            ("address: app, port_value: 8080", sock(app)),
        ],
    );
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap).expect("write envoy.yaml");
    let admin_path = dir.path().join("admin-address");
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"]);
    let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut gw = spawn(Kind::Envoy, cmd, dir, placeholder, &[]);
    let since = Instant::now();
    let admin = loop {
        let text = std::fs::read_to_string(&admin_path).unwrap_or_default();
        if let Ok(a) = text.trim().parse::<SocketAddr>() {
            break a;
        }
        gw.check_alive();
        gw.deadline_passed(since, "no admin address written");
        tokio::time::sleep(POLL_EVERY).await;
    };
    loop {
        if let Some((StatusCode::OK, _)) = api_get(&format!("http://{admin}/ready")).await {
            if let Some((StatusCode::OK, body)) =
                api_get(&format!("http://{admin}/listeners?format=json")).await
            {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let port = v["listener_statuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|l| l["name"] == "public")
                    .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
                    .unwrap_or(0);
                if let Ok(port @ 1..) = u16::try_from(port) {
                    gw.addr = SocketAddr::from(([127, 0, 0, 1], port));
                    return Some(gw);
                }
            }
        }
        gw.check_alive();
        gw.deadline_passed(since, "admin /ready and listener `public` with a port");
        tokio::time::sleep(POLL_EVERY).await;
    }
}
