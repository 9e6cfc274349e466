//! Serde mirror of the TOML file: raw values only, read by `lenient.rs` (wrong types, missing
//! required keys and unknown keys all reported, with their paths and positions); `validate.rs`
//! turns it into `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerFile>,
    #[serde(default)]
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerFile>,
    #[serde(default, rename = "transmitter")]
    pub transmitters: Vec<TransmitterFile>,
    #[serde(default)]
    pub tracing: Option<TracingFile>,
}

/// `[tracing]`: OpenTelemetry spans exported over OTLP (docs/tracing.md). Off without
/// `otlp_endpoint`.
#[derive(Debug, Default, Deserialize)]
pub struct TracingFile {
    /// Where spans go: the collector's gRPC address, or the URL spans are POSTed to
    /// (`http/protobuf`; a bare `/` path gets `/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: Option<String>,
    /// `service.name` of the spans (default `cae-proxy`).
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0); a caller's sampled flag decides
    /// for the traces it continues.
    pub sample_ratio: Option<f64>,
    /// Headers (gRPC metadata) of every export request; values are secret references.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `https` collectors: a CA bundle (PEM) instead of the system roots.
    pub ca: Option<String>,
    /// `https` collectors that ask for one: a client certificate (PEM chain) and its key.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
pub struct ServerFile {
    /// Tokio worker threads; 0 or absent = available cores.
    pub worker_threads: Option<usize>,
    /// Deadline for in-flight requests after SIGTERM/SIGINT.
    pub shutdown_grace: Option<String>,
    /// Time allowed to send the request head (and the TLS handshake).
    pub header_read_timeout: Option<String>,
    /// Idle keep-alive connection lifetime.
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_h2_streams: Option<u32>,
    pub max_header_bytes: Option<usize>,
    pub max_request_body: Option<u64>,
    /// Length of the windows a request body is read in; each must bring `min_body_rate` bytes.
    pub body_timeout: Option<String>,
    /// Bytes per second a request body must average over each `body_timeout` window.
    pub min_body_rate: Option<u64>,
    /// CIDRs whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// The one header trusted proxies name the client in: `x-forwarded-for` (default) or
    /// `forwarded` (RFC 7239).
    pub client_ip_header: Option<String>,
    /// `json`, `text` or `auto` (JSON unless stderr is a terminal).
    pub log_format: Option<String>,
    /// tracing filter, e.g. `info` or `cae_proxy=debug`.
    pub log_level: Option<String>,
    /// Evaluate CAE decisions but forward anyway (all routes).
    pub report_only: Option<bool>,
    /// Verified-token cache capacity (entries).
    pub token_cache_size: Option<usize>,
    /// Largest accepted bearer token, in bytes.
    pub max_token_bytes: Option<usize>,
    /// Key of the DPoP nonces this proxy issues (secret reference); the same on every replica of
    /// a fleet. Absent: a random key per process.
    pub dpop_nonce_secret: Option<String>,
    /// DPoP proof `jti`s remembered for replay detection (without Redis).
    pub dpop_replay_cache_size: Option<usize>,
    /// The one header trusted proxies pass the client certificate in: `client-cert` (RFC 9440,
    /// default) or `x-forwarded-client-cert` (Envoy).
    pub client_cert_header: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub address: String,
    /// `proxy` (default), `signals` (SSF push endpoints) or `authz` (authorization checks of
    /// gateways: Envoy ext_authz HTTP and gRPC, nginx auth_request, forward auth).
    pub role: Option<String>,
    pub tls: Option<TlsFile>,
    /// `role = "authz"` only.
    pub authz: Option<AuthzFile>,
}

/// `[listener.authz]`: how gateways ask an authorization listener.
#[derive(Debug, Deserialize)]
pub struct AuthzFile {
    /// Path of the HTTP check (default `/authz`): exactly it with `X-Forwarded-Uri` (forward
    /// auth), or it followed by the original path and query (Envoy HTTP, nginx).
    pub path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
    /// CA bundle for client certificates (mTLS).
    pub client_ca: Option<String>,
    /// `required` (default when `client_ca` is set) or `optional`.
    pub client_auth: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AdminFile {
    pub address: Option<String>,
    /// Bearer secret: literal, `env:NAME` or `file:PATH`.
    pub token: Option<String>,
    pub tls: Option<TlsFile>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StoreFile {
    /// `redb` (default), `redis` (fleet mode: redb copy + Redis Stream) or `memory` (nothing
    /// survives a restart; tests and demo).
    pub backend: Option<String>,
    pub path: Option<String>,
    /// How long a revocation is kept after its time (longest token lifetime + leeway).
    pub retention: Option<String>,
    /// How often the expiry pass runs (default 1m).
    pub expiry_interval: Option<String>,
    /// Start with empty tables if the store is corrupt instead of refusing to start.
    pub ignore_corrupt: Option<bool>,
    /// Fleet mode (`backend = "redis"`): `redis://` or `rediss://` (TLS) URL, as a secret
    /// reference (`env:NAME`, `file:PATH` or literal) since it may carry a password.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this fleet uses (default `cae:`); one prefix per fleet.
    pub key_prefix: Option<String>,
    /// This replica's name in the fleet log and in poll leases (default: host, pid, random).
    pub replica_id: Option<String>,
    /// Longest wait for Redis on the commit path before the change is refused (default 2s).
    pub redis_timeout: Option<String>,
    /// Lifetime of a poll lease not renewed (default 10s): takeover time when a poller dies.
    pub poll_lease: Option<String>,
    /// `rediss://` only: PEM CA bundle the Redis server certificate is verified against, instead
    /// of the system roots.
    pub redis_ca: Option<String>,
    /// `rediss://` only: PEM client certificate (chain) presented to Redis; with
    /// `redis_client_key`.
    pub redis_client_cert: Option<String>,
    /// `rediss://` only: PEM private key of `redis_client_cert`.
    pub redis_client_key: Option<String>,
    /// Sentinel-managed Redis: the sentinels' `host:port`s; the primary is asked of them.
    pub redis_sentinels: Option<Vec<String>>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub redis_sentinel_master: Option<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), a secret reference.
    pub redis_sentinel_password: Option<String>,
    /// Redis Cluster: `host:port` of some nodes; the node serving the fleet's hash slot is found
    /// from them.
    pub redis_cluster_nodes: Option<Vec<String>>,
    /// An acknowledged change must be on this many Redis replicas (`WAIT`) first (default 0).
    pub min_replicas_acked: Option<u32>,
    /// Longest wait for those replicas (default 1s).
    pub replicas_ack_timeout: Option<String>,
    /// `/readyz` is 503 while this replica may have missed fleet-log entries older than this
    /// (default 30s; "0s": never).
    pub max_fleet_lag: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UpstreamFile {
    pub url: String,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// CA bundle for `https` upstreams instead of the system roots.
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RouteFile {
    pub name: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Required unless a listener has `role = "authz"`: a route without one only answers
    /// authorization checks.
    pub upstream: Option<String>,
    pub strip_prefix: Option<bool>,
    /// `required` (default), `optional` or `none`.
    pub auth: Option<String>,
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// `any` (default) or `all`, for scopes and roles.
    pub match_mode: Option<String>,
    #[serde(default)]
    pub claims: Vec<ClaimRuleFile>,
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    pub forward_authorization: Option<bool>,
    pub report_only: Option<bool>,
    /// Protocols an HTTP/1.1 `Upgrade` may switch to (default `["websocket"]`, the only one).
    pub upgrades: Option<Vec<String>>,
    #[serde(default)]
    pub cae: CaeFile,
    /// Sender constraint (RFC 9449 DPoP, RFC 8705 certificate-bound): `none`, `allowed` or
    /// `required`.
    pub sender_constraint: Option<String>,
    /// DPoP proof algorithms accepted.
    pub dpop_algorithms: Option<Vec<String>>,
    /// How far a DPoP proof's `iat` may be from now.
    pub dpop_proof_window: Option<String>,
    /// Require a server-issued DPoP nonce (RFC 9449 §9).
    pub dpop_nonce: Option<bool>,
    /// How often the DPoP nonce changes.
    pub dpop_nonce_rotation: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ClaimRuleFile {
    pub claim: String,
    pub equals: Option<String>,
    pub one_of: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CaeFile {
    /// Check revocations, blocks (default true when auth is on).
    pub revocation: Option<bool>,
    /// Refuse when the client IP differs from the token's `ipaddr`.
    pub token_ip: Option<bool>,
    /// Enforce IP bindings fed by signals and the admin API.
    pub signal_ip: Option<bool>,
    #[serde(default)]
    pub allow_locations: Vec<String>,
    #[serde(default)]
    pub deny_locations: Vec<String>,
    /// Microsoft auth context id required in `acrs` (e.g. `c1`).
    pub auth_context: Option<String>,
    /// RFC 9470: acceptable `acr` values.
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// RFC 9470: maximum age of `auth_time`.
    pub max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct IssuerFile {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub tenants: Vec<String>,
    pub discovery: Option<String>,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub max_lifetime: Option<String>,
    pub authorization_uri: Option<String>,
    pub realm: Option<String>,
    pub allow_insecure_http: Option<bool>,
    pub refresh_interval: Option<String>,
    pub min_refresh: Option<String>,
    pub max_refresh: Option<String>,
    pub unknown_kid_cooldown: Option<String>,
    /// Token claim holding the device id (default `deviceid`).
    pub device_claim: Option<String>,
    /// Claims naming the user (default `["sub", "oid"]`).
    pub subject_claims: Option<Vec<String>>,
    /// Claim holding the session id (default `sid`).
    pub session_claim: Option<String>,
    /// Claims holding the token id, first present wins (default `["jti", "uti"]`).
    pub token_id_claims: Option<Vec<String>>,
    /// Claim holding the tenant id (default `tid`).
    pub tenant_claim: Option<String>,
    /// Claims holding e-mail addresses (default `["email", "upn", "preferred_username"]`).
    pub email_claims: Option<Vec<String>>,
    /// Sender constraint (RFC 9449 DPoP, RFC 8705 certificate-bound): `none`, `allowed` or
    /// `required`.
    pub sender_constraint: Option<String>,
    /// DPoP proof algorithms accepted.
    pub dpop_algorithms: Option<Vec<String>>,
    /// How far a DPoP proof's `iat` may be from now.
    pub dpop_proof_window: Option<String>,
    /// Require a server-issued DPoP nonce (RFC 9449 §9).
    pub dpop_nonce: Option<bool>,
    /// How often the DPoP nonce changes.
    pub dpop_nonce_rotation: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TransmitterFile {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub discovery: Option<String>,
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub min_rsa_bits: Option<usize>,
    pub allow_insecure_http: Option<bool>,
    /// Lowest CAEP risk level that revokes (`low`, `medium`, `high`).
    pub risk_revoke_level: Option<String>,
    /// Issuer (by name) whose tokens this transmitter's subjects refer to; default: match on `iss`.
    pub token_issuer: Option<String>,
    pub push: Option<PushFile>,
    pub poll: Option<PollFile>,
    pub stream: Option<StreamFile>,
}

#[derive(Debug, Deserialize)]
pub struct PushFile {
    pub path: String,
    /// Expected `Authorization` header value (secret reference).
    pub authorization: Option<String>,
    /// The value before a rotation, still accepted until the transmitter uses the new one.
    pub previous_authorization: Option<String>,
    pub max_body: Option<usize>,
    /// SHA-256 fingerprints (hex, colons allowed) of the client certificates this transmitter
    /// pushes with; another certificate is refused with `access_denied`.
    pub client_cert_sha256: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct PollFile {
    pub endpoint: String,
    pub authorization: Option<String>,
    pub max_events: Option<u32>,
    pub long_poll: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StreamFile {
    /// `push` or `poll`.
    pub delivery: String,
    /// Our push URL as the transmitter should call it.
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub events_requested: Vec<String>,
    pub description: Option<String>,
    pub token_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    /// Static bearer token for management calls, instead of client credentials.
    pub bearer: Option<String>,
    pub verify: Option<bool>,
    /// Periodic verification (duration; absent = off).
    pub verify_interval: Option<String>,
    pub verify_timeout: Option<String>,
    pub ready_needs_verification: Option<bool>,
    /// `delete` or `keep`: the stream when the transmitter is removed from the file.
    pub on_remove: Option<String>,
}
