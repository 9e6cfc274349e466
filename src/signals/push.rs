//! RFC 8935 push endpoint: authenticate the transmitter, bound and read the body, then process
//! the SET ([`super::process`]) and answer `202` or the §2.4 error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::process::process_set;
use super::set::ErrCode;
use super::transmitter::{DeliveryKind, Tally, TransmitterRt};
use crate::config::Secret;
use crate::reply::{json_error, BoxError, BoxedBody};
use crate::store::SignalStore;

/// `Retry-After` (seconds) when the store or the keys are unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Entry point of listeners with `role = "signals"`: the push path names the transmitter
/// (`paths`, from the current snapshot); one access line per request.
pub async fn serve<B>(
    paths: &HashMap<String, Arc<TransmitterRt>>,
    store: &Arc<SignalStore>,
    client_cert_sha256: Option<&[u8; 32]>,
    req: Request<B>,
) -> Response<BoxedBody>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_string();
    let Some(rt) = paths.get(&path) else {
        let id = crate::proxy::headers::request_id(req.headers());
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no signals endpoint at this path",
            id.to_str().unwrap_or_default(),
        );
    };
    let t0 = Instant::now();
    let resp = handle_push(rt, store, req, client_cert_sha256, crate::store::now_secs()).await;
    tracing::info!(target: "access", listener = "signals", path = %path, transmitter = %rt.name(), status = resp.status().as_u16(), duration_ms = t0.elapsed().as_secs_f64() * 1000.0);
    resp.map(|b| {
        b.map_err(|e: Infallible| -> BoxError { match e {} })
            .boxed()
    })
}

#[derive(serde::Serialize)]
struct ErrBody<'a> {
    err: &'a str,
    description: &'a str,
}

/// `400` with the RFC 8935 §2.4 JSON error body.
pub fn error_response(err: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrBody { err, description }).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("en-US"));
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn unavailable() -> Response<Full<Bytes>> {
    let mut r = empty(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// `application/secevent+jwt` or `application/jwt`, parameters ignored.
fn content_type_ok(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = v.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/secevent+jwt")
        || media.eq_ignore_ascii_case("application/jwt")
}

/// The configured `Authorization` value (or, during a rotation, the previous one), compared in
/// constant time (RFC 8935 §2.3). Without a configured value the listener's mTLS is the
/// authentication.
fn authenticated(
    expected: Option<&Secret>,
    previous: Option<&Secret>,
    headers: &HeaderMap,
) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => {
            // Both compared, so the time does not tell which one matched.
            let current = expected.matches(v.as_bytes());
            let old = previous.is_some_and(|p| p.matches(v.as_bytes()));
            current | old
        }
        _ => false,
    }
}

/// Handles one push request (RFC 8935 §2). Order: method, transmitter authentication (before
/// anything is read or disclosed), the client certificate bound to the transmitter (400
/// `access_denied`), content type (415), declared length (413), bounded read (413),
/// verification and `state` (400), durable commit (503 on failure), then `202` with an empty
/// body. A SET seen before is answered `202` again. `client_cert`: SHA-256 of the certificate
/// the connection's mTLS handshake verified.
pub async fn handle_push<B>(
    rt: &TransmitterRt,
    store: &Arc<SignalStore>,
    req: Request<B>,
    client_cert: Option<&[u8; 32]>,
    now: i64,
) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let arrival = Instant::now();
    let cfg = rt.cfg();
    let Some(push) = cfg.push.as_ref() else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !authenticated(
        push.authorization.as_ref(),
        push.previous_authorization.as_ref(),
        &parts.headers,
    ) {
        rt.tally(Tally::PushAuthFailure("authorization"));
        tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, "push request without the configured Authorization");
        return error_response(
            ErrCode::AuthenticationFailed.as_str(),
            "the transmitter is not authenticated",
        );
    }
    if !push.client_cert_sha256.is_empty() {
        let Some(cert) = client_cert else {
            rt.tally(Tally::PushAuthFailure("client_certificate_missing"));
            return error_response(
                ErrCode::AuthenticationFailed.as_str(),
                "a client certificate is required",
            );
        };
        if !push.client_cert_sha256.iter().any(|pinned| pinned == cert) {
            rt.tally(Tally::PushAuthFailure("client_certificate_not_bound"));
            tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, "push with a client certificate not bound to this transmitter");
            return error_response(
                ErrCode::AccessDenied.as_str(),
                "this client certificate may not send for this transmitter",
            );
        }
    }
    if !content_type_ok(&parts.headers) {
        return empty(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let max = push.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64)
        || http_body::Body::size_hint(&body).lower() > max as u64
    {
        return empty(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return empty(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => {
            return error_response(
                ErrCode::InvalidRequest.as_str(),
                "the request body could not be read",
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return error_response(
            ErrCode::InvalidRequest.as_str(),
            "the body is not a compact JWS: not UTF-8",
        );
    };
    match process_set(rt, store, text, arrival, now, DeliveryKind::Push).await {
        Ok(_) => empty(StatusCode::ACCEPTED),
        Err(e) => match e.err_code() {
            Some((err, description)) => error_response(err, &description),
            None => {
                tracing::warn!(target: "cae_proxy::signals", transmitter = %cfg.name, error = %crate::errors::Chain(&e), "SET not stored; asking the transmitter to retry");
                unavailable()
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::keys::KeySet;
    use crate::config::{KeyPolicy, KeySource, Push, RiskLevel, Transmitter};
    use crate::dev::keys::set_kit::{self as kit, AUD, ISS};
    use crate::dev::keys::SigningKey;
    use crate::signals::transmitter::FreshnessSample;
    use crate::store::{Batch, CommitOutcome, StoreError};
    use crate::store::{Durable, MemoryStore, SubjectKey};
    use serde_json::{json, Value};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use std::time::Duration;

    pub(crate) fn transmitter(dir: &std::path::Path, signer: &SigningKey) -> Transmitter {
        let path = dir.join("jwks.json");
        std::fs::write(&path, kit::jwks(signer).to_string()).unwrap();
        Transmitter {
            name: "tx".into(),
            issuer: ISS.into(),
            keys: KeySource::JwksFile(path),
            key_policy: KeyPolicy {
                allow_insecure_http: false,
                refresh_interval: Duration::from_secs(300),
                min_refresh: Duration::from_secs(1),
                max_refresh: Duration::from_secs(3600),
                unknown_kid_cooldown: Duration::from_secs(3600),
            },
            audiences: vec![AUD.into()],
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            min_rsa_bits: 2048,
            risk_revoke_level: RiskLevel::High,
            token_issuer: None,
            push: Some(Push {
                client_cert_sha256: Vec::new(),
                path: "/ssf/push".into(),
                authorization: Some(Secret::from_value("Bearer push-secret")),
                previous_authorization: None,
                max_body: 8 * 1024,
            }),
            poll: None,
            stream: None,
        }
    }

    pub(crate) async fn runtime(dir: &std::path::Path, signer: &SigningKey) -> Arc<TransmitterRt> {
        let cfg = transmitter(dir, signer);
        let keys = Arc::new(KeySet::new(
            &cfg.name,
            cfg.keys.clone(),
            &cfg.issuer,
            cfg.key_policy.clone(),
            cfg.min_rsa_bits,
            crate::fetch::Fetcher::new(),
        ));
        keys.refresh().await.unwrap();
        Arc::new(TransmitterRt::new(cfg, keys, None))
    }

    pub(crate) struct Failing;
    impl Durable for Failing {
        fn commit(&self, _: &Batch) -> Result<CommitOutcome, StoreError> {
            Err(StoreError::Write("disk full".into()))
        }
        fn load(&self) -> Result<Vec<crate::store::Change>, StoreError> {
            Ok(Vec::new())
        }
        fn purge(&self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn seen(&self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn put_state(&self, _: &str, _: &str, _: i64) -> Result<(), StoreError> {
            Err(StoreError::Write("disk full".into()))
        }
        fn state_expiry(&self, _: &str, _: &str) -> Result<Option<i64>, StoreError> {
            Ok(None)
        }
        fn name(&self) -> &'static str {
            "failing"
        }
    }

    fn req(body: &str, ct: Option<&str>, auth: Option<&str>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method("POST")
            .uri("/ssf/push")
            .header("accept", "application/json");
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    }

    fn good(body: &str) -> Request<Full<Bytes>> {
        req(
            body,
            Some("application/secevent+jwt"),
            Some("Bearer push-secret"),
        )
    }

    async fn parts(r: Response<Full<Bytes>>) -> (u16, Vec<(String, String)>, String) {
        let status = r.status().as_u16();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let body =
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, headers, body)
    }

    fn err_headers() -> Vec<(String, String)> {
        vec![
            ("content-language".into(), "en-US".into()),
            ("content-type".into(), "application/json".into()),
        ]
    }

    fn claims(jti: &str, events: Value) -> Value {
        json!({"iss": ISS, "jti": jti, "iat": 1_700_000_000, "aud": AUD, "sub_id": {"format":"iss_sub","iss":"https://idp.example.com/","sub":"u1"}, "events": events})
    }

    fn revoke_events() -> Value {
        json!({"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": 1_700_000_000}})
    }

    #[tokio::test]
    async fn push_statuses_headers_and_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let store = Arc::new(
            SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 1_700_000_000).unwrap(),
        );
        let now = 1_700_000_100;
        let set = s.sign_set(&claims("p-1", revoke_events()));

        // Accepted: 202, empty body, no headers; the change is enforced.
        let (st, h, b) = parts(handle_push(&rt, &store, good(&set), None, now).await).await;
        assert_eq!((st, h, b.as_str()), (202, vec![], ""));
        let key = SubjectKey::Subject {
            iss: "https://idp.example.com".into(),
            sub: "u1".into(),
        };
        assert_eq!(
            store.tables().revoked_at(&key.encode()),
            Some(1_700_000_000)
        );
        assert_eq!(rt.counters.committed.load(Ordering::Relaxed), 1);
        assert!(rt.freshness.last_commit_at.load(Ordering::Relaxed) > 0);

        // The same SET again: 202 again, applied once.
        let (st, _, b) = parts(handle_push(&rt, &store, good(&set), None, now).await).await;
        assert_eq!((st, b.as_str()), (202, ""));
        assert_eq!(rt.counters.duplicates.load(Ordering::Relaxed), 1);

        // Content type with parameters and application/jwt are accepted.
        let r = handle_push(
            &rt,
            &store,
            req(
                &s.sign_set(&claims("p-2", revoke_events())),
                Some("application/JWT; charset=utf-8"),
                Some("Bearer push-secret"),
            ),
            None,
            now,
        )
        .await;
        assert_eq!(r.status(), 202);

        // Authentication.
        for auth in [None, Some("Bearer wrong"), Some("Bearer push-secret ")] {
            let (st, h, b) = parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, Some("application/secevent+jwt"), auth),
                    None,
                    now,
                )
                .await,
            )
            .await;
            assert_eq!(
                (st, h, b.as_str()),
                (
                    400,
                    err_headers(),
                    r#"{"err":"authentication_failed","description":"the transmitter is not authenticated"}"#
                ),
                "{auth:?}"
            );
        }

        // 415 and 413.
        assert_eq!(
            parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, Some("application/json"), Some("Bearer push-secret")),
                    None,
                    now
                )
                .await
            )
            .await
            .0,
            415
        );
        assert_eq!(
            parts(
                handle_push(
                    &rt,
                    &store,
                    req(&set, None, Some("Bearer push-secret")),
                    None,
                    now
                )
                .await
            )
            .await
            .0,
            415
        );
        let big = "a".repeat(9 * 1024);
        assert_eq!(
            parts(handle_push(&rt, &store, good(&big), None, now).await).await,
            (413, vec![], String::new())
        );
        // A declared length above the limit is refused before reading.
        let mut r = good("x");
        r.headers_mut()
            .insert("content-length", HeaderValue::from_static("100000"));
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 413);
        // Streaming body without a length: refused while reading.
        let stream =
            http_body_util::StreamBody::new(futures_util::stream::iter((0..20).map(|_| {
                Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'a'; 1024])))
            })));
        let r = Request::builder()
            .method("POST")
            .header("content-type", "application/secevent+jwt")
            .header("authorization", "Bearer push-secret")
            .body(stream)
            .unwrap();
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 413);
        // Method.
        let mut r = good(&set);
        *r.method_mut() = Method::GET;
        assert_eq!(handle_push(&rt, &store, r, None, now).await.status(), 405);

        // Invalid SETs.
        let cases: Vec<(String, &str)> = vec![
            ("not a jwt".into(), r#"{"err":"invalid_request","description":"the body is not a compact JWS: a JWS has exactly three segments"}"#),
            (s.sign(Some(json!({"typ": "at+jwt"})), &claims("p-3", revoke_events())), r#"{"err":"invalid_request","description":"the typ header \"at+jwt\" is not acceptable for a SET"}"#),
            (s.sign_set(&json!({"iss": ISS, "jti": "p-4", "iat": 1, "aud": AUD, "events": revoke_events()})), r#"{"err":"invalid_request","description":"no subject identifier for event https://schemas.openid.net/secevent/caep/event-type/session-revoked"}"#),
            ({
                let mut v = claims("p-5", revoke_events());
                v["iss"] = json!("https://evil.example.com");
                s.sign_set(&v)
            }, r#"{"err":"invalid_issuer","description":"the SET issuer is not the configured transmitter"}"#),
            ({
                let mut v = claims("p-6", revoke_events());
                v["aud"] = json!("https://other.example.com");
                s.sign_set(&v)
            }, r#"{"err":"invalid_audience","description":"the SET audience does not name this receiver"}"#),
            (s.sign_raw(&json!({"alg":"RS256","kid":"nope"}), &claims("p-7", revoke_events())), r#"{"err":"invalid_key","description":"no key of the transmitter matches kid \"nope\""}"#),
        ];
        for (body, want) in cases {
            let (st, h, b) = parts(handle_push(&rt, &store, good(&body), None, now).await).await;
            assert_eq!((st, h, b.as_str()), (400, err_headers(), want));
        }

        // Verification: outstanding state, null state, foreign state.
        let ver = |jti: &str, state: Value| {
            s.sign_set(&json!({"iss": ISS, "jti": jti, "iat": 1, "aud": AUD, "sub_id": {"format":"opaque","id":"stream-1"},
                "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": state}}}))
        };
        let state = TransmitterRt::random_state();
        store
            .register_state(&rt.state_scope(), &state, now + 3600)
            .await
            .unwrap();
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-1", json!(state))), None, now)
                .await
                .status(),
            202
        );
        assert_eq!(rt.verified_at(), Some(now));
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-1", json!(state))), None, now)
                .await
                .status(),
            202,
            "redelivery"
        );
        assert_eq!(
            handle_push(
                &rt,
                &store,
                good(&ver("v-1", json!(state))),
                None,
                now + 7200
            )
            .await
            .status(),
            202,
            "a repeat is answered as one before its state (expired by now) is looked at"
        );
        assert_eq!(
            handle_push(&rt, &store, good(&ver("v-2", Value::Null)), None, now)
                .await
                .status(),
            202
        );
        let (st, h, b) = parts(
            handle_push(
                &rt,
                &store,
                good(&ver(
                    "v-3",
                    json!("VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="),
                )),
                None,
                now,
            )
            .await,
        )
        .await;
        assert_eq!(
            (st, h, b.as_str()),
            (
                400,
                err_headers(),
                r#"{"err":"invalid_state","description":"the verification state was not requested by this receiver"}"#
            )
        );

        // Stream updated: paused is flagged.
        let upd = s.sign_set(&json!({"iss": ISS, "jti": "su-1", "iat": 5, "aud": AUD, "sub_id": {"format":"opaque","id":"stream-1"},
            "events": {"https://schemas.openid.net/secevent/ssf/event-type/stream-updated": {"status": "paused", "reason": "maintenance"}}}));
        assert_eq!(
            handle_push(&rt, &store, good(&upd), None, now)
                .await
                .status(),
            202
        );
        assert!(!rt.stream_active());
        assert_eq!(rt.stream_state().reason.as_deref(), Some("maintenance"));

        // Unknown event: 202, no effect.
        let before = store.tables().stats();
        let unk = s.sign_set(&claims(
            "u-1",
            json!({"https://vendor.example/evt": {"x": 1}}),
        ));
        assert_eq!(
            handle_push(&rt, &store, good(&unk), None, now)
                .await
                .status(),
            202
        );
        assert_eq!(store.tables().stats(), before);
    }

    /// Compile-time check: the proxy spawns these inside hyper services.
    #[allow(dead_code)]
    fn futures_are_send(
        rt: &TransmitterRt,
        store: &Arc<SignalStore>,
        req: Request<hyper::body::Incoming>,
    ) {
        fn send<T: Send>(_: T) {}
        send(handle_push(rt, store, req, None, 0));
        send(rt.verify("x", 0));
    }

    #[tokio::test]
    async fn freshness_observer_sees_committed_sets() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        rt.freshness
            .set_observer(Box::new(move |f: &FreshnessSample| {
                sink.lock()
                    .unwrap()
                    .push((f.transmitter.clone(), f.delivery, f.event_lag_ms))
            }));
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let set = s.sign_set(&claims("fr-1", revoke_events()));
        assert_eq!(
            handle_push(&rt, &store, good(&set), None, 1).await.status(),
            202
        );
        assert_eq!(
            handle_push(&rt, &store, good(&set), None, 1).await.status(),
            202
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "duplicates are not samples");
        assert_eq!((seen[0].0.as_str(), seen[0].1), ("tx", DeliveryKind::Push));
        assert!(seen[0].2 > 0, "event 1_700_000_000 lies in the past");
        assert_eq!(
            rt.freshness.last_event_lag_ms.load(Ordering::Relaxed),
            seen[0].2
        );
    }

    #[tokio::test]
    async fn store_failure_is_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let rt = runtime(dir.path(), &s).await;
        let store = Arc::new(SignalStore::open(Arc::new(Failing), 100_000, 0).unwrap());
        let r = handle_push(
            &rt,
            &store,
            good(&s.sign_set(&claims("f-1", revoke_events()))),
            None,
            1,
        )
        .await;
        let (st, h, b) = parts(r).await;
        assert_eq!(
            (st, h, b.as_str()),
            (503, vec![("retry-after".into(), "5".into())], "")
        );
        assert_eq!(rt.counters.unavailable.load(Ordering::Relaxed), 1);
        // Not acknowledged, yet already enforced: a failed write never widens access.
        assert_eq!(store.tables().stats().revocations, 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_the_jwks_once() {
        let dir = tempfile::tempdir().unwrap();
        let rsa = kit::rsa();
        let rt = runtime(dir.path(), &rsa).await;
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        // The transmitter rotates in an EC key after we loaded its JWKS.
        let ec = kit::ec();
        let both = json!({"keys": [kit::jwks(&rsa)["keys"][0].clone(), kit::jwks(&ec)["keys"][0].clone()]});
        std::fs::write(dir.path().join("jwks.json"), both.to_string()).unwrap();
        let r = handle_push(
            &rt,
            &store,
            good(&ec.sign_set(&claims("k-1", revoke_events()))),
            None,
            1,
        )
        .await;
        assert_eq!(r.status(), 202);
        // Within the cooldown a second unknown kid does not refetch.
        let fetches = rt.keys.stats.fetches.load(Ordering::Relaxed);
        let t = rsa.sign_raw(
            &json!({"alg":"RS256","kid":"later"}),
            &claims("k-2", revoke_events()),
        );
        assert_eq!(
            handle_push(&rt, &store, good(&t), None, 1).await.status(),
            400
        );
        assert_eq!(rt.keys.stats.fetches.load(Ordering::Relaxed), fetches);
    }

    #[tokio::test]
    async fn es256_transmitter_and_no_authorization_configured() {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::ec();
        let rt = runtime(dir.path(), &s).await;
        let mut cfg = (*rt.cfg()).clone();
        if let Some(p) = cfg.push.as_mut() {
            p.authorization = None;
        }
        rt.reconfigure(cfg, None);
        let store =
            Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 100_000, 0).unwrap());
        let r = handle_push(
            &rt,
            &store,
            req(
                &s.sign_set(&claims("e-1", revoke_events())),
                Some("application/secevent+jwt"),
                None,
            ),
            None,
            1,
        )
        .await;
        assert_eq!(r.status(), 202);
    }
}
