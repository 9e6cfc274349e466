//! Fleet backend (`[store] backend = "redis"`): every change is appended to a Redis Stream shared
//! by all replicas (the fleet log) and then written to this replica's embedded redb copy.
//!
//! Commit order: Redis first, then redb. A change that Redis did not take is written nowhere and
//! refused (the sender retries); a change Redis took but redb did not is still applied here later
//! by the tailer (`crate::fleet`), which applies every log entry, this replica's own included.
//! SET dedupe and the append are one Lua script, so a SET is marked seen only if its entry exists.
//! With `store.min_replicas_acked`, `WAIT` follows the script on the same connection: the change
//! is acknowledged only once that many Redis replicas hold it.
//!
//! Which server: [`Primary`] (the URL's, Sentinel's primary, or the cluster node of the fleet's
//! hash slot), found again when a connection fails or a node answers `READONLY`/`MOVED`.
//!
//! Locks: a small pool of blocking connections (a `Mutex<Vec<_>>`, held only to take or return a
//! connection) serves the commit path, which runs on the blocking pool like every `Durable`;
//! `write_state` (a `Mutex`) is held to record one outcome.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, RedisError};

use super::redb_store::RedbStore;
use super::redis_primary::{wrong_node, Primary};
use super::{Batch, Change, CommitOutcome, Durable, StoreError};
use crate::config::{RedisBackend, RedisTls, RedisTopology};
use crate::metrics::{FleetMetrics, OpLabel, OutcomeLabel};

/// Blocking connections kept for the commit path.
const POOL_MAX: usize = 8;

/// SET dedupe (optional `KEYS[2]`) and append, atomically. ARGV: change JSON, origin replica,
/// MINID (ms), dedupe TTL (s). Returns the entry id, or nil for a SET seen before. A repeat
/// renews its dedupe mark: that write is what a following `WAIT` waits for, and it comes after
/// the first delivery's entry in the replication stream, so "replicated" covers that entry too.
const APPEND_LUA: &str = r"
if KEYS[2] then
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[4]) then
    redis.call('EXPIRE', KEYS[2], ARGV[4])
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

/// A connection of the tailer, the lease keeper or the heartbeat, with the discovery generation
/// of the node it reaches (a failure that says "not the primary" forgets that node).
#[derive(Clone)]
pub struct AsyncConn {
    pub conn: MultiplexedConnection,
    generation: u64,
}

/// Whether changes can be acknowledged now, as the last commit or heartbeat found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct WriteState {
    /// `None`: not checked yet.
    writable: Option<bool>,
    /// Why not, when not.
    why: String,
}

/// The Redis side of fleet mode: commit path, log reads, leases, heartbeats. Shared by the store
/// and the fleet tasks.
pub struct RedisLink {
    pub(super) primary: Arc<Primary>,
    prefix: String,
    replica: String,
    pub(super) timeout: Duration,
    /// Blocking connections with the generation of the node they reach.
    pool: Mutex<Vec<(u64, redis::Connection)>>,
    append: redis::Script,
    lease: redis::Script,
    release: redis::Script,
    pub(super) heartbeat: redis::Script,
    pub(super) metrics: OnceLock<FleetMetrics>,
    /// `store.min_replicas_acked` and its `WAIT` timeout.
    pub(super) min_replicas_acked: u32,
    pub(super) ack_timeout: Duration,
    write_state: Mutex<WriteState>,
    /// Set once the first commit or heartbeat found Redis writable (logs the transitions).
    seen_writable: AtomicBool,
}

impl RedisLink {
    /// Parses the URL (no connection is made here: Redis may be down at start). With
    /// `cfg.tls`, a private CA and/or a client certificate for the `rediss://` URL: the PEM files
    /// are read and parsed here, so a bad file fails the start. In Redis Cluster every key is
    /// hash-tagged with the prefix (`{cae:}changes`), so the fleet lives in one slot.
    pub fn new(cfg: &RedisBackend, replica: String) -> Result<RedisLink, StoreError> {
        let prefix = key_prefix(&cfg.key_prefix, &cfg.topology);
        let tls = cfg.tls.as_ref().map(tls_certificates).transpose()?;
        let primary = Primary::new(
            &cfg.url,
            tls,
            cfg.topology.clone(),
            cfg.timeout,
            format!("{prefix}changes"),
        )
        .map_err(|reason| StoreError::Open {
            path: "store.redis_url".into(),
            source: reason.into(),
        })?;
        Ok(RedisLink {
            primary: Arc::new(primary),
            prefix,
            replica,
            timeout: cfg.timeout,
            pool: Mutex::new(Vec::new()),
            append: redis::Script::new(APPEND_LUA),
            lease: redis::Script::new(LEASE_LUA),
            release: redis::Script::new(RELEASE_LUA),
            heartbeat: redis::Script::new(super::redis_health::HEARTBEAT_LUA),
            metrics: OnceLock::new(),
            min_replicas_acked: cfg.min_replicas_acked,
            ack_timeout: cfg.replicas_ack_timeout,
            write_state: Mutex::new(WriteState::default()),
            seen_writable: AtomicBool::new(false),
        })
    }

    /// `standalone`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        self.primary.mode()
    }

    /// `store.redis_timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `store.min_replicas_acked`.
    pub fn min_replicas_acked(&self) -> u32 {
        self.min_replicas_acked
    }

    /// How much longer than `store.redis_timeout` an answer may take on a connection that
    /// waits for replicas (`WAIT`).
    pub fn ack_wait(&self) -> Duration {
        if self.min_replicas_acked > 0 {
            self.ack_timeout
        } else {
            Duration::ZERO
        }
    }

    /// The primary in use (`host:port`), if one is known.
    pub fn primary_addr(&self) -> Option<String> {
        self.primary.known().map(|n| n.addr.clone())
    }

    /// `Ok` when the last commit or heartbeat could have been acknowledged; else why not.
    pub fn writable(&self) -> Result<(), String> {
        let s = self.write_state.lock().unwrap_or_else(|p| p.into_inner());
        match s.writable {
            Some(true) => Ok(()),
            Some(false) => Err(s.why.clone()),
            None => Err("not checked yet".into()),
        }
    }

    /// Records whether a change could be acknowledged now (a commit's or a heartbeat's outcome).
    pub fn set_writable(&self, r: Result<(), String>) {
        let mut s = self.write_state.lock().unwrap_or_else(|p| p.into_inner());
        let was = s.writable;
        match &r {
            Ok(()) => {
                s.writable = Some(true);
                s.why.clear();
            }
            Err(why) => {
                s.writable = Some(false);
                s.why.clone_from(why);
            }
        }
        drop(s);
        if let Some(m) = self.metrics.get() {
            m.writable.set(i64::from(r.is_ok()));
        }
        // Transitions after the first success are logged (a start with Redis down is logged by
        // the tailer already).
        let seen = match r {
            Ok(()) => self.seen_writable.swap(true, Ordering::Relaxed),
            Err(_) => self.seen_writable.load(Ordering::Relaxed),
        };
        match (was, &r) {
            (Some(true), Err(why)) if seen => {
                tracing::warn!(reason = %why, "fleet log not writable: changes are refused (503) until Redis takes them again")
            }
            (Some(false), Ok(())) if seen => {
                tracing::info!("fleet log writable again: changes are acknowledged")
            }
            _ => {}
        }
    }

    /// This replica's id (the `origin` of its entries, the value of its leases).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The prefix of every key of this fleet (hash-tagged in Redis Cluster).
    pub fn prefix(&self) -> &str {
        &self.prefix
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

    /// Blocking: `SET <prefix>claim:<name> <replica> NX PX <ttl>`, or the claim already held
    /// by this replica.
    pub fn claim_blocking(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let key = format!("{}claim:{name}", self.prefix);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.with_conn(|c| {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&self.replica)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query(c)?;
            if set.is_some() {
                return Ok(true);
            }
            let holder: Option<String> = redis::cmd("GET").arg(&key).query(c)?;
            Ok(holder.as_deref() == Some(self.replica.as_str()))
        })
        .map_err(|e| {
            self.error("claim");
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
        conn: &mut AsyncConn,
        key: &str,
        ttl_ms: u64,
    ) -> Result<bool, RedisError> {
        let set: Result<Option<String>, RedisError> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn.conn)
            .await;
        // A failover makes the old primary refuse writes: find the new one for the next call.
        set.inspect_err(|e| self.failed(conn.generation, e))
            .map(|s| s.is_some())
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

    /// A new blocking connection to the primary (discovered first if needed), and its node's
    /// generation.
    fn connect_blocking(&self) -> Result<(u64, redis::Connection), RedisError> {
        let node = self.primary.node()?;
        let connect = || {
            let c = node.client.get_connection_with_timeout(self.timeout)?;
            c.set_read_timeout(Some(self.timeout))?;
            c.set_write_timeout(Some(self.timeout))?;
            Ok::<_, RedisError>(c)
        };
        match connect() {
            Ok(c) => Ok((node.generation, c)),
            Err(e) => {
                self.primary.forget(node.generation);
                Err(e)
            }
        }
    }

    fn put_conn(&self, generation: u64, c: redis::Connection) {
        let current = self.primary.known().map(|n| n.generation);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX && current == Some(generation) {
            pool.push((generation, c));
        }
    }

    /// `e` on a connection to the node of `generation`: if it says that node may not be the
    /// primary any more, the pool is emptied and the node forgotten (found again next time).
    fn failed(&self, generation: u64, e: &RedisError) {
        if wrong_node(e) {
            self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.primary.forget(generation);
        }
    }

    /// Runs `f` on a pooled blocking connection; a connection that failed is dropped.
    ///
    /// A pooled connection that Redis dropped while it sat idle (Redis restarted or failed over,
    /// or closed idle clients) fails at once, and one to a node that is no longer the primary
    /// answers `READONLY` or `MOVED`: `f` is then run once more on a new connection (to the
    /// primary found again), after emptying the pool (its other connections are most likely in
    /// the same state). Otherwise the first change after every Redis restart or failover would be
    /// refused. Running `f` twice is harmless: the append script's SET dedupe answers a repeat as
    /// a duplicate, and every other change is idempotent. Timeouts are not retried (the caller's
    /// deadline is spent).
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some((generation, mut c)) = pooled {
            match f(&mut c) {
                Ok(v) => {
                    self.put_conn(generation, c);
                    return Ok(v);
                }
                Err(e) => {
                    self.failed(generation, &e);
                    let dropped = e.is_connection_dropped() && !e.is_timeout();
                    let moved = matches!(e.code(), Some("READONLY" | "MOVED"));
                    if !(dropped || moved) {
                        return Err(e);
                    }
                    tracing::debug!(error = %describe(&e), "pooled Redis connection dropped or not on the primary; retrying on a new one");
                }
            }
        }
        let (generation, mut c) = self.connect_blocking()?;
        match f(&mut c) {
            Ok(v) => {
                self.put_conn(generation, c);
                Ok(v)
            }
            Err(e) => {
                self.failed(generation, &e);
                Err(e)
            }
        }
    }

    /// Blocking: dedupe (when `set_id`) and append `changes`; `None` for a SET seen before.
    pub fn append_blocking(
        &self,
        changes: &[Change],
        set_id: Option<&(String, String)>,
        retention_secs: i64,
    ) -> Result<Option<String>, StoreError> {
        let json = serde_json::to_string(changes).map_err(|e| StoreError::Write(e.into()))?;
        let minid = (now_ms() - retention_secs.saturating_mul(1000)).max(0);
        let stream = self.stream_key();
        let r = self.with_conn(|c| {
            let mut inv = self.append.key(&stream);
            if let Some((iss, jti)) = set_id {
                inv.key(self.set_key(iss, jti));
            }
            let id = inv
                .arg(&json)
                .arg(&self.replica)
                .arg(minid)
                .arg(retention_secs.max(1))
                .invoke::<Option<String>>(c)?;
            let acked = self.wait_replicas(c)?;
            Ok((id, acked))
        });
        match r {
            Ok((id, acked)) if acked < self.min_replicas_acked => {
                // In the primary's log (the tailers may apply it), but not acknowledged: a
                // failover now could lose it. The sender retries; a SET's retry is a repeat,
                // acknowledged once `WAIT` says the replicas have it.
                self.error("replicas");
                self.outcome("not_replicated");
                let why = self.not_replicated(acked);
                self.set_writable(Err(why.clone()));
                tracing::debug!(entry = id.as_deref().unwrap_or("repeat"), "{why}");
                Err(StoreError::FleetLog(why))
            }
            Ok((Some(id), _)) => {
                self.outcome("appended");
                self.set_writable(Ok(()));
                Ok(Some(id))
            }
            Ok((None, _)) => {
                self.outcome("duplicate");
                self.set_writable(Ok(()));
                Ok(None)
            }
            Err(e) => {
                self.error("append");
                self.outcome("failed");
                let why = describe(&e);
                self.set_writable(Err(why.clone()));
                Err(StoreError::FleetLog(why))
            }
        }
    }

    /// With `min_replicas_acked`: `WAIT` for that many replicas (bounded by the ack timeout) on
    /// the connection that just wrote; how many acknowledged. Without: 0, no round trip.
    fn wait_replicas(&self, c: &mut redis::Connection) -> Result<u32, RedisError> {
        if self.min_replicas_acked == 0 {
            return Ok(0);
        }
        c.set_read_timeout(Some(self.timeout + self.ack_timeout))?;
        let n: i64 = redis::cmd("WAIT")
            .arg(self.min_replicas_acked)
            .arg(self.ack_timeout.as_millis().max(1) as u64)
            .query(c)?;
        c.set_read_timeout(Some(self.timeout))?;
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    }

    /// Why a write with `acked` replicas is not acknowledged.
    pub(super) fn not_replicated(&self, acked: u32) -> String {
        format!(
            "only {acked} of the {} Redis replicas store.min_replicas_acked asks for acknowledged within {:?}",
            self.min_replicas_acked, self.ack_timeout
        )
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

    /// A new multiplexed connection to the primary (discovered first if needed) for the tailer,
    /// the lease keeper or the heartbeat. `extra` is added to the response timeout (the
    /// tailer's `XREAD BLOCK` time, the heartbeat's `WAIT`).
    pub async fn connect(&self, extra: Duration) -> Result<AsyncConn, RedisError> {
        let node = self.primary.node_async().await?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout + extra));
        match node
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(conn) => Ok(AsyncConn {
                conn,
                generation: node.generation,
            }),
            Err(e) => {
                self.primary.forget(node.generation);
                Err(e)
            }
        }
    }

    /// Forgets the node of `conn` when `r` failed in a way that says it may not be the primary.
    pub(super) fn check<T>(
        &self,
        conn: &AsyncConn,
        r: Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        if let Err(e) = &r {
            self.failed(conn.generation, e);
        }
        r
    }

    /// Reads up to `count` entries after `cursor`, waiting up to `block` for the first one.
    pub async fn read(
        &self,
        conn: &mut AsyncConn,
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
        let r = cmd.query_async(&mut conn.conn).await;
        let reply: Option<StreamReadReply> = self.check(conn, r)?;
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

    /// What `XINFO STREAM` says of the log; `None` when there is no log (yet).
    pub async fn stream_info(
        &self,
        conn: &mut AsyncConn,
    ) -> Result<Option<StreamInfo>, RedisError> {
        let r = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.stream_key())
            .query_async(&mut conn.conn)
            .await;
        let v: redis::Value = match r {
            Ok(v) => v,
            // No stream yet: nothing was ever appended (or trimmed).
            Err(e) if !wrong_node(&e) => return Ok(None),
            Err(e) => return self.check(conn, Err(e)),
        };
        Ok(Some(StreamInfo::parse(v)))
    }

    /// Takes or renews the poll lease of `transmitter` for `ttl`; true when this replica holds it.
    pub async fn lease(
        &self,
        conn: &mut AsyncConn,
        transmitter: &str,
        ttl: Duration,
    ) -> Result<bool, RedisError> {
        let r = self
            .lease
            .key(self.lease_key(transmitter))
            .arg(&self.replica)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async::<i64>(&mut conn.conn)
            .await;
        Ok(self.check(conn, r)? == 1)
    }

    /// Gives up the lease of `transmitter` if this replica holds it.
    pub async fn release(&self, conn: &mut AsyncConn, transmitter: &str) -> Result<(), RedisError> {
        let r = self
            .release
            .key(self.lease_key(transmitter))
            .arg(&self.replica)
            .invoke_async::<i64>(&mut conn.conn)
            .await;
        self.check(conn, r).map(|_| ())
    }
}

/// Reads the PEM files of `store.redis_ca` and `store.redis_client_cert` / `redis_client_key`.
/// Each is parsed first, and a certificate and key that do not match are refused, so that an
/// unusable file fails the start with its key instead of every connection later.
fn tls_certificates(t: &RedisTls) -> Result<redis::TlsCertificates, StoreError> {
    let open = |key: &str, reason: String| StoreError::Open {
        path: key.to_string(),
        source: reason.into(),
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

/// The prefix of every key: in Redis Cluster, the configured one as a hash tag (`{cae:}`) unless
/// it holds one already, so that the log, the dedupe keys, leases and heartbeats share one slot
/// (the append script touches two of them).
pub fn key_prefix(configured: &str, topology: &RedisTopology) -> String {
    let tagged = configured
        .split_once('{')
        .is_some_and(|(_, rest)| rest.find('}').is_some_and(|end| end > 0));
    match topology {
        RedisTopology::Cluster { .. } if !tagged => format!("{{{configured}}}"),
        _ => configured.to_string(),
    }
}

/// What `XINFO STREAM` tells of the fleet log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    pub length: u64,
    /// The id of the last entry ever appended (`0-0` for none).
    pub last_generated_id: String,
    /// The largest id trimmed from the log, if any (Redis ≥ 7.0).
    pub max_deleted_id: Option<String>,
    /// The oldest entry still in the log.
    pub first_id: Option<String>,
}

impl StreamInfo {
    fn parse(v: redis::Value) -> StreamInfo {
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
        let mut info = StreamInfo {
            last_generated_id: "0-0".into(),
            ..StreamInfo::default()
        };
        for (k, v) in pairs {
            let key: Option<String> = redis::from_redis_value(k).ok();
            match key.as_deref() {
                Some("length") => info.length = redis::from_redis_value(v).unwrap_or(0),
                Some("last-generated-id") => {
                    if let Ok(id) = redis::from_redis_value::<String>(v) {
                        info.last_generated_id = id;
                    }
                }
                Some("max-deleted-entry-id") => {
                    info.max_deleted_id = redis::from_redis_value::<String>(v)
                        .ok()
                        .filter(|i| i != "0-0");
                }
                Some("first-entry") => {
                    // [id, [field, value, …]] or nil.
                    if let redis::Value::Array(e) = v {
                        info.first_id = e
                            .into_iter()
                            .next()
                            .and_then(|id| redis::from_redis_value(id).ok());
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// A Redis error for logs and answers: its kind and message, never the URL or credentials.
pub fn describe(e: &RedisError) -> String {
    if matches!(
        e.kind(),
        redis::ErrorKind::MasterNameNotFoundBySentinel
            | redis::ErrorKind::ClusterConnectionNotFound
    ) {
        // Made by `Primary`: addresses and reasons only.
        return e.detail().unwrap_or("no Redis primary found").to_string();
    }
    if let Some(
        code @ ("READONLY" | "MOVED" | "ASK" | "MASTERDOWN" | "CLUSTERDOWN" | "LOADING"
        | "TRYAGAIN" | "NOPERM" | "NOAUTH" | "WRONGPASS"),
    ) = e.code()
    {
        return format!("Redis answered {code}");
    }
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
            tracing::debug!(error = %crate::errors::Chain(&e), "fleet log trim skipped");
        }
        if let Err(e) = self.republish_old_blocks(before + self.retention_secs) {
            tracing::warn!(error = %crate::errors::Chain(&e), "re-publishing old account blocks failed; retried at the next expiry pass");
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

    fn claim(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        self.link.claim_blocking(name, ttl)
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
    fn cluster_keys_share_the_prefix_as_a_hash_tag() {
        let cluster = RedisTopology::Cluster { nodes: vec![] };
        assert_eq!(key_prefix("cae:", &cluster), "{cae:}");
        assert_eq!(key_prefix("{gw}:", &cluster), "{gw}:");
        assert_eq!(
            key_prefix("a{}b:", &cluster),
            "{a{}b:}",
            "an empty tag is no tag"
        );
        assert_eq!(key_prefix("cae:", &RedisTopology::Standalone), "cae:");
    }

    #[test]
    fn ids_parse_and_order() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert!(parse_id("1-2") < parse_id("1-10"));
        assert_eq!(parse_id("x"), None);
        assert_eq!(parse_id("1-x"), None);
    }
}
