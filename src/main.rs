//! The `cae-proxy` binary: CLI, exit codes, logging, signals. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

use cae_proxy::config::{Config, LogFormat};
use cae_proxy::{Proxy, StartOptions};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: the configuration is invalid.
const EXIT_CONFIG: u8 = 2;
/// Exit code: a runtime failure (bind, store, TLS material).
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser)]
#[command(
    name = "cae-proxy",
    version,
    about = "Continuous Access Evaluation gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(
            long,
            short,
            env = "CAE_PROXY_CONFIG",
            default_value = "config/cae-proxy.toml"
        )]
        config: PathBuf,
        /// Log format override: json or text.
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Validate a configuration file: prints every error with its TOML path.
    Check {
        #[arg(
            long,
            short,
            env = "CAE_PROXY_CONFIG",
            default_value = "config/cae-proxy.toml"
        )]
        config: PathBuf,
    },
    /// Show continuous access evaluation live on loopback (issuer, transmitter, upstream, proxy).
    Demo {
        /// Run the narrated steps once and exit: 0 when every step passed, else 1.
        #[arg(long)]
        once: bool,
        /// Another demo configuration instead of the built-in config/demo.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Development servers on their own (NOT for production).
    Dev {
        #[command(subcommand)]
        server: cae_proxy::dev::demo::DevCommand,
    },
    /// Revoke tokens issued before now (or --at) through a running proxy's admin API.
    Revoke(AdminArgs),
    /// Block an account: every token of the subject is refused until unblocked.
    Block(AdminArgs),
    /// Lift an account block.
    Unblock(AdminArgs),
    /// See and steer a transmitter's managed SSF stream through a running proxy's admin API.
    Stream {
        #[command(subcommand)]
        action: StreamCommand,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// subject, session, token, tenant, device or email
    kind: String,
    /// The sub, sid, jti, tid, device id or e-mail address.
    value: String,
    /// Issuer the subject, session or token belongs to ("*" = any).
    #[arg(long)]
    iss: Option<String>,
    /// Event time, epoch seconds (default: now).
    #[arg(long)]
    at: Option<i64>,
    #[command(flatten)]
    conn: AdminConn,
}

/// The `cae-proxy stream` commands (SSF 1.0 §8.1), one admin API call each.
#[derive(Subcommand)]
enum StreamCommand {
    /// Every managed stream as this proxy sees it (GET /admin/streams).
    List {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// The stream as the transmitter reports it now: configuration and status.
    Show(StreamArgs),
    /// Ask for a verification event and wait for it (exit 1 when it does not arrive).
    Verify(WaitArgs),
    /// Pause the stream at the transmitter (it holds events until resumed).
    Pause(StatusArgs),
    /// Enable the stream again.
    Resume(StatusArgs),
    /// Disable the stream (the transmitter drops events until enabled).
    Disable(StatusArgs),
    /// Add a subject (RFC 9493 JSON) to the stream.
    AddSubject(SubjectArgs),
    /// Remove a subject (RFC 9493 JSON): its events are no longer sent.
    RemoveSubject(SubjectArgs),
    /// Delete the stream at the transmitter (no events until `recreate`).
    Delete(StreamArgs),
    /// Delete, discover again, create and verify the stream.
    Recreate(WaitArgs),
    /// Update the stream (PATCH) where it differs from [transmitter.stream].
    Update(StreamArgs),
    /// Replace the stream's configuration (PUT) with [transmitter.stream].
    Replace(StreamArgs),
}

#[derive(clap::Args)]
struct StreamArgs {
    /// The transmitter's name in the configuration.
    transmitter: String,
    #[command(flatten)]
    conn: AdminConn,
}

#[derive(clap::Args)]
struct WaitArgs {
    /// The transmitter's name in the configuration.
    transmitter: String,
    /// Longest wait for the verification event, seconds (default: verify_timeout).
    #[arg(long)]
    timeout: Option<f64>,
    #[command(flatten)]
    conn: AdminConn,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The transmitter's name in the configuration.
    transmitter: String,
    /// Why, as the transmitter records it.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    conn: AdminConn,
}

#[derive(clap::Args)]
struct SubjectArgs {
    /// The transmitter's name in the configuration.
    transmitter: String,
    /// The subject identifier, e.g. '{"format":"email","email":"alice@example.com"}'.
    subject: String,
    /// add-subject: the subject's identity was verified (SSF §8.1.3.2).
    #[arg(long)]
    verified: bool,
    #[command(flatten)]
    conn: AdminConn,
}

/// Where the admin API is and how to authenticate to it.
#[derive(clap::Args)]
struct AdminConn {
    /// Admin listener URL.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin: String,
    /// Admin bearer token.
    #[arg(long, env = "CAE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// CA certificate(s) (PEM) of an https admin listener with a private CA.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate chain (PEM) for an admin listener that requires one; with --key.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, log_format } => run(&config, log_format.as_deref()),
        Command::Demo { once, config } => cae_proxy::dev::demo::main_demo(once, config.as_deref()),
        Command::Dev { server } => cae_proxy::dev::demo::main_dev(server),
        Command::Revoke(a) => admin_call("revoke", a),
        Command::Block(a) => admin_call("block", a),
        Command::Unblock(a) => admin_call("unblock", a),
        Command::Stream { action } => stream_call(action),
    }
}

/// Runs `f` on a current-thread runtime and prints its answer: stdout and exit 0, or
/// `<what> failed: …` on stderr and exit 1.
fn run_client<F>(what: &str, f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<String, String>>,
{
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(f));
    match result {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what} failed: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// One admin API call of a `cae-proxy stream` command.
struct StreamRequest {
    conn: AdminConn,
    method: http::Method,
    path: String,
    body: Option<serde_json::Value>,
    /// The verification wait asked for, seconds.
    wait: Option<f64>,
}

impl StreamRequest {
    fn new(conn: AdminConn, method: http::Method, transmitter: &str, action: Option<&str>) -> Self {
        StreamRequest {
            conn,
            method,
            path: cae_proxy::admin_client::stream_path(transmitter, action),
            body: None,
            wait: None,
        }
    }

    fn body(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// The command's name and its call (or why it cannot be made).
fn stream_request(action: StreamCommand) -> (&'static str, Result<StreamRequest, String>) {
    use cae_proxy::admin_client::subject;
    use http::Method;
    use serde_json::json;
    let status = |a: StatusArgs, status: &str| {
        let mut body = json!({"status": status});
        if let Some(r) = a.reason {
            body["reason"] = json!(r);
        }
        Ok(StreamRequest::new(a.conn, Method::POST, &a.transmitter, Some("status")).body(body))
    };
    let wait = |a: WaitArgs, action: &str| {
        let mut r = StreamRequest::new(a.conn, Method::POST, &a.transmitter, Some(action));
        if let Some(t) = a.timeout {
            r = r.body(json!({"timeout_seconds": t}));
            r.wait = Some(t);
        }
        Ok(r)
    };
    let plain = |a: StreamArgs, method: Method, action: Option<&str>| {
        Ok(StreamRequest::new(a.conn, method, &a.transmitter, action))
    };
    match action {
        StreamCommand::List { conn } => (
            "stream list",
            Ok(StreamRequest {
                conn,
                method: Method::GET,
                path: "/admin/streams".into(),
                body: None,
                wait: None,
            }),
        ),
        StreamCommand::Show(a) => ("stream show", plain(a, Method::GET, None)),
        StreamCommand::Verify(a) => ("stream verify", wait(a, "verify")),
        StreamCommand::Pause(a) => ("stream pause", status(a, "paused")),
        StreamCommand::Resume(a) => ("stream resume", status(a, "enabled")),
        StreamCommand::Disable(a) => ("stream disable", status(a, "disabled")),
        StreamCommand::AddSubject(a) => (
            "stream add-subject",
            subject(&a.subject).map_err(|e| e.to_string()).map(|s| {
                let mut body = json!({"subject": s});
                if a.verified {
                    body["verified"] = json!(true);
                }
                StreamRequest::new(a.conn, Method::POST, &a.transmitter, Some("subjects:add"))
                    .body(body)
            }),
        ),
        StreamCommand::RemoveSubject(a) => (
            "stream remove-subject",
            match subject(&a.subject) {
                Err(e) => Err(e.to_string()),
                Ok(_) if a.verified => Err("--verified applies to add-subject only".into()),
                Ok(s) => Ok(StreamRequest::new(
                    a.conn,
                    Method::POST,
                    &a.transmitter,
                    Some("subjects:remove"),
                )
                .body(json!({"subject": s}))),
            },
        ),
        StreamCommand::Delete(a) => ("stream delete", plain(a, Method::DELETE, None)),
        StreamCommand::Recreate(a) => ("stream recreate", wait(a, "recreate")),
        StreamCommand::Update(a) => ("stream update", plain(a, Method::POST, Some("update"))),
        StreamCommand::Replace(a) => ("stream replace", plain(a, Method::POST, Some("replace"))),
    }
}

fn stream_call(action: StreamCommand) -> ExitCode {
    let (what, request) = stream_request(action);
    run_client(what, async move {
        let r = request?;
        let fetcher = r.conn.fetcher()?;
        // A verification may take its whole wait (default verify_timeout, at most 300 s).
        let wait = r.wait.unwrap_or(300.0).clamp(1.0, 300.0);
        cae_proxy::admin_client::request(
            &fetcher,
            &r.conn.admin,
            r.conn.admin_token.as_deref(),
            r.method,
            &r.path,
            r.body,
            std::time::Duration::from_secs_f64(wait + 60.0),
        )
        .await
        .map_err(|e| e.to_string())
    })
}

impl AdminConn {
    fn fetcher(&self) -> Result<cae_proxy::fetch::Fetcher, String> {
        cae_proxy::admin_client::fetcher(
            self.cacert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )
        .map_err(|e| e.to_string())
    }
}

fn admin_call(action: &str, a: AdminArgs) -> ExitCode {
    use cae_proxy::admin_client;
    run_client(action, async move {
        let key =
            admin_client::key(&a.kind, &a.value, a.iss.as_deref()).map_err(|e| e.to_string())?;
        let fetcher = a.conn.fetcher()?;
        let token = a.conn.admin_token.as_deref();
        admin_client::call(&fetcher, &a.conn.admin, token, action, key, a.at)
            .await
            .map_err(|e| e.to_string())
    })
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
            println!(
                "{}: ok ({}, {}, {}, {})",
                path.display(),
                n(c.listeners.len(), "listener"),
                n(c.routes.len(), "route"),
                n(c.issuers.len(), "issuer"),
                n(c.transmitters.len(), "transmitter")
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!("{}: {} error(s)", path.display(), errs.0.len());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Installs the global subscriber. Lines are written by a background thread (never by a request
/// task); when that thread falls behind, loggers wait rather than drop lines. Keep the guard alive:
/// dropping it flushes what is queued.
fn init_logging(
    format: LogFormat,
    override_fmt: Option<&str>,
    level: &str,
) -> (FilterHandle, tracing_appender::non_blocking::WorkerGuard) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = match override_fmt {
        Some("json") => true,
        Some("text") => false,
        _ => match format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        },
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer);
        registry.with(layer).init();
    } else {
        let ansi = std::io::stderr().is_terminal();
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .init();
    }
    (handle, guard)
}

fn run(path: &Path, log_format: Option<&str>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{}: {} error(s)", path.display(), errs.0.len());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (handle, _log_guard) = init_logging(
        config.server.log_format,
        log_format,
        &config.server.log_level,
    );
    // A current-thread runtime: with one worker it serves everything; with several
    // (`server::workers`) the proxy and authz listeners are served by the workers' own runtimes
    // and this one keeps the signals and admin listeners and the background tasks.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %cae_proxy::errors::Chain(&e), "cannot start the runtime");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let on_reload: Box<dyn Fn(&Config) + Send + Sync> = Box::new(move |c: &Config| {
        if let Ok(f) = EnvFilter::try_new(&c.server.log_level) {
            let _ = handle.reload(f);
        }
    });
    let opts = StartOptions {
        config_path: Some(path.to_path_buf()),
        on_reload: Some(on_reload),
    };
    runtime.block_on(async move {
        // Before the start (store replay, TLS, binding): until a handler is installed, SIGHUP's
        // default action kills the process. A SIGHUP received while starting reloads once running.
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %cae_proxy::errors::Chain(&e), "cannot install signal handlers");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let proxy = match Proxy::start(config, opts).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %cae_proxy::errors::Chain(&e), "cannot start");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        match wait_for_signals(&proxy, hup).await {
            Ok(()) => {
                tracing::info!("shutting down: draining in-flight requests");
                let drained = proxy.shutdown().await;
                tracing::info!(drained, "stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %cae_proxy::errors::Chain(&e), "cannot install signal handlers");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}

/// SIGHUP (`hup`, installed before the start) reloads; SIGTERM/SIGINT return.
async fn wait_for_signals(
    proxy: &Proxy,
    mut hup: tokio::signal::unix::Signal,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = proxy.reload();
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}
