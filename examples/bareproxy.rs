//! The floor of our HTTP stack, for the load benchmark: a plain hyper-util reverse proxy with the
//! same server builder, pooled client and single-threaded runtime as cae-proxy, and nothing else
//! (no routing, no token, no CAE checks, no metrics). `bareproxy LISTEN UPSTREAM`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Body = BoxBody<Bytes, hyper::Error>;

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
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri = format!("{upstream}{}", pq.trim_start_matches('/'))
                            .parse()
                            .unwrap();
                        parts.headers.remove(http::header::HOST);
                        let req = Request::from_parts(parts, body.boxed());
                        let resp = match client.request(req).await {
                            Ok(r) => r.map(BodyExt::boxed),
                            Err(_) => Response::builder()
                                .status(502)
                                .body(
                                    http_body_util::Empty::new()
                                        .map_err(|e: Infallible| match e {})
                                        .boxed(),
                                )
                                .unwrap(),
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
