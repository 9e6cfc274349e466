//! Fleet mode: replicas share revocations, blocks and bindings through the Redis fleet log.
//!
//! - Commit path: [`crate::store::RedisStore`] appends to the log, then writes the local copy.
//! - Tailer (one task): replays the retained log from the cursor kept in the local redb copy,
//!   reports ready once it reached the end, then follows it with `XREAD BLOCK`, applying every
//!   entry (this replica's own too: changes are idempotent, and applying in log order keeps
//!   `delete`s consistent) to the in-memory tables, then to the local copy with the new cursor.
//!   Redis unreachable: requests keep being decided on the local tables; the tailer reconnects
//!   with backoff and resumes from the cursor.
//! - Poll leases (one task): a transmitter is polled by one replica at a time; the holder renews
//!   its lease every third of its lifetime, another replica takes over when it expires.
//!
//! Locks: `leases` is a `Mutex<HashMap>` taken by pollers between polls and by the lease task;
//! never on the request path, never across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::RedisBackend;
use crate::metrics::{FleetMetrics, TransmitterLabel};
use crate::store::redis_store::{describe, now_ms, parse_id, LogEntry};
use crate::store::{
    Batch, Change, Durable, PollGate, RedbStore, RedisLink, RedisStore, SignalStore, StoreError,
};

/// `XREAD BLOCK` time once caught up (also how often the age gauge is refreshed when idle).
const BLOCK: Duration = Duration::from_secs(1);
/// Entries read per `XREAD`.
const READ_COUNT: usize = 500;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest wait for a poll lease release (on shutdown, or when a poller stops).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
/// Readiness reason while the log has not been replayed since start.
pub const NOT_REPLAYED: &str = "fleet log not replayed yet";

/// What [`open`] prepares for [`Fleet::start`].
pub struct FleetParts {
    link: Arc<RedisLink>,
    local: Arc<RedbStore>,
    lease_ttl: Duration,
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
                reason: e.to_string(),
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
        });
        store.set_poll_gate(fleet.clone());
        tracing::info!(replica = %fleet.link.replica(), stream = %fleet.link.stream_key(), "fleet mode: following the fleet log");
        tasks.spawn(fleet.clone().tail(shutdown.subscribe()));
        tasks.spawn(fleet.clone().keep_leases(shutdown.subscribe()));
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

    /// Why this replica is not ready on the fleet side.
    pub fn not_ready(&self) -> Option<String> {
        (!self.caught_up()).then(|| NOT_REPLAYED.to_string())
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
                tracing::error!(error = %e, "cannot read the fleet-log cursor; replaying the whole retained log");
                "0-0".into()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the fleet-log cursor; replaying the whole retained log");
                "0-0".into()
            }
        }
    }

    /// Follows the log until shutdown; then writes what was applied in memory but not yet to
    /// the local copy (a failed write's retry), once.
    async fn tail(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut cursor = self.load_cursor().await;
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
            if *cursor != "0-0" {
                if let Ok(Some(max_deleted)) = self.link.max_deleted_id(&mut conn).await {
                    if parse_id(&max_deleted) > parse_id(cursor) {
                        tracing::warn!(%cursor, trimmed_up_to = %max_deleted, "the fleet log was trimmed past this replica's cursor: entries older than store.retention were missed (they had expired, except account blocks)");
                    }
                }
            }
            loop {
                if !pending.is_empty() {
                    self.persist(pending, cursor).await;
                }
                let block = self.caught_up().then_some(BLOCK);
                let read = tokio::select! {
                    r = self.link.read(&mut conn, cursor, READ_COUNT, block) => r,
                    _ = shutdown.changed() => return,
                };
                let entries = match read {
                    Ok(e) => e,
                    Err(e) => {
                        self.link.error("read");
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
                backoff = BACKOFF_START;
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
                    }
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
                tracing::error!(error = %e, queued = pending.len(), "fleet-log entries applied in memory but not written to the local copy; retrying")
            }
            Err(e) => {
                tracing::error!(error = %e, queued = pending.len(), "local copy write task failed; retrying")
            }
        }
    }

    fn set_held(&self, transmitter: &str, until: Option<Instant>) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(l) = leases.get_mut(transmitter) else {
            return;
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
                    Ok(held) => self.set_held(n, held.then(|| sent + validity)),
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
