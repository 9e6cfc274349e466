//! `[tracing]`: the OTLP endpoint and protocol, service name, sample ratio and export headers.

use super::*;

/// Headers the OTLP transports set themselves: a configured one would clash with them.
const TRANSPORT_HEADERS: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "host",
    "te",
    "transfer-encoding",
];

/// The typed section, or `None` when export is off (no `otlp_endpoint`). The other keys are
/// checked either way, so that a mistake shows before the endpoint is turned on.
pub(super) fn tracing(c: &mut Check<'_>, t: &TracingFile) -> Option<Tracing> {
    let protocol = match t.protocol.as_deref() {
        None | Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(o) => {
            c.err(
                "tracing.protocol",
                format!("{o:?} must be \"grpc\" or \"http/protobuf\""),
            );
            OtlpProtocol::Grpc
        }
    };
    let service_name = match t.service_name.as_deref().map(str::trim) {
        None => DEFAULT_SERVICE_NAME.to_string(),
        Some("") => {
            c.err("tracing.service_name", "must not be empty");
            DEFAULT_SERVICE_NAME.to_string()
        }
        Some(s) => s.to_string(),
    };
    let sample_ratio = match t.sample_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.err(
                "tracing.sample_ratio",
                format!("{r} must be between 0.0 and 1.0"),
            );
            1.0
        }
    };
    let headers = headers(c, &t.headers);
    let tls = RedisTls {
        ca: t.ca.as_ref().map(|f| c.file("tracing.ca", f)),
        client: match (&t.client_cert, &t.client_key) {
            (Some(cert), Some(key)) => Some((
                c.file("tracing.client_cert", cert),
                c.file("tracing.client_key", key),
            )),
            (None, None) => None,
            _ => {
                c.err("tracing", "client_cert and client_key go together");
                None
            }
        },
    };
    let endpoint = endpoint(c, t.otlp_endpoint.as_deref()?, protocol)?;
    if !endpoint.starts_with("https:") && (tls.ca.is_some() || tls.client.is_some()) {
        c.err(
            "tracing.otlp_endpoint",
            "ca, client_cert and client_key apply to an https endpoint only",
        );
    }
    Some(Tracing {
        endpoint,
        protocol,
        service_name,
        sample_ratio,
        headers,
        tls,
    })
}

/// The collector's address: an http(s) URL with a host and no credentials; gRPC has no path,
/// and an `http/protobuf` URL without one gets the OTLP default `/v1/traces`.
fn endpoint(c: &mut Check<'_>, v: &str, protocol: OtlpProtocol) -> Option<String> {
    const PATH: &str = "tracing.otlp_endpoint";
    let url = match url::Url::parse(v) {
        Ok(u) => u,
        Err(e) => {
            c.err(PATH, format!("{v:?} is not a URL: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        c.err(PATH, format!("{v:?} must be an http(s) URL with a host"));
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the text holds a credential.
        c.err(
            PATH,
            "must not hold credentials: put them in [tracing.headers]",
        );
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        c.err(PATH, format!("{v:?} must not have a query or a fragment"));
        return None;
    }
    let bare = url.path() == "/";
    match protocol {
        OtlpProtocol::Grpc if !bare => {
            c.err(
                PATH,
                format!("{v:?}: a gRPC endpoint has no path (scheme, host and port only)"),
            );
            None
        }
        OtlpProtocol::Grpc => Some(url.as_str().trim_end_matches('/').to_string()),
        OtlpProtocol::HttpProtobuf if bare => Some(format!("{url}v1/traces")),
        OtlpProtocol::HttpProtobuf => Some(url.to_string()),
    }
}

/// `[tracing.headers]`: valid lower-case names (gRPC metadata keys), none the transport sets,
/// values resolved as secrets and never echoed.
fn headers(c: &mut Check<'_>, raw: &BTreeMap<String, String>) -> Vec<(String, Secret)> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let path = format!("tracing.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            c.err(path, format!("{name:?} is not a valid header name"));
            continue;
        }
        if lower.ends_with("-bin") {
            c.err(path, "binary (-bin) metadata is not supported");
            continue;
        }
        if TRANSPORT_HEADERS.contains(&lower.as_str()) {
            c.err(path, "is set by the exporter itself");
            continue;
        }
        let Some(secret) = c.secret(&path, &Some(value.clone())) else {
            continue;
        };
        if http::HeaderValue::from_str(secret.expose()).is_err() {
            c.err(
                path,
                "the value is not a valid header value (visible ASCII)",
            );
            continue;
        }
        out.push((lower, secret));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n";

    fn parse(section: &str) -> Result<Config, ConfigErrors> {
        Config::parse(&format!("{LISTENER}[tracing]\n{section}"), Path::new("."))
    }

    #[test]
    fn absent_or_without_an_endpoint_is_off() {
        assert_eq!(
            Config::parse(LISTENER, Path::new(".")).unwrap().tracing,
            None
        );
        assert_eq!(parse("service_name = \"gw\"").unwrap().tracing, None);
    }

    #[test]
    fn defaults_and_the_http_path() {
        let t = parse("otlp_endpoint = \"http://127.0.0.1:4317\"")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:4317");
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.service_name, "cae-proxy");
        assert_eq!(t.sample_ratio, 1.0);
        assert!(t.headers.is_empty());
        let t = parse("otlp_endpoint = \"https://otel.example:4318\"\nprotocol = \"http/protobuf\"\nsample_ratio = 0.25\n[tracing.headers]\nX-Api-Key = \"k\"")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.endpoint, "https://otel.example:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.headers[0].0, "x-api-key");
        assert_eq!(t.headers[0].1.expose(), "k");
        let t =
            parse("otlp_endpoint = \"http://c:4318/custom/traces\"\nprotocol = \"http/protobuf\"")
                .unwrap()
                .tracing
                .unwrap();
        assert_eq!(t.endpoint, "http://c:4318/custom/traces");
    }

    #[test]
    fn every_mistake_has_its_path_and_no_secret_is_echoed() {
        let errs = parse(
            "otlp_endpoint = \"http://user:hunter2@c:4317\"\nprotocol = \"thrift\"\nservice_name = \" \"\nsample_ratio = 1.5\n[tracing.headers]\n\"bad name\" = \"x\"\ncontent-type = \"x\"\nk-bin = \"x\"\nx-missing = \"env:CAE_PROXY_TEST_SURELY_UNSET\"\nx-newline = \"a\\nsecretvalue\"",
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tracing.otlp_endpoint",
                "tracing.protocol",
                "tracing.service_name",
                "tracing.sample_ratio",
                "tracing.headers.bad name",
                "tracing.headers.content-type",
                "tracing.headers.k-bin",
                "tracing.headers.x-missing",
                "tracing.headers.x-newline",
            ]
        );
        let text = errs.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("secretvalue"), "{text}");
        assert!(errs.0.iter().all(|e| e.position.is_some()), "{text}");
    }

    #[test]
    fn tls_files_exist_go_together_and_need_https() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "not read at check time").unwrap();
        let pem = pem.display();
        let t = parse(&format!(
            "otlp_endpoint = \"https://c:4317\"\nca = \"{pem}\"\nclient_cert = \"{pem}\"\nclient_key = \"{pem}\""
        ))
        .unwrap()
        .tracing
        .unwrap();
        assert!(t.tls.ca.is_some() && t.tls.client.is_some());
        for (section, path) in [
            (
                format!("otlp_endpoint = \"http://c:4317\"\nca = \"{pem}\""),
                "tracing.otlp_endpoint",
            ),
            (
                format!("otlp_endpoint = \"https://c:4317\"\nclient_cert = \"{pem}\""),
                "tracing",
            ),
            (
                "otlp_endpoint = \"https://c:4317\"\nca = \"/nonexistent/ca.pem\"".to_string(),
                "tracing.ca",
            ),
        ] {
            let errs = parse(&section).unwrap_err();
            let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, [path], "{section}");
        }
    }

    #[test]
    fn a_grpc_endpoint_has_no_path_and_urls_are_http() {
        for bad in [
            "http://c:4317/v1/traces",
            "ftp://c",
            "c:4317",
            "http://c:4317/?a=1",
        ] {
            let errs = parse(&format!("otlp_endpoint = \"{bad}\"")).unwrap_err();
            assert_eq!(errs.0[0].path, "tracing.otlp_endpoint", "{bad}");
        }
    }
}
