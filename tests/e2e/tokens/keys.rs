//! The key lifecycle: rotation under load fails no request; the last good keys keep validating
//! while the provider is down; unknown `kid`s refetch at most once per cooldown; periodic
//! refresh follows `max-age` within the configured bounds and alone makes a new key usable;
//! `jwks_file` changes are picked up, and a reload re-reads the file and applies a changed key
//! policy; a cached token (and a keep-alive connection repeating it) stops when its key goes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::keys::{KeyAlg, SigningKey};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::json;

use super::*;

#[tokio::test]
async fn key_rotation_under_load_fails_no_request() {
    let s = Arc::new(setup().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (s, stop, failed, ok) = (s.clone(), stop.clone(), failed.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Fresh tokens from whatever key signs now: every request is verified.
                let t = s.idp.mint(&format!("u{i}-{n}"), json!({}));
                let r = try_send(
                    &c,
                    Method::GET,
                    &s.h.url("public", "/api"),
                    &[("authorization", &bearer(&t))],
                    Bytes::new(),
                )
                .await;
                match r {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Progress is counted, not timed: each phase waits (bounded) for 20 more successful requests.
    let wait_for = |target: usize| {
        let ok = ok.clone();
        async move {
            eventually(Duration::from_secs(60), "progress of the load", || async {
                ok.load(Ordering::Relaxed) >= target
            })
            .await
        }
    };
    wait_for(20).await;
    let old = s.idp.signing_key().kid().to_string();
    s.idp.rotate(KeyAlg::Rs256); // new kid appears: the first token with it triggers one refetch
    wait_for(ok.load(Ordering::Relaxed) + 20).await;
    s.idp.remove_key(&old); // the old key is later removed
    wait_for(ok.load(Ordering::Relaxed) + 20).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
}

#[tokio::test]
async fn when_the_provider_is_down_the_last_good_keys_keep_validating() {
    let s = setup().await;
    s.idp.set_available(false);
    // A reload re-uses the key set; a refetch for an unknown kid fails; known keys keep working.
    s.h.proxy.reload().unwrap();
    let fresh = s.idp.mint("bob", json!({}));
    assert_eq!(call(&s.h, "/api", &fresh).await.status, StatusCode::OK);
    let stranger = SigningKey::generate_with_kid(KeyAlg::Rs256, "new-kid").unwrap();
    let now = cae_proxy::dev::now_secs();
    let t = stranger.sign(None, &json!({"iss": s.idp.issuer_url(), "sub": "x", "aud": "api://cae-demo", "iat": now, "exp": now + 60}));
    assert_invalid(&call(&s.h, "/api", &t).await, "the signing key is unknown");
    assert_eq!(
        call(&s.h, "/api", &s.idp.mint("carol", json!({})))
            .await
            .status,
        StatusCode::OK
    );
    let m = get(&client(), &s.h.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.lines().any(
            |l| l.starts_with("cae_key_fetch_failures_total{name=\"dev\"} ") && !l.ends_with(" 0")
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let s = setup().await;
    let before = s.idp.jwks_fetches();
    let now = cae_proxy::dev::now_secs();
    let key = SigningKey::generate(KeyAlg::Rs256).unwrap();
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let t = key.sign_raw(&json!({"alg": "RS256", "kid": format!("random-{i}")}), &json!({"iss": s.idp.issuer_url(), "sub": "x", "aud": "api://cae-demo", "iat": now, "exp": now + 60}));
        let (c, url) = (c.clone(), s.h.url("public", "/api"));
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                Method::GET,
                &url,
                &[("authorization", &format!("Bearer {t}"))],
                Bytes::new(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let fetched = s.idp.jwks_fetches() - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for 1000 unknown kids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_again_only_after_the_cooldown() {
    // The JWKS max-age (300s) keeps the periodic refresher quiet for the whole test.
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let cooldown = Duration::from_secs(2);
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"RS256\", \"ES256\"]\nunknown_kid_cooldown = \"2s\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base(&up.url()).build(),
        idp.issuer_url(),
        idp.jwks_url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let f0 = idp.jwks_fetches();
    assert!(f0 >= 1);
    let stranger = SigningKey::generate_with_kid(KeyAlg::Es256, "stranger").unwrap();
    let stray = |i: usize| {
        stranger.sign(
            Some(json!({"kid": format!("unknown-{i}")})),
            &claims(&idp.issuer_url(), "x"),
        )
    };

    // First unknown kid: exactly one refetch.
    let t0 = Instant::now();
    assert_invalid(
        &call(&h, "/", &stray(0)).await,
        "the signing key is unknown",
    );
    assert_eq!(idp.jwks_fetches(), f0 + 1);

    // Within the cooldown: a key the provider has just published is still unknown, and neither
    // it nor other unknown kids cause a fetch.
    idp.rotate(KeyAlg::Es256);
    let fresh = idp.mint_with(KeyAlg::Es256, "newcomer", json!({}));
    assert_invalid(&call(&h, "/", &fresh).await, "the signing key is unknown");
    for i in 1..6 {
        assert_invalid(
            &call(&h, "/", &stray(i)).await,
            "the signing key is unknown",
        );
    }
    assert_eq!(idp.jwks_fetches(), f0 + 1, "no fetch within the cooldown");
    assert!(
        t0.elapsed() < cooldown,
        "the in-cooldown checks took {:?}, longer than the cooldown: inconclusive",
        t0.elapsed()
    );

    // After the cooldown: one more refetch, and the new key validates.
    eventually(
        Duration::from_secs(15),
        "no refetch after the cooldown",
        || async { call(&h, "/", &fresh).await.status == StatusCode::OK },
    )
    .await;
    assert!(
        t0.elapsed() >= cooldown,
        "refetched after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        idp.jwks_fetches(),
        f0 + 2,
        "exactly one refetch after the cooldown"
    );
    assert_passed(&call(&h, "/", &fresh).await, "newcomer", "new key");

    // And a new cooldown starts.
    for i in 6..10 {
        assert_invalid(
            &call(&h, "/", &stray(i)).await,
            "the signing key is unknown",
        );
    }
    assert_eq!(idp.jwks_fetches(), f0 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_refresh_follows_max_age_clamped_to_the_configured_bounds() {
    let rsa = SigningKey::generate_with_kid(KeyAlg::Rs256, "k1").unwrap();
    // max-age=0 at first: below min_refresh (1s).
    let srv = JwksServer::start(vec![rsa.public_jwk().clone()], Some(0)).await;
    let up = EchoUpstream::start(listener().await).unwrap();
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"https://refresh.example.com\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nrefresh_interval = \"1h\"\nmin_refresh = \"1s\"\nmax_refresh = \"4s\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\n",
        base(&up.url()).build(),
        srv.url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;

    // Phase A, max-age=0 → min_refresh (1s): three fetches.
    srv.wait_fetches(3, Duration::from_secs(20)).await;
    // Phase B, max-age=2 → 2s, inside the bounds (not refresh_interval, not a bound).
    srv.set_max_age(Some(2));
    srv.wait_fetches(srv.fetches() + 3, Duration::from_secs(20))
        .await;
    // Phase C, max-age=86400 → max_refresh (4s).
    srv.set_max_age(Some(86_400));
    srv.wait_fetches(srv.fetches() + 2, Duration::from_secs(30))
        .await;

    // Each interval is decided by the max-age of the fetch that started it.
    let log = srv.fetch_log();
    let mut seen = [0usize; 3];
    for w in log.windows(2) {
        let ((t0, age), (t1, _)) = (w[0], w[1]);
        let (slot, expected) = match age {
            Some(0) => (0, Duration::from_secs(1)),
            Some(2) => (1, Duration::from_secs(2)),
            Some(86_400) => (2, Duration::from_secs(4)),
            other => panic!("unexpected max-age {other:?}"),
        };
        let got = t1 - t0;
        assert!(
            got >= expected - Duration::from_millis(100) && got < expected + Duration::from_millis(900),
            "after a fetch with max-age={age:?} the next came {got:?} later, expected about {expected:?}; log: {:?}",
            log.iter().map(|(t, a)| (*t - log[0].0, *a)).collect::<Vec<_>>()
        );
        seen[slot] += 1;
    }
    assert!(
        seen[0] >= 2 && seen[1] >= 2 && seen[2] >= 1,
        "intervals per phase: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_at_the_provider_becomes_usable_by_periodic_refresh_alone() {
    let k1 = SigningKey::generate_with_kid(KeyAlg::Es256, "k1").unwrap();
    let k2 = SigningKey::generate_with_kid(KeyAlg::Es256, "k2").unwrap();
    // A huge max-age, clamped to max_refresh (1s).
    let srv = JwksServer::start(vec![k1.public_jwk().clone()], Some(86_400)).await;
    let up = EchoUpstream::start(listener().await).unwrap();
    let iss = "https://periodic.example.com";
    let toml = format!(
        "{}[[issuer]]\nname = \"dev\"\nissuer = \"{iss}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nmin_refresh = \"200ms\"\nmax_refresh = \"1s\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base(&up.url()).build(),
        srv.url()
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    assert_passed(
        &call(&h, "/", &k1.sign(None, &claims(iss, "a"))).await,
        "a",
        "k1",
    );

    // The one unknown-kid refetch allowed per hour is spent now, while k2 is not published yet.
    let t2 = k2.sign(None, &claims(iss, "b"));
    let before = srv.fetches();
    assert_invalid(&call(&h, "/", &t2).await, "the signing key is unknown");
    assert!(srv.fetches() > before, "an unknown kid refetches once");
    // Within the cooldown, unknown kids do not fetch: only the refresher does from now on.
    srv.add_key(k2.public_jwk().clone());
    let added = Instant::now();
    let fetches_at_add = srv.fetches();
    eventually(
        Duration::from_secs(15),
        "k2 never became usable",
        || async { call(&h, "/", &t2).await.status == StatusCode::OK },
    )
    .await;
    // Usable within about max_refresh (not 86400s), through a periodic fetch.
    assert!(
        added.elapsed() < Duration::from_secs(5),
        "{:?}",
        added.elapsed()
    );
    assert!(srv.fetches() > fetches_at_add);
    assert_passed(&call(&h, "/", &t2).await, "b", "k2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_keys_validate_and_file_changes_are_picked_up() {
    // No RSA key is needed here; `TestKey::new` only reads this one for RSA algorithms.
    let rsa = SigningKey::generate_with_kid(KeyAlg::Es256, "unused").unwrap();
    let a = TestKey::new(Algorithm::ES256, "file-a", &rsa);
    let b = TestKey::new(Algorithm::EdDSA, "file-b", &rsa);
    let c = TestKey::new(Algorithm::ES384, "file-c", &rsa);
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    write_atomic(&file, &jwks_doc(&[&a.jwk]));
    let iss = "https://file-issuer.example.com";
    let toml = format!(
        "{}[[issuer]]\nname = \"file\"\nissuer = \"{iss}\"\njwks_file = \"{{dir}}/keys.json\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\", \"ES384\", \"EdDSA\"]\nrefresh_interval = \"300ms\"\nmin_refresh = \"100ms\"\nunknown_kid_cooldown = \"1h\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
        base(&up.url()).build()
    );
    let h = Harness::start_in(dir, &toml).await;
    h.wait_ready().await;

    // A key from the file validates; a key not in it does not.
    let ta = a.sign(&claims(iss, "alice"));
    assert_passed(&call(&h, "/", &ta).await, "alice", "file key a");
    let tb = b.sign(&claims(iss, "bob"));
    assert_invalid(&call(&h, "/", &tb).await, "the signing key is unknown");

    // A key added to the file becomes usable (re-read on the unknown kid, or by the refresh).
    write_atomic(&file, &jwks_doc(&[&a.jwk, &b.jwk]));
    eventually(
        Duration::from_secs(10),
        "key b added to the file never became usable",
        || async { call(&h, "/", &tb).await.status == StatusCode::OK },
    )
    .await;
    assert_passed(&call(&h, "/", &tb).await, "bob", "file key b");

    // A key removed from the file stops validating, even a token accepted (and cached) before:
    // the unknown-kid cooldown is an hour, so this is the periodic re-read of the file.
    write_atomic(&file, &jwks_doc(&[&b.jwk]));
    eventually(
        Duration::from_secs(10),
        "key a removed from the file still validates",
        || async { call(&h, "/", &ta).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_invalid(&call(&h, "/", &ta).await, "the signing key is unknown");

    // A broken file is a failed fetch: the last good keys keep serving.
    let failures = key_fetch_failures(&h, "file").await;
    std::fs::write(&file, "{ this is not a JWKS").unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken file was never re-read",
        || async { key_fetch_failures(&h, "file").await >= failures + 2 },
    )
    .await;
    let tb2 = b.sign(&claims(iss, "bob2"));
    assert_passed(&call(&h, "/", &tb2).await, "bob2", "last good key b");

    // Repaired, with a new key: picked up by the periodic re-read.
    write_atomic(&file, &jwks_doc(&[&b.jwk, &c.jwk]));
    let tc = c.sign(&claims(iss, "carol"));
    eventually(
        Duration::from_secs(10),
        "key c in the repaired file never became usable",
        || async { call(&h, "/", &tc).await.status == StatusCode::OK },
    )
    .await;
    assert_passed(&call(&h, "/", &tc).await, "carol", "file key c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_jwks_file_and_applies_a_changed_key_policy() {
    let rsa = SigningKey::generate_with_kid(KeyAlg::Es256, "unused").unwrap();
    let a = TestKey::new(Algorithm::ES256, "reload-a", &rsa);
    let b = TestKey::new(Algorithm::ES256, "reload-b", &rsa);
    let up = EchoUpstream::start(listener().await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    write_atomic(&file, &jwks_doc(&[&a.jwk]));
    let srv = JwksServer::start(vec![rsa.public_jwk().clone()], None).await;
    let remote_iss = "https://remote.example.com";
    let config = |cooldown: &str| {
        format!(
            "{}[[issuer]]\nname = \"file\"\nissuer = \"https://file.example.com\"\njwks_file = \"{{dir}}/keys.json\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nunknown_kid_cooldown = \"1h\"\n[[issuer]]\nname = \"remote\"\nissuer = \"{remote_iss}\"\njwks_uri = \"{}\"\naudiences = [\"api://cae-demo\"]\nalgorithms = [\"ES256\"]\nrefresh_interval = \"1h\"\nunknown_kid_cooldown = \"{cooldown}\"\n[[route]]\nupstream = \"app\"\nidentity_headers = {{ \"x-user\" = \"sub\" }}\n",
            base(&up.url()).build(),
            srv.url()
        )
    };
    let h = Harness::start_in(dir, &config("1h")).await;
    h.wait_ready().await;
    let ta = a.sign(&claims("https://file.example.com", "alice"));
    assert_passed(&call(&h, "/", &ta).await, "alice", "file key a");

    // Key a leaves the file, key b arrives. Nothing re-reads it for an hour; a reload does, as
    // it re-reads certificate files.
    write_atomic(&file, &jwks_doc(&[&b.jwk]));
    assert_passed(
        &call(&h, "/", &ta).await,
        "alice",
        "no re-read before the reload",
    );
    h.write_config(&config("1h"));
    h.proxy.reload().unwrap();
    eventually(
        Duration::from_secs(10),
        "key a, removed from the file, still validates after the reload",
        || async { call(&h, "/", &ta).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_invalid(&call(&h, "/", &ta).await, "the signing key is unknown");
    let tb = b.sign(&claims("https://file.example.com", "bob"));
    assert_passed(&call(&h, "/", &tb).await, "bob", "file key b");

    // The remote issuer: an unknown kid refetches once, then the hour-long cooldown holds.
    let unknown = |n: u32| {
        let k = TestKey::new(Algorithm::ES256, &format!("stranger-{n}"), &rsa);
        k.sign(&claims(remote_iss, "mallory"))
    };
    srv.wait_fetches(1, Duration::from_secs(10)).await;
    let start = srv.fetches();
    assert_invalid(
        &call(&h, "/", &unknown(1)).await,
        "the signing key is unknown",
    );
    assert_eq!(
        srv.fetches(),
        start + 1,
        "one refetch for the first unknown kid"
    );
    assert_invalid(
        &call(&h, "/", &unknown(2)).await,
        "the signing key is unknown",
    );
    assert_eq!(srv.fetches(), start + 1, "none within the cooldown");

    // A reload that shortens the cooldown applies at once (the key set is kept, its policy is
    // replaced, and its refresher fetches on the new schedule).
    h.write_config(&config("0s"));
    h.proxy.reload().unwrap();
    srv.wait_fetches(start + 2, Duration::from_secs(10)).await;
    let after_reload = srv.fetches();
    assert_invalid(
        &call(&h, "/", &unknown(3)).await,
        "the signing key is unknown",
    );
    assert_eq!(
        srv.fetches(),
        after_reload + 1,
        "the new cooldown (0s) applies"
    );
    assert_invalid(
        &call(&h, "/", &unknown(4)).await,
        "the signing key is unknown",
    );
    assert_eq!(srv.fetches(), after_reload + 2);
}

#[tokio::test]
async fn a_cached_token_stops_when_its_key_is_withdrawn() {
    let s = setup().await;
    let old_kid = s.idp.signing_key().kid().to_string();
    let t = s.idp.mint("alice", json!({}));
    assert_eq!(call(&s.h, "/api", &t).await.status, StatusCode::OK);
    assert_eq!(
        call(&s.h, "/api", &t).await.status,
        StatusCode::OK,
        "served from the cache"
    );
    // The provider rotates and withdraws the old key; a token with the new kid makes the proxy
    // refetch the key set.
    s.idp.rotate(KeyAlg::Rs256);
    s.idp.remove_key(&old_kid);
    assert_eq!(
        call(&s.h, "/api", &s.idp.mint("bob", json!({})))
            .await
            .status,
        StatusCode::OK
    );
    assert_invalid(&call(&s.h, "/api", &t).await, "the signing key is unknown");
}

#[tokio::test]
async fn a_keep_alive_connection_repeating_its_token_still_sees_reloads_and_withdrawn_keys() {
    let s = setup().await;
    let c = client();
    let url = s.h.url("public", "/api");
    let t = s.idp.mint("alice", json!({}));
    let auth = bearer(&t);
    for _ in 0..3 {
        let r = get(&c, &url, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // A reload that stops accepting the token's audience applies to the open connection at once:
    // the token the connection remembered is checked again, and refused.
    let text = std::fs::read_to_string(&s.h.config_path).unwrap();
    let narrowed = text.replace(
        r#"audiences = ["api://cae-demo", "11111111-2222-3333-4444-555555555555"]"#,
        r#"audiences = ["api://someone-else"]"#,
    );
    assert_ne!(text, narrowed);
    s.h.write_config(&narrowed);
    s.h.proxy.reload().unwrap();
    assert_invalid(
        &get(&c, &url, &[("authorization", &auth)]).await,
        "the token audience is not accepted",
    );
    // Back to the original configuration: the same connection, the same token, accepted again;
    // then the provider withdraws the signing key and the remembered token stops.
    s.h.write_config(&text);
    s.h.proxy.reload().unwrap();
    assert_eq!(
        get(&c, &url, &[("authorization", &auth)]).await.status,
        StatusCode::OK
    );
    let old_kid = s.idp.signing_key().kid().to_string();
    s.idp.rotate(KeyAlg::Rs256);
    s.idp.remove_key(&old_kid);
    assert_eq!(
        call(&s.h, "/api", &s.idp.mint("bob", json!({})))
            .await
            .status,
        StatusCode::OK
    );
    assert_invalid(
        &get(&c, &url, &[("authorization", &auth)]).await,
        "the signing key is unknown",
    );
}
