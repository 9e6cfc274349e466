//! Envoy's gRPC authorization API, `envoy.service.auth.v3.Authorization/Check` (ext_authz
//! `grpc_service`, Istio `envoyExtAuthzGrpc`), served on the authorization listener's own HTTP/2
//! connections: a request with `Content-Type: application/grpc…` goes to the tonic-generated
//! [`AuthorizationServer`] (a tower service), which calls [`Checker::check`].
//!
//! The original request is `attributes.request.http` (method, host, path with the query, scheme,
//! headers — `header_map` when Envoy sends raw headers); the client address is
//! `attributes.source.address` when Envoy's own address is in `server.trusted_proxies`, else
//! Envoy's. Allowed: status OK and an `OkHttpResponse` setting the identity headers
//! (`OVERWRITE_IF_EXISTS_OR_ADD`) and removing those the principal does not fill
//! (`headers_to_remove`), and `DPoP-Nonce` for the client's response when there is a new nonce
//! (`response_headers_to_add`). Refused: `UNAUTHENTICATED` (401) or `PERMISSION_DENIED` and a
//! `DeniedHttpResponse` with the proxy's own status, headers and body. A CheckRequest without
//! the request attributes, or with unreadable headers, is a gRPC `INVALID_ARGUMENT`: Envoy then
//! fails closed (`status_on_error`).

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HeaderValue as PbHeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::rpc;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;

use super::check::{check, CheckError, Original, Verdict};
use crate::proxy::{headers, record, Ending, Outcome, RequestRole, Seen};
use crate::reply::{Answer, BoxError, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::Shared;

/// The Check service of one connection.
pub type Service = AuthorizationServer<Checker>;

/// Answers the CheckRequests of one connection (the gateway's).
#[derive(Clone)]
pub struct Checker {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// The Check service for requests of `conn`.
pub fn service(shared: &Arc<Shared>, conn: &Arc<ConnInfo>) -> Service {
    AuthorizationServer::new(Checker {
        shared: shared.clone(),
        conn: conn.clone(),
    })
}

/// A gRPC request (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Hands a gRPC request to the Check service (which answers an unknown method with gRPC
/// `UNIMPLEMENTED` itself). The answer of a unary call is one message and its trailers: read
/// whole, then sent as our body type (tonic's body is not `Sync`).
pub async fn serve(mut svc: Service, req: Request<Incoming>) -> Response<BoxedBody> {
    use tonic::codegen::Service as _;
    let resp = match svc.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(whole) => {
            let trailers = whole.trailers().cloned();
            let mut frames = vec![Ok::<_, BoxError>(Frame::data(whole.to_bytes()))];
            frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Response::from_parts(parts, BodyExt::boxed(body))
        }
        Err(status) => status.into_http(),
    }
}

/// A malformed CheckRequest.
fn invalid(why: impl Into<String>) -> tonic::Status {
    tonic::Status::invalid_argument(why.into())
}

/// The original request's headers: `header_map` when Envoy sends raw headers, else `headers`;
/// pseudo-headers are left out (their values are the request's other attributes).
fn header_map(http: &HttpRequest) -> Result<HeaderMap, tonic::Status> {
    let mut out = HeaderMap::new();
    let mut add = |k: &str, v: &[u8]| -> Result<(), tonic::Status> {
        if k.starts_with(':') {
            return Ok(());
        }
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| invalid(format!("header name {k:?} is not valid")))?;
        let value = HeaderValue::from_bytes(v)
            .map_err(|_| invalid(format!("the value of header {k} is not valid")))?;
        out.append(name, value);
        Ok(())
    };
    match http.header_map.as_ref().filter(|m| !m.headers.is_empty()) {
        Some(raw) => {
            for h in &raw.headers {
                let v = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, v)?;
            }
        }
        None => {
            for (k, v) in &http.headers {
                add(k, v.as_bytes())?;
            }
        }
    }
    Ok(out)
}

/// An `OVERWRITE_IF_EXISTS_OR_ADD` header for Envoy (`value` when it is text, else `raw_value`).
fn overwrite(name: &HeaderName, value: &HeaderValue) -> HeaderValueOption {
    let (text, raw) = match value.to_str() {
        Ok(t) => (t.to_string(), Vec::new()),
        Err(_) => (String::new(), value.as_bytes().to_vec()),
    };
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: name.as_str().to_string(),
            value: text,
            raw_value: raw,
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A refusal as Envoy relays it to the client.
fn denied(answer: Answer) -> CheckResponse {
    let code = if answer.status == StatusCode::UNAUTHORIZED {
        tonic::Code::Unauthenticated
    } else {
        tonic::Code::PermissionDenied
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(answer.status.as_u16()),
            }),
            headers: answer
                .headers
                .iter()
                .map(|(n, v)| overwrite(n, v))
                .collect(),
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        })),
        ..Default::default()
    }
}

fn allowed(
    set: &[(HeaderName, HeaderValue)],
    remove: &[HeaderName],
    respond: &[(HeaderName, HeaderValue)],
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set.iter().map(|(n, v)| overwrite(n, v)).collect(),
            headers_to_remove: remove.iter().map(|n| n.as_str().to_string()).collect(),
            response_headers_to_add: respond.iter().map(|(n, v)| overwrite(n, v)).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Checker {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let start = Instant::now();
        let (shared, conn) = (&self.shared, &self.conn);
        let snap = shared.snapshot.load_full();
        let req = request.into_inner();
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .ok_or_else(|| invalid("attributes.request.http is missing"))?;
        let headers = header_map(http)?;
        let request_id = headers::request_id(&headers);
        let rid = request_id.to_str().unwrap_or_default();
        // Envoy's client, believed only from a trusted Envoy.
        let peer = conn.peer.ip();
        let source = attrs
            .and_then(|a| a.source.as_ref())
            .and_then(|s| s.address.as_ref())
            .and_then(|a| match a.address.as_ref()? {
                Address::SocketAddress(s) => headers::parse_addr(&s.address),
                _ => None,
            });
        let client_ip = match source {
            Some(ip) if snap.config.server.is_trusted(peer.to_canonical()) => ip.to_canonical(),
            _ => peer.to_canonical(),
        };
        let mut out = Outcome::new(RequestRole::Authz, client_ip);
        out.dialect = Some("grpc");
        let (path, query) = match http.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (http.path.as_str(), None),
        };
        let host = (!http.host.is_empty()).then_some(http.host.as_str());
        let method = Method::from_bytes(http.method.as_bytes());
        let seen = method
            .as_ref()
            .ok()
            .and_then(|m| Seen::when_logged(m, path, host));
        let verdict = match method {
            Err(_) => Err(CheckError::BadCheck(format!(
                "{:?} is not an HTTP method",
                http.method
            ))),
            Ok(_) if !path.starts_with('/') => Err(CheckError::BadCheck(format!(
                "path {:?} is not an origin-form target",
                http.path
            ))),
            Ok(method) => {
                let original = Original {
                    method,
                    scheme: if http.scheme == "https" {
                        "https"
                    } else {
                        "http"
                    },
                    host,
                    path,
                    query,
                    headers: &headers,
                    client_ip,
                };
                check(shared, &snap, conn, &original, rid, &mut out).await
            }
        };
        let mut failure = None;
        let (status, bytes, response) = match verdict {
            Ok(Verdict::Allow {
                set,
                remove,
                respond,
            }) => (200, 0, allowed(&set, &remove, &respond)),
            Ok(Verdict::Deny(mut answer)) => {
                answer
                    .headers
                    .insert(&headers::X_REQUEST_ID, request_id.clone());
                (answer.status.as_u16(), answer.body.len(), denied(answer))
            }
            Err(e) => {
                failure = Some(e.to_string());
                out.reason = e.status().1;
                let mut answer = e.answer(rid);
                answer
                    .headers
                    .insert(&headers::X_REQUEST_ID, request_id.clone());
                (answer.status.as_u16(), answer.body.len(), denied(answer))
            }
        };
        let end = Ending {
            request_id: rid,
            status,
            bytes: Some(bytes as u64),
            elapsed: start.elapsed(),
            failure,
        };
        record(shared, &snap, conn, &out, seen, end);
        Ok(tonic::Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap as PbHeaderMap;

    #[test]
    fn headers_come_from_the_map_or_the_raw_header_map_without_pseudo_headers() {
        let mut http = HttpRequest::default();
        http.headers.insert(":path".into(), "/x".into());
        http.headers
            .insert("authorization".into(), "Bearer t".into());
        let h = header_map(&http).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["authorization"], "Bearer t");
        // With encode_raw_headers, header_map wins, and raw values may be any bytes.
        http.header_map = Some(PbHeaderMap {
            headers: vec![
                PbHeaderValue {
                    key: "x-a".into(),
                    value: String::new(),
                    raw_value: b"caf\xc3\xa9".to_vec(),
                },
                PbHeaderValue {
                    key: "x-a".into(),
                    value: "2".into(),
                    raw_value: Vec::new(),
                },
            ],
        });
        let h = header_map(&http).unwrap();
        let all: Vec<&[u8]> = h.get_all("x-a").iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(all, [&b"caf\xc3\xa9"[..], b"2"]);
        assert!(!h.contains_key("authorization"));
        // An invalid name refuses the CheckRequest.
        http.header_map = None;
        http.headers.insert("bad name".into(), "v".into());
        assert_eq!(
            header_map(&http).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn refusals_keep_status_headers_and_body() {
        let mut a = Answer::json_error(StatusCode::NOT_FOUND, "no_route", "m", "r");
        a.headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"\""),
        );
        let r = denied(a);
        assert_eq!(r.status.unwrap().code, tonic::Code::PermissionDenied as i32);
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("not a denial")
        };
        assert_eq!(d.status.unwrap().code, 404);
        assert_eq!(
            d.body,
            r#"{"error":"no_route","message":"m","request_id":"r"}"#
        );
        let keys: Vec<&str> = d
            .headers
            .iter()
            .map(|h| h.header.as_ref().unwrap().key.as_str())
            .collect();
        assert_eq!(keys, ["content-type", "www-authenticate"]);
        // A value that is no text goes as raw bytes.
        let o = overwrite(
            &HeaderName::from_static("x-b"),
            &HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        let h = o.header.unwrap();
        assert_eq!(
            (h.value.as_str(), h.raw_value.as_slice()),
            ("", &b"\xff"[..])
        );
    }
}
