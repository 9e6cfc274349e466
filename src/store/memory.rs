//! A non-durable backend for the demo and tests that opt out of persistence (`backend = "memory"`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::{Batch, Change, CommitOutcome, Durable, StoreError};

/// `(iss, jti)` of a SET.
type SetId = (String, String);

/// Keeps changes in memory only; nothing survives a restart.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<(Vec<Change>, HashSet<SetId>)>,
    /// `(transmitter, state)` → expiry.
    states: Mutex<HashMap<(String, String), i64>>,
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

    fn seen(&self, iss: &str, jti: &str) -> Result<bool, StoreError> {
        let g = self
            .inner
            .lock()
            .map_err(|_| StoreError::Read("memory store poisoned".into()))?;
        Ok(g.1.contains(&(iss.to_string(), jti.to_string())))
    }

    fn put_state(&self, transmitter: &str, state: &str, expires: i64) -> Result<(), StoreError> {
        self.states
            .lock()
            .map_err(|_| StoreError::Write("memory store poisoned".into()))?
            .insert((transmitter.to_string(), state.to_string()), expires);
        Ok(())
    }

    fn state_expiry(&self, transmitter: &str, state: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .states
            .lock()
            .map_err(|_| StoreError::Read("memory store poisoned".into()))?
            .get(&(transmitter.to_string(), state.to_string()))
            .copied())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
