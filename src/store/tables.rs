//! The in-memory tables and the merge rules every backend shares (event time decides, block wins ties).

use std::net::IpAddr;

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ipnet::IpNet;
use serde::Serialize;

use super::keys::{
    normalize_iss, ANY_ISSUER, KIND_DEVICE, KIND_EMAIL, KIND_SESSION, KIND_SUBJECT, KIND_TENANT,
    KIND_TOKEN, SEP,
};
use super::{Change, SubjectKey, TableName};

/// State of an account block: the latest block/unblock event time wins; on equal times, block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockState {
    pub blocked: bool,
    pub at: i64,
}

/// An IP binding: the addresses a subject or session may use, as of event time `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub nets: Vec<IpNet>,
    pub at: i64,
}

/// Counts for metrics and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    pub revocations: usize,
    pub blocks: usize,
    pub bindings: usize,
}

type Hasher = foldhash::fast::RandomState;

/// Key classes: six kinds, each under a named issuer or under [`ANY_ISSUER`], plus one for keys
/// that name no known kind.
const CLASSES: usize = 13;

/// The class of a key kind, under a named issuer or under [`ANY_ISSUER`].
fn class_of(kind: char, any_issuer: bool) -> usize {
    let k = match kind {
        KIND_SUBJECT => 0,
        KIND_SESSION => 1,
        KIND_TOKEN => 2,
        KIND_TENANT => 3,
        KIND_DEVICE => 4,
        KIND_EMAIL => 5,
        _ => return CLASSES - 1,
    };
    k * 2 + usize::from(any_issuer)
}

/// The class of an encoded key (`kind SEP issuer SEP value`), in constant time.
fn class(key: &str) -> usize {
    let b = key.as_bytes();
    let any = b.get(2..4) == Some(&[ANY_ISSUER.as_bytes()[0], SEP as u8][..]);
    class_of(b.first().map_or('\0', |&c| char::from(c)), any)
}

/// One sharded map plus a count of its entries per key class, so that a request skips
/// ([`Tables::may_revoke`], [`Tables::may_bind`]) the probes of classes nothing is stored under (a table of session revocations costs no
/// probe for tenant, device or "any issuer" keys). A count is raised before its entry is
/// inserted and lowered after it is removed: it is never below the true count, so a skipped
/// probe never misses an entry.
struct Table<V> {
    map: DashMap<Box<str>, V, Hasher>,
    classes: [AtomicUsize; CLASSES],
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            map: DashMap::default(),
            classes: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl<V: PartialEq> Table<V> {
    /// Replaces the entry with `merge(old)`, atomically per key; `None` leaves it as it is.
    /// Returns whether the entry changed.
    fn upsert(&self, key: Box<str>, merge: impl FnOnce(Option<&V>) -> Option<V>) -> bool {
        let c = class(&key);
        match self.map.entry(key) {
            Entry::Occupied(mut o) => match merge(Some(o.get())) {
                Some(v) if v != *o.get() => {
                    o.insert(v);
                    true
                }
                _ => false,
            },
            Entry::Vacant(slot) => match merge(None) {
                Some(v) => {
                    self.classes[c].fetch_add(1, Ordering::AcqRel);
                    slot.insert(v);
                    true
                }
                None => false,
            },
        }
    }
}

impl<V> Table<V> {
    fn remove(&self, key: &str) -> bool {
        let gone = self.map.remove(key).is_some();
        if gone {
            self.classes[class(key)].fetch_sub(1, Ordering::AcqRel);
        }
        gone
    }

    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.map.retain(|k, v| {
            let kept = keep(v);
            if !kept {
                self.classes[class(k)].fetch_sub(1, Ordering::AcqRel);
            }
            kept
        });
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn get(&self, key: &str) -> Option<dashmap::mapref::one::Ref<'_, Box<str>, V>> {
        self.map.get(key)
    }

    fn holds_class(&self, c: usize) -> bool {
        self.classes[c].load(Ordering::Acquire) > 0
    }
}

/// Revocations (key → largest "issued before" time), blocks and bindings, keyed by
/// [`SubjectKey::encode`]. Reads are at most one sharded-map lookup; no guard escapes a method.
pub struct Tables {
    revocations: Table<i64>,
    blocks: Table<BlockState>,
    bindings: Table<Binding>,
    /// Counts applied changes; its receivers (open tunnels, [`Tables::subscribe`]) wake after
    /// each. Only writers touch it: reads never do.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            revocations: Table::default(),
            blocks: Table::default(),
            bindings: Table::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Merge rule for revocations: keep the largest time.
pub fn merge_revoke(old: Option<i64>, at: i64) -> i64 {
    old.map_or(at, |o| o.max(at))
}

/// Merge rule for blocks: the later event wins; a block wins a tie.
pub fn merge_block(old: Option<BlockState>, new: BlockState) -> BlockState {
    match old {
        None => new,
        Some(o) if new.at > o.at || (new.at == o.at && new.blocked) => new,
        Some(o) => o,
    }
}

/// Merge rule for bindings: the later (or equal) event replaces; an unbind is an empty list.
pub fn merge_binding(old: Option<&Binding>, new: Binding) -> Option<Binding> {
    match old {
        Some(o) if o.at > new.at => None,
        _ => Some(new),
    }
}

impl Tables {
    /// Applies one change with the shared merge rules (atomically per key); returns whether
    /// the entry changed.
    pub fn apply(&self, change: &Change) -> bool {
        let block = |blocked: bool, at: i64| {
            let new = BlockState { blocked, at };
            move |old: Option<&BlockState>| Some(merge_block(old.copied(), new))
        };
        let changed = match change {
            Change::Revoke { key, at } => self
                .revocations
                .upsert(key.encode(), |old| Some(merge_revoke(old.copied(), *at))),
            Change::Block { key, at } => self.blocks.upsert(key.encode(), block(true, *at)),
            Change::Unblock { key, at } => self.blocks.upsert(key.encode(), block(false, *at)),
            Change::Bind { key, nets, at } => self.bindings.upsert(key.encode(), |old| {
                merge_binding(
                    old,
                    Binding {
                        nets: nets.clone(),
                        at: *at,
                    },
                )
            }),
            Change::Unbind { key, at } => self.bindings.upsert(key.encode(), |old| {
                merge_binding(
                    old,
                    Binding {
                        nets: Vec::new(),
                        at: *at,
                    },
                )
            }),
            Change::Delete { table, key } => {
                let k = key.encode();
                match table {
                    TableName::Revocations => self.revocations.remove(&k),
                    TableName::Blocks => self.blocks.remove(&k),
                    TableName::Bindings => self.bindings.remove(&k),
                }
            }
        };
        if changed {
            // After the entry is in place: a woken receiver that decides again sees it.
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        changed
    }

    /// Wakes after every change applied from now on (revocation, block, unblock, binding, unbinding,
    /// deletion; not the expiry pass, which only drops what no longer refuses anything). Whoever
    /// holds access granted earlier (an open tunnel) decides again when it fires.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a revocation or a block may exist for keys of this kind under this issuer (false:
    /// the caller need not even build the key).
    pub fn may_revoke(&self, kind: char, iss: &str) -> bool {
        let c = class_of(kind, normalize_iss(iss) == ANY_ISSUER);
        self.revocations.holds_class(c) || self.blocks.holds_class(c)
    }

    /// Whether a binding may exist for keys of this kind under this issuer.
    pub fn may_bind(&self, kind: char, iss: &str) -> bool {
        self.bindings
            .holds_class(class_of(kind, normalize_iss(iss) == ANY_ISSUER))
    }

    /// "Issued before" time recorded for an encoded key.
    pub fn revoked_at(&self, key: &str) -> Option<i64> {
        self.revocations.get(key).map(|v| *v)
    }

    /// Time the encoded key was blocked, if it is blocked now.
    pub fn blocked_since(&self, key: &str) -> Option<i64> {
        self.blocks.get(key).filter(|b| b.blocked).map(|b| b.at)
    }

    /// `Some(allowed)` when the encoded key has a non-empty binding, `None` when unbound.
    pub fn binding_allows(&self, key: &str, ip: IpAddr) -> Option<bool> {
        let b = self.bindings.get(key)?;
        if b.nets.is_empty() {
            return None;
        }
        Some(b.nets.iter().any(|n| n.contains(&ip)))
    }

    /// Drops revocations, unblock records, bindings and unbind records (tombstones) whose time
    /// is before `before`: the same rule as the durable backends' purge, so that the tables and
    /// the store never disagree. Blocks stay until an explicit unblock. Returns how many entries
    /// were removed.
    pub fn expire(&self, before: i64) -> usize {
        let n = self.len_all();
        self.revocations.retain(|at| *at >= before);
        self.blocks.retain(|b| b.blocked || b.at >= before);
        self.bindings.retain(|b| b.at >= before);
        n - self.len_all()
    }

    fn len_all(&self) -> usize {
        self.revocations.len() + self.blocks.len() + self.bindings.len()
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            revocations: self.revocations.len(),
            blocks: self.blocks.len(),
            bindings: self.bindings.len(),
        }
    }

    /// The entry of an encoded key in one table, as the admin API shows it (without the key).
    pub fn entry(&self, table: TableName, key: &str) -> Option<serde_json::Value> {
        match table {
            TableName::Revocations => self.revocations.get(key).map(|v| revocation_json(*v)),
            TableName::Blocks => self.blocks.get(key).map(|v| block_json(&v)),
            TableName::Bindings => self.bindings.get(key).map(|v| binding_json(&v)),
        }
    }

    /// Whether the encoded key has an entry in one table.
    pub fn contains(&self, table: TableName, key: &str) -> bool {
        match table {
            TableName::Revocations => self.revocations.map.contains_key(key),
            TableName::Blocks => self.blocks.map.contains_key(key),
            TableName::Bindings => self.bindings.map.contains_key(key),
        }
    }

    /// Entries of one table whose key contains `search` (case-sensitive), sorted by key,
    /// paginated; entries whose encoded key `local_only` names get `"local_only": true`.
    pub fn list(
        &self,
        table: TableName,
        search: Option<&str>,
        offset: usize,
        limit: usize,
        local_only: &dyn Fn(&str) -> bool,
    ) -> (usize, Vec<serde_json::Value>) {
        let mut rows: Vec<(Box<str>, serde_json::Value)> = match table {
            TableName::Revocations => self
                .revocations
                .map
                .iter()
                .map(|e| (e.key().clone(), revocation_json(*e.value())))
                .collect(),
            TableName::Blocks => self
                .blocks
                .map
                .iter()
                .map(|e| (e.key().clone(), block_json(e.value())))
                .collect(),
            TableName::Bindings => self
                .bindings
                .map
                .iter()
                .map(|e| (e.key().clone(), binding_json(e.value())))
                .collect(),
        };
        if let Some(s) = search {
            rows.retain(|(k, _)| k.contains(s));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let total = rows.len();
        let page = rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .filter_map(|(k, mut v)| {
                let key = SubjectKey::decode(&k)?;
                if let serde_json::Value::Object(m) = &mut v {
                    m.insert("key".into(), serde_json::to_value(key).ok()?);
                    if local_only(&k) {
                        m.insert("local_only".into(), serde_json::Value::Bool(true));
                    }
                }
                Some(v)
            })
            .collect();
        (total, page)
    }
}

fn revocation_json(at: i64) -> serde_json::Value {
    serde_json::json!({ "revoked_at": at })
}

fn block_json(b: &BlockState) -> serde_json::Value {
    serde_json::json!({ "blocked": b.blocked, "at": b.at })
}

fn binding_json(b: &Binding) -> serde_json::Value {
    serde_json::json!({ "nets": b.nets.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "at": b.at })
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
    fn revocation_keeps_latest_time() {
        let t = Tables::default();
        t.apply(&Change::Revoke {
            key: user("a"),
            at: 200,
        });
        t.apply(&Change::Revoke {
            key: user("a"),
            at: 100,
        });
        assert_eq!(t.revoked_at(&user("a").encode()), Some(200));
    }

    #[test]
    fn late_block_does_not_undo_newer_unblock_and_ties_block() {
        let t = Tables::default();
        let k = user("a").encode();
        t.apply(&Change::Unblock {
            key: user("a"),
            at: 300,
        });
        t.apply(&Change::Block {
            key: user("a"),
            at: 200,
        });
        assert_eq!(t.blocked_since(&k), None);
        t.apply(&Change::Block {
            key: user("a"),
            at: 300,
        });
        assert_eq!(t.blocked_since(&k), Some(300));
        t.apply(&Change::Unblock {
            key: user("a"),
            at: 300,
        });
        assert_eq!(t.blocked_since(&k), Some(300));
    }

    #[test]
    fn expiry_keeps_blocks_and_fresh_entries() {
        let t = Tables::default();
        t.apply(&Change::Revoke {
            key: user("old"),
            at: 10,
        });
        t.apply(&Change::Revoke {
            key: user("new"),
            at: 1000,
        });
        t.apply(&Change::Block {
            key: user("blocked"),
            at: 10,
        });
        t.apply(&Change::Bind {
            key: user("old"),
            nets: vec!["10.0.0.0/8".parse().unwrap()],
            at: 10,
        });
        assert_eq!(t.expire(500), 2);
        assert_eq!(
            t.stats(),
            TableStats {
                revocations: 1,
                blocks: 1,
                bindings: 0
            }
        );
    }

    #[test]
    fn skipped_classes_never_hide_an_entry() {
        let t = Tables::default();
        let any = SubjectKey::Subject {
            iss: ANY_ISSUER.into(),
            sub: "a".into(),
        };
        let sid = SubjectKey::Session {
            iss: "https://idp".into(),
            sid: "s".into(),
        };
        assert_eq!(t.revoked_at(&any.encode()), None);
        t.apply(&Change::Revoke {
            key: any.clone(),
            at: 5,
        });
        t.apply(&Change::Revoke {
            key: sid.clone(),
            at: 7,
        });
        assert_eq!(t.revoked_at(&any.encode()), Some(5));
        assert_eq!(t.revoked_at(&sid.encode()), Some(7));
        assert_eq!(t.revoked_at(&user("a").encode()), None);
        // A second change to the same key does not count twice; a removal uncounts it.
        t.apply(&Change::Revoke {
            key: sid.clone(),
            at: 9,
        });
        t.apply(&Change::Delete {
            table: TableName::Revocations,
            key: sid.clone(),
        });
        assert_eq!(
            t.revocations.classes[class(&sid.encode())].load(Ordering::Relaxed),
            0
        );
        t.apply(&Change::Revoke {
            key: sid.clone(),
            at: 3,
        });
        assert_eq!(t.revoked_at(&sid.encode()), Some(3));
        assert_eq!(t.expire(6), 2);
        assert_eq!(
            t.revocations.classes[class(&sid.encode())].load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            t.revocations.classes[class(&any.encode())].load(Ordering::Relaxed),
            0
        );
        assert_eq!(t.revoked_at(&any.encode()), None);
    }

    #[test]
    fn every_applied_change_wakes_subscribers() {
        let t = Tables::default();
        let mut rx = t.subscribe();
        assert!(!rx.has_changed().unwrap());
        t.apply(&Change::Revoke {
            key: user("a"),
            at: 1,
        });
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        t.expire(100);
        assert!(!rx.has_changed().unwrap(), "expiry only widens: no wake-up");
        t.apply(&Change::Unblock {
            key: user("a"),
            at: 2,
        });
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn bindings_allow_only_their_nets() {
        let t = Tables::default();
        let k = user("a").encode();
        assert_eq!(t.binding_allows(&k, "10.1.2.3".parse().unwrap()), None);
        t.apply(&Change::Bind {
            key: user("a"),
            nets: vec!["10.0.0.0/8".parse().unwrap()],
            at: 5,
        });
        assert_eq!(
            t.binding_allows(&k, "10.1.2.3".parse().unwrap()),
            Some(true)
        );
        assert_eq!(
            t.binding_allows(&k, "192.0.2.1".parse().unwrap()),
            Some(false)
        );
        t.apply(&Change::Unbind {
            key: user("a"),
            at: 4,
        });
        assert_eq!(
            t.binding_allows(&k, "192.0.2.1".parse().unwrap()),
            Some(false)
        );
        t.apply(&Change::Unbind {
            key: user("a"),
            at: 6,
        });
        assert_eq!(t.binding_allows(&k, "192.0.2.1".parse().unwrap()), None);
    }
}
