//! An in-memory [`TokenSource`]: fixtures for the plugin test harness and
//! for tests that need no NATS. Same semantics as the JetStream reader:
//! pages in revision order, cursors are "next revision", unknown ids are
//! `NotFound`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::source::{BoxFuture, TokenSource};
use super::{Missing, Page, StoreError};
use crate::model::{Id, StoredDefinition, Token};

/// Tokens and definitions held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (workflow, token) -> token.
    tokens: BTreeMap<(Id, Id), Token>,
    /// workflow -> latest definition.
    definitions: BTreeMap<Id, StoredDefinition>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a token (keyed by workflow and id).
    pub fn insert_token(&self, token: Token) {
        let mut inner = self.inner.write().expect("lock");
        inner
            .tokens
            .insert((token.workflow_id.clone(), token.id.clone()), token);
    }

    /// Adds or replaces a workflow definition.
    pub fn insert_definition(&self, definition: StoredDefinition) {
        let mut inner = self.inner.write().expect("lock");
        inner
            .definitions
            .insert(definition.definition.id.clone(), definition);
    }
}

/// The stored size of `t`: what its state message would weigh.
fn stored_size(t: &Token) -> usize {
    let body = serde_json::json!({
        "definition_version": t.definition_version,
        "data": t.data,
        "metadata": t.metadata,
    });
    body.to_string().len() + t.subject.len()
}

impl TokenSource for MemorySource {
    fn get_token<'a>(&'a self, workflow: &'a Id, token: &'a Id) -> BoxFuture<'a, Result<Token, StoreError>> {
        let inner = self.inner.read().expect("lock");
        let result = inner
            .tokens
            .get(&(workflow.clone(), token.clone()))
            .cloned()
            .ok_or_else(|| {
                StoreError::NotFound(Missing::Token {
                    workflow: Some(workflow.clone()),
                    token: token.clone(),
                })
            });
        Box::pin(std::future::ready(result))
    }

    fn list_place<'a>(
        &'a self,
        workflow: &'a Id,
        place: &'a Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page<Token>, StoreError>> {
        let inner = self.inner.read().expect("lock");
        let from = cursor.unwrap_or(1);
        let mut matching: Vec<Token> = inner
            .tokens
            .values()
            .filter(|t| &t.workflow_id == workflow && &t.place == place && t.revision >= from)
            .cloned()
            .collect();
        matching.sort_by_key(|t| t.revision);
        let limit = limit.max(1);
        // The same cut as the JetStream reader's, by the size a token would
        // have stored (its body and subject).
        let mut bytes = 0usize;
        let fit = matching
            .iter()
            .take(limit)
            .position(|t| {
                bytes = bytes.saturating_add(stored_size(t));
                bytes > max_bytes
            })
            .map_or(limit.min(matching.len()), |i| i.max(1));
        let next = (matching.len() > fit).then(|| matching[fit].revision);
        matching.truncate(fit);
        Box::pin(std::future::ready(Ok(Page {
            items: matching,
            next,
        })))
    }

    fn get_definition<'a>(&'a self, workflow: &'a Id) -> BoxFuture<'a, Result<StoredDefinition, StoreError>> {
        let inner = self.inner.read().expect("lock");
        let result = inner
            .definitions
            .get(workflow)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(Missing::Workflow(workflow.clone())));
        Box::pin(std::future::ready(result))
    }
}
