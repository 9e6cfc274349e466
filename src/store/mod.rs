//! Revocation, account-block and IP-binding tables: lock-free in-memory reads, every change durable first.
//!
//! Locks: the tables are DashMaps (sharded); readers take a shard read lock for one lookup and
//! never hold it across `.await`. Writers go through [`SignalStore::commit`], which writes the
//! durable backend (blocking, on the blocking pool) and only then applies the change in memory.

pub mod keys;
mod memory;
mod redb_store;
pub(crate) mod redis_health;
mod redis_primary;
pub(crate) mod redis_store;
mod tables;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::errors::BoxError;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use keys::SubjectKey;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use redis_health::{FleetView, Persistence};
pub use redis_store::{AsyncConn, RedisLink, RedisStore, StreamInfo};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    #[error("cannot open store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("store {path} is corrupt or unreadable: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: BoxError,
    },
    #[error("store write failed: {0}")]
    Write(#[source] BoxError),
    #[error("store read failed: {0}")]
    Read(#[source] BoxError),
    /// The blocking task that talks to the store did not finish (panicked or cancelled).
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
    /// The poller stopped: give the lease up so another replica takes over at once. The poller
    /// awaits it (bounded), so a shutdown waits for the release.
    fn stopped(
        &self,
        transmitter: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;
}

/// A durable backend. Calls block (disk or network): run them on the blocking pool.
pub trait Durable: Send + Sync + 'static {
    /// Atomically writes the batch (and the SET's dedupe mark); returns `Duplicate` without
    /// writing anything if the SET was seen before. Returns only once the data is durable.
    fn commit(&self, batch: &Batch) -> Result<CommitOutcome, StoreError>;
    /// The whole state, as changes that rebuild the tables.
    fn load(&self) -> Result<Vec<Change>, StoreError>;
    /// Drops expired entries, dedupe marks older than `before` and verification states that
    /// expired before `before`; returns how many entries.
    fn purge(&self, before: i64) -> Result<usize, StoreError>;
    /// Whether the SET `(iss, jti)` was committed before (its dedupe mark is still kept).
    fn seen(&self, iss: &str, jti: &str) -> Result<bool, StoreError>;
    /// Records a verification `state` this receiver sent to `transmitter`, acceptable until
    /// `expires` (epoch seconds). Returns once durable: the answer may arrive after a restart.
    fn put_state(&self, transmitter: &str, state: &str, expires: i64) -> Result<(), StoreError>;
    /// The expiry of a verification `state` sent to `transmitter`, if it was sent.
    fn state_expiry(&self, transmitter: &str, state: &str) -> Result<Option<i64>, StoreError>;
    /// Fleet mode: claims `name` for this replica for `ttl`, or finds it already claimed by
    /// this replica; `false` while another replica holds it. A backend of one process always
    /// holds it.
    fn claim(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
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
    /// Narrowing entries enforced here although their durable write failed (fail closed):
    /// (table, encoded key) → the event time not yet durable. Cleared when a durable change of
    /// the key at that time or later is applied (the sender's retry, a replicated entry), when
    /// the entry is deleted or expires; gone at restart (so is the entry).
    local_only: Mutex<HashMap<(TableName, Box<str>), i64>>,
}

/// The table and event time of a change that narrows access (applied before it is durable).
fn narrowing(c: &Change) -> Option<(TableName, &SubjectKey, i64)> {
    match c {
        Change::Revoke { key, at } => Some((TableName::Revocations, key, *at)),
        Change::Block { key, at } => Some((TableName::Blocks, key, *at)),
        _ => None,
    }
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
            local_only: Mutex::new(HashMap::new()),
        })
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<(TableName, Box<str>), i64>> {
        self.local_only.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets local-only marks that durable `changes` cover.
    fn durable(&self, changes: &[Change]) {
        let mut marks = self.marks();
        if marks.is_empty() {
            return;
        }
        for c in changes {
            match c {
                Change::Delete { table, key } => {
                    marks.remove(&(*table, key.encode()));
                }
                Change::Unblock { key, at } => {
                    // A later unblock replaces the block record itself.
                    let k = (TableName::Blocks, key.encode());
                    if marks.get(&k).is_some_and(|m| *at > *m) {
                        marks.remove(&k);
                    }
                }
                c => {
                    if let Some((table, key, at)) = narrowing(c) {
                        let k = (table, key.encode());
                        if marks.get(&k).is_some_and(|m| at >= *m) {
                            marks.remove(&k);
                        }
                    }
                }
            }
        }
    }

    /// Whether an entry is enforced here only (its durable write failed).
    pub fn is_local_only(&self, table: TableName, key: &str) -> bool {
        self.marks().contains_key(&(table, Box::from(key)))
    }

    /// How many entries are enforced here only.
    pub fn local_only_count(&self) -> usize {
        self.marks().len()
    }

    /// Entries of one table, as [`Tables::list`] gives them, local-only ones marked.
    pub fn list(
        &self,
        table: TableName,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<serde_json::Value>) {
        let marks = self.marks().clone();
        self.tables.list(table, search, offset, limit, &|k: &str| {
            marks.contains_key(&(table, Box::from(k)))
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
        // Entries this batch narrowed before it is durable: local-only if the write fails.
        let mut raised = Vec::new();
        for change in batch.changes.iter().filter(|c| narrows(c)) {
            if self.tables.apply(change) {
                raised.extend(narrowing(change).map(|(t, k, at)| (t, k.encode(), at)));
            }
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
        .map_err(StoreError::Task)?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Enforced already (fail closed) but not durable: listed as local-only until a
                // durable write covers it.
                let mut marks = self.marks();
                for (table, key, at) in raised {
                    let m = marks.entry((table, key)).or_insert(at);
                    *m = (*m).max(at);
                }
                drop(marks);
                tracing::warn!(changes = batch.changes.len(), error = %crate::errors::Chain(&e), "change not stored; revocations and blocks in it stay enforced on this replica only until the sender retries");
                return Err(e);
            }
        };
        if outcome == CommitOutcome::Committed {
            for change in batch.changes.iter().filter(|c| !narrows(c)) {
                self.tables.apply(change);
            }
        }
        // Committed now, or by the first delivery of this SET: durable either way.
        self.durable(&batch.changes);
        Ok(outcome)
    }

    /// Applies changes that another replica already made durable (fleet mode).
    pub fn apply_replicated(&self, changes: &[Change]) {
        for c in changes {
            self.tables.apply(c);
        }
        self.durable(changes);
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

    /// Runs a blocking call of the durable backend on the blocking pool.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Durable) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this.durable.as_ref()))
            .await
            .map_err(StoreError::Task)?
    }

    /// Whether the SET `(iss, jti)` was committed before: a redelivery, to be answered like the
    /// first delivery (RFC 8935 §2, RFC 8936 §2.4) before anything else is checked.
    pub async fn seen(self: &Arc<Self>, iss: &str, jti: &str) -> Result<bool, StoreError> {
        let (iss, jti) = (iss.to_string(), jti.to_string());
        self.blocking(move |d| d.seen(&iss, &jti)).await
    }

    /// Records a verification `state` sent to `transmitter` (SSF §8.1.4.2), durably and, in
    /// fleet mode, for every replica: the verification SET may arrive after a restart or a
    /// reload, or at another replica.
    pub async fn register_state(
        self: &Arc<Self>,
        transmitter: &str,
        state: &str,
        expires: i64,
    ) -> Result<(), StoreError> {
        let (t, st) = (transmitter.to_string(), state.to_string());
        self.blocking(move |d| d.put_state(&t, &st, expires)).await
    }

    /// Whether `state` was sent to `transmitter` and has not expired.
    pub async fn state_outstanding(
        self: &Arc<Self>,
        transmitter: &str,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (t, st) = (transmitter.to_string(), state.to_string());
        let exp = self.blocking(move |d| d.state_expiry(&t, &st)).await?;
        Ok(exp.is_some_and(|e| e > now))
    }

    /// Records that a verification event answered `state` (sent to `transmitter`), durably and,
    /// in fleet mode, for every replica: the replica that asked can tell it arrived although
    /// another replica accepted it.
    pub async fn mark_state_answered(
        self: &Arc<Self>,
        transmitter: &str,
        state: &str,
        expires: i64,
    ) -> Result<(), StoreError> {
        self.register_state(&answered_scope(transmitter), state, expires)
            .await
    }

    /// Whether a verification event answered `state` (see [`SignalStore::mark_state_answered`]).
    pub async fn state_answered(
        self: &Arc<Self>,
        transmitter: &str,
        state: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.state_outstanding(&answered_scope(transmitter), state, now)
            .await
    }

    /// Claims `name` fleet-wide for `ttl` (see [`Durable::claim`]): one replica does a thing
    /// the others must not do at the same time, such as creating a transmitter's stream.
    pub async fn claim(
        self: &Arc<Self>,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.blocking(move |d| d.claim(&name, ttl)).await
    }

    /// Drops entries older than the retention, in memory and on disk.
    pub async fn expire(self: &Arc<Self>, now: i64) -> Result<usize, StoreError> {
        let before = now - self.retention_secs;
        let removed = self.tables.expire(before);
        self.marks()
            .retain(|(table, key), _| self.tables.contains(*table, key));
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.durable.purge(before))
            .await
            .map_err(StoreError::Task)??;
        Ok(removed)
    }
}

/// The states-table scope of the answered verification states of `transmitter`.
fn answered_scope(transmitter: &str) -> String {
    format!("{transmitter}#answered")
}

/// Epoch seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
