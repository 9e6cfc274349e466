//! Micro-benchmarks of the request path's parts: token validation (RS256, ES256, cache hit), the
//! CAE decision with 0 and 1,000,000 revocations, challenge construction, SET validation, the
//! configuration snapshot swap, and a cached-token request with a bearer token against one with a
//! DPoP-bound token and its ES256 proof. Run: `cargo bench --bench micro`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use cae_proxy::auth::cache::{self, TokenCache};
use cae_proxy::auth::challenge::{respond, ChallengeCtx};
use cae_proxy::auth::decide::{decide, Credential, DenyReason, RevokedBy};
use cae_proxy::auth::token::{self, Principal, TokenIp};
use cae_proxy::config::Config;
use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::state::Shared;
use cae_proxy::store::{Change, MemoryStore, SignalStore, SubjectKey, Tables};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

const ISS: &str = "https://idp.bench.example";

struct World {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    rs: SigningKey,
    es: SigningKey,
    _dir: tempfile::TempDir,
}

fn config_text(dir: &Path) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
[store]
backend = "memory"
[upstreams.app]
url = "http://127.0.0.1:1"
[[issuer]]
name = "bench"
issuer = "{ISS}"
jwks_file = "{}/jwks.json"
audiences = ["api://bench"]
algorithms = ["RS256", "ES256"]
[[route]]
name = "api"
upstream = "app"
cae = {{ token_ip = true, signal_ip = true }}
[[transmitter]]
name = "tx"
issuer = "https://tx.bench.example"
jwks_file = "{}/jwks.json"
audiences = ["cae-proxy"]
algorithms = ["RS256"]
[transmitter.poll]
endpoint = "https://tx.bench.example/poll"
"#,
        dir.display(),
        dir.display()
    )
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let rs = SigningKey::generate(KeyAlg::Rs256).unwrap();
    let es = SigningKey::generate(KeyAlg::Es256).unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [rs.public_jwk(), es.public_jwk()]}).to_string(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::parse(&config_text(dir.path()), dir.path()).unwrap();
    let shared = rt.block_on(async {
        let store = Arc::new(SignalStore::open(Arc::new(MemoryStore::default()), 3600, 0).unwrap());
        let shared = Arc::new(Shared::new(None, store, 1000, 1, None));
        let snap = shared.build(config).unwrap();
        shared.install(snap);
        for _ in 0..200 {
            if shared.not_ready().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        shared
    });
    World {
        rt,
        shared,
        rs,
        es,
        _dir: dir,
    }
}

fn token(key: &SigningKey, sub: &str, now: i64) -> String {
    key.sign(None, &json!({"iss": ISS, "sub": sub, "aud": "api://bench", "iat": now, "nbf": now, "exp": now + 3600, "sid": "s1", "jti": sub, "xms_cc": ["cp1"], "ipaddr": "127.0.0.1", "scp": "read write"}))
}

fn principal(i: u64) -> Principal {
    Principal {
        iss: ISS.into(),
        subjects: vec![format!("user-{i}"), format!("oid-{i}")],
        sid: Some(format!("sid-{i}")),
        jti: Some(format!("jti-{i}")),
        tid: Some("tenant".into()),
        iat: Some(1_000),
        exp: 10_000,
        cp1: true,
        ipaddr: TokenIp::Addr("127.0.0.1".parse().unwrap()),
        emails: vec![format!("user{i}@example.com")],
        ..Default::default()
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * 4096)
        .unwrap_or(0)
}

fn filled_tables(n: u64) -> Tables {
    let t = Tables::default();
    for i in 0..n {
        t.apply(&Change::Revoke {
            key: SubjectKey::Subject {
                iss: ISS.into(),
                sub: format!("revoked-user-{i:08}"),
            },
            at: 5_000,
        });
    }
    t
}

fn benches(c: &mut Criterion) {
    let w = world();
    let now = cae_proxy::store::now_secs();
    let snap = w.shared.snapshot.load_full();

    let rs_tokens: Vec<String> = (0..64)
        .map(|i| token(&w.rs, &format!("u{i}"), now))
        .collect();
    let es_tokens: Vec<String> = (0..64)
        .map(|i| token(&w.es, &format!("u{i}"), now))
        .collect();
    let mut i = 0usize;
    c.bench_function("token_validate_rs256_uncached", |b| {
        b.iter(|| {
            i = (i + 1) % rs_tokens.len();
            black_box(
                w.rt.block_on(token::validate(&rs_tokens[i], &snap.issuers, now, None))
                    .unwrap(),
            )
        })
    });
    c.bench_function("token_validate_es256_uncached", |b| {
        b.iter(|| {
            i = (i + 1) % es_tokens.len();
            black_box(
                w.rt.block_on(token::validate(&es_tokens[i], &snap.issuers, now, None))
                    .unwrap(),
            )
        })
    });
    // The signature alone, with the key validation looks up: the uncached validation above
    // minus this is what parsing, claims, the principal and the checks cost.
    let (rs_input, rs_sig) = rs_tokens[0].rsplit_once('.').unwrap();
    let rs_sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, rs_sig).unwrap();
    let rs_kid = token::inspect(&rs_tokens[0]).unwrap().header.kid;
    let rs_key = snap.issuers.list[0]
        .keys
        .keys()
        .get(rs_kid.as_deref())
        .unwrap();
    c.bench_function("rs256_verify", |b| {
        b.iter(|| {
            assert!(rs_key.verify(
                jsonwebtoken::Algorithm::RS256,
                black_box(rs_input.as_bytes()),
                black_box(&rs_sig)
            ))
        })
    });
    let cache = TokenCache::new(1000);
    let p = Arc::new(
        w.rt.block_on(token::validate(&rs_tokens[0], &snap.issuers, now, None))
            .unwrap(),
    );
    cache.insert(&cache::hash(&rs_tokens[0]), p);
    c.bench_function("token_cache_hit", |b| {
        b.iter(|| black_box(cache.get(&cache::hash(black_box(&rs_tokens[0])), now, 0)).unwrap())
    });

    let route = &snap.config.routes[0];
    let ip = "127.0.0.1".parse().unwrap();
    let empty = Tables::default();
    let pr = principal(7);
    c.bench_function("decide_0_revocations", |b| {
        b.iter(|| {
            black_box(decide(
                route,
                false,
                Credential::Valid(black_box(&pr)),
                &empty,
                ip,
                2_000,
            ))
        })
    });
    let before = rss_bytes();
    let full = filled_tables(1_000_000);
    let per_entry = (rss_bytes().saturating_sub(before)) as f64 / 1_000_000.0;
    println!("memory per revocation entry: {per_entry:.0} bytes (RSS growth over 1,000,000 subject revocations)");
    c.bench_function("decide_1m_revocations", |b| {
        b.iter(|| {
            black_box(decide(
                route,
                false,
                Credential::Valid(black_box(&pr)),
                &full,
                ip,
                2_000,
            ))
        })
    });
    let hit = Principal {
        subjects: vec!["revoked-user-00000042".into()],
        ..principal(42)
    };
    c.bench_function("decide_1m_revocations_hit", |b| {
        b.iter(|| {
            black_box(decide(
                route,
                false,
                Credential::Valid(black_box(&hit)),
                &full,
                ip,
                2_000,
            ))
        })
    });
    drop(full);

    let reason = DenyReason::Revoked {
        by: RevokedBy::Session,
        revoked_at: 1_604_106_651,
    };
    let ctx = ChallengeCtx {
        realm: "",
        authorization_uri: Some("https://login.microsoftonline.com/common/oauth2/authorize"),
        cp1: true,
        request_id: "0123456789abcdef0123456789abcdef",
        now,
    };
    c.bench_function("challenge_claims_revoked", |b| {
        b.iter(|| black_box(respond(black_box(&reason), &ctx)))
    });

    let tx = &snap.config.transmitters[0];
    let policy = cae_proxy::signals::set::SetPolicy::from(tx);
    let keys = cae_proxy::auth::keys::parse_jwks(
        json!({"keys": [w.rs.public_jwk()]}).to_string().as_bytes(),
        "bench",
        2048,
    )
    .unwrap();
    let set = w.rs.sign(
        Some(json!({"typ": "secevent+jwt"})),
        &json!({"iss": "https://tx.bench.example", "jti": "j1", "iat": now, "aud": "cae-proxy",
            "sub_id": {"format": "complex", "session": {"format": "opaque", "id": "s1"}, "user": {"format": "iss_sub", "iss": ISS, "sub": "u1"}},
            "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {"event_timestamp": now}}}),
    );
    c.bench_function("set_validate_rs256", |b| {
        b.iter(|| {
            black_box(cae_proxy::signals::set::verify_set(
                black_box(&set),
                &keys,
                &policy,
                now,
            ))
            .unwrap()
        })
    });

    dpop_vs_bearer(c, &w, now);

    let text = config_text(w._dir.path());
    c.bench_function("config_reload_build_and_swap", |b| {
        b.iter(|| {
            let cfg = Config::parse(&text, w._dir.path()).unwrap();
            let s = w.rt.block_on(async { w.shared.build(cfg) }).unwrap();
            w.shared.install(s);
        })
    });
    c.bench_function("snapshot_load", |b| {
        b.iter(|| black_box(w.shared.snapshot.load_full()))
    });
}

/// What a request costs from its `Authorization` header to a principal whose sender constraint
/// holds, with the token in the verified-token cache: a bearer token (hash, cache hit, the
/// trivial bearer check) against a DPoP-bound token (the same, plus the proof: parse, ES256
/// signature, `htu`, `ath`, thumbprint, replay-set insert). Each DPoP iteration gets a fresh
/// proof made outside the measurement.
fn dpop_vs_bearer(c: &mut Criterion, w: &World, now: i64) {
    use cae_proxy::auth::dpop::NonceKey;
    use cae_proxy::auth::inbound::Inbound;
    use cae_proxy::auth::keys::PublicJwk;
    use cae_proxy::auth::replay::ReplayCache;
    use cae_proxy::auth::sender::{Checker, Effective};
    use criterion::BatchSize;
    use http::HeaderMap;

    let snap = w.shared.snapshot.load_full();
    let client = SigningKey::generate(KeyAlg::Es256).unwrap();
    let jwk = client.public_jwk();
    let member = |m: &str| jwk[m].as_str().unwrap();
    let jkt = PublicJwk::Ec {
        crv: member("crv"),
        x: member("x"),
        y: member("y"),
    }
    .thumbprint();
    let jkt = cae_proxy::dev::keys::b64url(&jkt);
    let bearer = token(&w.es, "bearer-user", now);
    let bound = w.es.sign(
        None,
        &json!({"iss": ISS, "sub": "dpop-user", "aud": "api://bench", "iat": now, "exp": now + 3600, "cnf": {"jkt": jkt}}),
    );
    let cache = TokenCache::new(1000);
    for t in [&bearer, &bound] {
        let p =
            w.rt.block_on(token::validate(t, &snap.issuers, now, None))
                .unwrap();
        cache.insert(&cache::hash(t), Arc::new(p));
    }
    let route = &snap.config.routes[0];
    let checker = Checker {
        policy: Effective::of(&route.sender, None),
        server: &snap.config.server,
        nonces: &NonceKey::random(),
        replay: &ReplayCache::new(10_000_000),
        now,
    };
    let url = "https://api.bench.example/orders/42";
    let request = |h: &HeaderMap| -> bool {
        let (scheme, t) = token::access_token(h, None, 16 * 1024).unwrap().unwrap();
        let p = cache.get(&cache::hash(t), now, 0).unwrap();
        assert!(cache::usable(&p, now, &snap.issuers));
        let peer = "192.0.2.1".parse().unwrap();
        let view = Inbound {
            method: &http::Method::GET,
            scheme: "https",
            host: Some("api.bench.example"),
            path: "/orders/42",
            query: None,
            headers: h,
            client_ip: peer,
            peer,
            client_cert_sha256: None,
            trace: None,
        };
        w.rt.block_on(checker.check(&p, scheme, t, &view)).is_ok()
    };
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    c.bench_function("request_cached_bearer", |b| {
        b.iter(|| assert!(request(black_box(&h))))
    });
    let ath = cae_proxy::auth::dpop::access_token_hash(&bound);
    let mut n = 0u64;
    c.bench_function("request_cached_dpop_es256", |b| {
        b.iter_batched(
            || {
                n += 1;
                let proof = client.sign_raw(
                    &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
                    &json!({"jti": format!("bench-{n}"), "htm": "GET", "htu": url, "iat": now, "ath": ath}),
                );
                let mut h = HeaderMap::new();
                h.insert("authorization", format!("DPoP {bound}").parse().unwrap());
                h.insert("dpop", proof.parse().unwrap());
                h
            },
            |h| assert!(request(&h)),
            BatchSize::SmallInput,
        )
    });
    // One ES256 verification alone, for scale.
    let proof = client.sign_raw(&json!({"alg": "ES256"}), &json!({"x": 1}));
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    let public = [
        vec![4u8],
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            member("x"),
        )
        .unwrap(),
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            member("y"),
        )
        .unwrap(),
    ]
    .concat();
    let key = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &public,
    )
    .unwrap();
    c.bench_function("es256_verify", |b| {
        b.iter(|| {
            key.verify_sig(black_box(input.as_bytes()), black_box(&sig))
                .unwrap()
        })
    });
    // The same with the key imported from its coordinates each time, as a DPoP proof's `jwk`
    // must be (the import checks the point is on the curve).
    c.bench_function("es256_import_and_verify", |b| {
        b.iter(|| {
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                black_box(&public),
            )
            .verify(black_box(input.as_bytes()), black_box(&sig))
            .unwrap()
        })
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(micro);
