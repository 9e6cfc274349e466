//! Revocation, account-block and IP-binding tables: lock-free in-memory reads, every change durable first.
//!
//! Locks: the tables are DashMaps (sharded); readers take a shard read lock for one lookup and
//! never hold it across `.await`. Writers go through [`SignalStore::commit`], which writes the
//! durable backend (blocking, on the blocking pool) and only then applies the change in memory.

pub mod keys;
mod memory;
mod redb_store;
pub(crate) mod redis_store;
mod tables;

use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use keys::SubjectKey;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use redis_store::{RedisLink, RedisStore};
pub use tables::{BlockState, TableStats, Tables};

/// One accepted change to the tables. Applying the same change twice is harmless (idempotent),
/// and the order of two changes with different times does not matter (event time decides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Tokens of `key` issued before `at` (epoch seconds) are refused.
    Revoke {
        key: SubjectKey,
        at: i64,
    },
    /// Every token of `key` is refused until an unblock with a later event time.
    Block {
        key: SubjectKey,
        at: i64,
    },
    Unblock {
        key: SubjectKey,
        at: i64,
    },
    /// Tokens of `key` may only be used from `nets`.
    Bind {
        key: SubjectKey,
        nets: Vec<IpNet>,
        at: i64,
    },
    Unbind {
        key: SubjectKey,
        at: i64,
    },
    /// Operator removal of an entry from one table.
    Delete {
        table: TableName,
        key: SubjectKey,
    },
}

/// The three tables, as named in the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableName {
    Revocations,
    Blocks,
    Bindings,
}

/// Changes committed together, optionally tied to a SET so a redelivery is applied once.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// `(iss, jti)` of the SET these changes come from.
    pub set_id: Option<(String, String)>,
    /// Arrival time (epoch seconds), kept with the dedupe mark for expiry.
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The SET was already committed earlier: nothing written, nothing applied.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store {path} is corrupt or unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store read failed: {0}")]
    Read(String),
    /// Fleet mode: the change could not be appended to the shared log (Redis unreachable, slow
    /// or refusing); nothing was written anywhere, the sender should retry.
    #[error("fleet log unavailable: {0}")]
    FleetLog(String),
}

/// Decides whether this replica may poll a transmitter now (fleet mode: a lease in Redis, so one
/// replica polls a given transmitter at a time). Without a gate every poller polls.
pub trait PollGate: Send + Sync + 'static {
    /// True while this replica holds the transmitter's lease; the first call registers interest.
    fn may_poll(&self, transmitter: &str) -> bool;
    /// The poller stopped: give the lease up so another replica takes over at once.
    fn stopped(&self, transmitter: &str);
}

/// A durable backend. Calls block (disk or network): run them on the blocking pool.
pub trait Durable: Send + Sync + 'static {
    /// Atomically writes the batch (and the SET's dedupe mark); returns `Duplicate` without
    /// writing anything if the SET was seen before. Returns only once the data is durable.
    fn commit(&self, batch: &Batch) -> Result<CommitOutcome, StoreError>;
    /// The whole state, as changes that rebuild the tables.
    fn load(&self) -> Result<Vec<Change>, StoreError>;
    /// Drops expired entries and dedupe marks older than `before`; returns how many.
    fn purge(&self, before: i64) -> Result<usize, StoreError>;
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Tables plus their durable backend: the only way to change what is enforced.
pub struct SignalStore {
    tables: Tables,
    durable: Arc<dyn Durable>,
    retention_secs: i64,
    poll_gate: OnceLock<Arc<dyn PollGate>>,
    /// Observes each durable write (the store-write latency metric), once installed.
    write_timer: OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

impl SignalStore {
    /// Opens the store and rebuilds the tables from it.
    pub fn open(
        durable: Arc<dyn Durable>,
        retention_secs: i64,
        now: i64,
    ) -> Result<SignalStore, StoreError> {
        let tables = Tables::default();
        for change in durable.load()? {
            tables.apply(&change);
        }
        tables.expire(now - retention_secs);
        Ok(SignalStore {
            tables,
            durable,
            retention_secs,
            poll_gate: OnceLock::new(),
            write_timer: OnceLock::new(),
        })
    }

    /// Makes the batch durable, then enforceable. Returns `Duplicate` for a SET seen before.
    ///
    /// Changes that can only narrow access (revocations and blocks: their merges never undo a
    /// later event) are enforced at once, before the durable write: a revoked token stops
    /// without waiting for the fsync. The caller still acknowledges only after this returns
    /// `Ok`; when the write fails, the narrowing stays in force (fail closed) until a restart,
    /// and the unacknowledged SET is delivered again. Everything that can widen access
    /// (unblock, unbind, bind, delete) is applied only once durable.
    pub async fn commit(self: &Arc<Self>, batch: Batch) -> Result<CommitOutcome, StoreError> {
        let narrows = |c: &Change| matches!(c, Change::Revoke { .. } | Change::Block { .. });
        for change in batch.changes.iter().filter(|c| narrows(c)) {
            self.tables.apply(change);
        }
        let this = self.clone();
        let (outcome, batch) = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let r = this.durable.commit(&batch);
            if let Some(h) = this.write_timer.get() {
                h.observe(t0.elapsed().as_secs_f64());
            }
            (r, batch)
        })
        .await
        .map_err(|e| StoreError::Write(format!("store task failed: {e}")))?;
        let outcome = outcome?;
        if outcome == CommitOutcome::Committed {
            for change in batch.changes.iter().filter(|c| !narrows(c)) {
                self.tables.apply(change);
            }
        }
        Ok(outcome)
    }

    /// Applies changes that another replica already made durable (fleet mode).
    pub fn apply_replicated(&self, changes: &[Change]) {
        for c in changes {
            self.tables.apply(c);
        }
    }

    /// Installs the histogram that times every durable write; only the first call has an effect.
    pub fn set_write_timer(&self, h: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.write_timer.set(h);
    }

    /// Installs the poll gate (fleet mode); only the first call has an effect.
    pub fn set_poll_gate(&self, gate: Arc<dyn PollGate>) {
        let _ = self.poll_gate.set(gate);
    }

    /// The poll gate, when pollers must coordinate with other replicas.
    pub fn poll_gate(&self) -> Option<&Arc<dyn PollGate>> {
        self.poll_gate.get()
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    pub fn retention_secs(&self) -> i64 {
        self.retention_secs
    }

    pub fn backend_name(&self) -> &'static str {
        self.durable.name()
    }

    /// Drops entries older than the retention, in memory and on disk.
    pub async fn expire(self: &Arc<Self>, now: i64) -> Result<usize, StoreError> {
        let before = now - self.retention_secs;
        let removed = self.tables.expire(before);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.durable.purge(before))
            .await
            .map_err(|e| StoreError::Write(format!("store task failed: {e}")))??;
        Ok(removed)
    }
}

/// Epoch seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
