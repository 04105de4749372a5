//! One writer per token inside an engine.
//!
//! Two firings of one token from the same engine (two branches of a split
//! moved at once, an action's follow-up next to a client's firing) would
//! otherwise both read the token, both evaluate their guards and race on
//! the store's compare-and-swap: the loser re-reads and tries again, and
//! under steady contention it can lose every attempt. Queued here, the
//! second starts from the first one's committed write (remembered by the
//! engine, so without a read) and does not conflict at all. Firings from
//! other engines still meet at the CAS, which stays the only thing that
//! makes a firing atomic: this lock is an optimisation and a fairness
//! guarantee for one process, never a correctness one.
//!
//! A lock exists only while some firing holds or waits for it: the map
//! holds one entry per token in use, not per token ever fired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::Id;

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(super) struct TokenLocks {
    slots: Mutex<HashMap<(Id, Id), Slot>>,
}

/// Held while one firing of a token runs; the next waits.
pub(super) struct TokenLock<'a> {
    locks: &'a TokenLocks,
    key: (Id, Id),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl TokenLocks {
    /// Waits for the token's turn (first come, first served: tokio's mutex
    /// is fair).
    pub(super) async fn lock(&self, workflow: &Id, token: &Id) -> TokenLock<'_> {
        let key = (workflow.clone(), token.clone());
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = slot.lock_owned().await;
        TokenLock {
            locks: self,
            key,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }
}

impl Drop for TokenLock<'_> {
    fn drop(&mut self) {
        // Release first: the guard holds a reference to the slot. Every
        // other reference is taken under the map's lock, so a count of
        // one (the map's) there means nobody holds or waits for it.
        drop(self.guard.take());
        let mut slots = self.locks.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.get(&self.key).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::new(s).unwrap()
    }

    #[tokio::test]
    async fn one_holder_per_token_and_no_entry_left_behind() {
        let locks = Arc::new(TokenLocks::default());
        let first = locks.lock(&id("w"), &id("t")).await;
        // Another token is not held up.
        let other = locks.lock(&id("w"), &id("u")).await;
        drop(other);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock(&id("w"), &id("t")).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second firing of `t` waits");
        assert_eq!(locks.len(), 1);
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0, "no lock outlives its last user");
    }
}
