//! The demo narration run in-process on free ports: every step checks real answers of the proxy.

use cae_proxy::dev::demo::{narrate, Demo, DemoError, Style, DEMO_TOML};

use crate::common::{eventually, shell};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narration_passes_every_step() {
    let demo = Demo::start_ephemeral().await.expect("demo starts");
    let mut out = Vec::new();
    let report = narrate(&demo, &mut out, Style { color: false }).await;
    let text = String::from_utf8(out).expect("utf-8 output");
    demo.shutdown().await;

    assert!(!text.contains('\u{1b}'), "plain output has no ANSI escapes");
    let ids: Vec<&str> = report.steps.iter().map(|s| s.id).collect();
    assert_eq!(ids, ["a", "b.1", "b.2", "c", "d", "e", "f", "g"], "{text}");
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

/// The status line and the `www-authenticate` header of a `curl -i` answer.
fn status_and_challenge(curl_i: &str) -> (String, Option<String>) {
    let status = curl_i.lines().next().unwrap_or_default().trim().to_string();
    let challenge = curl_i.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, v)| v.trim().to_string())
    });
    (status, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_commands_work_when_pasted() {
    let demo = Demo::start_ephemeral().await.expect("demo starts");
    let mut out = Vec::new();
    cae_proxy::dev::demo::print_try_it(&demo, &mut out, Style { color: false });
    let text = String::from_utf8(out).expect("utf-8 output");
    let commands: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") || l.starts_with("TOKEN="))
        .map(str::to_string)
        .collect();
    let find = |needles: &[&str]| -> String {
        commands
            .iter()
            .find(|c| needles.iter().all(|n| c.contains(n)))
            .unwrap_or_else(|| panic!("no command with {needles:?}:\n{text}"))
            .clone()
    };
    let run = |script: String| async move { shell(&script).await };
    let mint = |cmd: String| async move {
        let t = run(format!("{cmd}\nprintf '%s' \"$TOKEN\"")).await;
        assert_eq!(t.split('.').count(), 3, "a JWT: {t:?}");
        t
    };
    // Revocation times have a resolution of one second: a token minted in the same second as
    // the event counts as issued after it. Wait for the next second, as a human always does.
    let next_second = || async {
        let start = cae_proxy::dev::now_secs();
        eventually(
            std::time::Duration::from_secs(2),
            "the next second",
            || async { cae_proxy::dev::now_secs() != start },
        )
        .await;
    };
    let call_api = find(&["/api/orders", "$TOKEN"]);
    let call = |token: String, cmd: String| run(format!("TOKEN='{token}'\n{cmd}"));

    let token = mint(find(&["TOKEN=", "-d xms_cc=cp1 |"])).await;
    let r = call(token.clone(), call_api.clone()).await;
    assert_eq!(status_and_challenge(&r).0, "HTTP/1.1 200 OK", "{r}");
    assert!(
        r.contains("x-user-sub"),
        "the echo shows identity headers: {r}"
    );

    next_second().await;
    let reply: serde_json::Value =
        serde_json::from_str(&run(find(&["/dev/events", "session-revoked"])).await).unwrap();
    assert_eq!(reply["delivered"][0]["status"], 202, "{reply}");
    let r = call(token.clone(), call_api.clone()).await;
    let (status, challenge) = status_and_challenge(&r);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{r}");
    let challenge = challenge.expect("a challenge");
    assert!(
        challenge.contains("error=\"insufficient_claims\""),
        "{challenge}"
    );
    let claims = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|c| c.split('"').next())
        .expect("claims value")
        .to_string();

    // Answer the challenge with the pasted claims value: 200 again.
    let token = mint(find(&["PASTE_CLAIMS"]).replace("PASTE_CLAIMS", &claims)).await;
    let r = call(token.clone(), call_api.clone()).await;
    assert_eq!(status_and_challenge(&r).0, "HTTP/1.1 200 OK", "{r}");

    // The step-up route wants auth context c1.
    let r = call(token.clone(), find(&["/settings", "$TOKEN"])).await;
    let (status, challenge) = status_and_challenge(&r);
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{r}");
    assert!(challenge.is_some_and(|c| c.contains("insufficient_claims")));

    // The admin API revocation, then the account-disabled SET.
    let r = run(find(&["/admin/revoke"])).await;
    assert_eq!(status_and_challenge(&r).0, "HTTP/1.1 200 OK", "{r}");
    next_second().await;
    let fresh = mint(find(&["TOKEN=", "-d xms_cc=cp1 |"])).await;
    assert_eq!(
        status_and_challenge(&call(fresh.clone(), call_api.clone()).await).0,
        "HTTP/1.1 200 OK"
    );
    next_second().await;
    let reply: serde_json::Value =
        serde_json::from_str(&run(find(&["/dev/events", "account-disabled"])).await).unwrap();
    assert_eq!(reply["delivered"][0]["status"], 202, "{reply}");
    let r = call(fresh, call_api.clone()).await;
    assert_eq!(
        status_and_challenge(&r).0,
        "HTTP/1.1 401 Unauthorized",
        "{r}"
    );
    let r = run(find(&["/admin/block"])).await;
    assert_eq!(status_and_challenge(&r).0, "HTTP/1.1 200 OK", "{r}");
    let listed: serde_json::Value =
        serde_json::from_str(&run(find(&["/admin/entries/revocations"])).await).unwrap();
    assert!(listed["total"].as_u64().is_some_and(|n| n >= 1), "{listed}");
    let meta: serde_json::Value =
        serde_json::from_str(&run(find(&["/.well-known/ssf-configuration"])).await).unwrap();
    assert_eq!(meta["issuer"], demo.transmitter.issuer_url());
    demo.shutdown().await;
}
