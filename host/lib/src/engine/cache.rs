//! The engine's memory of the tokens it last wrote.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Id, Token};

type Key = (Id, Id);

/// At most `capacity` tokens, keyed by workflow and token id, in two
/// generations of half the capacity each. New entries go to the young one;
/// when it is full it becomes the old one and the previous old one is
/// dropped whole. A hit in the old generation moves the entry back to the
/// young one, so a token fired again and again survives every rollover,
/// while the hot path keeps no per-entry recency bookkeeping.
#[derive(Debug)]
pub(super) struct TokenCache {
    half: usize,
    young: HashMap<Key, Arc<Token>>,
    old: HashMap<Key, Arc<Token>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least 2; 0 is handled by
    /// the engine, which then keeps none).
    pub(super) fn new(capacity: usize) -> Self {
        TokenCache {
            half: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }

    pub(super) fn get(&mut self, key: &Key) -> Option<Arc<Token>> {
        if let Some(t) = self.young.get(key) {
            return Some(t.clone());
        }
        let t = self.old.remove(key)?;
        self.insert(key.clone(), t.clone());
        Some(t)
    }

    pub(super) fn insert(&mut self, key: Key, token: Arc<Token>) {
        if self.young.len() >= self.half && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&key);
        self.young.insert(key, token);
    }

    pub(super) fn remove(&mut self, key: &Key) {
        self.young.remove(key);
        self.old.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        (Id::new("wf").unwrap(), Id::new(format!("t{i}")).unwrap())
    }

    fn token(i: usize, revision: u64) -> Arc<Token> {
        Arc::new(Token {
            id: Id::new(format!("t{i}")).unwrap(),
            workflow_id: Id::new("wf").unwrap(),
            definition_version: 1,
            place: Id::new("a").unwrap(),
            marking: vec![Id::new("a").unwrap()],
            data: serde_json::Value::Null,
            metadata: Default::default(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
            revision,
            subject: String::new(),
        })
    }

    #[test]
    fn stays_within_its_capacity() {
        let mut c = TokenCache::new(100);
        for i in 0..1_000 {
            c.insert(key(i), token(i, 1));
            assert!(c.len() <= 100, "{} entries after {i} inserts", c.len());
        }
        // The newest entries are the ones kept.
        assert!(c.get(&key(999)).is_some());
        assert!(c.get(&key(0)).is_none());
    }

    #[test]
    fn a_token_in_use_survives_rollovers() {
        let mut c = TokenCache::new(100);
        c.insert(key(0), token(0, 1));
        // Far more other tokens than the capacity, with token 0 fired (read
        // and written again) every 30 of them.
        for i in 1..2_000 {
            c.insert(key(i), token(i, 1));
            if i % 30 == 0 {
                let t = c.get(&key(0)).expect("token 0 still cached");
                c.insert(key(0), token(0, t.revision + 1));
            }
        }
        assert_eq!(c.get(&key(0)).unwrap().revision, 1 + 1_999 / 30);
    }

    #[test]
    fn the_latest_write_wins_and_removal_clears_both_generations() {
        let mut c = TokenCache::new(4);
        c.insert(key(1), token(1, 1));
        c.insert(key(2), token(2, 1));
        // Rolls over: tokens 1 and 2 are now in the old generation.
        c.insert(key(3), token(3, 1));
        c.insert(key(1), token(1, 2));
        assert_eq!(c.get(&key(1)).unwrap().revision, 2);
        c.remove(&key(1));
        c.remove(&key(2));
        assert!(c.get(&key(1)).is_none());
        assert!(c.get(&key(2)).is_none());
        assert_eq!(c.get(&key(3)).unwrap().revision, 1);
    }
}
