//! The tests' one configuration builder: sections are added in order and printed as the TOML file
//! the proxy reads. Each method writes the lines every test repeats (addresses on 127.0.0.1:0,
//! the `app` upstream, the development issuer's discovery URL); what a test is about goes in
//! verbatim as `extra` lines, so the file a test runs with stays readable in the test.

use std::fmt::Write as _;

use super::Certs;

/// The admin token of every test configuration that sets one (`Toml::admin_token`).
pub const ADMIN_TOKEN: &str = "admin-secret";
/// `Authorization` value of the admin API with [`ADMIN_TOKEN`].
pub const ADMIN: &str = "Bearer admin-secret";
/// `Authorization` value the push transmitters of the tests require.
pub const PUSH_AUTH: &str = "Bearer push-secret";
/// The audience of the development issuer's tokens.
pub const API_AUDIENCE: &str = "api://cae-demo";

/// `[store]` lines: nothing survives the proxy.
pub const MEMORY: &str = "backend = \"memory\"";
/// `[store]` lines: redb in the harness's temp dir (`{dir}` is replaced by `Harness::start`).
pub const REDB: &str = "backend = \"redb\"\npath = \"{dir}/state.redb\"";

/// `[store]` lines: redb in `dir` (for a file the harness does not write, such as the binary's).
pub fn redb_store(dir: &std::path::Path) -> String {
    format!(
        "backend = \"redb\"\npath = \"{}/state.redb\"",
        dir.display()
    )
}

/// A configuration file under construction; [`Toml::build`] prints it.
#[derive(Debug, Clone)]
pub struct Toml {
    server: Option<String>,
    listeners: String,
    admin: Option<String>,
    store: String,
    upstreams: String,
    issuers: String,
    routes: String,
    transmitters: String,
    tracing: Option<String>,
}

impl Default for Toml {
    fn default() -> Toml {
        Toml::new()
    }
}

impl Toml {
    /// `[server] log_level = "warn"`, the memory store, nothing else yet. Unless the `[server]`
    /// lines set `worker_threads`, the file sets 2: every proxy a test starts runs two workers,
    /// whatever the machine's core count.
    pub fn new() -> Toml {
        Toml {
            server: Some("log_level = \"warn\"\n".into()),
            listeners: String::new(),
            admin: None,
            store: MEMORY.into(),
            upstreams: String::new(),
            issuers: String::new(),
            routes: String::new(),
            transmitters: String::new(),
            tracing: None,
        }
    }

    /// `[server] log_level` (a tracing filter such as `"info"` or `"info,access=off"`).
    pub fn log_level(mut self, level: &str) -> Toml {
        let rest = self.server_lines_without_level();
        self.server = Some(format!("log_level = \"{level}\"\n{rest}"));
        self
    }

    /// No `[server]` table at all: every server setting at its default.
    pub fn no_server(mut self) -> Toml {
        self.server = None;
        self
    }

    /// More `[server]` lines, verbatim.
    pub fn server(mut self, lines: &str) -> Toml {
        let s = self.server.get_or_insert_with(String::new);
        push_lines(s, lines);
        self
    }

    /// A `[[listener]]` named `name` on 127.0.0.1:0 (a proxy listener unless `extra` sets
    /// `role`); `extra`: more lines, a `[listener.tls]` table last.
    pub fn listener(self, name: &str, extra: &str) -> Toml {
        self.listener_at(name, "127.0.0.1:0", extra)
    }

    /// A `[[listener]]` on a given address (a reserved port, or one a test holds).
    pub fn listener_at(mut self, name: &str, address: &str, extra: &str) -> Toml {
        let _ = writeln!(
            self.listeners,
            "[[listener]]\nname = \"{name}\"\naddress = \"{address}\""
        );
        push_lines(&mut self.listeners, extra);
        self
    }

    /// A TLS `[[listener]]` on 127.0.0.1:0 serving the test server certificate; `mtls`: client
    /// certificates of the test CA are required; `extra`: more lines before the TLS table.
    pub fn tls_listener(self, name: &str, certs: &Certs, mtls: bool, extra: &str) -> Toml {
        let mut lines = String::new();
        push_lines(&mut lines, extra);
        lines.push_str(&tls_table("listener", certs, mtls));
        self.listener(name, &lines)
    }

    /// The proxy listener `public` on 127.0.0.1:0.
    pub fn public(self) -> Toml {
        self.listener("public", "")
    }

    /// The signals listener `signals` (SET pushes) on `address`.
    pub fn signals_at(self, address: &str) -> Toml {
        self.listener_at("signals", address, "role = \"signals\"")
    }

    /// The signals listener `signals` on 127.0.0.1:0.
    pub fn signals(self) -> Toml {
        self.signals_at("127.0.0.1:0")
    }

    /// `[admin]` on 127.0.0.1:0 without a token (loopback needs none); `extra` verbatim.
    pub fn admin(mut self, extra: &str) -> Toml {
        let mut a = "address = \"127.0.0.1:0\"\n".to_string();
        push_lines(&mut a, extra);
        self.admin = Some(a);
        self
    }

    /// `[admin]` on `address` with `token = "admin-secret"` ([`ADMIN`]).
    pub fn admin_token_at(mut self, address: &str) -> Toml {
        self.admin = Some(format!(
            "address = \"{address}\"\ntoken = \"{ADMIN_TOKEN}\"\n"
        ));
        self
    }

    /// `[admin]` on 127.0.0.1:0 with `token = "admin-secret"` ([`ADMIN`]).
    pub fn admin_token(self) -> Toml {
        self.admin(&format!("token = \"{ADMIN_TOKEN}\""))
    }

    /// The `[store]` lines ([`MEMORY`], [`REDB`] or a path of the test's own).
    pub fn store(mut self, lines: &str) -> Toml {
        self.store = lines.trim_end().to_string();
        self
    }

    /// `[upstreams.<name>]` at `url`; `extra` verbatim (timeouts, CA, client certificate).
    pub fn upstream(mut self, name: &str, url: &str, extra: &str) -> Toml {
        let _ = writeln!(self.upstreams, "[upstreams.{name}]\nurl = \"{url}\"");
        push_lines(&mut self.upstreams, extra);
        self
    }

    /// The upstream `app` every route of [`Toml::route`] goes to.
    pub fn app(self, url: &str) -> Toml {
        self.upstream("app", url, "")
    }

    /// `[[issuer]]` `name` for the issuer `iss`; `keys_and_more`: where the keys come from,
    /// the audiences and the rest, verbatim.
    pub fn issuer(mut self, name: &str, iss: &str, keys_and_more: &str) -> Toml {
        let _ = writeln!(
            self.issuers,
            "[[issuer]]\nname = \"{name}\"\nissuer = \"{iss}\""
        );
        push_lines(&mut self.issuers, keys_and_more);
        self
    }

    /// The development issuer at `iss` as `dev`: keys by discovery, audience [`API_AUDIENCE`];
    /// `extra` verbatim.
    pub fn dev_issuer(self, iss: &str, extra: &str) -> Toml {
        let keys = format!(
            "discovery = \"{iss}/.well-known/openid-configuration\"\naudiences = [\"{API_AUDIENCE}\"]\n{extra}"
        );
        self.issuer("dev", iss, &keys)
    }

    /// `[[route]]` `name` under `prefix` to the `app` upstream; `extra` verbatim
    /// (`cae = { … }`, `auth`, grants, or a `[route.cae]` table last).
    pub fn route(self, name: &str, prefix: &str, extra: &str) -> Toml {
        self.route_to(name, prefix, "app", extra)
    }

    /// `[[route]]` `name` under `prefix` to `upstream`; `extra` verbatim.
    pub fn route_to(mut self, name: &str, prefix: &str, upstream: &str, extra: &str) -> Toml {
        let _ = writeln!(
            self.routes,
            "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\""
        );
        push_lines(&mut self.routes, extra);
        self
    }

    /// `[[transmitter]]` `name`; `lines`: everything after the name, verbatim (issuer, keys,
    /// audiences, then the delivery tables).
    pub fn transmitter(mut self, name: &str, lines: &str) -> Toml {
        let _ = writeln!(self.transmitters, "[[transmitter]]\nname = \"{name}\"");
        push_lines(&mut self.transmitters, lines);
        self
    }

    /// A push transmitter `name` (issuer `iss`, keys at `jwks`, audience `aud`) at
    /// `/ssf/<name>`, requiring [`PUSH_AUTH`]; `extra`: transmitter lines before the push table.
    pub fn push_transmitter(
        self,
        name: &str,
        iss: &str,
        jwks: &str,
        aud: &str,
        extra: &str,
    ) -> Toml {
        let mut lines =
            format!("issuer = \"{iss}\"\njwks_uri = \"{jwks}\"\naudiences = [\"{aud}\"]\n");
        push_lines(&mut lines, extra);
        let _ = write!(
            lines,
            "[transmitter.push]\npath = \"/ssf/{name}\"\nauthorization = \"{PUSH_AUTH}\"\n"
        );
        self.transmitter(name, &lines)
    }

    /// `[tracing]` with `lines` verbatim (a `[tracing.headers]` table last).
    pub fn tracing(mut self, lines: &str) -> Toml {
        let mut t = String::new();
        push_lines(&mut t, lines);
        self.tracing = Some(t);
        self
    }

    /// The file's text.
    pub fn build(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.server {
            let _ = write!(out, "[server]\n{s}");
            if !s
                .lines()
                .any(|l| l.trim_start().starts_with("worker_threads"))
            {
                out.push_str("worker_threads = 2\n");
            }
        }
        out.push_str(&self.listeners);
        if let Some(a) = &self.admin {
            let _ = write!(out, "[admin]\n{a}");
        }
        let _ = writeln!(out, "[store]\n{}", self.store);
        out.push_str(&self.upstreams);
        out.push_str(&self.issuers);
        out.push_str(&self.routes);
        out.push_str(&self.transmitters);
        if let Some(t) = &self.tracing {
            let _ = write!(out, "[tracing]\n{t}");
        }
        out
    }

    fn server_lines_without_level(&self) -> String {
        self.server
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("log_level"))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// Appends `lines` (trimmed of surrounding blank lines) and a final newline, if any.
fn push_lines(out: &mut String, lines: &str) {
    let lines = lines.trim_matches('\n');
    if !lines.trim().is_empty() {
        out.push_str(lines);
        out.push('\n');
    }
}

/// A `[<section>.tls]` table with the test server certificate; `mtls`: client certificates of
/// the test CA required.
pub fn tls_table(section: &str, certs: &Certs, mtls: bool) -> String {
    let mut t = format!(
        "[{section}.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    if mtls {
        let _ = writeln!(t, "client_ca = \"{}\"", certs.ca.display());
    }
    t
}
