//! Fleet backend (`[store] backend = "redis"`): every change is appended to a Redis Stream shared
//! by all replicas (the fleet log) and then written to this replica's embedded redb copy.
//!
//! Commit order: Redis first, then redb. A change that Redis did not take is written nowhere and
//! refused (the sender retries); a change Redis took but redb did not is still applied here later
//! by the tailer (`crate::fleet`), which applies every log entry, this replica's own included.
//! SET dedupe and the append are one Lua script, so a SET is marked seen only if its entry exists.
//!
//! Locks: a small pool of blocking connections (a `Mutex<Vec<_>>`, held only to take or return a
//! connection) serves the commit path, which runs on the blocking pool like every `Durable`.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, RedisError};

use super::redb_store::RedbStore;
use super::{Batch, Change, CommitOutcome, Durable, StoreError};
use crate::config::{RedisBackend, RedisTls};
use crate::metrics::{FleetMetrics, OpLabel, OutcomeLabel};

/// Blocking connections kept for the commit path.
const POOL_MAX: usize = 8;

/// SET dedupe (optional `KEYS[2]`) and append, atomically. ARGV: change JSON, origin replica,
/// MINID (ms), dedupe TTL (s). Returns the entry id, or nil for a SET seen before.
const APPEND_LUA: &str = r"
if KEYS[2] then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[4]) then
    return false
  end
end
return redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[3], '*', 'change', ARGV[1], 'origin', ARGV[2])
";

/// Take or renew a lease held by ARGV[1] for ARGV[2] ms; 1 when held by us afterwards.
const LEASE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Delete the lease only if ARGV[1] still holds it.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One fleet-log entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Stream id, `<ms>-<seq>`.
    pub id: String,
    /// The changes, or why they could not be decoded.
    pub changes: Result<Vec<Change>, String>,
    /// Replica that appended it.
    pub origin: String,
}

/// The Redis side of fleet mode: commit path, log reads, leases. Shared by the store and the
/// fleet tasks.
pub struct RedisLink {
    client: redis::Client,
    prefix: String,
    replica: String,
    timeout: Duration,
    pool: Mutex<Vec<redis::Connection>>,
    append: redis::Script,
    lease: redis::Script,
    release: redis::Script,
    metrics: OnceLock<FleetMetrics>,
}

impl RedisLink {
    /// Parses the URL (no connection is made here: Redis may be down at start). With
    /// `cfg.tls`, a private CA and/or a client certificate for the `rediss://` URL: the PEM files
    /// are read and parsed here, so a bad file fails the start.
    pub fn new(cfg: &RedisBackend, replica: String) -> Result<RedisLink, StoreError> {
        let client = match &cfg.tls {
            None => redis::Client::open(cfg.url.expose()),
            Some(t) => redis::Client::build_with_tls(cfg.url.expose(), tls_certificates(t)?),
        }
        .map_err(|e| StoreError::Open {
            path: "store.redis_url".into(),
            // The error may quote the URL; keep only its kind.
            reason: format!("invalid Redis URL or TLS settings ({:?})", e.kind()),
        })?;
        Ok(RedisLink {
            client,
            prefix: cfg.key_prefix.clone(),
            replica,
            timeout: cfg.timeout,
            pool: Mutex::new(Vec::new()),
            append: redis::Script::new(APPEND_LUA),
            lease: redis::Script::new(LEASE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            metrics: OnceLock::new(),
        })
    }

    /// This replica's id (the `origin` of its entries, the value of its leases).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The fleet-log stream key.
    pub fn stream_key(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// The dedupe key of a SET.
    pub fn set_key(&self, iss: &str, jti: &str) -> String {
        format!(
            "{}set:{}|{jti}",
            self.prefix,
            super::keys::normalize_iss(iss)
        )
    }

    /// The key of a verification `state` sent to a transmitter.
    pub fn state_key(&self, transmitter: &str, state: &str) -> String {
        format!("{}vstate:{transmitter}|{state}", self.prefix)
    }

    /// Blocking: whether the SET's dedupe key exists (it lives as long as the retention).
    pub fn seen_blocking(&self, iss: &str, jti: &str) -> Result<bool, StoreError> {
        let key = self.set_key(iss, jti);
        self.with_conn(|c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))
            .map(|n| n > 0)
            .map_err(|e| {
                self.error("state");
                StoreError::FleetLog(describe(&e))
            })
    }

    /// Blocking: records a verification state for every replica, expiring with it.
    pub fn put_state_blocking(
        &self,
        transmitter: &str,
        state: &str,
        expires: i64,
    ) -> Result<(), StoreError> {
        let key = self.state_key(transmitter, state);
        let ttl = (expires - super::now_secs()).max(1);
        self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(expires)
                .arg("EX")
                .arg(ttl)
                .query::<()>(c)
        })
        .map_err(|e| {
            self.error("state");
            StoreError::FleetLog(describe(&e))
        })
    }

    /// Blocking: the expiry of a verification state, if any replica sent it.
    pub fn state_blocking(
        &self,
        transmitter: &str,
        state: &str,
    ) -> Result<Option<i64>, StoreError> {
        let key = self.state_key(transmitter, state);
        self.with_conn(|c| redis::cmd("GET").arg(&key).query::<Option<i64>>(c))
            .map_err(|e| {
                self.error("state");
                StoreError::FleetLog(describe(&e))
            })
    }

    /// The key that marks a DPoP proof as used (`id`: a digest of its key and `jti`).
    pub fn dpop_key(&self, id: &[u8; 16]) -> String {
        let mut k = format!("{}dpop:", self.prefix);
        for b in id {
            k.push_str(&format!("{b:02x}"));
        }
        k
    }

    /// `SET key 1 NX PX ttl_ms`: true when this call set it, false when it was set already
    /// (RFC 9449 §11.1 replay detection shared by the fleet).
    pub async fn first_use(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        ttl_ms: u64,
    ) -> Result<bool, RedisError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(conn)
            .await?;
        Ok(set.is_some())
    }

    /// The poll lease key of a transmitter.
    pub fn lease_key(&self, transmitter: &str) -> String {
        format!("{}lease:poll:{transmitter}", self.prefix)
    }

    /// Connects the metrics (once the proxy's registry exists).
    pub fn set_metrics(&self, m: FleetMetrics) {
        let _ = self.metrics.set(m);
    }

    /// Counts a Redis failure of `op`.
    pub fn error(&self, op: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.redis_errors.get_or_create(&OpLabel { op }).inc();
        }
    }

    fn outcome(&self, result: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.commits.get_or_create(&OutcomeLabel { result }).inc();
        }
    }

    fn connect_blocking(&self) -> Result<redis::Connection, RedisError> {
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    fn put_conn(&self, c: redis::Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX {
            pool.push(c);
        }
    }

    /// Runs `f` on a pooled blocking connection; a connection that failed is dropped.
    ///
    /// A pooled connection that Redis dropped while it sat idle (Redis restarted or failed over,
    /// or closed idle clients) fails at once: `f` is then run once more on a new connection,
    /// after emptying the pool (its other connections are most likely dropped too). Otherwise
    /// the first change after every Redis restart would be refused. Running `f` twice is
    /// harmless: the append script's SET dedupe answers a repeat as a duplicate, and every other
    /// change is idempotent. Timeouts are not retried (the caller's deadline is spent).
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(mut c) = pooled {
            match f(&mut c) {
                Ok(v) => {
                    self.put_conn(c);
                    return Ok(v);
                }
                Err(e) if e.is_connection_dropped() && !e.is_timeout() => {
                    tracing::debug!(error = %describe(&e), "pooled Redis connection was dropped; retrying on a new one");
                    self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                Err(e) => return Err(e),
            }
        }
        let mut c = self.connect_blocking()?;
        let r = f(&mut c);
        if r.is_ok() {
            self.put_conn(c);
        }
        r
    }

    /// Blocking: dedupe (when `set_id`) and append `changes`; `None` for a SET seen before.
    pub fn append_blocking(
        &self,
        changes: &[Change],
        set_id: Option<&(String, String)>,
        retention_secs: i64,
    ) -> Result<Option<String>, StoreError> {
        let json = serde_json::to_string(changes).map_err(|e| StoreError::Write(e.to_string()))?;
        let minid = (now_ms() - retention_secs.saturating_mul(1000)).max(0);
        let stream = self.stream_key();
        let r = self.with_conn(|c| {
            let mut inv = self.append.key(&stream);
            if let Some((iss, jti)) = set_id {
                inv.key(self.set_key(iss, jti));
            }
            inv.arg(&json)
                .arg(&self.replica)
                .arg(minid)
                .arg(retention_secs.max(1))
                .invoke::<Option<String>>(c)
        });
        match r {
            Ok(Some(id)) => {
                self.outcome("appended");
                Ok(Some(id))
            }
            Ok(None) => {
                self.outcome("duplicate");
                Ok(None)
            }
            Err(e) => {
                self.error("append");
                self.outcome("failed");
                Err(StoreError::FleetLog(describe(&e)))
            }
        }
    }

    /// Blocking: claims `<prefix><name>` for `secs` (`SET NX EX`); true if this replica got it.
    pub fn claim_slot_blocking(&self, name: &str, secs: i64) -> Result<bool, StoreError> {
        let key = format!("{}{name}", self.prefix);
        self.with_conn(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&self.replica)
                .arg("NX")
                .arg("EX")
                .arg(secs.max(1))
                .query::<Option<String>>(c)
        })
        .map(|r| r.is_some())
        .map_err(|e| {
            self.error("slot");
            StoreError::FleetLog(describe(&e))
        })
    }

    /// Blocking: drops log entries older than `before_secs` (approximate, like the appends).
    pub fn trim_blocking(&self, before_secs: i64) -> Result<(), StoreError> {
        let stream = self.stream_key();
        self.with_conn(|c| {
            redis::cmd("XTRIM")
                .arg(&stream)
                .arg("MINID")
                .arg("~")
                .arg(before_secs.saturating_mul(1000).max(0))
                .query::<i64>(c)
        })
        .map(|_| ())
        .map_err(|e| {
            self.error("trim");
            StoreError::FleetLog(describe(&e))
        })
    }

    /// A new multiplexed connection for the tailer or the lease keeper. `extra` is added to the
    /// response timeout (the tailer's `XREAD BLOCK` time).
    pub async fn connect(&self, extra: Duration) -> Result<MultiplexedConnection, RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout + extra));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// Reads up to `count` entries after `cursor`, waiting up to `block` for the first one.
    pub async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<LogEntry>, RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.stream_key()).arg(cursor);
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for e in key.ids {
                let changes = match e.get::<String>("change") {
                    Some(j) => serde_json::from_str::<Vec<Change>>(&j).map_err(|x| x.to_string()),
                    None => Err("entry has no change field".to_string()),
                };
                let origin = e.get::<String>("origin").unwrap_or_default();
                out.push(LogEntry {
                    id: e.id,
                    changes,
                    origin,
                });
            }
        }
        Ok(out)
    }

    /// The largest id Redis ever trimmed from the log (`XINFO STREAM`), if any.
    pub async fn max_deleted_id(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<String>, RedisError> {
        let v: redis::Value = match redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.stream_key())
            .query_async(conn)
            .await
        {
            Ok(v) => v,
            // No stream yet: nothing was ever trimmed.
            Err(e) if !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let pairs: Vec<(redis::Value, redis::Value)> = match v {
            redis::Value::Map(m) => m,
            redis::Value::Array(a) => {
                let mut out = Vec::new();
                let mut it = a.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((k, v));
                }
                out
            }
            _ => Vec::new(),
        };
        for (k, v) in pairs {
            let key: Option<String> = redis::from_redis_value(k).ok();
            if key.as_deref() == Some("max-deleted-entry-id") {
                let id: Option<String> = redis::from_redis_value(v).ok();
                return Ok(id.filter(|i| i != "0-0"));
            }
        }
        Ok(None)
    }

    /// Takes or renews the poll lease of `transmitter` for `ttl`; true when this replica holds it.
    pub async fn lease(
        &self,
        conn: &mut MultiplexedConnection,
        transmitter: &str,
        ttl: Duration,
    ) -> Result<bool, RedisError> {
        let held: i64 = self
            .lease
            .key(self.lease_key(transmitter))
            .arg(&self.replica)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(conn)
            .await?;
        Ok(held == 1)
    }

    /// Gives up the lease of `transmitter` if this replica holds it.
    pub async fn release(
        &self,
        conn: &mut MultiplexedConnection,
        transmitter: &str,
    ) -> Result<(), RedisError> {
        let _: i64 = self
            .release
            .key(self.lease_key(transmitter))
            .arg(&self.replica)
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}

/// Reads the PEM files of `store.redis_ca` and `store.redis_client_cert` / `redis_client_key`.
/// Each is parsed first, and a certificate and key that do not match are refused, so that an
/// unusable file fails the start with its key instead of every connection later.
fn tls_certificates(t: &RedisTls) -> Result<redis::TlsCertificates, StoreError> {
    let open = |key: &str, reason: String| StoreError::Open {
        path: key.to_string(),
        reason,
    };
    // Each file is read once: parsed here (a bad file fails the start with its key), then handed
    // to the Redis client as PEM.
    let read = |key: &str, path: &Path| {
        std::fs::read(path).map_err(|e| open(key, format!("{}: {e}", path.display())))
    };
    let root_cert = match &t.ca {
        Some(p) => {
            let pem = read("store.redis_ca", p)?;
            crate::tls::parse_certs(&pem, p).map_err(|e| open("store.redis_ca", e.to_string()))?;
            Some(pem)
        }
        None => None,
    };
    let client_tls = match &t.client {
        Some((cert, key)) => {
            let cert_pem = read("store.redis_client_cert", cert)?;
            let key_pem = read("store.redis_client_key", key)?;
            let chain = crate::tls::parse_certs(&cert_pem, cert)
                .map_err(|e| open("store.redis_client_cert", e.to_string()))?;
            let private = crate::tls::parse_key(&key_pem, key)
                .map_err(|e| open("store.redis_client_key", e.to_string()))?;
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, private)
                .map_err(|e| {
                    open(
                        "store.redis_client_key",
                        format!("unusable with store.redis_client_cert (not its key, or a certificate rustls refuses): {e}"),
                    )
                })?;
            Some(redis::ClientTlsConfig {
                client_cert: cert_pem,
                client_key: key_pem,
            })
        }
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// A Redis error for logs and answers: its kind and message, never the URL or credentials.
pub fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        "Redis did not answer in time".into()
    } else if e.is_connection_refusal() {
        "Redis refused the connection".into()
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection to Redis failed".into()
    } else {
        format!("Redis error: {:?}", e.kind())
    }
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `(ms, seq)` of a stream id; `None` if it is not one.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The fleet backend: the log in Redis plus the embedded redb copy.
pub struct RedisStore {
    local: Arc<RedbStore>,
    link: Arc<RedisLink>,
    retention_secs: i64,
}

impl RedisStore {
    pub fn new(local: Arc<RedbStore>, link: Arc<RedisLink>, retention_secs: i64) -> RedisStore {
        RedisStore {
            local,
            link,
            retention_secs,
        }
    }
}

impl RedisStore {
    /// Account blocks never expire, but the log is trimmed after `store.retention`: a replica
    /// that joins later (or was away longer) would never see an old block. So once per quarter
    /// of the retention, one replica (a `SET NX EX` slot) appends the blocks older than half the
    /// retention again, with their original event times (idempotent). Trimming is by entry id,
    /// oldest first, so a later unblock is never trimmed before the re-published block.
    /// Returns how many blocks were re-published.
    pub fn republish_old_blocks(&self, now: i64) -> Result<usize, StoreError> {
        let half = now - self.retention_secs / 2;
        let slot = (self.retention_secs / 4).max(1);
        if !self.link.claim_slot_blocking("republish-blocks", slot)? {
            return Ok(0);
        }
        let old: Vec<Change> = self
            .local
            .load()?
            .into_iter()
            .filter(|c| matches!(c, Change::Block { at, .. } if *at < half))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        self.link.append_blocking(&old, None, self.retention_secs)?;
        tracing::info!(
            blocks = old.len(),
            "old account blocks re-published to the fleet log"
        );
        Ok(old.len())
    }
}

impl Durable for RedisStore {
    /// Redis (dedupe + append, atomically) first, then the local copy; returns once both hold it.
    fn commit(&self, batch: &Batch) -> Result<CommitOutcome, StoreError> {
        if batch.changes.is_empty() && batch.set_id.is_none() {
            return Ok(CommitOutcome::Committed);
        }
        let appended = self.link.append_blocking(
            &batch.changes,
            batch.set_id.as_ref(),
            self.retention_secs,
        )?;
        if appended.is_none() {
            return Ok(CommitOutcome::Duplicate);
        }
        // Dedupe is the fleet's (in Redis); the local copy only keeps the effects. If this write
        // fails the caller answers "retry"; the entry is in the log and the tailer applies it.
        self.local.commit(&Batch {
            changes: batch.changes.clone(),
            set_id: None,
            now: batch.now,
        })?;
        Ok(CommitOutcome::Committed)
    }

    /// The embedded copy: a replica starts from it even when Redis is unreachable.
    fn load(&self) -> Result<Vec<Change>, StoreError> {
        self.local.load()
    }

    fn purge(&self, before: i64) -> Result<usize, StoreError> {
        let n = self.local.purge(before)?;
        // Appends trim too; this keeps an idle log short. Failure is not fatal.
        if let Err(e) = self.link.trim_blocking(before) {
            tracing::debug!(error = %e, "fleet log trim skipped");
        }
        if let Err(e) = self.republish_old_blocks(before + self.retention_secs) {
            tracing::warn!(error = %e, "re-publishing old account blocks failed; retried at the next expiry pass");
        }
        Ok(n)
    }

    /// Fleet-wide: a SET committed by any replica is a repeat here too.
    fn seen(&self, iss: &str, jti: &str) -> Result<bool, StoreError> {
        self.link.seen_blocking(iss, jti)
    }

    /// Fleet-wide: the verification SET may reach (push) or be polled by another replica.
    fn put_state(&self, transmitter: &str, state: &str, expires: i64) -> Result<(), StoreError> {
        self.link.put_state_blocking(transmitter, state, expires)
    }

    fn state_expiry(&self, transmitter: &str, state: &str) -> Result<Option<i64>, StoreError> {
        self.link.state_blocking(transmitter, state)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_order() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert!(parse_id("1-2") < parse_id("1-10"));
        assert_eq!(parse_id("x"), None);
        assert_eq!(parse_id("1-x"), None);
    }
}
