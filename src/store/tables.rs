//! The in-memory tables and the merge rules every backend shares (event time decides, block wins ties).

use std::net::IpAddr;

use dashmap::DashMap;
use ipnet::IpNet;
use serde::Serialize;

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

/// Revocations (key → largest "issued before" time), blocks and bindings, keyed by
/// [`SubjectKey::encode`]. Reads are one sharded-map lookup; no guard escapes a method.
#[derive(Default)]
pub struct Tables {
    revocations: DashMap<Box<str>, i64>,
    blocks: DashMap<Box<str>, BlockState>,
    bindings: DashMap<Box<str>, Binding>,
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
    /// Applies one change with the shared merge rules.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Revoke { key, at } => {
                let k = key.encode();
                let old = self.revocations.get(&k).map(|v| *v);
                self.revocations.insert(k, merge_revoke(old, *at));
            }
            Change::Block { key, at } => self.set_block(
                key,
                BlockState {
                    blocked: true,
                    at: *at,
                },
            ),
            Change::Unblock { key, at } => self.set_block(
                key,
                BlockState {
                    blocked: false,
                    at: *at,
                },
            ),
            Change::Bind { key, nets, at } => self.set_binding(
                key,
                Binding {
                    nets: nets.clone(),
                    at: *at,
                },
            ),
            Change::Unbind { key, at } => self.set_binding(
                key,
                Binding {
                    nets: Vec::new(),
                    at: *at,
                },
            ),
            Change::Delete { table, key } => {
                let k = key.encode();
                match table {
                    TableName::Revocations => self.revocations.remove(&k).is_some(),
                    TableName::Blocks => self.blocks.remove(&k).is_some(),
                    TableName::Bindings => self.bindings.remove(&k).is_some(),
                };
            }
        }
    }

    fn set_block(&self, key: &SubjectKey, new: BlockState) {
        let k = key.encode();
        let mut entry = self.blocks.entry(k).or_insert(BlockState {
            blocked: false,
            at: i64::MIN,
        });
        *entry = merge_block(Some(*entry), new);
    }

    fn set_binding(&self, key: &SubjectKey, new: Binding) {
        let k = key.encode();
        let merged = merge_binding(self.bindings.get(&k).as_deref(), new);
        if let Some(b) = merged {
            self.bindings.insert(k, b);
        }
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

    /// Drops revocations, unblocked records and bindings whose time is before `before`.
    /// Blocks stay until an explicit unblock. Returns how many entries were removed.
    pub fn expire(&self, before: i64) -> usize {
        let n = self.len_all();
        self.revocations.retain(|_, at| *at >= before);
        self.blocks.retain(|_, b| b.blocked || b.at >= before);
        self.bindings
            .retain(|_, b| b.at >= before && !b.nets.is_empty());
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

    /// Entries of one table whose key contains `search` (case-sensitive), sorted by key, paginated.
    pub fn list(
        &self,
        table: TableName,
        search: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<serde_json::Value>) {
        let mut rows: Vec<(Box<str>, serde_json::Value)> = match table {
            TableName::Revocations => self.revocations.iter().map(|e| (e.key().clone(), serde_json::json!({ "revoked_at": *e.value() }))).collect(),
            TableName::Blocks => self.blocks.iter().map(|e| (e.key().clone(), serde_json::json!({ "blocked": e.blocked, "at": e.at }))).collect(),
            TableName::Bindings => self
                .bindings
                .iter()
                .map(|e| (e.key().clone(), serde_json::json!({ "nets": e.nets.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "at": e.at })))
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
                }
                Some(v)
            })
            .collect();
        (total, page)
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
