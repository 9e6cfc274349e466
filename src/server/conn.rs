//! What the server knows about one connection: peer, TLS, listener, the verified client
//! certificate, and the token its last request presented.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::auth::token::Principal;
use crate::proxy::headers;

/// What the server knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    pub listener: Arc<str>,
    /// The peer address as an `X-Forwarded-For` value ([`headers::peer_value`]).
    pub peer_value: HeaderValue,
    /// The last token this connection presented and its principal. Keep-alive clients send the
    /// same token on every request; a repeat skips hashing it for the shared cache.
    pub last_token: std::sync::Mutex<Option<LastToken>>,
    /// SHA-256 of the verified client certificate (mTLS listeners), set after the handshake.
    pub client_cert_sha256: std::sync::OnceLock<[u8; 32]>,
}

/// A verified token remembered by one connection, valid for one configuration generation (a
/// reload empties the shared cache, and so invalidates these too).
#[derive(Debug)]
pub struct LastToken {
    token: Box<str>,
    principal: Arc<Principal>,
    generation: u64,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, listener: Arc<str>) -> ConnInfo {
        ConnInfo {
            peer_value: headers::peer_value(peer.ip()),
            peer,
            tls,
            listener,
            last_token: std::sync::Mutex::new(None),
            client_cert_sha256: std::sync::OnceLock::new(),
        }
    }

    /// Records the client certificate the TLS handshake verified (its DER leaf).
    pub fn set_client_cert(&self, der: &[u8]) {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        let _ = self.client_cert_sha256.set(out);
    }

    pub(crate) fn remembered(&self, token: &str, generation: u64) -> Option<Arc<Principal>> {
        let last = self.last_token.lock().ok()?;
        // Constant-time comparison: an intermediary may multiplex several users' requests over
        // one connection, and the remembered token is another user's secret.
        last.as_ref()
            .filter(|l| l.generation == generation && same_secret(&l.token, token))
            .map(|l| l.principal.clone())
    }

    pub(crate) fn remember(&self, token: &str, principal: &Arc<Principal>, generation: u64) {
        if let Ok(mut last) = self.last_token.lock() {
            *last = Some(LastToken {
                token: token.into(),
                principal: principal.clone(),
                generation,
            });
        }
    }
}

/// Whether two secrets are equal, in time that depends on their lengths only: eight bytes per
/// step, every difference folded into one word, no early exit (`CRYPTO_memcmp` goes byte by byte,
/// ≈ 400 instructions for an 800-byte token on every cached request).
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_rest) = a.as_chunks::<8>();
    let (b_words, b_rest) = b.as_chunks::<8>();
    let mut diff = a_words.iter().zip(b_words).fold(0u64, |d, (x, y)| {
        d | (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y))
    });
    for (x, y) in a_rest.iter().zip(b_rest) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn same_secret_sees_every_byte() {
        let a = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-tail"; // 45 bytes: 5 words + 5
        assert!(same_secret(a, a));
        assert!(same_secret("", ""));
        for i in 0..a.len() {
            let mut b = a.as_bytes().to_vec();
            b[i] ^= 1;
            let b = String::from_utf8(b).unwrap();
            assert!(!same_secret(a, &b), "a difference at byte {i} went unseen");
        }
        assert!(!same_secret(a, &a[..a.len() - 1]));
        assert!(!same_secret("abc", "abcd"));
    }
}
