//! The spans of one proxied request: `request` (server), its children `token_validation` and
//! `decision` (internal) and `upstream` (client), whose id goes upstream in `traceparent`.
//! Attributes are method, path, host, route, decision, status and error kinds only: never a
//! token, an `Authorization` value or a query string (where a token may travel).

use http::header::HeaderMap;
use http::Method;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use super::traceparent::{self, Incoming, SAMPLED, TRACEPARENT, TRACESTATE};
use super::Telemetry;

/// The `request` span of one request and what its children need.
#[derive(Debug)]
pub struct RequestTrace {
    tracer: SdkTracer,
    /// Holds the `request` span.
    cx: Context,
    /// A valid `traceparent` came in: its `tracestate` belongs to this trace and goes on.
    continued: bool,
}

/// What the server span names of a request when it starts.
pub struct RequestFacts<'a> {
    /// `request` (a proxied request) or `authz_check` (a gateway's check of one).
    pub span: &'static str,
    pub method: &'a Method,
    pub scheme: &'a str,
    pub path: &'a str,
    /// `:authority` or `Host`.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// How the request ended, for the `request` or `authz_check` span.
pub struct RequestEnd<'a> {
    pub status: u16,
    /// The route's name (absent: no route matched).
    pub route: Option<&'a str>,
    pub decision: &'static str,
    pub reason: &'static str,
    pub cause: &'static str,
    /// How the gateway asked (`authz_check` spans): `path`, `forward_auth` or `grpc`.
    pub dialect: Option<&'static str>,
}

/// A child span; ended by [`Child::end`] (or when dropped).
pub struct Child(Span);

impl Child {
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed with an error kind (`error.type`).
    pub fn fail(&mut self, kind: &'static str) {
        self.set("error.type", kind);
        self.0.set_status(Status::error(kind));
    }

    /// Marks the span failed by an HTTP status (`error.type` is the code, as OpenTelemetry's
    /// HTTP conventions say).
    pub fn fail_status(&mut self, status: u16) {
        self.set("error.type", status.to_string());
        self.0.set_status(Status::error(status.to_string()));
    }

    pub fn end(mut self) {
        self.0.end();
    }
}

impl Telemetry {
    /// Starts the `request` span: a child of the caller's span when a valid `traceparent` came
    /// in (its sampled flag decides), else the root of a new trace (the sample ratio decides).
    pub fn request(&self, f: &RequestFacts<'_>) -> Option<RequestTrace> {
        let tracer = self.tracer()?.clone();
        let (parent, continued) = match traceparent::incoming(f.headers) {
            Incoming::Valid(tp) => {
                let remote = SpanContext::new(
                    TraceId::from_bytes(tp.trace_id),
                    SpanId::from_bytes(tp.parent_id),
                    TraceFlags::new(tp.flags & SAMPLED),
                    true,
                    TraceState::default(),
                );
                (Context::new().with_remote_span_context(remote), true)
            }
            Incoming::Absent | Incoming::Invalid => (Context::new(), false),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", f.method.as_str().to_string()),
            KeyValue::new("url.scheme", f.scheme.to_string()),
            KeyValue::new("url.path", f.path.to_string()),
        ];
        if let Some(authority) = f.host.and_then(|h| h.parse::<http::uri::Authority>().ok()) {
            attributes.push(KeyValue::new(
                "server.address",
                authority.host().to_string(),
            ));
            if let Some(port) = authority.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let span = tracer
            .span_builder(f.span)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        Some(RequestTrace {
            tracer,
            cx: parent.with_span(span),
            continued,
        })
    }
}

impl RequestTrace {
    /// An internal child span (`token_validation`, `decision`).
    pub fn child(&self, name: &'static str) -> Child {
        Child(
            self.tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .start_with_context(&self.tracer, &self.cx),
        )
    }

    /// The `upstream` span of the forwarded request, and the request's headers made to name it:
    /// `traceparent` with this trace and the new span's id; `tracestate` kept when the caller's
    /// trace goes on, dropped when this is a new trace (it described another).
    pub fn upstream(
        &self,
        method: &Method,
        authority: Option<&http::uri::Authority>,
        headers: &mut HeaderMap,
    ) -> Child {
        let mut attributes = vec![KeyValue::new(
            "http.request.method",
            method.as_str().to_string(),
        )];
        if let Some(a) = authority {
            attributes.push(KeyValue::new("server.address", a.host().to_string()));
            if let Some(port) = a.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let span = self
            .tracer
            .span_builder("upstream")
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        let sc = span.span_context();
        headers.insert(
            &TRACEPARENT,
            traceparent::format(
                sc.trace_id().to_bytes(),
                sc.span_id().to_bytes(),
                sc.is_sampled(),
            ),
        );
        if !self.continued {
            headers.remove(&TRACESTATE);
        }
        Child(span)
    }

    /// Ends the `request` span with the answer's status and the decision.
    pub fn finish(self, end: RequestEnd<'_>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(end.status),
        ));
        if let Some(route) = end.route {
            span.set_attribute(KeyValue::new("cae.route", route.to_string()));
        }
        span.set_attribute(KeyValue::new("cae.decision", end.decision));
        if !end.reason.is_empty() {
            span.set_attribute(KeyValue::new("cae.reason", end.reason));
        }
        if !end.cause.is_empty() {
            span.set_attribute(KeyValue::new("cae.cause", end.cause));
        }
        if let Some(d) = end.dialect {
            span.set_attribute(KeyValue::new("cae.authz.dialect", d));
        }
        if end.status >= 500 {
            span.set_status(Status::error(end.status.to_string()));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::traceparent::parse;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    impl Kept {
        fn get_finished_spans(&self) -> Result<Vec<SpanData>, ()> {
            Ok(self.0.lock().unwrap().clone())
        }
    }

    fn telemetry(ratio: f64) -> (Telemetry, Kept) {
        let exporter = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let cfg = crate::config::Tracing {
            endpoint: "http://127.0.0.1:1".into(),
            protocol: crate::config::OtlpProtocol::Grpc,
            service_name: "t".into(),
            sample_ratio: ratio,
            headers: Vec::new(),
            tls: Default::default(),
        };
        (
            Telemetry {
                cfg,
                inner: Some((provider, tracer)),
            },
            exporter,
        )
    }

    fn facts(headers: &HeaderMap) -> RequestFacts<'_> {
        RequestFacts {
            span: "request",
            method: &Method::GET,
            scheme: "http",
            path: "/a",
            host: Some("app.test:8080"),
            headers,
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_continued_trace_keeps_its_id_and_state_and_gets_a_new_span_id() {
        let (t, spans) = telemetry(0.0);
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, PARENT.parse().unwrap());
        h.insert(&TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let trace = t.request(&facts(&h)).unwrap();
        let mut up = h.clone();
        trace.upstream(&Method::GET, None, &mut up).end();
        trace.finish(RequestEnd {
            status: 200,
            route: Some("app"),
            decision: "allow",
            reason: "",
            cause: "",
            dialect: None,
        });
        let sent = parse(up[&TRACEPARENT].as_bytes()).unwrap();
        let incoming = parse(PARENT.as_bytes()).unwrap();
        assert_eq!(sent.trace_id, incoming.trace_id);
        assert_ne!(sent.parent_id, incoming.parent_id);
        assert!(
            sent.sampled(),
            "the caller's sampled flag wins over ratio 0"
        );
        assert_eq!(up[&TRACESTATE], "congo=t61rcWkgMzE");
        let spans = spans.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        let request = spans.iter().find(|s| s.name == "request").unwrap();
        let upstream = spans.iter().find(|s| s.name == "upstream").unwrap();
        assert_eq!(request.parent_span_id.to_bytes(), incoming.parent_id);
        assert_eq!(upstream.parent_span_id, request.span_context.span_id());
        assert_eq!(upstream.span_context.span_id().to_bytes(), sent.parent_id);
    }

    #[test]
    fn a_new_trace_drops_the_old_state_and_honours_an_unsampled_caller() {
        let (t, spans) = telemetry(1.0);
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, "00-zz".parse().unwrap());
        h.insert(&TRACESTATE, "congo=t61rcWkgMzE".parse().unwrap());
        let trace = t.request(&facts(&h)).unwrap();
        let mut up = h.clone();
        trace.upstream(&Method::GET, None, &mut up).end();
        assert!(parse(up[&TRACEPARENT].as_bytes()).unwrap().sampled());
        assert!(up.get(&TRACESTATE).is_none());
        drop(trace);
        let unsampled = PARENT.replace("-01", "-00");
        h.insert(&TRACEPARENT, unsampled.parse().unwrap());
        let trace = t.request(&facts(&h)).unwrap();
        let mut up = h.clone();
        trace.upstream(&Method::GET, None, &mut up).end();
        assert!(!parse(up[&TRACEPARENT].as_bytes()).unwrap().sampled());
        drop(trace);
        let names: Vec<_> = spans
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            ["upstream", "request"],
            "the unsampled pair is not recorded"
        );
    }
}
