//! Fuzz target `jwks`: JWKS, OIDC/SSF discovery and SSF configuration documents.

use jsonwebtoken::Algorithm;
use serde_json::json;

use super::common::{seed, set_fixture, Input, SET_ISS, TOKEN_ISS};
use crate::auth::keys::{self, KeyFamily};
use crate::config;

/// Fuzz target `jwks`: mode 0 a JWKS, 1 an OIDC/SSF discovery document, 2 an SSF configuration.
///
/// Asserts: only asymmetric signature keys of at least 2048 bits (RSA) survive, a key's `alg`
/// fits its type, lookups by `kid` find that kid, a kid-less lookup works only with one key; a
/// discovery document is accepted only with the expected issuer and an https `jwks_uri`.
pub fn jwks(data: &[u8]) {
    let mut inp = Input(data);
    let mode = inp.byte() % 3;
    let body = inp.rest();
    match mode {
        0 => {
            let Ok(keys) = keys::parse_jwks(body, "fuzz", 2048) else {
                return;
            };
            assert!(!keys.keys.is_empty());
            for k in &keys.keys {
                if let Some(a) = k.alg {
                    assert!(
                        k.family.fits(a),
                        "key alg {a:?} does not fit {:?}",
                        k.family
                    );
                    assert!(!matches!(
                        a,
                        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                    ));
                }
                if let KeyFamily::Rsa { bits } = k.family {
                    assert!(bits >= 2048);
                }
                if let Some(kid) = &k.kid {
                    let found = keys.get(Some(kid)).expect("a listed kid is found");
                    assert_eq!(found.kid.as_deref(), Some(kid.as_str()));
                }
            }
            assert_eq!(keys.get(None).is_some(), keys.keys.len() == 1);
        }
        1 => {
            for insecure in [false, true] {
                let Ok(d) = keys::parse_discovery(
                    body,
                    "https://idp.example.com/.well-known/openid-configuration",
                    TOKEN_ISS,
                    insecure,
                ) else {
                    continue;
                };
                assert_eq!(
                    crate::store::keys::normalize_iss(&d.issuer),
                    crate::store::keys::normalize_iss(TOKEN_ISS)
                );
                let u = url::Url::parse(&d.jwks_uri).expect("an accepted jwks_uri is a URL");
                assert!(
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && (insecure || config::is_loopback_host(u.host_str().unwrap_or("")))),
                    "insecure jwks_uri accepted: {}",
                    d.jwks_uri
                );
            }
        }
        _ => {
            let _ = serde_json::from_slice::<crate::signals::stream::SsfConfiguration>(body);
        }
    }
}

/// Seeds for `jwks`.
pub fn seed_jwks() -> Vec<Vec<u8>> {
    let fx = set_fixture();
    let good = json!({"keys": [fx.keys[0].public_jwk(), fx.keys[1].public_jwk()]});
    let mut out = vec![
        seed(0, &[good.to_string().as_bytes()]),
        seed(0, &[json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "RS256", "use": "sig",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}
        ]}).to_string().as_bytes()]),
        seed(0, &[br#"{"keys":[]}"#]),
        seed(0, &[br#"{"keys":{}}"#]),
    ];
    for d in [
        json!({"issuer": TOKEN_ISS, "jwks_uri": "https://idp.example.com/keys", "authorization_endpoint": "https://idp.example.com/authorize"}),
        json!({"issuer": "https://idp.example.com", "jwks_uri": "http://127.0.0.1:8080/keys"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "http://idp.example.com/keys"}),
        json!({"issuer": "https://evil.example/", "jwks_uri": "https://evil.example/keys"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "file:///etc/passwd"}),
        json!({"issuer": TOKEN_ISS, "jwks_uri": "http://[::1]:1/keys"}),
        json!({"issuer": TOKEN_ISS}),
    ] {
        out.push(seed(1, &[d.to_string().as_bytes()]));
    }
    out.push(seed(2, &[json!({"issuer": SET_ISS, "jwks_uri": "https://t/jwks", "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
        "configuration_endpoint": "https://t/streams", "status_endpoint": "https://t/status", "verification_endpoint": "https://t/verify", "spec_version": "1_0"}).to_string().as_bytes()]));
    out
}
