//! The HTTP dialects of the authorization service. The original request arrives in one of two
//! forms, told apart by the check's path (the listener's `path_prefix`, `/authz` by default):
//!
//! - **path-appended** (Envoy ext_authz `http_service` with `path_prefix`, nginx
//!   `proxy_pass …/authz$request_uri`, Caddy `uri /authz{uri}`): `/authz` + the original path
//!   and query; the original host in `Host`; the method is the check's own (Envoy) or
//!   `X-Forwarded-Method` (nginx and Caddy, whose check is a `GET`).
//! - **forward auth** (Traefik `ForwardAuth`, Caddy `forward_auth` without `uri`): exactly
//!   `/authz`, the original in `X-Forwarded-Method`, `X-Forwarded-Uri` and `X-Forwarded-Host`
//!   (else `Host`).
//!
//! `X-Forwarded-Proto` names the original scheme in both. These headers describe the request
//! being checked and are taken from whoever reaches the listener (keep it reachable by the
//! gateways only: docs/security.md); the client address is read from `X-Forwarded-For` (or
//! `Forwarded`) only when the gateway is in `server.trusted_proxies`. A header of these that
//! occurs twice is refused: a client's copy next to the gateway's.
//!
//! Answers: 200 with the identity headers to copy and `x-envoy-auth-headers-to-remove` naming
//! those to drop, or the proxy's own refusal (status, `WWW-Authenticate`, JSON body), its body
//! repeated in `X-Cae-Body` when the check carries `X-Cae-Body-Header` (nginx, which keeps only
//! headers of the answer).

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

use super::check::{check, CheckError, Original, Verdict};
use crate::config::{Authz, ListenerRole};
use crate::proxy::{headers, record, Ending, Outcome, RequestRole, Seen};
use crate::reply::{empty, Answer, BoxedBody};
use crate::server::conn::ConnInfo;
use crate::state::{Shared, Snapshot};

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// Envoy's HTTP ext_authz: request headers it removes before forwarding an allowed request.
static ENVOY_HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");
/// On a check: repeat a refusal's body in [`X_CAE_BODY`].
static X_CAE_BODY_HEADER: HeaderName = HeaderName::from_static("x-cae-body-header");
/// On a refusal: its JSON body, for gateways that keep only the answer's headers (nginx).
static X_CAE_BODY: HeaderName = HeaderName::from_static("x-cae-body");

/// How the check carried the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    PathAppended,
    ForwardAuth,
}

impl Dialect {
    fn label(self) -> &'static str {
        match self {
            Dialect::PathAppended => "path",
            Dialect::ForwardAuth => "forward_auth",
        }
    }
}

/// The original request's line as the check describes it.
#[derive(Debug)]
struct Asked<'r> {
    dialect: Dialect,
    method: Method,
    scheme: &'r str,
    host: Option<&'r str>,
    path: &'r str,
    query: Option<&'r str>,
}

/// The one value of header `name`, if any; two or more, or one that is not text, is a bad check.
fn one<'h>(h: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, CheckError> {
    let mut all = h.get_all(name).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(CheckError::BadCheck(format!("more than one {name} header")));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| CheckError::BadCheck(format!("{name} is not text")))
}

/// Reads the original request out of a check made to `prefix`.
fn asked<'r, B>(req: &'r Request<B>, prefix: &str, tls: bool) -> Result<Asked<'r>, CheckError> {
    let h = req.headers();
    let scheme = match one(h, &headers::X_FORWARDED_PROTO)? {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(p) => {
            return Err(CheckError::BadCheck(format!(
                "X-Forwarded-Proto {p:?} is neither http nor https"
            )))
        }
        None if tls => "https",
        None => "http",
    };
    let forwarded_method = one(h, &X_FORWARDED_METHOD)?
        .map(|m| {
            Method::from_bytes(m.as_bytes())
                .map_err(|_| CheckError::BadCheck(format!("{m:?} is not an HTTP method")))
        })
        .transpose()?;
    let path = req.uri().path();
    if path == prefix {
        let uri = one(h, &X_FORWARDED_URI)?.ok_or_else(|| {
            CheckError::BadCheck(format!(
                "a check of {prefix} itself needs X-Forwarded-Uri (or ask at {prefix}/<original path>)"
            ))
        })?;
        let method = forwarded_method.ok_or_else(|| {
            CheckError::BadCheck("a check with X-Forwarded-Uri needs X-Forwarded-Method".into())
        })?;
        if !uri.starts_with('/') {
            return Err(CheckError::BadCheck(format!(
                "X-Forwarded-Uri {uri:?} is not an origin-form target (/path?query)"
            )));
        }
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        return Ok(Asked {
            dialect: Dialect::ForwardAuth,
            method,
            scheme,
            host: one(h, &headers::X_FORWARDED_HOST)?.or_else(|| headers::authority(req)),
            path,
            query,
        });
    }
    match path.strip_prefix(prefix).filter(|p| p.starts_with('/')) {
        Some(original) => Ok(Asked {
            dialect: Dialect::PathAppended,
            method: forwarded_method.unwrap_or_else(|| req.method().clone()),
            scheme,
            host: headers::authority(req),
            path: original,
            query: req.uri().query(),
        }),
        None => Err(CheckError::BadCheck(format!(
            "checks are asked at {prefix}/<original path> or at {prefix} with X-Forwarded-Uri"
        ))),
    }
}

/// This listener's `[listener.authz]` in the snapshot in force (the defaults when a reload took
/// it away: the socket keeps its role until a restart).
fn settings<'s>(snap: &'s Snapshot, listener: &str) -> std::borrow::Cow<'s, Authz> {
    snap.config
        .listeners
        .iter()
        .find(|l| l.name == listener && l.role == ListenerRole::Authz)
        .and_then(|l| l.authz.as_ref())
        .map_or_else(
            || std::borrow::Cow::Owned(Authz::default()),
            std::borrow::Cow::Borrowed,
        )
}

/// Answers one HTTP check.
pub async fn serve(
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<BoxedBody> {
    let start = Instant::now();
    let snap = shared.snapshot.load_full();
    let request_id = headers::request_id(req.headers());
    let rid = request_id.to_str().unwrap_or_default();
    let server = &snap.config.server;
    let client_ip = headers::client_ip(conn.peer.ip(), req.headers(), server);
    let mut out = Outcome::new(RequestRole::Authz, client_ip);
    let authz = settings(&snap, &conn.listener);
    let seen;
    let verdict = match asked(&req, &authz.path_prefix, conn.tls) {
        Ok(a) => {
            out.dialect = Some(a.dialect.label());
            seen = Seen::when_logged(&a.method, a.path, a.host);
            let original = Original {
                method: a.method,
                scheme: a.scheme,
                host: a.host,
                path: a.path,
                query: a.query,
                headers: req.headers(),
                client_ip,
            };
            check(shared, &snap, conn, &original, rid, &mut out).await
        }
        Err(e) => {
            seen = Seen::when_logged(req.method(), req.uri().path(), headers::authority(&req));
            Err(e)
        }
    };
    let mut failure = None;
    let mut bytes = 0;
    let mut resp = match verdict {
        Ok(Verdict::Allow {
            set,
            remove,
            respond,
        }) => {
            let mut r = Response::new(empty());
            let h = r.headers_mut();
            // One header list: the gateway's configuration sends the identity headers upstream
            // and `DPoP-Nonce` to the client (docs/deploy/gateways.md).
            for (name, value) in set.into_iter().chain(respond) {
                h.insert(name, value);
            }
            if !remove.is_empty() {
                let names: Vec<&str> = remove.iter().map(HeaderName::as_str).collect();
                if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                    h.insert(&ENVOY_HEADERS_TO_REMOVE, v);
                }
            }
            r
        }
        Ok(Verdict::Deny(answer)) => {
            bytes = answer.body.len() as u64;
            refusal(answer, req.headers())
        }
        Err(e) => {
            failure = Some(e.to_string());
            out.reason = e.status().1;
            let answer = e.answer(rid);
            bytes = answer.body.len() as u64;
            refusal(answer, req.headers())
        }
    };
    resp.headers_mut()
        .insert(&headers::X_REQUEST_ID, request_id.clone());
    let end = Ending {
        request_id: rid,
        status: resp.status().as_u16(),
        bytes: Some(bytes),
        elapsed: start.elapsed(),
        failure,
    };
    record(shared, &snap, conn, &out, seen, end);
    resp
}

/// A refusal as an HTTP answer; its body repeated in `X-Cae-Body` when the check asked for it.
fn refusal(mut answer: Answer, check: &HeaderMap) -> Response<BoxedBody> {
    if check.contains_key(&X_CAE_BODY_HEADER) {
        // JSON escapes control characters; anything else a header value may carry.
        if let Ok(v) = HeaderValue::from_bytes(&answer.body) {
            answer.headers.insert(&X_CAE_BODY, v);
        }
    }
    answer.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    type Line<'a> = (
        Dialect,
        String,
        &'a str,
        Option<&'a str>,
        &'a str,
        Option<&'a str>,
    );

    fn line<'a>(a: &Asked<'a>) -> Line<'a> {
        (
            a.dialect,
            a.method.to_string(),
            a.scheme,
            a.host,
            a.path,
            a.query,
        )
    }

    #[test]
    fn path_appended_checks_of_envoy_nginx_and_caddy() {
        // Envoy: the original method, Host, path and query after the prefix.
        let r = check("POST", "/authz/api/orders?id=7", &[("host", "api.example")]);
        let a = asked(&r, "/authz", false).unwrap();
        let want = (
            Dialect::PathAppended,
            "POST".into(),
            "http",
            Some("api.example"),
            "/api/orders",
            Some("id=7"),
        );
        assert_eq!(line(&a), want);
        // nginx: a GET naming the original method; X-Forwarded-Host and -Uri are not believed
        // in this form (nginx passes a client's copies along).
        let r = check(
            "GET",
            "/authz/api",
            &[
                ("host", "api.example"),
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-uri", "/admin"),
            ],
        );
        let a = asked(&r, "/authz", false).unwrap();
        let want = (
            Dialect::PathAppended,
            "DELETE".into(),
            "https",
            Some("api.example"),
            "/api",
            None,
        );
        assert_eq!(line(&a), want);
        // The prefix is matched on a segment boundary.
        assert!(asked(&check("GET", "/authzx/api", &[]), "/authz", false).is_err());
        assert!(asked(&check("GET", "/api", &[]), "/authz", false).is_err());
    }

    #[test]
    fn forward_auth_checks_of_traefik() {
        let r = check(
            "GET",
            "/authz",
            &[
                ("host", "cae:9100"),
                ("x-forwarded-method", "PUT"),
                ("x-forwarded-host", "api.example"),
                ("x-forwarded-uri", "/api/x?y=1"),
            ],
        );
        let a = asked(&r, "/authz", true).unwrap();
        let want = (
            Dialect::ForwardAuth,
            "PUT".into(),
            "https",
            Some("api.example"),
            "/api/x",
            Some("y=1"),
        );
        assert_eq!(line(&a), want);
        // Without X-Forwarded-Host, the Host.
        let r = check(
            "GET",
            "/authz",
            &[
                ("host", "api.example"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/"),
            ],
        );
        assert_eq!(
            asked(&r, "/authz", false).unwrap().host,
            Some("api.example")
        );
    }

    #[test]
    fn checks_that_do_not_describe_a_request() {
        for headers in [
            vec![("x-forwarded-method", "GET")],
            vec![("x-forwarded-uri", "/api")],
            vec![("x-forwarded-method", "GET"), ("x-forwarded-uri", "api")],
            vec![("x-forwarded-method", "G(T"), ("x-forwarded-uri", "/api")],
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/api"),
            ],
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/api"),
                ("x-forwarded-proto", "ftp"),
            ],
        ] {
            let r = check("GET", "/authz", &headers);
            assert!(
                matches!(asked(&r, "/authz", false), Err(CheckError::BadCheck(_))),
                "{headers:?}"
            );
        }
    }
}
