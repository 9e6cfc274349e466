//! SSF stream management: the stream is created (with a static bearer or a client-credentials
//! token, RFC 6749 §4.4) and verified before the proxy is ready; pausing shows in readiness; a
//! refused secret or a configuration naming another issuer keeps the transmitter unready.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{iss_sub, DevTransmitter, TransmitterOptions, CAEP};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::ServerHandle;
use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn managed_stream_is_created_and_verified_before_ready_and_pausing_shows() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some("mgmt-token".into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    // The transmitter is down when the proxy starts.
    tx.set_available(false);
    // The push URL goes into the stream configuration before the proxy binds the signals
    // listener: its port is reserved here (held, not listening) and the proxy binds it.
    let signals_port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/managed", signals_port.addr());
    let toml = base(&idp.issuer_url(), &up.url())
        .store(REDB)
        .signals_at(&signals_port.addr().to_string())
        .transmitter(
            "managed",
            &format!(
                r#"issuer = "{iss}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/managed"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "{push_url}"
bearer = "mgmt-token"
events_requested = ["{CAEP}session-revoked", "{CAEP}credential-change"]"#,
                iss = tx.issuer_url(),
                disc = tx.configuration_url(),
            ),
        )
        .build();
    let h = Harness::start(&toml).await;
    // Once the token issuers' keys are in, only the transmitter holds readiness back, and says
    // why (once its first attempts failed).
    let settled = poll_until(Duration::from_secs(10), || async {
        let r = readyz(&h).await;
        (!r.text().contains("issuer ") && r.text().matches("yet: ").count() == 1).then_some(r)
    })
    .await;
    let r = match settled {
        Some(r) => r,
        None => readyz(&h).await,
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": [
            format!("transmitter managed has no keys yet: {}/.well-known/ssf-configuration answered HTTP 503", tx.issuer_url()),
            "transmitter managed stream is not active (not created: the SSF configuration was not loaded yet)"
        ]})
    );
    assert!(tx.streams().is_empty());

    tx.set_available(true);
    ready_eventually(&h, StatusCode::OK, "stream created and verified").await;
    let streams = tx.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let stream = &streams[0];
    assert_eq!(stream["delivery"]["method"], "urn:ietf:rfc:8935");
    assert_eq!(stream["delivery"]["endpoint_url"], push_url.as_str());
    assert_eq!(stream["delivery"]["authorization_header"], PUSH_AUTH);
    let stream_id = stream["stream_id"].as_str().unwrap().to_string();
    // The transmitter's verification SET (with our state) was pushed to us and accepted.
    push_accepted(&tx, &push_url).await;

    // A verification with a state we never asked for.
    let foreign = tx.sign_set(DevTransmitter::verification(
        &stream_id,
        Some(FOREIGN_STATE),
    ));
    let (status, headers, body) = tx.push(&push_url, Some(PUSH_AUTH), &foreign).await.unwrap();
    assert_eq!(status, 400);
    assert_eq!(headers.get("content-language").unwrap(), "en-US");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"err": "invalid_state", "description": "the verification state was not requested by this receiver"})
    );

    // Events pushed by the stream take effect.
    let at = now_secs() - 10;
    let s = Site { h, idp, _up: up };
    let old = token(&s, "streamed", 100, json!({}));
    tx.deliver(&tx.sign_set(DevTransmitter::credential_change(
        user(&s, "streamed"),
        "password",
        "update",
        Some(at),
    )))
    .await;
    assert_eq!(tx.pushes().last().unwrap().status, Some(202));
    assert_revoked(&s, &old, at, "old").await;

    // Pausing the stream at the transmitter: it announces stream-updated, readiness reports it.
    let set_status = |status: &'static str| {
        let url = format!("{}/ssf/status", tx.issuer_url());
        let body =
            json!({"stream_id": stream_id, "status": status, "reason": "maintenance"}).to_string();
        async move {
            send(
                &client(),
                Method::POST,
                &url,
                &[
                    ("authorization", "Bearer mgmt-token"),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body),
            )
            .await
        }
    };
    assert_eq!(set_status("paused").await.status, StatusCode::OK);
    let r = ready_eventually(
        &s.h,
        StatusCode::SERVICE_UNAVAILABLE,
        "paused stream reported",
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (paused)"]})
    );
    assert_eq!(set_status("enabled").await.status, StatusCode::OK);
    ready_eventually(&s.h, StatusCode::OK, "enabled again").await;
}

#[tokio::test]
async fn ssf_configuration_naming_another_issuer_keeps_the_transmitter_unready() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some("mgmt-token".into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `bad` expects an issuer the transmitter's ssf-configuration does not name; `good` reads
    // the same document expecting its issuer (with one trailing slash more: still equal).
    let expected_bad = format!("{}/tenant-a", tx.issuer_url());
    let store = redb_store(dir.path());
    let text = base(&idp.issuer_url(), &up.url())
        .log_level("info")
        .store(&store)
        .signals()
        .build()
        + &format!(
            r#"
[[transmitter]]
name = "good"
issuer = "{iss}/"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/good"
authorization = "{PUSH_AUTH}"

[[transmitter]]
name = "bad"
issuer = "{expected_bad}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/bad"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "http://127.0.0.1:9/ssf/bad"
bearer = "mgmt-token"
events_requested = ["{CAEP}session-revoked"]
"#,
            iss = tx.issuer_url(),
            disc = tx.configuration_url(),
        );
    let cfg = dir.path().join("cae-proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    let bin = Binary::start(&cfg, 3);
    let c = client();
    let failures = r#"cae_key_fetch_failures_total{name="bad"}"#;
    // The discovery document was read and refused several times (the refresher retries).
    {
        let metrics_url = bin.url("admin", "/metrics");
        let (c, url) = (&c, &metrics_url);
        eventually(Duration::from_secs(15), "three refused discovery fetches", || async move { metric(&get(c, url, &[]).await.text(), failures).unwrap_or(0.0) >= 3.0 })
        .await;
    }
    let r = get(&c, &bin.url("admin", "/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // /readyz says why: the key fetch's error, and the stream manager's.
    let missing = r.json()["missing"].clone();
    assert_eq!(missing.as_array().map(Vec::len), Some(2), "{missing}");
    assert_eq!(
        missing[1],
        "transmitter bad stream is not active (not created: the SSF configuration was not loaded yet)"
    );
    // The reason is in the log, naming both issuers.
    let why = format!(
        "discovery at {} names issuer {:?}, expected {:?}",
        tx.configuration_url(),
        tx.issuer_url(),
        expected_bad
    );
    assert_eq!(
        missing[0],
        format!("transmitter bad has no keys yet: {why}")
    );
    let escaped = json!(why).to_string();
    let escaped = escaped.trim_matches('"');
    assert!(
        bin.log().iter().any(|l| l.contains(escaped)),
        "no log line says {why:?}: {:?}",
        bin.log()
    );
    // No stream was ever created at the transmitter, and `bad`'s push endpoint answers 503
    // (retry later) rather than a verdict on the SET.
    assert!(tx.streams().is_empty(), "{:?}", tx.streams());
    let set = tx.sign_set(DevTransmitter::session_revoked(
        iss_sub(&idp.issuer_url(), "x"),
        None,
    ));
    let (status, headers, body) = tx
        .push(&bin.url("signals", "/ssf/bad"), Some(PUSH_AUTH), &set)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (503, ""));
    assert_eq!(headers.get("retry-after").unwrap(), "5");
    // The same SET to `good` is accepted: that transmitter is fully usable.
    let (status, _, body) = tx
        .push(&bin.url("signals", "/ssf/good"), Some(PUSH_AUTH), &set)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (202, ""));
    let r = get(&c, &bin.url("admin", "/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "still not ready");
}

/// `(Authorization header, form body, arrival)` of one token request.
type TokenRequest = (Option<String>, String, Instant);

/// A client-credentials token endpoint (RFC 6749 §4.4, `client_secret_basic`): issues `token`
/// to `client_id` / `secret`, refuses anything else with 401 `invalid_client`.
struct TokenEndpoint {
    _server: ServerHandle,
    url: String,
    /// Every request received.
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn token_endpoint(client_id: &str, secret: &str, token: &str) -> TokenEndpoint {
    let l = listener().await;
    let url = format!("http://{}/oauth2/token", l.local_addr().unwrap());
    let requests: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
    let log = requests.clone();
    let want = Arc::new((client_id.to_string(), secret.to_string(), token.to_string()));
    let server = cae_proxy::dev::serve(l, move |req: http::Request<Incoming>, _| {
        let log = log.clone();
        let want = want.clone();
        async move {
            let at = Instant::now();
            let path_ok = *req.method() == Method::POST && req.uri().path() == "/oauth2/token";
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ct_ok = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/x-www-form-urlencoded");
            let body = cae_proxy::dev::read_body(req.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            log.lock().unwrap().push((auth.clone(), body.clone(), at));
            let credentials = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(i, p)| (form_decode(i), form_decode(p)))
                });
            let grant = url::form_urlencoded::parse(body.as_bytes())
                .any(|(k, v)| k == "grant_type" && v == "client_credentials");
            if !path_ok || !ct_ok || !grant {
                return cae_proxy::dev::json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid_request"}),
                );
            }
            if credentials != Some((want.0.clone(), want.1.clone())) {
                let mut r = cae_proxy::dev::json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid_client"}),
                );
                r.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static("Basic realm=\"token\""),
                );
                return r;
            }
            cae_proxy::dev::json_response(
                StatusCode::OK,
                &json!({"access_token": want.2, "token_type": "Bearer", "expires_in": 3600, "scope": "ssf.manage ssf.read"}),
            )
        }
    })
    .unwrap();
    TokenEndpoint {
        _server: server,
        url,
        requests,
    }
}

const CLIENT_ID: &str = "cae-proxy";

/// A secret with characters `client_secret_basic` must form-encode (`:`, `+`, space).
const CLIENT_SECRET: &str = "top s3cret:+";

/// The transmitter `managed` of `tx`: push at `/ssf/managed`, a stream managed with a
/// client-credentials token from `token_url`, pushing to `push_url`.
fn managed_transmitter(
    t: Toml,
    tx: &DevTransmitter,
    push_url: &str,
    token_url: &str,
    client_secret: &str,
) -> Toml {
    t.transmitter(
        "managed",
        &format!(
            r#"issuer = "{iss}"
discovery = "{disc}"
audiences = ["{AUD}"]
[transmitter.push]
path = "/ssf/managed"
authorization = "{PUSH_AUTH}"
[transmitter.stream]
delivery = "push"
endpoint_url = "{push_url}"
token_endpoint = "{token_url}"
client_id = "{CLIENT_ID}"
client_secret = "{client_secret}"
scope = "ssf.manage ssf.read"
events_requested = ["{CAEP}credential-change"]"#,
            iss = tx.issuer_url(),
            disc = tx.configuration_url(),
        ),
    )
}

#[tokio::test]
async fn stream_management_uses_a_client_credentials_token() {
    let issued = format!("mgmt-{}", cae_proxy::dev::random_id(12));
    let te = token_endpoint(CLIENT_ID, CLIENT_SECRET, &issued).await;
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(issued.clone()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    // The push URL goes into the configuration before the proxy binds the signals listener:
    // its port is reserved here (held, not listening) and the proxy binds it.
    let signals_port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/managed", signals_port.addr());
    let base = base(&idp.issuer_url(), &up.url()).signals_at(&signals_port.addr().to_string());
    let toml = managed_transmitter(base, &tx, &push_url, &te.url, CLIENT_SECRET).build();
    let h = Harness::start(&toml).await;
    // Ready = stream created with the issued token, verification pushed back and accepted.
    eventually(Duration::from_secs(15), "ready", || {
        let url = h.admin_url("/readyz");
        async move { get(&client(), &url, &[]).await.status == StatusCode::OK }
    })
    .await;

    // One token request (the token is cached), client_secret_basic with form-encoded parts.
    let reqs = te.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode("cae-proxy:top+s3cret%3A%2B");
    assert_eq!(
        reqs[0].0.as_deref(),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        reqs[0].1,
        "grant_type=client_credentials&scope=ssf.manage+ssf.read"
    );

    // The transmitter (which accepts only the issued token) has our stream.
    let streams = tx.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["delivery"]["method"], "urn:ietf:rfc:8935");
    assert_eq!(streams[0]["delivery"]["endpoint_url"], push_url.as_str());
    assert_eq!(
        streams[0]["events_requested"],
        json!([format!("{CAEP}credential-change")])
    );
    let stream_url = format!("{}/ssf/stream", tx.issuer_url());
    let r = get(&client(), &stream_url, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the transmitter checks");
    let r = get(
        &client(),
        &stream_url,
        &[("authorization", &format!("Bearer {issued}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    // The verification SET came through the stream with our state.
    push_accepted(&tx, &push_url).await;

    // An event delivered by the stream takes effect.
    let at = now_secs() - 10;
    let old = mint(&idp, "streamed", 100, json!({}));
    tx.deliver(&tx.sign_set(DevTransmitter::credential_change(
        iss_sub(&idp.issuer_url(), "streamed"),
        "password",
        "update",
        Some(at),
    )))
    .await;
    assert_eq!(tx.pushes().last().unwrap().status, Some(202));
    assert_revoked_at(&h.url("public", "/api"), &idp, &old, at, "streamed").await;
    assert_eq!(te.requests.lock().unwrap().len(), 1, "still cached");
}

#[tokio::test]
async fn a_refused_client_secret_means_no_stream_and_never_ready() {
    let issued = format!("mgmt-{}", cae_proxy::dev::random_id(12));
    let te = token_endpoint(CLIENT_ID, CLIENT_SECRET, &issued).await;
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(issued.clone()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let toml = managed_transmitter(
        base(&idp.issuer_url(), &up.url()).signals(),
        &tx,
        "http://127.0.0.1:9/ssf/managed",
        &te.url,
        "not the secret",
    )
    .build();
    let h = Harness::start(&toml).await;
    eventually(
        Duration::from_secs(15),
        "two refused token requests",
        || {
            let n = te.requests.lock().unwrap().len();
            async move { n >= 2 }
        },
    )
    .await;
    let reqs = te.requests.lock().unwrap().clone();
    let wrong = base64::engine::general_purpose::STANDARD.encode("cae-proxy:not+the+secret");
    for r in &reqs {
        assert_eq!(r.0.as_deref(), Some(format!("Basic {wrong}").as_str()));
    }
    // Retried with a backoff (at least a second apart), not in a loop.
    assert!(
        reqs[1].2.duration_since(reqs[0].2) >= Duration::from_millis(900),
        "{:?}",
        reqs[1].2.duration_since(reqs[0].2)
    );
    assert!(tx.streams().is_empty(), "{:?}", tx.streams());
    assert!(tx.pushes().is_empty(), "no verification was asked");
    let r = get(&client(), &h.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (not created: the token endpoint refused client credentials: HTTP 401)"]})
    );
}
