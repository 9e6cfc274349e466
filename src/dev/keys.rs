//! Development signing keys (RS256 / ES256, generated fresh with aws-lc-rs), their public JWKs,
//! and helpers that build well-formed or deliberately forged compact JWS for tests.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPublicKeyUncompressedBin};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Value};

use super::DevError;

/// Signature algorithms the dev keys support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl KeyAlg {
    /// The JOSE name (`RS256`, `ES256`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::Rs256 => "RS256",
            KeyAlg::Es256 => "ES256",
        }
    }

    /// The jsonwebtoken algorithm.
    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::Es256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlg {
    type Err = DevError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Ok(KeyAlg::Rs256),
            "ES256" => Ok(KeyAlg::Es256),
            other => Err(DevError::Invalid(format!(
                "unsupported algorithm {other:?} (RS256 or ES256)"
            ))),
        }
    }
}

/// A private signing key with its `kid` and public JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    alg: KeyAlg,
    encoding_key: EncodingKey,
    jwk: Value,
    /// PKCS#8 private key and X.509 SubjectPublicKeyInfo, both DER (for saving and for peers).
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn crypto_err(what: &str) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> DevError + '_ {
    move |_| DevError::Crypto(what.to_string())
}

/// Wraps DER in PEM with the given label.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Wraps PKCS#8 DER in PEM, the only form in which jsonwebtoken accepts a PKCS#8 RSA key.
fn pkcs8_pem(der: &[u8]) -> String {
    pem("PRIVATE KEY", der)
}

/// The DER inside a PEM block.
fn pem_der(text: &str) -> Result<Vec<u8>, DevError> {
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD
        .decode(b64.trim())
        .map_err(|_| DevError::Invalid("not a PEM block".into()))
}

impl SigningKey {
    /// Generates a fresh key with a random `kid`.
    pub fn generate(alg: KeyAlg) -> Result<Self, DevError> {
        let kid = format!(
            "dev-{}-{}",
            alg.as_str().to_ascii_lowercase(),
            super::random_id(8)
        );
        Self::generate_with_kid(alg, &kid)
    }

    /// Generates a fresh key with the given `kid`.
    pub fn generate_with_kid(alg: KeyAlg, kid: &str) -> Result<Self, DevError> {
        let der = match alg {
            KeyAlg::Rs256 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(crypto_err("RSA key generation"))?;
                AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                    .map_err(crypto_err("RSA PKCS#8 export"))?
                    .as_ref()
                    .to_vec()
            }
            KeyAlg::Es256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(crypto_err("EC key generation"))?
                .to_pkcs8v1()
                .map_err(crypto_err("EC PKCS#8 export"))?
                .as_ref()
                .to_vec(),
        };
        Self::from_pkcs8(alg, kid, &der)
    }

    /// Loads a key saved with [`SigningKey::private_pem`].
    pub fn from_private_pem(alg: KeyAlg, kid: &str, pem_text: &str) -> Result<Self, DevError> {
        Self::from_pkcs8(alg, kid, &pem_der(pem_text)?)
    }

    /// The private key as PKCS#8 PEM (development and benchmarks only).
    pub fn private_pem(&self) -> String {
        pkcs8_pem(&self.pkcs8)
    }

    /// The public key as X.509 SubjectPublicKeyInfo PEM (what HAProxy's `jwt_verify` reads).
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki)
    }

    fn from_pkcs8(alg: KeyAlg, kid: &str, pkcs8: &[u8]) -> Result<Self, DevError> {
        let (encoding_key, key_members, spki) = match alg {
            KeyAlg::Rs256 => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| DevError::Crypto("RSA PKCS#8 import".into()))?;
                let encoding_key = EncodingKey::from_rsa_pem(pkcs8_pem(pkcs8).as_bytes())?;
                let public = pair.public_key();
                let members = json!({
                    "kty": "RSA",
                    "n": b64url(public.modulus().big_endian_without_leading_zero()),
                    "e": b64url(public.exponent().big_endian_without_leading_zero()),
                });
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public)
                    .map_err(crypto_err("RSA public key export"))?
                    .as_ref()
                    .to_vec();
                (encoding_key, members, spki)
            }
            KeyAlg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| DevError::Crypto("EC PKCS#8 import".into()))?;
                let encoding_key = EncodingKey::from_ec_der(pkcs8);
                let spki =
                    AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(pair.public_key())
                        .map_err(crypto_err("EC public key export"))?
                        .as_ref()
                        .to_vec();
                let point: EcPublicKeyUncompressedBin = pair
                    .public_key()
                    .as_be_bytes()
                    .map_err(crypto_err("EC public key export"))?;
                let point = point.as_ref();
                // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
                if point.len() != 65 || point[0] != 4 {
                    return Err(DevError::Crypto("unexpected EC point encoding".into()));
                }
                let members = json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": b64url(&point[1..33]),
                    "y": b64url(&point[33..65]),
                });
                (encoding_key, members, spki)
            }
        };
        let mut jwk = key_members;
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), Value::String(kid.to_string()));
            map.insert("use".into(), Value::String("sig".into()));
            map.insert("alg".into(), Value::String(alg.as_str().into()));
        }
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            encoding_key,
            jwk,
            pkcs8: pkcs8.to_vec(),
            spki,
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> KeyAlg {
        self.alg
    }

    /// The private key for `jsonwebtoken::encode`.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding_key
    }

    /// The public JWK (`kty`, `kid`, `use`, `alg`, and `n`,`e` or `crv`,`x`,`y`).
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public JWK without its `alg` member (optional, RFC 7517 §4.4): a verifier then lets the
    /// key serve any algorithm of its family (an RSA key: RS256, PS256, …).
    pub fn public_jwk_without_alg(&self) -> Value {
        let mut jwk = self.jwk.clone();
        if let Value::Object(m) = &mut jwk {
            m.remove("alg");
        }
        jwk
    }

    /// The public key as a jsonwebtoken `DecodingKey` (handy to check tokens in tests).
    pub fn decoding_key(&self) -> Result<DecodingKey, DevError> {
        let member = |name: &str| {
            self.jwk
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| DevError::Crypto(format!("JWK without {name}")))
        };
        Ok(match self.alg {
            KeyAlg::Rs256 => DecodingKey::from_rsa_components(member("n")?, member("e")?)?,
            KeyAlg::Es256 => DecodingKey::from_ec_components(member("x")?, member("y")?)?,
        })
    }

    /// Signs `claims` with a header `{"typ":"JWT","alg":…,"kid":…}` merged with `header_overrides`
    /// (an object; a member set to `null` is removed, e.g. `{"kid":null}`).
    pub fn sign(&self, header_overrides: Option<Value>, claims: &Value) -> String {
        let mut header = json!({"typ": "JWT", "alg": self.alg.as_str(), "kid": self.kid});
        if let (Some(Value::Object(overrides)), Value::Object(map)) =
            (header_overrides, &mut header)
        {
            for (k, v) in overrides {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        self.sign_raw(&header, claims)
    }

    /// A Security Event Token (RFC 8417 §2.3): `claims` signed under
    /// `{"typ":"secevent+jwt","alg":…,"kid":…}`.
    pub fn sign_set(&self, claims: &Value) -> String {
        self.sign(Some(json!({"typ": "secevent+jwt"})), claims)
    }

    /// Encodes `header_json` verbatim and signs with this key, whatever the header says.
    pub fn sign_raw(&self, header_json: &Value, claims: &Value) -> String {
        self.sign_bytes_with(
            header_json.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            self.alg.jwt_algorithm(),
        )
    }

    /// Encodes `header` and `payload` verbatim (base64url, any bytes) and signs them with `alg`
    /// when this key can make that signature (an RSA key: RS256/384/512, PS256/384/512), otherwise
    /// with its own algorithm: `header.payload.signature`.
    pub fn sign_bytes_with(&self, header: &[u8], payload: &[u8], alg: Algorithm) -> String {
        let message = format!("{}.{}", b64url(header), b64url(payload));
        // Signing with a key generated and checked in-process cannot fail short of an aws-lc bug.
        #[allow(clippy::expect_used)]
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding_key, alg)
            .or_else(|_| {
                jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &self.encoding_key,
                    self.alg.jwt_algorithm(),
                )
            })
            .expect("signing with a freshly generated dev key");
        format!("{message}.{signature}")
    }
}

/// A token with `alg: none` (the header is given `"alg":"none"` unless it has an `alg`) and an
/// empty signature: `header.payload.`
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    let mut header = header.clone();
    if let Value::Object(map) = &mut header {
        map.entry("alg")
            .or_insert_with(|| Value::String("none".into()));
    }
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An HS256 token signed with `secret` (the header gets `"alg":"HS256"` unless it has an `alg`),
/// e.g. for the "HMAC with the public key as secret" attack.
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let mut header = header.clone();
    if let Value::Object(map) = &mut header {
        map.entry("alg")
            .or_insert_with(|| Value::String("HS256".into()));
    }
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = EncodingKey::from_secret(secret);
    // HMAC accepts any key length; the aws-lc provider does not fail on it.
    #[allow(clippy::expect_used)]
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HMAC signing");
    format!("{message}.{signature}")
}

/// Decodes the header and payload of a compact JWS without checking anything (tests only need).
pub fn decode_unverified(token: &str) -> Result<(Value, Value), DevError> {
    let mut parts = token.split('.');
    let mut part = |what: &str| -> Result<Value, DevError> {
        let raw = parts
            .next()
            .ok_or_else(|| DevError::Invalid(format!("token without {what}")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|e| DevError::Invalid(format!("{what} is not base64url: {e}")))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let header = part("header")?;
    let payload = part("payload")?;
    Ok((header, payload))
}

/// Signing kit of the SET unit tests in `crate::signals`: one RSA 2048 and one P-256 transmitter
/// key per test run (generation is slow), their JWKS, and SETs signed with them.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) mod set_kit {
    use std::sync::OnceLock;

    use jsonwebtoken::Algorithm;
    use serde_json::{json, Value};

    use super::{KeyAlg, SigningKey};

    pub(crate) const ISS: &str = "https://transmitter.example.com";
    pub(crate) const AUD: &str = "https://receiver.example.com";

    /// RFC 8935 §2.1 example payload (its header says HS256).
    pub(crate) const RFC8935_PAYLOAD: &str = r#"{"iss":"https://idp.example.com/","jti":"756E69717565206964656E746966696572","iat":1508184845,"aud":"636C69656E745F6964","events":{"https://schemas.openid.net/secevent/risc/event-type/account-disabled":{"subject":{"subject_type":"iss-sub","iss":"https://idp.example.com/","sub":"7375626A656374"},"reason":"hijacking"}}}"#;

    /// The RSA 2048 key, kid `rsa-1`.
    pub(crate) fn rsa() -> SigningKey {
        static K: OnceLock<SigningKey> = OnceLock::new();
        K.get_or_init(|| SigningKey::generate_with_kid(KeyAlg::Rs256, "rsa-1").expect("RSA key"))
            .clone()
    }

    /// The P-256 key, kid `ec-1`.
    pub(crate) fn ec() -> SigningKey {
        static K: OnceLock<SigningKey> = OnceLock::new();
        K.get_or_init(|| SigningKey::generate_with_kid(KeyAlg::Es256, "ec-1").expect("EC key"))
            .clone()
    }

    /// The JWKS publishing `key`. The RSA key's JWK names no `alg`, so PS256 SETs verify too.
    pub(crate) fn jwks(key: &SigningKey) -> Value {
        let jwk = match key.alg() {
            KeyAlg::Rs256 => key.public_jwk_without_alg(),
            KeyAlg::Es256 => key.public_jwk().clone(),
        };
        json!({"keys": [jwk]})
    }

    /// A SET whose header names `alg`, signed with it (with the key's own algorithm when the key
    /// cannot make that signature).
    pub(crate) fn sign_alg(key: &SigningKey, claims: &Value, alg: Algorithm) -> String {
        let header = json!({"typ": "secevent+jwt", "alg": alg, "kid": key.kid()});
        key.sign_bytes_with(
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            alg,
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::Validation;

    fn verify(key: &SigningKey, token: &str) -> Value {
        let mut validation = Validation::new(key.alg().jwt_algorithm());
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &key.decoding_key().unwrap(), &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn rsa_jwk_has_the_right_members() {
        let key = SigningKey::generate(KeyAlg::Rs256).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["kid"], key.kid());
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["e"], "AQAB");
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        assert_eq!(n.len(), 256);
        assert!(jwk.get("crv").is_none());
        // jsonwebtoken accepts it as a JWK.
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        DecodingKey::from_jwk(&parsed).unwrap();
    }

    #[test]
    fn ec_jwk_has_the_right_members() {
        let key = SigningKey::generate(KeyAlg::Es256).unwrap();
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["kid"], key.kid());
        for m in ["x", "y"] {
            let v = URL_SAFE_NO_PAD.decode(jwk[m].as_str().unwrap()).unwrap();
            assert_eq!(v.len(), 32);
        }
        assert!(jwk.get("n").is_none());
        let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
        DecodingKey::from_jwk(&parsed).unwrap();
    }

    #[test]
    fn sign_sets_header_and_verifies() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256] {
            let key = SigningKey::generate(alg).unwrap();
            let claims = json!({"sub": "alice", "n": 1});
            let token = key.sign(
                Some(json!({"typ": "at+jwt", "jku": "http://evil"})),
                &claims,
            );
            let (header, payload) = decode_unverified(&token).unwrap();
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["kid"], key.kid());
            assert_eq!(header["typ"], "at+jwt");
            assert_eq!(header["jku"], "http://evil");
            assert_eq!(payload, claims);
            assert_eq!(verify(&key, &token), claims);

            let token = key.sign(Some(json!({"kid": null})), &claims);
            let (header, _) = decode_unverified(&token).unwrap();
            assert!(header.get("kid").is_none());
        }
    }

    #[test]
    fn sign_raw_keeps_the_header_verbatim() {
        let key = SigningKey::generate(KeyAlg::Rs256).unwrap();
        let header = json!({"alg": "HS256", "kid": "other"});
        let token = key.sign_raw(&header, &json!({"a": 1}));
        let (h, _) = decode_unverified(&token).unwrap();
        assert_eq!(h, header);
        assert_eq!(token.split('.').count(), 3);
    }

    #[test]
    fn unsigned_and_hmac_tokens() {
        let t = unsigned_token(&json!({"typ": "JWT"}), &json!({"sub": "x"}));
        assert!(t.ends_with('.'));
        let (h, p) = decode_unverified(&t).unwrap();
        assert_eq!(h["alg"], "none");
        assert_eq!(p["sub"], "x");

        let t = hs256_token(b"secret", &json!({"kid": "k"}), &json!({"sub": "x"}));
        let (h, _) = decode_unverified(&t).unwrap();
        assert_eq!(h["alg"], "HS256");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(&t, &DecodingKey::from_secret(b"secret"), &validation)
            .unwrap();
    }

    #[test]
    fn key_alg_parses() {
        assert_eq!("rs256".parse::<KeyAlg>().unwrap(), KeyAlg::Rs256);
        assert_eq!("ES256".parse::<KeyAlg>().unwrap(), KeyAlg::Es256);
        assert!("HS256".parse::<KeyAlg>().is_err());
    }

    #[test]
    fn keys_survive_a_pem_round_trip() {
        for alg in [KeyAlg::Rs256, KeyAlg::Es256] {
            let k = SigningKey::generate_with_kid(alg, "k1").unwrap();
            assert!(k.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
            let back = SigningKey::from_private_pem(alg, "k1", &k.private_pem()).unwrap();
            assert_eq!(back.public_jwk(), k.public_jwk());
            let t = back.sign(None, &json!({"sub": "a"}));
            let mut v = jsonwebtoken::Validation::new(alg.jwt_algorithm());
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_aud = false;
            jsonwebtoken::decode::<Value>(&t, &k.decoding_key().unwrap(), &v).unwrap();
        }
    }
}
