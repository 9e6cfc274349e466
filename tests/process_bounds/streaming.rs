//! Streaming: a 64 MiB body goes through the proxy both ways without being buffered, as this
//! process's resident memory (`VmRSS`: proxy, upstream and client together) shows.

use bytes::Bytes;
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;

use crate::common::*;
use crate::{rss_kib, SERIAL};

#[tokio::test]
async fn a_64_mib_body_streams_both_ways_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    let up = EchoUpstream::start(listener().await).expect("echo upstream");
    let h = Harness::start(
        &Toml::new()
            .server("max_request_body = 134217728")
            .public()
            .app(&up.url())
            .route(
                "app",
                "/",
                "hosts = [\"app.test\", \"*.app.test\", \"127.0.0.1\"]\nauth = \"none\"",
            )
            .build(),
    )
    .await;
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024; // 64 MiB
    let before = rss_kib();
    let stream =
        futures_util::stream::iter((0..CHUNKS).map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![7u8; CHUNK])))
        }));
    let body = StreamBody::new(stream);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(h.url("public", "/echo-body"))
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let mut total = 0usize;
    let mut peak = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|b| *b == 7));
        total += chunk.len();
        peak = peak.max(rss_kib());
    }
    assert_eq!(total, CHUNK * CHUNKS);
    // Proxy, upstream and client share this process: 64 MiB buffered anywhere would show.
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "RSS grew by {} KiB",
        peak - before
    );
}
