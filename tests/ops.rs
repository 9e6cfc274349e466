//! Operations end to end: metrics exposition parses and moves, readiness follows the keys, logs are
//! JSON lines without tokens, reload through the admin listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use common::*;
use http::{Method, StatusCode};
use serde_json::json;

fn config(iss: &str, up: &str) -> String {
    format!(
        r#"
[server]
log_level = "info"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[store]
path = "{{dir}}/state.redb"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
upstream = "app"
"#
    )
}

/// Parses the exposition with a real parser; returns (name, labels, value) samples.
fn parse_metrics(text: &str) -> Vec<(String, std::collections::HashMap<String, String>, f64)> {
    let lines = text
        .lines()
        .filter(|l| *l != "# EOF")
        .map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("exposition parses");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            };
            (
                s.metric,
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                v,
            )
        })
        .collect()
}

fn sample(
    m: &[(String, std::collections::HashMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    m.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(&idp.issuer_url(), &up.url())).await;
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
    assert!(
        r.text().ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let m = parse_metrics(&r.text());
    let req = |status: &str, decision: &str, reason: &str| {
        sample(
            &m,
            "cae_requests_total",
            &[
                ("route", "api"),
                ("status", status),
                ("decision", decision),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(req("200", "allow", ""), Some(3.0));
    assert_eq!(req("401", "deny", "invalid_token"), Some(1.0));
    assert_eq!(req("401", "deny", "missing_token"), Some(1.0));
    assert_eq!(
        sample(&m, "cae_token_validations_total", &[("result", "valid")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "cae_token_validations_total",
            &[("result", "invalid"), ("reason", "malformed")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "cae_token_cache_hits_total", &[]), Some(2.0));
    assert_eq!(
        sample(&m, "cae_key_fetches", &[("name", "dev")]).map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        sample(&m, "cae_table_entries", &[("table", "revocations")]),
        Some(0.0)
    );
    assert_eq!(sample(&m, "cae_config_generation", &[]), Some(1.0));
    assert!(sample(&m, "cae_open_connections", &[("listener", "public")]).is_some());

    // A reload through the admin listener moves the generation and the reload counter.
    let r = send(&c, Method::POST, &h.admin_url("/reload"), &[], Bytes::new()).await;
    assert_eq!(r.json(), json!({"generation": 2}));
    h.write_config("[server]\nnot_a_key = 1\n");
    let r = send(&c, Method::POST, &h.admin_url("/reload"), &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("unknown field `not_a_key`"));
    let m = parse_metrics(&get(&c, &h.admin_url("/metrics"), &[]).await.text());
    assert_eq!(
        sample(&m, "cae_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "cae_reloads_total", &[("result", "failed")]),
        Some(1.0)
    );
    assert_eq!(sample(&m, "cae_config_generation", &[]), Some(2.0));
}

#[tokio::test]
async fn readiness_waits_for_keys_and_says_what_is_missing() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    idp.set_available(false);
    let up = EchoUpstream::start(listener().await).unwrap();
    let h = Harness::start(&config(&idp.issuer_url(), &up.url())).await;
    let c = client();
    let r = get(&c, &h.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["issuer dev has no keys yet"]})
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
async fn logs_are_json_lines_without_tokens() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    std::fs::write(
        &cfg,
        config(&idp.issuer_url(), &up.url()).replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let mut bin = Binary::start(&cfg, 2);
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
                    if v["target"] == "access" {
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
                    assert!(
                        !line.contains("s3cr3t-cookie"),
                        "a cookie reached the log: {line}"
                    );
                }
                assert_eq!(access, 4);
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
    let text =
        config(&idp.issuer_url(), &up.url()).replace("{dir}", &dir.path().display().to_string());
    std::fs::write(
        &cfg,
        text.replace(
            "log_level = \"info\"",
            "log_level = \"warn,cae_proxy=info\"",
        ),
    )
    .unwrap();
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
    let mut reloaded = false;
    for _ in 0..500 {
        let m = get(&c, &bin.url("admin", "/metrics"), &[]).await.text();
        if m.contains("cae_reloads_total{result=\"ok\",reason=\"\"} 1") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reloaded, "SIGHUP reloaded the configuration");
    get(&c, &bin.url("public", "/loud"), &[("authorization", &t)]).await;
    let mut seen = false;
    for _ in 0..500 {
        let log = bin.log();
        assert!(
            !log.iter()
                .any(|l| l.contains("/quiet") && l.contains("\"access\"")),
            "no access line at warn"
        );
        if log.iter().any(|l| l.contains("\"path\":\"/loud\"")) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "after the reload to info, the access line is written");
}
