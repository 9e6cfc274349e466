//! `cae-proxy demo` and `cae-proxy dev issuer|transmitter`: continuous access evaluation shown live
//! on loopback (development issuer, transmitter, echo upstream and the real proxy in one process),
//! narrated with real HTTP calls, plus the development servers on their own. Not for production.
//!
//! The narration ([`narrate`]) checks every answer (exact status, `WWW-Authenticate` shape, decoded
//! claims) and returns a [`Report`]; `demo --once` exits 0 only when every step passed.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::dev::{
    keys::decode_unverified, now_secs, random_id, DevError, DevIssuer, DevTransmitter,
    EchoUpstream, IssuerOptions, TransmitterOptions,
};
use crate::{Proxy, StartError, StartOptions};

/// The demo configuration, built into the binary (`config/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

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
/// Longest wait for one HTTP answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the proxy to load the issuer's keys.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The address a token is bound to in step e (TEST-NET-3, never the caller).
const FOREIGN_IP: &str = "203.0.113.7";

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
// Output style

/// Colours on or off (ANSI escapes only when stdout is a terminal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }
    fn magenta(&self, s: &str) -> String {
        self.paint("35", s)
    }
}

/// Width of the label column.
const LABEL: usize = 19;

/// Writes the narration: titled steps, requests, answers, labelled values, explanations.
struct Out<'w> {
    w: &'w mut dyn Write,
    s: Style,
}

impl Out<'_> {
    fn line(&mut self, text: &str) {
        // Output errors (a closed pipe) must not stop the checks.
        let _ = writeln!(self.w, "{text}");
    }

    fn blank(&mut self) {
        self.line("");
    }

    fn title(&mut self, id: &str, text: &str) {
        let head = if id.is_empty() {
            format!("── {text} ")
        } else {
            format!("── {id}. {text} ")
        };
        let fill = "─".repeat(78usize.saturating_sub(head.chars().count()));
        let t = self.s.bold(&format!("{head}{fill}"));
        self.blank();
        self.line(&t);
    }

    fn request(&mut self, method: &str, url: &str, note: &str) {
        let arrow = self.s.cyan("→");
        let m = self.s.bold(method);
        let note = if note.is_empty() {
            String::new()
        } else {
            format!("  {}", self.s.dim(note))
        };
        self.line(&format!("  {arrow} {m} {url}{note}"));
    }

    fn status(&mut self, status: StatusCode) {
        let text = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let painted = match status.as_u16() {
            200..=299 => self.s.green(&text),
            401 | 403 => self.s.yellow(&text),
            _ => self.s.red(&text),
        };
        let arrow = self.s.cyan("←");
        self.line(&format!("  {arrow} {painted}"));
    }

    /// `label  value`, aligned; continuation lines of `value` are indented under it.
    fn kv(&mut self, label: &str, value: &str) {
        let pad = " ".repeat(LABEL.saturating_sub(label.chars().count()));
        let label = self.s.dim(label);
        let mut lines = value.lines();
        let first = lines.next().unwrap_or("");
        self.line(&format!("      {label}{pad} {first}"));
        let indent = " ".repeat(6 + LABEL + 1);
        for l in lines {
            self.line(&format!("{indent}{l}"));
        }
    }

    fn explain(&mut self, text: &str) {
        for l in wrap(text, 84) {
            let l = self.s.dim(&l);
            self.line(&format!("    {l}"));
        }
    }

    fn pass(&mut self, text: &str) {
        let mark = self.s.green("✓");
        self.line(&format!("  {mark} {text}"));
    }

    fn fail(&mut self, text: &str) {
        let mark = self.s.red("✗");
        let text = self.s.red(text);
        self.line(&format!("  {mark} {text}"));
    }

    fn warn(&mut self, text: &str) {
        let mark = self.s.magenta("!");
        for (i, l) in wrap(text, 84).iter().enumerate() {
            let l = self.s.magenta(l);
            if i == 0 {
                self.line(&format!("  {mark} {l}"));
            } else {
                self.line(&format!("    {l}"));
            }
        }
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn abbreviate(token: &str) -> String {
    if token.len() <= 40 {
        return token.to_string();
    }
    let head: String = token.chars().take(24).collect();
    let tail: String = {
        let mut t: Vec<char> = token.chars().rev().take(8).collect();
        t.reverse();
        t.into_iter().collect()
    };
    format!("{head}…{tail}  ({} chars)", token.len())
}

// ---------------------------------------------------------------------------------------------
// Report

/// Outcome of one narrated step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Step label (`a`, `b.1`, …).
    pub id: &'static str,
    /// What the step shows.
    pub title: &'static str,
    /// Every check that did not hold; empty when the step passed.
    pub failures: Vec<String>,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Outcome of the whole narration.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<StepResult>,
}

impl Report {
    /// True when every step passed.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(StepResult::passed)
    }

    /// The steps that failed.
    pub fn failed(&self) -> Vec<&StepResult> {
        self.steps.iter().filter(|s| !s.passed()).collect()
    }

    /// The result of one step by label.
    pub fn step(&self, id: &str) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// Checks of the step being run.
struct Step {
    id: &'static str,
    title: &'static str,
    failures: Vec<String>,
}

impl Step {
    fn new(out: &mut Out<'_>, id: &'static str, title: &'static str) -> Step {
        out.title(id, title);
        Step {
            id,
            title,
            failures: Vec::new(),
        }
    }

    /// Records and prints a failed check; returns `ok`.
    fn check(&mut self, out: &mut Out<'_>, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            let what = what.into();
            out.fail(&what);
            self.failures.push(what);
        }
        ok
    }

    fn expect_status(&mut self, out: &mut Out<'_>, got: StatusCode, want: u16) -> bool {
        self.check(
            out,
            got.as_u16() == want,
            format!("expected status {want}, got {}", got.as_u16()),
        )
    }

    fn finish(self, out: &mut Out<'_>, report: &mut Report, summary: &str) {
        if self.failures.is_empty() {
            out.pass(summary);
        }
        report.steps.push(StepResult {
            id: self.id,
            title: self.title,
            failures: self.failures,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body.into()))
            .map_err(|e| format!("cannot build the request to {url}: {e}"))?;
        let resp = tokio::time::timeout(HTTP_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {}s", HTTP_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{url}: {}", crate::fetch::error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(HTTP_TIMEOUT, body.collect())
            .await
            .map_err(|_| {
                format!(
                    "{url}: body not received within {}s",
                    HTTP_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// WWW-Authenticate

/// A parsed single challenge: scheme and parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn names(&self) -> Vec<&str> {
        self.params.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// The canonical form protocols.md §2 asks for: every value quoted, `, ` between parameters.
    pub fn canonical(&self) -> String {
        let params = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ");
        if params.is_empty() {
            self.scheme.clone()
        } else {
            format!("{} {params}", self.scheme)
        }
    }
}

/// Parses `Scheme k="v", k2=v2` (one challenge; quoted strings may hold `\`-escapes).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(' ') {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || name.trim().is_empty() {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.push((name.trim().to_string(), value));
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// Decodes a challenge's `claims` (standard base64, padding optional) into JSON.
pub fn decode_claims(b64: &str) -> Option<Value> {
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The claims request a revocation challenge must carry, encoded as Microsoft does (protocols.md §2).
fn expected_nbf_claims(nbf: i64) -> String {
    STANDARD.encode(format!(
        r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{nbf}"}}}}}}"#
    ))
}

fn expected_acrs_claims(ctx: &str) -> String {
    STANDARD.encode(format!(
        r#"{{"access_token":{{"acrs":{{"essential":true,"value":"{ctx}"}}}}}}"#
    ))
}

/// Prints the `WWW-Authenticate` header and checks it is one well-formed Bearer challenge with
/// exactly the parameter names `names`, in that order. Returns it when it parsed.
fn show_challenge(
    step: &mut Step,
    out: &mut Out<'_>,
    a: &Answer,
    names: &[&str],
) -> Option<Challenge> {
    let count = a.headers.get_all("www-authenticate").iter().count();
    let Some(raw) = a.header("www-authenticate") else {
        step.check(out, false, "no WWW-Authenticate header");
        return None;
    };
    out.kv("WWW-Authenticate", raw);
    step.check(
        out,
        count == 1,
        format!("expected one WWW-Authenticate header, got {count}"),
    );
    let Some(c) = parse_challenge(raw) else {
        step.check(out, false, "WWW-Authenticate does not parse");
        return None;
    };
    step.check(
        out,
        c.scheme == "Bearer",
        format!("scheme is {:?}, expected Bearer", c.scheme),
    );
    step.check(
        out,
        c.names() == names,
        format!(
            "parameters are [{}], expected [{}]",
            c.names().join(", "),
            names.join(", ")
        ),
    );
    step.check(
        out,
        c.canonical() == raw,
        "header is not in canonical form (quoted values separated by \", \")",
    );
    if let Some(body) = a.json() {
        if let Some(code) = body.get("code").and_then(Value::as_str) {
            out.kv("body code", code);
        }
    }
    Some(c)
}

/// Prints and returns the decoded `claims` of a challenge.
fn show_claims(step: &mut Step, out: &mut Out<'_>, c: &Challenge) -> Option<(String, Value)> {
    let b64 = c.get("claims")?.to_string();
    match decode_claims(&b64) {
        Some(v) => {
            out.kv("claims (decoded)", &v.to_string());
            Some((b64, v))
        }
        None => {
            step.check(out, false, "claims is not base64 of JSON");
            None
        }
    }
}

fn show_token_claims(out: &mut Out<'_>, token: &str) -> Option<Value> {
    let (_, claims) = decode_unverified(token).ok()?;
    let now = now_secs();
    let mut shown = serde_json::Map::new();
    for k in ["sub", "sid", "iat", "nbf", "ipaddr", "xms_cc", "acrs"] {
        if let Some(v) = claims.get(k) {
            shown.insert(k.to_string(), v.clone());
        }
    }
    out.kv("token claims", &Value::Object(shown).to_string());
    if let Some(iat) = claims.get("iat").and_then(Value::as_i64) {
        let age = now - iat;
        let when = if age > 0 {
            format!("{age}s ago")
        } else {
            "just now".to_string()
        };
        out.kv("issued", &format!("{iat} ({when})"));
    }
    Some(claims)
}

/// Prints the identity headers the upstream received (the echo answer) and returns them.
fn show_upstream(out: &mut Out<'_>, a: &Answer) -> serde_json::Map<String, Value> {
    let headers = a
        .json()
        .and_then(|v| v.get("headers").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    let mut lines: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-user-") || k.as_str() == "x-forwarded-for")
        .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("")))
        .collect();
    lines.sort();
    lines.push(match headers.get("authorization") {
        Some(_) => "authorization: (forwarded)".to_string(),
        None => "authorization: (not forwarded: forward_authorization = false)".to_string(),
    });
    out.kv("upstream received", &lines.join("\n"));
    headers
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

    fn print_map(&self, out: &mut Out<'_>) {
        let p = &self.plan;
        let rows = [
            (
                "issuer",
                self.issuer.issuer_url(),
                "development identity provider: discovery, JWKS, /token",
            ),
            (
                "transmitter",
                self.transmitter.issuer_url(),
                "development SSF transmitter: signs SETs",
            ),
            (
                "upstream",
                self.upstream.url(),
                "echo: answers with the request it received",
            ),
            (
                "proxy",
                self.proxy_url(),
                "the CAE proxy: routes below, in front of the upstream",
            ),
            (
                "  route",
                format!("{}/…", p.api_path),
                "token required, revocations, token_ip = true",
            ),
            (
                "  route",
                format!("{}/…", p.admin_path),
                "same, plus step-up: auth context must include the required one",
            ),
            (
                "signals",
                self.push_url(),
                "SSF push endpoint (RFC 8935) on the signals listener",
            ),
            (
                "admin",
                self.admin_url(),
                "probes, metrics, admin API (revoke, block, bind)",
            ),
        ];
        for (k, url, what) in rows {
            let url_pad = " ".repeat(36usize.saturating_sub(url.chars().count()));
            let what = out.s.dim(what);
            out.line(&format!("  {k:<12} {url}{url_pad} {what}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The narration

/// Values passed from one step to the next.
#[derive(Default)]
struct Story {
    sid: String,
    token_a: Option<String>,
    revoked_at: Option<i64>,
    revocation_claims: Option<String>,
    token_c: Option<String>,
}

/// Requests a token from the issuer's `/token` endpoint (form or JSON body) and shows it.
async fn get_token(
    http: &Http,
    out: &mut Out<'_>,
    step: &mut Step,
    demo: &Demo,
    body: TokenBody<'_>,
    note: &str,
) -> Option<String> {
    let url = demo.issuer.token_url();
    out.request("POST", &url, note);
    let sent = match body {
        TokenBody::Form(pairs) => {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            let form = s.finish();
            out.kv("form", &form);
            http.send(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                form,
            )
            .await
        }
        TokenBody::Json(v) => {
            out.kv("json", &v.to_string());
            http.send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                v.to_string(),
            )
            .await
        }
    };
    let a = match sent {
        Ok(a) => a,
        Err(e) => {
            step.check(out, false, format!("token request failed: {e}"));
            return None;
        }
    };
    out.status(a.status);
    if !step.expect_status(out, a.status, 200) {
        out.kv("body", &a.text());
        return None;
    }
    let token = a.json().and_then(|v| {
        v.get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let Some(token) = token else {
        step.check(out, false, "the /token answer has no access_token");
        return None;
    };
    out.kv("access_token", &abbreviate(&token));
    show_token_claims(out, &token);
    Some(token)
}

enum TokenBody<'a> {
    Form(&'a [(&'a str, &'a str)]),
    Json(Value),
}

async fn call_api(
    http: &Http,
    out: &mut Out<'_>,
    step: &mut Step,
    url: &str,
    token: &str,
) -> Option<Answer> {
    out.request("GET", url, "Authorization: Bearer <token>");
    let auth = format!("Bearer {token}");
    match http
        .send(Method::GET, url, &[("authorization", &auth)], Bytes::new())
        .await
    {
        Ok(a) => {
            out.status(a.status);
            Some(a)
        }
        Err(e) => {
            step.check(out, false, format!("request failed: {e}"));
            None
        }
    }
}

/// Runs every step against a running demo, printing to `w`; returns what passed and failed.
pub async fn narrate(demo: &Demo, w: &mut dyn Write, style: Style) -> Report {
    let mut out = Out { w, s: style };
    let http = Http::new();
    let mut report = Report::default();
    let mut story = Story {
        sid: format!("sess-{}", random_id(4)),
        ..Story::default()
    };
    let out = &mut out;
    let title = out
        .s
        .bold("cae-proxy demo: continuous access evaluation, live on loopback");
    out.line(&title);
    out.blank();
    demo.print_map(out);

    step_a(demo, &http, out, &mut story, &mut report).await;
    step_b(demo, &http, out, &mut story, &mut report).await;
    step_c(demo, &http, out, &mut story, &mut report).await;
    step_d(demo, &http, out, &mut story, &mut report).await;
    step_e(demo, &http, out, &mut report).await;
    step_f(demo, &http, out, &mut story, &mut report).await;

    print_summary(out, &report);
    report
}

fn print_summary(out: &mut Out<'_>, report: &Report) {
    out.title("", "summary");
    for s in &report.steps {
        if s.passed() {
            let mark = out.s.green("✓ pass");
            out.line(&format!("  {mark}  {:<4} {}", s.id, s.title));
        } else {
            let mark = out.s.red("✗ FAIL");
            out.line(&format!("  {mark}  {:<4} {}", s.id, s.title));
            for f in &s.failures {
                let f = out.s.red(f);
                out.line(&format!("                 {f}"));
            }
        }
    }
    let failed = report.failed();
    let passed = report.steps.len() - failed.len();
    out.blank();
    if failed.is_empty() {
        let t = out
            .s
            .green(&format!("all {} steps passed", report.steps.len()));
        out.line(&format!("  {t}"));
    } else {
        let ids = failed.iter().map(|s| s.id).collect::<Vec<_>>().join(", ");
        let t = out.s.red(&format!(
            "{passed} of {} steps passed; failed: {ids}",
            report.steps.len()
        ));
        out.line(&format!("  {t}"));
    }
}

async fn step_a(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(out, "a", "a CAE client signs in and calls the API");
    out.explain(
        "alice's client (xms_cc: [\"cp1\"], a CAE-capable client like MSAL) gets a token from \
         the issuer. It was issued a minute ago (iat backdated by 60 s) and is bound to the \
         address she signed in from (ipaddr 127.0.0.1).",
    );
    let t = now_secs() - 60;
    let body = json!({
        "sub": "alice",
        "claims": {"sid": story.sid, "ipaddr": "127.0.0.1", "iat": t, "nbf": t, "xms_cc": ["cp1"]},
    });
    let token = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Json(body),
        "token request",
    )
    .await;
    if let Some(token) = &token {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, token).await {
            if step.expect_status(out, a.status, 200) {
                let h = show_upstream(out, &a);
                let got = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                step.check(
                    out,
                    got("x-user-sub") == "alice",
                    format!(
                        "upstream saw x-user-sub {:?}, expected \"alice\"",
                        got("x-user-sub")
                    ),
                );
                step.check(
                    out,
                    got("x-user-sid") == story.sid,
                    format!(
                        "upstream saw x-user-sid {:?}, expected {:?}",
                        got("x-user-sid"),
                        story.sid
                    ),
                );
            } else {
                out.kv("body", &a.text());
            }
        }
    }
    story.token_a = token;
    out.explain(
        "The proxy checked signature (JWKS from discovery), iss, aud, exp, the revocation tables \
         and the IP binding, then forwarded the call with the identity headers the route names.",
    );
    step.finish(
        out,
        report,
        "token accepted; the upstream got the identity headers",
    );
}

async fn step_b(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    // b.1: the transmitter pushes a signed session-revoked SET.
    let mut step = Step::new(
        out,
        "b.1",
        "the identity provider revokes the session: a signed SET is pushed",
    );
    out.explain(
        "The transmitter signs a CAEP session-revoked Security Event Token for alice's session \
         and pushes it (RFC 8935) to the proxy's signals listener. The proxy verifies it, stores \
         the revocation, and answers 202 with an empty body.",
    );
    let revoked_at = now_secs();
    let sub_id = json!({
        "format": "complex",
        "session": {"format": "opaque", "id": story.sid},
        "user": {"format": "iss_sub", "iss": demo.issuer.issuer_url(), "sub": "alice"},
    });
    let set = demo
        .transmitter
        .sign_set(DevTransmitter::session_revoked(sub_id, Some(revoked_at)));
    if let Ok((h, p)) = decode_unverified(&set) {
        out.kv("SET header", &h.to_string());
        out.kv(
            "SET iss, aud, jti",
            &format!("{}  {}  {}", p["iss"], p["aud"], p["jti"]),
        );
        out.kv("SET sub_id", &p["sub_id"].to_string());
        if let Some(events) = p["events"].as_object() {
            for (uri, body) in events {
                out.kv("SET event", &format!("{uri}\n{body}"));
            }
        }
    }
    let url = demo.push_url();
    out.request(
        "POST",
        &url,
        "Content-Type: application/secevent+jwt, Authorization: <push secret>",
    );
    let pushed = demo
        .transmitter
        .push(&url, demo.plan.push_authorization.as_deref(), &set)
        .await;
    let accepted = match pushed {
        Ok((status, _, body)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            out.status(status);
            if !body.is_empty() {
                out.kv("body", &body);
            }
            let ok = step.expect_status(out, status, 202);
            if status == StatusCode::NOT_FOUND {
                out.explain(
                    "404: the signals listener serves no SSF push endpoint at this path (the \
                     push endpoint is not wired, or [transmitter.push] path differs).",
                );
            }
            if ok {
                step.check(
                    out,
                    body.is_empty(),
                    "202 must come with an empty body (RFC 8935 §2.2)",
                )
            } else {
                false
            }
        }
        Err(e) => {
            step.check(out, false, format!("push failed: {e}"));
            false
        }
    };
    step.finish(out, report, "the proxy accepted and stored the SET (202)");

    if !accepted {
        out.warn(
            "fallback: the push was not accepted, so the demo revokes the same session through \
             the admin API to go on with the story (b.1 stays failed).",
        );
        let url = format!("{}/admin/revoke", demo.admin_url());
        let body = json!({"key": {"type": "session", "iss": demo.issuer.issuer_url(), "sid": story.sid}, "at": revoked_at});
        out.request("POST", &url, &body.to_string());
        match http
            .send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
        {
            Ok(a) => {
                out.status(a.status);
                if a.status != StatusCode::OK {
                    out.kv("body", &a.text());
                }
            }
            Err(e) => out.fail(&format!("admin revoke failed: {e}")),
        }
    }
    story.revoked_at = Some(revoked_at);

    // b.2: the same token is refused with a claims challenge.
    let mut step = Step::new(
        out,
        "b.2",
        "the same, unexpired token is refused with a claims challenge",
    );
    out.explain(
        "Nothing changed in the token: it is still signed and unexpired. But it was issued \
         before the revocation, so the proxy refuses it. Because the client declared cp1, it \
         gets a claims challenge it knows how to answer, instead of a dead end.",
    );
    if let Some(token) = story.token_a.clone() {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            step.expect_status(out, a.status, 401);
            if let Some(c) = show_challenge(
                &mut step,
                out,
                &a,
                &["realm", "authorization_uri", "error", "claims"],
            ) {
                step.check(
                    out,
                    c.get("error") == Some("insufficient_claims"),
                    "error must be insufficient_claims",
                );
                step.check(
                    out,
                    c.get("realm") == Some(""),
                    "realm must be empty (authorization_uri names the issuer)",
                );
                let auth_uri = demo.issuer.authorize_url();
                step.check(
                    out,
                    c.get("authorization_uri") == Some(auth_uri.as_str()),
                    format!("authorization_uri must be {auth_uri}"),
                );
                if let Some((b64, v)) = show_claims(&mut step, out, &c) {
                    let want = expected_nbf_claims(revoked_at);
                    step.check(
                        out,
                        b64 == want,
                        format!("claims must be {want} (nbf = revocation time {revoked_at}, standard base64 with padding)"),
                    );
                    out.explain(&format!(
                        "Decoded: \"give me an access token whose nbf is at least {}\" (the revocation time, {}).",
                        v.pointer("/access_token/nbf/value").and_then(Value::as_str).unwrap_or("?"),
                        if revoked_at == now_secs() { "a moment ago" } else { "moments ago" }
                    ));
                    story.revocation_claims = Some(b64);
                }
            }
        }
    } else {
        step.check(out, false, "skipped: step a produced no token");
    }
    step.finish(
        out,
        report,
        "401 insufficient_claims with the nbf claims request",
    );
}

async fn step_c(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(
        out,
        "c",
        "the client answers the challenge: a new token, accepted again",
    );
    out.explain(
        "The client sends the claims of the challenge back to the token endpoint (form-encoded, \
         as an OAuth client would). The issuer honours them: the new token's iat/nbf are at or \
         after the revocation time, so the revocation no longer applies to it.",
    );
    let Some(claims) = story.revocation_claims.clone() else {
        step.check(out, false, "skipped: step b.2 produced no claims challenge");
        step.finish(out, report, "");
        return;
    };
    let sid = story.sid.clone();
    let pairs = [
        ("sub", "alice"),
        ("sid", sid.as_str()),
        ("ipaddr", "127.0.0.1"),
        ("xms_cc", "cp1"),
        ("claims", claims.as_str()),
    ];
    let token = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Form(&pairs),
        "claims = the challenge's claims",
    )
    .await;
    if let Some(token) = &token {
        if let (Ok((_, p)), Some(at)) = (decode_unverified(token), story.revoked_at) {
            let iat = p.get("iat").and_then(Value::as_i64).unwrap_or(0);
            step.check(
                out,
                iat >= at,
                format!("the new token's iat {iat} is before the revocation time {at}"),
            );
        }
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, token).await {
            if step.expect_status(out, a.status, 200) {
                show_upstream(out, &a);
            } else {
                out.kv("body", &a.text());
            }
        }
    }
    story.token_c = token;
    step.finish(
        out,
        report,
        "same session, new token: 200 again, no sign-in loop",
    );
}

async fn step_d(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let ctx = demo.plan.auth_context.clone();
    let mut step = Step::new(
        out,
        "d",
        "step-up: the admin route wants authentication context c1",
    );
    out.explain(&format!(
        "{}/… requires auth context {ctx} (Microsoft's acrs dialect). The token from step c \
         does not carry it, so the proxy asks for it with a claims challenge.",
        demo.plan.admin_path
    ));
    let Some(token) = story.token_c.clone() else {
        step.check(out, false, "skipped: step c produced no token");
        step.finish(out, report, "");
        return;
    };
    let url = format!("{}{}/settings", demo.proxy_url(), demo.plan.admin_path);
    let Some(a) = call_api(http, out, &mut step, &url, &token).await else {
        step.finish(out, report, "");
        return;
    };
    step.expect_status(out, a.status, 401);
    let mut claims = None;
    if let Some(c) = show_challenge(
        &mut step,
        out,
        &a,
        &["realm", "authorization_uri", "error", "claims"],
    ) {
        step.check(
            out,
            c.get("error") == Some("insufficient_claims"),
            "error must be insufficient_claims",
        );
        if let Some((b64, _)) = show_claims(&mut step, out, &c) {
            let want = expected_acrs_claims(&ctx);
            step.check(out, b64 == want, format!("claims must be {want}"));
            claims = Some(b64);
        }
    }
    if let Some(claims) = claims {
        out.explain(
            "The client re-authenticates as the policy for c1 requires (MFA, a compliant \
             device, …) and asks for a token with those claims.",
        );
        let sid = story.sid.clone();
        let pairs = [
            ("sub", "alice"),
            ("sid", sid.as_str()),
            ("ipaddr", "127.0.0.1"),
            ("xms_cc", "cp1"),
            ("claims", claims.as_str()),
        ];
        if let Some(token) = get_token(
            http,
            out,
            &mut step,
            demo,
            TokenBody::Form(&pairs),
            "claims = the acrs challenge",
        )
        .await
        {
            if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
                if step.expect_status(out, a.status, 200) {
                    let h = show_upstream(out, &a);
                    let acrs = h.get("x-user-acrs").and_then(Value::as_str).unwrap_or("");
                    step.check(
                        out,
                        acrs.split(',').any(|a| a.trim() == ctx),
                        format!("upstream saw x-user-acrs {acrs:?}, expected it to contain {ctx}"),
                    );
                } else {
                    out.kv("body", &a.text());
                }
            }
        }
    }
    step.finish(out, report, "acrs challenge, token with c1, 200");
}

async fn step_e(demo: &Demo, http: &Http, out: &mut Out<'_>, report: &mut Report) {
    let mut step = Step::new(
        out,
        "e",
        "a token used from another address than it was issued to",
    );
    out.explain(&format!(
        "bob's token says he signed in from {FOREIGN_IP} (ipaddr), but this request comes from \
         127.0.0.1. The route enforces token_ip (Entra's strict location enforcement), so the \
         token is refused at once, with a claims challenge whose nbf is the decision time."
    ));
    let sid = format!("sess-{}", random_id(4));
    let pairs = [
        ("sub", "bob"),
        ("sid", sid.as_str()),
        ("ipaddr", FOREIGN_IP),
        ("xms_cc", "cp1"),
    ];
    if let Some(token) = get_token(http, out, &mut step, demo, TokenBody::Form(&pairs), "").await {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        let before = now_secs();
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            let after = now_secs();
            step.expect_status(out, a.status, 401);
            if let Some(c) = show_challenge(
                &mut step,
                out,
                &a,
                &["realm", "authorization_uri", "error", "claims"],
            ) {
                step.check(
                    out,
                    c.get("error") == Some("insufficient_claims"),
                    "error must be insufficient_claims",
                );
                if let Some((_, v)) = show_claims(&mut step, out, &c) {
                    let nbf = v
                        .pointer("/access_token/nbf/value")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<i64>().ok());
                    let shape_ok = v.pointer("/access_token/nbf/essential") == Some(&json!(true))
                        && v.as_object().is_some_and(|o| o.len() == 1);
                    step.check(
                        out,
                        shape_ok && nbf.is_some_and(|n| (before..=after).contains(&n)),
                        format!(
                            "claims must ask for nbf = the decision time ({before}..={after}), got {v}"
                        ),
                    );
                }
            }
        }
    }
    step.finish(out, report, "IP mismatch: 401 claims challenge");
}

async fn step_f(
    demo: &Demo,
    http: &Http,
    out: &mut Out<'_>,
    story: &mut Story,
    report: &mut Report,
) {
    let mut step = Step::new(
        out,
        "f",
        "a client without cp1, after the revocation: invalid_token",
    );
    out.explain(
        "An older client in alice's revoked session did not declare cp1 (\"xms_cc\": []). It \
         would not understand a claims challenge, so it gets a plain RFC 6750 invalid_token and \
         must sign in again.",
    );
    let t = now_secs() - 60;
    let body = json!({
        "sub": "alice",
        "claims": {"sid": story.sid, "ipaddr": "127.0.0.1", "iat": t, "nbf": t, "xms_cc": []},
    });
    if let Some(token) = get_token(
        http,
        out,
        &mut step,
        demo,
        TokenBody::Json(body),
        "xms_cc: [] (no capabilities)",
    )
    .await
    {
        let url = format!("{}{}/orders", demo.proxy_url(), demo.plan.api_path);
        if let Some(a) = call_api(http, out, &mut step, &url, &token).await {
            step.expect_status(out, a.status, 401);
            if let Some(c) =
                show_challenge(&mut step, out, &a, &["realm", "error", "error_description"])
            {
                step.check(
                    out,
                    c.get("error") == Some("invalid_token"),
                    "error must be invalid_token",
                );
                step.check(
                    out,
                    c.get("error_description").is_some_and(|d| !d.is_empty()),
                    "error_description must not be empty",
                );
            }
        }
    }
    step.finish(out, report, "no cp1: 401 invalid_token, no claims");
}

// ---------------------------------------------------------------------------------------------
// Interactive mode

/// The copy-paste commands printed after the narration (`cae-proxy demo` without `--once`).
pub fn print_try_it(demo: &Demo, w: &mut dyn Write, style: Style) {
    let out = &mut Out { w, s: style };
    let issuer = demo.issuer.issuer_url();
    let token_url = demo.issuer.token_url();
    let proxy = demo.proxy_url();
    let admin = demo.admin_url();
    let api = &demo.plan.api_path;
    let step_up = &demo.plan.admin_path;
    let events = format!("{}/dev/events", demo.transmitter.issuer_url());
    let push_to = match &demo.plan.push_authorization {
        Some(a) => format!(
            "{{\"endpoint_url\":\"{}\",\"authorization_header\":\"{a}\"}}",
            demo.push_url()
        ),
        None => format!("{{\"endpoint_url\":\"{}\"}}", demo.push_url()),
    };
    out.title("", "try it yourself (Ctrl-C stops the demo)");
    let cmds = [
        ("# a token for alice, session s1, issued to 127.0.0.1 (form-encoded, like an OAuth client)".to_string(),
         format!("TOKEN=$(curl -s {token_url} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1 | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')")),
        ("# call the API through the proxy (200, the echo shows the identity headers)".to_string(),
         format!("curl -i {proxy}{api}/orders -H \"Authorization: Bearer $TOKEN\"")),
        ("# revoke session s1 with a signed CAEP session-revoked SET: the transmitter signs it and\n# pushes it to the proxy's signals listener (202), then call again: 401 insufficient_claims".to_string(),
         format!("curl -s {events} -H 'content-type: application/json' -d '{{\"event\":\"session-revoked\",\"sub\":\"alice\",\"sid\":\"s1\",\"push_to\":{push_to}}}'")),
        ("# or revoke it through the admin API".to_string(),
         format!("curl -i {admin}/admin/revoke -H 'content-type: application/json' -d '{{\"key\":{{\"type\":\"session\",\"iss\":\"{issuer}\",\"sid\":\"s1\"}}}}'")),
        ("# answer the challenge: paste its claims value, get a new token, call again (200)".to_string(),
         format!("TOKEN=$(curl -s {token_url} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1 --data-urlencode claims=PASTE_CLAIMS | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')")),
        ("# step-up route: 401 with an acrs challenge; a token with -d acrs=c1 passes".to_string(),
         format!("curl -i {proxy}{step_up}/settings -H \"Authorization: Bearer $TOKEN\"")),
        ("# disable the account with a RISC account-disabled SET: every token of alice is refused until\n# an account-enabled event (or an unblock through the admin API)".to_string(),
         format!("curl -s {events} -H 'content-type: application/json' -d '{{\"event\":\"account-disabled\",\"sub\":\"alice\",\"push_to\":{push_to}}}'")),
        ("# or block it through the admin API; list the revocations made so far".to_string(),
         format!("curl -i {admin}/admin/block -H 'content-type: application/json' -d '{{\"key\":{{\"type\":\"subject\",\"iss\":\"{issuer}\",\"sub\":\"alice\"}}}}'\ncurl -s {admin}/admin/entries/revocations")),
        ("# the transmitter's SSF metadata and keys (the proxy verifies pushed SETs with them)".to_string(),
         format!("curl -s {}\ncurl -s {}", demo.transmitter.configuration_url(), demo.transmitter.jwks_url())),
    ];
    print_commands(out, &cmds);
    out.blank();
    out.explain(&format!(
        "POST {events} takes event = one of {}; sub (with iss, default the demo issuer), sid, \
         device, tid or email, or a full RFC 9493 subject; event_timestamp; event_fields; \
         push_to. It answers with the signed SET and each receiver's status.",
        event_name_list()
    ));
}

fn event_name_list() -> String {
    crate::dev::emit::event_names()
        .collect::<Vec<_>>()
        .join(", ")
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

/// `cae-proxy dev …`: one development server on its own.
#[derive(Debug, clap::Subcommand)]
pub enum DevCommand {
    /// Development identity provider (discovery, JWKS, /token honouring claims requests). NOT for production.
    Issuer {
        /// Address to listen on (loopback only unless --force-public).
        #[arg(long, default_value = "127.0.0.1:29101")]
        listen: SocketAddr,
        /// `aud` of every token.
        #[arg(long, default_value = "api://cae-demo")]
        audience: String,
        /// Allow a non-loopback address. The issuer signs a token for anyone who asks.
        #[arg(long)]
        force_public: bool,
    },
    /// Development SSF transmitter (JWKS, stream management, push and poll delivery). NOT for production.
    Transmitter {
        /// Address to listen on (loopback only unless --force-public).
        #[arg(long, default_value = "127.0.0.1:29102")]
        listen: SocketAddr,
        /// `aud` of streams and SETs (the receiver's id).
        #[arg(long, default_value = "cae-proxy-demo")]
        audience: String,
        /// Require `Authorization: Bearer <this>` on every /ssf/ and /dev/events call.
        #[arg(long)]
        management_token: Option<String>,
        /// Issuer of the users that `sub` names in `POST /dev/events` (when a request gives no
        /// `iss`): the development issuer's URL by default.
        #[arg(long, default_value = "http://127.0.0.1:29101")]
        subject_issuer: String,
        /// Allow a non-loopback address.
        #[arg(long)]
        force_public: bool,
    },
}

fn banner(out: &mut Out<'_>, what: &str, why: &[&str]) {
    let mut lines = vec![format!("{what}: NOT FOR PRODUCTION")];
    lines.extend(why.iter().map(|l| l.to_string()));
    let inner = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let border = "!".repeat(inner + 8);
    let b = out.s.red(&border);
    out.line(&b);
    for l in lines {
        let pad = " ".repeat(inner - l.chars().count());
        let l = out.s.red(&format!("!!  {l}{pad}  !!"));
        out.line(&l);
    }
    out.line(&b);
}

async fn run_dev(cmd: DevCommand, out: &mut Out<'_>) -> Result<(), DemoError> {
    let (listen, force) = match &cmd {
        DevCommand::Issuer {
            listen,
            force_public,
            ..
        }
        | DevCommand::Transmitter {
            listen,
            force_public,
            ..
        } => (*listen, *force_public),
    };
    if !listen.ip().is_loopback() && !force {
        return Err(DemoError::NotLoopback(listen));
    }
    let listener = bind("development server", listen).await?;
    let public_note = |out: &mut Out<'_>| {
        if !listen.ip().is_loopback() {
            out.warn(&format!(
                "listening on {listen}, reachable from other hosts; URLs below still name \
                 127.0.0.1 (the issuer URL in tokens and metadata)."
            ));
        }
    };
    match cmd {
        DevCommand::Issuer { audience, .. } => {
            let issuer = DevIssuer::start(
                listener,
                IssuerOptions {
                    audience: audience.clone(),
                    ..IssuerOptions::default()
                },
            )?;
            banner(
                out,
                "DEVELOPMENT ISSUER",
                &[
                    "It signs an access token for anyone who asks: no login, no client auth.",
                    "Plain HTTP, throw-away keys that change at every start.",
                ],
            );
            public_note(out);
            out.blank();
            for (k, v) in [
                ("issuer", issuer.issuer_url()),
                ("discovery", issuer.discovery_url()),
                ("jwks", issuer.jwks_url()),
                ("token", issuer.token_url()),
                ("audience", audience),
            ] {
                out.kv(k, &v);
            }
            let t = issuer.token_url();
            let examples = [
                ("# a token (form-encoded); claims: sub, sid, ipaddr, xms_cc, acrs, roles, scp, lifetime_secs".to_string(),
                 format!("curl -s {t} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1")),
                ("# answer a claims challenge (paste the challenge's claims value)".to_string(),
                 format!("curl -s {t} -d sub=alice --data-urlencode claims=PASTE_CLAIMS")),
                ("# JSON form: any extra claims, a null removes a default claim".to_string(),
                 format!("curl -s {t} -H 'content-type: application/json' -d '{{\"sub\":\"alice\",\"claims\":{{\"roles\":[\"admin\"],\"xms_cc\":[]}},\"lifetime_secs\":600}}'")),
                ("# discovery and keys".to_string(),
                 format!("curl -s {}\ncurl -s {}", issuer.discovery_url(), issuer.jwks_url())),
            ];
            print_examples(out, &examples);
            stop_signal().await?;
            issuer.shutdown();
        }
        DevCommand::Transmitter {
            audience,
            management_token,
            subject_issuer,
            ..
        } => {
            let transmitter = DevTransmitter::start(
                listener,
                TransmitterOptions {
                    audience: audience.clone(),
                    management_token: management_token.clone(),
                    subject_issuer: Some(subject_issuer.clone()),
                    ..TransmitterOptions::default()
                },
            )?;
            banner(
                out,
                "DEVELOPMENT SSF TRANSMITTER",
                &[
                    "It pushes signed security events to any receiver you register.",
                    "Plain HTTP, throw-away keys that change at every start.",
                ],
            );
            public_note(out);
            out.blank();
            let i = transmitter.issuer_url();
            for (k, v) in [
                ("issuer", i.clone()),
                ("configuration", transmitter.configuration_url()),
                ("jwks", transmitter.jwks_url()),
                ("streams", format!("{i}/ssf/stream")),
                ("poll", transmitter.poll_url()),
                ("events", format!("{i}/dev/events")),
                ("audience", audience),
                ("users of", subject_issuer),
            ] {
                out.kv(k, &v);
            }
            let auth = match &management_token {
                Some(t) => format!(" -H 'authorization: Bearer {t}'"),
                None => String::new(),
            };
            let examples = [
                ("# sign a CAEP session-revoked event and push it to cae-proxy's signals listener (the\n# demo's push path and secret); the answer holds the SET and the receiver's status".to_string(),
                 format!("curl -s {i}/dev/events{auth} -H 'content-type: application/json' -d '{{\"event\":\"session-revoked\",\"sub\":\"alice\",\"sid\":\"s1\",\"push_to\":{{\"endpoint_url\":\"http://127.0.0.1:29090/ssf/demo\",\"authorization_header\":\"Bearer demo-push-secret\"}}}}'")),
                (format!("# other events: {}\n# (or a full event-type URI); subject: sub (+ iss), sid, device, tid, email or \"subject\": {{…}};\n# without push_to the event goes to every enabled stream created below; \"deliver\":false only signs", event_name_list()),
                 format!("curl -s {i}/dev/events{auth} -H 'content-type: application/json' -d '{{\"event\":\"account-disabled\",\"sub\":\"alice\",\"deliver\":false}}'")),
                ("# metadata and keys".to_string(),
                 format!("curl -s {}\ncurl -s {}", transmitter.configuration_url(), transmitter.jwks_url())),
                ("# create a push stream to cae-proxy's signals listener (the demo's push path and secret)".to_string(),
                 format!("curl -s {i}/ssf/stream{auth} -H 'content-type: application/json' -d '{{\"delivery\":{{\"method\":\"urn:ietf:rfc:8935\",\"endpoint_url\":\"http://127.0.0.1:29090/ssf/demo\",\"authorization_header\":\"Bearer demo-push-secret\"}},\"events_requested\":[\"https://schemas.openid.net/secevent/caep/event-type/session-revoked\"]}}'")),
                ("# ask for a verification event (use the stream_id returned above)".to_string(),
                 format!("curl -i {i}/ssf/verify{auth} -H 'content-type: application/json' -d '{{\"stream_id\":\"STREAM_ID\",\"state\":\"hello\"}}'")),
                ("# or a poll stream, then poll it (RFC 8936)".to_string(),
                 format!("curl -s {i}/ssf/stream{auth} -H 'content-type: application/json' -d '{{\"delivery\":{{\"method\":\"urn:ietf:rfc:8936\"}}}}'\ncurl -s {}{auth} -H 'content-type: application/json' -d '{{\"returnImmediately\":true}}'", transmitter.poll_url())),
            ];
            print_examples(out, &examples);
            stop_signal().await?;
            transmitter.shutdown();
        }
    }
    Ok(())
}

/// Copy-paste commands, each after its (dimmed) comment lines.
fn print_commands(out: &mut Out<'_>, commands: &[(String, String)]) {
    for (comment, cmd) in commands {
        out.blank();
        for l in comment.lines() {
            let c = out.s.dim(l);
            out.line(&format!("  {c}"));
        }
        for l in cmd.lines() {
            let l = out.s.cyan(l);
            out.line(&format!("  {l}"));
        }
    }
}

fn print_examples(out: &mut Out<'_>, examples: &[(String, String)]) {
    print_commands(out, examples);
    out.blank();
    let t = out.s.dim("Ctrl-C stops it.");
    out.line(&format!("  {t}"));
}

/// `cae-proxy dev issuer|transmitter`: runs one development server until Ctrl-C.
pub fn main_dev(cmd: DevCommand) -> ExitCode {
    init_quiet_logging();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return report_error("dev", &e),
    };
    rt.block_on(async move {
        let mut stdout = std::io::stdout();
        let mut out = Out {
            w: &mut stdout,
            s: Style::detect(),
        };
        match run_dev(cmd, &mut out).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report_error("dev", &e),
        }
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
    fn challenge_parser_and_canonical_form() {
        let raw = r#"Bearer realm="", authorization_uri="http://127.0.0.1:1/authorize", error="insufficient_claims", claims="eyJ=""#;
        let c = parse_challenge(raw).unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.names(), ["realm", "authorization_uri", "error", "claims"]);
        assert_eq!(c.get("claims"), Some("eyJ="));
        assert_eq!(c.canonical(), raw);
        // Unquoted values parse but are not canonical.
        let c = parse_challenge("Bearer error=invalid_token,realm=\"x\"").unwrap();
        assert_eq!(c.get("error"), Some("invalid_token"));
        assert_ne!(c.canonical(), "Bearer error=invalid_token,realm=\"x\"");
        assert!(parse_challenge("Bearer realm=\"open").is_none());
    }

    #[test]
    fn expected_claims_match_the_protocol_vectors() {
        assert_eq!(expected_nbf_claims(1604106651), "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNjA0MTA2NjUxIn19fQ==");
        assert_eq!(
            expected_acrs_claims("c1"),
            "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"
        );
        assert_eq!(
            decode_claims(
                "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"
            ),
            Some(json!({"access_token":{"acrs":{"essential":true,"value":"c1"}}}))
        );
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

    #[test]
    fn plain_style_has_no_escapes() {
        let s = Style { color: false };
        assert_eq!(s.red("x"), "x");
        assert_eq!(Style { color: true }.red("x"), "\x1b[1;31mx\x1b[0m");
    }
}
