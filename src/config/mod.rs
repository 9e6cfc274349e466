//! Typed configuration: what `validate.rs` produces from the TOML file. Uses nothing else in the crate.

mod error;
mod file;
mod lenient;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use error::{ConfigError, ConfigErrors, Position};
pub use file::FileConfig;
pub use secret::Secret;
pub use validate::{is_loopback_host, parse_net};

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
    /// `[tracing]` with an `otlp_endpoint`; `None`: no spans (the default). Read at start only.
    pub tracing: Option<Tracing>,
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
            tracing: None,
        }
    }

    /// Parses TOML text; relative file paths are resolved against `base`. Every mistake is
    /// reported at once, with its TOML path and, where the file has it, its line and column:
    /// values of the wrong type, required keys missing and unknown keys (found while reading,
    /// `lenient.rs`), then what `validate.rs` finds in the rest. A document that is not TOML
    /// is reported by its first syntax error alone.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        // The parser goes on after a syntax error, but what it finds next is mostly the same
        // mistake seen again (after an unclosed array every line is an error): only the first
        // one in the file is reported.
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
        if let Some(first) = syntax
            .iter()
            .map(|e| ConfigError::syntax(text, e))
            .min_by_key(|e| e.position)
        {
            return Err(ConfigErrors::one(first));
        }
        let root = toml::Spanned::new(doc.span(), toml::de::DeValue::Table(doc.into_inner()));
        let (raw, found) = lenient::read::<FileConfig>(&root);
        let mut errors: Vec<ConfigError> = found
            .into_iter()
            .map(|f| ConfigError::new(f.path, f.message).at(Position::of(text, f.span.start)))
            .collect();
        match raw.map(|raw| validate::validate(raw, base)) {
            Some(Ok(config)) if errors.is_empty() => return Ok(config),
            Some(Err(rules)) => place_rule_errors(&mut errors, rules, &root, text),
            _ => {}
        }
        // File order; mistakes of the file as a whole (no position) last.
        errors.sort_by_key(|e| (e.position.is_none(), e.position));
        Err(ConfigErrors(errors))
    }
}

/// Adds what `validate.rs` found to the mistakes found while reading, each at its value or, when
/// that key is absent, at the nearest table that is there. A key already reported (wrong type,
/// missing) was read as a stand-in: what the rules say about it, or about what is inside it, is
/// not news and is left out.
fn place_rule_errors(
    errors: &mut Vec<ConfigError>,
    rules: ConfigErrors,
    root: &toml::Spanned<toml::de::DeValue<'_>>,
    text: &str,
) {
    let starts = lenient::starts(root);
    let reported: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    for e in rules.0 {
        if reported.iter().any(|p| is_within(&e.path, p)) {
            continue;
        }
        let start = ancestors(&e.path).find_map(|p| starts.get(p)).copied();
        errors.push(match start {
            Some(start) => e.at(Position::of(text, start)),
            None => e,
        });
    }
}

/// `path` is `outer` or inside it (`route[0].cae.max_age` is within `route[0].cae`).
fn is_within(path: &str, outer: &str) -> bool {
    path.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// `route[0].cae.max_age`, `route[0].cae`, `route[0]`, `route`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path).filter(|p| !p.is_empty()), |p| {
        p.rfind(['.', '['])
            .map(|i| &p[..i])
            .filter(|p| !p.is_empty())
    })
}

/// How spans travel to the collector (the OTLP exporter's transports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Default `tracing.service_name`.
pub const DEFAULT_SERVICE_NAME: &str = "cae-proxy";

/// `[tracing]` with export on: OpenTelemetry spans of proxied requests sent over OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The collector: `http(s)://host:port` for gRPC, the full traces URL for `http/protobuf`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    /// Share of new traces sampled (0.0–1.0); a remote parent's sampled flag wins.
    pub sample_ratio: f64,
    /// Lower-case header names and their resolved (unprintable) values.
    pub headers: Vec<(String, Secret)>,
    /// `https` collectors: a private CA and/or a client certificate (PEM files).
    pub tls: RedisTls,
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
    /// Key of the DPoP nonces (RFC 9449 §9); `None`: a random key per process.
    pub dpop_nonce_secret: Option<Secret>,
    /// DPoP proof `jti`s remembered for replay detection without Redis (RFC 9449 §11.1).
    pub dpop_replay_cache_size: usize,
    /// The header trusted proxies pass the client certificate in (RFC 8705 §3 through a proxy).
    pub client_cert_header: ClientCertHeader,
}

/// The one header a trusted proxy passes the client certificate in. Only that one is read, like
/// [`ClientIpHeader`]: a front proxy that sets one and passes the other through from the client
/// must not let the client choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertHeader {
    /// RFC 9440 `Client-Cert`: the DER certificate as a structured-field byte sequence.
    ClientCert,
    /// Envoy's `X-Forwarded-Client-Cert`: the `Hash` (or `Cert`) of the element the nearest proxy
    /// added.
    Xfcc,
}

/// Sender constraint of tokens (RFC 9449 DPoP `cnf.jkt`, RFC 8705 `cnf.x5t#S256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderConstraint {
    /// Not checked: `cnf` is ignored and the `DPoP` scheme is not accepted (bearer tokens only).
    None,
    /// A bound token must be used with its binding; unbound bearer tokens are accepted.
    #[default]
    Allowed,
    /// Every token must be bound (DPoP or certificate) and used with its binding.
    Required,
}

/// A DPoP proof signature algorithm: asymmetric only (RFC 9449 §4.2). `Ed25519` is the
/// fully-specified name some clients use for `EdDSA` over Ed25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DpopAlg {
    ES256,
    ES384,
    PS256,
    PS384,
    PS512,
    RS256,
    RS384,
    RS512,
    EdDSA,
    Ed25519,
}

impl DpopAlg {
    /// Every algorithm, in the order of their names in `algs`.
    pub const ALL: [DpopAlg; 10] = [
        DpopAlg::ES256,
        DpopAlg::ES384,
        DpopAlg::PS256,
        DpopAlg::PS384,
        DpopAlg::PS512,
        DpopAlg::RS256,
        DpopAlg::RS384,
        DpopAlg::RS512,
        DpopAlg::EdDSA,
        DpopAlg::Ed25519,
    ];

    /// Accepted when `dpop_algorithms` is not set.
    pub const DEFAULT: [DpopAlg; 6] = [
        DpopAlg::ES256,
        DpopAlg::ES384,
        DpopAlg::EdDSA,
        DpopAlg::Ed25519,
        DpopAlg::PS256,
        DpopAlg::RS256,
    ];

    /// The JOSE `alg` name (exact, case-sensitive: RFC 7515 §4.1.1).
    pub fn name(self) -> &'static str {
        match self {
            DpopAlg::ES256 => "ES256",
            DpopAlg::ES384 => "ES384",
            DpopAlg::PS256 => "PS256",
            DpopAlg::PS384 => "PS384",
            DpopAlg::PS512 => "PS512",
            DpopAlg::RS256 => "RS256",
            DpopAlg::RS384 => "RS384",
            DpopAlg::RS512 => "RS512",
            DpopAlg::EdDSA => "EdDSA",
            DpopAlg::Ed25519 => "Ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<DpopAlg> {
        DpopAlg::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Sender-constraint settings of an issuer or a route, as written: a route's value wins over
/// the token issuer's, which wins over the default (see `auth::sender::Effective`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderPolicy {
    pub constraint: Option<SenderConstraint>,
    pub dpop_algorithms: Option<Vec<DpopAlg>>,
    /// Largest distance of a proof's `iat` from now.
    pub proof_window: Option<Duration>,
    /// Proofs must carry a nonce this proxy issued.
    pub nonce: Option<bool>,
    pub nonce_rotation: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerRole {
    Proxy,
    Signals,
    /// Answers gateways' authorization checks about requests they forward themselves.
    Authz,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub role: ListenerRole,
    pub tls: Option<Tls>,
    /// `Some` exactly when `role` is `Authz`.
    pub authz: Option<Authz>,
}

/// Default `[listener.authz] path_prefix`.
pub const DEFAULT_AUTHZ_PATH: &str = "/authz";

/// `[listener.authz]` of an authorization listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authz {
    /// Where the HTTP dialects ask: this path with `X-Forwarded-Uri` (forward auth), or this path
    /// followed by the original path and query. Starts with `/`, no trailing `/`.
    pub path_prefix: String,
}

impl Default for Authz {
    fn default() -> Self {
        Authz {
            path_prefix: DEFAULT_AUTHZ_PATH.into(),
        }
    }
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
    Redis(Box<RedisBackend>),
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
    /// Where the primary holding the fleet's keys is: the URL's server, the one Sentinel names,
    /// or the cluster node serving the fleet's hash slot.
    pub topology: RedisTopology,
    /// Redis replicas that must hold a change (`WAIT`) before it is acknowledged (0: none).
    pub min_replicas_acked: u32,
    /// Longest `WAIT` for them; fewer in time: the change is refused (503).
    pub replicas_ack_timeout: Duration,
    /// Readiness bound on how old a fleet-log entry this replica may have missed can be
    /// (`None`: readiness ignores the lag).
    pub max_fleet_lag: Option<Duration>,
}

/// How the Redis primary of the fleet is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `redis_url`'s server.
    Standalone,
    /// Asked of the sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`), confirmed with `ROLE`;
    /// `redis_url` gives the scheme, credentials and database.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        password: Option<Secret>,
    },
    /// The node serving the fleet's hash slot (every key is hash-tagged with the prefix), found
    /// from these seeds (`CLUSTER SLOTS`); `redis_url` gives the scheme and credentials.
    Cluster { nodes: Vec<(String, u16)> },
}

/// Default `store.replicas_ack_timeout`.
pub const DEFAULT_REPLICAS_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Default `store.max_fleet_lag`.
pub const DEFAULT_MAX_FLEET_LAG: Duration = Duration::from_secs(30);

/// TLS to a server of ours (Redis over `rediss://`, an `https` OTLP collector): a private CA
/// and/or a client certificate (PEM files, read at start). Without it, the server is verified
/// against the system roots and no client certificate is presented.
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
    /// `None`: the route only answers authorization checks (listener role `authz`).
    pub upstream: Option<String>,
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
    /// DPoP and certificate-bound tokens on this route (unset keys: the issuer's).
    pub sender: SenderPolicy,
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
    /// DPoP and certificate-bound tokens of this issuer (a route's settings win).
    pub sender: SenderPolicy,
}

/// Token claims that name the user, session, token, tenant, device and e-mail addresses, i.e.
/// what subject identifiers of security events and admin changes are matched against
/// (docs/protocols.md §4). Per issuer.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `path (line L, column C): message` of every error, in order.
    fn lines(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn type_missing_unknown_and_semantic_errors_come_together_with_path_and_position() {
        let text = "\
[server]
max_connections = \"many\"
max_h2_streams = -1
[[listener]]
address = \"127.0.0.1:0\"
adress = \"127.0.0.1:8080\"
[upstreams.app]
url = \"http://127.0.0.1:9\"
[[route]]
upstream = \"app\"
auth = \"none\"
strip_prefix = \"yes\"
methods = [\"GET\", 5]
[[route]]
path_prefix = \"v2\"
auth = \"none\"
";
        assert_eq!(
            lines(text),
            [
                "server.max_connections (line 2, column 19): expected a whole number (0 or more), found the string \"many\"",
                "server.max_h2_streams (line 3, column 18): expected a whole number from 0 to 4294967295, found -1",
                "listener[0].adress (line 6, column 1): unknown key (see docs/configuration.md)",
                "route[0].strip_prefix (line 12, column 16): expected a boolean (true or false), found the string \"yes\"",
                "route[0].methods[1] (line 13, column 19): expected a string, found an integer",
                "route[1].upstream (line 14, column 1): required (only a route of a configuration with a role = \"authz\" listener may omit it: it then only answers authorization checks)",
                "route[1].path_prefix (line 15, column 15): must start with /",
            ]
        );
    }

    #[test]
    fn a_wrong_table_or_array_is_one_error_and_its_contents_none() {
        let text = "\
[[listener]]
address = \"127.0.0.1:0\"
tls = \"yes\"
[[route]]
upstream = \"nowhere\"
auth = \"none\"
hosts = \"a.test\"
cae = [1]
";
        assert_eq!(
            lines(text),
            [
                "listener[0].tls (line 3, column 7): expected a table, found the string \"yes\"",
                "route[0].upstream (line 5, column 12): no [upstreams.nowhere] is defined",
                "route[0].hosts (line 7, column 9): expected an array, found the string \"a.test\"",
                "route[0].cae (line 8, column 7): expected a table, found an array",
            ]
        );
    }

    #[test]
    fn secrets_found_where_a_string_belongs_are_not_echoed() {
        // A number where a secret reference (a string) belongs: its value stays out of the error.
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\ntoken = 123456789\n";
        assert_eq!(
            lines(text),
            ["admin.token (line 4, column 9): expected a string, found an integer"]
        );
    }

    #[test]
    fn syntax_errors_stop_the_parse_with_their_line_and_column() {
        assert_eq!(
            lines("[server]\nlog_level = \"info\"\n[[listener]\naddress = 1\n"),
            ["line 3, column 12: invalid TOML: unclosed array table, expected `]`"]
        );
        // The first one in the file (the parser reports another one first); nothing else is
        // checked.
        assert_eq!(
            lines("[server]\nx = \n[[listener]]\naddress = \"x\" y\nmax_connections = \"many\"\n"),
            ["line 2, column 5: invalid TOML: string values must be quoted, expected literal string"]
        );
        // After an unclosed array every line is an error: only the first is reported.
        assert_eq!(
            lines("[server]\ntrusted_proxies = [\"10.0.0.0/8\"\nlog_level = \"info\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n"),
            ["line 3, column 1: invalid TOML: missing comma between array elements, expected `,`"]
        );
    }

    #[test]
    fn an_optional_value_of_the_wrong_type_is_read_as_absent() {
        // `push = 5` is reported alone: no stand-in push table sets off the push rules (a
        // signals listener, an authorization secret).
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[transmitter]]\nname = \"t\"\nissuer = \"https://t.example\"\njwks_uri = \"https://t.example/jwks\"\naudiences = [\"me\"]\npush = 5\n[transmitter.poll]\nendpoint = \"https://t.example/poll\"\n";
        assert_eq!(
            lines(text),
            ["transmitter[0].push (line 8, column 8): expected a table, found the integer 5"]
        );
    }

    #[test]
    fn positions_count_characters_from_one() {
        // The multi-byte `é` before the bad element counts as one column.
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"x\"\nauth = \"none\"\nhosts = [\"é.test\", 5]\n";
        assert_eq!(
            lines(text),
            [
                "route[0].upstream (line 4, column 12): no [upstreams.x] is defined",
                "route[0].hosts[1] (line 6, column 20): expected a string, found an integer",
            ]
        );
    }
}
