//! Shared Signals end to end: SETs pushed (RFC 8935) and polled (RFC 8936) from a real
//! development transmitter, checked against the proxy's answers to real tokens. This module holds
//! the fixture and the helpers of its four concerns: `push` (the push endpoint: every vector of
//! docs/protocols.md §7, foreign issuers, certificate pins, durability, latency), `events` (what
//! each CAEP/RISC/OAuth event does to tokens), `poll` (RFC 8936 polling, draining, backoff, crash
//! safety), `streams` (SSF stream management and verification) and `lifecycle` (every receiver
//! action on a managed stream through the admin API and the CLI, reconcile on reload, removal,
//! periodic verification).

mod events;
mod lifecycle;
mod poll;
mod push;
mod streams;

use std::ops::Deref;

use bytes::Bytes;
use cae_proxy::auth::challenge::nbf_claims;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{decode_unverified, KeyAlg};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{iss_sub, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

/// Receiver id the dev transmitters put in `aud`.
const AUD: &str = "cae-proxy";
/// Issuer and audience of the RFC 8935 §2.1 example: a second transmitter configuration that
/// shares the `tx` key set (another tenant of one IdP).
const LEGACY_ISS: &str = "https://idp.example.com/";
const LEGACY_AUD: &str = "636C69656E745F6964";
const SECEVENT: &str = "application/secevent+jwt";
const REVOKED_MESSAGE: &str =
    "the token was issued before a revocation of its subject, session or id";

/// The signals tests' proxy: the public listener, the admin API with its token, the issuers
/// `dev` (discovery) and `legacy` (the RFC 8935 example's issuer, with the dev issuer's keys),
/// the routes `/api` and `/bound` (signal-fed IP bindings). No listener for signals yet.
fn base(iss: &str, up: &str) -> Toml {
    Toml::new()
        .public()
        .admin_token()
        .app(up)
        .dev_issuer(iss, "")
        .issuer(
            "legacy",
            LEGACY_ISS,
            &format!(
                "jwks_uri = \"{iss}/jwks\"\nauthorization_uri = \"https://idp.example.com/authorize\"\naudiences = [\"{API_AUDIENCE}\"]"
            ),
        )
        .route("api", "/api", "")
        .route("bound", "/bound", "cae = { signal_ip = true }")
}

/// The transmitter `poller` of `tx`, polling `endpoint`; `poll`: more `[transmitter.poll]` lines.
fn poll_transmitter(t: Toml, tx: &DevTransmitter, endpoint: &str, poll: &str) -> Toml {
    t.transmitter(
        "poller",
        &format!(
            "issuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"{AUD}\"]\n[transmitter.poll]\nendpoint = \"{endpoint}\"\n{poll}",
            tx.issuer_url(),
            tx.jwks_url()
        ),
    )
}

/// The proxy under test and the development issuer of its tokens.
struct Site {
    h: Harness,
    idp: DevIssuer,
    _up: EchoUpstream,
}

/// [`Site`] with push transmitters on its signals listener.
struct Setup {
    site: Site,
    /// RS256 transmitter at `/ssf/tx` (risk level threshold: the default, HIGH); its key set
    /// also serves `legacy` at `/ssf/legacy`.
    tx: DevTransmitter,
    /// ES256 transmitter at `/ssf/es`.
    es: DevTransmitter,
    /// Transmitter at `/ssf/med` with `risk_revoke_level = "medium"`.
    med: DevTransmitter,
}

impl Deref for Setup {
    type Target = Site;

    fn deref(&self) -> &Site {
        &self.site
    }
}

async fn setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let es = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            alg: KeyAlg::Es256,
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let med = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let rs256 = "algorithms = [\"RS256\"]";
    let toml = base(&idp.issuer_url(), &up.url())
        .store(REDB)
        .signals()
        .push_transmitter("tx", &tx.issuer_url(), &tx.jwks_url(), AUD, rs256)
        .push_transmitter(
            "es",
            &es.issuer_url(),
            &es.jwks_url(),
            AUD,
            "algorithms = [\"ES256\"]",
        )
        .push_transmitter(
            "med",
            &med.issuer_url(),
            &med.jwks_url(),
            AUD,
            "risk_revoke_level = \"medium\"",
        )
        .push_transmitter("legacy", LEGACY_ISS, &tx.jwks_url(), LEGACY_AUD, rs256)
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    Setup {
        site: Site { h, idp, _up: up },
        tx,
        es,
        med,
    }
}

// ---- requests ----

async fn readyz(h: &Harness) -> Reply {
    get(&client(), &h.admin_url("/readyz"), &[]).await
}

/// Polls `/readyz` until it answers `want` (panics naming `what` after 10 s); the answer.
async fn ready_eventually(h: &Harness, want: StatusCode, what: &str) -> Reply {
    let answered = poll_until(std::time::Duration::from_secs(10), || async {
        let r = readyz(h).await;
        (r.status == want).then_some(r)
    })
    .await;
    match answered {
        Some(r) => r,
        None => panic!(
            "/readyz never answered {want} ({what}): {}",
            readyz(h).await.text()
        ),
    }
}

/// Waits (bounded) until `tx` has recorded a push to `url` answered `202` (its verification
/// event, at the start). The development transmitter records a push once it has the answer, so
/// the proxy can already be ready (it accepted the event) when the push is not recorded yet.
async fn push_accepted(tx: &DevTransmitter, url: &str) {
    eventually(
        std::time::Duration::from_secs(10),
        &format!("a push to {url} answered 202"),
        || async {
            tx.pushes()
                .iter()
                .any(|p| p.url == url && p.status == Some(202))
        },
    )
    .await;
}

/// POSTs `body` to the signals listener's `path` with these credentials and media type.
async fn push_raw(
    h: &Harness,
    path: &str,
    auth: Option<&str>,
    ct: Option<&str>,
    body: &str,
) -> Reply {
    let mut headers = vec![("accept", "application/json")];
    if let Some(ct) = ct {
        headers.push(("content-type", ct));
    }
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(
        &client(),
        Method::POST,
        &h.url("signals", path),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
}

/// Pushes a SET as a transmitter does.
async fn push(h: &Harness, path: &str, set: &str) -> Reply {
    push_raw(h, path, Some(PUSH_AUTH), Some(SECEVENT), set).await
}

/// Pushes and expects `202 Accepted` with an empty body.
async fn accepted(s: &Site, path: &str, set: &str) {
    let r = push(&s.h, path, set).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert!(r.body.is_empty(), "202 has an empty body: {:?}", r.text());
    assert_eq!(r.header("content-type"), None);
}

/// The RFC 8935 §2.3 error answer: 400, JSON with only `err` and `description`.
fn assert_push_error(r: &Reply, err: &str, description: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{err}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{err}");
    assert_eq!(r.header("content-language"), Some("en-US"), "{err}");
    assert_eq!(
        r.json(),
        json!({"err": err, "description": description}),
        "{err}"
    );
    let keys: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 2, "only err and description: {}", r.text());
}

/// `/api` with `token`.
async fn call(s: &Site, token: &str) -> Reply {
    call_with(&s.h.url("public", "/api"), token).await
}

async fn stats(h: &Harness) -> Value {
    admin_get(&h.admin_url("/admin/stats")).await
}

/// `(revocations, blocks, bindings)` of `/admin/stats`.
async fn table_sizes(h: &Harness) -> (i64, i64, i64) {
    let st = stats(h).await;
    (
        st["revocations"].as_i64().unwrap(),
        st["blocks"].as_i64().unwrap(),
        st["bindings"].as_i64().unwrap(),
    )
}

/// The `cae_sets_received_total` series of one transmitter, event and result.
fn sets_series(transmitter: &str, event: &str, result: &str) -> String {
    format!(
        r#"cae_sets_received_total{{transmitter="{transmitter}",event="{event}",result="{result}"}}"#
    )
}

// ---- tokens and answers ----

/// A dev-issuer token for `sub` issued `ago` seconds before now, with `extra` claims.
fn mint(idp: &DevIssuer, sub: &str, ago: i64, extra: Value) -> String {
    let t = now_secs() - ago;
    let mut claims = json!({"iat": t, "nbf": t});
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    idp.mint(sub, claims)
}

fn token(s: &Site, sub: &str, ago: i64, extra: Value) -> String {
    mint(&s.idp, sub, ago, extra)
}

/// The `iss_sub` subject of a dev-issuer user.
fn user(s: &Site, sub: &str) -> Value {
    iss_sub(&s.idp.issuer_url(), sub)
}

/// The `nbf` value a claims challenge asks for.
fn decode_nbf(header: &str) -> i64 {
    decode_claims(header)["access_token"]["nbf"]["value"]
        .as_str()
        .expect("nbf value")
        .parse()
        .unwrap()
}

/// 401 with the claims challenge of a revocation at `at` and the JSON body that goes with it.
async fn assert_revoked_at(url: &str, idp: &DevIssuer, token: &str, at: i64, what: &str) {
    let r = call_with(url, token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    let expected = format!(
        r#"Bearer realm="", authorization_uri="{}/authorize", error="insufficient_claims", claims="{}""#,
        idp.issuer_url(),
        nbf_claims(at)
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(expected.as_str()),
        "{what}"
    );
    assert_eq!(
        decode_claims(&expected),
        json!({"access_token": {"nbf": {"essential": true, "value": at.to_string()}}}),
        "{what}"
    );
    let body = r.json();
    assert_eq!(body["error"], "insufficient_claims", "{what}: {body}");
    assert_eq!(
        body["code"], "TokenIssuedBeforeRevocationTimestamp",
        "{what}: {body}"
    );
    assert_eq!(body["message"], REVOKED_MESSAGE, "{what}: {body}");
}

async fn assert_revoked(s: &Site, token: &str, at: i64, what: &str) {
    assert_revoked_at(&s.h.url("public", "/api"), &s.idp, token, at, what).await;
}

async fn assert_passes(s: &Site, token: &str, what: &str) {
    let r = call(s, token).await;
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
}

/// 401 `AccountBlocked`: the claims challenge asks for a token issued at the decision time.
async fn assert_blocked(s: &Site, token: &str, what: &str) {
    let before = now_secs();
    let r = call(s, token).await;
    let after = now_secs();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "insufficient_claims", "{what}: {body}");
    assert_eq!(body["code"], "AccountBlocked", "{what}: {body}");
    assert_eq!(body["message"], "the account is disabled", "{what}: {body}");
    let header = r.header("www-authenticate").unwrap();
    let prefix = format!(
        r#"Bearer realm="", authorization_uri="{}/authorize", error="insufficient_claims", claims=""#,
        s.idp.issuer_url()
    );
    assert!(header.starts_with(&prefix), "{what}: {header}");
    let nbf = decode_nbf(header);
    assert!((before..=after).contains(&nbf), "{what}: nbf {nbf}");
}

/// The `jti` of a SET.
fn jti_of(set: &str) -> String {
    decode_unverified(set).unwrap().1["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A SET's `jti`, as a poll request's `ack` list or `setErrs` object names them, sorted.
fn jtis(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Value::Array(a) => a.iter().map(|j| j.as_str().unwrap().to_string()).collect(),
        Value::Object(m) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

// ---- SET construction ----

/// The `state` of the SSF verification example (docs/protocols.md §7), never asked for by us.
const FOREIGN_STATE: &str = "VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo=";

/// Fills `iss`, `iat`, `jti`, `aud` like `DevTransmitter::sign_set` (to sign with a custom header).
fn filled(tx: &DevTransmitter, payload: Value) -> Value {
    let mut p = payload;
    let m = p.as_object_mut().unwrap();
    m.entry("iss").or_insert(json!(tx.issuer_url()));
    m.entry("iat").or_insert(json!(now_secs()));
    m.entry("jti")
        .or_insert(json!(cae_proxy::dev::random_id(16)));
    m.entry("aud").or_insert(json!(AUD));
    m.retain(|_, v| !v.is_null());
    p
}

/// Signed with the transmitter's key under `header` verbatim.
fn sign_raw(tx: &DevTransmitter, header: Value, payload: Value) -> String {
    tx.signing_key().sign_raw(&header, &filled(tx, payload))
}

fn rs_header(tx: &DevTransmitter) -> Value {
    json!({"typ": "secevent+jwt", "alg": "RS256", "kid": tx.signing_key().kid()})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn uri(kind: &str, name: &str) -> String {
    format!("{kind}{name}")
}
