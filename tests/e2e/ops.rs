//! Operations end to end: metrics exposition parses and moves, readiness follows the keys, logs are
//! JSON lines without tokens, reload through the admin listener.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::transmitter::{complex, iss_sub, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;

/// A public listener, an admin listener without a token, redb in the harness's temp dir, the dev
/// issuer (keys by `jwks_uri`) and one route `api` for everything.
fn config(iss: &str, up: &str) -> Toml {
    Toml::new()
        .log_level("info")
        .public()
        .admin("")
        .store(REDB)
        .app(up)
        .issuer(
            "dev",
            iss,
            &format!("jwks_uri = \"{iss}/jwks\"\naudiences = [\"{API_AUDIENCE}\"]"),
        )
        .route("api", "/", "")
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(&idp.issuer_url(), &up.url()).build()).await;
    h.wait_ready().await;
    let c = client();
    let t = idp.mint("alice", json!({}));
    for _ in 0..3 {
        assert_eq!(
            get(
                &c,
                &h.url("public", "/x"),
                &[("authorization", &format!("Bearer {t}"))]
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(
            &c,
            &h.url("public", "/x"),
            &[("authorization", "Bearer nope")]
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &h.url("public", "/x"), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    let r = get(&c, &h.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = r.text();
    let req = |status: &str, decision: &str, reason: &str| {
        metric(
            &m,
            &format!(
                r#"cae_requests_total{{route="api",status="{status}",decision="{decision}",reason="{reason}"}}"#
            ),
        )
    };
    assert_eq!(req("200", "allow", ""), Some(3.0));
    assert_eq!(req("401", "deny", "invalid_token"), Some(1.0));
    assert_eq!(req("401", "deny", "missing_token"), Some(1.0));
    assert_eq!(
        metric(&m, r#"cae_token_validations_total{result="valid"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"cae_token_validations_total{result="invalid",reason="malformed"}"#
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, "cae_token_cache_hits_total"), Some(2.0));
    assert_eq!(
        metric(&m, r#"cae_key_fetches_total{name="dev"}"#).map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        metric(&m, r#"cae_table_entries{table="revocations"}"#),
        Some(0.0)
    );
    assert_eq!(metric(&m, "cae_config_generation"), Some(1.0));
    assert!(metric(&m, r#"cae_open_connections{listener="public"}"#).is_some());

    // A reload through the admin listener moves the generation and the reload counter.
    let r = send(&c, Method::POST, &h.admin_url("/reload"), &[], Bytes::new()).await;
    assert_eq!(r.json(), json!({"generation": 2}));
    h.write_config("[server]\nnot_a_key = 1\n");
    let r = send(&c, Method::POST, &h.admin_url("/reload"), &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("server.not_a_key (line 2, column 1): unknown key"));
    let m = get(&c, &h.admin_url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, r#"cae_reloads_total{result="ok"}"#), Some(1.0));
    assert_eq!(
        metric(&m, r#"cae_reloads_total{result="failed"}"#),
        Some(1.0)
    );
    assert_eq!(metric(&m, "cae_config_generation"), Some(2.0));
}

/// `promtool check metrics` from Debian's prometheus package, when it is installed; CI installs it
/// and sets `CAE_REQUIRE_PROMTOOL=1` so that its absence fails there instead of skipping.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CAE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            eprintln!(
                "promtool not installed: the exposition was checked by prometheus-parse only"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_metric_family_passes_promtool_and_moves() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    // An upstream that refuses connections: a port held for this test that nothing listens on.
    let dead = ReservedPort::new();
    let toml = config(&idp.issuer_url(), &up.url())
        .upstream("gone", &format!("http://{}", dead.addr()), "")
        .route_to("gone", "/gone", "gone", "")
        .signals()
        .push_transmitter("tx", &tx.issuer_url(), &tx.jwks_url(), "cae-proxy", "")
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let c = client();
    // Issued a minute ago: before the revocation below.
    let iat = cae_proxy::dev::now_secs() - 60;
    let bearer = format!(
        "Bearer {}",
        idp.mint("alice", json!({"sid": "s1", "iat": iat}))
    );
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        get(&c, &h.url("public", "/x"), &auth).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &h.url("public", "/gone/x"), &auth).await.status,
        StatusCode::BAD_GATEWAY
    );
    // A SET pushed by the transmitter, and an admin write: both durable writes, both counted.
    let set = tx.sign_set(DevTransmitter::session_revoked(
        complex(&[
            ("session", json!({"format": "opaque", "id": "s1"})),
            ("user", iss_sub(&idp.issuer_url(), "alice")),
        ]),
        Some(cae_proxy::dev::now_secs() - 5),
    ));
    let r = send(
        &c,
        Method::POST,
        &h.url("signals", "/ssf/tx"),
        &[
            ("authorization", "Bearer push-secret"),
            ("content-type", "application/secevent+jwt"),
        ],
        Bytes::from(set),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = send(
        &c,
        Method::POST,
        &h.admin_url("/admin/revoke"),
        &[("content-type", "application/json")],
        Bytes::from(
            json!({"key": {"type": "subject", "iss": idp.issuer_url(), "sub": "bob"}}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        get(&c, &h.url("public", "/x"), &auth).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Without an Accept header: the classic text format, which promtool checks.
    let r = get(&c, &h.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    assert!(!text.contains("# EOF"), "{text}");
    promtool_check(&text);
    for family in [
        "# TYPE cae_requests_total counter",
        "# TYPE cae_key_fetches_total counter",
        "# TYPE cae_key_fetch_failures_total counter",
        "# TYPE cae_key_set_age_seconds gauge",
        "# TYPE cae_sets_received_total counter",
        "# TYPE cae_store_write_duration_seconds histogram",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let req = |route: &str, status: &str, reason: &str| {
        metric(
            &text,
            &format!(
                r#"cae_requests_total{{route="{route}",status="{status}",reason="{reason}"}}"#
            ),
        )
    };
    assert_eq!(req("api", "200", ""), Some(1.0));
    assert_eq!(req("gone", "502", "upstream_unavailable"), Some(1.0));
    assert_eq!(req("api", "401", "revoked"), Some(1.0));
    assert_eq!(
        metric(&text, r#"cae_upstream_errors_total{kind="connect"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"cae_sets_received_total{transmitter="tx",result="committed"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"cae_set_enforce_latency_seconds{transmitter="tx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"cae_set_event_lag_seconds{transmitter="tx"}"#),
        Some(1.0)
    );
    // The SET's commit and the admin write.
    assert_eq!(metric(&text, "cae_store_write_duration_seconds"), Some(2.0));
    assert_eq!(
        metric(&text, r#"cae_table_entries{table="revocations"}"#),
        Some(2.0)
    );
    for name in ["dev", "tx"] {
        assert_eq!(
            metric(&text, &format!(r#"cae_key_fetches_total{{name="{name}"}}"#)),
            Some(1.0),
            "{name}"
        );
        assert_eq!(
            metric(
                &text,
                &format!(r#"cae_key_fetch_failures_total{{name="{name}"}}"#)
            ),
            Some(0.0),
            "{name}"
        );
        assert!(metric(
            &text,
            &format!(r#"cae_key_set_age_seconds{{name="{name}"}}"#)
        )
        .is_some());
    }
    assert_eq!(
        metric(&text, r#"cae_open_connections{listener="public"}"#).map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(metric(&text, "cae_token_cache_misses_total"), Some(1.0));

    // Prometheus itself asks for OpenMetrics first and gets it.
    let r = get(
        &c,
        &h.admin_url("/metrics"),
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.text().ends_with("# EOF\n"));
    assert!(r.text().contains("# TYPE cae_key_fetches counter\n"));
}

#[tokio::test]
async fn readiness_waits_for_keys_and_says_what_is_missing() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    idp.set_available(false);
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(&idp.issuer_url(), &up.url()).build()).await;
    let c = client();
    // Not ready, and once the first fetch failed, /readyz says why.
    let readyz = h.admin_url("/readyz");
    let said = poll_until(Duration::from_secs(10), || async {
        let r = get(&c, &readyz, &[]).await;
        r.text().contains("yet: ").then_some(r)
    })
    .await;
    let r = match said {
        Some(r) => r,
        None => get(&c, &readyz, &[]).await,
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": [format!(
            "issuer dev has no keys yet: {}/jwks answered HTTP 503",
            idp.issuer_url()
        )]})
    );
    assert_eq!(
        get(&c, &h.admin_url("/livez"), &[]).await.status,
        StatusCode::OK
    );
    // No keys: a token cannot be validated, and the answer says why.
    let r = get(
        &c,
        &h.url("public", "/"),
        &[(
            "authorization",
            &format!("Bearer {}", idp.mint("a", json!({}))),
        )],
    )
    .await;
    assert_eq!(r.json()["message"], "the issuer keys are not available yet");
    idp.set_available(true);
    h.wait_ready().await;
    let r = get(
        &c,
        &h.url("public", "/"),
        &[(
            "authorization",
            &format!("Bearer {}", idp.mint("a", json!({}))),
        )],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn logs_are_json_lines_without_tokens_or_secrets() {
    const ADMIN_SECRET: &str = "admin-s3cr3t-0123456789";
    const PUSH_SECRET: &str = "push-s3cr3t-0123456789";
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    // An upstream that refuses connections: a port held for this test that nothing listens on.
    let dead = ReservedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    // No log_format: JSON is the default when standard output is not a terminal (here a pipe).
    let toml = config(&idp.issuer_url(), &up.url())
        .store(&redb_store(dir.path()))
        .admin(&format!("token = \"{ADMIN_SECRET}\""))
        .signals()
        .transmitter(
            "tx",
            &format!(
                "issuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"cae-proxy\"]\n[transmitter.push]\npath = \"/ssf/tx\"\nauthorization = \"Bearer {PUSH_SECRET}\"",
                tx.issuer_url(),
                tx.jwks_url()
            ),
        )
        .upstream(
            "gone",
            &format!("http://{}", dead.addr()),
            "connect_timeout = \"1s\"",
        )
        .route_to("gone", "/gone", "gone", "")
        .build();
    std::fs::write(&cfg, toml).unwrap();
    let mut bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let c = client();
    let good = idp.mint("alice", json!({}));
    let expired = idp.mint(
        "bob",
        json!({"exp": cae_proxy::dev::now_secs() - 3600, "iat": cae_proxy::dev::now_secs() - 7200}),
    );
    let tokens = [
        good.clone(),
        expired,
        "not.a.token".to_string(),
        format!("{good}x"),
    ];
    for t in &tokens {
        get(
            &c,
            &bin.url("public", "/p"),
            &[
                ("authorization", &format!("Bearer {t}")),
                ("cookie", "session=s3cr3t-cookie"),
            ],
        )
        .await;
    }
    // Security events: one accepted, one with a wrong push secret, one forged (bad signature);
    // admin calls with the right and a wrong token.
    let set = tx.sign_set(DevTransmitter::session_revoked(
        complex(&[
            ("session", json!({"format": "opaque", "id": "s1"})),
            ("user", iss_sub(&idp.issuer_url(), "alice")),
        ]),
        None,
    ));
    let forged = format!("{set}x");
    let push = |auth: String, body: String| {
        let c = c.clone();
        let url = bin.url("signals", "/ssf/tx");
        async move {
            send(
                &c,
                Method::POST,
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/secevent+jwt"),
                ],
                Bytes::from(body),
            )
            .await
            .status
        }
    };
    assert_eq!(
        push(format!("Bearer {PUSH_SECRET}"), set.clone()).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        push("Bearer wrong-push-s3cr3t".into(), set.clone()).await,
        StatusCode::BAD_REQUEST // RFC 8935: err authentication_failed
    );
    assert_eq!(
        push(format!("Bearer {PUSH_SECRET}"), forged.clone()).await,
        StatusCode::BAD_REQUEST
    );
    let revoke = json!({"key": {"type": "subject", "iss": idp.issuer_url(), "sub": "zed"}});
    for (auth, want) in [
        (format!("Bearer {ADMIN_SECRET}"), StatusCode::OK),
        (
            "Bearer wrong-admin-s3cr3t".to_string(),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let r = send(
            &c,
            Method::POST,
            &bin.url("admin", "/admin/revoke"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Bytes::from(revoke.to_string()),
        )
        .await;
        assert_eq!(r.status, want, "{}", r.text());
    }
    // Failed requests: an unreachable upstream (502) and an oversized head (431). Each gets the
    // JSON body with its request id and exactly one log line (a warning, with the error).
    let r = get(
        &c,
        &bin.url("public", "/gone/x"),
        &[
            ("authorization", &format!("Bearer {good}")),
            ("x-request-id", "failed-upstream-1"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["request_id"], "failed-upstream-1");
    let big = "b".repeat(70 * 1024);
    let r = get(
        &c,
        &bin.url("public", "/big"),
        &[("x-request-id", "failed-head-1"), ("x-big", &big)],
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.json()["request_id"], "failed-head-1");
    let secrets = [
        ADMIN_SECRET,
        PUSH_SECRET,
        "wrong-push-s3cr3t",
        "wrong-admin-s3cr3t",
        "s3cr3t-cookie",
    ];
    let sets = [set.clone(), forged];
    bin.signal(libc::SIGTERM);
    assert_eq!(
        tokio::task::spawn_blocking(move || (bin.wait(Duration::from_secs(10)), bin.log()))
            .await
            .map(|(c, log)| {
                assert!(log.len() >= 6, "{log:?}");
                let mut access = 0;
                for line in &log {
                    let v: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    assert!(
                        v["timestamp"].is_string() && v["level"].is_string(),
                        "{line}"
                    );
                    if v["target"] == "access" && v["path"] == "/p" {
                        access += 1;
                        for field in [
                            "request_id",
                            "method",
                            "path",
                            "status",
                            "duration_ms",
                            "client_ip",
                            "decision",
                            "route",
                        ] {
                            assert!(v.get(field).is_some(), "access line lacks {field}: {line}");
                        }
                    }
                    for t in &tokens {
                        let sig = t.rsplit('.').next().unwrap();
                        assert!(
                            !line.contains(t.as_str()) && (sig.len() < 8 || !line.contains(sig)),
                            "a token reached the log: {line}"
                        );
                    }
                    for t in &sets {
                        let sig = t.rsplit('.').next().unwrap();
                        assert!(
                            !line.contains(t.as_str()) && !line.contains(sig),
                            "a security event token reached the log: {line}"
                        );
                    }
                    for s in secrets {
                        assert!(!line.contains(s), "a secret reached the log: {line}");
                    }
                }
                assert!(
                    log.iter().any(|l| l.contains("security event")),
                    "the accepted SET is logged (as a hash): {log:?}"
                );
                assert_eq!(access, 4);
                for (id, status) in [("failed-upstream-1", 502), ("failed-head-1", 431)] {
                    let lines: Vec<serde_json::Value> = log
                        .iter()
                        .filter(|l| l.contains(id))
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    assert_eq!(lines.len(), 1, "{id}: {lines:?}");
                    let v = &lines[0];
                    assert_eq!(v["target"], "access", "{v}");
                    assert_eq!(v["level"], "WARN", "{v}");
                    assert_eq!(v["status"], status, "{v}");
                    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
                }
                c
            })
            .unwrap(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_log_level() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    let config = config(&idp.issuer_url(), &up.url()).store(&redb_store(dir.path()));
    let text = config.clone().build();
    std::fs::write(&cfg, config.log_level("warn,cae_proxy=info").build()).unwrap();
    let bin = Binary::start(&cfg, 2);
    bin.wait_ready().await;
    let c = client();
    let t = format!("Bearer {}", idp.mint("alice", json!({})));
    get(&c, &bin.url("public", "/quiet"), &[("authorization", &t)]).await;
    // The listeners are not rebound: keep the addresses the first start chose.
    let fixed = text
        .replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"{}\"", bin.addrs["public"]),
            1,
        )
        .replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"{}\"", bin.addrs["admin"]),
            1,
        );
    std::fs::write(&cfg, fixed).unwrap();
    bin.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "SIGHUP to reload the configuration",
        || async {
            let m = bin.metrics().await;
            metric(&m, r#"cae_reloads_total{result="ok",reason=""}"#) == Some(1.0)
        },
    )
    .await;
    get(&c, &bin.url("public", "/loud"), &[("authorization", &t)]).await;
    eventually(
        Duration::from_secs(10),
        "the access line after the reload to info",
        || async {
            let log = bin.log();
            assert!(
                !log.iter()
                    .any(|l| l.contains("/quiet") && l.contains("\"access\"")),
                "no access line at warn"
            );
            log.iter().any(|l| l.contains("\"path\":\"/loud\""))
        },
    )
    .await;
}
