//! The OTLP span exporter of `[tracing]`: gRPC (tonic) or HTTP/protobuf (hyper with our rustls
//! client configuration), with the configured headers.

use std::collections::HashMap;

use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};

use super::TelemetryError;
use crate::config::{OtlpProtocol, Tracing};

/// Longest wait for the collector per export.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Builds the exporter; must run inside the tokio runtime (the gRPC channel's worker and the
/// HTTP client's connections are tasks on it).
pub(super) fn exporter(cfg: &Tracing) -> Result<SpanExporter, TelemetryError> {
    match cfg.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &cfg.headers {
                let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                    .map_err(|_| TelemetryError::Header(name.clone()))?;
                let value = value
                    .expose()
                    .parse()
                    .map_err(|_| TelemetryError::Header(name.clone()))?;
                metadata.insert(key, value);
            }
            let mut builder = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata);
            if cfg.endpoint.starts_with("https:") {
                builder = builder.with_tls_config(grpc_tls(cfg)?);
            }
            Ok(builder.build()?)
        }
        OtlpProtocol::HttpProtobuf => {
            let client = cfg.tls.client.as_ref();
            let tls = crate::tls::client_config(
                cfg.tls.ca.as_deref(),
                client.map(|(c, k)| (c.as_path(), k.as_path())),
            )?;
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let client = opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None);
            let headers: HashMap<String, String> = cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            Ok(SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers)
                .with_http_client(client)
                .build()?)
        }
    }
}

/// tonic's TLS for an `https` collector: the configured CA, else the system roots (tonic's
/// default trusts none), and the client certificate when one is configured.
fn grpc_tls(
    cfg: &Tracing,
) -> Result<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig, TelemetryError> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TelemetryError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let mut tls = match &cfg.tls.ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let Some((cert, key)) = &cfg.tls.client {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}
