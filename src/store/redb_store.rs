//! Embedded crash-safe backend (redb: copy-on-write B-trees, fsync on every commit).

use std::path::{Path, PathBuf};

use crate::errors::BoxError;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::tables::{merge_binding, merge_block, merge_revoke, Binding, BlockState};
use super::{Batch, Change, CommitOutcome, Durable, StoreError, SubjectKey, TableName};

const REVOCATIONS: TableDefinition<&str, i64> = TableDefinition::new("revocations");
/// key → (blocked, event time)
const BLOCKS: TableDefinition<&str, (bool, i64)> = TableDefinition::new("blocks");
/// key → JSON list of CIDRs and event time
const BINDINGS: TableDefinition<&str, (&str, i64)> = TableDefinition::new("bindings");
/// `iss` + US + `jti` → arrival time, for redelivery deduplication
const SETS_SEEN: TableDefinition<&str, i64> = TableDefinition::new("sets_seen");
/// `transmitter` + US + verification `state` → expiry (epoch seconds), SSF §8.1.4.2
const STATES: TableDefinition<&str, i64> = TableDefinition::new("verification_states");
/// Small named values (fleet mode: the id of the last fleet-log entry applied here).
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The redb-backed store. Every `commit` is one ACID transaction with immediate durability.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

/// redb's page cache. The tables live in memory already; the file is read whole once at
/// start-up and then mostly written, so a small cache keeps that scan from staying resident
/// (redb's default of 1 GiB held the whole file: ≈ 170 bytes per revocation on top of the tables).
const CACHE_BYTES: usize = 32 << 20;

fn create(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

impl RedbStore {
    /// Opens or creates the file. A corrupt file is an error unless `ignore_corrupt`, in which case
    /// it is moved aside (`<file>.corrupt-<time>`) and a new one is started.
    pub fn open(path: &Path, ignore_corrupt: bool) -> Result<RedbStore, StoreError> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: p.clone(),
                source: e.into(),
            })?;
        }
        let opened = create(path).map_err(BoxError::from).and_then(|db| {
            let store = RedbStore {
                db,
                path: path.to_path_buf(),
            };
            store.init().map(|_| store)
        });
        match opened {
            Ok(s) => Ok(s),
            Err(reason) if ignore_corrupt => {
                let aside = path.with_extension(format!("corrupt-{}", super::now_secs()));
                tracing::error!(store = %p, reason = %crate::errors::Chain(reason.as_ref()), moved_to = %aside.display(), "store is unreadable; starting empty because store.ignore_corrupt = true");
                std::fs::rename(path, &aside).map_err(|e| StoreError::Open {
                    path: p.clone(),
                    source: e.into(),
                })?;
                let db = create(path).map_err(|e| StoreError::Open {
                    path: p.clone(),
                    source: e.into(),
                })?;
                let store = RedbStore {
                    db,
                    path: path.to_path_buf(),
                };
                store
                    .init()
                    .map_err(|source| StoreError::Open { path: p, source })?;
                Ok(store)
            }
            Err(source) => Err(StoreError::Corrupt { path: p, source }),
        }
    }

    /// Creates the tables and reads each once, so a damaged file fails at startup, not later.
    fn init(&self) -> Result<(), BoxError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(REVOCATIONS)?;
            txn.open_table(BLOCKS)?;
            txn.open_table(BINDINGS)?;
            txn.open_table(SETS_SEEN)?;
            txn.open_table(META)?;
            txn.open_table(STATES)?;
        }
        txn.commit()?;
        self.load()?;
        Ok(())
    }

    fn set_key(iss: &str, jti: &str) -> String {
        format!("{}\u{1f}{jti}", super::keys::normalize_iss(iss))
    }
}

fn w<E: Into<BoxError>>(e: E) -> StoreError {
    StoreError::Write(e.into())
}

fn r<E: Into<BoxError>>(e: E) -> StoreError {
    StoreError::Read(e.into())
}

impl RedbStore {
    /// A value of the `meta` table (fleet mode keeps its log cursor there).
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(META).map_err(r)?;
        let v = t.get(key).map_err(r)?.map(|v| v.value().to_string());
        Ok(v)
    }

    /// [`Durable::commit`] that also sets `meta[key] = value` in the same transaction, so the
    /// applied changes and the fleet-log cursor never disagree after a crash.
    pub(crate) fn commit_with_meta(
        &self,
        batch: &Batch,
        meta: Option<(&str, &str)>,
    ) -> Result<CommitOutcome, StoreError> {
        let txn = self.db.begin_write().map_err(w)?;
        if let Some((k, v)) = meta {
            txn.open_table(META).map_err(w)?.insert(k, v).map_err(w)?;
        }
        self.write_batch(txn, batch)
    }

    /// Writes the batch (dedupe mark, merged table rows) in `txn` and commits it.
    fn write_batch(
        &self,
        txn: redb::WriteTransaction,
        batch: &Batch,
    ) -> Result<CommitOutcome, StoreError> {
        {
            if let Some((iss, jti)) = &batch.set_id {
                let mut seen = txn.open_table(SETS_SEEN).map_err(w)?;
                let k = Self::set_key(iss, jti);
                if seen.get(k.as_str()).map_err(w)?.is_some() {
                    return Ok(CommitOutcome::Duplicate);
                }
                seen.insert(k.as_str(), batch.now).map_err(w)?;
            }
            let mut rev = txn.open_table(REVOCATIONS).map_err(w)?;
            let mut blocks = txn.open_table(BLOCKS).map_err(w)?;
            let mut binds = txn.open_table(BINDINGS).map_err(w)?;
            for change in &batch.changes {
                match change {
                    Change::Revoke { key, at } => {
                        let k = key.encode();
                        let old = rev.get(&*k).map_err(w)?.map(|v| v.value());
                        rev.insert(&*k, merge_revoke(old, *at)).map_err(w)?;
                    }
                    Change::Block { key, at } | Change::Unblock { key, at } => {
                        let k = key.encode();
                        let new = BlockState {
                            blocked: matches!(change, Change::Block { .. }),
                            at: *at,
                        };
                        let old = blocks.get(&*k).map_err(w)?.map(|v| {
                            let (blocked, at) = v.value();
                            BlockState { blocked, at }
                        });
                        let m = merge_block(old, new);
                        blocks.insert(&*k, (m.blocked, m.at)).map_err(w)?;
                    }
                    Change::Bind { key, nets, at } => write_binding(
                        &mut binds,
                        key,
                        Binding {
                            nets: nets.clone(),
                            at: *at,
                        },
                    )?,
                    Change::Unbind { key, at } => write_binding(
                        &mut binds,
                        key,
                        Binding {
                            nets: Vec::new(),
                            at: *at,
                        },
                    )?,
                    Change::Delete { table, key } => {
                        let k = key.encode();
                        match table {
                            TableName::Revocations => rev.remove(&*k).map_err(w)?.is_some(),
                            TableName::Blocks => blocks.remove(&*k).map_err(w)?.is_some(),
                            TableName::Bindings => binds.remove(&*k).map_err(w)?.is_some(),
                        };
                    }
                }
            }
        }
        txn.commit().map_err(w)?;
        Ok(CommitOutcome::Committed)
    }
}

impl Durable for RedbStore {
    fn commit(&self, batch: &Batch) -> Result<CommitOutcome, StoreError> {
        let txn = self.db.begin_write().map_err(w)?;
        self.write_batch(txn, batch)
    }

    fn load(&self) -> Result<Vec<Change>, StoreError> {
        let txn = self.db.begin_read().map_err(r)?;
        let mut out = Vec::new();
        let decode = |k: &str| {
            SubjectKey::decode(k)
                .ok_or_else(|| StoreError::Read(format!("undecodable key {k:?}").into()))
        };
        for row in txn.open_table(REVOCATIONS).map_err(r)?.iter().map_err(r)? {
            let (k, v) = row.map_err(r)?;
            out.push(Change::Revoke {
                key: decode(k.value())?,
                at: v.value(),
            });
        }
        for row in txn.open_table(BLOCKS).map_err(r)?.iter().map_err(r)? {
            let (k, v) = row.map_err(r)?;
            let (blocked, at) = v.value();
            let key = decode(k.value())?;
            out.push(if blocked {
                Change::Block { key, at }
            } else {
                Change::Unblock { key, at }
            });
        }
        for row in txn.open_table(BINDINGS).map_err(r)?.iter().map_err(r)? {
            let (k, v) = row.map_err(r)?;
            let (nets, at) = v.value();
            let nets: Vec<ipnet::IpNet> = serde_json::from_str(nets).map_err(r)?;
            let key = decode(k.value())?;
            out.push(if nets.is_empty() {
                Change::Unbind { key, at }
            } else {
                Change::Bind { key, nets, at }
            });
        }
        Ok(out)
    }

    fn purge(&self, before: i64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(w)?;
        let mut removed = 0usize;
        {
            let mut rev = txn.open_table(REVOCATIONS).map_err(w)?;
            let n = rev.len().map_err(w)?;
            rev.retain(|_, at| at >= before).map_err(w)?;
            removed += (n - rev.len().map_err(w)?) as usize;
            let mut blocks = txn.open_table(BLOCKS).map_err(w)?;
            let n = blocks.len().map_err(w)?;
            blocks
                .retain(|_, (blocked, at)| blocked || at >= before)
                .map_err(w)?;
            removed += (n - blocks.len().map_err(w)?) as usize;
            let mut binds = txn.open_table(BINDINGS).map_err(w)?;
            let n = binds.len().map_err(w)?;
            binds.retain(|_, (_, at)| at >= before).map_err(w)?;
            removed += (n - binds.len().map_err(w)?) as usize;
            let mut seen = txn.open_table(SETS_SEEN).map_err(w)?;
            seen.retain(|_, at| at >= before).map_err(w)?;
            let mut states = txn.open_table(STATES).map_err(w)?;
            states.retain(|_, expires| expires >= before).map_err(w)?;
        }
        txn.commit().map_err(w)?;
        Ok(removed)
    }

    fn seen(&self, iss: &str, jti: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(SETS_SEEN).map_err(r)?;
        let found = t
            .get(Self::set_key(iss, jti).as_str())
            .map_err(r)?
            .is_some();
        Ok(found)
    }

    fn put_state(&self, transmitter: &str, state: &str, expires: i64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(w)?;
        {
            let mut t = txn.open_table(STATES).map_err(w)?;
            t.insert(format!("{transmitter}\u{1f}{state}").as_str(), expires)
                .map_err(w)?;
        }
        txn.commit().map_err(w)
    }

    fn state_expiry(&self, transmitter: &str, state: &str) -> Result<Option<i64>, StoreError> {
        let txn = self.db.begin_read().map_err(r)?;
        let t = txn.open_table(STATES).map_err(r)?;
        let v = t
            .get(format!("{transmitter}\u{1f}{state}").as_str())
            .map_err(r)?
            .map(|v| v.value());
        Ok(v)
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}

fn write_binding(
    t: &mut redb::Table<&str, (&str, i64)>,
    key: &SubjectKey,
    new: Binding,
) -> Result<(), StoreError> {
    let k = key.encode();
    let old = t.get(&*k).map_err(w)?.map(|v| {
        let (nets, at) = v.value();
        Binding {
            nets: serde_json::from_str(nets).unwrap_or_default(),
            at,
        }
    });
    // An unbind is kept as an empty list with its time (a tombstone, like an unblock record)
    // until the retention drops it: a late older bind then merges against it and loses, in
    // the file exactly as in memory.
    if let Some(m) = merge_binding(old.as_ref(), new) {
        let nets = serde_json::to_string(&m.nets).map_err(w)?;
        t.insert(&*k, (nets.as_str(), m.at)).map_err(w)?;
    }
    Ok(())
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> SubjectKey {
        SubjectKey::Subject {
            iss: "https://idp".into(),
            sub: s.into(),
        }
    }

    #[test]
    fn survives_reopen_and_dedupes_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path, false).unwrap();
            let b = Batch {
                changes: vec![Change::Revoke {
                    key: user("a"),
                    at: 10,
                }],
                set_id: Some(("https://t/".into(), "j1".into())),
                now: 10,
            };
            assert_eq!(s.commit(&b).unwrap(), CommitOutcome::Committed);
            assert_eq!(s.commit(&b).unwrap(), CommitOutcome::Duplicate);
            s.commit(&Batch {
                changes: vec![Change::Block {
                    key: user("b"),
                    at: 5,
                }],
                ..Default::default()
            })
            .unwrap();
        }
        let s = RedbStore::open(&path, false).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(
            loaded,
            vec![
                Change::Revoke {
                    key: user("a"),
                    at: 10
                },
                Change::Block {
                    key: user("b"),
                    at: 5
                }
            ]
        );
        let b = Batch {
            changes: vec![],
            set_id: Some(("https://t".into(), "j1".into())),
            now: 11,
        };
        assert_eq!(
            s.commit(&b).unwrap(),
            CommitOutcome::Duplicate,
            "issuer slash is normalised"
        );
    }

    /// Any sequence of changes, applied live to the tables and committed to the file, gives
    /// the same tables as a rebuild from the file (what a restart does), expiry included.
    #[test]
    fn tables_rebuilt_from_the_file_equal_the_live_tables() {
        use crate::store::tables::Tables;
        use proptest::prelude::*;
        let key = (0..3u8, 0..2u8).prop_map(|(v, kind)| match kind {
            0 => user(&format!("u{v}")),
            _ => SubjectKey::Session {
                iss: "*".into(),
                sid: format!("s{v}"),
            },
        });
        let table = prop_oneof![
            Just(TableName::Revocations),
            Just(TableName::Blocks),
            Just(TableName::Bindings)
        ];
        let change = (0..7u8, key, 0..20i64, table).prop_map(|(op, key, at, table)| match op {
            0 => Change::Revoke { key, at },
            1 => Change::Block { key, at },
            2 => Change::Unblock { key, at },
            3 => Change::Bind {
                key,
                nets: vec!["10.0.0.0/8".parse().unwrap()],
                at,
            },
            4 => Change::Bind {
                key,
                nets: vec!["192.0.2.0/24".parse().unwrap()],
                at,
            },
            5 => Change::Unbind { key, at },
            _ => Change::Delete { table, key },
        });
        let dump = |t: &Tables| {
            [
                TableName::Revocations,
                TableName::Blocks,
                TableName::Bindings,
            ]
            .map(|n| t.list(n, None, 0, usize::MAX, &|_| false).1)
        };
        proptest!(ProptestConfig::with_cases(64), |(changes in proptest::collection::vec(change, 1..24), cut in 0..20i64)| {
            let dir = tempfile::tempdir().unwrap();
            let s = RedbStore::open(&dir.path().join("s.redb"), false).unwrap();
            let live = Tables::default();
            for c in &changes {
                live.apply(c);
                s.commit(&Batch { changes: vec![c.clone()], set_id: None, now: 0 }).unwrap();
            }
            let rebuilt = Tables::default();
            for c in s.load().unwrap() {
                rebuilt.apply(&c);
            }
            prop_assert_eq!(dump(&live), dump(&rebuilt));
            live.expire(cut);
            s.purge(cut).unwrap();
            let rebuilt = Tables::default();
            for c in s.load().unwrap() {
                rebuilt.apply(&c);
            }
            prop_assert_eq!(dump(&live), dump(&rebuilt));
        });
    }

    #[test]
    fn corrupt_file_fails_closed_unless_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = RedbStore::open(&path, false).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let s = RedbStore::open(&path, true).unwrap();
        assert!(s.load().unwrap().is_empty());
    }
}
