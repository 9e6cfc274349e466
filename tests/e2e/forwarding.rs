//! Forwarding end to end: TLS h1/h2 and mTLS listeners, routing answers, limits, header rules,
//! upgrades, an HTTPS upstream with a client certificate, routing switched by reloads under load.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};

async fn upstream() -> EchoUpstream {
    EchoUpstream::start(listener().await).expect("echo upstream")
}

/// One public listener, the upstream `app` (`extra_upstream`: more lines of its table) and one
/// route without authentication for `app.test`, `*.app.test` and `127.0.0.1`; `extra_server`:
/// more `[server]` lines.
fn plain_config(upstream: &str, extra_server: &str, extra_upstream: &str) -> String {
    Toml::new()
        .server(extra_server)
        .public()
        .upstream("app", upstream, extra_upstream)
        .route(
            "app",
            "/",
            "hosts = [\"app.test\", \"*.app.test\", \"127.0.0.1\"]\nauth = \"none\"",
        )
        .build()
}

/// A TLS listener `tls` (`mtls`: client certificates required) to the upstream `app`, no
/// authentication.
fn tls_config(c: &Certs, up: &str, mtls: bool) -> String {
    Toml::new()
        .tls_listener("tls", c, mtls, "")
        .app(up)
        .route("app", "/", "auth = \"none\"")
        .build()
}

#[tokio::test]
async fn http1_and_http2_over_tls_reach_the_upstream() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let h = Harness::start_in(dir, &tls_config(&c, &up.url(), false)).await;
    let port = h.proxy.addr("tls").unwrap().port();
    for (h2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        let client = tls_client(&c, h2, false);
        let r = get(&client, &format!("https://localhost:{port}/hello?x=1"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.version, version);
        let echo = r.json();
        assert_eq!(echo["path"], "/hello");
        assert_eq!(echo["query"], "x=1");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
        assert_eq!(
            echo["headers"]["x-forwarded-host"],
            format!("localhost:{port}")
        );
        assert_eq!(r.header("x-request-id").map(str::len), Some(32));
    }
}

#[tokio::test]
async fn mtls_listener_requires_a_client_certificate() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let h = Harness::start_in(dir, &tls_config(&c, &up.url(), true)).await;
    let url = format!("https://localhost:{}/", h.proxy.addr("tls").unwrap().port());
    assert!(try_send(
        &tls_client(&c, false, false),
        Method::GET,
        &url,
        &[],
        Bytes::new()
    )
    .await
    .is_err());
    assert_eq!(
        get(&tls_client(&c, false, true), &url, &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn error_answers_carry_json_bodies_with_the_request_id() {
    let up = upstream().await;
    let h = Harness::start(&plain_config(
        &up.url(),
        "max_request_body = 1024",
        "request_timeout = \"300ms\"",
    ))
    .await;
    let c = client();

    let r = get(
        &c,
        &h.url("public", "/x"),
        &[("host", "other.test"), ("x-request-id", "req-404")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "no_route", "message": "no route matches this request", "request_id": "req-404"})
    );

    let r = send(
        &c,
        Method::POST,
        &h.url("public", "/upload"),
        &[("host", "app.test")],
        Bytes::from(vec![b'a'; 2048]),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");

    let r = get(
        &c,
        &h.url("public", "/slow?ms=3000"),
        &[("host", "a.app.test"), ("x-request-id", "req-504")],
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(r.json()["request_id"], "req-504");

    let r = get(&c, &h.url("public", "/a/../admin"), &[("host", "app.test")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "bad_path");

    // A head over max_header_bytes (64 KiB): 431 with the JSON body and the request id.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\nx-request-id: big-1\r\nx-big: {}\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let out = raw(
        h.proxy.addr("public").unwrap(),
        big.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\nx-request-id: big-1\r\n"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"], "headers_too_large");
    assert_eq!(v["request_id"], "big-1");
    // Beyond twice the limit the HTTP layer refuses it before a request exists: 431, no body.
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: app.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(160 * 1024)
    );
    let out = raw(
        h.proxy.addr("public").unwrap(),
        huge.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502() {
    // A port held for this test that nothing listens on: connections are refused.
    let closed = ReservedPort::new();
    let url = format!("http://{}", closed.addr());
    let h = Harness::start(&plain_config(&url, "", "connect_timeout = \"1s\"")).await;
    let r = get(&client(), &h.url("public", "/"), &[("host", "app.test")]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn an_http_1_0_upstream_does_not_downgrade_the_client_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that speaks HTTP/1.0 and closes after each answer (python -m http.server).
    let up = listener().await;
    let url = format!("http://{}", up.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let h = Harness::start(&plain_config(&url, "", "")).await;
    let mut c = tokio::net::TcpStream::connect(h.proxy.addr("public").unwrap())
        .await
        .unwrap();
    for _ in 0..2 {
        c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(
                n > 0,
                "connection closed after: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_headers_and_connection_named_headers_are_removed() {
    let up = upstream().await;
    let h = Harness::start(&plain_config(&up.url(), "", "")).await;
    let req = "GET /h HTTP/1.1\r\nhost: app.test\r\nconnection: keep-alive, x-private\r\nx-private: secret\r\nkeep-alive: timeout=5\r\nproxy-authorization: Basic Zm9v\r\nte: trailers\r\nx-kept: yes\r\n\r\n";
    let out = raw(
        h.proxy.addr("public").unwrap(),
        req.as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last_headers();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen.get("x-kept").unwrap(), "yes");
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_peers() {
    let up = upstream().await;
    // Untrusted peer: its X-Forwarded-* are replaced.
    let h = Harness::start(&plain_config(&up.url(), "", "")).await;
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ],
    )
    .await;
    let e = r.json();
    assert_eq!(e["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(e["headers"]["x-forwarded-proto"], "http");
    assert_eq!(e["headers"]["x-forwarded-host"], "app.test");
    // Trusted peer (loopback): the chain is extended and the others are kept.
    let h = Harness::start(&plain_config(
        &up.url(),
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "",
    ))
    .await;
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ],
    )
    .await;
    let e = r.json();
    assert_eq!(e["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(e["headers"]["x-forwarded-proto"], "https");
    assert_eq!(e["headers"]["x-forwarded-host"], "api.example.com");
}

#[tokio::test]
async fn websocket_upgrade_round_trips() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream().await;
    let h = Harness::start(&plain_config(&up.url(), "", "")).await;
    let mut s = tokio::net::TcpStream::connect(h.proxy.addr("public").unwrap())
        .await
        .unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = format!("GET /ws HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {key}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping through the tunnel");
}

#[tokio::test]
async fn reload_under_load_switches_routing_without_failures_and_bad_files_keep_the_old_one() {
    let a = upstream().await;
    let b = upstream().await;
    let h = Harness::start(&plain_config(&a.url(), "", "")).await;
    let url = h.url("public", "/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match try_send(&c, Method::GET, &url, &[("host", "app.test")], Bytes::new()).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    for i in 0..10 {
        let target = if i % 2 == 0 { &b } else { &a };
        let before = target.requests();
        h.write_config(&plain_config(&target.url(), "", ""));
        h.proxy.reload().expect("reload ok");
        let what = format!("traffic at the upstream routed by reload {i}");
        eventually(Duration::from_secs(15), &what, || async {
            target.requests() > before + 5
        })
        .await;
    }
    h.write_config(&plain_config(&a.url(), "", ""));
    let g = h.proxy.reload().expect("reload ok");
    h.write_config("[server]\nidle_timeout = \"forever\"\n");
    let err = h.proxy.reload().unwrap_err();
    assert!(err.to_string().contains("server.idle_timeout"), "{err}");
    assert_eq!(
        h.proxy.shared.snapshot.load().generation,
        g,
        "old snapshot keeps serving"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} ok)"
    );
    assert!(a.requests() > 0 && b.requests() > 0);
    let before = a.requests();
    assert_eq!(
        get(&client(), &url, &[("host", "app.test")]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.requests(),
        before + 1,
        "after the failed reload, routing still goes to a"
    );
}

#[tokio::test]
async fn slowloris_clients_do_not_starve_a_normal_client() {
    use tokio::io::AsyncWriteExt;
    let up = upstream().await;
    let h = Harness::start(&plain_config(&up.url(), "header_read_timeout = \"2s\"", "")).await;
    let addr = h.proxy.addr("public").unwrap();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\nx-a: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        get(&client(), &h.url("public", "/"), &[("host", "app.test")]),
    )
    .await
    .expect("served while slow clients hold connections");
    assert_eq!(r.status, StatusCode::OK);
    // The header-read timeout closes the half-sent requests.
    let mut s = slow.pop().unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(6),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    assert!(read.is_ok(), "a slow client was not disconnected");
}

#[tokio::test]
async fn https_upstream_with_a_configured_ca_and_client_certificate() {
    // The "upstream" is a second cae-proxy with a TLS listener that requires client certificates,
    // in front of the echo server: real TLS and mTLS on the upstream side.
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let inner = Harness::start(&tls_config(&c, &up.url(), true)).await;
    let port = inner.proxy.addr("tls").unwrap().port();
    let outer = |client_cert: bool| {
        let cert = if client_cert {
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                c.client_cert.display(),
                c.client_key.display()
            )
        } else {
            String::new()
        };
        Toml::new()
            .public()
            .upstream(
                "app",
                &format!("https://localhost:{port}/base"),
                &format!("ca = \"{}\"\n{cert}", c.ca.display()),
            )
            .route("app", "/", "auth = \"none\"")
            .build()
    };
    let with_cert = Harness::start(&outer(true)).await;
    let r = get(&client(), &with_cert.url("public", "/x"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["path"],
        "/base/x",
        "the upstream URL's path is prepended"
    );
    // The inner proxy names the Host it was sent in X-Forwarded-Host: the upstream URL's own
    // authority, whatever key the outer proxy's connection pool files it under.
    assert_eq!(
        r.json()["headers"]["x-forwarded-host"],
        format!("localhost:{port}")
    );
    let without = Harness::start(&outer(false)).await;
    let r = get(&client(), &without.url("public", "/x"), &[]).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "the TLS upstream refuses a client without a certificate"
    );
}
