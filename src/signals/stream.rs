//! SSF stream management client (SSF §7–§8; we are the receiver, the transmitter hosts the API):
//! read the transmitter's `/.well-known/ssf-configuration` (through the key set's discovery
//! document), obtain a management bearer (static secret or OAuth client credentials; a token the
//! transmitter refuses with 401 is dropped and fetched again, once per call), create or reuse our
//! stream, read, update (`PATCH`) and replace (`PUT`) its configuration, delete it, read and set
//! its status, add and remove subjects, and trigger verification with a random `state` (kept in
//! the store). What is done with these calls over time is in `lifecycle.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::events::StreamStatus;
use super::events::StreamUpdate;
use super::transmitter::{PollTarget, TransmitterRt, STATE_TTL_SECS};
use crate::config::Delivery;
use crate::fetch::{FetchError, Fetched, Fetcher};
use crate::store::keys::same_issuer;
use crate::store::{now_secs, SignalStore, StoreError};

pub use super::vocabulary::{POLL_METHOD, PUSH_METHOD};

const TIMEOUT: Duration = Duration::from_secs(15);
/// Fleet mode: how long a replica's claim to create a stream lasts (a replica that dies before
/// creating holds the others back this long).
const CREATE_CLAIM: Duration = Duration::from_secs(10);
/// How often a replica waiting for another's stream lists the streams again.
const CREATE_RECHECK: Duration = Duration::from_millis(200);

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
    #[error("there is no stream yet{}", .0.as_ref().map(|e| format!(" (last attempt: {e})")).unwrap_or_default())]
    NoStream(Option<String>),
    #[error("the stream was deleted by an operator (re-create it with POST /admin/streams/NAME/recreate)")]
    DeletedByOperator,
    #[error("invalid endpoint URL {0:?}")]
    BadUrl(String),
    #[error("the verification state could not be stored: {0}")]
    Store(#[from] StoreError),
    #[error("the fleet-wide claim to create the stream could not be taken: {0}")]
    Claim(#[source] StoreError),
    #[error("another replica claimed the creation of the stream and it has not appeared yet")]
    CreationClaimed,
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
    /// `None` when the transmitter does not echo what was requested.
    pub events_requested: Option<Vec<String>>,
    pub description: Option<String>,
    pub delivery_method: Option<String>,
    /// Push: our endpoint; poll: the transmitter's poll URL.
    pub endpoint_url: Option<String>,
    /// Push: the `Authorization` value it sends us, when the transmitter echoes it.
    pub authorization_header: Option<String>,
    /// Seconds the transmitter wants between verification requests (SSF §8.1.1).
    pub min_verification_interval: Option<u64>,
    /// The configuration as received.
    pub raw: Value,
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
    if !same_issuer(&iss, expected_iss) {
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
    let delivery_str = |name: &str| {
        delivery
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(StreamInfo {
        stream_id,
        iss,
        aud: strings("aud"),
        events_delivered: strings("events_delivered"),
        events_requested: v
            .get("events_requested")
            .map(|_| strings("events_requested")),
        description: v
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        delivery_method: delivery_str("method"),
        endpoint_url: delivery_str("endpoint_url"),
        authorization_header: delivery_str("authorization_header"),
        min_verification_interval: v.get("min_verification_interval").and_then(Value::as_u64),
        raw: v.clone(),
    })
}

/// SHA-256 of an `authorization_header` value (remembered instead of the value).
pub fn authorization_digest(value: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The stream configuration with `delivery.authorization_header` (our push secret) replaced by
/// `"[redacted]"`, to show it.
pub fn redacted(config: &Value) -> Value {
    let mut v = config.clone();
    if let Some(a) = v.pointer_mut("/delivery/authorization_header") {
        *a = json!("[redacted]");
    }
    v
}

/// A member of the stream configuration the receiver supplies and `[transmitter.stream]` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Delivery,
    EventsRequested,
    Description,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Delivery => "delivery",
            Field::EventsRequested => "events_requested",
            Field::Description => "description",
        }
    }
}

/// How a configuration change was sent (SSF §8.1.1.3 update, §8.1.1.4 replace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Patch,
    Put,
}

impl Write {
    pub fn method(self) -> &'static str {
        match self {
            Write::Patch => "PATCH",
            Write::Put => "PUT",
        }
    }
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
        if !same_issuer(&c.issuer, &expected) {
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
        let (headers, bytes) = crate::fetch::json_request(body);
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

    /// The `authorization_header` pushes must carry: `[transmitter.push] authorization`.
    fn push_authorization(&self) -> Option<String> {
        let cfg = self.rt.cfg();
        cfg.push
            .as_ref()
            .and_then(|p| p.authorization.as_ref())
            .map(|a| a.expose().to_string())
    }

    fn delivery(&self) -> Result<Value, StreamError> {
        let cfg = self.rt.cfg();
        let s = cfg.stream.as_ref().ok_or(StreamError::NotConfigured)?;
        Ok(match s.delivery {
            Delivery::Push => {
                let mut d = json!({"method": PUSH_METHOD});
                if let Some(u) = &s.endpoint_url {
                    d["endpoint_url"] = json!(u);
                }
                if let Some(a) = self.push_authorization() {
                    d["authorization_header"] = json!(a);
                }
                d
            }
            Delivery::Poll => json!({"method": POLL_METHOD}),
        })
    }

    /// The receiver-supplied configuration `[transmitter.stream]` asks for (SSF §8.1.1):
    /// `delivery`, `events_requested`, `description`.
    pub fn desired(&self) -> Result<Map<String, Value>, StreamError> {
        let cfg = self.rt.cfg();
        let s = cfg.stream.as_ref().ok_or(StreamError::NotConfigured)?;
        let mut m = Map::new();
        m.insert("delivery".into(), self.delivery()?);
        m.insert("events_requested".into(), json!(s.events_requested));
        m.insert("description".into(), json!(s.description));
        Ok(m)
    }

    /// The members of the stream's configuration that differ from `[transmitter.stream]`.
    /// Delivery: the method, our push `endpoint_url` (when configured) and the
    /// `authorization_header` (compared with what the transmitter echoes, else with what this
    /// process sent last; not compared when neither is known). Events: `events_requested`, or
    /// `events_delivered` when the transmitter does not echo the request, as sets.
    pub fn differences(&self, info: &StreamInfo) -> Vec<Field> {
        let cfg = self.rt.cfg();
        let Some(s) = cfg.stream.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let method = match s.delivery {
            Delivery::Push => PUSH_METHOD,
            Delivery::Poll => POLL_METHOD,
        };
        let mut delivery = info.delivery_method.as_deref() != Some(method);
        if s.delivery == Delivery::Push {
            if s.endpoint_url.is_some() && info.endpoint_url != s.endpoint_url {
                delivery = true;
            }
            let want = self.push_authorization();
            let sent = self.rt.stream_state().authorization_sent;
            match (&info.authorization_header, sent) {
                (Some(have), _) => delivery |= Some(have) != want.as_ref(),
                (None, Some(d)) => delivery |= want.map(|w| authorization_digest(&w)) != Some(d),
                (None, None) => {}
            }
        }
        if delivery {
            out.push(Field::Delivery);
        }
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        let have = info
            .events_requested
            .as_deref()
            .unwrap_or(&info.events_delivered);
        if set(have) != set(&s.events_requested) {
            out.push(Field::EventsRequested);
        }
        if info.description.as_deref() != Some(s.description.as_str()) {
            out.push(Field::Description);
        }
        out
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

    /// Remembers the `authorization_header` a configuration we sent carried.
    fn sent(&self, body: &Map<String, Value>) {
        if let Some(d) = body.get("delivery") {
            let a = d.get("authorization_header").and_then(Value::as_str);
            self.rt.set_authorization_sent(a.map(authorization_digest));
        }
    }

    /// Creates a stream (`POST configuration_endpoint` → 201, SSF §8.1.1.1); its `iss` must be
    /// the transmitter's.
    pub async fn create_stream(&self) -> Result<StreamInfo, StreamError> {
        let body = self.desired()?;
        let (_, v) = self
            .call(
                Method::POST,
                &self.configuration_endpoint()?,
                Some(Value::Object(body.clone())),
                "configuration_endpoint",
            )
            .await?;
        let info = parse_stream(&v, &self.rt.cfg().issuer, "configuration_endpoint")?;
        self.rt.set_stream_id(Some(info.stream_id.clone()));
        self.sent(&body);
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %info.stream_id, events = ?info.events_delivered, "created SSF stream");
        Ok(info)
    }

    /// Reads one stream (`GET configuration_endpoint?stream_id=`, SSF §8.1.1.2).
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

    /// Our existing streams (`GET configuration_endpoint`: one object or a list). A stream of
    /// another issuer (a transmitter serving several) is skipped with a warning.
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
        let mut out = Vec::new();
        for i in &items {
            match parse_stream(i, &iss, "configuration_endpoint") {
                Ok(info) => out.push(info),
                Err(StreamError::StreamIssuerMismatch { found }) => {
                    let id = i.get("stream_id").and_then(Value::as_str).unwrap_or("-");
                    tracing::warn!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = id, iss = %found, "the transmitter lists a stream of another issuer; skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reuses the known stream, else one of ours with the same delivery, else creates one.
    /// Records the stream id in the runtime and, for poll delivery, the poll target. Returns
    /// the stream and whether it was created now.
    pub async fn ensure_stream(&self) -> Result<(StreamInfo, bool), StreamError> {
        let known = self.rt.stream_state().stream_id;
        let mut found = None;
        if let Some(id) = known {
            match self.read_stream(&id).await {
                Ok(i) => found = Some(i),
                Err(StreamError::Status { status: 404, .. }) => {
                    tracing::warn!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id = %id, "the stream is gone at the transmitter; looking for another one of ours");
                }
                Err(e) => return Err(e),
            }
        }
        let (info, created) = match found {
            Some(i) => (i, false),
            None => self.find_or_create().await?,
        };
        self.rt.set_stream_id(Some(info.stream_id.clone()));
        self.refresh_poll_target(&info).await?;
        Ok((info, created))
    }

    /// Our stream as the transmitter lists it, else a new one. In a fleet only the replica that
    /// claims the creation creates it; the others list again until it appears (or the claim of
    /// a replica that died before creating expires), so replicas starting together share one
    /// stream.
    async fn find_or_create(&self) -> Result<(StreamInfo, bool), StreamError> {
        let claim = format!("stream-create:{}", self.rt.name());
        let deadline = tokio::time::Instant::now() + CREATE_CLAIM + CREATE_CLAIM;
        loop {
            if let Some(i) = self
                .list_streams()
                .await?
                .into_iter()
                .find(|i| self.matches_ours(i))
            {
                return Ok((i, false));
            }
            if self
                .store
                .claim(&claim, CREATE_CLAIM)
                .await
                .map_err(StreamError::Claim)?
            {
                return Ok((self.create_stream().await?, true));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StreamError::CreationClaimed);
            }
            tokio::time::sleep(CREATE_RECHECK).await;
        }
    }

    /// Sends the members `fields` of the desired configuration as an update (`PATCH`, SSF
    /// §8.1.1.3); a transmitter without `PATCH` (`405`) gets the whole desired configuration as
    /// a replacement (`PUT`, §8.1.1.4) instead. Returns the stream as the transmitter answered
    /// it and how it was sent.
    pub async fn update_stream(
        &self,
        stream_id: &str,
        fields: &[Field],
    ) -> Result<(StreamInfo, Write), StreamError> {
        let desired = self.desired()?;
        let mut body = Map::new();
        body.insert("stream_id".into(), json!(stream_id));
        for f in fields {
            if let Some(v) = desired.get(f.name()) {
                body.insert(f.name().into(), v.clone());
            }
        }
        let url = self.configuration_endpoint()?;
        match self
            .call(
                Method::PATCH,
                &url,
                Some(Value::Object(body.clone())),
                "configuration_endpoint",
            )
            .await
        {
            Ok((_, v)) => {
                self.sent(&body);
                let info = self.after_write(stream_id, v).await?;
                Ok((info, Write::Patch))
            }
            Err(StreamError::Status { status: 405, .. }) => {
                tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id, "the transmitter does not support PATCH (405); replacing the configuration with PUT");
                Ok((self.replace_stream(stream_id).await?, Write::Put))
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the stream's configuration with the desired one (`PUT`, SSF §8.1.1.4).
    pub async fn replace_stream(&self, stream_id: &str) -> Result<StreamInfo, StreamError> {
        let mut body = self.desired()?;
        body.insert("stream_id".into(), json!(stream_id));
        let (_, v) = self
            .call(
                Method::PUT,
                &self.configuration_endpoint()?,
                Some(Value::Object(body.clone())),
                "configuration_endpoint",
            )
            .await?;
        self.sent(&body);
        self.after_write(stream_id, v).await
    }

    /// The stream after an update or a replacement: the answer's configuration (read again
    /// when the transmitter answered without one), its poll target refreshed.
    async fn after_write(&self, stream_id: &str, v: Value) -> Result<StreamInfo, StreamError> {
        let info = if v.is_object() {
            parse_stream(&v, &self.rt.cfg().issuer, "configuration_endpoint")?
        } else {
            self.read_stream(stream_id).await?
        };
        self.refresh_poll_target(&info).await?;
        Ok(info)
    }

    /// For poll delivery: tells the poller where to poll (with the management token).
    pub async fn refresh_poll_target(&self, info: &StreamInfo) -> Result<(), StreamError> {
        let cfg = self.rt.cfg();
        if cfg.stream.as_ref().map(|s| s.delivery) != Some(Delivery::Poll) {
            self.rt.set_poll_target(None);
            return Ok(());
        }
        let endpoint = info.endpoint_url.clone().ok_or(StreamError::BadResponse {
            endpoint: "configuration_endpoint",
            reason: "poll stream without endpoint_url".into(),
        })?;
        let unchanged = self
            .rt
            .poll_target()
            .is_some_and(|t| t.endpoint == endpoint);
        if !unchanged {
            self.rt.set_poll_target(Some(PollTarget { endpoint }));
        }
        Ok(())
    }

    /// Asks for a verification event (`POST verification_endpoint` → 204, SSF §8.1.4.2);
    /// returns the `state`, recorded as outstanding in the store (durably, for every replica)
    /// before the request is sent: the verification SET may arrive after a restart or at
    /// another replica.
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

    fn status_endpoint(&self) -> Result<String, StreamError> {
        self.configuration()?
            .status_endpoint
            .ok_or(StreamError::NoEndpoint("status_endpoint"))
    }

    /// Reads the stream status (`GET status_endpoint?stream_id=`, SSF §8.1.2.1) and records it
    /// in the runtime, as of the second it was answered (status events carry seconds: one of the
    /// same second that arrives later wins).
    pub async fn status(&self, stream_id: &str) -> Result<StreamUpdate, StreamError> {
        let url = with_stream_id(&self.status_endpoint()?, stream_id)?;
        let (_, v) = self
            .call(Method::GET, &url, None, "status_endpoint")
            .await?;
        let u = parse_status(&v, answered_at())?;
        self.rt.update_stream_status(&u);
        Ok(u)
    }

    /// Sets the stream status (`POST status_endpoint`, SSF §8.1.2.2) and records what the
    /// transmitter answered. `Ok(None)`: the transmitter accepted the change for later (`202`).
    pub async fn set_status(
        &self,
        stream_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<Option<StreamUpdate>, StreamError> {
        let mut body = json!({"stream_id": stream_id, "status": status});
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        let (code, v) = self
            .call(
                Method::POST,
                &self.status_endpoint()?,
                Some(body),
                "status_endpoint",
            )
            .await?;
        if code == 202 {
            return Ok(None);
        }
        let now = answered_at();
        let u = match parse_status(&v, now) {
            Ok(u) => u,
            // A 200 without the status document: it is what we asked for.
            Err(_) => StreamUpdate {
                status: StreamStatus::parse(status),
                reason: reason.map(str::to_string),
                at_ms: now,
            },
        };
        self.rt.update_stream_status(&u);
        Ok(Some(u))
    }

    /// Adds a subject to the stream (`POST add_subject_endpoint`, SSF §8.1.3.2).
    pub async fn add_subject(
        &self,
        stream_id: &str,
        subject: &Value,
        verified: Option<bool>,
    ) -> Result<(), StreamError> {
        let url = self
            .configuration()?
            .add_subject_endpoint
            .ok_or(StreamError::NoEndpoint("add_subject_endpoint"))?;
        let mut body = json!({"stream_id": stream_id, "subject": subject});
        if let Some(v) = verified {
            body["verified"] = json!(v);
        }
        self.call(Method::POST, &url, Some(body), "add_subject_endpoint")
            .await?;
        Ok(())
    }

    /// Removes a subject from the stream (`POST remove_subject_endpoint` → 204, SSF §8.1.3.3):
    /// the transmitter stops sending its events to this stream.
    pub async fn remove_subject(
        &self,
        stream_id: &str,
        subject: &Value,
    ) -> Result<(), StreamError> {
        let url = self
            .configuration()?
            .remove_subject_endpoint
            .ok_or(StreamError::NoEndpoint("remove_subject_endpoint"))?;
        let body = json!({"stream_id": stream_id, "subject": subject});
        self.call(Method::POST, &url, Some(body), "remove_subject_endpoint")
            .await?;
        Ok(())
    }

    /// Deletes the stream (`DELETE configuration_endpoint?stream_id=` → 204, SSF §8.1.1.5);
    /// `Ok(false)`: it was gone already (404). Forgets it in the runtime.
    pub async fn delete_stream(&self, stream_id: &str) -> Result<bool, StreamError> {
        let url = with_stream_id(&self.configuration_endpoint()?, stream_id)?;
        let deleted = match self
            .call(Method::DELETE, &url, None, "configuration_endpoint")
            .await
        {
            Ok(_) => true,
            Err(StreamError::Status { status: 404, .. }) => false,
            Err(e) => return Err(e),
        };
        if self.rt.stream_state().stream_id.as_deref() == Some(stream_id) {
            self.rt.set_stream_id(None);
            self.rt.set_poll_target(None);
        }
        tracing::info!(target: "cae_proxy::signals", transmitter = %self.rt.name(), stream_id, deleted, "deleted SSF stream");
        Ok(deleted)
    }

    /// The stream this receiver would reuse: the known one, else one of ours in the
    /// transmitter's list (for a deletion after a restart); `None` when there is none.
    pub async fn find_ours(&self) -> Result<Option<String>, StreamError> {
        if let Some(id) = self.rt.stream_state().stream_id {
            return Ok(Some(id));
        }
        Ok(self
            .list_streams()
            .await?
            .into_iter()
            .find(|i| self.matches_ours(i))
            .map(|i| i.stream_id))
    }
}

/// The time a status answer counts as of: this second, in milliseconds.
fn answered_at() -> i64 {
    now_secs().saturating_mul(1000)
}

/// A status document (SSF §8.1.2.1), as of `now_ms`.
fn parse_status(v: &Value, now_ms: i64) -> Result<StreamUpdate, StreamError> {
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or(StreamError::BadResponse {
            endpoint: "status_endpoint",
            reason: "no status".into(),
        })?;
    Ok(StreamUpdate {
        status: StreamStatus::parse(status),
        reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
        at_ms: now_ms,
    })
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
            description: "cae-proxy receiver test".into(),
            verify_interval: None,
            verify_timeout: Duration::from_secs(30),
            ready_needs_verification: true,
            on_remove: crate::config::OnRemove::Delete,
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
        let (info, created) = c.ensure_stream().await.unwrap();
        assert!(created);
        assert_eq!(info.stream_id, "s1");
        assert_eq!(rt.stream_state().stream_id.as_deref(), Some("s1"));
        let target = rt.poll_target().unwrap();
        assert_eq!(target.endpoint, format!("{base}/poll"));
        assert_eq!(c.authorization().await.unwrap(), "Bearer mgmt-token");
        // Reused, not created again.
        let (again, created) = c.ensure_stream().await.unwrap();
        assert_eq!((again.stream_id.as_str(), created), ("s1", false));
        let state = c.request_verification("s1", 100).await.unwrap();
        assert!(store
            .state_outstanding(&rt.state_scope(), &state, 100)
            .await
            .unwrap());
        assert!(!store
            .state_outstanding(&rt.state_scope(), "other", 100)
            .await
            .unwrap());
        let u = c.status("s1").await.unwrap();
        assert_eq!(u.status, StreamStatus::Paused);
        assert!(!rt.stream_active());
        assert!(c.delete_stream("s1").await.unwrap());
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
        let task = tokio::spawn(crate::signals::lifecycle::run_stream_manager(
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
        // Then verification is asked for (the scripted transmitter never sends the event).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tx.log.lock().unwrap().iter().any(|l| l.1 == "/verify") && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tx.log.lock().unwrap().iter().any(|l| l.1 == "/verify"));
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();
    }
}
