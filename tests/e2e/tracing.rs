//! Tracing end to end (`[tracing]`, docs/tracing.md): the real proxy with the development issuer
//! and the echo upstream exports its spans to a real OTLP receiver the test starts (gRPC
//! `TraceService`, or OTLP/HTTP protobuf). W3C `traceparent` goes upstream with the caller's trace
//! and the proxy's upstream span; an invalid one starts a new trace; the spans' names, kinds,
//! parents, attributes and resource are checked, and no token text is in any export; without
//! `[tracing]` nothing is invented and a caller's trace headers pass untouched (and a reload that
//! adds the section is accepted but changes nothing until a restart). Spans are read
//! after the proxy's graceful shutdown, which exports what is queued (the batch delay is never
//! waited for); the real binary does it on SIGTERM, on a one-worker runtime too.

use std::time::Duration;

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use cae_proxy::telemetry::traceparent::{parse, TraceParent};
use http::StatusCode;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{json, Value};

use crate::common::otlp::{
    attr, grpc_receiver, grpc_receiver_over, http_receiver, http_receiver_over, Export,
};
use crate::common::*;

/// How long exported spans may take to reach the receiver once the proxy shut down.
const SPANS_WITHIN: Duration = Duration::from_secs(20);

/// The W3C example trace (§3.2.2.4) and a state of two vendors.
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

struct Setup {
    h: Harness,
    idp: DevIssuer,
    up: EchoUpstream,
}

/// The development issuer, the echo upstream behind the route `api` (`/api`), an `authz`
/// listener, and `tracing`
/// as the `[tracing]` lines (`None`: no section). `{dir}` is the harness's temp dir, where
/// `files` are written first.
async fn setup(tracing: Option<&str>, files: &[(&str, &str)]) -> Setup {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let mut toml = Toml::new()
        .public()
        .listener("authz", "role = \"authz\"")
        .admin("")
        .app(&up.url())
        .dev_issuer(&idp.issuer_url(), "")
        .route("api", "/api", "");
    if let Some(t) = tracing {
        toml = toml.tracing(t);
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let h = Harness::start_in(dir, &toml.build()).await;
    h.wait_ready().await;
    Setup { h, idp, up }
}

/// GET `path` on the public listener with these headers; the echo's view of the request.
async fn call(s: &Setup, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = get(&client(), &s.h.url("public", path), headers).await;
    let seen = match r.status {
        StatusCode::OK => r.json()["headers"].clone(),
        _ => Value::Null,
    };
    (r.status, seen)
}

/// The `traceparent` the upstream got, parsed (it must be valid).
fn sent(seen: &Value) -> TraceParent {
    let v = seen["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent upstream: {seen}"));
    parse(v.as_bytes()).unwrap_or_else(|| panic!("invalid traceparent upstream: {v}"))
}

/// Shuts the proxy down (which exports the queued spans).
async fn stop(s: Setup) {
    let Setup { h, idp, up } = s;
    let Harness { proxy, dir, .. } = h;
    proxy.shutdown().await;
    drop((dir, idp, up));
}

/// The spans of one trace, by name.
fn trace_spans(exports: &[Export], trace_id: &[u8]) -> Vec<Span> {
    exports
        .iter()
        .flat_map(Export::spans)
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == trace_id)
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn spans_reach_a_real_collector_and_the_callers_trace_goes_upstream() {
    let mut rx = grpc_receiver().await;
    let tracing = format!(
        "otlp_endpoint = \"http://{}\"\nservice_name = \"gw-test\"\n[tracing.headers]\nx-collector-key = \"file:{{dir}}/otlp.key\"",
        rx.addr
    );
    let s = setup(Some(&tracing), &[("otlp.key", "k-123\n")]).await;
    let token = s.idp.mint("alice", json!({}));
    let auth = bearer(&token);

    // 1. A caller's trace, with its state: the same trace, the proxy's span as the parent.
    let (status, seen) = call(
        &s,
        "/api/orders",
        &[
            ("authorization", &auth),
            ("traceparent", CALLER),
            ("tracestate", STATE),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let caller = parse(CALLER.as_bytes()).unwrap();
    let upstream1 = sent(&seen);
    assert_eq!(
        upstream1.trace_id, caller.trace_id,
        "the caller's trace goes on"
    );
    assert_ne!(upstream1.parent_id, caller.parent_id, "a new span id");
    assert!(upstream1.sampled());
    assert_eq!(seen["tracestate"], STATE, "tracestate unchanged");

    // 2. An invalid traceparent (upper-case hex): a new trace, the old state dropped.
    let invalid = CALLER.to_uppercase();
    let (status, seen) = call(
        &s,
        "/api/invalid",
        &[
            ("authorization", &auth),
            ("traceparent", &invalid),
            ("tracestate", STATE),
        ],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an invalid traceparent never refuses"
    );
    let upstream2 = sent(&seen);
    assert_ne!(upstream2.trace_id, caller.trace_id);
    assert!(seen.get("tracestate").is_none(), "{seen}");

    // 3. No token: refused, traced without an upstream span.
    let third = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, _) = call(&s, "/api/refused", &[("traceparent", third)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // 4. The token in the query (refused): the query is in no span.
    let query = format!("/api/q?access_token={token}");
    let (status, _) = call(&s, &query, &[]).await;
    assert_ne!(status, StatusCode::OK);

    stop(s).await;
    // 4 + 4 + 3 + 3 spans (the refused ones have no upstream span).
    let exports = rx.until_spans(14, SPANS_WITHIN).await;

    // Every export: the configured header, no token text anywhere.
    let (_, _, signature) = {
        let mut parts = token.splitn(3, '.');
        (parts.next(), parts.next(), parts.next().unwrap_or_default())
    };
    for e in &exports {
        assert_eq!(e.headers["x-collector-key"], "k-123");
        let text = format!("{:?}", e.request);
        for secret in [token.as_str(), signature, "Bearer", "access_token"] {
            assert!(!text.contains(secret), "{secret:?} exported: {text}");
        }
        for (service, _) in e.spans() {
            assert_eq!(service.as_deref(), Some("gw-test"));
        }
    }

    // Trace 1: request (server) ← token_validation, decision, upstream (client).
    let spans = trace_spans(&exports, &caller.trace_id);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let request = named(&spans, "request");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        request.parent_span_id, caller.parent_id,
        "child of the caller's span"
    );
    let a = &request.attributes;
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(a, "url.path").as_deref(), Some("/api/orders"));
    assert_eq!(attr(a, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "cae.route").as_deref(), Some("api"));
    assert_eq!(attr(a, "cae.decision").as_deref(), Some("allow"));
    for (name, kind) in [
        ("token_validation", SpanKind::Internal),
        ("decision", SpanKind::Internal),
        ("upstream", SpanKind::Client),
    ] {
        let child = named(&spans, name);
        assert_eq!(
            child.parent_span_id, request.span_id,
            "{name} is a child of request"
        );
        assert_eq!(child.kind, kind as i32, "{name}");
        assert!(child.start_time_unix_nano >= request.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= request.end_time_unix_nano);
    }
    let tv = named(&spans, "token_validation");
    assert_eq!(
        attr(&tv.attributes, "cae.token.result").as_deref(),
        Some("valid")
    );
    assert_eq!(
        attr(&tv.attributes, "cae.token.issuer").as_deref(),
        Some("dev")
    );
    let d = named(&spans, "decision");
    assert_eq!(
        attr(&d.attributes, "cae.decision").as_deref(),
        Some("allow")
    );
    let upstream = named(&spans, "upstream");
    assert_eq!(
        upstream.span_id, upstream1.parent_id,
        "the span named upstream"
    );
    let ua = &upstream.attributes;
    assert_eq!(
        attr(ua, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(ua, "server.address").as_deref(), Some("127.0.0.1"));

    // Trace 2: a root of its own, whose upstream span is the one named upstream.
    let spans = trace_spans(&exports, &upstream2.trace_id);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(
        named(&spans, "request").parent_span_id.is_empty(),
        "a new root"
    );
    assert_eq!(named(&spans, "upstream").span_id, upstream2.parent_id);

    // Trace 3: refused, no upstream span; the decision and its reason on both spans.
    let third = parse(third.as_bytes()).unwrap();
    let spans = trace_spans(&exports, &third.trace_id);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(spans.len(), 3, "{names:?}");
    let r = &named(&spans, "request").attributes;
    assert_eq!(attr(r, "http.response.status_code").as_deref(), Some("401"));
    assert_eq!(attr(r, "cae.decision").as_deref(), Some("deny"));
    assert_eq!(attr(r, "cae.reason").as_deref(), Some("missing_token"));
    let d = &named(&spans, "decision").attributes;
    assert_eq!(attr(d, "cae.reason").as_deref(), Some("missing_token"));
    let tv = &named(&spans, "token_validation").attributes;
    assert_eq!(attr(tv, "cae.token.result").as_deref(), Some("absent"));
}

#[tokio::test]
async fn a_gateways_checks_are_traced_under_the_original_requests_trace() {
    let mut rx = grpc_receiver().await;
    let tracing = format!("otlp_endpoint = \"http://{}\"", rx.addr);
    let s = setup(Some(&tracing), &[]).await;
    let token = s.idp.mint("alice", json!({}));
    let auth = bearer(&token);
    let c = client();

    // 1. Envoy's HTTP check (original method, path appended) of a caller's traced request.
    let r = get(
        &c,
        &s.h.url("authz", "/authz/api/orders"),
        &[("authorization", &auth), ("traceparent", CALLER)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // 2. A forward-auth check without a token: refused.
    let refused = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = get(
        &c,
        &s.h.url("authz", "/authz"),
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/x"),
            ("traceparent", refused),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // 3. Envoy's gRPC Check, the caller's traceparent among the original headers.
    let grpc = "00-11111111111111111111111111111111-2222222222222222-01";
    let checked = crate::authz::check_at(
        s.h.proxy.addr("authz").unwrap(),
        None,
        crate::authz::check_request(
            "POST",
            "api.test",
            "/api/orders?id=7",
            &[("authorization", &auth), ("traceparent", grpc)],
            "127.0.0.1",
        ),
    )
    .await
    .unwrap();
    assert_eq!(checked.status.map(|s| s.code), Some(0), "allowed");

    stop(s).await;
    let exports = rx.until_spans(9, SPANS_WITHIN).await;
    for e in &exports {
        let text = format!("{:?}", e.request);
        assert!(!text.contains(token.as_str()), "the token exported: {text}");
    }
    let cases = [
        (CALLER, "GET", "/api/orders", "200", "allow", "", "path"),
        (
            refused,
            "GET",
            "/api/x",
            "401",
            "deny",
            "missing_token",
            "forward_auth",
        ),
        (grpc, "POST", "/api/orders", "200", "allow", "", "grpc"),
    ];
    for (tp, method, path, status, decision, reason, dialect) in cases {
        let caller = parse(tp.as_bytes()).unwrap();
        let spans = trace_spans(&exports, &caller.trace_id);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let check = named(&spans, "authz_check");
        assert_eq!(check.kind, SpanKind::Server as i32);
        assert_eq!(check.parent_span_id, caller.parent_id, "{dialect}");
        let a = &check.attributes;
        assert_eq!(attr(a, "http.request.method").as_deref(), Some(method));
        assert_eq!(attr(a, "url.path").as_deref(), Some(path), "no query");
        assert_eq!(
            attr(a, "http.response.status_code").as_deref(),
            Some(status)
        );
        assert_eq!(attr(a, "cae.route").as_deref(), Some("api"));
        assert_eq!(attr(a, "cae.decision").as_deref(), Some(decision));
        assert_eq!(
            attr(a, "cae.reason").as_deref(),
            (!reason.is_empty()).then_some(reason)
        );
        assert_eq!(attr(a, "cae.authz.dialect").as_deref(), Some(dialect));
        for name in ["token_validation", "decision"] {
            let child = named(&spans, name);
            assert_eq!(child.parent_span_id, check.span_id, "{dialect}: {name}");
            assert_eq!(child.kind, SpanKind::Internal as i32);
        }
    }
}

#[tokio::test]
async fn export_over_tls_trusts_the_configured_ca_and_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    // The collector: a private CA's certificate for localhost, client certificates required.
    let collector = cae_proxy::tls::server_config(&cae_proxy::config::Tls {
        cert: c.cert.clone(),
        key: c.key.clone(),
        client_ca: Some(c.ca.clone()),
        client_auth_required: true,
    })
    .unwrap();
    let files = format!(
        "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        c.ca.display(),
        c.client_cert.display(),
        c.client_key.display()
    );
    for protocol in ["grpc", "http/protobuf"] {
        let mut rx = match protocol {
            "grpc" => grpc_receiver_over(Some(collector.clone())).await,
            _ => http_receiver_over(Some(collector.clone())).await,
        };
        let path = if protocol == "grpc" { "" } else { "/v1/traces" };
        let tracing = format!(
            "otlp_endpoint = \"https://localhost:{}{path}\"\nprotocol = \"{protocol}\"\n{files}",
            rx.addr.port()
        );
        let s = setup(Some(&tracing), &[]).await;
        let token = s.idp.mint("alice", json!({}));
        let (status, seen) = call(&s, "/api/tls", &[("authorization", &bearer(&token))]).await;
        assert_eq!(status, StatusCode::OK);
        let trace = sent(&seen).trace_id;
        stop(s).await;
        let exports = rx.until_spans(4, SPANS_WITHIN).await;
        let spans = trace_spans(&exports, &trace);
        assert_eq!(spans.len(), 4, "{protocol}: {spans:#?}");
        assert_eq!(
            attr(&named(&spans, "request").attributes, "url.path").as_deref(),
            Some("/api/tls"),
            "{protocol}"
        );
    }
}

#[tokio::test]
async fn the_binary_exports_its_last_spans_on_sigterm_with_one_worker() {
    // One worker: the current-thread runtime, where a blocking flush on the runtime's own
    // thread could never finish.
    let mut rx = grpc_receiver().await;
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = Toml::new()
        .log_level("info,access=off")
        .server("worker_threads = 1")
        .public()
        .admin("")
        .app(&up.url())
        .dev_issuer(&idp.issuer_url(), "")
        .route("api", "/api", "")
        .tracing(&format!("otlp_endpoint = \"http://{}\"", rx.addr))
        .build();
    let path = dir.path().join("cae-proxy.toml");
    std::fs::write(&path, toml).unwrap();
    let mut bin = Binary::start(&path, 2);
    bin.wait_ready().await;
    let token = idp.mint("alice", json!({}));
    let r = get(
        &client(),
        &bin.url("public", "/api"),
        &[("authorization", &bearer(&token)), ("traceparent", CALLER)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(bin
        .json_log()
        .iter()
        .any(|l| l["message"] == "span export on"));
    bin.signal(libc::SIGTERM);
    assert_eq!(
        bin.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{:?}",
        bin.log()
    );
    let exports = rx.until_spans(4, SPANS_WITHIN).await;
    let caller = parse(CALLER.as_bytes()).unwrap();
    let spans = trace_spans(&exports, &caller.trace_id);
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["decision", "request", "token_validation", "upstream"]
    );
}

#[tokio::test]
async fn without_tracing_nothing_is_invented_and_a_callers_trace_passes_untouched() {
    let s = setup(None, &[]).await;
    let auth = bearer(&s.idp.mint("alice", json!({})));
    let (status, seen) = call(&s, "/api", &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.get("traceparent").is_none(), "{seen}");
    assert!(seen.get("tracestate").is_none(), "{seen}");
    let (status, seen) = call(
        &s,
        "/api",
        &[
            ("authorization", &auth),
            ("traceparent", CALLER),
            ("tracestate", STATE),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen["traceparent"], CALLER,
        "the trace id kept (the header as sent)"
    );
    assert_eq!(seen["tracestate"], STATE);
    assert_eq!(s.up.requests(), 2);

    // [tracing] added by a reload: accepted, and in force only after a restart.
    let file = std::fs::read_to_string(&s.h.config_path).unwrap();
    let rx = grpc_receiver().await;
    std::fs::write(
        &s.h.config_path,
        format!("{file}[tracing]\notlp_endpoint = \"http://{}\"\n", rx.addr),
    )
    .unwrap();
    s.h.proxy.reload().expect("a [tracing] change is accepted");
    let (status, seen) = call(&s, "/api", &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.get("traceparent").is_none(), "{seen}");
    stop(s).await;
}

#[tokio::test]
async fn http_protobuf_export_and_a_zero_ratio_that_honours_the_callers_sampled_flag() {
    let mut rx = http_receiver().await;
    let tracing = format!(
        "otlp_endpoint = \"http://{}\"\nprotocol = \"http/protobuf\"\nsample_ratio = 0.0\n[tracing.headers]\nx-collector-key = \"k-456\"",
        rx.addr
    );
    let s = setup(Some(&tracing), &[]).await;
    let auth = bearer(&s.idp.mint("alice", json!({})));
    // No caller: a new trace, not sampled at ratio 0, still named upstream (flag 00).
    let (status, seen) = call(&s, "/api/unsampled", &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    let unsampled = sent(&seen);
    assert!(!unsampled.sampled());
    // A sampled caller: recorded whatever the ratio.
    let (status, seen) = call(
        &s,
        "/api/sampled",
        &[("authorization", &auth), ("traceparent", CALLER)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sampled = sent(&seen);
    assert!(sampled.sampled());
    stop(s).await;

    let exports = rx.until_spans(4, SPANS_WITHIN).await;
    for e in &exports {
        assert_eq!(e.path, "/v1/traces", "the OTLP/HTTP default path");
        assert_eq!(e.headers["x-collector-key"], "k-456");
        assert_eq!(e.headers["content-type"], "application/x-protobuf");
    }
    let spans: Vec<Span> = exports
        .iter()
        .flat_map(Export::spans)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(spans.len(), 4, "only the sampled trace: {spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == sampled.trace_id));
    assert!(trace_spans(&exports, &unsampled.trace_id).is_empty());
    let request = named(&spans, "request");
    assert_eq!(
        attr(&request.attributes, "url.path").as_deref(),
        Some("/api/sampled")
    );
}
