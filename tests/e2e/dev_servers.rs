//! `cae-proxy dev issuer` and `cae-proxy dev transmitter` run as real processes: loopback only
//! unless forced, a loud banner, and the curl commands they print work when pasted into a shell
//! (run here with `sh -c`, against a real proxy for the transmitter's events).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;
use base64::Engine;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;
use serde_json::{json, Value};

/// A `cae-proxy dev …` process and everything it printed up to "Ctrl-C stops it.".
struct DevProcess {
    child: Child,
    output: String,
}

impl DevProcess {
    fn start(args: &[&str]) -> DevProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
            .arg("dev")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cae-proxy dev");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut output = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    output.push_str(&line);
                    output.push('\n');
                    if line.trim() == "Ctrl-C stops it." {
                        break;
                    }
                }
                Err(_) => panic!("cae-proxy dev {args:?} did not finish its banner:\n{output}"),
            }
        }
        DevProcess { child, output }
    }

    /// The value printed after `key` in the aligned key/value block.
    fn value(&self, key: &str) -> String {
        self.output
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix(key)
                    .filter(|rest| rest.starts_with("  "))
                    .map(|rest| rest.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{}", self.output))
    }

    /// The printed commands, one per line, in order.
    fn commands(&self) -> Vec<String> {
        self.output
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("curl ") || l.starts_with("TOKEN="))
            .map(str::to_string)
            .collect()
    }

    /// The printed command containing every needle.
    fn command(&self, needles: &[&str]) -> String {
        self.commands()
            .into_iter()
            .find(|c| needles.iter().all(|n| c.contains(n)))
            .unwrap_or_else(|| panic!("no command with {needles:?} in:\n{}", self.output))
    }

    /// SIGTERM, then the exit code (bounded wait).
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        poll_until_blocking(Duration::from_secs(10), || self.child.try_wait().unwrap())
            .and_then(|s| s.code())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn claims_of(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn header_of(jwt: &str) -> Value {
    let part = jwt.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn development_servers_refuse_public_addresses_unless_forced() {
    for server in ["issuer", "transmitter"] {
        let out = Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
            .args(["dev", server, "--listen", "0.0.0.0:0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{server}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "cae-proxy dev: refusing to listen on 0.0.0.0:0: not a loopback address; development \
             servers sign tokens for anyone (pass --force-public if you really mean it)"
        );
    }
}

#[tokio::test]
async fn dev_issuer_prints_working_commands() {
    let p = DevProcess::start(&["issuer", "--listen", "127.0.0.1:0"]);
    assert!(
        p.output
            .contains("!!  DEVELOPMENT ISSUER: NOT FOR PRODUCTION"),
        "{}",
        p.output
    );
    assert!(!p.output.contains('\u{1b}'), "no colour on a pipe");
    let issuer = p.value("issuer");
    assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");

    // A token with the claims the first command asks for.
    let reply: Value =
        serde_json::from_str(&shell(&p.command(&["/token", "-d sid=s1"])).await).unwrap();
    let c = claims_of(reply["access_token"].as_str().unwrap());
    assert_eq!(c["iss"], json!(issuer));
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["sid"], "s1");
    assert_eq!(c["ipaddr"], "127.0.0.1");
    assert_eq!(c["xms_cc"], json!(["cp1"]));
    assert_eq!(c["aud"], "api://cae-demo");

    // Answering a claims challenge: the pasted claims value is honoured.
    let challenge = base64::engine::general_purpose::STANDARD
        .encode(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#);
    let cmd = p
        .command(&["PASTE_CLAIMS"])
        .replace("PASTE_CLAIMS", &challenge);
    let reply: Value = serde_json::from_str(&shell(&cmd).await).unwrap();
    let c = claims_of(reply["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["acrs"], json!(["c1"]));

    // The JSON form: extra claims, a null removes a default one, a chosen lifetime.
    let reply: Value = serde_json::from_str(&shell(&p.command(&["lifetime_secs"])).await).unwrap();
    let c = claims_of(reply["access_token"].as_str().unwrap());
    assert_eq!(c["roles"], json!(["admin"]));
    assert!(
        c["xms_cc"].as_array().is_none_or(|a| a.is_empty()),
        "no client capabilities: {c}"
    );
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);

    // Discovery names this issuer; the JWKS has the signing key.
    let discovery: Value =
        serde_json::from_str(&shell(&p.command(&["/.well-known/openid-configuration"])).await)
            .unwrap();
    assert_eq!(discovery["issuer"], json!(issuer));
    let jwks: Value =
        serde_json::from_str(&shell(&format!("curl -s {issuer}/jwks")).await).unwrap();
    assert!(jwks["keys"].as_array().is_some_and(|k| !k.is_empty()));
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_transmitter_signs_events_on_request_and_the_proxy_enforces_them() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevProcess::start(&[
        "transmitter",
        "--listen",
        "127.0.0.1:0",
        "--subject-issuer",
        &idp.issuer_url(),
        "--management-token",
        "mgmt",
    ]);
    assert!(
        tx.output
            .contains("!!  DEVELOPMENT SSF TRANSMITTER: NOT FOR PRODUCTION"),
        "{}",
        tx.output
    );
    let iss = tx.value("issuer");
    assert_eq!(tx.value("events"), format!("{iss}/dev/events"));
    assert_eq!(tx.value("users of"), idp.issuer_url());

    let h = Harness::start(
        &Toml::new()
            .no_server()
            .public()
            .signals()
            .admin("")
            .app(&up.url())
            .issuer(
                "dev",
                &idp.issuer_url(),
                &format!(
                    "jwks_uri = \"{}/jwks\"\naudiences = [\"{API_AUDIENCE}\"]\nallow_insecure_http = true",
                    idp.issuer_url()
                ),
            )
            .route("api", "/", "")
            .transmitter(
                "dev-ssf",
                &format!(
                    "issuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"cae-proxy-demo\"]\nallow_insecure_http = true\n[transmitter.push]\npath = \"/ssf/demo\"\nauthorization = \"Bearer demo-push-secret\""
                ),
            )
            .build(),
    )
    .await;
    h.wait_ready().await;
    let c = client();
    let now = cae_proxy::dev::now_secs();
    let token = idp.mint(
        "alice",
        json!({"sid": "s1", "xms_cc": ["cp1"], "iat": now - 60}),
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(&c, &h.url("public", "/x"), &[("authorization", &bearer)])
            .await
            .status,
        StatusCode::OK
    );

    // The printed session-revoked command, aimed at this proxy instead of the demo's port.
    let push_url = h.url("signals", "/ssf/demo");
    let cmd = tx
        .command(&["/dev/events", "session-revoked"])
        .replace("http://127.0.0.1:29090/ssf/demo", &push_url);
    assert!(cmd.contains("-H 'authorization: Bearer mgmt'"), "{cmd}");
    let reply: Value = serde_json::from_str(&shell(&cmd).await).unwrap();
    assert_eq!(
        reply["event"],
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
    );
    assert_eq!(
        reply["delivered"],
        json!([{"method": "urn:ietf:rfc:8935", "endpoint_url": push_url, "status": 202, "response": ""}])
    );
    let set = reply["set"].as_str().unwrap();
    assert_eq!(header_of(set)["typ"], "secevent+jwt");
    let payload = claims_of(set);
    assert_eq!(payload["iss"], json!(iss));
    assert_eq!(payload["aud"], "cae-proxy-demo");
    assert_eq!(reply["jti"], payload["jti"]);
    assert_eq!(
        payload["sub_id"],
        json!({"format": "complex",
               "user": {"format": "iss_sub", "iss": idp.issuer_url(), "sub": "alice"},
               "session": {"format": "opaque", "id": "s1"}})
    );
    let at = payload["events"]
        ["https://schemas.openid.net/secevent/caep/event-type/session-revoked"]["event_timestamp"]
        .as_i64()
        .unwrap();
    let r = get(&c, &h.url("public", "/x"), &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let claims = base64::engine::general_purpose::STANDARD.encode(format!(
        r#"{{"access_token":{{"nbf":{{"essential":true,"value":"{at}"}}}}}}"#
    ));
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(r#"Bearer realm="", error="insufficient_claims", claims="{claims}""#).as_str()
        )
    );

    // "deliver": false only signs.
    let reply: Value =
        serde_json::from_str(&shell(&tx.command(&["/dev/events", "\"deliver\":false"])).await)
            .unwrap();
    assert_eq!(reply["delivered"], json!([]));
    assert!(claims_of(reply["set"].as_str().unwrap())["events"]
        ["https://schemas.openid.net/secevent/risc/event-type/account-disabled"]
        ["event_timestamp"]
        .is_i64());

    // A push stream created with the printed command receives events without push_to.
    let cmd = tx
        .command(&["/ssf/stream", "urn:ietf:rfc:8935"])
        .replace("http://127.0.0.1:29090/ssf/demo", &push_url);
    let stream: Value = serde_json::from_str(&shell(&cmd).await).unwrap();
    let stream_id = stream["stream_id"].as_str().unwrap().to_string();
    let body = json!({"event": "account-disabled", "sub": "bob"}).to_string();
    let reply: Value = serde_json::from_str(
        &shell(&format!(
            "curl -s {iss}/dev/events -H 'authorization: Bearer mgmt' -H 'content-type: application/json' -d '{body}'"
        ))
        .await,
    )
    .unwrap();
    assert_eq!(
        reply["delivered"],
        json!([{"method": "urn:ietf:rfc:8935", "stream_id": stream_id, "endpoint_url": push_url, "status": 202, "response": ""}])
    );
    let bob = format!("Bearer {}", idp.mint("bob", json!({})));
    assert_eq!(
        get(&c, &h.url("public", "/x"), &[("authorization", &bob)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Refusals say why: no management token, a typo, an unknown event.
    for (auth, body, status, description) in [
        (
            "",
            json!({"event": "session-revoked", "sub": "a"}),
            401,
            "bearer token required",
        ),
        (
            "-H 'authorization: Bearer mgmt'",
            json!({"event": "session-revoked", "sub": "a", "sidd": "x"}),
            400,
            "unknown field \"sidd\"",
        ),
        (
            "-H 'authorization: Bearer mgmt'",
            json!({"event": "password-changed", "sub": "a"}),
            400,
            "unknown event \"password-changed\"",
        ),
    ] {
        let out = shell(&format!(
            "curl -s -w '\\n%{{http_code}}' {iss}/dev/events {auth} -H 'content-type: application/json' -d '{body}'"
        ))
        .await;
        let (json_text, code) = out.rsplit_once('\n').unwrap();
        assert_eq!(code, status.to_string(), "{out}");
        let v: Value = serde_json::from_str(json_text).unwrap();
        assert!(
            v["description"]
                .as_str()
                .is_some_and(|d| d.contains(description)),
            "{out}"
        );
    }
    assert_eq!(tx.stop(), Some(0));
}
