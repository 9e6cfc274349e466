//! HTTP/2 floods against the real listener (rapid reset through a client library and as raw
//! frames, endless CONTINUATION), each over h2c and over TLS, checking beside what the upstream
//! received that this process's open descriptors (`/proc/self/fd`) come back and its resident
//! memory (`VmRSS`) stays flat.

use std::time::{Duration, Instant};

use crate::common::hostile::*;
use crate::{fds_settle, open_fds, rss_kib, SERIAL};
use http::StatusCode;

/// 2 000 requests reset at once through the `h2` client library (which may drop a reset stream
/// before its HEADERS reach the wire: `rapid_reset_raw` sends the frames themselves): at most one
/// upstream request per stream (each reset is cancelled upstream too), the proxy keeps serving,
/// descriptors come back.
async fn rapid_reset(t: Transport) {
    let env = Env::start().await;
    let fds0 = open_fds();
    let before = env.upstream_requests().await;
    let send = h2_client(&env, t).await;
    const ATTEMPTS: usize = 2_000;
    let mut sent = 0;
    let mut ended = None;
    let t0 = Instant::now();
    let mut s = send;
    let slow = format!("{}://app.test/slow?ms=2000", t.scheme());
    for _ in 0..ATTEMPTS {
        s = match tokio::time::timeout(Duration::from_secs(5), s.ready()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                ended = Some(e.to_string());
                break;
            }
            Err(_) => {
                ended = Some("stalled".into());
                break;
            }
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(&slow)
            .body(())
            .unwrap();
        match s.send_request(req, false) {
            Ok((_, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        }
    }
    let flood = t0.elapsed();
    let reached = env.upstream_requests().await - before;
    println!(
        "{t:?} rapid reset: {sent} HEADERS+RST_STREAM in {flood:?}, ended by {ended:?}; upstream received {reached}"
    );
    // Each reset stream is cancelled upstream too; the flood never turns into `sent` upstream
    // requests held open (/slow would hold each for 2 s).
    assert!(reached <= sent, "{t:?}: {reached} > {sent}");
    // A normal client is still served at once.
    let t1 = Instant::now();
    let (status, _) = h2_get(
        h2_client(&env, t).await,
        &format!("{}://app.test/ok", t.scheme()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "{t:?}: {:?}",
        t1.elapsed()
    );
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    assert!(fds <= fds0 + 8, "{t:?}: fds {fds0} → {fds}");
}

#[tokio::test]
async fn h2_rapid_reset_does_not_multiply_upstream_work_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_rapid_reset_does_not_multiply_upstream_work_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset(Transport::Tls).await;
}

/// The CVE-2023-44487 pattern on the wire, which a client library may not produce (it can drop a
/// stream reset before its HEADERS were written): HEADERS then RST_STREAM(CANCEL) for 2 000
/// new streams, as fast as the connection takes them. The server ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM once more than 50 streams were reset before it accepted them
/// (`max_pending_accept_reset_streams`), forwards (almost) none of them, and keeps serving others.
async fn rapid_reset_raw(t: Transport) {
    let env = Env::start().await;
    let fds0 = open_fds();
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(&env, t).await;
    const ATTEMPTS: u32 = 2_000;
    let mut sent = 0u32;
    let t0 = Instant::now();
    for i in 0..ATTEMPTS {
        let stream = 1 + 2 * i;
        let req = c.request("/slow?ms=2000");
        let ok = c.frame(HEADERS, END_HEADERS, stream, &req).await.is_ok()
            && c.frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
                .await
                .is_ok();
        if !ok {
            break;
        }
        sent += 1;
    }
    let flood = t0.elapsed();
    let (frames, closed) = c.read_frames(Duration::from_secs(2)).await;
    let code = goaway_code(&frames);
    let reached = env.upstream_requests().await - before;
    println!(
        "{t:?} raw rapid reset: {sent} HEADERS+RST_STREAM written in {flood:?}; GOAWAY {code:?}, closed {closed}; upstream received {reached}"
    );
    assert!(
        closed || code.is_some(),
        "{t:?}: the server kept the flood open"
    );
    if let Some(code) = code {
        assert_eq!(code, ENHANCE_YOUR_CALM, "{t:?}: GOAWAY code");
    }
    assert!(
        (reached as u32) < sent.min(60),
        "{t:?}: {reached} of {sent} reset streams reached the upstream"
    );
    // A normal client is still served at once.
    let t1 = Instant::now();
    let (status, _) = h2_get(
        h2_client(&env, t).await,
        &format!("{}://app.test/ok", t.scheme()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "{t:?}: {:?}",
        t1.elapsed()
    );
    drop(c);
    let fds = fds_settle(fds0 + 8, Duration::from_secs(10)).await;
    assert!(fds <= fds0 + 8, "{t:?}: fds {fds0} → {fds}");
}

#[tokio::test]
async fn h2_raw_rapid_reset_is_not_forwarded_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset_raw(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_raw_rapid_reset_is_not_forwarded_and_the_proxy_stays_responsive() {
    let _serial = SERIAL.lock().await;
    rapid_reset_raw(Transport::Tls).await;
}

/// Endless CONTINUATION frames of valid fields, never END_HEADERS: the server stops reading
/// (GOAWAY or close) long before 64 MiB, memory stays flat, nothing reaches the upstream.
async fn continuation_flood(t: Transport) {
    let env = Env::start().await;
    let rss0 = rss_kib();
    let before = env.upstream_requests().await;
    let mut c = RawH2::connect(&env, t).await;
    let req = c.request("/flood");
    c.frame(HEADERS, 0, 1, &req).await.unwrap();
    let field = RawH2::block(&[("x-flood", &"a".repeat(100))]);
    let payload: Vec<u8> = field
        .iter()
        .copied()
        .cycle()
        .take(field.len() * (16_000 / field.len()))
        .collect();
    let mut sent = 0usize;
    let t0 = Instant::now();
    while sent < 64 << 20 && t0.elapsed() < Duration::from_secs(20) {
        if tokio::time::timeout(
            Duration::from_secs(2),
            c.frame(CONTINUATION, 0, 1, &payload),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            break;
        }
        sent += payload.len();
    }
    let (frames, closed) = c.read_frames(Duration::from_secs(3)).await;
    let code = goaway_code(&frames);
    let grown = rss_kib().saturating_sub(rss0);
    println!(
        "{t:?} CONTINUATION flood: sent {} KiB before the server stopped reading; GOAWAY {code:?}, closed {closed}, RSS +{grown} KiB",
        sent / 1024
    );
    assert!(
        closed || code.is_some(),
        "{t:?}: the server kept the flood open"
    );
    if let Some(code) = code {
        assert_eq!(code, ENHANCE_YOUR_CALM, "{t:?}: GOAWAY code");
    }
    assert!(
        sent < 64 << 20,
        "{t:?}: the server read 64 MiB of header block"
    );
    assert_eq!(env.upstream_requests().await, before, "{t:?}: forwarded");
    assert!(grown < 64 * 1024, "{t:?}: RSS grew by {grown} KiB");
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    continuation_flood(Transport::H2c).await;
}

#[tokio::test]
async fn h2_tls_continuation_flood_is_cut_off_before_the_upstream() {
    let _serial = SERIAL.lock().await;
    continuation_flood(Transport::Tls).await;
}
