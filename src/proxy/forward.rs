//! The request rewritten for its upstream (target, hop-by-hop headers, identity headers,
//! `X-Forwarded-*`, body limit), sent, and the response or upgraded tunnel relayed back.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::upstream::ForwardError;
use super::{body, headers, route, tunnel, Outcome, ProxyError};
use crate::auth::token::Principal;
use crate::config::Route;
use crate::metrics::RouteMetrics;
use crate::reply::{empty, BoxError, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};
use crate::telemetry::spans::Child;
use crate::telemetry::RequestTrace;

pub(super) async fn forward(
    (shared, snap): (&Arc<Shared>, &Snapshot),
    conn: &ConnInfo,
    (route, route_metrics): (&Route, &RouteMetrics),
    principal: Option<&Arc<Principal>>,
    (mut req, host): (Request<Incoming>, Option<HeaderValue>),
    (request_id, trace): (&HeaderValue, Option<&RequestTrace>),
    out: &mut Outcome<'_>,
) -> Result<Response<BoxedBody>, ProxyError> {
    let server = &snap.config.server;
    let upstream = route
        .upstream
        .as_ref()
        .and_then(|u| snap.upstreams.get(u))
        .ok_or_else(|| ProxyError::NoUpstream(route.name.clone()))?;
    // Only an upgrade to a protocol the route allows (WebSocket) is forwarded as one; any other
    // `Upgrade` is dropped and the request goes upstream as an ordinary request.
    let upgrade = match req.version() {
        Version::HTTP_11 => headers::allowed_upgrade(req.headers(), &route.upgrades),
        _ => None,
    };
    if upgrade.is_some() && !http_body::Body::is_end_stream(req.body()) {
        return Err(ProxyError::UpgradeWithBody);
    }
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    // Target: upstream scheme + authority + base path + (stripped) path + query. The common
    // case (no base path, no stripping) reuses the request's own path and query as they are.
    let base = upstream.cfg.url.path().trim_end_matches('/');
    let pq = match (
        base.is_empty() && !route.strip_prefix,
        req.uri().path_and_query(),
    ) {
        (true, Some(pq)) => pq.clone(),
        _ => {
            let path = if route.strip_prefix {
                route::strip(&route.path_prefix, req.uri().path())
            } else {
                req.uri().path().to_string()
            };
            let pq = match req.uri().query() {
                Some(q) => format!("{base}{path}?{q}"),
                None => format!("{base}{path}"),
            };
            http::uri::PathAndQuery::try_from(pq)
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
    };
    let uri = upstream
        .target(pq)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;

    let mut h = std::mem::take(req.headers_mut());
    headers::strip_hop_by_hop(&mut h, upgrade.as_ref());
    // Room for what is added below (Host, X-Forwarded-*, X-Request-Id and the identity headers),
    // so that the map grows at most once.
    h.reserve(5 + route.identity_headers.len());
    h.insert(HOST, upstream.host.clone());
    for (name, value) in headers::identity(route, principal.map(|p| &**p)) {
        match value {
            Some(v) => h.insert(name.clone(), v),
            None => h.remove(name),
        };
    }
    if !route.forward_authorization {
        h.remove(http::header::AUTHORIZATION);
    }
    let trusted = server.is_trusted(conn.peer.ip().to_canonical());
    headers::set_forwarded(
        &mut h,
        &conn.peer_value,
        trusted,
        if conn.tls { "https" } else { "http" },
        host,
    );
    h.insert(&headers::X_REQUEST_ID, request_id.clone());

    let method = req.method().clone();
    // `[tracing]` on: the upstream span, named in `traceparent`. Off: `traceparent` and
    // `tracestate` go on untouched, like every end-to-end header.
    let span = trace.map(|t| t.upstream(&method, upstream.authority.as_ref(), &mut h));
    let incoming = req.into_body();
    let body: BoxedBody = if upgrade.is_some() {
        empty()
    } else {
        body::Paced::new(incoming, server).boxed()
    };
    let mut up = Request::new(body);
    *up.method_mut() = method;
    *up.uri_mut() = uri;
    *up.version_mut() = Version::HTTP_11;
    *up.headers_mut() = h;

    let t0 = Instant::now();
    let result = upstream.send(up).await;
    route_metrics
        .upstream_duration
        .observe(t0.elapsed().as_secs_f64());
    if let Some(span) = span {
        upstream_span(span, &result);
    }
    let mut resp = result?;
    out.upstream_status = Some(resp.status().as_u16());

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // A 101 is relayed only as the answer to the upgrade we forwarded, to a protocol we offered:
    // any other switch would hand the client a tunnel nobody authorised.
    if switching
        && !upgrade
            .as_ref()
            .is_some_and(|u| headers::switched_as_offered(resp.headers(), u))
    {
        return Err(ProxyError::Forward(ForwardError::UnofferedSwitch));
    }
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let grant = principal.map(|p| tunnel::Grant {
            route: route.clone(),
            principal: p.clone(),
            client_ip: out.client_ip,
        });
        tunnel::spawn(
            shared.clone(),
            client_upgrade,
            hyper::upgrade::on(&mut resp),
            grant,
            request_id.to_str().unwrap_or_default().to_string(),
        );
    }
    let (mut parts, body) = resp.into_parts();
    let relayed_upgrade = match switching {
        true => parts.headers.get(http::header::UPGRADE).cloned(),
        false => None,
    };
    headers::strip_hop_by_hop(&mut parts.headers, relayed_upgrade.as_ref());
    // The upstream's HTTP version is a property of that hop only: an HTTP/1.0 upstream must not
    // make the client's HTTP/1.1 connection answer in HTTP/1.0 and close after each response.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed(),
    ))
}

/// Ends the `upstream` span when the response head arrives (or the send fails): the status, or
/// the failure's kind. A streamed body goes on after it, like `upstream_duration`.
fn upstream_span(mut span: Child, result: &Result<Response<Incoming>, ForwardError>) {
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            span.set("http.response.status_code", i64::from(status));
            // A client span's 4xx is a failure too (the server's is the caller's fault).
            if status >= 400 {
                span.fail_status(status);
            }
        }
        Err(e) => span.fail(e.kind()),
    }
    span.end();
}
