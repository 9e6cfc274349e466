//! Fuzz target `dpop_proof`: the DPoP proof parser and everything else that reads client-controlled sender-constraint
//! input (the `htu` normaliser, nonces, `Client-Cert`, `X-Forwarded-Client-Cert`), with the
//! properties they must keep whatever the input.

use crate::auth::dpop::{self, NonceKey, NonceState, ProofError};
use crate::auth::sender::{client_cert_field, xfcc_hash};
use crate::config::DpopAlg;

/// Input: one flag byte (bit 0..2: which algorithms are allowed; bit 3: the input is also read
/// as the header values), then the proof text (lossy UTF-8).
///
/// Properties: no panic; an accepted proof has an allowed `alg`, non-empty `jti`, `htm`, `htu`
/// and a thumbprint that does not depend on the allow-list; `check` against a request built from
/// the proof's own claims accepts it exactly when its `htu` normalises (and its `ath` is that of
/// the token), and refuses any other method; `normalize_htu` is idempotent and never keeps a query
/// or fragment; a nonce made from the input never verifies, an issued one always does.
pub fn dpop_proof(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let algs: &[DpopAlg] = match flags & 7 {
        0 => &DpopAlg::ALL,
        1 => &DpopAlg::DEFAULT,
        2 => &[DpopAlg::ES256],
        3 => &[DpopAlg::EdDSA, DpopAlg::Ed25519],
        4 => &[DpopAlg::RS256, DpopAlg::PS256],
        _ => &[],
    };
    match dpop::verify(&text, algs) {
        Ok(proof) => {
            assert!(
                algs.contains(&proof.alg),
                "accepted alg {:?} outside {algs:?}",
                proof.alg
            );
            assert!(!proof.jti.is_empty() && !proof.htm.is_empty() && !proof.htu.is_empty());
            let again = dpop::verify(&text, &DpopAlg::ALL).expect("accepted with a wider list");
            assert_eq!(
                again.jkt, proof.jkt,
                "the thumbprint depends on the key only"
            );
            let token = "fuzz-token";
            let htu = dpop::normalize_htu(&proof.htu);
            fn req<'a>(method: &'a str, htu: &'a str, now: i64) -> dpop::Request<'a> {
                dpop::Request {
                    method,
                    htu,
                    access_token: "fuzz-token",
                    now,
                    window: 60,
                }
            }
            if let Some(htu) = &htu {
                let ath_ok = proof.ath.as_deref() == Some(&dpop::access_token_hash(token));
                assert_eq!(
                    proof.check(&req(&proof.htm, htu, proof.iat)).is_ok(),
                    ath_ok
                );
                let other = format!("{}X", proof.htm);
                assert_eq!(
                    proof.check(&req(&other, htu, proof.iat)).err(),
                    Some(ProofError::Method)
                );
            }
        }
        Err(e) => {
            // Every refusal has a printable, quotable description.
            let d = e.to_string();
            assert!(
                d.chars()
                    .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
                "{d:?}"
            );
        }
    }
    if let Some(n) = dpop::normalize_htu(&text) {
        assert_eq!(
            dpop::normalize_htu(&n).as_deref(),
            Some(n.as_str()),
            "not idempotent"
        );
        assert!(!n.contains(['?', '#']), "query or fragment kept: {n:?}");
    }
    let key = NonceKey::new(b"fuzz");
    let now = i64::from(flags) * 1_000_003;
    assert_eq!(
        key.check(Some(&key.issue(60, now)), 60, now),
        NonceState::Current
    );
    if key.check(Some(&text), 60, now) != NonceState::Invalid {
        assert_eq!(text, key.issue(60, now), "a forged nonce verified");
    }
    if flags & 8 != 0 {
        let _ = client_cert_field(&text);
        let _ = xfcc_hash(&text);
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            h.insert(&dpop::DPOP, v);
            let _ = dpop::proof_header(&h);
        }
    }
}
