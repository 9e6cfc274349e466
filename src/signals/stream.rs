//! SSF stream management (SSF §7–§8; we are the receiver, the transmitter hosts the API): read the
//! transmitter's `/.well-known/ssf-configuration` (through the key set's discovery document),
//! obtain a management bearer (static secret or OAuth client credentials; a token the transmitter
//! refuses with 401 is dropped and fetched again, once per call), create or reuse our stream,
//! trigger verification with a random `state` (kept in the store), read the status, delete on
//! request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::events::StreamStatus;
use super::events::StreamUpdate;
use super::transmitter::{PollTarget, TransmitterRt, STATE_TTL_SECS};
use crate::config::Delivery;
use crate::fetch::{FetchError, Fetched, Fetcher};
use crate::store::keys::normalize_iss;
use crate::store::{SignalStore, StoreError};

/// RFC 8935 push delivery method URI.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery method URI.
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";

const TIMEOUT: Duration = Duration::from_secs(15);
/// How often the manager re-reads the stream status.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the transmitter has no stream configuration")]
    NotConfigured,
    #[error("the SSF configuration was not loaded yet")]
    NoDiscovery,
    #[error("the SSF configuration is invalid: {0}")]
    BadDiscovery(String),
    #[error("the SSF configuration names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { found: String, expected: String },
    #[error("the SSF configuration has no {0}")]
    NoEndpoint(&'static str),
    #[error("no management credentials: set stream.bearer or token_endpoint with client_id and client_secret")]
    NoCredentials,
    #[error("the token endpoint refused client credentials: HTTP {0}")]
    TokenRefused(u16),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{endpoint} answered HTTP {status}")]
    Status { endpoint: &'static str, status: u16 },
    #[error("{endpoint} returned an invalid document: {reason}")]
    BadResponse {
        endpoint: &'static str,
        reason: String,
    },
    #[error("the stream names issuer {found:?}, not the configured transmitter")]
    StreamIssuerMismatch { found: String },
    #[error("invalid endpoint URL {0:?}")]
    BadUrl(String),
    #[error("the verification state could not be stored: {0}")]
    Store(#[from] StoreError),
}

/// The members of `/.well-known/ssf-configuration` we use (SSF §7.1).
#[derive(Debug, Clone, Deserialize)]
pub struct SsfConfiguration {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub delivery_methods_supported: Vec<String>,
    pub configuration_endpoint: Option<String>,
    pub status_endpoint: Option<String>,
    pub add_subject_endpoint: Option<String>,
    pub remove_subject_endpoint: Option<String>,
    pub verification_endpoint: Option<String>,
    pub spec_version: Option<String>,
}

/// A stream as the transmitter describes it (SSF §8.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream_id: String,
    pub iss: String,
    pub aud: Vec<String>,
    pub events_delivered: Vec<String>,
    pub delivery_method: Option<String>,
    /// Push: our endpoint; poll: the transmitter's poll URL.
    pub endpoint_url: Option<String>,
}

fn parse_stream(
    v: &Value,
    expected_iss: &str,
    endpoint: &'static str,
) -> Result<StreamInfo, StreamError> {
    let bad = |reason: &str| StreamError::BadResponse {
        endpoint,
        reason: reason.to_string(),
    };
    let stream_id = v
        .get("stream_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no stream_id"))?
        .to_string();
    let iss = v
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if normalize_iss(&iss) != normalize_iss(expected_iss) {
        return Err(StreamError::StreamIssuerMismatch { found: iss });
    }
    let strings = |name: &str| -> Vec<String> {
        match v.get(name) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    };
    let delivery = v.get("delivery");
    Ok(StreamInfo {
        stream_id,
        iss,
        aud: strings("aud"),
        events_delivered: strings("events_delivered"),
        delivery_method: delivery
            .and_then(|d| d.get("method"))
            .and_then(Value::as_str)
            .map(str::to_string),
        endpoint_url: delivery
            .and_then(|d| d.get("endpoint_url"))
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn with_stream_id(endpoint: &str, stream_id: &str) -> Result<String, StreamError> {
    let mut u = url::Url::parse(endpoint).map_err(|_| StreamError::BadUrl(endpoint.to_string()))?;
    u.query_pairs_mut().append_pair("stream_id", stream_id);
    Ok(u.to_string())
}

/// Stream management for one transmitter. Cheap to create: the OAuth token is cached in the
/// transmitter's runtime (shared with the poller), the verification states in the store.
pub struct StreamClient {
    rt: Arc<TransmitterRt>,
    store: Arc<SignalStore>,
    fetcher: Fetcher,
}

impl StreamClient {
    pub fn new(rt: Arc<TransmitterRt>, store: Arc<SignalStore>, fetcher: Fetcher) -> StreamClient {
        StreamClient { rt, store, fetcher }
    }

    /// The transmitter refused `used` with 401 (expired or revoked before its `expires_in`).
    /// With client credentials: drops the cached token if it is still `used` (counted in
    /// `cae_management_token_refetches_total`), so that the next [`authorization`] fetches a
    /// new one; returns whether a retry can present another token (false for a static bearer).
    ///
    /// [`authorization`]: StreamClient::authorization
    pub async fn refused(&self, used: &str) -> bool {
        let cfg = self.rt.cfg();
        let Some(s) = cfg.stream.as_ref() else {
            return false;
        };
        if s.bearer.is_some() || s.token_endpoint.is_none() {
            return false;
        }
        let mut cached = self.rt.mgmt_token.lock().await;
        if cached
            .as_ref()
            .is_none_or(|(t, _)| format!("Bearer {t}") == used)
        {
            *cached = None;
            self.rt.count_token_refetch();
            tracing::info!(target: "cae_proxy::signals", transmitter = %cfg.name, "the transmitter refused the management token (401); fetching a new one");
        }
        true
    }

    /// Sends a request with the management `Authorization`; on 401, once, drops the token and
    /// sends it again with a new one (`refused`).
    pub async fn send_authorized(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Fetched, StreamError> {
        let mut retried = false;
        loop {
            let auth = self.authorization().await?;
            let mut h: Vec<(&str, String)> = headers.to_vec();
            h.push(("authorization", auth.clone()));
            let r = self
                .fetcher
                .request(method.clone(), url, &h, body.clone(), timeout)
                .await?;
            if r.status == http::StatusCode::UNAUTHORIZED && !retried && self.refused(&auth).await {
                retried = true;
                continue;
            }
            return Ok(r);
        }
    }

    /// The SSF configuration from the key set's discovery document; its `issuer` must be ours.
    pub fn configuration(&self) -> Result<SsfConfiguration, StreamError> {
        let keys = self.rt.keys.keys();
        let doc = keys.discovery.as_ref().ok_or(StreamError::NoDiscovery)?;
        let c: SsfConfiguration = serde_json::from_value(doc.clone())
            .map_err(|e| StreamError::BadDiscovery(e.to_string()))?;
        let expected = self.rt.cfg().issuer.clone();
        if normalize_iss(&c.issuer) != normalize_iss(&expected) {
            return Err(StreamError::IssuerMismatch {
                found: c.issuer,
                expected,
            });
        }
        Ok(c)
    }

    /// `Authorization` value for management calls: the static bearer, else an OAuth
    /// client-credentials token (client_secret_basic), cached until shortly before it expires.
    pub async fn authorization(&self) -> Result<String, StreamError> {
        let cfg = self.rt.cfg();
        let s = cfg.stream.as_ref().ok_or(StreamError::NotConfigured)?;
        if let Some(b) = &s.bearer {
            return Ok(format!("Bearer {}", b.expose()));
        }
        let (Some(endpoint), Some(id), Some(secret)) =
            (&s.token_endpoint, &s.client_id, &s.client_secret)
        else {
            return Err(StreamError::NoCredentials);
        };
        let mut cached = self.rt.mgmt_token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(format!("Bearer {t}"));
            }
        }
        use base64::Engine;
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(id),
            enc(secret.expose())
        ));
        let form = {
            let mut f = url::form_urlencoded::Serializer::new(String::new());
            f.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &s.scope {
                f.append_pair("scope", scope);
            }
            f.finish()
        };
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept", "application/json".to_string()),
            ("authorization", format!("Basic {basic}")),
        ];
        let r = self
            .fetcher
            .request(Method::POST, endpoint, &headers, Bytes::from(form), TIMEOUT)
            .await?;
        if !r.status.is_success() {
            return Err(StreamError::TokenRefused(r.status.as_u16()));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            expires_in: Option<u64>,
        }
        let t: TokenResponse =
            serde_json::from_slice(&r.body).map_err(|e| StreamError::BadResponse {
                endpoint: "token_endpoint",
                reason: e.to_string(),
            })?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(300).saturating_sub(30).max(1));
        *cached = Some((t.access_token.clone(), Instant::now() + life));
        Ok(format!("Bearer {}", t.access_token))
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        endpoint: &'static str,
    ) -> Result<(u16, Value), StreamError> {
        let mut headers = vec![("accept", "application/json".to_string())];
        let bytes = match body {
            Some(b) => {
                headers.push(("content-type", "application/json".to_string()));
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let r = self
            .send_authorized(method, url, &headers, bytes, TIMEOUT)
            .await?;
        if !r.status.is_success() {
            return Err(StreamError::Status {
                endpoint,
                status: r.status.as_u16(),
            });
        }
        let v = if r.body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).map_err(|e| StreamError::BadResponse {
                endpoint,
                reason: e.to_string(),
            })?
        };
        Ok((r.status.as_u16(), v))
    }

    fn configuration_endpoint(&self) -> Result<String, StreamError> {
        self.configuration()?
            .configuration_endpoint
            .ok_or(StreamError::NoEndpoint("configuration_endpoint"))
    }

    fn delivery(&self) -> Result<(Delivery, Value), StreamError> {
        let cfg = self.rt.cfg();
        let s = cfg.stream.as_ref().ok_or(StreamError::NotConfigured)?;
        let d = match s.delivery {
            Delivery::Push => {
                let mut d = json!({"method": PUSH_METHOD});
                if let Some(u) = &s.endpoint_url {
                    d["endpoint_url"] = json!(u);
                }
                if let Some(a) = cfg.push.as_ref().and_then(|p| p.authorization.as_ref()) {
                    d["authorization_header"] = json!(a.expose());
                }
                d
            }
            Delivery::Poll => json!({"method": POLL_METHOD}),
        };
        Ok((s.delivery, d))
    }

    fn matches_ours(&self, info: &StreamInfo) -> bool {
        let cfg = self.rt.cfg();
        let Some(s) = cfg.stream.as_ref() else {
            return false;
        };
        match s.delivery {
            Delivery::Push => {
                info.delivery_method.as_deref() == Some(PUSH_METHOD)
                    && (s.endpoint_url.is_none() || info.endpoint_url == s.endpoint_url)
            }
            Delivery::Poll => info.delivery_method.as_deref() == Some(POLL_METHOD),
        }
    }

    /// Creates a stream (`POST configuration_endpoint` → 201).
    pub async fn create_stream(&self) -> Result<StreamInfo, StreamError> {
        let cfg = self.rt.cfg();
        let s = cfg.stream.as_ref().ok_or(StreamError::NotConfigured)?;
        let (_, delivery) = self.delivery()?;
        let body = json!({"delivery": delivery, "events_requested": s.events_requested, "description": format!("cae-proxy receiver {}", cfg.name)});
        let (_, v) = self
            .call(
                Method::POST,
                &self.configuration_endpoint()?,
                Some(body),
                "configuration_endpoint",
            )
            .await?;
        let info = parse_stream(&v, &cfg.issuer, "configuration_endpoint")?;
        tracing::info!(target: "cae_proxy::signals", transmitter = %cfg.name, stream_id = %info.stream_id, events = ?info.events_delivered, "created SSF stream");
        Ok(info)
    }

    /// Reads one stream (`GET configuration_endpoint?stream_id=`).
    pub async fn read_stream(&self, stream_id: &str) -> Result<StreamInfo, StreamError> {
        let url = with_stream_id(&self.configuration_endpoint()?, stream_id)?;
        let (_, v) = self
            .call(Method::GET, &url, None, "configuration_endpoint")
            .await?;
        // Some transmitters answer a one-element list.
        let v = match v {
            Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
            v => v,
        };
        parse_stream(&v, &self.rt.cfg().issuer, "configuration_endpoint")
    }

    /// Our existing streams (`GET configuration_endpoint`: one object or a list).
    pub async fn list_streams(&self) -> Result<Vec<StreamInfo>, StreamError> {
        let (_, v) = self
            .call(
                Method::GET,
                &self.configuration_endpoint()?,
                None,
                "configuration_endpoint",
            )
            .await?;
        let iss = self.rt.cfg().issuer.clone();
        let items = match v {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            v => vec![v],
        };
        items
            .iter()
            .map(|i| parse_stream(i, &iss, "configuration_endpoint"))
            .collect()
    }

    /// Reuses the known stream, else one of ours with the same delivery, else creates one.
    /// Records the stream id in the runtime and, for poll delivery, the poll target.
    pub async fn ensure_stream(&self) -> Result<StreamInfo, StreamError> {
        let known = self.rt.stream_state().stream_id;
        let mut found = None;
        if let Some(id) = known {
            match self.read_stream(&id).await {
                Ok(i) => found = Some(i),
                Err(StreamError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if found.is_none() {
            found = self
                .list_streams()
                .await?
                .into_iter()
                .find(|i| self.matches_ours(i));
        }
        let info = match found {
            Some(i) => i,
            None => self.create_stream().await?,
        };
        self.rt.set_stream_id(Some(info.stream_id.clone()));
        self.refresh_poll_target(&info).await?;
        Ok(info)
    }

    /// For poll delivery: tells the poller where to poll (with the management token).
    pub async fn refresh_poll_target(&self, info: &StreamInfo) -> Result<(), StreamError> {
        let cfg = self.rt.cfg();
        if cfg.stream.as_ref().map(|s| s.delivery) != Some(Delivery::Poll) {
            return Ok(());
        }
        let endpoint = info.endpoint_url.clone().ok_or(StreamError::BadResponse {
            endpoint: "configuration_endpoint",
            reason: "poll stream without endpoint_url".into(),
        })?;
        self.rt.set_poll_target(Some(PollTarget { endpoint }));
        Ok(())
    }

    /// Asks for a verification event (`POST verification_endpoint` → 204); returns the `state`,
    /// recorded as outstanding in the store (durably, for every replica) before the request is
    /// sent: the verification SET may arrive after a restart or at another replica.
    pub async fn request_verification(
        &self,
        stream_id: &str,
        now: i64,
    ) -> Result<String, StreamError> {
        let url = self
            .configuration()?
            .verification_endpoint
            .ok_or(StreamError::NoEndpoint("verification_endpoint"))?;
        let state = TransmitterRt::random_state();
        self.store
            .register_state(&self.rt.state_scope(), &state, now + STATE_TTL_SECS)
            .await?;
        self.call(
            Method::POST,
            &url,
            Some(json!({"stream_id": stream_id, "state": state})),
            "verification_endpoint",
        )
        .await?;
        Ok(state)
    }

    /// Reads the stream status (`GET status_endpoint?stream_id=`) and records it in the runtime.
    pub async fn status(&self, stream_id: &str, now: i64) -> Result<StreamUpdate, StreamError> {
        let url = self
            .configuration()?
            .status_endpoint
            .ok_or(StreamError::NoEndpoint("status_endpoint"))?;
        let (_, v) = self
            .call(
                Method::GET,
                &with_stream_id(&url, stream_id)?,
                None,
                "status_endpoint",
            )
            .await?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .ok_or(StreamError::BadResponse {
                endpoint: "status_endpoint",
                reason: "no status".into(),
            })?;
        let u = StreamUpdate {
            status: StreamStatus::parse(status),
            reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
            at: now,
        };
        self.rt.update_stream_status(&u);
        Ok(u)
    }

    /// Deletes the stream (`DELETE configuration_endpoint?stream_id=` → 204).
    pub async fn delete_stream(&self, stream_id: &str) -> Result<(), StreamError> {
        let url = with_stream_id(&self.configuration_endpoint()?, stream_id)?;
        self.call(Method::DELETE, &url, None, "configuration_endpoint")
            .await?;
        if self.rt.stream_state().stream_id.as_deref() == Some(stream_id) {
            self.rt.set_stream_id(None);
            self.rt.set_poll_target(None);
        }
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id, "deleted SSF stream");
        Ok(())
    }
}

/// Runs until shutdown: waits for the SSF configuration, ensures the stream (with backoff),
/// asks for verification when `verify` is set, then re-reads the status every
/// [`STATUS_INTERVAL`] (refreshing the poll target's bearer).
pub async fn run_stream_manager(
    rt: Arc<TransmitterRt>,
    store: Arc<SignalStore>,
    fetcher: Fetcher,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = StreamClient::new(rt.clone(), store, fetcher);
    let name = rt.name();
    let mut backoff = Duration::from_secs(1);
    let mut verified_requested = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let step = async {
            let info = client.ensure_stream().await?;
            if !verified_requested && rt.cfg().stream.as_ref().is_some_and(|s| s.verify) {
                client
                    .request_verification(&info.stream_id, crate::store::now_secs())
                    .await?;
                verified_requested = true;
            }
            client
                .status(&info.stream_id, crate::store::now_secs())
                .await
        };
        let wait = tokio::select! {
            r = step => match r {
                Ok(u) => {
                    backoff = Duration::from_secs(1);
                    rt.set_stream_error(None);
                    if matches!(u.status, StreamStatus::Paused | StreamStatus::Disabled) {
                        tracing::warn!(target: "cae_proxy::signals", transmitter = %name, status = u.status.as_str(), "SSF stream is not enabled");
                    }
                    STATUS_INTERVAL
                }
                Err(e) => {
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    rt.set_stream_error(Some(e.to_string()));
                    tracing::warn!(target: "cae_proxy::signals", transmitter = %name, error = %e, retry_in = ?w, "SSF stream management failed");
                    w
                }
            },
            _ = shutdown.changed() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::keys::KeySet;
    use crate::config::{KeySource, Secret, StreamMgmt};
    use crate::dev::keys::set_kit as kit;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use std::sync::Mutex;

    /// (method, path, authorization, body) of each request the scripted transmitter saw.
    type Logged = (String, String, Option<String>, String);

    #[derive(Default)]
    struct Tx {
        base: Mutex<String>,
        stream_iss: Mutex<Option<String>>,
        log: Mutex<Vec<Logged>>,
        created: Mutex<bool>,
    }

    async fn serve(tx: Arc<Tx>, jwks: Value) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *tx.base.lock().unwrap() = base.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let jwks = jwks.clone();
                        async move {
                            let method = req.method().to_string();
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = String::from_utf8(
                                req.into_body().collect().await.unwrap().to_bytes().to_vec(),
                            )
                            .unwrap();
                            tx.log
                                .lock()
                                .unwrap()
                                .push((method.clone(), pq.clone(), auth, body));
                            let base = tx.base.lock().unwrap().clone();
                            let iss = tx
                                .stream_iss
                                .lock()
                                .unwrap()
                                .clone()
                                .unwrap_or(base.clone());
                            let stream = json!({"stream_id":"s1","iss": iss,"aud":"https://receiver.example.com","events_delivered":["https://schemas.openid.net/secevent/caep/event-type/session-revoked"],
                                "delivery":{"method": POLL_METHOD,"endpoint_url": format!("{base}/poll")}});
                            let (status, body) = match (method.as_str(), pq.as_str()) {
                                ("GET", "/.well-known/ssf-configuration") => (200, json!({"issuer": base, "jwks_uri": format!("{base}/jwks"),
                                    "delivery_methods_supported":[PUSH_METHOD, POLL_METHOD], "configuration_endpoint": format!("{base}/streams"),
                                    "status_endpoint": format!("{base}/status"), "verification_endpoint": format!("{base}/verify"), "spec_version":"1_0"}).to_string()),
                                ("GET", "/jwks") => (200, jwks.to_string()),
                                ("POST", "/token") => (200, json!({"access_token":"mgmt-token","token_type":"Bearer","expires_in":3600}).to_string()),
                                ("GET", "/streams") => (200, if *tx.created.lock().unwrap() { json!([stream]) } else { json!([]) }.to_string()),
                                ("POST", "/streams") => {
                                    *tx.created.lock().unwrap() = true;
                                    (201, stream.to_string())
                                }
                                ("GET", "/streams?stream_id=s1") => (200, stream.to_string()),
                                ("DELETE", "/streams?stream_id=s1") => (204, String::new()),
                                ("POST", "/verify") => (204, String::new()),
                                ("GET", "/status?stream_id=s1") => (200, json!({"status":"paused","reason":"maintenance"}).to_string()),
                                _ => (404, String::new()),
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        base
    }

    fn memory_store() -> Arc<SignalStore> {
        Arc::new(
            SignalStore::open(Arc::new(crate::store::MemoryStore::default()), 100_000, 0).unwrap(),
        )
    }

    async fn setup(tx: Arc<Tx>) -> (Arc<TransmitterRt>, String) {
        let dir = tempfile::tempdir().unwrap();
        let s = kit::rsa();
        let base = serve(tx, kit::jwks(&s)).await;
        let mut cfg = crate::signals::push::tests::transmitter(dir.path(), &s);
        cfg.issuer = base.clone();
        cfg.keys = KeySource::Discovery(format!("{base}/.well-known/ssf-configuration"));
        cfg.push = None;
        cfg.stream = Some(StreamMgmt {
            delivery: Delivery::Poll,
            endpoint_url: None,
            events_requested: vec![
                "https://schemas.openid.net/secevent/caep/event-type/session-revoked".into(),
            ],
            token_endpoint: Some(format!("{base}/token")),
            client_id: Some("cae proxy".into()),
            client_secret: Some(Secret::from_value("s3cret")),
            scope: Some("ssf.manage ssf.read".into()),
            bearer: None,
            verify: true,
        });
        let keys = Arc::new(KeySet::new(
            &cfg.name,
            cfg.keys.clone(),
            &cfg.issuer,
            cfg.key_policy.clone(),
            2048,
            Fetcher::new(),
        ));
        keys.refresh().await.unwrap();
        (Arc::new(TransmitterRt::new(cfg, keys, None)), base)
    }

    #[tokio::test]
    async fn creates_verifies_reads_status_and_deletes() {
        let tx = Arc::new(Tx::default());
        let (rt, base) = setup(tx.clone()).await;
        let store = memory_store();
        let c = StreamClient::new(rt.clone(), store.clone(), Fetcher::new());
        assert_eq!(c.configuration().unwrap().issuer, base);
        let info = c.ensure_stream().await.unwrap();
        assert_eq!(info.stream_id, "s1");
        assert_eq!(rt.stream_state().stream_id.as_deref(), Some("s1"));
        let target = rt.poll_target().unwrap();
        assert_eq!(target.endpoint, format!("{base}/poll"));
        assert_eq!(c.authorization().await.unwrap(), "Bearer mgmt-token");
        // Reused, not created again.
        assert_eq!(c.ensure_stream().await.unwrap().stream_id, "s1");
        let state = c.request_verification("s1", 100).await.unwrap();
        assert!(store
            .state_outstanding(&rt.state_scope(), &state, 100)
            .await
            .unwrap());
        assert!(!store
            .state_outstanding(&rt.state_scope(), "other", 100)
            .await
            .unwrap());
        let u = c.status("s1", 100).await.unwrap();
        assert_eq!(u.status, StreamStatus::Paused);
        assert!(!rt.stream_active());
        c.delete_stream("s1").await.unwrap();
        assert_eq!(rt.stream_state().stream_id, None);

        let log = tx.log.lock().unwrap().clone();
        let token = log.iter().find(|l| l.1 == "/token").unwrap();
        // client_secret_basic with form-encoded id (space → +).
        assert_eq!(
            token.2.as_deref(),
            Some(
                format!(
                    "Basic {}",
                    base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        "cae+proxy:s3cret"
                    )
                )
                .as_str()
            )
        );
        assert_eq!(
            token.3,
            "grant_type=client_credentials&scope=ssf.manage+ssf.read"
        );
        assert_eq!(
            log.iter()
                .filter(|l| l.0 == "POST" && l.1 == "/token")
                .count(),
            1,
            "token cached"
        );
        let create = log
            .iter()
            .find(|l| l.0 == "POST" && l.1 == "/streams")
            .unwrap();
        let body: Value = serde_json::from_str(&create.3).unwrap();
        assert_eq!(body["delivery"], json!({"method": POLL_METHOD}));
        assert_eq!(
            body["events_requested"],
            json!(["https://schemas.openid.net/secevent/caep/event-type/session-revoked"])
        );
        assert_eq!(create.2.as_deref(), Some("Bearer mgmt-token"));
        assert_eq!(
            log.iter()
                .filter(|l| l.0 == "POST" && l.1 == "/streams")
                .count(),
            1
        );
        let verify = log.iter().find(|l| l.1 == "/verify").unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&verify.3).unwrap(),
            json!({"stream_id":"s1","state": state})
        );
    }

    #[tokio::test]
    async fn refuses_a_stream_of_another_issuer() {
        let tx = Arc::new(Tx::default());
        *tx.stream_iss.lock().unwrap() = Some("https://evil.example.com".into());
        let (rt, _) = setup(tx).await;
        let c = StreamClient::new(rt.clone(), memory_store(), Fetcher::new());
        let e = c.create_stream().await.unwrap_err();
        assert!(matches!(e, StreamError::StreamIssuerMismatch { .. }), "{e}");
        assert_eq!(rt.stream_state().stream_id, None);
    }

    #[tokio::test]
    async fn manager_runs_and_stops_on_shutdown() {
        let tx = Arc::new(Tx::default());
        let (rt, _) = setup(tx.clone()).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run_stream_manager(
            rt.clone(),
            memory_store(),
            Fetcher::new(),
            rx,
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while rt.stream_state().status.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rt.stream_state().status, Some(StreamStatus::Paused));
        assert!(tx.log.lock().unwrap().iter().any(|l| l.1 == "/verify"));
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }
}
