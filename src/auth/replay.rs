//! DPoP proofs seen (RFC 9449 §11.1): a proof's `jti` is accepted once while its `iat` window
//! lasts. One process: a bounded in-memory set. Fleet mode: one `SET NX PX` in Redis per proof,
//! so that a proof replayed at another replica is refused too. Fail closed: when the set is full
//! or Redis cannot answer, the proof is refused as unverifiable (answered 503), never accepted.
//!
//! Locks: the set has 16 shards, each a `Mutex` over two generations, held for one probe and one
//! insert. The Redis connection is read lock-free (`ArcSwapOption`); a `tokio::Mutex` serialises
//! reconnecting only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::store::redis_store::{describe, now_ms, AsyncConn};
use crate::store::RedisLink;

const SHARDS: usize = 16;
/// After a Redis failure, checks fail at once for this long instead of each waiting for an
/// unreachable Redis; then one tries again.
const REDIS_BACKOFF_MS: i64 = 250;

/// What identifies a proof: the first 16 bytes of SHA-256(key thumbprint ‖ `jti`), so that two
/// clients' `jti`s never collide and no client can use up another's.
pub type ProofId = [u8; 16];

/// The id of a proof by its key's thumbprint and its `jti`.
pub fn proof_id(jkt: &[u8; 32], jti: &str) -> ProofId {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(jkt);
    ctx.update(jti.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&ctx.finish().as_ref()[..16]);
    id
}

/// The answer of a replay check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: recorded now.
    First,
    /// Used before, within its window.
    Replayed,
    /// Cannot be told (set full, Redis unreachable): refuse.
    Unavailable,
}

#[derive(Default)]
struct Shard {
    young: HashMap<ProofId, i64>,
    old: HashMap<ProofId, i64>,
    /// Latest expiry (epoch seconds) in each generation.
    young_until: i64,
    old_until: i64,
}

/// Proofs seen, in this process or (fleet mode) in Redis.
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    capacity: AtomicUsize,
    redis: OnceLock<RedisReplay>,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(1_000_000)
    }
}

impl ReplayCache {
    /// A set holding up to `capacity` live proofs (`server.dpop_replay_cache_size`).
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            capacity: AtomicUsize::new(capacity),
            redis: OnceLock::new(),
        }
    }

    /// A reload may change the capacity; entries are kept.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Fleet mode: proofs are recorded in Redis from now on (only the first call counts).
    pub fn use_redis(&self, link: Arc<RedisLink>) {
        let _ = self.redis.set(RedisReplay {
            link,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            down_until_ms: AtomicI64::new(0),
            failing: AtomicBool::new(false),
        });
    }

    /// Whether the shared (Redis) set is used.
    pub fn is_shared(&self) -> bool {
        self.redis.get().is_some()
    }

    /// Records the proof `id`, valid until `expires` (epoch seconds), unless it was seen.
    pub async fn first_use(&self, id: ProofId, expires: i64, now: i64) -> Seen {
        match self.redis.get() {
            Some(r) => {
                let ttl = u64::try_from(expires.saturating_sub(now).saturating_add(1))
                    .unwrap_or(1)
                    .saturating_mul(1000);
                r.first_use(&id, ttl).await
            }
            None => self.first_use_local(id, expires, now),
        }
    }

    fn first_use_local(&self, id: ProofId, expires: i64, now: i64) -> Seen {
        let per_shard = (self.capacity.load(Ordering::Relaxed) / SHARDS).max(1);
        let Ok(mut s) = self.shards[usize::from(id[0]) % SHARDS].lock() else {
            return Seen::Unavailable;
        };
        if s.old_until < now {
            // Everything in the old generation has expired: drop it, the young one ages.
            s.old = std::mem::take(&mut s.young);
            s.old_until = std::mem::replace(&mut s.young_until, i64::MIN);
            if s.old_until < now {
                s.old.clear();
            }
        }
        let live = |m: &HashMap<ProofId, i64>| m.get(&id).is_some_and(|e| *e >= now);
        if live(&s.young) || live(&s.old) {
            return Seen::Replayed;
        }
        if s.young.len() + s.old.len() >= per_shard {
            return Seen::Unavailable;
        }
        s.young.insert(id, expires);
        s.young_until = s.young_until.max(expires);
        Seen::First
    }

    /// Proofs held in this process (not those in Redis).
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

/// The fleet's set: one Redis key per proof, expiring with the proof's window.
struct RedisReplay {
    link: Arc<RedisLink>,
    conn: ArcSwapOption<AsyncConn>,
    connecting: tokio::sync::Mutex<()>,
    down_until_ms: AtomicI64,
    /// Logged once per outage.
    failing: AtomicBool,
}

impl RedisReplay {
    async fn connection(&self) -> Result<AsyncConn, redis::RedisError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let c = self.link.connect(Duration::ZERO).await?;
        self.conn.store(Some(Arc::new(c.clone())));
        Ok(c)
    }

    async fn first_use(&self, id: &ProofId, ttl_ms: u64) -> Seen {
        if now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return Seen::Unavailable;
        }
        let key = self.link.dpop_key(id);
        let r = match self.connection().await {
            Ok(mut c) => self.link.first_use(&mut c, &key, ttl_ms).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(first) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("DPoP replay checks reach Redis again");
                }
                if first {
                    Seen::First
                } else {
                    Seen::Replayed
                }
            }
            Err(e) => {
                self.conn.store(None);
                self.down_until_ms
                    .store(now_ms() + REDIS_BACKOFF_MS, Ordering::Relaxed);
                self.link.error("dpop_replay");
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %describe(&e), "DPoP replay check cannot reach Redis; DPoP requests are refused (503) until it answers");
                }
                Seen::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proof_is_accepted_once_within_its_window() {
        let c = ReplayCache::new(1000);
        let a = proof_id(&[1; 32], "j1");
        assert_eq!(c.first_use(a, 100, 50).await, Seen::First);
        assert_eq!(c.first_use(a, 100, 60).await, Seen::Replayed);
        assert_eq!(c.first_use(a, 100, 100).await, Seen::Replayed);
        assert_ne!(proof_id(&[2; 32], "j1"), a, "the key is part of the id");
        assert_eq!(
            c.first_use(proof_id(&[2; 32], "j1"), 100, 60).await,
            Seen::First
        );
        // Past its window the proof's iat is refused anyway; the entry is dropped in time.
        assert_eq!(c.first_use(a, 300, 101).await, Seen::First);
    }

    #[tokio::test]
    async fn a_full_set_fails_closed_and_frees_expired_generations() {
        let c = ReplayCache::new(SHARDS);
        // One entry per shard: a second live one in the same shard is refused.
        let mut same_shard = (0u32..).map(|i| proof_id(&[0; 32], &i.to_string()));
        let first = same_shard.next().unwrap();
        let shard = first[0] as usize % SHARDS;
        let second = same_shard
            .find(|id| id[0] as usize % SHARDS == shard)
            .unwrap();
        assert_eq!(c.first_use(first, 10, 0).await, Seen::First);
        assert_eq!(c.first_use(second, 10, 0).await, Seen::Unavailable);
        // Once the first has expired, its generation goes and room is made.
        assert_eq!(c.first_use(second, 30, 11).await, Seen::First);
        assert_eq!(c.len(), 1);
    }
}
