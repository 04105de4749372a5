//! The workflow engine: fires transitions through their guards and runs
//! actions from the event log.
//!
//! - [`Engine::fire`]: read the token (one Direct Get), check the
//!   transition against the token's pinned definition, evaluate every guard
//!   (all must allow; every denial is reported), commit the move with CAS;
//!   on a conflict re-read and re-evaluate, a bounded number of times.
//! - [`Engine::enabled`]: which transitions can fire now, and why not.
//! - [`Dispatcher`]: runs actions from a durable, explicitly acked consumer
//!   on the transition events (the one place where consuming is right).

mod cache;
mod dispatch;
mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use dispatch::{Dispatcher, DispatcherConfig};
pub use error::{Denial, FireError};

use cache::TokenCache;

use crate::model::{Id, Metadata, StoredDefinition, Token, Transition};
use crate::plugin::{Decision, GuardArgs, PluginError, PluginRegistry, World};
use crate::store::{Committed, Move, NewToken, Store, StoreError, StoreReader, StoreWriter, TokenSource};

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Attempts of a firing that keeps losing compare-and-swap races (each
    /// re-reads the token and re-evaluates the guards).
    pub max_attempts: u32,
    /// Tokens this engine last wrote, kept to skip the read of the next
    /// firing of the same token (0 disables). The cache only ever speeds up
    /// a firing that succeeds: the write is a compare-and-swap on the cached
    /// revision, so a stale entry loses it and the firing re-reads; and a
    /// refusal (not enabled, denied, a revision other than expected) is
    /// never returned from a cached read without reading the token again.
    /// Past this many, the tokens least recently fired are forgotten first
    /// (roughly: in two generations of half the size each).
    pub token_cache: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_attempts: 3,
            token_cache: 10_000,
        }
    }
}

/// Where a firing reads its token from, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// This engine's own last write of the token.
    Cache,
    /// A Direct Get, answered by any replica.
    Replica,
    /// The stream leader (`STREAM.MSG.GET`).
    Leader,
}

/// A request to fire a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FireRequest {
    /// The workflow.
    pub workflow: Id,
    /// The token.
    pub token: Id,
    /// The transition.
    pub transition: Id,
    /// Input for the guards (and recorded in the event).
    #[serde(default)]
    pub input: serde_json::Value,
    /// Who fires.
    #[serde(default)]
    pub actor: Option<String>,
    /// Fire only if the token is still at this revision (no re-read and
    /// retry on conflict): for callers that decided on a state they saw.
    #[serde(default)]
    pub expected_revision: Option<u64>,
    /// Idempotency key: a second firing with the same key inside the
    /// stream's duplicate window is refused as [`FireError::Duplicate`].
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl FireRequest {
    /// A request with no input, actor or preconditions.
    pub fn new(workflow: Id, token: Id, transition: Id) -> Self {
        FireRequest {
            workflow,
            token,
            transition,
            input: serde_json::Value::Null,
            actor: None,
            expected_revision: None,
            idempotency_key: None,
        }
    }
}

/// A committed firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    /// The token after the move (exact revision).
    pub token: Token,
    /// The place it left.
    pub from: Id,
    /// The transition fired.
    pub transition: Id,
    /// Stream sequence of the transition event.
    pub event_sequence: u64,
    /// Attempts it took (more than 1 after lost races).
    pub attempts: u32,
}

/// Whether one transition can fire now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enabled {
    /// The transition.
    pub transition: Id,
    /// Where it leads.
    pub to: Id,
    /// True when every guard allows.
    pub enabled: bool,
    /// The denials, when some guard refuses.
    pub denials: Vec<Denial>,
    /// A guard that failed (trap, timeout...), which also disables it.
    pub error: Option<String>,
}

struct Inner {
    store: Store,
    reader: StoreReader,
    writer: StoreWriter,
    source: Arc<dyn TokenSource>,
    plugins: RwLock<PluginRegistry>,
    /// Definition versions are immutable: cached forever.
    definitions: Mutex<HashMap<(Id, u64), Arc<StoredDefinition>>>,
    /// See [`EngineConfig::token_cache`].
    tokens: Mutex<TokenCache>,
    config: EngineConfig,
}

/// Fires transitions and creates tokens. Cloning is cheap.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Engine {
    /// An engine over `store` with the plugins in `plugins`.
    pub fn new(store: Store, plugins: PluginRegistry, config: EngineConfig) -> Self {
        let reader = store.reader();
        Engine {
            inner: Arc::new(Inner {
                source: Arc::new(reader.clone()),
                writer: store.writer(),
                reader,
                store,
                plugins: RwLock::new(plugins),
                definitions: Mutex::new(HashMap::new()),
                tokens: Mutex::new(TokenCache::new(config.token_cache)),
                config,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> PluginRegistry {
        self.inner.plugins.read().expect("lock").clone()
    }

    /// Replaces the loaded plugins (firings in flight keep the ones they
    /// resolved).
    pub fn set_plugins(&self, plugins: PluginRegistry) {
        *self.inner.plugins.write().expect("lock") = plugins;
    }

    /// Definition `version` of `workflow`, from the cache or the stream.
    pub async fn definition(&self, workflow: &Id, version: u64) -> Result<Arc<StoredDefinition>, StoreError> {
        let key = (workflow.clone(), version);
        if let Some(d) = self.inner.definitions.lock().expect("lock").get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(
            self.inner
                .reader
                .get_definition_version(workflow, version)
                .await?,
        );
        self.inner
            .definitions
            .lock()
            .expect("lock")
            .insert(key, d.clone());
        Ok(d)
    }

    /// Creates a token on the latest definition of `workflow`.
    pub async fn create_token(&self, workflow: &Id, new: NewToken) -> Result<Committed, StoreError> {
        let def = self.inner.reader.get_definition(workflow).await?;
        let committed = self.inner.writer.create_token(&def, new).await?;
        self.remember(&committed.token);
        tracing::info!(workflow = %workflow, token = %committed.token.id, place = %committed.token.place, "token created");
        Ok(committed)
    }

    /// Evaluates every guard of `transition` for `token` concurrently.
    /// Denials come back in guard order; the first guard error (in guard
    /// order) fails the whole evaluation closed.
    async fn evaluate_guards(
        &self,
        transition: &Transition,
        token: &Token,
        input: &serde_json::Value,
        actor: &Option<String>,
        fired_at: OffsetDateTime,
    ) -> Result<Vec<Denial>, PluginError> {
        let plugins = {
            let registry = self.inner.plugins.read().expect("lock");
            transition
                .guards
                .iter()
                .map(|g| {
                    registry
                        .resolve(g.plugin.as_str(), g.digest.as_deref(), World::Guard)
                        .cloned()
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let calls = transition.guards.iter().zip(&plugins).map(|(g, plugin)| {
            let args = GuardArgs {
                token,
                transition,
                config: &g.config,
                input,
                actor,
                fired_at,
            };
            let source = self.inner.source.clone();
            plugin.evaluate_with(args, source)
        });
        let mut denials = Vec::new();
        for (g, result) in transition.guards.iter().zip(join_all(calls).await) {
            match result?.value {
                Decision::Allow => {}
                Decision::Deny {
                    code,
                    message,
                    details,
                } => denials.push(Denial {
                    plugin: g.plugin.to_string(),
                    code,
                    message,
                    details,
                }),
            }
        }
        Ok(denials)
    }

    /// Fires a transition. See the module docs for the steps.
    pub async fn fire(&self, req: FireRequest) -> Result<Fired, FireError> {
        let started = Instant::now();
        let result = self.fire_inner(&req).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match &result {
            Ok(f) => tracing::info!(
                workflow = %req.workflow, token = %req.token, transition = %req.transition,
                outcome = "fired", to = %f.token.place, revision = f.token.revision, attempts = f.attempts, ms,
                "firing"
            ),
            Err(e) => tracing::info!(
                workflow = %req.workflow, token = %req.token, transition = %req.transition,
                outcome = e.kind(), error = %e, ms,
                "firing"
            ),
        }
        result
    }

    async fn fire_inner(&self, req: &FireRequest) -> Result<Fired, FireError> {
        let max = if req.expected_revision.is_some() {
            1
        } else {
            self.inner.config.max_attempts.max(1)
        };
        // Where the token is read from. This engine's own last write of it
        // first (no read at all); a Direct Get, which on a replicated stream
        // may come from a replica that lags; the stream leader. A refusal
        // must not rest on a read that may be stale: a revision older than
        // expected, a place the transition does not start from, or a denial
        // read from the cache or a lagging replica is checked again one
        // level up before it is returned, and a lost CAS re-reads from the
        // most authoritative source.
        let lag = self.inner.reader.may_lag();
        let authoritative = |from: ReadFrom| from == ReadFrom::Leader || (from == ReadFrom::Replica && !lag);
        let up = |from: ReadFrom| match from {
            ReadFrom::Cache => ReadFrom::Replica,
            _ => ReadFrom::Leader,
        };
        let fresh = if lag { ReadFrom::Leader } else { ReadFrom::Replica };
        let mut from = ReadFrom::Cache;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.read_token(req, &mut from).await?;
            if let Some(expected) = req.expected_revision
                && token.revision != expected
            {
                if token.revision < expected && !authoritative(from) {
                    from = up(from);
                    attempt -= 1;
                    continue;
                }
                return Err(FireError::Conflict {
                    token: req.token.clone(),
                    attempts: attempt,
                });
            }
            let def = self.definition(&req.workflow, token.definition_version).await?;
            let transition = def
                .definition
                .transition(req.transition.as_str())
                .ok_or_else(|| FireError::UnknownTransition {
                    workflow: req.workflow.clone(),
                    transition: req.transition.clone(),
                    version: def.version,
                })?;
            if !transition.from.contains(&token.place) {
                if !authoritative(from) {
                    from = up(from);
                    attempt -= 1;
                    continue;
                }
                return Err(FireError::NotEnabled {
                    token: req.token.clone(),
                    transition: req.transition.clone(),
                    place: token.place.clone(),
                    from: transition.from.clone(),
                });
            }
            let fired_at = OffsetDateTime::now_utc();
            let denials = self
                .evaluate_guards(transition, &token, &req.input, &req.actor, fired_at)
                .await?;
            if !denials.is_empty() {
                if !authoritative(from) {
                    from = up(from);
                    attempt -= 1;
                    continue;
                }
                return Err(FireError::Denied {
                    transition: req.transition.clone(),
                    denials,
                });
            }
            let mv = Move {
                transition: req.transition.clone(),
                to: transition.to.clone(),
                actor: req.actor.clone(),
                input: req.input.clone(),
                data: None,
                msg_id: req.idempotency_key.clone(),
            };
            let result = self.inner.writer.move_token(&def.definition, &token, mv).await;
            match &result {
                Ok(c) => self.remember(&c.token),
                Err(_) => self.forget(&req.workflow, &req.token),
            }
            match result {
                Ok(c) => {
                    return Ok(Fired {
                        token: c.token,
                        from: token.place.clone(),
                        transition: req.transition.clone(),
                        event_sequence: c.event_sequence,
                        attempts: attempt,
                    });
                }
                // A remembered copy that went stale is not a lost race: it
                // does not use up an attempt.
                Err(StoreError::Conflict { .. }) if from == ReadFrom::Cache => {
                    attempt -= 1;
                    from = fresh;
                }
                Err(StoreError::Conflict { .. }) if attempt < max => {
                    tracing::debug!(token = %req.token, attempt, "lost a race; re-reading");
                    from = fresh;
                }
                Err(StoreError::Conflict { .. }) => {
                    return Err(FireError::Conflict {
                        token: req.token.clone(),
                        attempts: attempt,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// For each transition from the token's place: can it fire now, and if
    /// not, why (every denial, or the guard error).
    pub async fn enabled(&self, workflow: &Id, token: &Id) -> Result<(Token, Vec<Enabled>), FireError> {
        let token = self.inner.reader.get_token(workflow, token).await?;
        let def = self.definition(workflow, token.definition_version).await?;
        let fired_at = OffsetDateTime::now_utc();
        let mut out = Vec::new();
        for t in def.definition.transitions_from(token.place.as_str()) {
            let (enabled, denials, error) = match self
                .evaluate_guards(t, &token, &serde_json::Value::Null, &None, fired_at)
                .await
            {
                Ok(d) => (d.is_empty(), d, None),
                Err(e) => (false, Vec::new(), Some(e.to_string())),
            };
            out.push(Enabled {
                transition: t.id.clone(),
                to: t.to.clone(),
                enabled,
                denials,
                error,
            });
        }
        Ok((token, out))
    }

    /// Completes a token (CAS on the revision read now).
    pub async fn complete(&self, workflow: &Id, token: &Id, actor: Option<String>) -> Result<u64, FireError> {
        let t = self.inner.reader.get_token(workflow, token).await?;
        self.forget(workflow, token);
        Ok(self.inner.writer.complete_token(&t, actor).await?)
    }

    /// Replaces data and/or metadata of a token in place.
    pub async fn update(
        &self,
        workflow: &Id,
        token: &Id,
        data: Option<serde_json::Value>,
        metadata: Option<Metadata>,
        actor: Option<String>,
    ) -> Result<Token, FireError> {
        let t = self.inner.reader.get_token(workflow, token).await?;
        self.forget(workflow, token);
        let updated = self
            .inner
            .writer
            .update_token(&t, data, metadata, actor)
            .await?
            .token;
        self.remember(&updated);
        Ok(updated)
    }

    fn cached(&self, workflow: &Id, token: &Id) -> Option<Arc<Token>> {
        if self.inner.config.token_cache == 0 {
            return None;
        }
        let key = (workflow.clone(), token.clone());
        self.inner.tokens.lock().expect("lock").get(&key)
    }

    fn remember(&self, token: &Token) {
        if self.inner.config.token_cache == 0 {
            return;
        }
        let key = (token.workflow_id.clone(), token.id.clone());
        let token = Arc::new(token.clone());
        self.inner.tokens.lock().expect("lock").insert(key, token);
    }

    fn forget(&self, workflow: &Id, token: &Id) {
        if self.inner.config.token_cache > 0 {
            let key = (workflow.clone(), token.clone());
            self.inner.tokens.lock().expect("lock").remove(&key);
        }
    }

    /// Reads the token from `from`, falling through to a Direct Get on a
    /// cache miss, and to the leader when a lagging replica says it is not
    /// there.
    async fn read_token(&self, req: &FireRequest, from: &mut ReadFrom) -> Result<Arc<Token>, FireError> {
        let reader = &self.inner.reader;
        if *from == ReadFrom::Cache {
            if let Some(t) = self.cached(&req.workflow, &req.token) {
                return Ok(t);
            }
            *from = ReadFrom::Replica;
        }
        if *from == ReadFrom::Replica {
            match reader.get_token(&req.workflow, &req.token).await {
                Err(StoreError::NotFound(_)) if reader.may_lag() => *from = ReadFrom::Leader,
                other => return Ok(Arc::new(other?)),
            }
        }
        Ok(Arc::new(
            reader.get_token_from_leader(&req.workflow, &req.token).await?,
        ))
    }

    pub(crate) fn writer(&self) -> &StoreWriter {
        &self.inner.writer
    }

    pub(crate) fn source(&self) -> Arc<dyn TokenSource> {
        self.inner.source.clone()
    }
}
