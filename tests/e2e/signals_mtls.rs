//! Push over mTLS: a client certificate pinned to a transmitter (`push.client_cert_sha256`) may
//! push for it, another certificate of the same CA gets `access_denied`, and the pin makes the
//! connection's certificate, not only the CA, the transmitter's identity.

use crate::common::*;
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::transmitter::{complex, iss_sub, opaque, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

fn sha256_hex(pem: &std::path::Path) -> String {
    let der = cae_proxy::tls::load_certs(pem).unwrap().remove(0);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn a_pinned_client_certificate_pushes_for_its_transmitter_only() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let (second_cert, second_key) = (
        dir.path().join("client2.pem"),
        dir.path().join("client2.key"),
    );
    let toml = format!(
        r#"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
[admin]
address = "127.0.0.1:0"
[store]
backend = "memory"
[upstreams.app]
url = "{up}"
[[issuer]]
name = "dev"
issuer = "{iss}"
jwks_uri = "{iss}/jwks"
audiences = ["api://cae-demo"]
[[route]]
upstream = "app"
[[transmitter]]
name = "pinned"
issuer = "{txi}"
jwks_uri = "{txi}/jwks"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/pinned"
client_cert_sha256 = ["{pin}"]
"#,
        cert = c.cert.display(),
        key = c.key.display(),
        ca = c.ca.display(),
        up = up.url(),
        iss = idp.issuer_url(),
        txi = tx.issuer_url(),
        pin = sha256_hex(&c.client_cert).to_lowercase(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let url = format!(
        "https://localhost:{}/ssf/pinned",
        h.proxy.addr("signals").unwrap().port()
    );
    let now = cae_proxy::dev::now_secs();
    let set = |sid: &str| {
        tx.sign_set(DevTransmitter::session_revoked(
            complex(&[
                ("session", opaque(sid)),
                ("user", iss_sub(&idp.issuer_url(), "alice")),
            ]),
            Some(now - 5),
        ))
    };
    let push = |client: TestClient, body: String| {
        let url = url.clone();
        async move {
            send(
                &client,
                Method::POST,
                &url,
                &[("content-type", "application/secevent+jwt")],
                Bytes::from(body),
            )
            .await
        }
    };

    // Another certificate of the same CA: the handshake succeeds, the push is refused.
    let r = push(tls_client_as(&c, &second_cert, &second_key), set("s-other")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-language"), Some("en-US"));
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({"err": "access_denied", "description": "this client certificate may not send for this transmitter"})
    );
    // The pinned certificate: stored and enforced.
    let r = push(tls_client(&c, false, true), set("s-pinned")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stats = get(&client(), &h.admin_url("/admin/stats"), &[])
        .await
        .json();
    assert_eq!(
        stats["revocations"], 1,
        "only the pinned push was stored: {stats}"
    );
    let old = idp.mint("alice", json!({"sid": "s-pinned", "iat": now - 60}));
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[("authorization", &format!("Bearer {old}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let other = idp.mint("alice", json!({"sid": "s-other", "iat": now - 60}));
    let r = get(
        &client(),
        &h.url("public", "/"),
        &[("authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the refused push changed nothing");
}

#[test]
fn a_pin_needs_mtls_signals_listeners_and_well_formed_fingerprints() {
    let base = r#"
[[listener]]
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[[transmitter]]
name = "t"
issuer = "https://ssf.example.com"
jwks_uri = "https://ssf.example.com/jwks"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/t"
authorization = "Bearer x"
"#;
    let err = cae_proxy::config::Config::parse(
        &format!(
            "{base}client_cert_sha256 = [\"{}\", \"zz\"]\n",
            "ab".repeat(32)
        ),
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "transmitter[0].push.client_cert_sha256[1]: \"zz\" is not a SHA-256 fingerprint"
        ),
        "{err}"
    );
    assert!(
        err.contains("transmitter[0].push.client_cert_sha256: needs every signals listener to require client certificates"),
        "{err}"
    );
}
