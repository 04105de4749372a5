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
mod keys;
mod locks;
mod reads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tracing::Instrument;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use dispatch::{Dispatcher, DispatcherConfig};
pub use error::{DENIAL_TEXT_IN_ERRORS, Denial, FireError};
pub(crate) use keys::{check as check_key, keyed_apply, keyed_create};

use cache::TokenCache;
use reads::PluginReads;

use crate::model::{Id, Metadata, NotFirable, StoredDefinition, Token, Transition};
use crate::plugin::{Decision, GuardArgs, PluginError, PluginRegistry, World};
use crate::store::{
    Committed, FireMarks, Idempotency, NewToken, Store, StoreError, StoreReader, StoreWriter, TokenSource,
};

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
    /// How long a firing waits for a plugin that is still loading (a host
    /// answers while its plugins compile) before it fails as `unavailable`
    /// ([`PluginError::Loading`]).
    pub plugin_load_wait: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_attempts: 3,
            plugin_load_wait: std::time::Duration::from_secs(60),
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
    /// Idempotency key: a retry with the same key (and the same request)
    /// returns the original firing (same token, revision and event
    /// sequence), for as long as the store remembers keys
    /// ([`StoreConfig::idempotency_ttl`](crate::store::StoreConfig::idempotency_ttl)),
    /// whichever host handled the first; the same key with another request
    /// is `invalid`.
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
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
    /// The firing completed the token: its marking (`token.marking`, the
    /// one it ended in) was final or empty. It is no longer live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub completed: bool,
}

/// Whether one transition can fire now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
    /// Plugins announced but not loaded yet, and a signal for each load.
    loading: Mutex<std::collections::HashSet<String>>,
    loaded: tokio::sync::Notify,
    /// Definition versions are immutable: cached forever.
    definitions: Mutex<HashMap<(Id, u64), Arc<StoredDefinition>>>,
    /// See [`EngineConfig::token_cache`].
    tokens: Mutex<TokenCache>,
    /// One firing per token at a time in this engine (see `locks`).
    locks: locks::TokenLocks,
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
    /// An engine over `store` with the plugins in `plugins`. Plugins read
    /// through the store's own connection; see
    /// [`with_plugin_reader`](Self::with_plugin_reader).
    pub fn new(store: Store, plugins: PluginRegistry, config: EngineConfig) -> Self {
        let reader = store.reader();
        Self::with_plugin_reader(store, plugins, config, reader)
    }

    /// An engine whose plugins read through `plugin_reader` (e.g.
    /// [`Store::reader_on`] a NATS connection of their own, so that even a
    /// server-side stall of a plugin's read cannot hold up the API's
    /// connection). Either way the bytes plugin reads have in flight are
    /// bounded, below what would get a connection dropped as a slow
    /// consumer.
    pub fn with_plugin_reader(
        store: Store,
        plugins: PluginRegistry,
        config: EngineConfig,
        plugin_reader: StoreReader,
    ) -> Self {
        let reader = store.reader();
        Engine {
            inner: Arc::new(Inner {
                source: Arc::new(PluginReads::new(plugin_reader, PluginReads::DEFAULT_BYTES)),
                writer: store.writer(),
                reader,
                store,
                plugins: RwLock::new(plugins),
                loading: Mutex::new(Default::default()),
                loaded: tokio::sync::Notify::new(),
                definitions: Mutex::new(HashMap::new()),
                tokens: Mutex::new(TokenCache::new(config.token_cache)),
                locks: Default::default(),
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

    /// Announces plugins that are being loaded: a firing that needs one
    /// waits for it (up to [`EngineConfig::plugin_load_wait`]) instead of
    /// failing as not found.
    pub fn expect_plugins(&self, names: impl IntoIterator<Item = String>) {
        self.inner.loading.lock().expect("lock").extend(names);
    }

    /// Adds a plugin that finished loading (announced or not).
    pub fn add_plugin(&self, plugin: crate::plugin::Plugin) {
        let name = plugin.name().to_string();
        self.inner.plugins.write().expect("lock").insert(plugin);
        self.inner.loading.lock().expect("lock").remove(&name);
        self.inner.loaded.notify_waiters();
    }

    /// An announced plugin that will not load (its error was logged): it is
    /// now simply not there.
    pub fn plugin_failed(&self, name: &str) {
        self.inner.loading.lock().expect("lock").remove(name);
        self.inner.loaded.notify_waiters();
    }

    /// Whether `name` is announced and still loading.
    pub fn is_loading(&self, name: &str) -> bool {
        self.inner.loading.lock().expect("lock").contains(name)
    }

    /// Waits until none of `names` is still loading, up to the configured
    /// bound; false if the bound passed first.
    async fn wait_for_plugins<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> bool {
        let deadline = tokio::time::Instant::now() + self.inner.config.plugin_load_wait;
        loop {
            let notified = self.inner.loaded.notified();
            if !names.clone().any(|n| self.is_loading(n)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
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
    ///
    /// A token with that id already live is [`StoreError::Exists`]. With
    /// `new.idempotency` set, a retry with the same key returns the token as
    /// first created (same id, revision and event sequence), and the key
    /// with another request is [`StoreError::KeyReused`].
    pub async fn create_token(&self, workflow: &Id, new: NewToken) -> Result<Committed, StoreError> {
        let key = new.idempotency.clone();
        if let Some(k) = &key
            && let Some(done) = self.created_before(workflow, k).await?
        {
            return Ok(done);
        }
        let id = new.id.clone();
        let def = self.inner.reader.get_definition(workflow).await?;
        let committed = match self.inner.writer.create_token(&def, new).await {
            Ok(c) => c,
            Err(StoreError::Conflict { token, actual, .. }) => {
                // Either the id is taken, or (keyed) a retry of this very
                // request won a race with it.
                if let Some(k) = &key
                    && let Some(done) = self.created_before(workflow, k).await?
                {
                    return Ok(done);
                }
                return Err(StoreError::Exists {
                    workflow: workflow.clone(),
                    token: id.unwrap_or(token),
                    revision: actual,
                });
            }
            Err(e) => return Err(e),
        };
        self.remember(&committed.token);
        tracing::info!(workflow = %workflow, token = %committed.token.id, place = %committed.token.place, "token created");
        Ok(committed)
    }

    async fn created_before(
        &self,
        workflow: &Id,
        key: &Idempotency,
    ) -> Result<Option<Committed>, StoreError> {
        let Some(record) = self.inner.reader.key_record(workflow, &key.key).await? else {
            return Ok(None);
        };
        keys::check(&record, key)?;
        let (token, event_sequence) = keys::replay_create(&self.inner.reader, &record).await?;
        Ok(Some(Committed {
            token,
            event_sequence,
        }))
    }

    /// The firing `key` already made, if any (checked against `want`).
    async fn fired_before(&self, workflow: &Id, want: &Idempotency) -> Result<Option<Fired>, FireError> {
        let Some(record) = self.inner.reader.key_record(workflow, &want.key).await? else {
            return Ok(None);
        };
        keys::check(&record, want)?;
        Ok(Some(keys::replay_fire(&self.inner.reader, &record).await?))
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
        let names = transition.guards.iter().map(|g| g.plugin.as_str());
        if names.clone().any(|n| self.is_loading(n)) && !self.wait_for_plugins(names.clone()).await {
            let plugin = names
                .into_iter()
                .find(|n| self.is_loading(n))
                .unwrap_or_default()
                .to_string();
            return Err(PluginError::Loading { plugin });
        }
        let plugins = {
            let registry = self.inner.plugins.read().expect("lock");
            transition
                .guards
                .iter()
                .map(|g| {
                    registry
                        .resolve(g.plugin.as_str(), g.digest.as_deref(), World::Guard)
                        .map(|p| p.for_ref(g))
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
        let span = tracing::info_span!(
            "fire",
            otel.name = %format_args!("fire {}", req.transition),
            workflow = %req.workflow,
            token = %req.token,
            transition = %req.transition,
            outcome = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let result = async {
            let _turn = self.inner.locks.lock(&req.workflow, &req.token).await;
            self.fire_inner(&req).await
        }
        .instrument(span.clone())
        .await;
        let took = started.elapsed();
        let ms = took.as_secs_f64() * 1e3;
        let outcome = match &result {
            Ok(_) => "fired",
            Err(e) => e.kind(),
        };
        crate::metrics::firing(req.workflow.as_str(), req.transition.as_str(), outcome, took);
        span.record("outcome", outcome);
        if let Ok(f) = &result {
            span.record("attempts", i64::from(f.attempts));
        }
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
        let key = req.idempotency_key.as_deref().map(|k| {
            keys::keyed(
                k,
                "fire",
                &keys::FireDigest {
                    workflow: &req.workflow,
                    token: &req.token,
                    transition: &req.transition,
                    input: &req.input,
                    actor: &req.actor,
                    expected_revision: req.expected_revision,
                },
            )
        });
        if let Some(k) = &key
            && let Some(done) = self.fired_before(&req.workflow, k).await?
        {
            return Ok(done);
        }
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
        // One firing, one time: every evaluation of it sees the same clock.
        let fired_at = OffsetDateTime::now_utc();
        // A refusal read from a source that may be stale is checked again
        // one level up. Guards are deterministic (fixed clock, seeded
        // randomness), so when that read shows the same revision, the
        // verdict already reached stands: the guards do not run twice.
        let mut verdict: Option<(u64, Vec<Denial>)> = None;
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
            let marking = token.marks();
            let firing = match transition.fire(&marking, &def.definition.places) {
                Ok(f) => f,
                Err(_) if !authoritative(from) => {
                    from = up(from);
                    attempt -= 1;
                    continue;
                }
                Err(NotFirable::NotEnabled) => {
                    return Err(FireError::NotEnabled {
                        token: req.token.clone(),
                        transition: req.transition.clone(),
                        from: transition.inputs().to_vec(),
                        marking,
                        join: !transition.join.is_empty(),
                    });
                }
                Err(NotFirable::Unsafe(place)) => {
                    return Err(FireError::Unsafe {
                        token: req.token.clone(),
                        transition: req.transition.clone(),
                        place,
                    });
                }
            };
            let denials = match verdict.take() {
                Some((revision, denials)) if revision == token.revision => denials,
                _ => {
                    self.evaluate_guards(transition, &token, &req.input, &req.actor, fired_at)
                        .await?
                }
            };
            if !denials.is_empty() {
                if !authoritative(from) {
                    verdict = Some((token.revision, denials));
                    from = up(from);
                    attempt -= 1;
                    continue;
                }
                return Err(FireError::Denied {
                    transition: req.transition.clone(),
                    denials,
                });
            }
            let completed = def.definition.is_final(&firing.marking);
            let fm = FireMarks {
                transition: req.transition.clone(),
                complete: completed,
                consumed: firing.consumed.clone(),
                produced: firing.produced,
                cancelled: firing.cancelled,
                marking: firing.marking,
                actor: req.actor.clone(),
                input: req.input.clone(),
                data: None,
                msg_id: None,
                idempotency: key.clone(),
                actions: !transition.actions.is_empty(),
            };
            let result = self.inner.writer.fire_token(&token, fm).await;
            match &result {
                Ok(c) if !completed => self.remember(&c.token),
                _ => self.forget(&req.workflow, &req.token),
            }
            // A keyed firing that lost a race may have lost it to a retry
            // of itself (its key is taken): then that is the outcome.
            if let (Err(StoreError::Conflict { .. }), Some(k)) = (&result, &key)
                && let Some(done) = self.fired_before(&req.workflow, k).await?
            {
                return Ok(done);
            }
            match result {
                Ok(c) => {
                    return Ok(Fired {
                        token: c.token,
                        from: firing.consumed[0].clone(),
                        transition: req.transition.clone(),
                        event_sequence: c.event_sequence,
                        attempts: attempt,
                        completed,
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
        let marking = token.marks();
        let mut out = Vec::new();
        // Every transition the token's marks feed; one that needs a mark it
        // does not have (half of a join) is listed as not enabled.
        for t in def
            .definition
            .transitions
            .iter()
            .filter(|t| t.inputs().iter().any(|p| marking.contains(p)))
        {
            let to = t
                .outputs()
                .first()
                .or(t.inputs().first())
                .cloned()
                .expect("inputs");
            let (enabled, denials, error) = match t.fire(&marking, &def.definition.places) {
                Err(NotFirable::NotEnabled) => {
                    (false, Vec::new(), Some("not every input place is marked".into()))
                }
                Err(NotFirable::Unsafe(p)) => (false, Vec::new(), Some(format!("it would mark `{p}` twice"))),
                Ok(_) => match self
                    .evaluate_guards(t, &token, &serde_json::Value::Null, &None, fired_at)
                    .await
                {
                    Ok(d) => (d.is_empty(), d, None),
                    Err(e) => (false, Vec::new(), Some(e.to_string())),
                },
            };
            out.push(Enabled {
                transition: t.id.clone(),
                to,
                enabled,
                denials,
                error,
            });
        }
        Ok((token, out))
    }

    /// Completes a token (CAS on the revision read now).
    pub async fn complete(&self, workflow: &Id, token: &Id, actor: Option<String>) -> Result<u64, FireError> {
        self.complete_keyed(workflow, token, actor, None).await
    }

    /// [`complete`](Self::complete) under an idempotency key: a retry with
    /// the same key returns the original `completed` event's sequence.
    pub async fn complete_keyed(
        &self,
        workflow: &Id,
        token: &Id,
        actor: Option<String>,
        key: Option<&str>,
    ) -> Result<u64, FireError> {
        self.complete_expecting(workflow, token, actor, key, None).await
    }

    /// [`complete_keyed`](Self::complete_keyed), only if the token is still
    /// at `expected_revision` (when given): a compare-and-swap on the
    /// revision the caller saw, `Conflict` otherwise.
    pub async fn complete_expecting(
        &self,
        workflow: &Id,
        token: &Id,
        actor: Option<String>,
        key: Option<&str>,
        expected_revision: Option<u64>,
    ) -> Result<u64, FireError> {
        let _turn = self.inner.locks.lock(workflow, token).await;
        #[derive(Serialize)]
        struct Digest<'a> {
            workflow: &'a Id,
            token: &'a Id,
            actor: &'a Option<String>,
        }
        let key = key.map(|k| {
            keys::keyed(
                k,
                "complete",
                &Digest {
                    workflow,
                    token,
                    actor: &actor,
                },
            )
        });
        let before = async |k: &Idempotency| -> Result<Option<u64>, FireError> {
            match self.inner.reader.key_record(workflow, &k.key).await? {
                Some(r) => {
                    keys::check(&r, k)?;
                    Ok(Some(keys::replay_complete(&self.inner.reader, &r).await?))
                }
                None => Ok(None),
            }
        };
        if let Some(k) = &key
            && let Some(seq) = before(k).await?
        {
            return Ok(seq);
        }
        let t = match self.inner.reader.get_token(workflow, token).await {
            Err(StoreError::NotFound(m)) => {
                // Completed by a retry of this request that raced it?
                if let Some(k) = &key
                    && let Some(seq) = before(k).await?
                {
                    return Ok(seq);
                }
                return Err(FireError::NotFound(m));
            }
            other => other?,
        };
        if let Some(expected) = expected_revision
            && t.revision != expected
        {
            return Err(FireError::Conflict {
                token: token.clone(),
                attempts: 1,
            });
        }
        self.forget(workflow, token);
        match self
            .inner
            .writer
            .complete_token_keyed(&t, actor, key.as_ref())
            .await
        {
            Err(StoreError::Conflict { .. }) if key.is_some() => {
                match before(key.as_ref().expect("some")).await? {
                    Some(seq) => Ok(seq),
                    None => Err(FireError::Conflict {
                        token: token.clone(),
                        attempts: 1,
                    }),
                }
            }
            other => Ok(other?),
        }
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
        let _turn = self.inner.locks.lock(workflow, token).await;
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
