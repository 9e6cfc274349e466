//! Typed configuration: what `validate.rs` produces from the TOML file. Uses nothing else in the crate.

mod file;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use file::FileConfig;
pub use secret::Secret;
pub use validate::{is_loopback_host, parse_net, ConfigError, ConfigErrors};

/// Longest token lifetime (Entra CAE: 28 h) plus leeway: how long revocations are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(28 * 3600 + 300);

/// Where the redb store lives when `[store] path` is not set.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/cae-proxy/state.redb";

/// A validated configuration. Built only through [`Config::load`] or [`Config::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub store: Store,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    pub issuers: Vec<Issuer>,
    pub transmitters: Vec<Transmitter>,
}

impl Config {
    /// Reads, parses and validates a file; every error is reported with its TOML path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// The configuration in force before the first file is loaded: one loopback listener, no routes.
    pub fn minimal() -> Config {
        Config {
            server: validate::default_server(),
            listeners: Vec::new(),
            admin: None,
            store: Store {
                backend: StoreBackend::Memory,
                retention: DEFAULT_RETENTION,
                expiry_interval: DEFAULT_EXPIRY_INTERVAL,
                ignore_corrupt: false,
            },
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            issuers: Vec::new(),
            transmitters: Vec::new(),
        }
    }

    /// Parses TOML text; relative file paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let toml_error = |e: toml::de::Error| ConfigErrors::one(validate::toml_error(&e));
        let de = toml::de::Deserializer::parse(text).map_err(toml_error)?;
        let mut unknown = Vec::new();
        let raw: FileConfig = serde_ignored::deserialize(de, |path| unknown.push(toml_path(&path)))
            .map_err(toml_error)?;
        validate::validate(raw, base, &unknown)
    }
}

/// `listener[0].tls.cert`-style path of a key serde_ignored reports.
fn toml_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", toml_path(parent)),
        Path::Map { parent, key } => {
            let parent = toml_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => toml_path(parent),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    Auto,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub worker_threads: usize,
    pub shutdown_grace: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_h2_streams: u32,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    /// A request body must bring at least `max(1, min_body_rate × body_timeout)` bytes in every
    /// `body_timeout` the proxy waits for it.
    pub body_timeout: Duration,
    pub min_body_rate: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub log_format: LogFormat,
    pub log_level: String,
    pub report_only: bool,
    pub token_cache_size: usize,
    pub max_token_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerRole {
    Proxy,
    Signals,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub role: ListenerRole,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth_required: bool,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub address: SocketAddr,
    pub token: Option<Secret>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Redb(PathBuf),
    Memory,
    /// Fleet mode: changes go to a Redis Stream shared by every replica and to a local redb copy.
    Redis(RedisBackend),
}

/// The header that trusted proxies name the client in. Only that one is read: reading both would
/// let a client's own `X-Forwarded-For` decide when the proxy in front appends only `Forwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    Forwarded,
}

/// Default `store.expiry_interval`.
pub const DEFAULT_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// Default `store.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "cae:";

/// `[store] backend = "redis"` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBackend {
    /// `redis://` or `rediss://` URL (may hold a password: unprintable).
    pub url: Secret,
    pub key_prefix: String,
    /// The embedded redb copy (start without Redis, resume cursor).
    pub path: PathBuf,
    /// Fixed replica name, else one is made at start.
    pub replica_id: Option<String>,
    /// Longest wait for Redis on the commit path.
    pub timeout: Duration,
    /// Poll lease lifetime without renewal.
    pub poll_lease: Duration,
    /// With a `rediss://` URL: `store.redis_ca`, `store.redis_client_cert` / `redis_client_key`,
    /// when any is set.
    pub tls: Option<RedisTls>,
}

/// Fleet mode over `rediss://`: a private CA and/or a client certificate for Redis (PEM files,
/// read at start). Without it, `rediss://` verifies Redis against the system roots and presents
/// no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// CA bundle that replaces the system roots for the Redis server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate (chain) and its key.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pub backend: StoreBackend,
    pub retention: Duration,
    /// Period of the background pass that drops entries older than `retention`.
    pub expiry_interval: Duration,
    pub ignore_corrupt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub name: String,
    pub url: http::Uri,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchMode {
    Any,
    All,
}

/// A host pattern: exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct ClaimRule {
    pub claim: String,
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CaePolicy {
    pub revocation: bool,
    pub token_ip: bool,
    pub signal_ip: bool,
    pub allow_locations: Vec<IpNet>,
    pub deny_locations: Vec<IpNet>,
    pub auth_context: Option<String>,
    pub acr_values: Vec<String>,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    pub methods: Vec<http::Method>,
    pub upstream: String,
    pub strip_prefix: bool,
    pub auth: AuthMode,
    pub issuers: Vec<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub match_mode: MatchMode,
    pub claims: Vec<ClaimRule>,
    /// Header name (lower-case) → dotted claim path.
    pub identity_headers: Vec<(http::HeaderName, String)>,
    pub forward_authorization: bool,
    pub report_only: bool,
    /// Protocols (lower-case) an HTTP/1.1 `Upgrade` may switch to: empty, or `websocket`.
    pub upgrades: Vec<String>,
    pub cae: CaePolicy,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    Discovery(String),
    JwksUri(String),
    JwksFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// `http://` key URLs off loopback are allowed (discovery-supplied `jwks_uri` included).
    pub allow_insecure_http: bool,
    pub refresh_interval: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct Issuer {
    pub name: String,
    /// Exact issuer, or a template with `{tenantid}`.
    pub issuer: String,
    pub tenants: Vec<String>,
    pub keys: KeySource,
    pub key_policy: KeyPolicy,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub max_lifetime: Option<Duration>,
    pub authorization_uri: Option<String>,
    pub realm: Option<String>,
    /// Which token claims the revocation, block and binding keys are looked up by.
    pub claim_map: ClaimMap,
}

/// Token claims that name the user, session, token, tenant, device and e-mail addresses, i.e.
/// what subject identifiers of security events and admin changes are matched against
/// (protocols.md §4). Per issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMap {
    pub subject: Vec<String>,
    pub session: String,
    pub token_id: Vec<String>,
    pub tenant: String,
    pub device: String,
    pub email: Vec<String>,
}

impl Default for ClaimMap {
    fn default() -> Self {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        ClaimMap {
            subject: v(&["sub", "oid"]),
            session: "sid".into(),
            token_id: v(&["jti", "uti"]),
            tenant: "tid".into(),
            device: "deviceid".into(),
            email: v(&["email", "upn", "preferred_username"]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub fn parse(s: &str) -> Option<RiskLevel> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(RiskLevel::Low),
            "medium" => Some(RiskLevel::Medium),
            "high" => Some(RiskLevel::High),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Push {
    pub path: String,
    pub authorization: Option<Secret>,
    /// Also accepted while the transmitter moves to a rotated `authorization` (never sent).
    pub previous_authorization: Option<Secret>,
    pub max_body: usize,
    /// When not empty: the push must come over mTLS with one of these certificates (SHA-256 of
    /// the DER leaf), which ties a client certificate to this transmitter.
    pub client_cert_sha256: Vec<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub struct Poll {
    pub endpoint: String,
    pub authorization: Option<Secret>,
    pub max_events: u32,
    pub long_poll: bool,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Push,
    Poll,
}

/// What happens to a managed stream when its transmitter leaves the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRemove {
    /// Delete the stream at the transmitter (SSF §8.1.1.5).
    Delete,
    /// Leave it (another receiver, or a later configuration, takes it over).
    Keep,
}

#[derive(Debug, Clone)]
pub struct StreamMgmt {
    pub delivery: Delivery,
    pub endpoint_url: Option<String>,
    pub events_requested: Vec<String>,
    /// The stream's `description` (default `cae-proxy receiver <name>`).
    pub description: String,
    pub token_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub scope: Option<String>,
    pub bearer: Option<Secret>,
    /// Ask for a verification event once the stream exists.
    pub verify: bool,
    /// Ask for one periodically (off: `None`).
    pub verify_interval: Option<Duration>,
    /// How long a requested verification event may take to arrive.
    pub verify_timeout: Duration,
    /// `/readyz` waits for the first verification and reports one that did not arrive.
    pub ready_needs_verification: bool,
    pub on_remove: OnRemove,
}

#[derive(Debug, Clone)]
pub struct Transmitter {
    pub name: String,
    pub issuer: String,
    pub keys: KeySource,
    pub key_policy: KeyPolicy,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub min_rsa_bits: usize,
    pub risk_revoke_level: RiskLevel,
    pub token_issuer: Option<String>,
    pub push: Option<Push>,
    pub poll: Option<Poll>,
    pub stream: Option<StreamMgmt>,
}

impl Server {
    /// True when `ip` belongs to a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
