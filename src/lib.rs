//! cae-proxy: a reverse proxy that validates bearer JWTs and enforces Continuous Access Evaluation
//! (revocations, account blocks and IP bindings fed by Shared Signals) with claims challenges.
//!
//! Crate map (request flow and dependency rules in docs/architecture.md), top to bottom:
//! - [`server`], [`tls`]: sockets, TLS, HTTP/1.1 + HTTP/2, connection limits, graceful drain;
//!   `server::conn` is what a request knows of its connection
//! - [`admin`]: probes, metrics, reload and the admin API
//! - [`proxy`]: the pipeline (checks → route → authenticate → forward or challenge)
//! - [`authz`]: the authorization service of gateways (Envoy ext_authz HTTP and gRPC, nginx
//!   auth_request, Traefik and Caddy forward auth): the proxy's decision, without forwarding
//! - [`state`]: the reloadable `Snapshot` and the `Shared` state that outlives it
//! - [`fleet`]: fleet mode: replicas share changes through a Redis Stream (tailer, poll leases)
//! - [`signals`]: SSF receiver: SET verification, CAEP/RISC events, push, poll, stream management
//! - [`auth`]: keys, token validation, verified-token cache, pure decision, challenges
//! - [`store`]: revocation / block / binding tables and their durable backends
//! - [`telemetry`]: OpenTelemetry spans of proxied requests (`[tracing]`), W3C `traceparent`
//! - [`reply`]: the body type and JSON answers every listener uses
//! - [`fetch`]: outbound client for identity providers
//! - [`config`]: TOML → validated `Config` (uses nothing else in the crate)
//! - [`dev`]: development tooling, fenced off: dev issuer, transmitter and echo upstream, keys,
//!   `cae-proxy demo` and `cae-proxy dev issuer|transmitter`, the fuzz target bodies

pub(crate) mod admin;
pub mod admin_client;
pub mod auth;
pub(crate) mod authz;
pub mod config;
pub mod dev;
pub mod errors;
pub mod fetch;
pub mod fleet;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod reply;
pub(crate) mod server;
pub mod signals;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use config::{Config, ListenerRole, StoreBackend};
use server::Role;
use state::{BuildError, Shared};
use store::{Durable, MemoryStore, RedbStore, SignalStore, StoreError};

/// Shortest wait for the last span export at shutdown, even when draining took the whole grace.
const SPAN_FLUSH_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(2);

/// Concurrent connections the admin listener accepts, apart from `max_connections`.
const ADMIN_CONNECTIONS: usize = 256;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("configuration cannot be applied: {0}")]
    Build(#[from] BuildError),
    #[error("cannot listen on {address} ({listener}): {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error(transparent)]
    Workers(#[from] server::workers::WorkerError),
}

/// Options of [`Proxy::start`] beyond the configuration itself.
#[derive(Default)]
pub struct StartOptions {
    /// The file SIGHUP and `POST /reload` re-read.
    pub config_path: Option<PathBuf>,
    /// Called after every successful reload (the binary changes the log level here).
    pub on_reload: Option<state::ReloadHook>,
}

/// A running proxy: listeners bound, background tasks started. Dropped without
/// [`Proxy::shutdown`], its workers stop at once (their connections cut, no drain) while the
/// listeners on the caller's runtime accept until that runtime ends.
pub struct Proxy {
    pub shared: Arc<Shared>,
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    conns: Arc<Semaphore>,
    max_conns: u32,
    /// The worker threads of the proxy and authz listeners (`server.worker_threads` > 1); with
    /// one worker they run on the caller's runtime. Dropped last: after the drain.
    _workers: Option<server::workers::Workers>,
}

impl Proxy {
    /// Opens the store, builds the first snapshot, binds every listener and starts serving.
    pub async fn start(config: Config, opts: StartOptions) -> Result<Proxy, StartError> {
        let mut fleet_parts = None;
        let durable: Arc<dyn Durable> = match &config.store.backend {
            StoreBackend::Redb(path) => {
                let (p, ignore) = (path.clone(), config.store.ignore_corrupt);
                Arc::new(
                    tokio::task::spawn_blocking(move || RedbStore::open(&p, ignore))
                        .await
                        .map_err(|e| StoreError::Open {
                            path: path.display().to_string(),
                            source: e.into(),
                        })??,
                )
            }
            StoreBackend::Memory => Arc::new(MemoryStore::default()),
            StoreBackend::Redis(r) => {
                let retention = config.store.retention.as_secs() as i64;
                let (durable, parts) =
                    fleet::open(r, config.store.ignore_corrupt, retention).await?;
                fleet_parts = Some(parts);
                durable
            }
        };
        let retention = config.store.retention.as_secs() as i64;
        let store = Arc::new(SignalStore::open(durable, retention, store::now_secs())?);
        tracing::info!(backend = store.backend_name(), entries = ?store.tables().stats(), "signal store open");
        let shared = Arc::new(Shared::new(
            opts.config_path,
            store,
            config.server.token_cache_size,
            config.server.worker_threads,
            opts.on_reload,
        ));
        shared
            .store
            .set_write_timer(shared.metrics.store_write_duration.clone());
        if let Some(t) = &config.tracing {
            let _ = shared.telemetry.set(telemetry::Telemetry::start(t)?);
        }
        if let Some(parts) = fleet_parts {
            let fleet = fleet::Fleet::start(
                parts,
                &shared.store,
                shared.metrics.fleet.clone(),
                &shared.shutdown,
                &shared.tasks,
            );
            shared.replay.use_redis(fleet.link().clone());
            let _ = shared.fleet.set(fleet);
        }
        let snap = shared.build(config)?;
        let cfg = snap.config.clone();
        shared.install(snap);

        let max_conns =
            u32::try_from(cfg.server.max_connections.saturating_add(64)).unwrap_or(u32::MAX);
        let conns = Arc::new(Semaphore::new(max_conns as usize));
        let mut bound = Vec::new();
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            let tcp = bind(l.address).map_err(|source| StartError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
            let addr = tcp.local_addr().map_err(|source| StartError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source,
            })?;
            tracing::info!(listener = %l.name, %addr, tls = l.tls.is_some(), role = ?l.role, "listening");
            listeners.push((l.name.clone(), addr));
            let role = match l.role {
                ListenerRole::Proxy => Role::Proxy,
                ListenerRole::Signals => Role::Signals,
                ListenerRole::Authz => Role::Authz,
            };
            bound.push((
                tcp,
                addr,
                Arc::<str>::from(l.name.as_str()),
                role,
                l.tls.is_some(),
            ));
        }
        let mut admin = None;
        if let Some(a) = &cfg.admin {
            let tcp = bind(a.address).map_err(|source| StartError::Bind {
                listener: "admin".into(),
                address: a.address,
                source,
            })?;
            let addr = tcp.local_addr().map_err(|source| StartError::Bind {
                listener: "admin".into(),
                address: a.address,
                source,
            })?;
            tracing::info!(listener = "admin", %addr, "listening");
            admin = Some(addr);
            bound.push((tcp, addr, Arc::from("admin"), Role::Admin, a.tls.is_some()));
        }
        let workers = match cfg.server.worker_threads {
            0 | 1 => None,
            n => Some(server::workers::Workers::start(n).await?),
        };
        // The admin listener has its own connection budget, so a flood on the public port
        // cannot starve the probes and get the process restarted.
        let admin_conns = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
        for (tcp, address, name, role, tls) in bound {
            let budget = if role == Role::Admin {
                admin_conns.clone()
            } else {
                conns.clone()
            };
            let accept = Arc::new(server::Accept {
                name,
                role,
                tls_required: tls,
                shared: shared.clone(),
                conns: budget,
            });
            match &workers {
                // Requests go to the workers; signals and admin stay on this runtime.
                Some(w) if matches!(role, Role::Proxy | Role::Authz) => accept
                    .clone()
                    .spawn_on_workers(tcp, w)
                    .await
                    .map_err(|source| StartError::Bind {
                        listener: accept.name.to_string(),
                        address,
                        source,
                    })?,
                _ => {
                    tokio::spawn(accept.run(tcp, shared.shutdown.subscribe()));
                }
            }
        }
        tokio::spawn(expiry_loop(shared.clone()));
        Ok(Proxy {
            shared,
            listeners,
            admin,
            conns,
            max_conns,
            _workers: workers,
        })
    }

    /// The bound address of a listener by name.
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Same as SIGHUP: re-read the file, swap on success, keep the old snapshot on failure.
    pub fn reload(&self) -> Result<u64, state::ReloadError> {
        self.shared.reload()
    }

    /// Stops accepting, lets in-flight requests finish and background tasks end their work
    /// (pollers deliver their last acknowledgements and give their poll leases up, the fleet
    /// tailer writes what it applied), all within one grace period (`shutdown_grace`); then
    /// returns whether every connection closed in time. The caller may drop the runtime then:
    /// nothing that was waited for is left half done.
    pub async fn shutdown(self) -> bool {
        let grace = self.shared.snapshot.load().config.server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.shared.shutdown.send(true);
        self.shared.tasks.close();
        let drained = tokio::time::timeout_at(deadline, self.conns.acquire_many(self.max_conns))
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                ?grace,
                "shutdown grace period over; closing remaining connections"
            );
        }
        let finished = tokio::time::timeout_at(deadline, self.shared.tasks.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                ?grace,
                tasks = self.shared.tasks.len(),
                "shutdown grace period over; background tasks stopped before they finished"
            );
        }
        if let Some(t) = self.shared.telemetry.get() {
            // The last spans (the drained requests') are exported before the runtime goes.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            t.shutdown(left.max(SPAN_FLUSH_AT_LEAST)).await;
        }
        drained
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Drops expired revocations every `store.expiry_interval`, in memory and in the store.
async fn expiry_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        // Read each time: a reload changes the period from the next pass on.
        let every = shared.snapshot.load().config.store.expiry_interval;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match shared.store.expire(store::now_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired old table entries"),
            Err(e) => tracing::error!(error = %crate::errors::Chain(&e), "expiry failed"),
        }
    }
}
