//! Verified-token cache: a token's signing input and signature → validated principal, bounded,
//! never past `exp`. A hit skips signature verification only; revocation and IP checks still run
//! on every request.
//!
//! The key is the SHA-256 of the JWS signing input (`header.payload`), the very digest the
//! signature is checked against on a miss, so the signing input is hashed once per request; an
//! entry also keeps the signature segment, compared in full on a hit. A hit is therefore a
//! byte-identical token: same signing input (SHA-256) and same signature.
//!
//! Locks: 16 shards, each a `Mutex` over two generations; a lookup holds one shard lock for one
//! hash probe. When the young generation of a shard fills, the old one is dropped (O(1) eviction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

use super::token::{Issuers, Principal};

const SHARDS: usize = 16;
type Key = [u8; 32];

/// A verified token's principal, with the signature segment it was verified with.
struct Entry {
    principal: Arc<Principal>,
    signature: Box<str>,
}

/// foldhash over the SHA-256 key instead of SipHash: the key is already a digest, and only
/// verified tokens are ever inserted.
type Generation = HashMap<Key, Entry, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shard {
    young: Generation,
    old: Generation,
}

/// The cache; cleared whole on every configuration reload.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_generation: usize,
}

/// Whether a remembered principal still counts at `now`: not past `exp`, and the very key that
/// verified it (same RFC 7638 thumbprint, not merely the same `kid`) is still published, so a
/// key the provider removed or replaced stops its cached tokens at the next refresh.
pub fn usable(p: &Principal, now: i64, issuers: &Issuers) -> bool {
    p.exp >= now
        && issuers.by_name(&p.issuer).is_some_and(|i| {
            i.keys
                .keys()
                .get(p.kid.as_deref())
                .is_some_and(|k| k.thumbprint == p.key_thumbprint)
        })
}

/// A token as the cache knows it: the SHA-256 of its signing input (everything before the last
/// `.`; of the whole text when it has no `.`) and its signature segment (what follows).
pub struct TokenHash<'t> {
    pub key: Key,
    signature: &'t str,
    signing_input: Option<SigningInputHash<'t>>,
}

/// The SHA-256 of a token's JWS signing input, with the very slice it covers: the signature
/// check uses it only for that same slice ([`SigningInputHash::covers`]), so a hash of any other
/// text can never stand in for the input being verified.
pub struct SigningInputHash<'t> {
    digest: digest::Digest,
    input: &'t str,
}

impl SigningInputHash<'_> {
    /// Whether this is the hash of `text` itself (same address and length, not merely equal).
    pub fn covers(&self, text: &str) -> bool {
        std::ptr::eq(self.input, text)
    }

    pub fn digest(&self) -> &digest::Digest {
        &self.digest
    }
}

impl<'t> TokenHash<'t> {
    /// The signing input's hash, for [`crate::auth::token::validate`] (the key stays).
    pub fn take_signing_input(&mut self) -> Option<SigningInputHash<'t>> {
        self.signing_input.take()
    }
}

/// The cache key and signing-input hash of `token`.
pub fn hash(token: &str) -> TokenHash<'_> {
    let (input, signature) = token.rsplit_once('.').unwrap_or((token, ""));
    let digest = digest::digest(&digest::SHA256, input.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    TokenHash {
        key,
        signature,
        signing_input: (input.len() < token.len()).then_some(SigningInputHash { digest, input }),
    }
}

impl TokenCache {
    /// A cache holding about `capacity` tokens (0 disables it).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_generation: capacity / SHARDS / 2,
        }
    }

    /// Whether the cache holds anything at all (`token_cache_size` > 0).
    pub fn enabled(&self) -> bool {
        self.per_generation > 0
    }

    fn shard(&self, k: &Key) -> &Mutex<Shard> {
        &self.shards[k[0] as usize % SHARDS]
    }

    /// A still-valid principal for this very token (`exp` + leeway not passed at `now`): same
    /// signing input and same signature segment.
    pub fn get(&self, t: &TokenHash<'_>, now: i64, leeway: i64) -> Option<Arc<Principal>> {
        if self.per_generation == 0 {
            return None;
        }
        let same = |e: &Entry| *e.signature == *t.signature;
        let found = {
            let Ok(mut s) = self.shard(&t.key).lock() else {
                return None;
            };
            match s.young.get(&t.key) {
                Some(e) => same(e).then(|| e.principal.clone()),
                None if s.old.get(&t.key).is_some_and(same) => s.old.remove(&t.key).map(|e| {
                    let p = e.principal.clone();
                    s.young.insert(t.key, e);
                    p
                }),
                None => None,
            }
        };
        found.filter(|p| p.exp.saturating_add(leeway) >= now)
    }

    /// Keeps the principal of a token whose signature verified.
    pub fn insert(&self, t: &TokenHash<'_>, p: Arc<Principal>) {
        if self.per_generation == 0 {
            return;
        }
        let Ok(mut s) = self.shard(&t.key).lock() else {
            return;
        };
        if s.young.len() >= self.per_generation {
            s.old = std::mem::take(&mut s.young);
        }
        let entry = Entry {
            principal: p,
            signature: t.signature.into(),
        };
        s.young.insert(t.key, entry);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                s.young.clear();
                s.old.clear();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.young.len() + s.old.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_signing_input_digest_of_that_very_slice() {
        let sha = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        for token in ["aGVhZA.cGF5bG9hZA.c2ln", "a.b.", ".", "no-dot", ""] {
            let mut h = hash(token);
            match token.rfind('.') {
                Some(dot) => {
                    assert_eq!(h.key.to_vec(), sha(&token.as_bytes()[..dot]), "{token}");
                    assert_eq!(h.signature, &token[dot + 1..]);
                    let signed = h.take_signing_input().expect("a token with a dot");
                    assert!(signed.covers(&token[..dot]), "{token}");
                    // Equal text elsewhere is not the slice that was hashed.
                    let copy = String::from(&token[..dot]);
                    assert!(!signed.covers(copy.as_str()), "{token}");
                    assert_eq!(signed.digest().as_ref(), &h.key[..]);
                }
                None => {
                    assert_eq!(h.key.to_vec(), sha(token.as_bytes()), "{token}");
                    assert!(h.take_signing_input().is_none(), "{token}");
                }
            }
        }
    }

    fn principal(exp: i64) -> Arc<Principal> {
        Arc::new(Principal {
            exp,
            ..Default::default()
        })
    }

    #[test]
    fn a_hit_is_the_same_signing_input_and_the_same_signature() {
        let c = TokenCache::new(64);
        c.insert(&hash("aGVhZA.cGF5bG9hZA.c2ln"), principal(100));
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA.c2ln"), 100, 0).is_some());
        // The signing input of a cached token under another signature, or none at all.
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA.Zm9yZ2Vk"), 100, 0).is_none());
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA."), 100, 0).is_none());
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA"), 100, 0).is_none());
        // Still found after moving to the old generation, and only with its signature.
        for i in 0..2 {
            c.insert(&hash(&format!("h.p{i}.s")), principal(100));
        }
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA.Zm9yZ2Vk"), 100, 0).is_none());
        assert!(c.get(&hash("aGVhZA.cGF5bG9hZA.c2ln"), 100, 0).is_some());
    }

    #[test]
    fn bounded_and_expiring() {
        let c = TokenCache::new(64);
        for i in 0..1000 {
            c.insert(&hash(&format!("h.t{i}.s")), principal(100));
        }
        assert!(c.len() <= 64, "{}", c.len());
        c.insert(&hash("h.x.s"), principal(100));
        assert!(c.get(&hash("h.x.s"), 100, 0).is_some());
        assert!(c.get(&hash("h.x.s"), 101, 0).is_none());
        assert!(c.get(&hash("h.x.s"), 101, 5).is_some());
        assert!(c.get(&hash("h.nope.s"), 0, 0).is_none());
    }
}
