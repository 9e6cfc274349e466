//! Fleet mode: replicas share revocations, blocks and bindings through the Redis fleet log.
//!
//! - Commit path: [`crate::store::RedisStore`] appends to the log, then writes the local copy.
//! - Tailer (one task): replays the retained log from the cursor kept in the local redb copy,
//!   reports ready once it reached the end, then follows it with `XREAD BLOCK`, applying every
//!   entry (this replica's own too: changes are idempotent, and applying in log order keeps
//!   `delete`s consistent) to the in-memory tables, then to the local copy with the new cursor.
//!   Redis unreachable: requests keep being decided on the local tables; the tailer reconnects
//!   with backoff and resumes from the cursor. It keeps the times that give the fleet lag (the
//!   age of the oldest entry this replica may not have applied), which readiness bounds with
//!   `store.max_fleet_lag`.
//! - Poll leases (one task): a transmitter is polled by one replica at a time; the holder renews
//!   its lease every third of its lifetime, another replica takes over when it expires.
//! - Heartbeat (one task): every second this replica's cursor, lag and writability go to Redis
//!   (the admin fleet view reads them back), with `WAIT` when `store.min_replicas_acked` asks for
//!   replicas: the write-readiness check. On every new primary it reads Redis's persistence
//!   settings and warns when an acknowledged change could be lost.
//!
//! Locks: `leases` is a `Mutex<HashMap>` taken by pollers between polls and by the lease task;
//! `tail.cursor`, `tail.error` and `persistence` are `Mutex`es held for one read or write; never
//! on the request path, never across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::config::RedisBackend;
use crate::metrics::{FleetMetrics, StateLabel, TransmitterLabel};
use crate::store::redis_store::{describe, now_ms, parse_id, LogEntry};
use crate::store::{
    AsyncConn, Batch, Change, Durable, Persistence, PollGate, RedbStore, RedisLink, RedisStore,
    SignalStore, StoreError,
};

/// `XREAD BLOCK` time once caught up (also how often the age gauge is refreshed when idle).
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read per `XREAD`.
const READ_COUNT: usize = 500;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for a poll lease release (on shutdown, or when a poller stops).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a replica sends its heartbeat (and checks that changes can be acknowledged).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica whose heartbeat Redis got within this long counts as live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(5);
/// Readiness reason while the log has not been replayed since start.
pub const NOT_REPLAYED: &str = "fleet log not replayed yet";
/// Start of the readiness reason while the lag exceeds `store.max_fleet_lag`.
pub const LAGGING: &str = "fleet log lagging";

/// What [`open`] prepares for [`Fleet::start`].
pub struct FleetParts {
    link: Arc<RedisLink>,
    local: Arc<RedbStore>,
    lease_ttl: Duration,
    max_lag: Option<Duration>,
}

/// Opens the local redb copy and prepares the Redis link (it connects on first use, so a replica
/// starts from its copy while Redis is down).
pub async fn open(
    cfg: &RedisBackend,
    ignore_corrupt: bool,
    retention_secs: i64,
) -> Result<(Arc<dyn Durable>, FleetParts), StoreError> {
    let path = cfg.path.clone();
    let local = Arc::new(
        tokio::task::spawn_blocking(move || RedbStore::open(&path, ignore_corrupt))
            .await
            .map_err(|e| StoreError::Open {
                path: cfg.path.display().to_string(),
                source: e.into(),
            })??,
    );
    let replica = cfg.replica_id.clone().unwrap_or_else(default_replica_id);
    let link = Arc::new(RedisLink::new(cfg, replica)?);
    let durable: Arc<dyn Durable> =
        Arc::new(RedisStore::new(local.clone(), link.clone(), retention_secs));
    Ok((
        durable,
        FleetParts {
            link,
            local,
            lease_ttl: cfg.poll_lease,
            max_lag: cfg.max_fleet_lag,
        },
    ))
}

/// `<host>-<pid>-<random>`: unique per process, readable in lease values and entry origins.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// A poll lease as this replica sees it.
#[derive(Default)]
struct Lease {
    /// Held until then (a safety margin before the Redis expiry).
    held_until: Option<Instant>,
}

/// What the tailer knows of its progress, for the lag (epoch milliseconds; 0 = never).
#[derive(Default)]
struct TailState {
    /// When the outstanding `XREAD BLOCK` at the log's end was sent; 0 when none is.
    following_since: AtomicI64,
    /// Everything appended before this time is applied here.
    current_at: AtomicI64,
    /// Entry time of the cursor (everything up to it is applied).
    cursor_ms: AtomicI64,
    started: AtomicI64,
    cursor: Mutex<String>,
    /// Why the tailer last failed, until it reads again.
    error: Mutex<Option<String>>,
}

/// The running fleet side of one replica.
pub struct Fleet {
    link: Arc<RedisLink>,
    local: Arc<RedbStore>,
    store: Arc<SignalStore>,
    metrics: FleetMetrics,
    caught_up: AtomicBool,
    lease_ttl: Duration,
    leases: Mutex<HashMap<String, Lease>>,
    lease_wake: Notify,
    max_lag: Option<Duration>,
    tail: TailState,
    /// Redis's persistence as read from the primary `(settings, primary address)`.
    persistence: Mutex<Option<(Persistence, String)>>,
}

impl Fleet {
    /// Connects metrics, installs the poll gate and starts the tailer and the lease keeper.
    /// Both tasks are spawned on `tasks`, so that a shutdown waits for their last writes (the
    /// local copy, the lease release).
    pub fn start(
        parts: FleetParts,
        store: &Arc<SignalStore>,
        metrics: FleetMetrics,
        shutdown: &watch::Sender<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Arc<Fleet> {
        parts.link.set_metrics(metrics.clone());
        let fleet = Arc::new(Fleet {
            link: parts.link,
            local: parts.local,
            store: store.clone(),
            metrics,
            caught_up: AtomicBool::new(false),
            lease_ttl: parts.lease_ttl,
            leases: Mutex::new(HashMap::new()),
            lease_wake: Notify::new(),
            max_lag: parts.max_lag,
            tail: TailState::default(),
            persistence: Mutex::new(None),
        });
        fleet.tail.started.store(now_ms(), Ordering::Relaxed);
        store.set_poll_gate(fleet.clone());
        tracing::info!(replica = %fleet.link.replica(), stream = %fleet.link.stream_key(), mode = fleet.link.mode(), "fleet mode: following the fleet log");
        tasks.spawn(fleet.clone().tail(shutdown.subscribe()));
        tasks.spawn(fleet.clone().keep_leases(shutdown.subscribe()));
        tokio::spawn(fleet.clone().heartbeat(shutdown.subscribe()));
        fleet
    }

    pub fn replica(&self) -> &str {
        self.link.replica()
    }

    /// The Redis link (DPoP replay detection shares it).
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// True once the retained log was replayed since start.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Why this replica is not ready on the fleet side: the log not replayed since start, or
    /// (with `store.max_fleet_lag`) entries older than the bound that may not be applied here.
    pub fn not_ready(&self) -> Option<String> {
        if !self.caught_up() {
            return Some(NOT_REPLAYED.to_string());
        }
        let max = self.max_lag?;
        let lag = self.lag(now_ms());
        (lag > max).then(|| {
            let why = self
                .tail
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the tailer is not following the log".into());
            format!(
                "{LAGGING}: entries up to {:.1} s old may be missing here (store.max_fleet_lag = {}): {why}",
                lag.as_secs_f64(),
                humantime::format_duration(max)
            )
        })
    }

    /// The fleet lag at `now` (epoch ms): 0 while a read at the log's end is outstanding (and
    /// not overdue: its answer is due within `BLOCK` + `store.redis_timeout`); otherwise the time
    /// since this replica last knew it had applied everything (an upper bound on the age of
    /// any entry it may miss). Before the first read: the time since start.
    pub fn lag(&self, now: i64) -> Duration {
        let t = &self.tail;
        let following = t.following_since.load(Ordering::Acquire);
        let due = (BLOCK + self.link.timeout() + Duration::from_secs(1)).as_millis() as i64;
        if following > 0 && now < following + due {
            return Duration::ZERO;
        }
        let known = t
            .current_at
            .load(Ordering::Acquire)
            .max(t.cursor_ms.load(Ordering::Acquire));
        let since = if known > 0 {
            known
        } else {
            t.started.load(Ordering::Relaxed)
        };
        Duration::from_millis((now - since).max(0) as u64)
    }

    /// Sets the scrape-time fleet gauges.
    pub fn refresh_metrics(&self) {
        self.metrics.lag.set(self.lag(now_ms()).as_secs_f64());
    }

    fn set_tail_error(&self, e: Option<String>) {
        *self.tail.error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn set_cursor(&self, cursor: &str) {
        if let Some((ms, _)) = parse_id(cursor) {
            self.tail.cursor_ms.store(ms as i64, Ordering::Release);
        }
        cursor.clone_into(&mut self.tail.cursor.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn cursor(&self) -> String {
        self.tail
            .cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Ok` when a change would be acknowledged now; else why not.
    pub fn writable(&self) -> Result<(), String> {
        self.link.writable()
    }

    fn cursor_key(&self) -> String {
        format!("fleet_cursor:{}", self.link.stream_key())
    }

    async fn load_cursor(&self) -> String {
        let local = self.local.clone();
        let key = self.cursor_key();
        match tokio::task::spawn_blocking(move || local.meta(&key)).await {
            Ok(Ok(Some(c))) if parse_id(&c).is_some() => c,
            Ok(Ok(_)) => "0-0".into(),
            Ok(Err(e)) => {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot read the fleet-log cursor; replaying the whole retained log");
                "0-0".into()
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::Chain(&e), "cannot read the fleet-log cursor; replaying the whole retained log");
                "0-0".into()
            }
        }
    }

    /// Follows the log until shutdown; then writes what was applied in memory but not yet to
    /// the local copy (a failed write's retry), once.
    async fn tail(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = self.load_cursor().await;
        self.set_cursor(&cursor);
        let mut pending: Vec<Change> = Vec::new();
        self.follow(&mut cursor, &mut pending, &mut shutdown).await;
        if !pending.is_empty() {
            self.persist(&mut pending, &cursor).await;
        }
    }

    async fn follow(
        &self,
        cursor: &mut String,
        pending: &mut Vec<Change>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut last_ms = parse_id(cursor).map(|(ms, _)| ms as i64).filter(|m| *m > 0);
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        tracing::info!(%cursor, "replaying the fleet log");
        'connect: loop {
            if *shutdown.borrow() {
                return;
            }
            let conn = tokio::select! {
                c = self.link.connect(BLOCK) => c,
                _ = shutdown.changed() => return,
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    self.link.error("connect");
                    self.set_tail_error(Some(describe(&e)));
                    if !failing {
                        tracing::warn!(error = %describe(&e), caught_up = self.caught_up(), "fleet log unreachable; deciding on the local tables, retrying");
                        failing = true;
                    }
                    if !sleep_or_stop(jittered(backoff), shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            self.check_log(&mut conn, cursor).await;
            loop {
                if !pending.is_empty() {
                    self.persist(pending, cursor).await;
                }
                let block = self.caught_up().then_some(BLOCK);
                let sent = now_ms();
                if block.is_some() {
                    self.tail.following_since.store(sent, Ordering::Release);
                }
                let read = tokio::select! {
                    r = self.link.read(&mut conn, cursor, READ_COUNT, block) => r,
                    _ = shutdown.changed() => return,
                };
                self.tail.following_since.store(0, Ordering::Release);
                let entries = match read {
                    Ok(e) => e,
                    Err(e) => {
                        self.link.error("read");
                        self.set_tail_error(Some(describe(&e)));
                        if !failing {
                            tracing::warn!(error = %describe(&e), "fleet log read failed; deciding on the local tables, reconnecting");
                            failing = true;
                        }
                        if !sleep_or_stop(jittered(backoff), shutdown).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue 'connect;
                    }
                };
                if failing {
                    tracing::info!(%cursor, "fleet log reachable again; catching up");
                    failing = false;
                }
                self.set_tail_error(None);
                backoff = BACKOFF_START;
                let complete = entries.len() < READ_COUNT;
                if entries.is_empty() {
                    if !self.caught_up.swap(true, Ordering::AcqRel) {
                        self.metrics.caught_up.set(1);
                        tracing::info!(%cursor, "fleet log replayed");
                    }
                } else {
                    if let Some(ms) = self.apply(&entries, pending) {
                        last_ms = Some(ms);
                    }
                    if let Some(last) = entries.last() {
                        *cursor = last.id.clone();
                        self.set_cursor(cursor);
                    }
                }
                if complete {
                    // Everything appended before the read was served is applied now; an empty
                    // blocking read was served once its block time had passed.
                    let at = match block {
                        Some(b) if entries.is_empty() => {
                            (sent + b.as_millis() as i64).min(now_ms())
                        }
                        _ => sent,
                    };
                    self.tail.current_at.fetch_max(at, Ordering::AcqRel);
                }
                if !entries.is_empty() {
                    self.persist(pending, cursor).await;
                }
                if let Some(ms) = last_ms {
                    self.metrics
                        .last_applied_age
                        .set((now_ms() - ms).max(0) as f64 / 1000.0);
                }
            }
        }
    }

    /// On every (re)connection: is the log behind the cursor (a failover or restart lost
    /// entries this replica had applied, or the log was deleted)? New entries may then get ids
    /// below the cursor: follow the log from its end. Was it trimmed past the cursor (entries
    /// missed)? Say so.
    async fn check_log(&self, conn: &mut AsyncConn, cursor: &mut String) {
        if *cursor == "0-0" {
            return;
        }
        let Ok(info) = self.link.stream_info(conn).await else {
            return;
        };
        let end = info
            .as_ref()
            .map(|i| i.last_generated_id.clone())
            .unwrap_or_else(|| "0-0".into());
        if parse_id(&end) < parse_id(cursor) {
            tracing::warn!(%cursor, log_end = %end, "the fleet log ends before this replica's cursor: a Redis failover or restart lost entries this replica had applied (not acknowledged with store.min_replicas_acked, or Redis without appendfsync always), or the log was deleted; following the log from its end");
            cursor.clone_from(&end);
            self.set_cursor(cursor);
            return;
        }
        if let Some(trimmed) = info.and_then(|i| i.max_deleted_id) {
            if parse_id(&trimmed) > parse_id(cursor) {
                tracing::warn!(%cursor, trimmed_up_to = %trimmed, "the fleet log was trimmed past this replica's cursor: entries older than store.retention were missed (they had expired, except account blocks)");
            }
        }
    }

    /// What this replica tells the fleet in its heartbeat (and shows in the admin view).
    fn report(&self) -> serde_json::Value {
        let mut held: Vec<String> = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.held_until.is_some_and(|u| u > Instant::now()))
            .map(|(t, _)| t.clone())
            .collect();
        held.sort();
        let writable = self.link.writable();
        json!({
            "cursor": self.cursor(),
            "lag_seconds": self.lag(now_ms()).as_secs_f64(),
            "caught_up": self.caught_up(),
            "writable": writable.is_ok(),
            "not_writable_reason": writable.err(),
            "poll_leases": held,
            "version": env!("CARGO_PKG_VERSION"),
            "started": self.tail.started.load(Ordering::Relaxed) / 1000,
        })
    }

    /// Every `HEARTBEAT`: this replica's report to Redis, which is also the write-readiness
    /// check (with `WAIT` for `store.min_replicas_acked`); on every new primary, Redis's
    /// persistence settings first. Untracked: nothing is owed at shutdown.
    async fn heartbeat(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<AsyncConn> = None;
        let mut checked: Option<String> = None;
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if conn.is_none() {
                match self.link.connect(self.link.ack_wait()).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        self.link.error("heartbeat");
                        self.link.set_writable(Err(describe(&e)));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else {
                continue;
            };
            let primary = self.link.primary_addr().unwrap_or_default();
            if checked.as_deref() != Some(primary.as_str()) {
                if self.check_persistence(c, &primary).await {
                    checked = Some(primary);
                } else {
                    conn = None;
                    continue;
                }
            }
            match self.link.heartbeat(c, &self.report(), LIVE_WITHIN).await {
                Ok(live) => {
                    self.metrics.replicas_live.set(live as i64);
                }
                // A new connection next time (to the primary found again, if it changed).
                Err(_) => conn = None,
            }
        }
    }

    /// Reads Redis's persistence (`CONFIG GET`), exports it and warns when a crash of the
    /// primary could lose an acknowledged change. False when the connection failed (try again).
    async fn check_persistence(&self, conn: &mut AsyncConn, primary: &str) -> bool {
        let (p, why) = match self.link.persistence(conn).await {
            Ok(r) => r,
            Err(_) => {
                self.link.error("heartbeat");
                return false;
            }
        };
        for s in Persistence::ALL {
            self.metrics
                .persistence
                .get_or_create(&StateLabel { state: s.label() })
                .set(i64::from(s == p));
        }
        let acked = self.link.min_replicas_acked();
        match p {
            Persistence::AofAlways => {
                tracing::info!(%primary, persistence = p.label(), "Redis persistence keeps every acknowledged change across a crash (appendonly yes, appendfsync always)")
            }
            Persistence::Unknown => tracing::warn!(
                %primary,
                persistence = p.label(),
                reason = why.as_deref().unwrap_or(""),
                "cannot read Redis's persistence settings: whether an acknowledged change survives a Redis crash is not checked"
            ),
            _ if acked > 0 => tracing::warn!(
                %primary,
                persistence = p.label(),
                min_replicas_acked = acked,
                "Redis may lose acknowledged changes if the primary crashes and restarts without a failover (appendonly yes with appendfsync always avoids it); with a failover, store.min_replicas_acked replicas hold each acknowledged change"
            ),
            _ => tracing::warn!(
                %primary,
                persistence = p.label(),
                "Redis may lose acknowledged changes on a crash: set appendonly yes and appendfsync always, or replicate them (store.min_replicas_acked with Sentinel)"
            ),
        }
        *self.persistence.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((p, primary.to_string()));
        true
    }

    /// The admin view of the fleet: this replica, and what Redis holds of every replica (last
    /// heartbeat, cursor, lag), of the poll leases of `transmitters` and of the log. Redis
    /// unreachable: this replica's own view, with the reason.
    pub async fn view(&self, transmitters: &[String]) -> serde_json::Value {
        let me = self.report();
        let persistence = self
            .persistence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(p, _)| p.label());
        let seen = match self.link.connect(Duration::ZERO).await {
            Ok(mut c) => self.link.view(&mut c, transmitters).await,
            Err(e) => Err(e),
        };
        let mut out = json!({
            "replica": self.replica(),
            "mode": self.link.mode(),
            "primary": self.link.primary_addr(),
            "persistence": persistence,
            "min_replicas_acked": self.link.min_replicas_acked(),
            "max_fleet_lag_seconds": self.max_lag.map(|d| d.as_secs_f64()),
            "self": me,
        });
        match seen {
            Ok(v) => {
                let end = v.log.as_ref().and_then(|l| parse_id(&l.last_generated_id));
                let replicas: Vec<serde_json::Value> = v
                    .replicas
                    .iter()
                    .map(|r| {
                        let cursor = r.report["cursor"].as_str().and_then(parse_id);
                        // Time between the newest entry and the last one this replica applied.
                        let behind = match (end, cursor) {
                            (Some(e), Some(c)) if c < e => {
                                Some(e.0.saturating_sub(c.0) as f64 / 1000.0)
                            }
                            (Some(_), Some(_)) => Some(0.0),
                            _ => None,
                        };
                        let mut o = json!({
                            "replica": r.replica,
                            "live": r.seen_ms_ago <= LIVE_WITHIN.as_millis() as i64,
                            "seen_seconds_ago": r.seen_ms_ago as f64 / 1000.0,
                            "behind_seconds": behind,
                        });
                        if let (Some(o), Some(rep)) = (o.as_object_mut(), r.report.as_object()) {
                            for (k, v) in rep {
                                o.entry(k.clone()).or_insert(v.clone());
                            }
                        }
                        o
                    })
                    .collect();
                let leases: Vec<serde_json::Value> = v
                    .leases
                    .iter()
                    .map(|l| {
                        json!({
                            "transmitter": l.transmitter,
                            "holder": l.holder,
                            "expires_in_seconds": l.expires_in_ms.map(|ms| ms as f64 / 1000.0),
                        })
                    })
                    .collect();
                out["redis_reachable"] = json!(true);
                out["log"] = match &v.log {
                    Some(l) => json!({
                        "length": l.length,
                        "first_id": l.first_id,
                        "last_id": l.last_generated_id,
                    }),
                    None => serde_json::Value::Null,
                };
                out["replicas"] = json!(replicas);
                out["poll_leases"] = json!(leases);
            }
            Err(e) => {
                out["redis_reachable"] = json!(false);
                out["redis_error"] = json!(describe(&e));
            }
        }
        out
    }

    /// Applies entries to the tables at once; queues their changes for the local copy. Returns
    /// the entry time of the last one.
    fn apply(&self, entries: &[LogEntry], pending: &mut Vec<Change>) -> Option<i64> {
        let now = now_ms();
        let mut last = None;
        for e in entries {
            match &e.changes {
                Ok(changes) => {
                    self.store.apply_replicated(changes);
                    pending.extend(changes.iter().cloned());
                }
                Err(why) => {
                    self.link.error("decode");
                    tracing::error!(id = %e.id, origin = %e.origin, %why, "undecodable fleet-log entry skipped");
                }
            }
            self.metrics.applied.inc();
            if let Some((ms, _)) = parse_id(&e.id) {
                let ms = ms as i64;
                self.metrics
                    .replication_delay
                    .observe((now - ms).max(0) as f64 / 1000.0);
                last = Some(ms);
            }
        }
        last
    }

    /// Writes queued changes and the cursor to the local copy in one transaction; on failure
    /// they stay queued and are retried with the next entries.
    async fn persist(&self, pending: &mut Vec<Change>, cursor: &str) {
        let local = self.local.clone();
        let batch = Batch {
            changes: pending.clone(),
            set_id: None,
            now: crate::store::now_secs(),
        };
        let key = self.cursor_key();
        let cur = cursor.to_string();
        match tokio::task::spawn_blocking(move || {
            local.commit_with_meta(&batch, Some((&key, &cur)))
        })
        .await
        {
            Ok(Ok(_)) => pending.clear(),
            Ok(Err(e)) => {
                tracing::error!(error = %crate::errors::Chain(&e), queued = pending.len(), "fleet-log entries applied in memory but not written to the local copy; retrying")
            }
            Err(e) => {
                tracing::error!(error = %crate::errors::Chain(&e), queued = pending.len(), "local copy write task failed; retrying")
            }
        }
    }

    /// Records whether this replica holds `transmitter`'s lease; `false` when no poller wants it
    /// any more (it stopped: the entry is gone).
    fn set_held(&self, transmitter: &str, until: Option<Instant>) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = leases.get_mut(transmitter) else {
            return false;
        };
        let before = l.held_until.is_some_and(|u| u > Instant::now());
        l.held_until = until;
        drop(leases);
        let after = until.is_some();
        if before != after {
            if after {
                tracing::info!(transmitter, replica = %self.replica(), "poll lease taken: this replica polls");
            } else {
                tracing::info!(transmitter, replica = %self.replica(), "poll lease held elsewhere: this replica stands by");
            }
        }
        self.metrics
            .poll_lease_held
            .get_or_create(&TransmitterLabel {
                transmitter: transmitter.to_string(),
            })
            .set(i64::from(after));
        true
    }

    /// Takes and renews the poll leases pollers asked for, until shutdown; then releases them.
    async fn keep_leases(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = self.lease_ttl / 3;
        // Held until: sent + 90 % of the lifetime (a margin for clock rates and delays).
        let validity = self.lease_ttl.mul_f64(0.9);
        let mut conn = None;
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(every) => false,
                _ = self.lease_wake.notified() => false,
                _ = shutdown.changed() => true,
            };
            let names: Vec<String> = self
                .leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            if stop {
                if let Some(c) = conn.as_mut() {
                    for n in &names {
                        let _ =
                            tokio::time::timeout(RELEASE_TIMEOUT, self.link.release(c, n)).await;
                    }
                }
                return;
            }
            if names.is_empty() {
                continue;
            }
            if conn.is_none() {
                match self.link.connect(Duration::ZERO).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => self.link.error("lease"),
                }
            }
            let Some(c) = conn.as_mut() else {
                for n in &names {
                    self.expire_if_due(n);
                }
                continue;
            };
            let mut failed = false;
            for n in &names {
                let sent = Instant::now();
                match self.link.lease(c, n, self.lease_ttl).await {
                    Ok(held) => {
                        if !self.set_held(n, held.then(|| sent + validity)) && held {
                            // The poller stopped (and released the lease) while this renewal
                            // was in flight, which took the lease again: give it up, or it
                            // would keep every other replica waiting until it expires.
                            let _ = tokio::time::timeout(RELEASE_TIMEOUT, self.link.release(c, n))
                                .await;
                        }
                    }
                    Err(e) => {
                        self.link.error("lease");
                        tracing::debug!(transmitter = %n, error = %describe(&e), "poll lease renewal failed");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                conn = None;
                for n in &names {
                    self.expire_if_due(n);
                }
            }
        }
    }

    /// Without Redis the lease cannot be renewed: it lapses at its own time.
    fn expire_if_due(&self, transmitter: &str) {
        let due = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(transmitter)
            .and_then(|l| l.held_until)
            .is_some_and(|u| u <= Instant::now());
        if due {
            self.set_held(transmitter, None);
        }
    }
}

impl PollGate for Fleet {
    fn may_poll(&self, transmitter: &str) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match leases.get(transmitter) {
            Some(l) => l.held_until.is_some_and(|u| u > Instant::now()),
            None => {
                leases.insert(transmitter.to_string(), Lease::default());
                drop(leases);
                self.lease_wake.notify_one();
                false
            }
        }
    }

    fn stopped(
        &self,
        transmitter: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let was = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(transmitter);
        self.metrics
            .poll_lease_held
            .get_or_create(&TransmitterLabel {
                transmitter: transmitter.to_string(),
            })
            .set(0);
        if was.and_then(|l| l.held_until).is_none() {
            return Box::pin(std::future::ready(()));
        }
        let link = self.link.clone();
        let name = transmitter.to_string();
        Box::pin(async move {
            let release = async {
                let mut c = link.connect(Duration::ZERO).await?;
                link.release(&mut c, &name).await
            };
            match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
                Ok(Ok(())) => {
                    tracing::info!(transmitter = %name, "poll lease released");
                }
                Ok(Err(e)) => {
                    link.error("lease");
                    tracing::warn!(transmitter = %name, error = %describe(&e), "poll lease not released; it expires after store.poll_lease");
                }
                Err(_) => {
                    link.error("lease");
                    tracing::warn!(transmitter = %name, "poll lease release timed out; it expires after store.poll_lease");
                }
            }
        })
    }
}

/// Uniformly in [d/2, d].
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_secs_f64(rand::random::<f64>() * half.as_secs_f64())
}

/// Sleeps `d` unless shutdown fires first; false on shutdown.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.changed() => false,
    }
}
