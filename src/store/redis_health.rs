//! Fleet health in Redis: each replica's heartbeat (its cursor, lag and writability, kept in a
//! hash and a sorted set by last-seen time, Redis's clock), the admin view of the fleet read back
//! from them, and Redis's persistence settings.
//!
//! Keys (one hash slot in Redis Cluster, like every key of the fleet): `<prefix>replicas` (hash:
//! replica → its last report, JSON), `<prefix>replicas:seen` (sorted set: replica → last seen,
//! ms). Both expire a day after the last heartbeat of any replica.

use std::collections::HashMap;
use std::time::Duration;

use redis::RedisError;

use super::redis_primary::wrong_node;
use super::redis_store::{describe, AsyncConn, RedisLink, StreamInfo};

/// Records a heartbeat and drops replicas not seen for `ARGV[3]` ms; returns how many were seen
/// within `ARGV[4]` ms. KEYS: the reports hash, the last-seen sorted set. ARGV: replica, report
/// JSON, forget-after ms, live-within ms, key lifetime s. Redis's clock, so replicas' clocks
/// need not agree.
pub const HEARTBEAT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 100)
for _, r in ipairs(gone) do
  redis.call('ZREM', KEYS[2], r)
  redis.call('HDEL', KEYS[1], r)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[4]), '+inf')
";

/// A replica that sent no heartbeat for this long is dropped from the fleet view.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// The heartbeat keys live this long after the last heartbeat (a fleet that is gone).
const KEYS_TTL_SECS: u64 = 86_400;

/// Redis's persistence, as far as it decides whether an acknowledged change survives a crash of
/// the primary (`CONFIG GET appendonly appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`: every acknowledged write is on disk.
    AofAlways,
    /// `appendfsync everysec`: about the last second of writes can be lost.
    AofEverysec,
    /// `appendfsync no`: the kernel decides when (tens of seconds).
    AofNo,
    /// `appendonly no`: everything since the last snapshot (if any) can be lost.
    NoAof,
    /// `CONFIG` refused (disabled, renamed, or not allowed to this user).
    Unknown,
}

impl Persistence {
    pub const ALL: [Persistence; 5] = [
        Persistence::AofAlways,
        Persistence::AofEverysec,
        Persistence::AofNo,
        Persistence::NoAof,
        Persistence::Unknown,
    ];

    /// The `state` label of `cae_fleet_redis_persistence`.
    pub fn label(self) -> &'static str {
        match self {
            Persistence::AofAlways => "aof_always",
            Persistence::AofEverysec => "aof_everysec",
            Persistence::AofNo => "aof_no",
            Persistence::NoAof => "no_aof",
            Persistence::Unknown => "unknown",
        }
    }

    /// From the two settings' values.
    pub fn from_settings(appendonly: &str, appendfsync: &str) -> Persistence {
        match (
            appendonly.to_ascii_lowercase().as_str(),
            appendfsync.to_ascii_lowercase().as_str(),
        ) {
            ("yes", "always") => Persistence::AofAlways,
            ("yes", "everysec") => Persistence::AofEverysec,
            ("yes", _) => Persistence::AofNo,
            _ => Persistence::NoAof,
        }
    }
}

/// One replica as its last heartbeat reported it.
#[derive(Debug, Clone)]
pub struct ReplicaSeen {
    pub replica: String,
    /// The report it sent (JSON object; `null` if it could not be read).
    pub report: serde_json::Value,
    /// Milliseconds since that heartbeat, by Redis's clock.
    pub seen_ms_ago: i64,
}

/// A poll lease as Redis holds it.
#[derive(Debug, Clone)]
pub struct LeaseSeen {
    pub transmitter: String,
    /// The replica holding it, if any.
    pub holder: Option<String>,
    /// Milliseconds until it expires unless renewed.
    pub expires_in_ms: Option<i64>,
}

/// What Redis knows of the fleet.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub replicas: Vec<ReplicaSeen>,
    pub leases: Vec<LeaseSeen>,
    /// `None`: no log yet.
    pub log: Option<StreamInfo>,
}

impl RedisLink {
    /// The hash of replica reports.
    pub fn replicas_key(&self) -> String {
        format!("{}replicas", self.prefix())
    }

    /// The sorted set of replicas by last heartbeat.
    pub fn seen_key(&self) -> String {
        format!("{}replicas:seen", self.prefix())
    }

    /// Sends this replica's heartbeat (`report`), then, with `min_replicas_acked`, waits for
    /// that many Redis replicas to hold it: the write-readiness check. Returns how many replicas
    /// were seen within `live_within`; records whether a change could be acknowledged now.
    pub async fn heartbeat(
        &self,
        conn: &mut AsyncConn,
        report: &serde_json::Value,
        live_within: Duration,
    ) -> Result<u64, String> {
        let sent = self
            .heartbeat
            .key(self.replicas_key())
            .key(self.seen_key())
            .arg(self.replica())
            .arg(report.to_string())
            .arg(FORGET_AFTER.as_millis() as u64)
            .arg(live_within.as_millis() as u64)
            .arg(KEYS_TTL_SECS)
            .invoke_async::<u64>(&mut conn.conn)
            .await;
        let live = match self.check(conn, sent) {
            Ok(n) => n,
            Err(e) => {
                self.error("heartbeat");
                let why = describe(&e);
                self.set_writable(Err(why.clone()));
                return Err(why);
            }
        };
        if self.min_replicas_acked > 0 {
            let waited = redis::cmd("WAIT")
                .arg(self.min_replicas_acked)
                .arg(self.ack_timeout.as_millis().max(1) as u64)
                .query_async::<i64>(&mut conn.conn)
                .await;
            let acked = match self.check(conn, waited) {
                Ok(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
                Err(e) => {
                    self.error("heartbeat");
                    let why = describe(&e);
                    self.set_writable(Err(why.clone()));
                    return Err(why);
                }
            };
            if acked < self.min_replicas_acked {
                let why = self.not_replicated(acked);
                self.set_writable(Err(why.clone()));
                return Err(why);
            }
        }
        self.set_writable(Ok(()));
        Ok(live)
    }

    /// Redis's persistence settings (`CONFIG GET`); `Unknown` with the reason when `CONFIG` is
    /// refused (disabled with `rename-command`, or not allowed by an ACL). `Err`: the connection
    /// failed (ask again later).
    pub async fn persistence(
        &self,
        conn: &mut AsyncConn,
    ) -> Result<(Persistence, Option<String>), RedisError> {
        let appendonly = config_get(&mut conn.conn, "appendonly").await;
        let appendfsync = config_get(&mut conn.conn, "appendfsync").await;
        match (appendonly, appendfsync) {
            (Ok(Some(a)), Ok(Some(f))) => Ok((Persistence::from_settings(&a, &f), None)),
            (Ok(_), Ok(_)) => Ok((
                Persistence::Unknown,
                Some("CONFIG GET did not return appendonly and appendfsync".into()),
            )),
            (Err(e), _) | (_, Err(e)) if wrong_node(&e) => self.check(conn, Err(e)),
            (Err(e), _) | (_, Err(e)) => Ok((Persistence::Unknown, Some(describe_config(&e)))),
        }
    }

    /// The fleet as Redis holds it: replicas' last heartbeats, the poll leases of
    /// `transmitters`, the log's length and ends.
    pub async fn view(
        &self,
        conn: &mut AsyncConn,
        transmitters: &[String],
    ) -> Result<FleetView, RedisError> {
        let r = self.view_inner(conn, transmitters).await;
        self.check(conn, r)
    }

    async fn view_inner(
        &self,
        conn: &mut AsyncConn,
        transmitters: &[String],
    ) -> Result<FleetView, RedisError> {
        let c = &mut conn.conn;
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(c).await?;
        let now_ms = secs * 1000 + micros / 1000;
        let reports: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.replicas_key())
            .query_async(c)
            .await?;
        let seen: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.seen_key())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(c)
            .await?;
        let mut replicas: Vec<ReplicaSeen> = seen
            .into_iter()
            .map(|(replica, at)| ReplicaSeen {
                report: reports
                    .get(&replica)
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or(serde_json::Value::Null),
                seen_ms_ago: (now_ms - at as i64).max(0),
                replica,
            })
            .collect();
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        let mut leases = Vec::new();
        for t in transmitters {
            let key = self.lease_key(t);
            let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(c).await?;
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(c).await?;
            leases.push(LeaseSeen {
                transmitter: t.clone(),
                expires_in_ms: (holder.is_some() && ttl >= 0).then_some(ttl),
                holder,
            });
        }
        let log = self.stream_info(conn).await?;
        Ok(FleetView {
            replicas,
            leases,
            log,
        })
    }
}

/// One setting by `CONFIG GET` (one name per call: Redis < 7 takes one).
async fn config_get(
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> Result<Option<String>, RedisError> {
    let v: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(v.get(name).cloned())
}

/// Why `CONFIG GET` was refused, for the log.
fn describe_config(e: &RedisError) -> String {
    // "unknown command" (renamed or disabled), NOPERM (ACL), …
    format!(
        "CONFIG GET refused ({}): CONFIG is disabled, renamed or not allowed to this user",
        e.code().unwrap_or("error")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_from_settings() {
        assert_eq!(
            Persistence::from_settings("yes", "always"),
            Persistence::AofAlways
        );
        assert_eq!(
            Persistence::from_settings("YES", "everysec"),
            Persistence::AofEverysec
        );
        assert_eq!(Persistence::from_settings("yes", "no"), Persistence::AofNo);
        assert_eq!(
            Persistence::from_settings("no", "always"),
            Persistence::NoAof
        );
        let labels: Vec<&str> = Persistence::ALL.iter().map(|p| p.label()).collect();
        assert_eq!(
            labels,
            ["aof_always", "aof_everysec", "aof_no", "no_aof", "unknown"]
        );
    }
}
