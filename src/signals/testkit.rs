//! Test helpers: freshly generated RSA 2048 / P-256 transmitter keys, their JWKS, and SET signing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

pub const ISS: &str = "https://transmitter.example.com";
pub const AUD: &str = "https://receiver.example.com";

/// RFC 8935 §2.1 example payload (its header says HS256).
pub const RFC8935_PAYLOAD: &str = r#"{"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964","events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}}"#;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Reads one DER TLV at `pos`: (tag, content range end, content start).
fn tlv(der: &[u8], pos: usize) -> (u8, usize, usize) {
    let tag = der[pos];
    let first = der[pos + 1] as usize;
    let (len, start) = if first < 0x80 {
        (first, pos + 2)
    } else {
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | der[pos + 2 + i] as usize;
        }
        (len, pos + 2 + n)
    };
    (tag, start + len, start)
}

fn strip_zero(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

#[derive(Clone)]
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

static RSA: OnceLock<Signer> = OnceLock::new();
static EC: OnceLock<Signer> = OnceLock::new();

impl Signer {
    /// One RSA 2048 key per test run (generation is slow).
    pub fn rsa() -> Signer {
        RSA.get_or_init(|| {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            // PKCS#8 → inner PKCS#1 RSAPrivateKey (OCTET STRING after version and algorithm).
            let pkcs8 = kp.as_der().unwrap();
            let der = pkcs8.as_ref();
            let (_, _, seq) = tlv(der, 0);
            let (_, after_ver, _) = tlv(der, seq);
            let (_, after_alg, _) = tlv(der, after_ver);
            let (tag, end, start) = tlv(der, after_alg);
            assert_eq!(tag, 0x04);
            let pkcs1 = der[start..end].to_vec();
            // RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }
            let public = kp.public_key().as_ref().to_vec();
            let (_, _, s) = tlv(&public, 0);
            let (_, n_end, n_start) = tlv(&public, s);
            let (_, e_end, e_start) = tlv(&public, n_end);
            let jwk = json!({"kty":"RSA","kid":"rsa-1","use":"sig",
                "n": b64(strip_zero(&public[n_start..n_end])), "e": b64(strip_zero(&public[e_start..e_end]))});
            Signer { kid: "rsa-1".into(), alg: Algorithm::RS256, key: EncodingKey::from_rsa_der(&pkcs1), jwk }
        })
        .clone()
    }

    pub fn ec() -> Signer {
        EC.get_or_init(|| {
            let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            let pkcs8 = kp.to_pkcs8v1().unwrap();
            let point = kp.public_key().as_ref().to_vec();
            assert_eq!(point.len(), 65);
            let jwk = json!({"kty":"EC","kid":"ec-1","crv":"P-256","alg":"ES256","x": b64(&point[1..33]), "y": b64(&point[33..])});
            Signer { kid: "ec-1".into(), alg: Algorithm::ES256, key: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
        })
        .clone()
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk.clone()]})
    }

    /// Signs with `{"typ":"secevent+jwt","alg":…,"kid":…}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_typ(claims, Some("secevent+jwt"))
    }

    pub fn sign_with_typ(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut h = json!({"alg": alg_name(self.alg), "kid": self.kid});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        sign_raw(self, &h, claims)
    }

    pub fn sign_alg(&self, claims: &Value, alg: Algorithm) -> String {
        let s = Signer {
            alg,
            ..self.clone()
        };
        s.sign(claims)
    }
}

fn alg_name(a: Algorithm) -> String {
    serde_json::to_value(a)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Signs `claims` under an arbitrary header (its `alg` must name one the key can sign with,
/// otherwise the signature is made with the signer's own algorithm).
pub fn sign_raw(s: &Signer, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| jsonwebtoken::crypto::sign(b"probe", &s.key, *a).is_ok())
        .unwrap_or(s.alg);
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &s.key, alg).unwrap();
    format!("{input}.{sig}")
}
