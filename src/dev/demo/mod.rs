//! `cae-proxy demo` and `cae-proxy dev issuer|transmitter`: continuous access evaluation shown live
//! on loopback (development issuer, transmitter, echo upstream and the real proxy in one process),
//! narrated with real HTTP calls, plus the development servers on their own. Not for production.
//!
//! The narration ([`narrate`]) checks every answer (exact status, `WWW-Authenticate` shape, decoded
//! claims) and returns a [`Report`]; `demo --once` exits 0 only when every step passed.
//!
//! - `style.rs`: terminal styling and the narration's line layout
//! - `client.rs`: the demo's HTTP client (one answer, read whole, with a deadline)
//! - `report.rs`: the outcome of each step and of the whole narration
//! - `answers.rs`: how a step shows and checks an answer (challenge, claims, token, upstream)
//! - `steps.rs`: the narrated steps a to f
//! - `try_it.rs`: the copy-paste commands of the interactive demo
//! - `dev_command.rs`: `cae-proxy dev issuer|transmitter`, one development server on its own

mod answers;
mod client;
mod dev_command;
mod report;
mod steps;
mod style;
mod try_it;

pub use dev_command::{main_dev, DevCommand};
pub use report::{Report, StepResult};
pub use steps::narrate;
pub use style::Style;
pub use try_it::print_try_it;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::dev::{
    DevError, DevIssuer, DevTransmitter, EchoUpstream, IssuerOptions, TransmitterOptions,
};
use crate::{Proxy, StartError, StartOptions};
use client::Http;

/// The demo configuration, built into the binary (`config/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../../config/demo.toml");

/// Fixed loopback addresses of `config/demo.toml` (the demo fails clearly when one is taken).
pub const DEMO_ADDRS: [(&str, &str); 6] = [
    ("proxy listener", "127.0.0.1:29080"),
    ("signals listener", "127.0.0.1:29090"),
    ("admin API", "127.0.0.1:29901"),
    ("development issuer", "127.0.0.1:29101"),
    ("development transmitter", "127.0.0.1:29102"),
    ("echo upstream", "127.0.0.1:29103"),
];

/// Exit code: a step failed or something could not start.
const EXIT_FAILED: u8 = 1;
/// Exit code: the configuration is invalid.
const EXIT_CONFIG: u8 = 2;
/// Longest wait for the proxy to load the issuer's keys.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the demo or a development server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The configuration does not parse or validate.
    #[error("invalid demo configuration:\n{0}")]
    Config(String),
    /// The configuration parses but lacks something the demo needs.
    #[error("the demo configuration cannot drive the demo: {0}")]
    Unsuitable(String),
    /// Ports needed by the demo are held by another process.
    #[error("{}", ports_in_use_message(.0))]
    PortsInUse(Vec<(String, SocketAddr)>),
    /// Binding failed for another reason.
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A development server refused to start.
    #[error("development server: {0}")]
    Dev(#[from] DevError),
    /// The proxy refused to start.
    #[error("the proxy cannot start: {0}")]
    Start(#[from] StartError),
    /// The proxy never reported ready.
    #[error("the proxy did not become ready within {}s: {last}", waited.as_secs())]
    NotReady { waited: Duration, last: String },
    /// A development server was asked to listen off loopback without `--force-public`.
    #[error("refusing to listen on {0}: not a loopback address; development servers sign tokens for anyone (pass --force-public if you really mean it)")]
    NotLoopback(SocketAddr),
    /// The runtime or signal handlers could not be set up.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

fn ports_in_use_message(ports: &[(String, SocketAddr)]) -> String {
    let list = ports
        .iter()
        .map(|(what, addr)| format!("  {addr} ({what})"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "the demo needs these loopback ports, but they are in use (by another process, or still held by a recently closed connection):\n{list}\n\
         stop that process (another `cae-proxy demo`?) or run `cae-proxy demo --config <file>` \
         with other ports"
    )
}

// ---------------------------------------------------------------------------------------------
// The running demo

/// Everything the narration needs to know about the configuration.
#[derive(Debug, Clone)]
struct Plan {
    issuer_addr: SocketAddr,
    transmitter_addr: SocketAddr,
    upstream_addr: SocketAddr,
    audience: String,
    transmitter_audience: String,
    push_path: String,
    push_authorization: Option<String>,
    api_path: String,
    admin_path: String,
    auth_context: String,
}

fn loopback_addr(what: &str, url: &str) -> Result<SocketAddr, DemoError> {
    let u = url::Url::parse(url)
        .map_err(|e| DemoError::Unsuitable(format!("{what} URL {url:?}: {e}")))?;
    let port = u
        .port_or_known_default()
        .ok_or_else(|| DemoError::Unsuitable(format!("{what} URL {url:?} has no port")))?;
    if u.scheme() != "http" || u.host_str() != Some("127.0.0.1") {
        return Err(DemoError::Unsuitable(format!(
            "{what} URL must be http://127.0.0.1:<port> (the built-in server's URL), not {url:?}"
        )));
    }
    Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

impl Plan {
    fn from_config(c: &Config) -> Result<Plan, DemoError> {
        let issuer = c
            .issuers
            .first()
            .ok_or_else(|| DemoError::Unsuitable("no [[issuer]]".into()))?;
        let transmitter = c
            .transmitters
            .first()
            .ok_or_else(|| DemoError::Unsuitable("no [[transmitter]]".into()))?;
        let push = transmitter.push.as_ref().ok_or_else(|| {
            DemoError::Unsuitable("the [[transmitter]] has no [transmitter.push]".into())
        })?;
        let step_up = c
            .routes
            .iter()
            .find(|r| r.cae.auth_context.is_some())
            .ok_or_else(|| DemoError::Unsuitable("no route with cae.auth_context".into()))?;
        let api = c
            .routes
            .iter()
            .find(|r| r.cae.auth_context.is_none() && r.cae.token_ip && r.cae.revocation)
            .ok_or_else(|| {
                DemoError::Unsuitable(
                    "no route with cae.token_ip and cae.revocation (and no auth_context)".into(),
                )
            })?;
        let upstream = api
            .upstream
            .as_ref()
            .and_then(|u| c.upstreams.get(u))
            .ok_or_else(|| DemoError::Unsuitable(format!("no upstream {:?}", api.upstream)))?;
        if !c
            .listeners
            .iter()
            .any(|l| l.role == crate::config::ListenerRole::Signals)
        {
            return Err(DemoError::Unsuitable(
                "no listener with role = \"signals\"".into(),
            ));
        }
        if !c
            .listeners
            .iter()
            .any(|l| l.role == crate::config::ListenerRole::Proxy)
        {
            return Err(DemoError::Unsuitable(
                "no listener with role = \"proxy\"".into(),
            ));
        }
        if c.admin.is_none() {
            return Err(DemoError::Unsuitable("no [admin]".into()));
        }
        Ok(Plan {
            issuer_addr: loopback_addr("issuer", &issuer.issuer)?,
            transmitter_addr: loopback_addr("transmitter issuer", &transmitter.issuer)?,
            upstream_addr: loopback_addr("upstream", &upstream.url.to_string())?,
            audience: issuer
                .audiences
                .first()
                .cloned()
                .ok_or_else(|| DemoError::Unsuitable("the issuer has no audience".into()))?,
            transmitter_audience: transmitter
                .audiences
                .first()
                .cloned()
                .ok_or_else(|| DemoError::Unsuitable("the transmitter has no audience".into()))?,
            push_path: push.path.clone(),
            push_authorization: push.authorization.as_ref().map(|s| s.expose().to_string()),
            api_path: api.path_prefix.trim_end_matches('/').to_string(),
            admin_path: step_up.path_prefix.trim_end_matches('/').to_string(),
            auth_context: step_up.cae.auth_context.clone().unwrap_or_default(),
        })
    }
}

/// The demo's servers, all in this process: issuer, transmitter, upstream and the proxy.
pub struct Demo {
    pub issuer: DevIssuer,
    pub transmitter: DevTransmitter,
    pub upstream: EchoUpstream,
    pub proxy: Proxy,
    plan: Plan,
}

/// Every address the configuration wants, for the port pre-check.
fn wanted_addrs(c: &Config, plan: &Plan) -> Vec<(String, SocketAddr)> {
    let mut v = vec![
        ("development issuer".to_string(), plan.issuer_addr),
        ("development transmitter".to_string(), plan.transmitter_addr),
        ("echo upstream".to_string(), plan.upstream_addr),
    ];
    for l in &c.listeners {
        v.push((format!("proxy listener {:?}", l.name), l.address));
    }
    if let Some(a) = &c.admin {
        v.push(("admin API".to_string(), a.address));
    }
    v
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            DemoError::PortsInUse(vec![(what.to_string(), addr)])
        } else {
            DemoError::Bind {
                what: what.to_string(),
                addr,
                source,
            }
        }
    })
}

impl Demo {
    /// Parses `toml` (relative paths against `base`) and starts everything on its addresses.
    /// Every taken port is reported at once, before anything starts.
    pub async fn start(toml: &str, base: &Path) -> Result<Demo, DemoError> {
        let config = Config::parse(toml, base).map_err(|e| DemoError::Config(e.to_string()))?;
        let plan = Plan::from_config(&config)?;
        let taken: Vec<(String, SocketAddr)> = wanted_addrs(&config, &plan)
            .into_iter()
            .filter(|(_, addr)| {
                addr.port() != 0
                    && matches!(std::net::TcpListener::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
            })
            .collect();
        if !taken.is_empty() {
            return Err(DemoError::PortsInUse(taken));
        }
        let issuer = bind("development issuer", plan.issuer_addr).await?;
        let transmitter = bind("development transmitter", plan.transmitter_addr).await?;
        let upstream = bind("echo upstream", plan.upstream_addr).await?;
        Demo::start_with(config, plan, issuer, transmitter, upstream).await
    }

    /// The built-in demo configuration on free ports (for tests: nothing fixed is needed).
    pub async fn start_ephemeral() -> Result<Demo, DemoError> {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        let issuer = bind("development issuer", any).await?;
        let transmitter = bind("development transmitter", any).await?;
        let upstream = bind("echo upstream", any).await?;
        let mut toml = DEMO_TOML.to_string();
        for (fixed, l) in [
            ("127.0.0.1:29101", &issuer),
            ("127.0.0.1:29102", &transmitter),
            ("127.0.0.1:29103", &upstream),
        ] {
            let port = l.local_addr().map_err(DevError::Io)?.port();
            toml = toml.replace(fixed, &format!("127.0.0.1:{port}"));
        }
        for fixed in ["127.0.0.1:29080", "127.0.0.1:29090", "127.0.0.1:29901"] {
            toml = toml.replace(fixed, "127.0.0.1:0");
        }
        let config =
            Config::parse(&toml, Path::new(".")).map_err(|e| DemoError::Config(e.to_string()))?;
        let plan = Plan::from_config(&config)?;
        Demo::start_with(config, plan, issuer, transmitter, upstream).await
    }

    async fn start_with(
        config: Config,
        plan: Plan,
        issuer: TcpListener,
        transmitter: TcpListener,
        upstream: TcpListener,
    ) -> Result<Demo, DemoError> {
        let issuer = DevIssuer::start(
            issuer,
            IssuerOptions {
                audience: plan.audience.clone(),
                ..IssuerOptions::default()
            },
        )?;
        let transmitter = DevTransmitter::start(
            transmitter,
            TransmitterOptions {
                audience: plan.transmitter_audience.clone(),
                // `sub` in POST /dev/events names a user of the demo's issuer.
                subject_issuer: Some(format!("http://{}", plan.issuer_addr)),
                ..TransmitterOptions::default()
            },
        )?;
        let upstream = EchoUpstream::start(upstream)?;
        let proxy = Proxy::start(config, StartOptions::default())
            .await
            .map_err(|e| match e {
                StartError::Bind {
                    listener,
                    address,
                    source,
                } if source.kind() == std::io::ErrorKind::AddrInUse => {
                    DemoError::PortsInUse(vec![(format!("proxy listener {listener:?}"), address)])
                }
                e => DemoError::Start(e),
            })?;
        let demo = Demo {
            issuer,
            transmitter,
            upstream,
            proxy,
            plan,
        };
        demo.wait_ready().await?;
        Ok(demo)
    }

    async fn wait_ready(&self) -> Result<(), DemoError> {
        let http = Http::new();
        let url = format!("{}/readyz", self.admin_url());
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            match http.send(Method::GET, &url, &[], Bytes::new()).await {
                Ok(a) if a.status == StatusCode::OK => return Ok(()),
                Ok(a) => last = a.text(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DemoError::NotReady {
            waited: READY_TIMEOUT,
            last,
        })
    }

    fn listener_url(&self, role: crate::config::ListenerRole) -> String {
        let snap = self.proxy.shared.snapshot.load();
        let name = snap
            .config
            .listeners
            .iter()
            .find(|l| l.role == role)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        match self.proxy.addr(&name) {
            Some(a) => format!("http://{a}"),
            None => "http://127.0.0.1:0".to_string(),
        }
    }

    /// `http://<proxy listener>`.
    pub fn proxy_url(&self) -> String {
        self.listener_url(crate::config::ListenerRole::Proxy)
    }

    /// The SSF push endpoint on the signals listener.
    pub fn push_url(&self) -> String {
        format!(
            "{}{}",
            self.listener_url(crate::config::ListenerRole::Signals),
            self.plan.push_path
        )
    }

    /// `http://<admin listener>`.
    pub fn admin_url(&self) -> String {
        match self.proxy.admin_addr() {
            Some(a) => format!("http://{a}"),
            None => "http://127.0.0.1:0".to_string(),
        }
    }

    /// Stops the proxy (graceful drain) and the development servers.
    pub async fn shutdown(self) {
        let _ = self.proxy.shutdown().await;
        self.issuer.shutdown();
        self.transmitter.shutdown();
        self.upstream.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points used by the binary

/// Installs a quiet global subscriber (`warn`, or `RUST_LOG`) on stderr, so the narration stays readable.
pub fn init_quiet_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, DemoError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() -> Result<(), DemoError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DemoError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DemoError::Runtime)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn report_error(command: &str, e: &DemoError) -> ExitCode {
    let style = Style {
        color: std::io::stderr().is_terminal(),
    };
    eprintln!("{} {e}", style.red(&format!("cae-proxy {command}:")));
    match e {
        DemoError::Config(_) => ExitCode::from(EXIT_CONFIG),
        _ => ExitCode::from(EXIT_FAILED),
    }
}

/// `cae-proxy demo [--once] [--config FILE]`. With `--once`: 0 when every step passed, 1 when a
/// step failed. Without: 0 after Ctrl-C. Always 1 when something could not start (a port in use)
/// and 2 for an invalid configuration.
pub fn main_demo(once: bool, config: Option<&Path>) -> ExitCode {
    init_quiet_logging();
    let (text, base) = match config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.parent().unwrap_or(Path::new(".")).to_path_buf()),
            Err(e) => {
                return report_error(
                    "demo",
                    &DemoError::Config(format!("cannot read {}: {e}", p.display())),
                )
            }
        },
        None => (DEMO_TOML.to_string(), std::path::PathBuf::from(".")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return report_error("demo", &e),
    };
    rt.block_on(async move {
        let demo = match Demo::start(&text, &base).await {
            Ok(d) => d,
            Err(e) => return report_error("demo", &e),
        };
        let style = Style::detect();
        let mut stdout = std::io::stdout();
        let report = narrate(&demo, &mut stdout, style).await;
        let code = if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        };
        if !once {
            print_try_it(&demo, &mut stdout, style);
            let _ = stdout.flush();
            if let Err(e) = stop_signal().await {
                demo.shutdown().await;
                return report_error("demo", &e);
            }
            println!();
            println!("stopping the demo");
            // Stopped by the user: a clean shutdown (step failures were shown above).
            let _ = stdout.flush();
            demo.shutdown().await;
            return ExitCode::SUCCESS;
        }
        let _ = stdout.flush();
        demo.shutdown().await;
        code
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid_and_uses_the_documented_ports() {
        let c = Config::parse(DEMO_TOML, Path::new(".")).unwrap();
        let plan = Plan::from_config(&c).unwrap();
        for (_, addr) in DEMO_ADDRS {
            assert!(DEMO_TOML.contains(addr), "{addr} missing from demo.toml");
        }
        assert_eq!(plan.issuer_addr.port(), 29101);
        assert_eq!(plan.transmitter_addr.port(), 29102);
        assert_eq!(plan.upstream_addr.port(), 29103);
        assert_eq!(plan.auth_context, "c1");
        assert_eq!(plan.api_path, "/api");
        assert_eq!(plan.admin_path, "/api/admin");
    }

    #[test]
    fn ports_in_use_message_names_every_port() {
        let m = ports_in_use_message(&[
            (
                "proxy listener \"public\"".into(),
                "127.0.0.1:29080".parse().unwrap(),
            ),
            ("admin API".into(), "127.0.0.1:29901".parse().unwrap()),
        ]);
        assert!(m.contains("127.0.0.1:29080 (proxy listener \"public\")"));
        assert!(m.contains("127.0.0.1:29901 (admin API)"));
    }
}
