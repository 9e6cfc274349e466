//! Raw `FileConfig` → typed `Config`, collecting every mistake at once with its TOML path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::file::*;
use super::*;

mod telemetry;

/// Collects errors while converting.
struct Check<'a> {
    errors: Vec<ConfigError>,
    base: &'a Path,
}

impl Check<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.err(path, format!("invalid duration {s:?}: {e} (examples: \"30s\", \"500ms\", \"28h 5m\")"));
                    default
                }
            },
        }
    }

    /// A `[[kind]]` entry's name at `path`: not blank (it labels metrics, logs and references),
    /// and not a repeat of one in `seen`.
    fn name(&mut self, path: &str, kind: &str, name: &str, seen: &mut HashSet<String>) {
        if name.trim().is_empty() {
            self.err(path, format!("{kind} name must not be empty"));
        } else if !seen.insert(name.to_string()) {
            self.err(path, format!("duplicate {kind} name {name:?}"));
        }
    }

    fn opt_duration(&mut self, path: &str, v: &Option<String>) -> Option<Duration> {
        v.as_ref().map(|_| self.duration(path, v, Duration::ZERO))
    }

    fn nets(&mut self, path: &str, v: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in v.iter().enumerate() {
            match parse_net(s) {
                Some(n) => out.push(n),
                None => self.err(
                    format!("{path}[{i}]"),
                    format!("{s:?} is not an IP address or CIDR"),
                ),
            }
        }
        out
    }

    fn file(&mut self, path: &str, v: &str) -> PathBuf {
        let p = self.base.join(v);
        if !p.is_file() {
            self.err(path, format!("file {} does not exist", p.display()));
        }
        p
    }

    fn secret(&mut self, path: &str, v: &Option<String>) -> Option<Secret> {
        let r = v.as_ref()?;
        match Secret::resolve(r, self.base) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn url(&mut self, path: &str, v: &str, allow_http: bool) {
        match url::Url::parse(v) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" => {
                if !allow_http && !is_loopback_host(u.host_str().unwrap_or("")) {
                    self.err(
                        path,
                        format!("{v:?} must use https (or set allow_insecure_http = true)"),
                    );
                }
            }
            Ok(_) => self.err(path, format!("{v:?} must be an http(s) URL")),
            Err(e) => self.err(path, format!("{v:?} is not a URL: {e}")),
        }
    }

    fn algorithms(
        &mut self,
        path: &str,
        v: &Option<Vec<String>>,
        allowed: &[&str],
    ) -> Vec<jsonwebtoken::Algorithm> {
        let Some(list) = v else {
            return vec![jsonwebtoken::Algorithm::RS256];
        };
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            match (
                allowed.contains(&a.as_str()),
                jsonwebtoken::Algorithm::from_str(a),
            ) {
                (true, Ok(alg)) => out.push(alg),
                _ => self.err(
                    format!("{path}[{i}]"),
                    format!(
                        "algorithm {a:?} is not allowed (one of {})",
                        allowed.join(", ")
                    ),
                ),
            }
        }
        if out.is_empty() && !list.is_empty() {
            return out;
        }
        if list.is_empty() {
            self.err(path, "at least one algorithm is required");
        }
        out
    }

    fn key_source(
        &mut self,
        path: &str,
        discovery: &Option<String>,
        jwks_uri: &Option<String>,
        jwks_file: &Option<String>,
        allow_http: bool,
    ) -> KeySource {
        match (discovery, jwks_uri, jwks_file) {
            (Some(d), None, None) => {
                self.url(&format!("{path}.discovery"), d, allow_http);
                KeySource::Discovery(d.clone())
            }
            (None, Some(u), None) => {
                self.url(&format!("{path}.jwks_uri"), u, allow_http);
                KeySource::JwksUri(u.clone())
            }
            (None, None, Some(f)) => {
                KeySource::JwksFile(self.file(&format!("{path}.jwks_file"), f))
            }
            _ => {
                self.err(
                    path,
                    "exactly one of discovery, jwks_uri or jwks_file is required",
                );
                KeySource::JwksUri(String::new())
            }
        }
    }

    fn tls(&mut self, path: &str, t: &TlsFile) -> Tls {
        let required = match t.client_auth.as_deref() {
            None | Some("required") => true,
            Some("optional") => false,
            Some(o) => {
                self.err(
                    format!("{path}.client_auth"),
                    format!("{o:?} must be \"required\" or \"optional\""),
                );
                true
            }
        };
        Tls {
            cert: self.file(&format!("{path}.cert"), &t.cert),
            key: self.file(&format!("{path}.key"), &t.key),
            client_ca: t
                .client_ca
                .as_ref()
                .map(|c| self.file(&format!("{path}.client_ca"), c)),
            client_auth_required: required,
        }
    }
}

/// Parses `10.0.0.0/8`, `192.0.2.1` (as /32) or `::1`.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    IpNet::from_str(s)
        .ok()
        .or_else(|| std::net::IpAddr::from_str(s).ok().map(IpNet::from))
}

/// Loopback hosts may use plain http for keys (docs/protocols.md §1.3).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || std::net::IpAddr::from_str(h)
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

const TOKEN_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
const SET_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// `AB:CD:…` or `abcd…` (64 hex digits) as 32 bytes.
fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Server settings when the file has no `[server]` table.
pub(super) fn default_server() -> Server {
    let mut c = Check {
        errors: Vec::new(),
        base: Path::new("."),
    };
    server(&mut c, &ServerFile::default())
}

pub(super) fn validate(raw: FileConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut c = Check {
        errors: Vec::new(),
        base,
    };
    let server = server(&mut c, &raw.server);
    let listeners = listeners(&mut c, &raw.listeners);
    let admin = raw.admin.as_ref().map(|a| admin(&mut c, a));
    let store = store(&mut c, &raw.store, base);
    let upstreams = upstreams(&mut c, &raw.upstreams);
    let issuers = issuers(&mut c, &raw.issuers);
    let issuer_names: HashSet<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
    let answers_checks = listeners.iter().any(|l| l.role == ListenerRole::Authz);
    let routes = routes(
        &mut c,
        &raw.routes,
        &upstreams,
        &issuer_names,
        answers_checks,
    );
    let transmitters = transmitters(&mut c, &raw.transmitters, &issuer_names);
    transmitters_need_signals_listeners(&mut c, &transmitters, &listeners);
    if let Some(a) = &admin {
        admin_off_loopback_needs_auth(&mut c, a);
    }
    fleet_nonce_needs_a_secret(&mut c, &server, &store, &issuers, &routes);
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|t| telemetry::tracing(&mut c, t));
    if c.errors.is_empty() {
        Ok(Config {
            server,
            listeners,
            admin,
            store,
            upstreams,
            routes,
            issuers,
            transmitters,
            tracing,
        })
    } else {
        Err(ConfigErrors(c.errors))
    }
}

/// `[server]`: timeouts, limits, client-IP trust, logging.
fn server(c: &mut Check<'_>, s: &ServerFile) -> Server {
    let server = Server {
        worker_threads: s.worker_threads.filter(|n| *n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        shutdown_grace: c.duration(
            "server.shutdown_grace",
            &s.shutdown_grace,
            Duration::from_secs(30),
        ),
        header_read_timeout: c.duration(
            "server.header_read_timeout",
            &s.header_read_timeout,
            Duration::from_secs(10),
        ),
        idle_timeout: c.duration(
            "server.idle_timeout",
            &s.idle_timeout,
            Duration::from_secs(60),
        ),
        max_connections: s.max_connections.unwrap_or(10_000),
        max_h2_streams: s.max_h2_streams.unwrap_or(256),
        max_header_bytes: s.max_header_bytes.unwrap_or(64 * 1024),
        max_request_body: s.max_request_body.unwrap_or(64 * 1024 * 1024),
        body_timeout: match c.duration(
            "server.body_timeout",
            &s.body_timeout,
            Duration::from_secs(30),
        ) {
            d if d.is_zero() => {
                c.err("server.body_timeout", "must be longer than 0s");
                Duration::from_secs(30)
            }
            d => d,
        },
        min_body_rate: s.min_body_rate.unwrap_or(256),
        trusted_proxies: c.nets(
            "server.trusted_proxies",
            s.trusted_proxies.as_deref().unwrap_or(&[]),
        ),
        client_ip_header: match s.client_ip_header.as_deref() {
            None => ClientIpHeader::XForwardedFor,
            Some(h) if h.eq_ignore_ascii_case("x-forwarded-for") => ClientIpHeader::XForwardedFor,
            Some(h) if h.eq_ignore_ascii_case("forwarded") => ClientIpHeader::Forwarded,
            Some(h) => {
                c.err(
                    "server.client_ip_header",
                    format!("{h:?} must be \"x-forwarded-for\" or \"forwarded\""),
                );
                ClientIpHeader::XForwardedFor
            }
        },
        log_format: match s.log_format.as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(o) => {
                c.err(
                    "server.log_format",
                    format!("{o:?} must be \"json\", \"text\" or \"auto\""),
                );
                LogFormat::Auto
            }
        },
        log_level: s.log_level.clone().unwrap_or_else(|| "info".into()),
        report_only: s.report_only.unwrap_or(false),
        token_cache_size: s.token_cache_size.unwrap_or(100_000),
        max_token_bytes: s.max_token_bytes.unwrap_or(16 * 1024),
        dpop_nonce_secret: c.secret("server.dpop_nonce_secret", &s.dpop_nonce_secret),
        dpop_replay_cache_size: s.dpop_replay_cache_size.unwrap_or(1_000_000),
        client_cert_header: client_cert_header(c, &s.client_cert_header),
    };
    if server.max_connections == 0 {
        c.err("server.max_connections", "must be at least 1");
    }
    if server.max_header_bytes < 1024 {
        c.err("server.max_header_bytes", "must be at least 1024");
    }
    if tracing_subscriber::EnvFilter::try_new(&server.log_level).is_err() {
        c.err(
            "server.log_level",
            format!("{:?} is not a valid log filter", server.log_level),
        );
    }
    server
}

/// `[[listener]]`: unique names, addresses, roles, TLS.
fn listeners(c: &mut Check<'_>, raw: &[ListenerFile]) -> Vec<Listener> {
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    if raw.is_empty() {
        c.err("listener", "at least one [[listener]] is required");
    }
    for (i, l) in raw.iter().enumerate() {
        let p = format!("listener[{i}]");
        let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
        c.name(&format!("{p}.name"), "listener", &name, &mut names);
        let address = match SocketAddr::from_str(&l.address) {
            Ok(a) => a,
            Err(_) => {
                c.err(
                    format!("{p}.address"),
                    format!("{:?} is not an address like 0.0.0.0:8443", l.address),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let role = match l.role.as_deref() {
            None | Some("proxy") => ListenerRole::Proxy,
            Some("signals") => ListenerRole::Signals,
            Some("authz") => ListenerRole::Authz,
            Some(o) => {
                c.err(
                    format!("{p}.role"),
                    format!("{o:?} must be \"proxy\", \"signals\" or \"authz\""),
                );
                ListenerRole::Proxy
            }
        };
        let tls = l.tls.as_ref().map(|t| c.tls(&format!("{p}.tls"), t));
        let authz = authz_listener(c, &p, role, l.authz.as_ref());
        listeners.push(Listener {
            name,
            address,
            role,
            tls,
            authz,
        });
    }
    listeners
}

/// `[admin]`: address, token, TLS (reachability is checked last, by
/// `admin_off_loopback_needs_auth`).
fn admin(c: &mut Check<'_>, a: &AdminFile) -> Admin {
    Admin {
        address: match SocketAddr::from_str(a.address.as_deref().unwrap_or("127.0.0.1:9901")) {
            Ok(x) => x,
            Err(_) => {
                c.err("admin.address", "not an address like 127.0.0.1:9901");
                SocketAddr::from(([127, 0, 0, 1], 9901))
            }
        },
        token: c.secret("admin.token", &a.token),
        tls: a.tls.as_ref().map(|t| c.tls("admin.tls", t)),
    }
}

/// `[store]`: backend (redb, redis, memory), retention, expiry.
fn store(c: &mut Check<'_>, st: &StoreFile, base: &Path) -> Store {
    redis_keys_only_with_redis(c, st);
    let backend = match (st.backend.as_deref(), &st.path) {
        (Some("redis"), _) => redis_backend(c, st, base),
        (None | Some("redb"), Some(p)) => StoreBackend::Redb(base.join(p)),
        (None | Some("redb"), None) => StoreBackend::Redb(PathBuf::from(DEFAULT_STORE_PATH)),
        (Some("memory"), _) => StoreBackend::Memory,
        (Some(o), _) => {
            c.err(
                "store.backend",
                format!("{o:?} must be \"redb\", \"redis\" or \"memory\""),
            );
            StoreBackend::Memory
        }
    };
    Store {
        backend,
        retention: c.duration("store.retention", &st.retention, DEFAULT_RETENTION),
        expiry_interval: {
            let d = c.duration(
                "store.expiry_interval",
                &st.expiry_interval,
                DEFAULT_EXPIRY_INTERVAL,
            );
            if d < Duration::from_secs(1) {
                c.err("store.expiry_interval", "must be at least 1s");
            }
            d.max(Duration::from_secs(1))
        },
        ignore_corrupt: st.ignore_corrupt.unwrap_or(false),
    }
}

/// `[upstreams.NAME]`: URL, timeouts, CA and client certificate.
fn upstreams(
    c: &mut Check<'_>,
    raw: &BTreeMap<String, UpstreamFile>,
) -> BTreeMap<String, Upstream> {
    let mut upstreams = BTreeMap::new();
    for (name, u) in raw {
        let p = format!("upstreams.{name}");
        if name.trim().is_empty() {
            c.err(&p, "upstream name must not be empty");
        }
        let url = match http::Uri::from_str(&u.url) {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() =>
            {
                uri
            }
            _ => {
                c.err(
                    format!("{p}.url"),
                    format!("{:?} must be an http:// or https:// URL", u.url),
                );
                http::Uri::from_static("http://invalid")
            }
        };
        let client_cert = match (&u.client_cert, &u.client_key) {
            (Some(cert), Some(key)) => Some((
                c.file(&format!("{p}.client_cert"), cert),
                c.file(&format!("{p}.client_key"), key),
            )),
            (None, None) => None,
            _ => {
                c.err(&p, "client_cert and client_key go together");
                None
            }
        };
        upstreams.insert(
            name.clone(),
            Upstream {
                name: name.clone(),
                url,
                connect_timeout: c.duration(
                    &format!("{p}.connect_timeout"),
                    &u.connect_timeout,
                    Duration::from_secs(5),
                ),
                request_timeout: c.duration(
                    &format!("{p}.request_timeout"),
                    &u.request_timeout,
                    Duration::from_secs(60),
                ),
                idle_timeout: c.duration(
                    &format!("{p}.idle_timeout"),
                    &u.idle_timeout,
                    Duration::from_secs(90),
                ),
                ca: u.ca.as_ref().map(|f| c.file(&format!("{p}.ca"), f)),
                client_cert,
            },
        );
    }
    upstreams
}

/// `[[issuer]]`: unique names, tenants, audiences, keys, algorithms, claim map.
fn issuers(c: &mut Check<'_>, raw: &[IssuerFile]) -> Vec<Issuer> {
    let mut issuers = Vec::new();
    let mut issuer_names = HashSet::new();
    for (i, is) in raw.iter().enumerate() {
        let p = format!("issuer[{i}]");
        c.name(&format!("{p}.name"), "issuer", &is.name, &mut issuer_names);
        issuers.push(issuer(c, &p, is));
    }
    issuers
}

/// One `[[issuer]]` at TOML path `p`.
fn issuer(c: &mut Check<'_>, p: &str, is: &IssuerFile) -> Issuer {
    let allow_http = is.allow_insecure_http.unwrap_or(false);
    if is.issuer.contains("{tenantid}") && is.tenants.is_empty() {
        c.err(
            format!("{p}.tenants"),
            "a {tenantid} issuer template needs an allow-list of tenants",
        );
    }
    if is.audiences.is_empty() {
        c.err(
            format!("{p}.audiences"),
            "at least one audience is required",
        );
    }
    for (key, v) in [("authorization_uri", &is.authorization_uri)] {
        if let Some(u) = v {
            c.url(&format!("{p}.{key}"), u, true);
        }
    }
    Issuer {
        name: is.name.clone(),
        issuer: is.issuer.clone(),
        tenants: is.tenants.clone(),
        keys: c.key_source(p, &is.discovery, &is.jwks_uri, &is.jwks_file, allow_http),
        key_policy: key_policy(
            c,
            p,
            allow_http,
            &is.refresh_interval,
            &is.min_refresh,
            &is.max_refresh,
            &is.unknown_kid_cooldown,
        ),
        audiences: is.audiences.clone(),
        algorithms: c.algorithms(&format!("{p}.algorithms"), &is.algorithms, TOKEN_ALGS),
        leeway: c.duration(&format!("{p}.leeway"), &is.leeway, Duration::from_secs(60)),
        max_lifetime: c.opt_duration(&format!("{p}.max_lifetime"), &is.max_lifetime),
        authorization_uri: is.authorization_uri.clone(),
        realm: is.realm.clone(),
        claim_map: claim_map(c, p, is),
        sender: sender_policy(c, p, SenderKeys::of_issuer(is)),
    }
}

/// An issuer's `*_claim(s)` keys: which claims name the subject, session, token, tenant, device
/// and e-mail.
fn claim_map(c: &mut Check<'_>, p: &str, is: &IssuerFile) -> ClaimMap {
    let d = ClaimMap::default();
    let one = |c: &mut Check<'_>, key: &str, v: &Option<String>, default: String| match v {
        Some(x) if x.trim().is_empty() => {
            c.err(format!("{p}.{key}"), "must name a claim");
            default
        }
        Some(x) => x.clone(),
        None => default,
    };
    let many = |c: &mut Check<'_>, key: &str, v: &Option<Vec<String>>, default: Vec<String>| match v
    {
        Some(l) if l.is_empty() || l.iter().any(|x| x.trim().is_empty()) => {
            c.err(format!("{p}.{key}"), "must list one or more claim names");
            default
        }
        Some(l) => l.clone(),
        None => default,
    };
    ClaimMap {
        subject: many(c, "subject_claims", &is.subject_claims, d.subject),
        session: one(c, "session_claim", &is.session_claim, d.session),
        token_id: many(c, "token_id_claims", &is.token_id_claims, d.token_id),
        tenant: one(c, "tenant_claim", &is.tenant_claim, d.tenant),
        device: one(c, "device_claim", &is.device_claim, d.device),
        email: many(c, "email_claims", &is.email_claims, d.email),
    }
}

/// `[[route]]`: unique names, and each route against the upstreams and issuers defined.
fn routes(
    c: &mut Check<'_>,
    raw: &[RouteFile],
    upstreams: &BTreeMap<String, Upstream>,
    issuer_names: &HashSet<&str>,
    answers_checks: bool,
) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let p = format!("route[{i}]");
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        c.name(&format!("{p}.name"), "route", &name, &mut route_names);
        routes.push(route(
            c,
            &p,
            name,
            r,
            (upstreams, answers_checks),
            issuer_names,
        ));
    }
    routes
}

/// One `[[route]]` at TOML path `p`: match (hosts, prefix, methods), auth, grants, headers.
/// `answers_checks`: an authz listener exists, so a route may omit its upstream.
fn route(
    c: &mut Check<'_>,
    p: &str,
    name: String,
    r: &RouteFile,
    (upstreams, answers_checks): (&BTreeMap<String, Upstream>, bool),
    issuer_names: &HashSet<&str>,
) -> Route {
    match &r.upstream {
        Some(u) if !upstreams.contains_key(u) => {
            c.err(
                format!("{p}.upstream"),
                format!("no [upstreams.{u}] is defined"),
            );
        }
        None if !answers_checks => c.err(
            format!("{p}.upstream"),
            "required (only a route of a configuration with a role = \"authz\" listener may omit it: it then only answers authorization checks)",
        ),
        _ => {}
    }
    let path_prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') {
        c.err(format!("{p}.path_prefix"), "must start with /");
    }
    let hosts = r
        .hosts
        .iter()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(sfx) => HostPattern::Suffix(format!(".{sfx}")),
                None => HostPattern::Exact(h),
            }
        })
        .collect();
    let mut methods = Vec::new();
    for (j, m) in r.methods.iter().enumerate() {
        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => c.err(
                format!("{p}.methods[{j}]"),
                format!("{m:?} is not an HTTP method"),
            ),
        }
    }
    let auth = match r.auth.as_deref() {
        None | Some("required") => AuthMode::Required,
        Some("optional") => AuthMode::Optional,
        Some("none") => AuthMode::None,
        Some(o) => {
            c.err(
                format!("{p}.auth"),
                format!("{o:?} must be \"required\", \"optional\" or \"none\""),
            );
            AuthMode::Required
        }
    };
    if auth != AuthMode::None && issuer_names.is_empty() {
        c.err(
            format!("{p}.auth"),
            "the route requires tokens but no [[issuer]] is configured",
        );
    }
    for (j, iname) in r.issuers.iter().enumerate() {
        if !issuer_names.contains(iname.as_str()) {
            c.err(
                format!("{p}.issuers[{j}]"),
                format!("no issuer named {iname:?}"),
            );
        }
    }
    let match_mode = match r.match_mode.as_deref() {
        None | Some("any") => MatchMode::Any,
        Some("all") => MatchMode::All,
        Some(o) => {
            c.err(
                format!("{p}.match_mode"),
                format!("{o:?} must be \"any\" or \"all\""),
            );
            MatchMode::Any
        }
    };
    let mut claims = Vec::new();
    for (j, cr) in r.claims.iter().enumerate() {
        let allowed = match (&cr.equals, &cr.one_of) {
            (Some(e), None) => vec![e.clone()],
            (None, Some(l)) if !l.is_empty() => l.clone(),
            _ => {
                c.err(
                    format!("{p}.claims[{j}]"),
                    "exactly one of equals or one_of (non-empty) is required",
                );
                Vec::new()
            }
        };
        claims.push(ClaimRule {
            claim: cr.claim.clone(),
            allowed,
        });
    }
    let mut identity_headers = Vec::new();
    for (h, claim) in &r.identity_headers {
        match http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(name) => identity_headers.push((name, claim.clone())),
            Err(_) => c.err(
                format!("{p}.identity_headers.{h}"),
                "not a valid header name",
            ),
        }
    }
    let upgrades = r
        .upgrades
        .clone()
        .unwrap_or_else(|| vec!["websocket".into()]);
    for (j, u) in upgrades
        .iter()
        .enumerate()
        .filter(|(_, u)| *u != "websocket")
    {
        c.err(format!("{p}.upgrades[{j}]"), format!("{u:?}: only \"websocket\" can be upgraded to (another tunnel, h2c above all, would carry requests past authentication)"));
    }
    Route {
        name,
        hosts,
        path_prefix,
        methods,
        upstream: r.upstream.clone(),
        strip_prefix: r.strip_prefix.unwrap_or(false),
        auth,
        issuers: r.issuers.clone(),
        scopes: r.scopes.clone(),
        roles: r.roles.clone(),
        match_mode,
        claims,
        identity_headers,
        forward_authorization: r.forward_authorization.unwrap_or(true),
        report_only: r.report_only.unwrap_or(false),
        upgrades,
        cae: route_cae(c, p, &r.cae),
        sender: sender_policy(c, p, SenderKeys::of_route(r)),
    }
}

/// A route's `[route.cae]` policy at TOML path `p`.
fn route_cae(c: &mut Check<'_>, p: &str, ca: &CaeFile) -> CaePolicy {
    let cae = CaePolicy {
        revocation: ca.revocation.unwrap_or(true),
        token_ip: ca.token_ip.unwrap_or(false),
        signal_ip: ca.signal_ip.unwrap_or(false),
        allow_locations: c.nets(&format!("{p}.cae.allow_locations"), &ca.allow_locations),
        deny_locations: c.nets(&format!("{p}.cae.deny_locations"), &ca.deny_locations),
        auth_context: ca.auth_context.clone(),
        acr_values: ca.acr_values.clone(),
        max_age: c.opt_duration(&format!("{p}.cae.max_age"), &ca.max_age),
    };
    if let Some(ctx) = &cae.auth_context {
        if ctx.is_empty() || !ctx.bytes().all(|b| b.is_ascii_alphanumeric()) {
            c.err(
                format!("{p}.cae.auth_context"),
                "must be an auth context id such as \"c1\"",
            );
        }
    }
    cae
}

/// `[[transmitter]]`: each SSF transmitter; push paths are unique across all of them.
fn transmitters(
    c: &mut Check<'_>,
    raw: &[TransmitterFile],
    issuer_names: &HashSet<&str>,
) -> Vec<Transmitter> {
    let mut transmitters = Vec::new();
    let mut push_paths = HashSet::new();
    for (i, t) in raw.iter().enumerate() {
        let p = format!("transmitter[{i}]");
        transmitters.push(transmitter(c, &p, t, issuer_names, &mut push_paths));
    }
    transmitters
}

/// One `[[transmitter]]` at TOML path `p`: audiences, delivery (push, poll, stream), keys.
fn transmitter(
    c: &mut Check<'_>,
    p: &str,
    t: &TransmitterFile,
    issuer_names: &HashSet<&str>,
    push_paths: &mut HashSet<String>,
) -> Transmitter {
    let allow_http = t.allow_insecure_http.unwrap_or(false);
    if t.audiences.is_empty() {
        c.err(
            format!("{p}.audiences"),
            "at least one audience (our receiver id) is required",
        );
    }
    if let Some(ti) = &t.token_issuer {
        if !issuer_names.contains(ti.as_str()) {
            c.err(
                format!("{p}.token_issuer"),
                format!("no issuer named {ti:?}"),
            );
        }
    }
    let push = t.push.as_ref().map(|pu| push(c, p, pu, push_paths));
    let poll = t.poll.as_ref().map(|po| poll(c, p, po, allow_http));
    let stream = t.stream.as_ref().map(|s| stream(c, p, &t.name, s));
    if push.is_none() && poll.is_none() && stream.is_none() {
        c.err(p, "a transmitter needs push, poll or stream delivery");
    }
    if stream.is_some() && t.discovery.is_none() {
        c.err(
            format!("{p}.stream"),
            "stream management needs discovery (the transmitter's ssf-configuration URL)",
        );
    }
    Transmitter {
        name: t.name.clone(),
        issuer: t.issuer.clone(),
        keys: c.key_source(p, &t.discovery, &t.jwks_uri, &t.jwks_file, allow_http),
        key_policy: key_policy(c, p, allow_http, &None, &None, &None, &None),
        audiences: t.audiences.clone(),
        algorithms: c.algorithms(&format!("{p}.algorithms"), &t.algorithms, SET_ALGS),
        min_rsa_bits: t.min_rsa_bits.unwrap_or(2048),
        risk_revoke_level: match t.risk_revoke_level.as_deref() {
            None => RiskLevel::High,
            Some(l) => RiskLevel::parse(l).unwrap_or_else(|| {
                c.err(
                    format!("{p}.risk_revoke_level"),
                    format!("{l:?} must be low, medium or high"),
                );
                RiskLevel::High
            }),
        },
        token_issuer: t.token_issuer.clone(),
        push,
        poll,
        stream,
    }
}

/// A transmitter's `[transmitter.push]` (RFC 8935): path, authorization, pinned certificates.
fn push(c: &mut Check<'_>, p: &str, pu: &PushFile, push_paths: &mut HashSet<String>) -> Push {
    if !pu.path.starts_with('/') {
        c.err(format!("{p}.push.path"), "must start with /");
    }
    if !push_paths.insert(pu.path.clone()) {
        c.err(
            format!("{p}.push.path"),
            format!("path {:?} is used by another transmitter", pu.path),
        );
    }
    let mut client_cert_sha256 = Vec::new();
    for (j, f) in pu.client_cert_sha256.iter().flatten().enumerate() {
        match parse_sha256(f) {
            Some(d) => client_cert_sha256.push(d),
            None => c.err(
                format!("{p}.push.client_cert_sha256[{j}]"),
                format!("{f:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"),
            ),
        }
    }
    if pu.previous_authorization.is_some() && pu.authorization.is_none() {
        c.err(
            format!("{p}.push.previous_authorization"),
            "needs authorization (the value the transmitter moves to)",
        );
    }
    Push {
        path: pu.path.clone(),
        authorization: c.secret(&format!("{p}.push.authorization"), &pu.authorization),
        previous_authorization: c.secret(
            &format!("{p}.push.previous_authorization"),
            &pu.previous_authorization,
        ),
        max_body: pu.max_body.unwrap_or(64 * 1024),
        client_cert_sha256,
    }
}

/// A transmitter's `[transmitter.poll]` (RFC 8936): endpoint, authorization, pacing.
fn poll(c: &mut Check<'_>, p: &str, po: &PollFile, allow_http: bool) -> Poll {
    c.url(&format!("{p}.poll.endpoint"), &po.endpoint, allow_http);
    Poll {
        endpoint: po.endpoint.clone(),
        authorization: c.secret(&format!("{p}.poll.authorization"), &po.authorization),
        max_events: po.max_events.unwrap_or(100),
        long_poll: po.long_poll.unwrap_or(true),
        interval: c.duration(
            &format!("{p}.poll.interval"),
            &po.interval,
            Duration::from_secs(5),
        ),
        timeout: c.duration(
            &format!("{p}.poll.timeout"),
            &po.timeout,
            Duration::from_secs(30),
        ),
    }
}

/// A transmitter's `[transmitter.stream]`: SSF stream management, its credentials, periodic
/// verification and what happens to the stream when the transmitter is removed.
fn stream(c: &mut Check<'_>, p: &str, name: &str, s: &StreamFile) -> StreamMgmt {
    let verify_interval =
        c.opt_duration(&format!("{p}.stream.verify_interval"), &s.verify_interval);
    let verify_timeout = c.duration(
        &format!("{p}.stream.verify_timeout"),
        &s.verify_timeout,
        Duration::from_secs(30),
    );
    if verify_interval.is_some_and(|d| d.is_zero()) {
        c.err(
            format!("{p}.stream.verify_interval"),
            "must be above 0 (leave it out to turn periodic verification off)",
        );
    }
    if verify_timeout.is_zero() {
        c.err(format!("{p}.stream.verify_timeout"), "must be above 0");
    }
    if verify_interval.is_some_and(|i| !i.is_zero() && verify_timeout > i) {
        c.err(
            format!("{p}.stream.verify_timeout"),
            "must not be longer than verify_interval",
        );
    }
    StreamMgmt {
        delivery: match s.delivery.as_str() {
            "push" => Delivery::Push,
            "poll" => Delivery::Poll,
            o => {
                c.err(
                    format!("{p}.stream.delivery"),
                    format!("{o:?} must be \"push\" or \"poll\""),
                );
                Delivery::Push
            }
        },
        endpoint_url: s.endpoint_url.clone(),
        events_requested: s.events_requested.clone(),
        description: s
            .description
            .clone()
            .unwrap_or_else(|| format!("cae-proxy receiver {name}")),
        token_endpoint: s.token_endpoint.clone(),
        client_id: s.client_id.clone(),
        client_secret: c.secret(&format!("{p}.stream.client_secret"), &s.client_secret),
        scope: s.scope.clone(),
        bearer: c.secret(&format!("{p}.stream.bearer"), &s.bearer),
        verify: s.verify.unwrap_or(true),
        verify_interval: verify_interval.filter(|d| !d.is_zero()),
        verify_timeout,
        ready_needs_verification: s.ready_needs_verification.unwrap_or(true),
        on_remove: match s.on_remove.as_deref() {
            None | Some("delete") => OnRemove::Delete,
            Some("keep") => OnRemove::Keep,
            Some(o) => {
                c.err(
                    format!("{p}.stream.on_remove"),
                    format!("{o:?} must be \"delete\" or \"keep\""),
                );
                OnRemove::Delete
            }
        },
    }
}

/// Transmitters against listeners: push needs a signals listener; unique names; push without
/// an authorization secret or with pinned certificates needs every signals listener on mTLS.
fn transmitters_need_signals_listeners(
    c: &mut Check<'_>,
    transmitters: &[Transmitter],
    listeners: &[Listener],
) {
    if !transmitters.iter().all(|t| t.push.is_none())
        && !listeners.iter().any(|l| l.role == ListenerRole::Signals)
    {
        c.err(
            "listener",
            "a transmitter uses push but no listener has role = \"signals\"",
        );
    }

    let mut seen = HashSet::new();
    let signals_mtls = listeners
        .iter()
        .filter(|l| l.role == ListenerRole::Signals)
        .all(|l| {
            l.tls
                .as_ref()
                .is_some_and(|t| t.client_ca.is_some() && t.client_auth_required)
        });
    for (i, t) in transmitters.iter().enumerate() {
        c.name(
            &format!("transmitter[{i}].name"),
            "transmitter",
            &t.name,
            &mut seen,
        );
        if t.push.as_ref().is_some_and(|p| p.authorization.is_none()) && !signals_mtls {
            c.err(format!("transmitter[{i}].push.authorization"), "push needs an authorization secret unless every signals listener requires client certificates (mTLS)");
        }
        if t.push
            .as_ref()
            .is_some_and(|p| !p.client_cert_sha256.is_empty())
            && !signals_mtls
        {
            c.err(
                format!("transmitter[{i}].push.client_cert_sha256"),
                "needs every signals listener to require client certificates ([listener.tls] client_ca)",
            );
        }
    }
}

/// An admin listener off loopback needs a token or required client certificates.
fn admin_off_loopback_needs_auth(c: &mut Check<'_>, a: &Admin) {
    if a.token.is_none()
        && !a.address.ip().is_loopback()
        && !a
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some() && t.client_auth_required)
    {
        c.err(
            "admin.token",
            "an admin listener off loopback needs a token or required client certificates",
        );
    }
}

/// `[listener.authz]`: allowed on `role = "authz"` listeners only, where it defaults to
/// [`Authz::default`]. `path_prefix` starts with `/`, names at least one segment, has no
/// trailing `/`, and holds only characters a request path carries as they are.
fn authz_listener(
    c: &mut Check<'_>,
    p: &str,
    role: ListenerRole,
    raw: Option<&AuthzFile>,
) -> Option<Authz> {
    if role != ListenerRole::Authz {
        if raw.is_some() {
            c.err(
                format!("{p}.authz"),
                "only a listener with role = \"authz\" takes [listener.authz]",
            );
        }
        return None;
    }
    let mut authz = Authz::default();
    if let Some(prefix) = raw.and_then(|a| a.path_prefix.as_ref()) {
        let plain = prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'));
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') || !plain {
            c.err(
                format!("{p}.authz.path_prefix"),
                format!("{prefix:?} must be a path such as \"/authz\": a leading /, no trailing /, no ?, # or %"),
            );
        }
        authz.path_prefix = prefix.clone();
    }
    Some(authz)
}

/// `[store] backend = "redis"`: URL (a secret reference; never echoed in errors), prefix,
/// embedded copy path and timings.
fn redis_backend(c: &mut Check<'_>, st: &StoreFile, base: &Path) -> StoreBackend {
    let url = match c.secret("store.redis_url", &st.redis_url) {
        Some(u) => {
            let scheme = url::Url::parse(u.expose()).map(|x| x.scheme().to_string());
            match scheme.as_deref() {
                Ok("redis" | "rediss") => {}
                _ => c.err(
                    "store.redis_url",
                    "must be a redis:// or rediss:// (TLS) URL (value not shown: it may hold a password)",
                ),
            }
            u
        }
        None => {
            if st.redis_url.is_none() {
                c.err("store.redis_url", "required with backend = \"redis\"");
            }
            Secret::from_value("")
        }
    };
    let key_prefix = st
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    if key_prefix.is_empty() || key_prefix.chars().any(|ch| ch.is_whitespace()) {
        c.err(
            "store.key_prefix",
            "must be non-empty and without spaces (e.g. \"cae:\")",
        );
    }
    if let Some(id) = &st.replica_id {
        if id.is_empty() || id.len() > 128 || id.chars().any(|ch| ch.is_whitespace()) {
            c.err(
                "store.replica_id",
                "must be 1 to 128 characters without spaces",
            );
        }
    }
    let timeout = c.duration(
        "store.redis_timeout",
        &st.redis_timeout,
        Duration::from_secs(2),
    );
    if timeout.is_zero() {
        c.err("store.redis_timeout", "must be more than zero");
    }
    let poll_lease = c.duration("store.poll_lease", &st.poll_lease, Duration::from_secs(10));
    if poll_lease < Duration::from_millis(300) {
        c.err("store.poll_lease", "must be at least 300ms");
    }
    let tls = redis_tls(c, st, &url);
    let topology = redis_topology(c, st, &url);
    let min_replicas_acked = st.min_replicas_acked.unwrap_or(0);
    if min_replicas_acked > 16 {
        c.err(
            "store.min_replicas_acked",
            "at most 16 (the Redis replicas that must hold a change before it is acknowledged)",
        );
    }
    let replicas_ack_timeout = c.duration(
        "store.replicas_ack_timeout",
        &st.replicas_ack_timeout,
        DEFAULT_REPLICAS_ACK_TIMEOUT,
    );
    if st.replicas_ack_timeout.is_some() {
        if min_replicas_acked == 0 {
            c.err(
                "store.replicas_ack_timeout",
                "only used with min_replicas_acked of 1 or more",
            );
        } else if replicas_ack_timeout < Duration::from_millis(10) {
            c.err("store.replicas_ack_timeout", "must be at least 10ms");
        }
    }
    let max_fleet_lag = c.duration(
        "store.max_fleet_lag",
        &st.max_fleet_lag,
        DEFAULT_MAX_FLEET_LAG,
    );
    if !max_fleet_lag.is_zero() && max_fleet_lag < Duration::from_secs(1) {
        c.err(
            "store.max_fleet_lag",
            "must be at least 1s, or \"0s\" for a readiness that ignores the fleet lag",
        );
    }
    StoreBackend::Redis(Box::new(RedisBackend {
        url,
        key_prefix,
        path: st
            .path
            .as_ref()
            .map(|p| base.join(p))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH)),
        replica_id: st.replica_id.clone(),
        timeout,
        poll_lease,
        tls,
        topology,
        min_replicas_acked,
        replicas_ack_timeout,
        max_fleet_lag: (!max_fleet_lag.is_zero()).then_some(max_fleet_lag),
    }))
}

/// `store.redis_sentinels` (with `redis_sentinel_master`, `redis_sentinel_password`) or
/// `store.redis_cluster_nodes`: where the primary is found, instead of `redis_url`'s host.
fn redis_topology(c: &mut Check<'_>, st: &StoreFile, url: &Secret) -> RedisTopology {
    let nodes = |c: &mut Check<'_>, key: &str, list: &[String]| -> Vec<(String, u16)> {
        if list.is_empty() {
            c.err(format!("store.{key}"), "must name at least one host:port");
        }
        let mut out = Vec::new();
        for (i, n) in list.iter().enumerate() {
            match host_port(n) {
                Some(hp) => out.push(hp),
                None => c.err(
                    format!("store.{key}[{i}]"),
                    format!(
                        "{n:?} is not host:port (an IPv6 address in brackets: \"[::1]:26379\")"
                    ),
                ),
            }
        }
        out
    };
    if st.redis_sentinels.is_none() {
        for (key, set) in [
            ("redis_sentinel_master", st.redis_sentinel_master.is_some()),
            (
                "redis_sentinel_password",
                st.redis_sentinel_password.is_some(),
            ),
        ] {
            if set {
                c.err(format!("store.{key}"), "only used with redis_sentinels");
            }
        }
    }
    match (&st.redis_sentinels, &st.redis_cluster_nodes) {
        (Some(_), Some(_)) => {
            c.err(
                "store.redis_cluster_nodes",
                "either redis_sentinels (Sentinel) or redis_cluster_nodes (Redis Cluster), not both",
            );
            RedisTopology::Standalone
        }
        (Some(list), None) => {
            let sentinels = nodes(c, "redis_sentinels", list);
            let master = match &st.redis_sentinel_master {
                Some(m) if !m.is_empty() && !m.chars().any(|ch| ch.is_whitespace()) => m.clone(),
                Some(_) => {
                    c.err(
                        "store.redis_sentinel_master",
                        "must be the name the sentinels monitor (non-empty, no spaces)",
                    );
                    String::new()
                }
                None => {
                    c.err(
                        "store.redis_sentinel_master",
                        "required with redis_sentinels (the name in `sentinel monitor <name> …`)",
                    );
                    String::new()
                }
            };
            let password = c.secret("store.redis_sentinel_password", &st.redis_sentinel_password);
            RedisTopology::Sentinel {
                sentinels,
                master,
                password,
            }
        }
        (None, Some(list)) => {
            let nodes = nodes(c, "redis_cluster_nodes", list);
            // Redis Cluster has database 0 only.
            if let Ok(u) = url::Url::parse(url.expose()) {
                if !matches!(u.path(), "" | "/" | "/0") {
                    c.err(
                        "store.redis_url",
                        "Redis Cluster has database 0 only: no /<db> in the URL (value not shown: it may hold a password)",
                    );
                }
            }
            RedisTopology::Cluster { nodes }
        }
        (None, None) => RedisTopology::Standalone,
    }
}

/// `host:port` or `[v6]:port`, port not 0.
fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.to_string(),
        None if !host.is_empty() && !host.contains([':', '/', '@', ' ']) => host.to_string(),
        None => return None,
    };
    Some((host, port))
}

/// `store.redis_ca`, `store.redis_client_cert` / `redis_client_key`: PEM files that must exist,
/// only with a `rediss://` URL (ignored otherwise, so a mistake); the pair goes together.
fn redis_tls(c: &mut Check<'_>, st: &StoreFile, url: &Secret) -> Option<RedisTls> {
    let keys = [
        ("redis_ca", &st.redis_ca),
        ("redis_client_cert", &st.redis_client_cert),
        ("redis_client_key", &st.redis_client_key),
    ];
    if keys.iter().all(|(_, v)| v.is_none()) {
        return None;
    }
    // An unparsable or unresolved URL was reported already.
    if let Ok(u) = url::Url::parse(url.expose()) {
        if u.scheme() != "rediss" {
            for (key, v) in keys {
                if v.is_some() {
                    c.err(
                        format!("store.{key}"),
                        "only used with a rediss:// (TLS) redis_url",
                    );
                }
            }
        }
    }
    let ca = st.redis_ca.as_ref().map(|f| c.file("store.redis_ca", f));
    let client = match (&st.redis_client_cert, &st.redis_client_key) {
        (Some(cert), Some(key)) => Some((
            c.file("store.redis_client_cert", cert),
            c.file("store.redis_client_key", key),
        )),
        (Some(_), None) => {
            c.err(
                "store.redis_client_key",
                "required with redis_client_cert (they go together)",
            );
            None
        }
        (None, Some(_)) => {
            c.err(
                "store.redis_client_cert",
                "required with redis_client_key (they go together)",
            );
            None
        }
        (None, None) => None,
    };
    Some(RedisTls { ca, client })
}

/// Redis keys given to another backend are a mistake (they would be silently ignored).
fn redis_keys_only_with_redis(c: &mut Check<'_>, st: &StoreFile) {
    if st.backend.as_deref() == Some("redis") {
        return;
    }
    for (key, set) in [
        ("redis_url", st.redis_url.is_some()),
        ("key_prefix", st.key_prefix.is_some()),
        ("replica_id", st.replica_id.is_some()),
        ("redis_timeout", st.redis_timeout.is_some()),
        ("poll_lease", st.poll_lease.is_some()),
        ("redis_ca", st.redis_ca.is_some()),
        ("redis_client_cert", st.redis_client_cert.is_some()),
        ("redis_client_key", st.redis_client_key.is_some()),
        ("redis_sentinels", st.redis_sentinels.is_some()),
        ("redis_sentinel_master", st.redis_sentinel_master.is_some()),
        (
            "redis_sentinel_password",
            st.redis_sentinel_password.is_some(),
        ),
        ("redis_cluster_nodes", st.redis_cluster_nodes.is_some()),
        ("min_replicas_acked", st.min_replicas_acked.is_some()),
        ("replicas_ack_timeout", st.replicas_ack_timeout.is_some()),
        ("max_fleet_lag", st.max_fleet_lag.is_some()),
    ] {
        if set {
            c.err(format!("store.{key}"), "only used with backend = \"redis\"");
        }
    }
}

fn key_policy(
    c: &mut Check<'_>,
    p: &str,
    allow_insecure_http: bool,
    refresh: &Option<String>,
    min: &Option<String>,
    max: &Option<String>,
    cooldown: &Option<String>,
) -> KeyPolicy {
    KeyPolicy {
        allow_insecure_http,
        refresh_interval: c.duration(
            &format!("{p}.refresh_interval"),
            refresh,
            Duration::from_secs(3600),
        ),
        min_refresh: c.duration(&format!("{p}.min_refresh"), min, Duration::from_secs(300)),
        max_refresh: c.duration(
            &format!("{p}.max_refresh"),
            max,
            Duration::from_secs(86_400),
        ),
        unknown_kid_cooldown: c.duration(
            &format!("{p}.unknown_kid_cooldown"),
            cooldown,
            Duration::from_secs(30),
        ),
    }
}

/// The sender-constraint keys an issuer and a route share (RFC 9449, RFC 8705).
struct SenderKeys<'a> {
    constraint: &'a Option<String>,
    algorithms: &'a Option<Vec<String>>,
    window: &'a Option<String>,
    nonce: Option<bool>,
    rotation: &'a Option<String>,
}

impl SenderKeys<'_> {
    fn of_issuer(f: &IssuerFile) -> SenderKeys<'_> {
        SenderKeys {
            constraint: &f.sender_constraint,
            algorithms: &f.dpop_algorithms,
            window: &f.dpop_proof_window,
            nonce: f.dpop_nonce,
            rotation: &f.dpop_nonce_rotation,
        }
    }

    fn of_route(f: &RouteFile) -> SenderKeys<'_> {
        SenderKeys {
            constraint: &f.sender_constraint,
            algorithms: &f.dpop_algorithms,
            window: &f.dpop_proof_window,
            nonce: f.dpop_nonce,
            rotation: &f.dpop_nonce_rotation,
        }
    }
}

/// `sender_constraint`, `dpop_algorithms`, `dpop_proof_window`, `dpop_nonce` and
/// `dpop_nonce_rotation` of the issuer or route at `p`; unset keys stay `None`.
fn sender_policy(c: &mut Check<'_>, p: &str, k: SenderKeys<'_>) -> SenderPolicy {
    let constraint = k.constraint.as_deref().map(|v| match v {
        "none" => SenderConstraint::None,
        "allowed" => SenderConstraint::Allowed,
        "required" => SenderConstraint::Required,
        o => {
            c.err(
                format!("{p}.sender_constraint"),
                format!("{o:?} must be \"none\", \"allowed\" or \"required\""),
            );
            SenderConstraint::Required
        }
    });
    let dpop_algorithms = k.algorithms.as_ref().map(|list| {
        if list.is_empty() {
            c.err(
                format!("{p}.dpop_algorithms"),
                "at least one algorithm is required",
            );
        }
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            match DpopAlg::parse(a) {
                Some(alg) => out.push(alg),
                None => c.err(
                    format!("{p}.dpop_algorithms[{i}]"),
                    format!(
                        "{a:?} is not an asymmetric JOSE algorithm (one of {})",
                        DpopAlg::ALL.map(DpopAlg::name).join(", ")
                    ),
                ),
            }
        }
        out
    });
    let mut bounded = |key: &str, v: &Option<String>, min: Duration, max: Duration| {
        let d = c.opt_duration(&format!("{p}.{key}"), v)?;
        if d < min || d > max {
            c.err(
                format!("{p}.{key}"),
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
        }
        Some(d.clamp(min, max))
    };
    let proof_window = bounded(
        "dpop_proof_window",
        k.window,
        Duration::from_secs(1),
        Duration::from_secs(600),
    );
    let nonce_rotation = bounded(
        "dpop_nonce_rotation",
        k.rotation,
        Duration::from_secs(10),
        Duration::from_secs(86_400),
    );
    SenderPolicy {
        constraint,
        dpop_algorithms,
        proof_window,
        nonce: k.nonce,
        nonce_rotation,
    }
}

/// `server.client_cert_header`: `client-cert` (default) or `x-forwarded-client-cert`.
fn client_cert_header(c: &mut Check<'_>, v: &Option<String>) -> ClientCertHeader {
    match v.as_deref() {
        None => ClientCertHeader::ClientCert,
        Some(h) if h.eq_ignore_ascii_case("client-cert") => ClientCertHeader::ClientCert,
        Some(h) if h.eq_ignore_ascii_case("x-forwarded-client-cert") => ClientCertHeader::Xfcc,
        Some(h) => {
            c.err(
                "server.client_cert_header",
                format!("{h:?} must be \"client-cert\" or \"x-forwarded-client-cert\""),
            );
            ClientCertHeader::ClientCert
        }
    }
}

/// Replicas of a fleet must accept each other's DPoP nonces: with a nonce on anywhere, fleet mode
/// needs `server.dpop_nonce_secret` (else each replica would draw its own key).
fn fleet_nonce_needs_a_secret(
    c: &mut Check<'_>,
    server: &Server,
    store: &Store,
    issuers: &[Issuer],
    routes: &[Route],
) {
    let nonce = issuers
        .iter()
        .map(|i| &i.sender)
        .chain(routes.iter().map(|r| &r.sender));
    if matches!(store.backend, StoreBackend::Redis(_))
        && server.dpop_nonce_secret.is_none()
        && nonce.into_iter().any(|s| s.nonce == Some(true))
    {
        c.err(
            "server.dpop_nonce_secret",
            "required in fleet mode when dpop_nonce is on (every replica must accept the nonces the others issue)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_error_with_its_path() {
        let text = r#"
            [server]
            idle_timeout = "forever"
            trusted_proxies = ["10.0.0.0/8", "nope"]
            [[listener]]
            address = "localhost"
            [[route]]
            upstream = "missing"
            auth = "sometimes"
        "#;
        let errs = Config::parse(text, Path::new(".")).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.idle_timeout",
                "server.trusted_proxies[1]",
                "listener[0].address",
                "route[0].upstream",
                "route[0].auth",
                "route[0].auth"
            ]
        );
    }

    #[test]
    fn blank_and_repeated_names_are_refused_with_their_paths() {
        let text = r#"
            [[listener]]
            name = " "
            address = "127.0.0.1:0"
            [upstreams.""]
            url = "http://127.0.0.1:1"
            [upstreams.app]
            url = "http://127.0.0.1:1"
            [[issuer]]
            name = ""
            issuer = "https://idp.example"
            audiences = ["api"]
            jwks_uri = "https://idp.example/jwks"
            [[route]]
            name = ""
            upstream = "app"
            [[route]]
            name = "r"
            upstream = "app"
            [[route]]
            name = "r"
            upstream = "app"
        "#;
        let errs = Config::parse(text, Path::new(".")).unwrap_err().0;
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("listener[0].name", "listener name must not be empty"),
                ("upstreams.", "upstream name must not be empty"),
                ("issuer[0].name", "issuer name must not be empty"),
                ("route[0].name", "route name must not be empty"),
                ("route[2].name", "duplicate route name \"r\""),
            ]
        );
    }

    #[test]
    fn redis_store_keys_are_checked_and_the_url_never_echoed() {
        let ok = Config::parse(
            "[[listener]]\naddress = \"127.0.0.1:8080\"\n[store]\nbackend = \"redis\"\nredis_url = \"rediss://u:pw@redis:6380/0\"\npath = \"s.redb\"\nkey_prefix = \"gw:\"\npoll_lease = \"5s\"\n",
            Path::new("/etc/cae"),
        )
        .unwrap();
        let StoreBackend::Redis(r) = &ok.store.backend else {
            panic!("{:?}", ok.store.backend)
        };
        assert_eq!(r.url.expose(), "rediss://u:pw@redis:6380/0");
        assert_eq!(r.key_prefix, "gw:");
        assert_eq!(r.path, Path::new("/etc/cae/s.redb"));
        assert_eq!(r.poll_lease, Duration::from_secs(5));
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert!(!format!("{r:?}").contains("pw"), "{r:?}");

        let err = Config::parse(
            "[store]\nbackend = \"redis\"\nredis_url = \"http://u:secretpw@redis\"\nkey_prefix = \"\"\npoll_lease = \"10ms\"\n",
            Path::new("."),
        )
        .unwrap_err();
        let paths: Vec<&str> = err
            .0
            .iter()
            .map(|e| e.path.as_str())
            .filter(|p| p.starts_with("store."))
            .collect();
        assert_eq!(
            paths,
            ["store.redis_url", "store.key_prefix", "store.poll_lease"]
        );
        assert!(!err.to_string().contains("secretpw"), "{err}");

        let store_errs = |text: &str| -> Vec<String> {
            let err = Config::parse(text, Path::new(".")).unwrap_err();
            err.0
                .iter()
                .map(|e| e.path.clone())
                .filter(|p| p.starts_with("store."))
                .collect()
        };
        assert_eq!(
            store_errs("[store]\nbackend = \"redis\"\n"),
            ["store.redis_url"]
        );
        assert_eq!(
            store_errs("[store]\nbackend = \"redb\"\nredis_url = \"redis://x\"\n"),
            ["store.redis_url"]
        );
    }

    #[test]
    fn sentinel_cluster_replica_acks_and_fleet_lag_keys() {
        let base = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[store]\nbackend = \"redis\"\npath = \"s.redb\"\n";
        let redis = |extra: &str| {
            let c = Config::parse(&format!("{base}{extra}"), Path::new("/x"))
                .unwrap_or_else(|e| panic!("{e}"));
            match c.store.backend {
                StoreBackend::Redis(r) => r,
                other => panic!("{other:?}"),
            }
        };
        let r = redis("redis_url = \"redis://:pw@primary/2\"\n");
        assert_eq!(r.topology, RedisTopology::Standalone);
        assert_eq!(r.min_replicas_acked, 0);
        assert_eq!(r.max_fleet_lag, Some(DEFAULT_MAX_FLEET_LAG));
        let r = redis("redis_url = \"rediss://:pw@cae/0\"\nredis_sentinels = [\"10.0.0.1:26379\", \"[::1]:26380\", \"s3.example:26379\"]\nredis_sentinel_master = \"cae\"\nredis_sentinel_password = \"sentinel-pw\"\nmin_replicas_acked = 1\nreplicas_ack_timeout = \"250ms\"\nmax_fleet_lag = \"0s\"\n");
        let RedisTopology::Sentinel {
            sentinels,
            master,
            password,
        } = &r.topology
        else {
            panic!("{:?}", r.topology)
        };
        assert_eq!(
            sentinels,
            &[
                ("10.0.0.1".to_string(), 26379),
                ("::1".to_string(), 26380),
                ("s3.example".to_string(), 26379)
            ]
        );
        assert_eq!(master, "cae");
        assert_eq!(password.as_ref().map(|p| p.expose()), Some("sentinel-pw"));
        assert_eq!(r.min_replicas_acked, 1);
        assert_eq!(r.replicas_ack_timeout, Duration::from_millis(250));
        assert_eq!(r.max_fleet_lag, None, "0s turns the readiness bound off");
        let r = redis(
            "redis_url = \"redis://:pw@any\"\nredis_cluster_nodes = [\"n1:7000\", \"n2:7001\"]\n",
        );
        assert_eq!(
            r.topology,
            RedisTopology::Cluster {
                nodes: vec![("n1".into(), 7000), ("n2".into(), 7001)]
            }
        );

        let errs = |extra: &str| -> Vec<String> {
            let e = Config::parse(&format!("{base}{extra}"), Path::new("/x")).unwrap_err();
            // Sorted: this test names the keys each mistake is reported at, not their order.
            let mut paths: Vec<String> = e.0.iter().map(|e| e.path.clone()).collect();
            paths.sort();
            paths
        };
        assert_eq!(
            errs("redis_url = \"redis://r\"\nredis_sentinels = [\"nope\", \"h:0\"]\n"),
            [
                "store.redis_sentinel_master",
                "store.redis_sentinels[0]",
                "store.redis_sentinels[1]"
            ]
        );
        assert_eq!(
            errs("redis_url = \"redis://r\"\nredis_sentinels = []\nredis_sentinel_master = \"a b\"\n"),
            ["store.redis_sentinel_master", "store.redis_sentinels"]
        );
        assert_eq!(
            errs("redis_url = \"redis://r\"\nredis_sentinels = [\"a:1\"]\nredis_sentinel_master = \"m\"\nredis_cluster_nodes = [\"b:2\"]\n"),
            ["store.redis_cluster_nodes"]
        );
        assert_eq!(
            errs("redis_url = \"redis://r/3\"\nredis_cluster_nodes = [\"b:2\"]\nredis_sentinel_master = \"m\"\n"),
            ["store.redis_sentinel_master", "store.redis_url"]
        );
        assert_eq!(
            errs("redis_url = \"redis://r\"\nmin_replicas_acked = 17\nreplicas_ack_timeout = \"1ms\"\nmax_fleet_lag = \"500ms\"\n"),
            ["store.max_fleet_lag", "store.min_replicas_acked", "store.replicas_ack_timeout"]
        );
        assert_eq!(
            errs("redis_url = \"redis://r\"\nreplicas_ack_timeout = \"1s\"\n"),
            ["store.replicas_ack_timeout"]
        );
        let other = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[store]\nbackend = \"redb\"\nmax_fleet_lag = \"5s\"\nmin_replicas_acked = 1\nredis_sentinels = [\"a:1\"]\n";
        let e = Config::parse(other, Path::new("/x")).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        // In file order.
        assert_eq!(
            paths,
            [
                "store.max_fleet_lag",
                "store.min_replicas_acked",
                "store.redis_sentinels"
            ]
        );
    }

    #[test]
    fn redis_tls_files_need_rediss_exist_and_pair() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let store = |url: &str, extra: &str| {
            format!("[[listener]]\naddress = \"127.0.0.1:8080\"\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\npath = \"s.redb\"\n{extra}")
        };
        let all = "redis_ca = \"ca.pem\"\nredis_client_cert = \"client.pem\"\nredis_client_key = \"client.key\"\n";
        let ok = Config::parse(&store("rediss://u:pw@redis:6380", all), dir.path()).unwrap();
        let redis = |c: Config| match c.store.backend {
            StoreBackend::Redis(r) => r,
            other => panic!("not redis: {other:?}"),
        };
        let tls = redis(ok).tls.unwrap();
        assert_eq!(tls.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(
            tls.client,
            Some((dir.path().join("client.pem"), dir.path().join("client.key")))
        );
        let ok = Config::parse(&store("rediss://redis:6380", ""), dir.path()).unwrap();
        assert_eq!(redis(ok).tls, None, "system roots, no client certificate");

        let paths = |text: &str| -> Vec<String> {
            let err = Config::parse(text, dir.path()).unwrap_err();
            err.0
                .iter()
                .map(|e| e.path.clone())
                .filter(|p| p.starts_with("store."))
                .collect()
        };
        assert_eq!(
            paths(&store("redis://redis:6379", all)),
            [
                "store.redis_ca",
                "store.redis_client_cert",
                "store.redis_client_key"
            ],
            "TLS files without rediss://"
        );
        assert_eq!(
            paths(&store(
                "rediss://redis:6380",
                "redis_client_cert = \"client.pem\"\n"
            )),
            ["store.redis_client_key"]
        );
        assert_eq!(
            paths(&store(
                "rediss://redis:6380",
                "redis_client_key = \"client.key\"\n"
            )),
            ["store.redis_client_cert"]
        );
        let err = Config::parse(
            &store("rediss://redis:6380", "redis_ca = \"missing.pem\"\n"),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(err.0[0].path, "store.redis_ca");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert_eq!(
            paths("[store]\nbackend = \"redb\"\nredis_ca = \"ca.pem\"\n"),
            ["store.redis_ca"],
            "only with backend = redis"
        );
    }

    #[test]
    fn unknown_keys_are_errors_all_at_once_with_their_paths() {
        let text = "[server]\nreport_onyl = true\n[[listener]]\naddress = \"127.0.0.1:0\"\ntypo = 1\n[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nclient_cas = \"x\"\n";
        let err = Config::parse(text, Path::new(".")).unwrap_err();
        let mut unknown: Vec<&str> = err
            .0
            .iter()
            .filter(|e| e.message.starts_with("unknown key"))
            .map(|e| e.path.as_str())
            .collect();
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "listener[0].typo",
                "listener[1].tls.client_cas",
                "server.report_onyl"
            ],
            "{err}"
        );
    }

    #[test]
    fn stream_lifecycle_keys_are_checked() {
        let config = |stream: &str, push: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"signals\"\n[[transmitter]]\nname = \"corp\"\nissuer = \"https://idp.example.com\"\ndiscovery = \"https://idp.example.com/.well-known/ssf-configuration\"\naudiences = [\"r\"]\n[transmitter.push]\npath = \"/ssf/corp\"\n{push}\n[transmitter.stream]\ndelivery = \"push\"\n{stream}\n"
            )
        };
        let ok =
            Config::parse(&config("", "authorization = \"Bearer a\""), Path::new(".")).unwrap();
        let s = ok.transmitters[0].stream.clone().unwrap();
        assert_eq!(s.description, "cae-proxy receiver corp");
        assert_eq!(s.verify_interval, None, "off by default");
        assert_eq!(s.verify_timeout, Duration::from_secs(30));
        assert!(s.ready_needs_verification);
        assert_eq!(s.on_remove, OnRemove::Delete);
        let ok = Config::parse(
            &config(
                "description = \"eu\"\nverify_interval = \"1h\"\nverify_timeout = \"5s\"\nready_needs_verification = false\non_remove = \"keep\"",
                "authorization = \"Bearer b\"\nprevious_authorization = \"Bearer a\"",
            ),
            Path::new("."),
        )
        .unwrap();
        let t = &ok.transmitters[0];
        let s = t.stream.clone().unwrap();
        assert_eq!(
            (s.description.as_str(), s.verify_interval, s.verify_timeout),
            (
                "eu",
                Some(Duration::from_secs(3600)),
                Duration::from_secs(5)
            )
        );
        assert!(!s.ready_needs_verification);
        assert_eq!(s.on_remove, OnRemove::Keep);
        let push = t.push.as_ref().unwrap();
        assert_eq!(
            push.previous_authorization.as_ref().map(|a| a.expose()),
            Some("Bearer a")
        );

        let errors = |stream: &str, push: &str| -> Vec<(String, String)> {
            Config::parse(&config(stream, push), Path::new("."))
                .unwrap_err()
                .0
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect()
        };
        let e = |p: &str, m: &str| (p.to_string(), m.to_string());
        assert_eq!(
            errors(
                "verify_interval = \"0s\"\nverify_timeout = \"0s\"\non_remove = \"archive\"",
                "authorization = \"Bearer a\""
            ),
            [
                e(
                    "transmitter[0].stream.verify_interval",
                    "must be above 0 (leave it out to turn periodic verification off)"
                ),
                e("transmitter[0].stream.verify_timeout", "must be above 0"),
                e(
                    "transmitter[0].stream.on_remove",
                    "\"archive\" must be \"delete\" or \"keep\""
                ),
            ]
        );
        assert_eq!(
            errors(
                "verify_interval = \"10s\"\nverify_timeout = \"1m\"",
                "previous_authorization = \"Bearer a\""
            ),
            // In file order (the push table's own error is placed at the table).
            [
                e(
                    "transmitter[0].push.authorization",
                    "push needs an authorization secret unless every signals listener requires client certificates (mTLS)"
                ),
                e(
                    "transmitter[0].push.previous_authorization",
                    "needs authorization (the value the transmitter moves to)"
                ),
                e(
                    "transmitter[0].stream.verify_timeout",
                    "must not be longer than verify_interval"
                ),
            ]
        );
    }

    #[test]
    fn http_key_urls_need_loopback_or_opt_in() {
        let text = r#"
            [[listener]]
            address = "127.0.0.1:0"
            [[issuer]]
            name = "a"
            issuer = "https://idp.example.com/"
            jwks_uri = "http://idp.example.com/keys"
            audiences = ["api"]
        "#;
        let err = Config::parse(text, Path::new(".")).unwrap_err().0;
        assert_eq!(err[0].path, "issuer[0].jwks_uri");
        let ok = text.replace("http://idp.example.com/keys", "http://127.0.0.1:9/keys");
        assert!(Config::parse(&ok, Path::new(".")).is_ok());
    }
}
