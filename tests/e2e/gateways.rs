//! The real gateways in front of the echo upstream, each asking a recording auth service of this
//! test about every request: nginx `auth_request`, Envoy ext_authz (HTTP and gRPC), Caddy
//! `forward_auth`, Traefik `ForwardAuth`. Pins what each sends to the auth service and how it
//! relays allow, deny and "auth service down" (docs/deploy/gateways-wire.md), with the shipped
//! configurations of docs/deploy/ (tests/common/gateways.rs replaces their placeholders).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::gateways::{self, Gateway};
use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::dev::{full_body, read_body, DevBody, ServerHandle};
use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, HttpStatusCode,
    OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use envoy_types::pb::google::rpc;
use http::{HeaderMap, Method, Response, StatusCode};

const NGINX_CONF: &str = include_str!("../../docs/deploy/nginx-auth-request.conf");
const ENVOY_HTTP: &str = include_str!("../../docs/deploy/envoy-ext-authz-http.yaml");
const ENVOY_GRPC: &str = include_str!("../../docs/deploy/envoy-ext-authz-grpc.yaml");
const CADDYFILE: &str = include_str!("../../docs/deploy/Caddyfile");
const TRAEFIK: &str = include_str!("../../docs/deploy/traefik-forwardauth.yml");

/// A claims challenge (Microsoft dialect) as cae-proxy sends it: `claims` is the base64url of
/// `{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}`.
const CHALLENGE: &str = "Bearer realm=\"\", error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzAwMDAwMDAwIn19fQ\"";
const CHALLENGE_BODY: &str =
    r#"{"error":"insufficient_claims","error_description":"the session was revoked"}"#;
/// RFC 6750 §3.1 insufficient_scope, on a 403.
const FORBIDDEN: &str = "Bearer error=\"insufficient_scope\", scope=\"orders.write\"";
const FORBIDDEN_BODY: &str = r#"{"error":"insufficient_scope"}"#;
const BROKEN_BODY: &str = r#"{"error":"server_error"}"#;

/// The client's request through every gateway: a POST with a body, a Host of its own, and forged
/// copies of the identity header and of X-Forwarded-For.
const PATH: &str = "/api/orders?id=7";
const HOST: &str = "api.example.test";
const FORGED_XFF: &str = "203.0.113.9";

// ---------------------------------------------------------------------------------------------
// The HTTP auth service: records every request, answers by the client's Authorization header.

/// One request the auth service received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query as received.
    uri: String,
    version: http::Version,
    /// Lower-case names, in arrival order.
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header names, sorted.
    fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        n.sort_unstable();
        n
    }
}

struct AuthService {
    server: ServerHandle,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// `Bearer allow`: 200 with `x-user-sub: alice`. `Bearer allow-anonymous`: 200 without identity
/// headers. `Bearer allow-and-remove`: 200 with `x-user-sub: alice` and
/// `x-envoy-auth-headers-to-remove: x-user-sub, x-legacy-user`. `Bearer forbidden`: 403 with an
/// insufficient_scope challenge. `Bearer broken`: 500 with `retry-after: 1` (neither allow nor
/// deny: what does the gateway make of it?). Anything else (or nothing): 401 with a claims challenge. Every
/// denial has a JSON body, repeated in `x-cae-body` for nginx.
fn decide(headers: &HeaderMap) -> Response<DevBody> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut r = Response::builder();
    let (status, body) = match auth {
        "Bearer allow" => {
            r = r.header("x-user-sub", "alice");
            (StatusCode::OK, "")
        }
        "Bearer allow-anonymous" => (StatusCode::OK, ""),
        "Bearer allow-and-remove" => {
            r = r.header("x-user-sub", "alice").header(
                "x-envoy-auth-headers-to-remove",
                "x-user-sub, x-legacy-user",
            );
            (StatusCode::OK, "")
        }
        "Bearer forbidden" => {
            r = r.header("www-authenticate", FORBIDDEN);
            (StatusCode::FORBIDDEN, FORBIDDEN_BODY)
        }
        "Bearer broken" => {
            r = r.header("retry-after", "1");
            (StatusCode::INTERNAL_SERVER_ERROR, BROKEN_BODY)
        }
        _ => {
            r = r.header("www-authenticate", CHALLENGE);
            (StatusCode::UNAUTHORIZED, CHALLENGE_BODY)
        }
    };
    if !body.is_empty() {
        r = r
            .header("content-type", "application/json")
            .header("x-cae-body", body);
    }
    r.status(status)
        .body(full_body(body))
        .expect("auth service response")
}

impl AuthService {
    async fn start() -> AuthService {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let server = cae_proxy::dev::serve(listener().await, move |req, _peer| {
            let keep = keep.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = read_body(body, 1 << 20).await.unwrap_or_default();
                keep.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    version: parts.version,
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body,
                });
                decide(&parts.headers)
            }
        })
        .expect("auth service");
        AuthService { server, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The requests received since the last call.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// The one request received since the last call.
    fn one(&self) -> Seen {
        let mut all = self.take();
        assert_eq!(all.len(), 1, "auth service requests: {all:#?}");
        all.remove(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the gateway tests.

async fn echo() -> EchoUpstream {
    EchoUpstream::start(listener().await).expect("echo upstream")
}

/// The client's request, with `token` as its bearer token.
async fn call(gw: &Gateway, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(
        &client(),
        Method::POST,
        &gw.url(PATH),
        &[
            ("host", HOST),
            ("authorization", &auth),
            ("x-user-sub", "mallory"),
            ("x-legacy-user", "mallory"),
            ("x-forwarded-for", FORGED_XFF),
            ("content-type", "text/plain"),
        ],
        Bytes::from_static(b"hello"),
    )
    .await
}

/// The upstream's view of an allowed request (the echo's JSON): checks it is the client's request
/// and returns its headers.
fn upstream_saw(r: &Reply, gw: &Gateway) -> BTreeMap<String, String> {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}: {}\n{}",
        gw.kind.name(),
        r.text(),
        gw.log()
    );
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/orders");
    assert_eq!(v["query"], "id=7");
    assert_eq!(v["body_bytes"], 5, "the body reaches the upstream");
    serde_json::from_value::<BTreeMap<String, String>>(v["headers"].clone()).expect("headers")
}

/// The denial the client got: status, the one WWW-Authenticate, and the body.
fn assert_denied(r: &Reply, status: StatusCode, challenge: &str, body: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, [challenge], "exactly one WWW-Authenticate");
    assert_eq!(r.text(), body);
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

/// X-Forwarded-For as Envoy (use_remote_address) builds it: the client's list, then its own
/// entry. For a loopback peer Envoy appends the host's own non-loopback address, not 127.0.0.1.
fn envoy_xff(v: &str) -> bool {
    let parts: Vec<&str> = v.split(',').collect();
    parts.len() == 2 && parts[0] == FORGED_XFF && parts[1].parse::<std::net::IpAddr>().is_ok()
}

// ---------------------------------------------------------------------------------------------
// nginx auth_request.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_wire() {
    let auth = AuthService::start().await;
    let up = echo().await;
    let Some(gw) = gateways::nginx(NGINX_CONF, auth.addr(), up.addr()).await else {
        return;
    };

    // Allowed: the subrequest is a GET of /authz + the original URI, without a body.
    let h = upstream_saw(&call(&gw, "allow").await, &gw);
    let seen = auth.one();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str(), seen.version),
        ("GET", "/authz/api/orders?id=7", http::Version::HTTP_11)
    );
    assert_eq!(
        seen.names(),
        [
            "authorization",
            "content-type",
            "host",
            "x-forwarded-for",
            "x-forwarded-method",
            "x-forwarded-proto",
            "x-legacy-user",
            "x-user-sub",
        ],
        "{seen:#?}"
    );
    assert_eq!(seen.header("host"), Some(HOST));
    assert_eq!(seen.header("authorization"), Some("Bearer allow"));
    assert_eq!(seen.header("x-forwarded-method"), Some("POST"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1"),
        "$proxy_add_x_forwarded_for appends the peer to the client's list"
    );
    assert_eq!(
        seen.header("x-user-sub"),
        Some("mallory"),
        "the forged copy reaches the check"
    );
    assert!(seen.body.is_empty());
    // The answer's identity replaces the forged one.
    assert_eq!(h["x-user-sub"], "alice");
    assert_eq!(h["host"], HOST);

    // Allowed without identity: the empty variable removes the client's copy.
    let h = upstream_saw(&call(&gw, "allow-anonymous").await, &gw);
    auth.one();
    assert!(!h.contains_key("x-user-sub"), "{h:?}");

    // 401: nginx copies WWW-Authenticate itself; the body comes from X-Cae-Body.
    let before = up.requests();
    let r = call(&gw, "expired").await;
    auth.one();
    assert_denied(&r, StatusCode::UNAUTHORIZED, CHALLENGE, CHALLENGE_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-cae-body"),
        None,
        "no other header of the answer is relayed"
    );

    // 403: only what the config copies.
    let r = call(&gw, "forbidden").await;
    auth.one();
    assert_denied(&r, StatusCode::FORBIDDEN, FORBIDDEN, FORBIDDEN_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Any other status is an error of nginx's own: 500, nothing of the answer relayed.
    let r = call(&gw, "broken").await;
    auth.one();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("retry-after"), None);
    assert!(
        r.text().contains("500 Internal Server Error"),
        "{}",
        r.text()
    );
    assert_eq!(
        up.requests(),
        before,
        "no denied request reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_service_down_is_500() {
    let up = echo().await;
    let (_hold, down) = gateways::refusing();
    let Some(gw) = gateways::nginx(NGINX_CONF, down, up.addr()).await else {
        return;
    };
    let r = call(&gw, "allow").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz, HTTP service.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_ext_authz_wire() {
    let auth = AuthService::start().await;
    let up = echo().await;
    let Some(gw) = gateways::envoy(ENVOY_HTTP, auth.addr(), up.addr()).await else {
        return;
    };

    // Allowed: the original method, /authz + the original path, the original Host; no body.
    let h = upstream_saw(&call(&gw, "allow").await, &gw);
    let seen = auth.one();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str(), seen.version),
        ("POST", "/authz/api/orders?id=7", http::Version::HTTP_11)
    );
    assert_eq!(
        seen.names(),
        [
            "authorization",
            "content-length",
            "host",
            "x-cae-client-ip",
            "x-envoy-expected-rq-timeout-ms",
            "x-envoy-internal",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
        ],
        "{seen:#?}"
    );
    assert_eq!(seen.header("host"), Some(HOST));
    assert_eq!(seen.header("authorization"), Some("Bearer allow"));
    assert_eq!(seen.header("content-length"), Some("0"));
    assert!(seen.body.is_empty());
    assert_eq!(seen.header("x-cae-client-ip"), Some("127.0.0.1"));
    assert!(
        envoy_xff(seen.header("x-forwarded-for").unwrap()),
        "{seen:#?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-envoy-internal"), Some("true"));
    assert_eq!(seen.header("x-envoy-expected-rq-timeout-ms"), Some("1000"));
    assert!(is_uuid(seen.header("x-request-id").unwrap()));
    // The upstream gets the answer's x-user-sub only, and the same request id.
    assert_eq!(h["x-user-sub"], "alice");
    assert_eq!(h["x-request-id"], seen.header("x-request-id").unwrap());
    assert_eq!(h["host"], HOST);

    // Allowed without identity: header_mutation already removed the client's copy.
    let h = upstream_saw(&call(&gw, "allow-anonymous").await, &gw);
    auth.one();
    assert!(!h.contains_key("x-user-sub"), "{h:?}");
    assert_eq!(
        h["x-legacy-user"], "mallory",
        "ext_authz alone keeps client headers"
    );

    // x-envoy-auth-headers-to-remove removes client headers, and runs after the answer's own
    // headers were set: a name in both ends up absent.
    let h = upstream_saw(&call(&gw, "allow-and-remove").await, &gw);
    auth.one();
    assert!(!h.contains_key("x-legacy-user"), "{h:?}");
    assert!(!h.contains_key("x-user-sub"), "{h:?}");
    assert!(!h.contains_key("x-envoy-auth-headers-to-remove"), "{h:?}");

    // Denials: status and body as they are, headers per allowed_client_headers.
    let before = up.requests();
    let r = call(&gw, "expired").await;
    auth.one();
    assert_denied(&r, StatusCode::UNAUTHORIZED, CHALLENGE, CHALLENGE_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-cae-body"), None);
    let r = call(&gw, "forbidden").await;
    auth.one();
    assert_denied(&r, StatusCode::FORBIDDEN, FORBIDDEN, FORBIDDEN_BODY);

    // A 5xx answer is an error, not a denial: status_on_error (503 here), empty body.
    let r = call(&gw, "broken").await;
    auth.one();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.text(), "");
    assert_eq!(up.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_auth_service_down_is_status_on_error() {
    let up = echo().await;
    let (_hold, down) = gateways::refusing();
    let Some(gw) = gateways::envoy(ENVOY_HTTP, down, up.addr()).await else {
        return;
    };
    let r = call(&gw, "allow").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.text(), "");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz, gRPC service (envoy.service.auth.v3.Authorization/Check).

/// A test-only gRPC auth service: records every CheckRequest; `Bearer allow` gets an
/// OkHttpResponse (sets x-user-sub, removes x-legacy-user), `Bearer broken` a gRPC error
/// (INTERNAL), anything else a DeniedHttpResponse (401, claims challenge, JSON body).
#[derive(Clone, Default)]
struct GrpcAuth {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcAuth {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = request.into_inner();
        let auth = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("authorization"))
            .cloned()
            .unwrap_or_default();
        self.seen.lock().unwrap().push(req);
        if auth == "Bearer broken" {
            return Err(tonic::Status::internal("authorization store unavailable"));
        }
        let allow = auth == "Bearer allow";
        let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
        let answer = if allow {
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Ok as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-user-sub", "alice", overwrite)],
                    headers_to_remove: vec!["x-legacy-user".into()],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Unauthenticated as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: HttpStatusCode::Unauthorized as i32,
                    }),
                    headers: vec![
                        header("www-authenticate", CHALLENGE, overwrite),
                        header("content-type", "application/json", overwrite),
                    ],
                    body: CHALLENGE_BODY.into(),
                })),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(answer))
    }
}

/// The IP address of a CheckRequest peer (source: Envoy's client; destination: its listener).
fn peer_ip(p: Option<&Peer>) -> Option<String> {
    match p?.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(s) => Some(s.address.clone()),
        _ => None,
    }
}

/// Serves `svc` on 127.0.0.1:0 until the returned sender drops.
async fn serve_grpc(svc: GrpcAuth) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let l = listener().await;
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                AuthorizationServer::new(svc),
                tonic::transport::server::TcpIncoming::from(l),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_ext_authz_wire() {
    let svc = GrpcAuth::default();
    let (addr, _stop) = serve_grpc(svc.clone()).await;
    let up = echo().await;
    let Some(gw) = gateways::envoy(ENVOY_GRPC, addr, up.addr()).await else {
        return;
    };

    // Allowed: headers set and removed as the OkHttpResponse says.
    let h = upstream_saw(&call(&gw, "allow").await, &gw);
    assert_eq!(h["x-user-sub"], "alice");
    assert!(!h.contains_key("x-legacy-user"), "{h:?}");

    let check = {
        let mut all = std::mem::take(&mut *svc.seen.lock().unwrap());
        assert_eq!(all.len(), 1, "{all:#?}");
        all.remove(0)
    };
    let attrs = check.attributes.as_ref().expect("attributes");
    let http = attrs
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .expect("attributes.request.http");
    assert_eq!(http.method, "POST");
    assert_eq!(http.host, HOST);
    assert_eq!(http.path, "/api/orders?id=7", "path keeps the query");
    assert_eq!(http.scheme, "http");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(http.query, "", "the query is only in path");
    assert_eq!(http.fragment, "");
    assert_eq!(
        http.size, 0,
        "not the body's length (5) without with_request_body"
    );
    assert!(http.body.is_empty() && http.raw_body.is_empty());
    assert!(http.header_map.is_none(), "only with encode_raw_headers");
    assert!(
        http.id.parse::<u64>().is_ok() && http.id != h["x-request-id"],
        "id is Envoy's stream id, not x-request-id: {}",
        http.id
    );
    let time = attrs.request.as_ref().and_then(|r| r.time.as_ref());
    assert!(
        time.is_some_and(|t| t.seconds > 1_600_000_000),
        "request.time"
    );
    let mut keys: Vec<&str> = http.headers.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            ":authority",
            ":method",
            ":path",
            ":scheme",
            "authorization",
            "content-length",
            "content-type",
            "x-envoy-external-address",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-legacy-user",
            "x-request-id",
        ],
        "{check:#?}"
    );
    assert_eq!(http.headers["authorization"], "Bearer allow");
    assert_eq!(http.headers[":authority"], HOST);
    assert_eq!(http.headers["x-envoy-external-address"], "127.0.0.1");
    assert_eq!(http.headers["x-request-id"], h["x-request-id"]);
    assert_eq!(http.headers["content-length"], "5");
    assert!(envoy_xff(&http.headers["x-forwarded-for"]), "{check:#?}");
    let src = peer_ip(attrs.source.as_ref()).expect("attributes.source.address");
    assert_eq!(src, "127.0.0.1", "the TCP peer of Envoy");
    let dst = peer_ip(attrs.destination.as_ref()).expect("attributes.destination.address");
    assert_eq!(dst, "127.0.0.1");
    assert!(attrs.context_extensions.is_empty());
    assert!(attrs.tls_session.is_none());

    // Denied: status, headers and body of the DeniedHttpResponse.
    let before = up.requests();
    let r = call(&gw, "expired").await;
    assert_denied(&r, StatusCode::UNAUTHORIZED, CHALLENGE, CHALLENGE_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A gRPC error is no answer: status_on_error (503 here), empty body.
    let r = call(&gw, "broken").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "");
    assert_eq!(std::mem::take(&mut *svc.seen.lock().unwrap()).len(), 2);
    assert_eq!(up.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_grpc_auth_service_down_is_status_on_error() {
    let up = echo().await;
    let (_hold, down) = gateways::refusing();
    let Some(gw) = gateways::envoy(ENVOY_GRPC, down, up.addr()).await else {
        return;
    };
    let r = call(&gw, "allow").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.text(), "");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Caddy forward_auth.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_wire() {
    let auth = AuthService::start().await;
    let up = echo().await;
    let Some(gw) = gateways::caddy(CADDYFILE, auth.addr(), up.addr()).await else {
        return;
    };

    let h = upstream_saw(&call(&gw, "allow").await, &gw);
    let seen = auth.one();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str(), seen.version),
        ("GET", "/authz/api/orders?id=7", http::Version::HTTP_11)
    );
    assert_eq!(
        seen.names(),
        [
            "accept-encoding",
            "authorization",
            "content-type",
            "host",
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-method",
            "x-forwarded-proto",
            "x-forwarded-uri",
            "x-legacy-user",
            "x-user-sub",
        ],
        "{seen:#?}"
    );
    assert_eq!(seen.header("host"), Some(HOST));
    assert_eq!(seen.header("x-forwarded-host"), Some(HOST));
    assert_eq!(seen.header("x-forwarded-method"), Some("POST"));
    assert_eq!(seen.header("x-forwarded-uri"), Some(PATH));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "the client's own X-Forwarded-For is dropped (no trusted_proxies)"
    );
    assert_eq!(seen.header("x-user-sub"), Some("mallory"));
    assert_eq!(seen.header("via"), Some("1.1 Caddy"));
    assert!(seen.body.is_empty());
    assert_eq!(h["x-user-sub"], "alice");

    let h = upstream_saw(&call(&gw, "allow-anonymous").await, &gw);
    auth.one();
    assert!(
        !h.contains_key("x-user-sub"),
        "copy_headers removes the client's copy: {h:?}"
    );

    // Denials: status, every header of the answer and its body, as they are.
    let before = up.requests();
    let r = call(&gw, "expired").await;
    auth.one();
    assert_denied(&r, StatusCode::UNAUTHORIZED, CHALLENGE, CHALLENGE_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-cae-body"), Some(CHALLENGE_BODY));
    let r = call(&gw, "forbidden").await;
    auth.one();
    assert_denied(&r, StatusCode::FORBIDDEN, FORBIDDEN, FORBIDDEN_BODY);

    // Any non-2xx answer is relayed as it is, a 500 too.
    let r = call(&gw, "broken").await;
    auth.one();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.text(), BROKEN_BODY);
    assert_eq!(up.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_auth_service_down_is_502() {
    let up = echo().await;
    let (_hold, down) = gateways::refusing();
    let Some(gw) = gateways::caddy(CADDYFILE, down, up.addr()).await else {
        return;
    };
    let r = call(&gw, "allow").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.text(), "");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Traefik ForwardAuth.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_wire() {
    let auth = AuthService::start().await;
    let up = echo().await;
    let Some(gw) = gateways::traefik(TRAEFIK, auth.addr(), up.addr()).await else {
        return;
    };

    let h = upstream_saw(&call(&gw, "allow").await, &gw);
    let seen = auth.one();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str(), seen.version),
        ("GET", "/authz", http::Version::HTTP_11),
        "the address as it is: the original path is only in X-Forwarded-Uri"
    );
    assert_eq!(
        seen.names(),
        [
            "accept-encoding",
            "authorization",
            "content-type",
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-method",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-forwarded-uri",
            "x-legacy-user",
            "x-user-sub",
        ],
        "{seen:#?}"
    );
    assert_eq!(seen.header("host"), Some(auth.addr().to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some(HOST));
    assert_eq!(seen.header("x-forwarded-method"), Some("POST"));
    assert_eq!(seen.header("x-forwarded-uri"), Some(PATH));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-port"), Some("80"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "the client's own X-Forwarded-For is dropped (untrusted entry point)"
    );
    assert_eq!(seen.header("x-user-sub"), Some("mallory"));
    assert!(seen.body.is_empty());
    assert_eq!(h["x-user-sub"], "alice");

    let h = upstream_saw(&call(&gw, "allow-anonymous").await, &gw);
    auth.one();
    assert!(
        !h.contains_key("x-user-sub"),
        "authResponseHeaders removes the client's copy: {h:?}"
    );

    let before = up.requests();
    let r = call(&gw, "expired").await;
    auth.one();
    assert_denied(&r, StatusCode::UNAUTHORIZED, CHALLENGE, CHALLENGE_BODY);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-cae-body"), Some(CHALLENGE_BODY));
    let r = call(&gw, "forbidden").await;
    auth.one();
    assert_denied(&r, StatusCode::FORBIDDEN, FORBIDDEN, FORBIDDEN_BODY);

    // Any non-2xx answer is relayed as it is, a 500 too.
    let r = call(&gw, "broken").await;
    auth.one();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.text(), BROKEN_BODY);
    assert_eq!(up.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_auth_service_down_is_500() {
    let up = echo().await;
    let (_hold, down) = gateways::refusing();
    let Some(gw) = gateways::traefik(TRAEFIK, down, up.addr()).await else {
        return;
    };
    let r = call(&gw, "allow").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert_eq!(r.text(), "");
    assert_eq!(up.requests(), 0);
}
