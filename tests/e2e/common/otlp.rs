//! Real OTLP receivers for the tracing tests, on 127.0.0.1:0: the collector's gRPC
//! `TraceService` (opentelemetry-proto's generated tonic server, served over HTTP/2 by hyper) and
//! OTLP/HTTP (`POST /v1/traces`, protobuf), in plain text or over TLS (rustls, with client
//! certificates when its configuration asks). Every export lands in a channel the test waits on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

/// One export request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Export {
    /// The request's path (`/opentelemetry.proto.collector.trace.v1.TraceService/Export` or
    /// `/v1/traces`).
    pub path: String,
    pub headers: HeaderMap,
    pub request: ExportTraceServiceRequest,
}

impl Export {
    /// Every span of the export with its resource's `service.name`.
    pub fn spans(&self) -> Vec<(Option<String>, Span)> {
        let mut out = Vec::new();
        for rs in &self.request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"));
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((service.clone(), s.clone()));
                }
            }
        }
        out
    }
}

/// A running receiver: its address and what it received.
pub struct Receiver {
    pub addr: SocketAddr,
    exports: mpsc::UnboundedReceiver<Export>,
    got: Vec<Export>,
}

impl Receiver {
    /// Waits (bounded) until the exports received hold at least `n` spans, and returns every
    /// export so far.
    pub async fn until_spans(&mut self, n: usize, within: Duration) -> Vec<Export> {
        let deadline = tokio::time::Instant::now() + within;
        while self.got.iter().map(|e| e.spans().len()).sum::<usize>() < n {
            match tokio::time::timeout_at(deadline, self.exports.recv()).await {
                Ok(Some(e)) => self.got.push(e),
                Ok(None) => panic!("the receiver stopped"),
                Err(_) => panic!(
                    "timed out after {within:?} waiting for {n} spans; got {:#?}",
                    self.got
                ),
            }
        }
        while let Ok(e) = self.exports.try_recv() {
            self.got.push(e);
        }
        self.got.clone()
    }
}

/// The string value of the attribute `key`.
pub fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

/// The collector's gRPC trace service: forwards every export to the channel.
struct Collector(mpsc::UnboundedSender<Export>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let _ = self.0.send(Export {
            path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(),
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A connection to a receiver, after the TLS handshake when there is one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The accepted connection as the receiver reads it: through `tls` when given (`None` when the
/// handshake fails).
async fn accepted(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Option<TokioIo<Box<dyn Io>>> {
    let io: Box<dyn Io> = match tls {
        Some(cfg) => Box::new(
            tokio_rustls::TlsAcceptor::from(cfg)
                .accept(stream)
                .await
                .ok()?,
        ),
        None => Box::new(stream),
    };
    Some(TokioIo::new(io))
}

/// An OTLP/gRPC receiver (HTTP/2 without TLS, as a collector's `0.0.0.0:4317`).
pub async fn grpc_receiver() -> Receiver {
    grpc_receiver_over(None).await
}

/// An OTLP/gRPC receiver, over TLS when `tls` is given.
pub async fn grpc_receiver_over(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    let listener = super::listener().await;
    let addr = listener.local_addr().expect("receiver address");
    let (tx, exports) = mpsc::unbounded_channel();
    let service = TraceServiceServer::new(Collector(tx));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Some(io) = accepted(stream, tls).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut service = service.clone();
                    async move {
                        use tonic::codegen::Service as _;
                        service.call(req).await
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        exports,
        got: Vec::new(),
    }
}

/// An OTLP/HTTP receiver: `POST` of a protobuf `ExportTraceServiceRequest`, on any path (the
/// test checks which).
pub async fn http_receiver() -> Receiver {
    http_receiver_over(None).await
}

/// An OTLP/HTTP receiver, over TLS when `tls` is given.
pub async fn http_receiver_over(tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
    let listener = super::listener().await;
    let addr = listener.local_addr().expect("receiver address");
    let (tx, exports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let Some(io) = accepted(stream, tls).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(request) => {
                                let _ = tx.send(Export {
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    request,
                                });
                                StatusCode::OK
                            }
                            Err(_) => StatusCode::BAD_REQUEST,
                        };
                        let answer = ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec();
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::from(answer)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        exports,
        got: Vec::new(),
    }
}
