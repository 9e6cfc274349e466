//! The floor of our HTTP stack, for the load benchmark: a plain hyper-util reverse proxy with the
//! same server builder, pooled client and single-threaded runtime as cae-proxy, and nothing else
//! (no routing, no token, no CAE checks, no metrics). `bareproxy LISTEN UPSTREAM [RS256_PUB_PEM]`.
//!
//! With a public key (SubjectPublicKeyInfo PEM), every request must carry `Authorization: Bearer
//! <JWS>` whose RS256 signature that key verifies (401 otherwise), and nothing else of the token
//! is read: the floor of "hyper-bare + the signature verification" for rotating tokens, measured
//! in the same process and cache conditions as cae-proxy's own verification.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::Engine;

use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

/// The RS256 public key of an SPKI PEM file.
fn load_key(path: &str) -> ParsedPublicKey {
    let pem = std::fs::read_to_string(path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &der).unwrap()
}

/// Whether the request's bearer JWS carries a signature `key` verifies over its signing input.
fn signed(headers: &http::HeaderMap, key: &ParsedPublicKey) -> bool {
    let Some(jws) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let Some((input, sig)) = jws.rsplit_once('.') else {
        return false;
    };
    let mut raw = [0u8; 2048];
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(sig, &mut raw)
        .is_ok_and(|n| key.verify_sig(input.as_bytes(), &raw[..n]).is_ok())
}

fn empty(status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(
            http_body_util::Empty::new()
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .expect("usage: bareproxy LISTEN UPSTREAM")
        .clone();
    let upstream: Uri = args
        .get(2)
        .expect("usage: bareproxy LISTEN UPSTREAM")
        .parse()
        .unwrap();
    let key: Option<Arc<ParsedPublicKey>> = args.get(3).map(|p| Arc::new(load_key(p)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(http);
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (client, upstream, key) = (client.clone(), upstream.clone(), key.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (client, upstream, key) = (client.clone(), upstream.clone(), key.clone());
                    async move {
                        if key.is_some_and(|k| !signed(req.headers(), &k)) {
                            return Ok::<_, Infallible>(empty(401));
                        }
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri = format!("{upstream}{}", pq.trim_start_matches('/'))
                            .parse()
                            .unwrap();
                        parts.headers.remove(http::header::HOST);
                        let req = Request::from_parts(parts, body.boxed());
                        let resp = match client.request(req).await {
                            Ok(r) => r.map(BodyExt::boxed),
                            Err(_) => empty(502),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
}
