//! OpenTelemetry tracing of proxied requests (`[tracing]`, docs/tracing.md): one tracer provider
//! per proxy (never the process-global one: tests run many proxies in one process), a parent-based
//! ratio sampler, the SDK's batch span processor as a task on our tokio runtime and the OTLP
//! exporter (`export.rs`). `spans.rs` is what a request records; `traceparent.rs` the W3C header.
//! Without `[tracing] otlp_endpoint` nothing here exists and requests create no span.

mod export;
pub mod spans;
pub mod traceparent;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::Tracing;
pub use spans::RequestTrace;

/// Why span export cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("tracing.headers.{0} cannot be sent as a header")]
    Header(String),
    #[error("cannot set up TLS for the OTLP exporter: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The span pipeline of one proxy.
pub struct Telemetry {
    cfg: Tracing,
    /// `None` only while being dropped.
    inner: Option<(SdkTracerProvider, SdkTracer)>,
}

impl Telemetry {
    /// Builds the exporter and the provider; must run inside the tokio runtime (the batch
    /// processor is a task on it).
    pub fn start(cfg: &Tracing) -> Result<Telemetry, TelemetryError> {
        let exporter = export::exporter(cfg)?;
        let batch =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("cae-proxy");
        tracing::info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, sample_ratio = cfg.sample_ratio, "span export on");
        Ok(Telemetry {
            cfg: cfg.clone(),
            inner: Some((provider, tracer)),
        })
    }

    /// The `[tracing]` section in force (a reload does not change it).
    pub fn config(&self) -> &Tracing {
        &self.cfg
    }

    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.inner.as_ref().map(|(_, t)| t)
    }

    /// Exports the spans still queued and stops the exporter, waiting at most `within`. The
    /// SDK's shutdown blocks its thread until the batch task (on this runtime) answers, so it
    /// runs on the blocking pool.
    pub async fn shutdown(&self, within: Duration) {
        let Some((provider, _)) = &self.inner else {
            return;
        };
        let provider = provider.clone();
        let job = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, job).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans exported, exporter stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "span export at shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "span export at shutdown failed"),
            Err(_) => tracing::warn!(?within, "span export at shutdown did not finish in time"),
        }
    }
}

impl Drop for Telemetry {
    /// A provider dropped without a shutdown shuts itself down, blocking until the batch task
    /// answers: never on a runtime thread (on a current-thread runtime that task could not run).
    fn drop(&mut self) {
        if let Some(parts) = self.inner.take() {
            let spawned = std::thread::Builder::new()
                .name("otel-shutdown".into())
                .spawn(move || drop(parts));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot stop the span exporter");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OtlpProtocol, Secret};

    #[tokio::test]
    async fn both_transports_build_over_http_and_https_with_headers() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            for endpoint in ["http://127.0.0.1:1", "https://127.0.0.1:1"] {
                let cfg = Tracing {
                    endpoint: endpoint.into(),
                    protocol,
                    service_name: "t".into(),
                    sample_ratio: 1.0,
                    headers: vec![("x-key".into(), Secret::from_value("v"))],
                    tls: Default::default(),
                };
                let t = Telemetry::start(&cfg).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
                // Nothing queued: the shutdown returns at once.
                t.shutdown(Duration::from_secs(5)).await;
            }
        }
    }
}
