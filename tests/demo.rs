//! The demo narration run in-process on free ports: every step checks real answers of the proxy.

use cae_proxy::demo::{narrate, Demo, DemoError, Style, DEMO_TOML};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narration_passes_every_step() {
    let demo = Demo::start_ephemeral().await.expect("demo starts");
    let mut out = Vec::new();
    let report = narrate(&demo, &mut out, Style { color: false }).await;
    let text = String::from_utf8(out).expect("utf-8 output");
    demo.shutdown().await;

    assert!(!text.contains('\u{1b}'), "plain output has no ANSI escapes");
    let ids: Vec<&str> = report.steps.iter().map(|s| s.id).collect();
    assert_eq!(ids, ["a", "b.1", "b.2", "c", "d", "e", "f"], "{text}");
    for s in &report.steps {
        assert!(s.passed(), "step {} failed: {:?}\n{text}", s.id, s.failures);
    }
    assert!(report.passed(), "{text}");
    for needle in [
        "error=\"insufficient_claims\"",
        "{\"access_token\":{\"nbf\":{\"essential\":true,\"value\":",
        "{\"access_token\":{\"acrs\":{\"essential\":true,\"value\":\"c1\"}}}",
        "error=\"invalid_token\"",
        "x-user-sub: alice",
    ] {
        assert!(text.contains(needle), "output lacks {needle:?}:\n{text}");
    }
}

#[tokio::test]
async fn a_taken_port_is_named() {
    let held = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = held.local_addr().expect("addr").port();
    let mut toml = DEMO_TOML.replace("127.0.0.1:29080", &format!("127.0.0.1:{port}"));
    for other in [
        "127.0.0.1:29090",
        "127.0.0.1:29901",
        "127.0.0.1:29101",
        "127.0.0.1:29102",
        "127.0.0.1:29103",
    ] {
        toml = toml.replace(other, "127.0.0.1:0");
    }
    let err = match Demo::start(&toml, std::path::Path::new(".")).await {
        Ok(_) => panic!("the demo started on a taken port"),
        Err(e) => e,
    };
    assert!(matches!(err, DemoError::PortsInUse(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port} (proxy listener \"public\")")),
        "{msg}"
    );
}
