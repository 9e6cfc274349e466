//! A non-durable backend for the demo and tests that opt out of persistence (`backend = "memory"`).

use std::collections::HashSet;
use std::sync::Mutex;

use super::{Batch, Change, CommitOutcome, Durable, StoreError};

/// `(iss, jti)` of a SET.
type SetId = (String, String);

/// Keeps changes in memory only; nothing survives a restart.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<(Vec<Change>, HashSet<SetId>)>,
}

impl Durable for MemoryStore {
    fn commit(&self, batch: &Batch) -> Result<CommitOutcome, StoreError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| StoreError::Write("memory store poisoned".into()))?;
        if let Some(id) = &batch.set_id {
            if !g.1.insert(id.clone()) {
                return Ok(CommitOutcome::Duplicate);
            }
        }
        g.0.extend(batch.changes.iter().cloned());
        Ok(CommitOutcome::Committed)
    }

    fn load(&self) -> Result<Vec<Change>, StoreError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| StoreError::Read("memory store poisoned".into()))?
            .0
            .clone())
    }

    fn purge(&self, _before: i64) -> Result<usize, StoreError> {
        Ok(0)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
