//! What the fuzz targets share: the fixed clock and identities, the structured-input reader and
//! the seed writers of the same layout, the fixed signing keys (generated once per process) and
//! signing with them, the docs/protocols.md §7 SET vectors, and the invariants of a store change.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::auth::keys::{self, KeySet, Keys};
use crate::auth::token::{IssuerRt, Issuers};
use crate::config::{Config, KeySource};
use crate::dev::keys::{b64url, KeyAlg, SigningKey};
use crate::signals::set::SetPolicy;
use crate::store::{Change, SubjectKey};

/// The fixed clock of every target (epoch seconds).
pub const NOW: i64 = 1_700_000_000;
/// Issuer of the fixed token key set.
pub const TOKEN_ISS: &str = "https://idp.example.com/";
/// Audience of the fixed issuer.
pub const TOKEN_AUD: &str = "api://cae-proxy";
/// Transmitter of the fixed SET key set (docs/protocols.md §7, first SET vector).
pub const SET_ISS: &str = "https://idp.example.com/123456789/";
/// Our audience as a SET receiver.
pub const SET_AUD: &str = "https://sp.example.com/caep";

/// Reads a structured fuzz input: bytes, and NUL-terminated fields.
pub(super) struct Input<'a>(pub(super) &'a [u8]);

impl<'a> Input<'a> {
    pub(super) fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub(super) fn field(&mut self) -> &'a [u8] {
        match self.0.iter().position(|b| *b == 0) {
            Some(i) => {
                let (f, rest) = self.0.split_at(i);
                self.0 = &rest[1..];
                f
            }
            None => std::mem::take(&mut self.0),
        }
    }

    pub(super) fn text(&mut self) -> String {
        String::from_utf8_lossy(self.field()).into_owned()
    }

    pub(super) fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

pub(super) fn seed(mode: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![mode];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(f);
    }
    out
}

/// A seed for the signing modes: mode, then key, algorithm and tamper bytes, then the fields.
pub(super) fn signed_seed(mode: u8, [key, alg, tamper]: [u8; 3], fields: &[&[u8]]) -> Vec<u8> {
    let mut out = seed(mode, fields);
    out.splice(1..1, [key, alg, tamper]);
    out
}

/// Signing algorithms a target may pick for a key (most do not fit the key: that is the point).
pub(super) const SIGN_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Signs `header.payload` (each base64url of the given bytes) with `key` and `alg`, then applies
/// a tamper mode: 0 none, 1 flip a signature bit, 2 drop the signature, 3 signature of another
/// payload.
pub(super) fn sign_bytes(
    key: &SigningKey,
    alg: Algorithm,
    header: &[u8],
    payload: &[u8],
    tamper: u8,
) -> String {
    let signed = key.sign_bytes_with(header, payload, alg);
    let (input, sig) = signed
        .rsplit_once('.')
        .expect("a compact JWS has a signature part");
    let sig = match tamper % 4 {
        1 => {
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(sig)
                .unwrap_or_default();
            if let Some(b) = raw.first_mut() {
                *b ^= 1;
            }
            b64url(&raw)
        }
        2 => String::new(),
        3 => jsonwebtoken::crypto::sign(b"other", key.encoding_key(), key.alg().jwt_algorithm())
            .unwrap_or_default(),
        _ => sig.to_string(),
    };
    format!("{input}.{sig}")
}

/// Merges the object `over` onto the object `base` (a member set to null is removed).
pub(super) fn merge(base: &mut Value, over: &Value) {
    if let (Value::Object(b), Value::Object(o)) = (base, over) {
        for (k, v) in o {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
}

pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub(super) struct TokenFixture {
    /// RS256 key (its JWK names `alg`), ES256 key, RSA key whose JWK names no `alg`.
    pub(super) keys: Vec<SigningKey>,
    pub(super) issuers: Issuers,
}

pub(super) fn token_fixture() -> &'static TokenFixture {
    static F: OnceLock<TokenFixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = vec![
            SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa-1").expect("rsa key"),
            SigningKey::generate_with_kid(KeyAlg::Es256, "ec-1").expect("ec key"),
            SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa-noalg").expect("rsa key"),
        ];
        let jwks = json!({"keys": [keys[0].public_jwk(), keys[1].public_jwk(), keys[2].public_jwk_without_alg()]});
        let path = std::env::temp_dir().join(format!("cae-proxy-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks.to_string()).expect("write fixture JWKS");
        let toml = format!(
            r#"
[[listener]]
address = "127.0.0.1:0"
[[issuer]]
name = "idp"
issuer = "{TOKEN_ISS}"
jwks_file = "{}"
audiences = ["{TOKEN_AUD}"]
algorithms = ["RS256", "PS256", "ES256"]
leeway = "60s"
max_lifetime = "28h"
unknown_kid_cooldown = "1h"
"#,
            path.display()
        );
        let cfg = Config::parse(&toml, std::path::Path::new(".")).expect("fixture config");
        let icfg = cfg.issuers[0].clone();
        let ks = Arc::new(KeySet::new(
            &icfg.name,
            icfg.keys.clone(),
            &icfg.issuer,
            icfg.key_policy.clone(),
            2048,
            crate::fetch::Fetcher::new(),
        ));
        runtime()
            .block_on(ks.refresh())
            .expect("fixture keys load");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(ks.source(), KeySource::JwksFile(_)));
        TokenFixture {
            keys,
            issuers: Issuers {
                list: vec![Arc::new(IssuerRt::new(icfg, ks))],
            },
        }
    })
}

pub(super) struct SetFixture {
    /// RS256 and ES256 transmitter keys.
    pub(super) keys: Vec<SigningKey>,
    pub(super) parsed: Keys,
    pub(super) policy: SetPolicy,
}

pub(super) fn set_fixture() -> &'static SetFixture {
    static F: OnceLock<SetFixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = vec![
            SigningKey::generate_with_kid(KeyAlg::Rs256, "tx-rsa").expect("rsa key"),
            SigningKey::generate_with_kid(KeyAlg::Es256, "tx-ec").expect("ec key"),
        ];
        let jwks = json!({"keys": [keys[0].public_jwk(), keys[1].public_jwk()]});
        let parsed =
            keys::parse_jwks(jwks.to_string().as_bytes(), "fixture", 2048).expect("fixture JWKS");
        SetFixture {
            keys,
            parsed,
            policy: SetPolicy {
                issuer: SET_ISS.into(),
                audiences: vec![SET_AUD.into(), "receiver.example.com".into()],
                algorithms: vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256],
            },
        }
    })
}

/// Checks a compact JWS signature with the public half of `key`, independently of the code under test.
pub(super) fn signature_verifies(compact: &str, key: &SigningKey, alg: Algorithm) -> bool {
    let Some((input, sig)) = compact.trim().rsplit_once('.') else {
        return false;
    };
    let dk = key.decoding_key().expect("fixture decoding key");
    jsonwebtoken::crypto::verify(sig, input.as_bytes(), &dk, alg).unwrap_or(false)
}

pub(super) fn jwt_part(compact: &str, i: usize) -> Option<Value> {
    let part = compact.trim().split('.').nth(i)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

pub(super) fn set_base() -> Value {
    json!({"iss": SET_ISS, "jti": "24c63fb56e5a2d77a6b512616ca9fa24", "iat": 1_615_305_159, "aud": SET_AUD,
        "sub_id": {"format":"complex","session":{"format":"opaque","id":"dMTlD|1600802906337.16|16008.16"},
            "user":{"format":"iss_sub","iss": SET_ISS,"sub":"99beb27c-c1c2-4955-882a-e0dc4996fcbc"},
            "tenant":{"format":"opaque","id":"123456789"}},
        "events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{"initiating_entity":"policy",
            "reason_admin":{"en":"Landspeed Policy Violation: C076E82F"},"event_timestamp":1_615_304_991}}})
}

/// The four SET vectors of docs/protocols.md §7 and the legacy RFC 8935 example payload.
pub fn protocol_vectors() -> Vec<Value> {
    vec![
        set_base(),
        json!({"iss":"https://idp.example.com/3456789/","jti":"07efd930f0977e4fcc1149a733ce7f78","iat":1615305159,"aud":"https://sp.example2.net/caep","txn":"8675309",
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/3456789/","sub":"jane.smith@example.com"},
            "events":{"https://schemas.openid.net/secevent/caep/event-type/credential-change":{"credential_type":"fido2-roaming","change_type":"create","initiating_entity":"user","event_timestamp":1615304991}}}),
        json!({"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964",
            "sub_id":{"format":"iss_sub","iss":"https://idp.example.com/","sub":"7375626A656374"},
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"reason":"hijacking"}}}),
        json!({"jti":"123456","iss":"https://transmitter.example.com","aud":"receiver.example.com","iat":1493856000,
            "sub_id":{"format":"opaque","id":"f67e39a0a4d34d56b3aa1bc4cff0069f"},
            "events":{"https://schemas.openid.net/secevent/ssf/event-type/verification":{"state":"VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="}}}),
        json!({"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964",
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}}),
    ]
}

/// Invariants of a change bound for the store.
pub(super) fn check_change(c: &Change) {
    let key = match c {
        Change::Revoke { key, .. }
        | Change::Block { key, .. }
        | Change::Unblock { key, .. }
        | Change::Unbind { key, .. }
        | Change::Delete { key, .. } => key,
        Change::Bind { key, nets, .. } => {
            assert!(
                matches!(key, SubjectKey::Session { .. } | SubjectKey::Subject { .. }),
                "bindings apply to sessions and subjects"
            );
            assert!(!nets.is_empty(), "a bind has addresses");
            key
        }
    };
    check_key(key);
    // What the admin API echoes and the store persists survives serialisation.
    let text = serde_json::to_string(c).expect("a change serialises");
    let back: Change = serde_json::from_str(&text).expect("a change deserialises");
    assert_eq!(&back, c);
}

pub(super) fn check_key(key: &SubjectKey) {
    let enc = key.encode();
    let dec = SubjectKey::decode(&enc).expect("an encoded key decodes");
    // Decoding may split differently when an issuer contains the separator, but it names the
    // same table entry.
    assert_eq!(dec.encode(), enc, "key encoding is stable");
    if let SubjectKey::Email { email } = key {
        assert_eq!(*email, email.to_lowercase(), "e-mail keys are lower case");
    }
}
