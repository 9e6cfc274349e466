//! Load-benchmark helper (benches/load/run.sh): `gen` writes keys, JWKS, PEMs, token lists and a
//! store with a million revocations; `probe` measures SET push → first refused request latency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::store::{Batch, Change, Durable, RedbStore, SubjectKey};
use serde_json::json;

const ISS: &str = "https://idp.bench.example";
const TX_ISS: &str = "https://tx.bench.example";
const AUD: &str = "api://bench";

fn now() -> i64 {
    cae_proxy::store::now_secs()
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn claims(sub: &str, sid: &str, iat: i64) -> serde_json::Value {
    json!({"iss": ISS, "sub": sub, "aud": AUD, "iat": iat, "nbf": iat, "exp": iat + 6 * 3600,
           "sid": sid, "jti": format!("jti-{sub}"), "xms_cc": ["cp1"], "scp": "read",
           "ipaddr": "127.0.0.1"})
}

fn gen(dir: &Path, tokens: usize, revocations: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let rs = SigningKey::generate_with_kid(KeyAlg::Rs256, "bench-rs256").unwrap();
    let es = SigningKey::generate_with_kid(KeyAlg::Es256, "bench-es256").unwrap();
    let tx = SigningKey::generate_with_kid(KeyAlg::Rs256, "bench-tx").unwrap();
    let w = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    w("issuer-rs256.pem", rs.private_pem());
    w("issuer-es256.pem", es.private_pem());
    w("transmitter.pem", tx.private_pem());
    w("rs256.pub.pem", rs.public_pem());
    w("es256.pub.pem", es.public_pem());
    w(
        "jwks.json",
        json!({"keys": [rs.public_jwk(), es.public_jwk()]}).to_string(),
    );
    w(
        "tx-jwks.json",
        json!({"keys": [tx.public_jwk()]}).to_string(),
    );
    let t0 = now() - 30;
    w(
        "token-rs256.txt",
        rs.sign(None, &claims("repeat-user", "repeat-sid", t0)) + "\n",
    );
    w(
        "token-es256.txt",
        es.sign(None, &claims("repeat-user", "repeat-sid", t0)) + "\n",
    );
    for (key, file) in [(&rs, "tokens-rs256.txt"), (&es, "tokens-es256.txt")] {
        let mut out = String::new();
        for i in 0..tokens {
            out.push_str(&key.sign(None, &claims(&format!("user-{i}"), &format!("sid-{i}"), t0)));
            out.push('\n');
        }
        w(file, out);
    }
    if revocations > 0 {
        let path = dir.join("store-revoked.redb");
        let _ = std::fs::remove_file(&path);
        let store = RedbStore::open(&path, false).unwrap();
        let changes = (0..revocations)
            .map(|i| Change::Revoke {
                key: SubjectKey::Subject {
                    iss: ISS.into(),
                    sub: format!("revoked-user-{i:08}"),
                },
                at: now(),
            })
            .collect();
        store
            .commit(&Batch {
                changes,
                set_id: None,
                now: now(),
            })
            .unwrap();
    }
    println!(
        "wrote {} (tokens: {tokens} per algorithm, revocations: {revocations})",
        dir.display()
    );
}

async fn probe(dir: &Path, proxy: &str, push: &str, auth: &str, n: usize) {
    let rs = SigningKey::from_private_pem(
        KeyAlg::Rs256,
        "bench-rs256",
        &std::fs::read_to_string(dir.join("issuer-rs256.pem")).unwrap(),
    )
    .unwrap();
    let tx = SigningKey::from_private_pem(
        KeyAlg::Rs256,
        "bench-tx",
        &std::fs::read_to_string(dir.join("transmitter.pem")).unwrap(),
    )
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let get = |token: String| {
        let client = client.clone();
        let url = proxy.to_string();
        async move {
            let req = http::Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client
                .request(req)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let mut lat = Vec::new();
    let run = cae_proxy::dev::random_id(4);
    for i in 0..n {
        let (sub, sid) = (format!("probe-{run}-{i}"), format!("probe-sid-{run}-{i}"));
        let token = rs.sign(None, &claims(&sub, &sid, now() - 5));
        assert_eq!(
            get(token.clone()).await,
            200,
            "probe token accepted before the push"
        );
        let set = tx.sign(
            Some(json!({"typ": "secevent+jwt"})),
            &json!({"iss": TX_ISS, "jti": format!("probe-{run}-{i}"), "iat": now(), "aud": "cae-proxy",
                "sub_id": {"format": "complex", "session": {"format": "opaque", "id": sid}, "user": {"format": "iss_sub", "iss": ISS, "sub": sub}},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": now()}}}),
        );
        // The clock starts when the push is sent; the probe asks with the revoked token
        // meanwhile, so the time to the first refusal does not wait for the 202.
        let t0 = Instant::now();
        let req = http::Request::post(push)
            .header("content-type", "application/secevent+jwt")
            .header("authorization", auth)
            .body(http_body_util::Full::new(bytes::Bytes::from(set)))
            .unwrap();
        let pushed = tokio::spawn(client.request(req));
        let refused_after = loop {
            if get(token.clone()).await == 401 {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "revocation not enforced within 5 s"
            );
        };
        let status = pushed
            .await
            .unwrap()
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        assert_eq!(status, 202, "push accepted");
        lat.push(refused_after.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        json!({"n": n, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)})
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => gen(&PathBuf::from(arg(&args, "--dir", "target/bench")), arg(&args, "--tokens", "2000").parse().unwrap(), arg(&args, "--revocations", "1000000").parse().unwrap()),
        Some("probe") => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(probe(
                &PathBuf::from(arg(&args, "--dir", "target/bench")),
                &arg(&args, "--proxy", "http://127.0.0.1:18080/"),
                &arg(&args, "--push", "http://127.0.0.1:18090/ssf/bench"),
                &arg(&args, "--auth", "Bearer bench-push"),
                arg(&args, "--n", "50").parse().unwrap(),
            ));
        }
        _ => eprintln!("usage: benchkit gen --dir D [--tokens N] [--revocations M] | probe --dir D --proxy URL --push URL [--auth A] [--n N]"),
    }
}
