//! Verified-token cache: SHA-256 of the token → validated principal, bounded, never past `exp`.
//! A hit skips signature verification only; revocation and IP checks still run on every request.
//! The key's hash runs over the JWS signing input first, and that state is kept: on a miss it
//! gives the signature check its digest, so the signing input is hashed once per request.
//!
//! Locks: 16 shards, each a `Mutex` over two generations; a lookup holds one shard lock for one
//! hash probe. When the young generation of a shard fills, the old one is dropped (O(1) eviction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;

use super::token::{Issuers, Principal};

const SHARDS: usize = 16;
type Key = [u8; 32];
/// foldhash over the SHA-256 key instead of SipHash: the key is already a digest, and only
/// verified tokens are ever inserted.
type Generation = HashMap<Key, Arc<Principal>, foldhash::fast::RandomState>;

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

/// The cache key of a token: its SHA-256.
pub fn key(token: &str) -> Key {
    hash(token).key
}

/// A token's cache key, and the SHA-256 state after its JWS signing input (everything before
/// the last `.`) for the signature check, from one pass over the token.
pub struct TokenHash<'t> {
    pub key: Key,
    pub signing_input: Option<SigningInputHash<'t>>,
}

/// SHA-256 over a token's JWS signing input, not yet finished, with the very slice it covers:
/// the signature check uses it only for that same slice ([`SigningInputHash::covers`]), so a
/// hash of any other text can never stand in for the input being verified.
pub struct SigningInputHash<'t> {
    ctx: digest::Context,
    input: &'t str,
}

impl SigningInputHash<'_> {
    /// Whether this is the hash of `text` itself (same address and length, not merely equal).
    pub fn covers(&self, text: &str) -> bool {
        std::ptr::eq(self.input, text)
    }

    pub fn finish(self) -> digest::Digest {
        self.ctx.finish()
    }
}

/// The key and signing-input hash of `token`.
pub fn hash(token: &str) -> TokenHash<'_> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let signing_input = token.rfind('.').map(|dot| {
        let input = &token[..dot];
        ctx.update(input.as_bytes());
        let signed = SigningInputHash {
            ctx: ctx.clone(),
            input,
        };
        ctx.update(&token.as_bytes()[dot..]);
        signed
    });
    if signing_input.is_none() {
        ctx.update(token.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    TokenHash { key, signing_input }
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

    /// A still-valid principal for this key (`exp` + leeway not passed at `now`).
    pub fn get(&self, k: &Key, now: i64, leeway: i64) -> Option<Arc<Principal>> {
        if self.per_generation == 0 {
            return None;
        }
        let found = {
            let Ok(mut s) = self.shard(k).lock() else {
                return None;
            };
            match s.young.get(k) {
                Some(p) => Some(p.clone()),
                None => s.old.remove(k).inspect(|p| {
                    s.young.insert(*k, p.clone());
                }),
            }
        };
        found.filter(|p| p.exp.saturating_add(leeway) >= now)
    }

    pub fn insert(&self, k: Key, p: Arc<Principal>) {
        if self.per_generation == 0 {
            return;
        }
        let Ok(mut s) = self.shard(&k).lock() else {
            return;
        };
        if s.young.len() >= self.per_generation {
            s.old = std::mem::take(&mut s.young);
        }
        s.young.insert(k, p);
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
    fn one_pass_gives_the_token_and_signing_input_digests() {
        let sha = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        for token in ["aGVhZA.cGF5bG9hZA.c2ln", "a.b.", ".", "no-dot", ""] {
            let h = hash(token);
            assert_eq!(h.key.to_vec(), sha(token.as_bytes()), "{token}");
            match token.rfind('.') {
                Some(dot) => {
                    let signed = h.signing_input.expect("a token with a dot");
                    assert!(signed.covers(&token[..dot]), "{token}");
                    // Equal text elsewhere is not the slice that was hashed.
                    let copy = String::from(&token[..dot]);
                    assert!(!signed.covers(copy.as_str()), "{token}");
                    assert_eq!(
                        signed.finish().as_ref().to_vec(),
                        sha(&token.as_bytes()[..dot])
                    );
                }
                None => assert!(h.signing_input.is_none(), "{token}"),
            }
        }
    }

    #[test]
    fn bounded_and_expiring() {
        let c = TokenCache::new(64);
        for i in 0..1000 {
            c.insert(
                key(&format!("t{i}")),
                Arc::new(Principal {
                    exp: 100,
                    ..Default::default()
                }),
            );
        }
        assert!(c.len() <= 64, "{}", c.len());
        c.insert(
            key("x"),
            Arc::new(Principal {
                exp: 100,
                ..Default::default()
            }),
        );
        assert!(c.get(&key("x"), 100, 0).is_some());
        assert!(c.get(&key("x"), 101, 0).is_none());
        assert!(c.get(&key("x"), 101, 5).is_some());
        assert!(c.get(&key("nope"), 0, 0).is_none());
    }
}
