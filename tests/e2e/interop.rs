//! Azure SDK interop: azure-core's `BearerTokenCredentialPolicy` answers the proxy's claims challenges.

// The proxy (TLS listener, admin API), the development issuer and the echo upstream run in this
// process on 127.0.0.1:0; tests/e2e/interop/azure_sdk_cae.py drives the real SDK pipeline against
// them. The interpreter is `CAE_PYTHON` (default `python3`); where it cannot import azure.core
// the test says so and passes, unless `CAE_REQUIRE_INTEROP=1`, where that is a failure.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;
use cae_proxy::auth::challenge::{acrs_claims, nbf_claims};
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "interop-admin-secret";
const VARIANTS: [(&str, &str); 2] = [("token_info", "get_token_info"), ("token", "get_token")];
const STEPS: [&str; 5] = ["a", "a-legacy", "b", "b-legacy", "c"];

/// A TLS listener, the admin API with its token, the dev issuer (empty realm) and two routes of
/// the echo upstream: `/api/admin` (step-up to auth context `c1`) and `/api`.
fn config(certs: &Certs, iss: &str, up: &str) -> String {
    Toml::new()
        .tls_listener("public", certs, false, "")
        .admin(&format!("token = \"{ADMIN_TOKEN}\""))
        .upstream("echo", up, "")
        .dev_issuer(iss, "algorithms = [\"RS256\", \"ES256\"]\nrealm = \"\"")
        .route_to(
            "admin-api",
            "/api/admin",
            "echo",
            "issuers = [\"dev\"]\nidentity_headers = { \"x-user-sub\" = \"sub\", \"x-user-sid\" = \"sid\", \"x-user-acrs\" = \"acrs\" }\n[route.cae]\nrevocation = true\nauth_context = \"c1\"",
        )
        .route_to(
            "api",
            "/api",
            "echo",
            "issuers = [\"dev\"]\nidentity_headers = { \"x-user-sub\" = \"sub\", \"x-user-sid\" = \"sid\", \"x-user-caps\" = \"xms_cc\" }\n[route.cae]\nrevocation = true",
        )
        .build()
}

fn python() -> String {
    std::env::var("CAE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// The azure-core version the interpreter imports, or why it cannot.
async fn azure_core_version(python: &str) -> Result<String, String> {
    let out = tokio::process::Command::new(python)
        .args([
            "-c",
            "import azure.core, requests; print(azure.core.__version__)",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {python:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python:?} cannot import azure.core and requests ({})",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no error message")
                .trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sdk_answers_claims_challenges_and_succeeds_on_retry() {
    let python = python();
    let version = match azure_core_version(&python).await {
        Ok(v) => v,
        Err(why) => {
            let hint =
                "install it with `python3 -m venv /tmp/azvenv && /tmp/azvenv/bin/pip install \
                        azure-core requests` and set CAE_PYTHON=/tmp/azvenv/bin/python";
            if std::env::var("CAE_REQUIRE_INTEROP").as_deref() == Ok("1") {
                panic!("CAE_REQUIRE_INTEROP=1 but {why}; {hint}");
            }
            eprintln!("skipping the Azure SDK interop test: {why}; {hint}");
            return;
        }
    };

    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let h = Harness::start_in(dir, &config(&certs, &idp.issuer_url(), &up.url())).await;
    h.wait_ready().await;
    let proxy_url = format!(
        "https://127.0.0.1:{}",
        h.proxy.addr("public").expect("public listener").port()
    );
    let admin_url = h.admin_url("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/interop/azure_sdk_cae.py"
    );

    let child = tokio::process::Command::new(&python)
        .arg(script)
        .args(["--proxy", &proxy_url])
        .args(["--issuer", &idp.issuer_url()])
        .args(["--admin", &admin_url])
        .args(["--admin-token", ADMIN_TOKEN])
        .args(["--ca-file", &certs.ca.display().to_string()])
        .args(["--api-path", "/api/orders"])
        .args(["--stepup-path", "/api/admin/settings"])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {python} {script}: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the interop script finishes within 120 s")
        .expect("wait for the interop script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = format!("--- stdout\n{stdout}--- stderr\n{stderr}");
    println!("{report}");
    assert_eq!(out.status.code(), Some(0), "the script failed:\n{report}");

    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("azure-core {version} ")),
        "{report}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("FAIL")),
        "a step failed:\n{report}"
    );
    for (variant, _) in VARIANTS {
        for step in STEPS {
            let prefix = format!("ok {variant}/{step}: ");
            assert!(
                lines.iter().any(|l| l.starts_with(&prefix)),
                "no line {prefix:?}:\n{report}"
            );
        }
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("interop ok: all 10 steps passed with azure-core {version}").as_str()),
        "{report}"
    );

    // The script's own record, checked here against the proxy's exact challenges.
    let result: Value = lines
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line:\n{report}"));
    assert_eq!(result["azure_core"], version.as_str());
    let iss = idp.issuer_url();
    for (variant, method) in VARIANTS {
        let v = &result["variants"][variant];
        let steps = &v["steps"];
        let at = v["revoked_at"].as_i64().expect("revoked_at");

        for step in ["a", "a-legacy"] {
            let calls = steps[step]["calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{variant}/{step}: {report}");
            assert_eq!(calls[0]["method"], method);
            assert_eq!(calls[0]["claims"], Value::Null);
            assert_eq!(calls[0]["enable_cae"], step == "a");
            assert_eq!(calls[0]["scopes"], json!(["api://cae-demo/.default"]));
            assert!(calls[0]["token_claims"]["iat"].as_i64().unwrap() < at);
        }

        // b: the revocation challenge, byte for byte, and the token request it caused.
        let b = &steps["b"];
        let wire = b["wire"].as_array().unwrap();
        assert_eq!(
            wire.iter().map(|w| w["status"].clone()).collect::<Vec<_>>(),
            [401, 200],
            "{variant}/b: {report}"
        );
        assert_eq!(
            wire[0]["www_authenticate"],
            format!(
                r#"Bearer realm="", authorization_uri="{iss}/authorize", error="insufficient_claims", claims="{}""#,
                nbf_claims(at)
            ),
            "{variant}/b"
        );
        let calls = b["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{variant}/b: {report}");
        assert_eq!(calls[0]["method"], method);
        assert_eq!(calls[0]["enable_cae"], true);
        let claims: Value = serde_json::from_str(calls[0]["claims"].as_str().unwrap()).unwrap();
        assert_eq!(
            claims,
            json!({"access_token": {"nbf": {"essential": true, "value": at.to_string()}}})
        );
        assert!(calls[0]["token_claims"]["iat"].as_i64().unwrap() >= at);
        assert_eq!(b["status"], 200);

        // b-legacy: no cp1, no claims challenge, no token request, no retry.
        let bl = &steps["b-legacy"];
        assert_eq!(bl["status"], 401);
        assert_eq!(bl["calls"], json!([]));
        assert_eq!(bl["wire"].as_array().unwrap().len(), 1);
        let legacy_challenge = bl["wire"][0]["www_authenticate"].as_str().unwrap();
        assert!(
            legacy_challenge.contains(r#"error="invalid_token""#)
                && !legacy_challenge.contains("claims="),
            "{legacy_challenge}"
        );

        // c: the step-up challenge and the token request it caused.
        let c = &steps["c"];
        let wire = c["wire"].as_array().unwrap();
        assert_eq!(
            wire.iter().map(|w| w["status"].clone()).collect::<Vec<_>>(),
            [401, 200],
            "{variant}/c: {report}"
        );
        // The next call reuses the stepped-up token: no token request, one request.
        assert_eq!(c["reuse"]["status"], 200, "{variant}/c: {report}");
        assert_eq!(c["reuse"]["calls"], json!([]), "{variant}/c: {report}");
        assert_eq!(c["reuse"]["wire"].as_array().unwrap().len(), 1);
        let challenge = wire[0]["www_authenticate"].as_str().unwrap();
        assert!(
            challenge.contains(r#"error="insufficient_claims""#)
                && challenge.contains(&format!(r#"claims="{}""#, acrs_claims("c1"))),
            "{challenge}"
        );
        let calls = c["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{variant}/c: {report}");
        assert_eq!(calls[0]["method"], method);
        assert_eq!(
            serde_json::from_str::<Value>(calls[0]["claims"].as_str().unwrap()).unwrap(),
            json!({"access_token": {"acrs": {"essential": true, "value": "c1"}}})
        );
        assert_eq!(calls[0]["token_claims"]["acrs"], json!(["c1"]));
        assert!(c["upstream_acrs"].as_str().unwrap().contains("c1"));
    }

    // Only the authorised requests reached the upstream: a, a-legacy, the retry of b, the retry
    // of c and the second step-up call, for each variant. No 401 was forwarded.
    assert_eq!(up.requests(), 10, "{report}");
}
