//! Resource bounds measured on the real binary (`cae-proxy run`, the build `cargo test` made):
//! open file descriptors (entries of `/proc/<pid>/fd`) and resident memory (`VmRSS` of
//! `/proc/<pid>/status`) of the proxy process alone, before, during (sampled every 5 ms) and after
//! four loads: 300 slow clients, 300 idle keep-alive connections, one HTTP/2 connection carrying
//! many streams, and a flood of 2 000 signed SET pushes. During a load the descriptors stay within
//! the connections it opens plus a constant; after it they return exactly to the baseline within a
//! bounded wait, and memory to within a generous margin of it. The echo upstream, the development
//! transmitter and the attacking clients live in this test process, so none of their descriptors or
//! memory is counted. `--nocapture` prints the numbers (docs/security.md, "Resource bounds,
//! measured").

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::transmitter::{DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors the proxy may open beyond a load's own connections (listener re-arm, a pooled
/// connection to the transmitter's JWKS, timers): a constant, whatever the load's size.
const SLACK_FDS: usize = 16;
/// Concurrent streams the HTTP/2 connection may carry.
const MAX_H2_STREAMS: usize = 64;

/// The proxy process, read from `/proc`.
#[derive(Clone, Copy)]
struct Proc(u32);

impl Proc {
    fn fds(self) -> usize {
        procfs::open_fds(&self.0.to_string())
    }

    fn rss_kib(self) -> u64 {
        procfs::rss_kib(&self.0.to_string())
    }

    /// Waits (bounded) until the descriptor count has not changed for 1.5 s (idle pooled upstream
    /// connections close after the upstream's 1 s `idle_timeout`); returns (fds, RSS KiB).
    async fn quiet(self) -> (usize, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.fds();
        let mut since = Instant::now();
        while since.elapsed() < Duration::from_millis(1500) && Instant::now() < deadline {
            // Stillness is the condition: the count must stay put for a while.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = self.fds();
            if n != last {
                last = n;
                since = Instant::now();
            }
        }
        (last, self.rss_kib())
    }

    /// Waits (bounded) until the descriptor count is exactly `target`; returns the last count
    /// and how long it took.
    async fn settle(self, target: usize, within: Duration) -> (usize, Duration) {
        let t0 = Instant::now();
        let n = poll_until(within, || async {
            let n = self.fds();
            (n == target).then_some(n)
        })
        .await
        .unwrap_or_else(|| self.fds());
        (n, t0.elapsed())
    }
}

/// Samples the proxy's descriptors and RSS every 5 ms on its own thread, keeping the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_fds: Arc<AtomicUsize>,
    peak_rss: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Sampler {
    fn start(p: Proc) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_fds = Arc::new(AtomicUsize::new(p.fds()));
        let peak_rss = Arc::new(AtomicU64::new(p.rss_kib()));
        let (s, f, r) = (stop.clone(), peak_fds.clone(), peak_rss.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                f.fetch_max(p.fds(), Ordering::Relaxed);
                r.fetch_max(p.rss_kib(), Ordering::Relaxed);
                // The sampling period.
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            peak_fds,
            peak_rss,
            thread: Some(thread),
            started: Instant::now(),
        }
    }

    /// Stops sampling; returns (peak fds, peak RSS KiB).
    fn stop(mut self) -> (usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.peak_fds.load(Ordering::Relaxed),
            self.peak_rss.load(Ordering::Relaxed),
        )
    }
}

/// One load's measurements.
struct Row {
    load: String,
    outcome: String,
    fds: (usize, usize, usize),
    rss: (u64, u64, u64),
    settled_in: Duration,
    took: Duration,
}

impl Row {
    fn print(&self) {
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "| {} | {} | {} → {} → {} (back in {:.1} s) | {:.1} → {:.1} → {:.1} MiB | {:.1} s |",
            self.load,
            self.outcome,
            self.fds.0,
            self.fds.1,
            self.fds.2,
            self.settled_in.as_secs_f64(),
            mib(self.rss.0),
            mib(self.rss.1),
            mib(self.rss.2),
            self.took.as_secs_f64()
        );
    }
}

/// Ends a load: stops the sampler, waits for the descriptors to come back exactly, and checks
/// the bounds: peak fds within `connections` + [`SLACK_FDS`], memory during the load within
/// `rss_during` KiB of the baseline and after it within `rss_after` KiB.
#[allow(clippy::too_many_arguments)]
async fn finish(
    p: Proc,
    sampler: Sampler,
    (fds0, rss0): (usize, u64),
    connections: usize,
    rss_during: u64,
    rss_after: u64,
    load: &str,
    outcome: String,
) -> Row {
    let took = sampler.started.elapsed();
    let (peak_fds, peak_rss) = sampler.stop();
    let (fds, settled_in) = p.settle(fds0, Duration::from_secs(15)).await;
    let rss = p.rss_kib();
    let row = Row {
        load: load.into(),
        outcome,
        fds: (fds0, peak_fds, fds),
        rss: (rss0, peak_rss, rss),
        settled_in,
        took,
    };
    row.print();
    assert!(
        peak_fds <= fds0 + connections + SLACK_FDS,
        "{load}: {peak_fds} fds during the load, baseline {fds0} + {connections} connections"
    );
    assert_eq!(
        fds, fds0,
        "{load}: descriptors did not come back to the baseline"
    );
    assert!(
        peak_rss <= rss0 + rss_during,
        "{load}: RSS {rss0} → {peak_rss} KiB during the load"
    );
    assert!(
        rss <= rss0 + rss_after,
        "{load}: RSS {rss0} → {rss} KiB after the load"
    );
    row
}

fn config(up: &str, tx: &DevTransmitter) -> String {
    Toml::new()
        .log_level("info,access=off")
        .server(&format!(
            "max_header_bytes = 8192\nmax_h2_streams = {MAX_H2_STREAMS}\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\""
        ))
        .public()
        .signals()
        .admin("")
        .upstream(
            "app",
            up,
            "# Pooled upstream connections close soon, so descriptor counts settle within the test.\nidle_timeout = \"1s\"",
        )
        .route("app", "/", "auth = \"none\"")
        .push_transmitter(
            "tx",
            &tx.issuer_url(),
            &tx.jwks_url(),
            "cae-proxy",
            "algorithms = [\"RS256\"]",
        )
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_descriptors_of_the_binary_stay_bounded_and_return_to_baseline() {
    let t_start = Instant::now();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    std::fs::write(&cfg, config(&up.url(), &tx)).unwrap();
    let bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let p = Proc(bin.child.id());
    let public = bin.addrs["public"];
    let push_url = bin.url("signals", "/ssf/tx");
    let c = client();

    // Warm-up: one forwarded request and one accepted push (the transmitter's keys loaded).
    let r = get(&c, &bin.url("public", "/warm"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let first = tx.sign_set(DevTransmitter::session_revoked(
        json!({"format": "opaque", "id": "warm-up"}),
        None,
    ));
    let warm = poll_until(Duration::from_secs(5), || async {
        matches!(
            tx.push(&push_url, Some(PUSH_AUTH), &first).await,
            Ok((202, _, _))
        )
        .then_some(())
    })
    .await;
    assert!(
        warm.is_some(),
        "the push endpoint never accepted a SET: {:?}",
        bin.log()
    );
    drop(c);
    let start = p.quiet().await;
    println!(
        "cae-proxy pid {} ({} build): baseline {} fds, {:.1} MiB RSS",
        p.0,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        start.0,
        start.1 as f64 / 1024.0
    );
    let mut rows = Vec::new();

    // (a) 300 slow clients trickling a request head (slowloris), header_read_timeout 1 s.
    {
        const CLIENTS: usize = 300;
        let base = (p.fds(), p.rss_kib());
        let sampler = Sampler::start(p);
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            let mut s = TcpStream::connect(public).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: ")
                .await
                .unwrap();
            conns.push(s);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            for s in &mut conns {
                let _ = s.write_all(b"a").await;
            }
            // The trickle's pace: one byte per client every 200 ms.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A normal client is served meanwhile.
        let r = get(&client(), &bin.url("public", "/ok"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        let mut cut = 0;
        for s in &mut conns {
            let mut b = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
                // EOF, or the 408 hyper sends before closing.
                if n == 0 || b.starts_with(b"HTTP/1.1 408") {
                    cut += 1;
                }
            }
        }
        drop(conns);
        assert_eq!(cut, CLIENTS, "every slow client is cut off");
        rows.push(
            finish(
                p,
                sampler,
                base,
                CLIENTS,
                64 * 1024,
                32 * 1024,
                "300 slow clients trickling a request head for 2 s",
                format!("{cut} cut off by the 1 s header timeout (`408` or close); a normal client served meanwhile"),
            )
            .await,
        );
    }

    // (b) 300 idle keep-alive connections after one request each, idle_timeout 1 s.
    {
        const CLIENTS: usize = 300;
        let base = (p.fds(), p.rss_kib());
        let sampler = Sampler::start(p);
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            let mut s = TcpStream::connect(public).await.unwrap();
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n")
                .await
                .unwrap();
            conns.push(s);
        }
        for s in &mut conns {
            let mut b = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(b[..n].starts_with(b"HTTP/1.1 200"));
        }
        let t0 = Instant::now();
        let mut closed = 0;
        for s in &mut conns {
            let mut b = vec![0u8; 4096];
            loop {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed += 1;
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        let took = t0.elapsed();
        drop(conns);
        assert_eq!(
            closed, CLIENTS,
            "every idle connection is closed by the proxy"
        );
        // Each request may have had its own pooled upstream connection.
        rows.push(
            finish(
                p,
                sampler,
                base,
                2 * CLIENTS,
                64 * 1024,
                32 * 1024,
                "300 idle keep-alive connections",
                format!(
                    "{closed} closed by the proxy within {:.1} s of their response (idle_timeout 1 s)",
                    took.as_secs_f64()
                ),
            )
            .await,
        );
    }

    // (c) One HTTP/2 connection with 5 000 streams, up to max_h2_streams in flight.
    {
        const STREAMS: usize = 5_000;
        let base = (p.fds(), p.rss_kib());
        let before = up.requests();
        let sampler = Sampler::start(p);
        let tcp = TcpStream::connect(public).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let gate = Arc::new(tokio::sync::Semaphore::new(MAX_H2_STREAMS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..STREAMS {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let send = send.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let mut send = send.ready().await.ok()?;
                let req = http::Request::builder()
                    .uri(format!("http://app.test/s/{i}"))
                    .body(())
                    .unwrap();
                let (resp, _) = send.send_request(req, true).ok()?;
                let resp = tokio::time::timeout(Duration::from_secs(10), resp)
                    .await
                    .ok()?
                    .ok()?;
                let status = resp.status();
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.ok()?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Some(status)
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            if r.unwrap() == Some(StatusCode::OK) {
                ok += 1;
            }
        }
        drop(send);
        conn_task.abort();
        let _ = conn_task.await;
        let reached = up.requests() - before;
        assert_eq!(ok, STREAMS, "every stream is answered");
        assert_eq!(reached, STREAMS, "every stream is forwarded once");
        // The client connection and at most one upstream connection per concurrent stream.
        rows.push(
            finish(
                p,
                sampler,
                base,
                1 + MAX_H2_STREAMS,
                64 * 1024,
                32 * 1024,
                "1 HTTP/2 connection × 5 000 streams, 64 in flight (`max_h2_streams = 64`)",
                format!("{ok} answered, {reached} forwarded"),
            )
            .await,
        );
    }

    // (d) 2 000 signed SET pushes, 64 concurrent (a connection each), then a 1 MiB push.
    {
        const SETS: usize = 2_000;
        const CONCURRENT: usize = 64;
        let sets: Vec<String> = (0..SETS)
            .map(|i| {
                tx.sign_set(DevTransmitter::session_revoked(
                    json!({"format": "opaque", "id": format!("session-{i}")}),
                    None,
                ))
            })
            .collect();
        let base = (p.fds(), p.rss_kib());
        let sampler = Sampler::start(p);
        let t0 = Instant::now();
        let mut accepted = 0;
        for batch in sets.chunks(CONCURRENT) {
            let mut tasks = tokio::task::JoinSet::new();
            for s in batch {
                let (url, s) = (push_url.clone(), s.clone());
                tasks.spawn(async move {
                    cae_proxy::dev::transmitter::push(&url, Some(PUSH_AUTH), &s).await
                });
            }
            while let Some(r) = tasks.join_next().await {
                if matches!(r.unwrap(), Ok((202, _, _))) {
                    accepted += 1;
                }
            }
        }
        let took = t0.elapsed();
        // Oversize bodies are refused from Content-Length, unread.
        let r = send(
            &client(),
            Method::POST,
            &push_url,
            &[
                ("authorization", PUSH_AUTH),
                ("content-type", "application/secevent+jwt"),
            ],
            Bytes::from("x".repeat(1 << 20)),
        )
        .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
        let stats = get(&client(), &bin.url("admin", "/admin/stats"), &[])
            .await
            .json();
        let stored = stats["revocations"].as_u64().unwrap_or(0) as usize;
        assert_eq!(accepted, SETS);
        assert!(stored > SETS, "{stats}");
        rows.push(
            finish(
                p,
                sampler,
                base,
                // A batch's connections may still be closing while the next batch connects.
                2 * CONCURRENT + 2,
                64 * 1024,
                32 * 1024,
                "2 000 signed SET pushes, 64 concurrent, then a 1 MiB push",
                format!(
                    "{accepted} × `202` in {:.1} s, {stored} revocations stored; the 1 MiB body `413`",
                    took.as_secs_f64()
                ),
            )
            .await,
        );
    }

    // After all four loads: back to the first baseline (memory: the tables now hold 2 000 more
    // revocations, and the allocator keeps some freed pages).
    let end = p.quiet().await;
    println!(
        "after all loads: {} → {} fds, {:.1} → {:.1} MiB RSS, {:.1} s in all",
        start.0,
        end.0,
        start.1 as f64 / 1024.0,
        end.1 as f64 / 1024.0,
        t_start.elapsed().as_secs_f64()
    );
    assert_eq!(end.0, start.0, "descriptors leaked across the loads");
    assert!(
        end.1 <= start.1 + 48 * 1024,
        "RSS {} → {} KiB",
        start.1,
        end.1
    );
    assert_eq!(rows.len(), 4);
}
