//! The authorization listener (role `authz`) asked directly, the way each gateway asks it: Envoy's
//! HTTP ext_authz (original method, `/authz` + path), nginx `auth_request` (`GET /authz` + path,
//! `X-Forwarded-Method`), forward auth (`GET /authz`, `X-Forwarded-*`) and Envoy's gRPC Check.
//! Every refusal must be byte for byte what the proxy listener of the same process answers the
//! same request; allowed checks name the identity headers to set and to remove; the client
//! address comes from the check only when the asker is a trusted proxy; bad checks fail closed;
//! metrics and access lines carry the role. tests/e2e/gateways.rs puts the real gateways in front.

use std::net::IpAddr;

use crate::common::*;
use bytes::Bytes;
use cae_proxy::config::Config;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::upstream::EchoUpstream;
use envoy_types::ext_authz::v3::pb::{Address, CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{socket_address::PortSpecifier, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use http::{Method, StatusCode};
use serde_json::json;

const HOST: &str = "api.example.test";
const ADMIN: &str = "Bearer admin-secret";
/// The client of the tests that pose as a client rather than a gateway: not a trusted proxy.
const CLIENT: &str = "127.0.0.2";
/// An address the `located` route refuses.
const FAR: &str = "203.0.113.9";

fn config(iss: &str, up: &str) -> String {
    format!(
        r#"
[server]
log_level = "warn"
trusted_proxies = ["127.0.0.1/32"]
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "authz"
address = "127.0.0.1:0"
role = "authz"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
hosts = ["{HOST}"]
path_prefix = "/api"
methods = ["POST"]
upstream = "app"
identity_headers = {{ "x-user-sub" = "sub", "x-user-email" = "email" }}
[[route]]
name = "stepup"
path_prefix = "/stepup"
upstream = "app"
cae = {{ auth_context = "c1" }}
[[route]]
name = "scoped"
path_prefix = "/scoped"
upstream = "app"
scopes = ["orders.write"]
[[route]]
name = "located"
path_prefix = "/located"
upstream = "app"
cae = {{ deny_locations = ["203.0.113.0/24"] }}
[[route]]
name = "report"
path_prefix = "/report"
upstream = "app"
report_only = true
cae = {{ deny_locations = ["203.0.113.0/24"] }}
[[route]]
name = "checks-only"
path_prefix = "/internal"
forward_authorization = false
identity_headers = {{ "x-user-sub" = "sub" }}
"#
    )
}

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

async fn setup() -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(&idp.issuer_url(), &up.url())).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

impl Setup {
    async fn revoke_subject(&self, sub: &str, at: i64) {
        let r = send(
            &client(),
            Method::POST,
            &self.h.admin_url("/admin/revoke"),
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
            Bytes::from(
                json!({"key": {"type": "subject", "iss": self.idp.issuer_url(), "sub": sub}, "at": at})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }

    fn authz(&self, path: &str) -> String {
        self.h.url("authz", path)
    }
}

/// The original request every dialect describes.
struct Case {
    name: &'static str,
    method: Method,
    /// Path and query.
    target: &'static str,
    token: Option<String>,
}

/// One HTTP check: (dialect, method, URL, headers).
type Asking = (&'static str, Method, String, Vec<(String, String)>);

/// The ways gateways put `case` into an HTTP check.
fn dialects(s: &Setup, case: &Case) -> Vec<Asking> {
    let auth: Vec<(String, String)> = case
        .token
        .iter()
        .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
        .collect();
    let with = |more: &[(&str, &str)]| {
        let mut h = auth.clone();
        h.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    };
    let m = case.method.as_str();
    vec![
        (
            "envoy-http",
            case.method.clone(),
            s.authz(&format!("/authz{}", case.target)),
            with(&[("host", HOST), ("x-forwarded-proto", "http")]),
        ),
        (
            "nginx",
            Method::GET,
            s.authz(&format!("/authz{}", case.target)),
            with(&[
                ("host", HOST),
                ("x-forwarded-method", m),
                ("x-forwarded-proto", "http"),
                ("x-cae-body-header", "1"),
            ]),
        ),
        (
            "forward-auth",
            Method::GET,
            s.authz("/authz"),
            with(&[
                ("x-forwarded-method", m),
                ("x-forwarded-host", HOST),
                ("x-forwarded-uri", case.target),
                ("x-forwarded-proto", "http"),
            ]),
        ),
    ]
}

async fn ask(method: Method, url: &str, headers: &[(String, String)], rid: &str) -> Reply {
    let mut h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    h.push(("x-request-id", rid));
    send(&client(), method, url, &h, Bytes::new()).await
}

/// What the proxy listener answers `case` with request id `rid`.
async fn proxy_answer(s: &Setup, case: &Case, rid: &str) -> Reply {
    let auth = case.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut h = vec![("host", HOST), ("x-request-id", rid)];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    send(
        &client(),
        case.method.clone(),
        &s.h.url("public", case.target),
        &h,
        Bytes::new(),
    )
    .await
}

fn assert_same_refusal(what: &str, got: &Reply, want: &Reply) {
    assert_eq!(got.status, want.status, "{what}: {}", got.text());
    for h in ["www-authenticate", "content-type", "x-request-id"] {
        assert_eq!(got.header(h), want.header(h), "{what}: {h}");
    }
    assert_eq!(got.text(), want.text(), "{what}: body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_dialect_refuses_byte_for_byte_as_the_proxy_does() {
    let s = setup().await;
    let now = now_secs();
    let early = json!({"iat": now - 100, "nbf": now - 100});
    let bob = s.idp.mint("bob", early.clone());
    let bob_legacy = s.idp.mint(
        "bob",
        json!({"iat": now - 100, "nbf": now - 100, "xms_cc": []}),
    );
    s.revoke_subject("bob", now - 10).await;
    let alice = s.idp.mint("alice", early.clone());
    let expired = s.idp.mint(
        "alice",
        json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
    );
    let cases = [
        Case {
            name: "revoked (claims challenge)",
            method: Method::POST,
            target: "/api/orders?id=7",
            token: Some(bob),
        },
        Case {
            name: "revoked, client without cp1",
            method: Method::POST,
            target: "/api/orders?id=7",
            token: Some(bob_legacy),
        },
        Case {
            name: "garbage token",
            method: Method::POST,
            target: "/api/orders?id=7",
            token: Some("not.a.token".into()),
        },
        Case {
            name: "expired token",
            method: Method::POST,
            target: "/api/orders",
            token: Some(expired),
        },
        Case {
            name: "no token",
            method: Method::POST,
            target: "/api/orders",
            token: None,
        },
        Case {
            name: "step-up",
            method: Method::GET,
            target: "/stepup/x",
            token: Some(alice.clone()),
        },
        Case {
            name: "scope (403)",
            method: Method::DELETE,
            target: "/scoped/x",
            token: Some(alice.clone()),
        },
        Case {
            name: "method the route does not take (no route)",
            method: Method::GET,
            target: "/api/orders",
            token: Some(alice.clone()),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let rid = format!("rid-{i}");
        let want = proxy_answer(&s, case, &rid).await;
        assert!(
            want.status.is_client_error(),
            "{}: {}",
            case.name,
            want.text()
        );
        for (dialect, method, url, headers) in dialects(&s, case) {
            let got = ask(method, &url, &headers, &rid).await;
            let what = format!("{} ({dialect})", case.name);
            assert_same_refusal(&what, &got, &want);
            // Only the nginx check asks for the body in a header.
            let repeated = got.header("x-cae-body");
            if dialect == "nginx" {
                assert_eq!(repeated, Some(want.text().as_str()), "{what}");
            } else {
                assert_eq!(repeated, None, "{what}");
            }
        }
    }
    // The refusals are the real ones: a claims challenge for a CAE client, invalid_token else.
    let claims = proxy_answer(&s, &cases[0], "r").await;
    assert!(
        claims
            .header("www-authenticate")
            .unwrap()
            .contains(r#"error="insufficient_claims", claims=""#),
        "{claims:?}"
    );
    let step = proxy_answer(&s, &cases[5], "r").await;
    assert_eq!(step.json()["code"], "InsufficientAuthenticationContext");
    assert_eq!(s.up.requests(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_check_names_the_identity_headers_to_set_and_to_remove() {
    let s = setup().await;
    let alice = s.idp.mint("alice", json!({}));
    let carol = s.idp.mint("carol", json!({"email": "carol@example.test"}));
    let case = |token: &str, target: &'static str, method: Method| Case {
        name: "allowed",
        method,
        target,
        token: Some(token.to_string()),
    };
    for (dialect, method, url, headers) in
        dialects(&s, &case(&alice, "/api/orders?id=7", Method::POST))
    {
        let r = ask(method, &url, &headers, "rid-ok").await;
        assert_eq!(r.status, StatusCode::OK, "{dialect}: {}", r.text());
        assert_eq!(r.header("x-user-sub"), Some("alice"), "{dialect}");
        assert_eq!(r.header("x-user-email"), None, "{dialect}");
        // alice's token has no email: a client's x-user-email must not reach the application.
        assert_eq!(
            r.header("x-envoy-auth-headers-to-remove"),
            Some("x-user-email"),
            "{dialect}"
        );
        assert_eq!(r.header("x-request-id"), Some("rid-ok"));
        assert_eq!(r.header("x-cae-body"), None);
        assert!(r.body.is_empty());
    }
    for (dialect, method, url, headers) in dialects(&s, &case(&carol, "/api/x", Method::POST)) {
        let r = ask(method, &url, &headers, "rid-ok").await;
        assert_eq!(r.status, StatusCode::OK, "{dialect}: {}", r.text());
        assert_eq!(r.header("x-user-sub"), Some("carol"));
        assert_eq!(r.header("x-user-email"), Some("carol@example.test"));
        assert_eq!(r.header("x-envoy-auth-headers-to-remove"), None);
    }
    // forward_authorization = false: Envoy is told to drop the token too.
    for (dialect, method, url, headers) in dialects(&s, &case(&alice, "/internal/job", Method::PUT))
    {
        let r = ask(method, &url, &headers, "rid-int").await;
        assert_eq!(r.status, StatusCode::OK, "{dialect}: {}", r.text());
        assert_eq!(r.header("x-user-sub"), Some("alice"));
        assert_eq!(
            r.header("x-envoy-auth-headers-to-remove"),
            Some("authorization")
        );
    }
    // Report-only: allowed (the refusal is only reported), from a refused address.
    let r = ask(
        Method::GET,
        &s.authz("/authz/report/x"),
        &[
            ("authorization".into(), format!("Bearer {alice}")),
            ("x-forwarded-for".into(), FAR.into()),
        ],
        "rid-rep",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // The route without an upstream only answers checks: the proxy listener has nothing to
    // forward it to.
    let r = get(
        &client(),
        &s.h.url("public", "/internal/job"),
        &[("authorization", &format!("Bearer {alice}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(
        r.json()["message"],
        "route checks-only has no upstream: it only answers authorization checks"
    );
    assert_eq!(s.up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_comes_from_the_check_only_when_the_asker_is_trusted() {
    let s = setup().await;
    let alice = s.idp.mint("alice", json!({}));
    let auth = format!("Bearer {alice}");
    let headers = [("authorization", auth.as_str()), ("x-forwarded-for", FAR)];
    // From 127.0.0.1 (trusted): the client is FAR, which the route refuses.
    let r = get(&client(), &s.authz("/authz/located/x"), &headers).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.json()["code"], "LocationConditionEvaluationSatisfied");
    // From 127.0.0.2 (not trusted): the header is the asker's claim; the client is the asker.
    let untrusted = client_from(CLIENT.parse().unwrap());
    let r = get(&untrusted, &s.authz("/authz/located/x"), &headers).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // gRPC: attributes.source likewise.
    let check = check_request("GET", "x", "/located/x", &[("authorization", &auth)], FAR);
    let trusted = grpc_check(&s, None, check.clone()).await.unwrap();
    assert_eq!(denied_status(&trusted), Some(401));
    let answer = grpc_check(&s, Some(CLIENT.parse().unwrap()), check)
        .await
        .unwrap();
    assert_eq!(answer.status.as_ref().unwrap().code, 0, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_cannot_be_read_is_refused() {
    let s = setup().await;
    let alice = s.idp.mint("alice", json!({}));
    let auth = format!("Bearer {alice}");
    let bad = |url: &str, extra: &[(&'static str, &'static str)]| {
        let mut h = vec![("authorization".to_string(), auth.clone())];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        (url.to_string(), h)
    };
    for (why, (url, headers), status, error) in [
        (
            "outside the prefix",
            bad(&s.authz("/api/orders"), &[]),
            400,
            "bad_request",
        ),
        (
            "the prefix without X-Forwarded-Uri",
            bad(&s.authz("/authz"), &[("x-forwarded-method", "GET")]),
            400,
            "bad_request",
        ),
        (
            "X-Forwarded-Uri without X-Forwarded-Method",
            bad(&s.authz("/authz"), &[("x-forwarded-uri", "/api/x")]),
            400,
            "bad_request",
        ),
        (
            "X-Forwarded-Uri not origin-form",
            bad(
                &s.authz("/authz"),
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "http://evil/api"),
                ],
            ),
            400,
            "bad_request",
        ),
        (
            "a dot segment",
            bad(&s.authz("/authz/located/%2e%2e/api"), &[]),
            400,
            "bad_path",
        ),
        (
            "no route",
            bad(&s.authz("/authz/nowhere"), &[]),
            404,
            "no_route",
        ),
        (
            "a scheme other than http(s)",
            bad(
                &s.authz("/authz/located/x"),
                &[("x-forwarded-proto", "ftp")],
            ),
            400,
            "bad_request",
        ),
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = get(&client(), &url, &h).await;
        assert_eq!(r.status.as_u16(), status, "{why}: {}", r.text());
        assert_eq!(r.json()["error"], error, "{why}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // Two X-Forwarded-Method lines: a client's copy beside the gateway's.
    let r = send(
        &client(),
        Method::GET,
        &s.authz("/authz/located/x"),
        &[
            ("authorization", &auth),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-method", "DELETE"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "the check does not describe the original request: more than one x-forwarded-method header"
    );
}

// ---------------------------------------------------------------------------------------------
// gRPC (Envoy's Authorization/Check).

pub(crate) fn check_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    source: &str,
) -> CheckRequest {
    let peer = |ip: &str| Peer {
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(40000)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let mut h: std::collections::HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.insert(":authority".into(), host.into());
    h.insert(":method".into(), method.into());
    h.insert(":path".into(), path.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(source)),
            destination: Some(peer("127.0.0.1")),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "1".into(),
                    method: method.into(),
                    headers: h,
                    path: path.into(),
                    host: host.into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One Check over a fresh HTTP/2 connection, from `local` (default 127.0.0.1).
async fn grpc_check(
    s: &Setup,
    local: Option<IpAddr>,
    req: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    check_at(s.h.proxy.addr("authz").unwrap(), local, req).await
}

/// One Check to the authz listener at `addr` over a fresh HTTP/2 connection, from `local`
/// (default 127.0.0.1).
pub(crate) async fn check_at(
    addr: std::net::SocketAddr,
    local: Option<IpAddr>,
    req: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(local)
        .connect()
        .await
        .unwrap();
    AuthorizationClient::new(channel)
        .check(req)
        .await
        .map(tonic::Response::into_inner)
}

fn denied_status(r: &CheckResponse) -> Option<i32> {
    match r.http_response.as_ref()? {
        HttpResponse::DeniedResponse(d) => d.status.as_ref().map(|s| s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_check_allows_with_headers_and_refuses_with_the_proxy_answer() {
    let s = setup().await;
    let now = now_secs();
    let alice = s.idp.mint("alice", json!({}));
    let bob = s
        .idp
        .mint("bob", json!({"iat": now - 100, "nbf": now - 100}));
    s.revoke_subject("bob", now - 10).await;

    // Allowed: x-user-sub set (overwriting), x-user-email removed.
    let auth = format!("Bearer {alice}");
    let r = grpc_check(
        &s,
        None,
        check_request(
            "POST",
            HOST,
            "/api/orders?id=7",
            &[("authorization", &auth), ("x-request-id", "g-1")],
            CLIENT,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("{r:?}")
    };
    let set: Vec<(String, String, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), hv.value.clone(), h.append_action)
        })
        .collect();
    assert_eq!(
        set,
        [(
            "x-user-sub".to_string(),
            "alice".to_string(),
            envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        )]
    );
    assert_eq!(ok.headers_to_remove, ["x-user-email"]);

    // Refused: the proxy's own status, headers and body, in a DeniedHttpResponse.
    let bearer = format!("Bearer {bob}");
    let case = Case {
        name: "revoked",
        method: Method::POST,
        target: "/api/orders?id=7",
        token: Some(bob.clone()),
    };
    let want = proxy_answer(&s, &case, "g-2").await;
    let r = grpc_check(
        &s,
        None,
        check_request(
            "POST",
            HOST,
            "/api/orders?id=7",
            &[("authorization", &bearer), ("x-request-id", "g-2")],
            CLIENT,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );
    let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.unwrap().code, 401);
    assert_eq!(denied.body, want.text());
    let mut headers: Vec<(String, String)> = denied
        .headers
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().unwrap();
            (hv.key.clone(), hv.value.clone())
        })
        .collect();
    headers.sort();
    assert_eq!(
        headers,
        [
            ("content-type".to_string(), "application/json".to_string()),
            (
                "www-authenticate".to_string(),
                want.header("www-authenticate").unwrap().to_string()
            ),
            ("x-request-id".to_string(), "g-2".to_string()),
        ]
    );

    // Report-only: OK although the address is refused.
    let r = grpc_check(
        &s,
        None,
        check_request("GET", "x", "/report/x", &[("authorization", &auth)], FAR),
    )
    .await
    .unwrap();
    assert_eq!(r.status.unwrap().code, 0);

    // No route: 404 as the proxy answers it, refused.
    let r = grpc_check(
        &s,
        None,
        check_request("GET", "x", "/nowhere", &[("authorization", &auth)], CLIENT),
    )
    .await
    .unwrap();
    assert_eq!(denied_status(&r), Some(404));

    // A CheckRequest without the request: INVALID_ARGUMENT (Envoy fails closed on errors).
    let e = grpc_check(&s, None, CheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "attributes.request.http is missing");
    assert_eq!(s.up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_listener_role() {
    let s = setup().await;
    let alice = s.idp.mint("alice", json!({}));
    let auth = format!("Bearer {alice}");
    let h = [("authorization", auth.as_str())];
    assert_eq!(
        get(&client(), &s.authz("/authz/located/x"), &h)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&client(), &s.authz("/authz/located/x"), &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&client(), &s.h.url("public", "/located/x"), &h)
            .await
            .status,
        StatusCode::OK
    );
    let m = get(&client(), &s.h.admin_url("/metrics"), &[]).await.text();
    for line in [
        r#"cae_requests_total{route="located",status="200",decision="allow",reason="",role="authz"} 1"#,
        r#"cae_requests_total{route="located",status="401",decision="deny",reason="missing_token",role="authz"} 1"#,
        r#"cae_requests_total{route="located",status="200",decision="allow",reason="",role="proxy"} 1"#,
        r#"cae_request_duration_seconds_count{route="located",role="authz"} 2"#,
        r#"cae_request_duration_seconds_count{route="located",role="proxy"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_name_the_role_and_the_dialect() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cae-proxy.toml");
    std::fs::write(
        &path,
        config(&idp.issuer_url(), &up.url())
            .replace("log_level = \"warn\"", "log_level = \"info\""),
    )
    .unwrap();
    let bin = Binary::start(&path, 3);
    bin.wait_ready().await;
    let alice = idp.mint("alice", json!({}));
    let r = send(
        &client(),
        Method::GET,
        &bin.url("authz", "/authz"),
        &[
            ("authorization", &format!("Bearer {alice}")),
            ("x-forwarded-method", "POST"),
            ("x-forwarded-host", HOST),
            ("x-forwarded-uri", "/api/orders?id=7"),
            ("x-request-id", "line-1"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let found = bin.log().into_iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["request_id"] == "line-1").then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{:#?}", bin.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(line["target"], "access", "{line}");
    for (k, v) in [
        ("role", "authz"),
        ("dialect", "forward_auth"),
        ("listener", "authz"),
        ("method", "POST"),
        ("host", HOST),
        ("path", "/api/orders"),
        ("route", "api"),
        ("decision", "allow"),
        ("client_ip", "127.0.0.1"),
    ] {
        assert_eq!(line[k], v, "{k}: {line}");
    }
    assert_eq!(line["status"], 200);
    assert!(!line.to_string().contains(&alice), "no token in logs");
}

#[test]
fn authz_listener_settings_are_validated_with_their_paths() {
    let base = std::path::Path::new(".");
    let errors = |text: &str| match Config::parse(text, base) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
        }
    };
    let upstream = "[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n";
    let ok = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"authz\"\n[listener.authz]\npath_prefix = \"/check\"\n{upstream}[[route]]\nauth = \"none\"\n"
    );
    let c = Config::parse(&ok, base).unwrap();
    assert_eq!(c.listeners[0].authz.as_ref().unwrap().path_prefix, "/check");
    assert_eq!(c.routes[0].upstream, None, "an authz-only route");
    // Defaults.
    let c = Config::parse(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"authz\"\n",
        base,
    )
    .unwrap();
    assert_eq!(c.listeners[0].authz.as_ref().unwrap().path_prefix, "/authz");
    assert_eq!(
        errors("[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"gateway\"\n"),
        ["listener[0].role: \"gateway\" must be \"proxy\", \"signals\" or \"authz\""]
    );
    assert_eq!(
        errors("[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.authz]\npath_prefix = \"/a\"\n"),
        ["listener[0].authz: only a listener with role = \"authz\" takes [listener.authz]"]
    );
    for bad in ["authz", "/", "/authz/", "/a?b", "/a b", "/a%2f"] {
        assert_eq!(
            errors(&format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"authz\"\n[listener.authz]\npath_prefix = \"{bad}\"\n"
            )),
            [format!(
                "listener[0].authz.path_prefix: {bad:?} must be a path such as \"/authz\": a leading /, no trailing /, no ?, # or %"
            )],
            "{bad}"
        );
    }
    assert_eq!(
        errors("[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"authz\"\n[listener.authz]\nprefix = \"/a\"\n"),
        ["listener[0].authz.prefix: unknown key (see docs/configuration.md)"]
    );
    // Without an authz listener every route needs an upstream.
    assert_eq!(
        errors("[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nauth = \"none\"\n"),
        ["route[0].upstream: required (only a route of a configuration with a role = \"authz\" listener may omit it: it then only answers authorization checks)"]
    );
}
