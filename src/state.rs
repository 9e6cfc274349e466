//! Process state: the `Snapshot` (everything a reload replaces, swapped whole through `ArcSwap`)
//! and `Shared` (what survives reloads: store, key sets, upstream pools, token cache, metrics).
//!
//! Locks: request handlers only `load()` the snapshot (lock-free). The `Mutex`es below guard the
//! key-set and upstream-client registries and are taken only while building a snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::auth::cache::TokenCache;
use crate::auth::dpop::NonceKey;
use crate::auth::keys::KeySets;
use crate::auth::replay::ReplayCache;
use crate::auth::token::{IssuerRt, Issuers};
use crate::config::{Config, Upstream};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::proxy::route::Router;
use crate::proxy::upstream::UpstreamClient;
use crate::store::SignalStore;
use crate::tls::TlsError;

/// Smallest RSA modulus accepted in an issuer's JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// Everything derived from one configuration file.
pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    pub router: Router,
    pub issuers: Issuers,
    /// foldhash: looked up on every forwarded request, by configured names only.
    pub upstreams: HashMap<String, Arc<UpstreamClient>, foldhash::fast::RandomState>,
    /// Server TLS per listener name (re-read from disk on every reload).
    pub tls: HashMap<String, Arc<rustls::ServerConfig>>,
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    pub signals: crate::signals::runtime::SignalsSnapshot,
    /// Key of the DPoP nonces: from `server.dpop_nonce_secret`, else the process's own.
    pub nonces: Arc<NonceKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("listener {listener}: {source}")]
    ListenerTls { listener: String, source: TlsError },
    #[error("admin listener: {0}")]
    AdminTls(TlsError),
    #[error("upstream {upstream}: {source}")]
    Upstream { upstream: String, source: TlsError },
}

/// Why a reload kept the previous configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy was started without a configuration file")]
    NoConfigFile,
    /// Every error of the file, one line (its text is the whole cause: no source).
    #[error("{}", .0.to_string().replace('\n', "; "))]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Called with the new configuration after each successful reload.
pub type ReloadHook = Box<dyn Fn(&Config) + Send + Sync>;

/// State that outlives every snapshot.
pub struct Shared {
    pub config_path: Option<PathBuf>,
    pub snapshot: ArcSwap<Snapshot>,
    pub store: Arc<SignalStore>,
    pub cache: TokenCache,
    /// DPoP proofs seen (in Redis in fleet mode).
    pub replay: ReplayCache,
    /// The DPoP nonce key used when the configuration names none (one per process).
    process_nonces: Arc<NonceKey>,
    pub fetcher: Fetcher,
    pub metrics: Metrics,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Background tasks that have work to finish after `shutdown` fires (pollers' last
    /// acknowledgements and lease releases, the fleet tailer's last write, the lease keeper):
    /// `Proxy::shutdown` waits for them, bounded by `shutdown_grace`.
    pub tasks: tokio_util::task::TaskTracker,
    key_sets: KeySets,
    upstreams: Mutex<HashMap<Upstream, Arc<UpstreamClient>>>,
    /// The workers the process started with (`server.worker_threads` at start): one upstream
    /// pool each. A reload that changes the setting changes nothing until a restart.
    workers: usize,
    generation: AtomicU64,
    /// Called after each successful reload (log level changes).
    pub on_reload: Option<ReloadHook>,
    pub signals: crate::signals::runtime::SignalsShared,
    /// Fleet mode (`[store] backend = "redis"`): the log tailer and poll leases.
    pub fleet: OnceLock<Arc<crate::fleet::Fleet>>,
    /// `[tracing]` with an endpoint: the span pipeline, set once at start (a changed section
    /// takes effect after a restart). Unset: requests create no span.
    pub telemetry: OnceLock<crate::telemetry::Telemetry>,
}

impl Shared {
    pub fn new(
        config_path: Option<PathBuf>,
        store: Arc<SignalStore>,
        cache_size: usize,
        workers: usize,
        on_reload: Option<ReloadHook>,
    ) -> Shared {
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let key_sets = KeySets::default();
        Shared {
            config_path,
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            store,
            cache: TokenCache::new(cache_size),
            replay: ReplayCache::default(),
            process_nonces: Arc::new(NonceKey::random()),
            fetcher: Fetcher::new(),
            metrics: Metrics::new(&key_sets),
            shutdown,
            tasks: tokio_util::task::TaskTracker::new(),
            key_sets,
            upstreams: Mutex::default(),
            workers,
            generation: AtomicU64::new(0),
            on_reload,
            signals: Default::default(),
            fleet: OnceLock::new(),
            telemetry: OnceLock::new(),
        }
    }

    /// Builds a snapshot aside; nothing is swapped here.
    pub fn build(self: &Arc<Self>, config: Config) -> Result<Snapshot, BuildError> {
        let mut tls = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let cfg =
                    crate::tls::server_config(t).map_err(|source| BuildError::ListenerTls {
                        listener: l.name.clone(),
                        source,
                    })?;
                tls.insert(l.name.clone(), cfg);
            }
        }
        let admin_tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            Some(t) => Some(crate::tls::server_config(t).map_err(BuildError::AdminTls)?),
            None => None,
        };
        let mut upstreams = HashMap::default();
        {
            let mut pool = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
            for (name, u) in &config.upstreams {
                let client = match pool.get(u) {
                    Some(c) => c.clone(),
                    None => {
                        let c =
                            Arc::new(UpstreamClient::new(u, self.workers).map_err(|source| {
                                BuildError::Upstream {
                                    upstream: name.clone(),
                                    source,
                                }
                            })?);
                        pool.insert(u.clone(), c.clone());
                        c
                    }
                };
                upstreams.insert(name.clone(), client);
            }
            pool.retain(|u, _| config.upstreams.values().any(|x| x == u));
        }
        let mut issuers = Issuers::default();
        for i in &config.issuers {
            let keys = self.key_sets.get_or_start(
                &i.name,
                &i.keys,
                &i.issuer,
                &i.key_policy,
                MIN_RSA_BITS,
                &self.fetcher,
                &self.shutdown,
            );
            issuers.list.push(Arc::new(IssuerRt::new(i.clone(), keys)));
        }
        let signals = crate::signals::runtime::build(&self.signals_deps(), &self.signals, &config);
        self.key_sets.retain(|src, iss| {
            config
                .issuers
                .iter()
                .any(|i| &i.keys == src && i.issuer == iss)
                || config
                    .transmitters
                    .iter()
                    .any(|t| &t.keys == src && t.issuer == iss)
        });
        let nonces = match &config.server.dpop_nonce_secret {
            Some(secret) => Arc::new(NonceKey::new(secret.expose().as_bytes())),
            None => self.process_nonces.clone(),
        };
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Snapshot {
            nonces,
            generation,
            router: Router::with_metrics(
                &config.routes,
                &self.metrics,
                config
                    .listeners
                    .iter()
                    .any(|l| l.role == crate::config::ListenerRole::Authz),
            ),
            issuers,
            upstreams,
            tls,
            admin_tls,
            signals,
            config,
        })
    }

    /// What the signals runtime needs of the state to build a configuration's transmitters.
    fn signals_deps(&self) -> crate::signals::runtime::Deps<'_> {
        crate::signals::runtime::Deps {
            key_sets: &self.key_sets,
            fetcher: &self.fetcher,
            store: &self.store,
            metrics: &self.metrics,
            shutdown: &self.shutdown,
            tasks: &self.tasks,
        }
    }

    /// Installs a snapshot.
    pub fn install(&self, snap: Snapshot) {
        self.metrics.config_generation.set(snap.generation as i64);
        self.replay
            .set_capacity(snap.config.server.dpop_replay_cache_size);
        self.snapshot.store(Arc::new(snap));
        self.cache.clear();
    }

    /// Re-reads the configuration file and swaps the snapshot; on any error the old one stays.
    pub fn reload(self: &Arc<Self>) -> Result<u64, ReloadError> {
        let result = self.try_reload();
        let label = crate::metrics::ResultLabels {
            result: if result.is_ok() { "ok" } else { "failed" },
            reason: "",
        };
        self.metrics.reloads.get_or_create(&label).inc();
        match &result {
            Ok(g) => tracing::info!(generation = g, "configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %crate::errors::Chain(&e), "configuration reload failed; the previous configuration keeps serving")
            }
        }
        result
    }

    fn try_reload(self: &Arc<Self>) -> Result<u64, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let config = Config::load(path).map_err(ReloadError::Config)?;
        let old = self.snapshot.load();
        for l in &config.listeners {
            match old.config.listeners.iter().find(|o| o.name == l.name) {
                Some(o) if o.address != l.address => {
                    tracing::warn!(listener = %l.name, old = %o.address, new = %l.address, "listener address changed: takes effect after a restart")
                }
                None => {
                    tracing::warn!(listener = %l.name, "new listener: takes effect after a restart")
                }
                _ => {}
            }
        }
        if config.server.worker_threads != self.workers {
            tracing::warn!(
                old = self.workers,
                new = config.server.worker_threads,
                "server.worker_threads changed: takes effect after a restart"
            );
        }
        if config.tracing.as_ref() != self.telemetry.get().map(|t| t.config()) {
            tracing::warn!("[tracing] changed: takes effect after a restart");
        }
        let snap = self.build(config)?;
        let g = snap.generation;
        if let Some(cb) = &self.on_reload {
            cb(&snap.config);
        }
        self.install(snap);
        Ok(g)
    }

    /// What stops the proxy from being ready (empty = ready).
    pub fn not_ready(&self) -> Vec<String> {
        let snap = self.snapshot.load();
        let mut missing = Vec::new();
        for i in &snap.issuers.list {
            if !i.keys.is_loaded() {
                missing.push(match i.keys.last_error() {
                    Some(e) => format!("issuer {} has no keys yet: {e}", i.cfg.name),
                    None => format!("issuer {} has no keys yet", i.cfg.name),
                });
            }
        }
        missing.extend(crate::signals::runtime::not_ready(&snap.signals));
        missing.extend(self.fleet.get().and_then(|f| f.not_ready()));
        missing
    }
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            config: Config::minimal(),
            router: Router::default(),
            issuers: Issuers::default(),
            upstreams: HashMap::default(),
            tls: HashMap::new(),
            admin_tls: None,
            signals: Default::default(),
            nonces: Arc::new(NonceKey::random()),
        }
    }
}
