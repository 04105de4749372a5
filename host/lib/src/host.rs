//! [`Host`]: the embeddable host (storage, plugins, engine) behind one
//! builder. Serving it (the service API and the action dispatcher) is
//! [`crate::api::serve`]: the API is built on the host, not the other way
//! round.

use std::path::PathBuf;

use crate::engine::{Enabled, Engine, EngineConfig, FireError, FireRequest, Fired};
use serde::{Deserialize, Serialize};

use crate::model::{
    DefinitionError, Event, Finding, Id, Metadata, Severity, StoredDefinition, Token, WorkflowDefinition,
};
use crate::plugin::{PluginError, PluginInfo, PluginRegistry, PluginRuntime, RuntimeConfig};
use crate::store::{NewToken, Page, Store, StoreConfig, StoreError};

/// Errors of the host API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    /// Could not connect to NATS or start a component.
    #[error("{0}")]
    Connect(String),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Firing.
    #[error(transparent)]
    Fire(#[from] FireError),
    /// Plugins.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A definition file.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// Files.
    #[error("{0}")]
    Io(String),
    /// A definition that cannot run on this host: plugins it names are not
    /// loaded, are of the other world, do not match a pinned digest, or ask
    /// for limits over the host's maxima. Every problem is listed; nothing
    /// was stored.
    #[error("definition `{workflow}` cannot run on this host: {}", .problems.join("; "))]
    Unrunnable {
        /// The workflow.
        workflow: Id,
        /// One line per problem, each naming its JSON path.
        problems: Vec<String>,
    },
    /// The soundness check found parts of the net that can never work
    /// (dead transitions, places never marked, final places no case
    /// reaches). Nothing was stored.
    #[error("definition `{workflow}` is not sound: {}", .findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.message.as_str()).collect::<Vec<_>>().join("; "))]
    Unsound {
        /// The workflow.
        workflow: Id,
        /// Everything the check found (errors and warnings).
        findings: Vec<Finding>,
    },
}

/// A stored definition and the soundness check's warnings on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Applied {
    /// The stored definition.
    #[serde(flatten)]
    pub stored: StoredDefinition,
    /// What some run of the net may run into (deadlocks, double marks...):
    /// see [`WorkflowDefinition::check_soundness`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Finding>,
}

/// How a definition is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Remember the apply under this key: a retry gets the stored version.
    pub idempotency_key: Option<String>,
    /// Store it even if plugins it names are not loaded here yet (they are
    /// deployed later): only their digests' shape and the limits are
    /// checked. Firing still fails closed until they are loaded.
    pub allow_missing_plugins: bool,
}

/// Builds a [`Host`].
#[derive(Debug, Default)]
pub struct HostBuilder {
    client: Option<async_nats::Client>,
    plugin_client: Option<async_nats::Client>,
    url: Option<String>,
    store: Option<StoreConfig>,
    runtime: Option<RuntimeConfig>,
    engine: EngineConfig,
    plugin_dirs: Vec<PathBuf>,
    background: bool,
}

impl HostBuilder {
    /// Use this NATS connection.
    pub fn client(mut self, client: async_nats::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The connection plugin reads go through. By default a host built
    /// from a URL opens a second connection for them, and a host given a
    /// [`client`](Self::client) uses that one.
    pub fn plugin_client(mut self, client: async_nats::Client) -> Self {
        self.plugin_client = Some(client);
        self
    }

    /// Connect to these NATS URLs (comma-separated for a cluster).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Storage settings (stream, prefix, replicas, timeouts...). Default:
    /// [`StoreConfig::production`] (3 replicas); use
    /// [`StoreConfig::development`] for one server.
    pub fn store(mut self, config: StoreConfig) -> Self {
        self.store = Some(config);
        self
    }

    /// Plugin runtime settings (limits, cache directory...).
    pub fn runtime(mut self, config: RuntimeConfig) -> Self {
        self.runtime = Some(config);
        self
    }

    /// Engine settings.
    pub fn engine(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Load every `*.wasm` in `dir` at build time.
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dirs.push(dir.into());
        self
    }

    /// Load the plugin directories in the background: [`build`](Self::build)
    /// returns once the store is open, and the plugins arrive as they
    /// compile (several at once, each logged); a firing that needs one
    /// still loading waits for it, up to
    /// [`EngineConfig::plugin_load_wait`]. A host with big (Python, JS)
    /// plugins and an empty compile cache answers at once this way.
    pub fn load_plugins_in_background(mut self, yes: bool) -> Self {
        self.background = yes;
        self
    }

    /// Connects, opens the store (checking the server and the stream), and
    /// loads the plugins.
    pub async fn build(self) -> Result<Host, HostError> {
        let client = match (self.client, &self.url) {
            (Some(c), _) => c,
            (None, Some(url)) => connect(url).await?,
            (None, None) => return Err(HostError::Connect("no NATS client or URL given".into())),
        };
        let store = Store::open(client.clone(), self.store.unwrap_or_default()).await?;
        // Plugin reads on a connection of their own: a stall in one of them
        // (or a server that drops it) cannot take the API's down.
        let plugin_client = match (self.plugin_client, &self.url) {
            (Some(c), _) => c,
            (None, Some(url)) => connect_named(url, "cb-host-plugin-reads").await?,
            (None, None) => client.clone(),
        };
        let plugin_reader = store.reader_on(plugin_client).await?;
        let runtime = PluginRuntime::new(self.runtime.unwrap_or_default())?;
        let mut registry = PluginRegistry::new();
        if !self.background {
            for dir in &self.plugin_dirs {
                registry.load_dir_async(&runtime, dir).await?;
            }
        }
        let engine = Engine::with_plugin_reader(store, registry, self.engine, plugin_reader);
        let mut loading = Vec::new();
        if self.background {
            let mut files = Vec::new();
            for dir in &self.plugin_dirs {
                files.extend(PluginRegistry::plugin_files(dir)?);
            }
            engine.expect_plugins(
                files
                    .iter()
                    .filter_map(|f| f.file_stem())
                    .map(|s| s.to_string_lossy().into_owned()),
            );
            for file in files {
                let (runtime, engine) = (runtime.clone(), engine.clone());
                loading.push(tokio::spawn(async move {
                    match runtime.load_file_async(&file).await {
                        Ok(p) => {
                            tracing::info!(
                                plugin = %p.name(), digest = %p.digest(), world = %p.world(), size = p.size(),
                                load_ms = format!("{:.1}", p.load_time().as_secs_f64() * 1e3),
                                compiled = p.load_source() == crate::plugin::LoadSource::Compiled,
                                "plugin loaded"
                            );
                            engine.add_plugin(p);
                            Ok(())
                        }
                        Err(e) => {
                            tracing::error!(file = %file.display(), error = %e, "plugin failed to load");
                            let name = file
                                .file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            engine.plugin_failed(&name);
                            Err(HostError::Plugin(e))
                        }
                    }
                }));
            }
        }
        Ok(Host {
            client,
            engine,
            runtime,
            loading: std::sync::Arc::new(std::sync::Mutex::new(loading)),
        })
    }
}

/// `urls` with any password or token replaced by `***`, for logs and errors.
pub fn redact_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &u[scheme + 3..at];
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => "***".to_string(),
                };
                format!("{}{shown}{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to one or more comma-separated NATS URLs (the client fails
/// over between them). A URL may carry credentials: `user:password@` or
/// `token@`.
pub async fn connect(urls: &str) -> Result<async_nats::Client, HostError> {
    connect_named(urls, "cb-host").await
}

/// [`connect`], with the connection named `name` (shown by the server's
/// monitoring, e.g. `nats server report connections`).
async fn connect_named(urls: &str, name: &str) -> Result<async_nats::Client, HostError> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| {
            u.trim()
                .parse()
                .map_err(|e| HostError::Connect(format!("bad NATS URL {:?}: {e}", redact_credentials(u))))
        })
        .collect::<Result<_, _>>()?;
    // async-nats 0.51 does not send the user info of a URL; do it here
    // (`nats://user:password@host` or `nats://token@host`).
    let mut options = async_nats::ConnectOptions::new().name(name);
    if let Some(a) = addrs.iter().find(|a| a.has_user_pass()) {
        let user = a.username().unwrap_or_default().to_string();
        options = match a.password() {
            Some(pass) => options.user_and_password(user, pass.to_string()),
            None => options.token(user),
        };
    }
    options.connect(addrs).await.map_err(|e| {
        HostError::Connect(format!(
            "cannot connect to NATS at {}: {e}",
            redact_credentials(urls)
        ))
    })
}

/// The background plugin loads a host was started with, each to report
/// once.
type PluginLoads = std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<Result<(), HostError>>>>>;

/// An embeddable Circuit Breaker host. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Host {
    client: async_nats::Client,
    engine: Engine,
    runtime: PluginRuntime,
    /// Background plugin loads still to report (see
    /// [`Host::plugins_loaded`]).
    loading: PluginLoads,
}

impl Host {
    /// Waits for the plugins loading in the background
    /// ([`HostBuilder::load_plugins_in_background`]) and returns the first
    /// that failed: a host that was given a broken plugin should stop
    /// rather than run without it. Returns at once when nothing is loading
    /// (or another call already waited).
    pub async fn plugins_loaded(&self) -> Result<(), HostError> {
        let handles = std::mem::take(&mut *self.loading.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first = None;
        for h in handles {
            let r = h
                .await
                .unwrap_or_else(|e| Err(HostError::Io(format!("a plugin load task ended: {e}"))));
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Starts building a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The engine (fire, enabled, definitions...).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The plugin runtime.
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// Stores a definition (a no-op if unchanged); returns the stored
    /// version. Refused with every problem listed
    /// ([`HostError::Unrunnable`]) when it cannot run here.
    pub async fn apply_workflow(&self, def: &WorkflowDefinition) -> Result<StoredDefinition, HostError> {
        Ok(self
            .apply_workflow_with(def, &ApplyOptions::default())
            .await?
            .stored)
    }

    /// [`apply_workflow`](Self::apply_workflow) with options; the reply
    /// carries the soundness check's warnings. A definition the check finds
    /// errors in is refused ([`HostError::Unsound`]).
    pub async fn apply_workflow_with(
        &self,
        def: &WorkflowDefinition,
        options: &ApplyOptions,
    ) -> Result<Applied, HostError> {
        def.validate()?;
        let report = def.check_soundness();
        if !report.is_sound() {
            return Err(HostError::Unsound {
                workflow: def.id.clone(),
                findings: report.findings,
            });
        }
        let warnings: Vec<Finding> = report.warnings().cloned().collect();
        for w in &warnings {
            tracing::warn!(workflow = %def.id, code = ?w.code, "{}", w.message);
        }
        let stored = self.store_definition(def, options).await?;
        Ok(Applied { stored, warnings })
    }

    async fn store_definition(
        &self,
        def: &WorkflowDefinition,
        options: &ApplyOptions,
    ) -> Result<StoredDefinition, HostError> {
        let problems = self.check_definition(def, options.allow_missing_plugins);
        if !problems.is_empty() {
            return Err(HostError::Unrunnable {
                workflow: def.id.clone(),
                problems,
            });
        }
        let writer = self.engine.store().writer();
        let stored = match &options.idempotency_key {
            None => writer.put_definition(def).await?,
            Some(key) => {
                let want = crate::engine::keyed_apply(key, def);
                let reader = self.engine.store().reader();
                let before = async || -> Result<Option<StoredDefinition>, HostError> {
                    match reader.key_record(&def.id, key).await? {
                        Some(r) => {
                            crate::engine::check_key(&r, &want)?;
                            Ok(Some(
                                reader.get_definition_version(&def.id, r.sequence - 1).await?,
                            ))
                        }
                        None => Ok(None),
                    }
                };
                if let Some(done) = before().await? {
                    return Ok(done);
                }
                match writer.put_definition_keyed(def, &want).await {
                    Err(StoreError::Conflict { .. }) => match before().await? {
                        Some(done) => done,
                        None => writer.put_definition(def).await?,
                    },
                    other => other?,
                }
            }
        };
        tracing::info!(workflow = %def.id, version = stored.version, "workflow applied");
        Ok(stored)
    }

    /// What stops `def` from running on this host: every plugin reference
    /// checked (loaded, of the right world, matching its pinned digest, its
    /// limits within the host's maxima), each problem naming its JSON path.
    pub fn check_definition(&self, def: &WorkflowDefinition, allow_missing_plugins: bool) -> Vec<String> {
        use crate::plugin::World;
        let registry = self.engine.plugins();
        let mut problems = Vec::new();
        for (i, t) in def.transitions.iter().enumerate() {
            for (kind, world, refs) in [
                ("guards", World::Guard, &t.guards),
                ("actions", World::Action, &t.actions),
            ] {
                for (j, r) in refs.iter().enumerate() {
                    let path = format!("transitions[{i}].{kind}[{j}]");
                    match registry.resolve(r.plugin.as_str(), r.digest.as_deref(), world) {
                        Ok(_) => {}
                        Err(PluginError::NotFound { .. })
                            if allow_missing_plugins || self.engine.is_loading(r.plugin.as_str()) => {}
                        Err(e) => problems.push(format!("{path}: {e}")),
                    }
                    for p in self.runtime.config().check_overrides(&r.limits) {
                        problems.push(format!("{path}.{p}"));
                    }
                }
            }
        }
        problems
    }

    /// Applies every `*.json` definition in `dir`, in name order.
    pub async fn apply_dir(&self, dir: &std::path::Path) -> Result<Vec<StoredDefinition>, HostError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| HostError::Io(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            let bytes =
                std::fs::read(&p).map_err(|e| HostError::Io(format!("cannot read {}: {e}", p.display())))?;
            let def = WorkflowDefinition::parse(&bytes)
                .map_err(|e| HostError::Io(format!("{}: {e}", p.display())))?;
            out.push(self.apply_workflow(&def).await?);
        }
        Ok(out)
    }

    /// A workflow's definition: the latest, or a given version.
    pub async fn get_workflow(&self, id: &Id, version: Option<u64>) -> Result<StoredDefinition, HostError> {
        let reader = self.engine.store().reader();
        Ok(match version {
            Some(v) => reader.get_definition_version(id, v).await?,
            None => reader.get_definition(id).await?,
        })
    }

    /// The latest definition of every workflow.
    pub async fn list_workflows(&self) -> Result<Vec<StoredDefinition>, HostError> {
        Ok(self.engine.store().reader().list_workflows().await?)
    }

    /// Creates a token in the workflow's initial place.
    pub async fn create_token(
        &self,
        workflow: &Id,
        id: Option<Id>,
        data: serde_json::Value,
        metadata: Metadata,
        actor: Option<String>,
    ) -> Result<Token, HostError> {
        self.create_token_keyed(workflow, id, data, metadata, actor, None)
            .await
    }

    /// [`create_token`](Self::create_token) under an idempotency key: a
    /// retry with the same key and request returns the token as first
    /// created (same id, revision and creation event).
    pub async fn create_token_keyed(
        &self,
        workflow: &Id,
        id: Option<Id>,
        data: serde_json::Value,
        metadata: Metadata,
        actor: Option<String>,
        key: Option<&str>,
    ) -> Result<Token, HostError> {
        let idempotency =
            key.map(|k| crate::engine::keyed_create(k, workflow, id.as_ref(), &data, &metadata, &actor));
        Ok(self
            .engine
            .create_token(
                workflow,
                NewToken {
                    id,
                    data,
                    metadata,
                    actor,
                    idempotency,
                },
            )
            .await?
            .token)
    }

    /// The workflow of a token: `workflow` if given, else the live token's,
    /// else (a completed token) the workflow of its newest event. A keyed
    /// retry of a firing whose token has since completed must still reach
    /// the workflow that holds its key record, to give its original answer.
    pub async fn resolve_workflow(&self, workflow: Option<&Id>, token: &Id) -> Result<Id, HostError> {
        let reader = self.engine.store().reader();
        match workflow {
            Some(w) => Ok(w.clone()),
            None => match reader.find_token(token).await {
                Ok(t) => Ok(t.workflow_id),
                Err(StoreError::NotFound(_)) => Ok(reader.token_workflow(token).await?),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// A live token.
    pub async fn get_token(&self, workflow: Option<&Id>, token: &Id) -> Result<Token, HostError> {
        let reader = self.engine.store().reader();
        Ok(match workflow {
            Some(w) => reader.get_token(w, token).await?,
            None => reader.find_token(token).await?,
        })
    }

    /// One page of a place.
    pub async fn list_tokens(
        &self,
        workflow: &Id,
        place: &Id,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Token>, HostError> {
        self.list_tokens_bounded(workflow, place, cursor, limit, usize::MAX)
            .await
    }

    /// One page of a place, cut at about `max_bytes` of stored tokens.
    pub async fn list_tokens_bounded(
        &self,
        workflow: &Id,
        place: &Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page<Token>, HostError> {
        let reader = self.engine.store().reader();
        let def = reader.get_definition(workflow).await?;
        if !def.definition.has_place(place.as_str()) {
            return Err(StoreError::NotFound(crate::store::Missing::Place {
                workflow: workflow.clone(),
                place: place.clone(),
            })
            .into());
        }
        Ok(reader
            .list_place_bounded(workflow, place, cursor, limit, max_bytes)
            .await?)
    }

    /// One page of a token's history (also of a completed token).
    pub async fn history(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Event>, HostError> {
        self.history_bounded(workflow, token, cursor, limit, usize::MAX)
            .await
    }

    /// One page of a token's history, cut at about `max_bytes` of stored
    /// events.
    pub async fn history_bounded(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page<Event>, HostError> {
        let workflow = self.resolve_workflow(workflow, token).await?;
        Ok(self
            .engine
            .store()
            .reader()
            .history_bounded(&workflow, token, cursor, limit, max_bytes)
            .await?)
    }

    /// Fires a transition.
    pub async fn fire(&self, req: FireRequest) -> Result<Fired, HostError> {
        Ok(self.engine.fire(req).await?)
    }

    /// Which transitions can fire now.
    pub async fn enabled(
        &self,
        workflow: Option<&Id>,
        token: &Id,
    ) -> Result<(Token, Vec<Enabled>), HostError> {
        let workflow = self.resolve_workflow(workflow, token).await?;
        Ok(self.engine.enabled(&workflow, token).await?)
    }

    /// Completes a token; returns the `completed` event's sequence.
    pub async fn complete(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        actor: Option<String>,
    ) -> Result<u64, HostError> {
        self.complete_keyed(workflow, token, actor, None).await
    }

    /// [`complete`](Self::complete) under an idempotency key.
    pub async fn complete_keyed(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        actor: Option<String>,
        key: Option<&str>,
    ) -> Result<u64, HostError> {
        self.complete_expecting(workflow, token, actor, key, None).await
    }

    /// [`complete_keyed`](Self::complete_keyed), only if the token is still
    /// at `expected_revision` (when given; `Conflict` otherwise).
    pub async fn complete_expecting(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        actor: Option<String>,
        key: Option<&str>,
        expected_revision: Option<u64>,
    ) -> Result<u64, HostError> {
        // Also finds a token a retry already completed.
        let workflow = self.resolve_workflow(workflow, token).await?;
        Ok(self
            .engine
            .complete_expecting(&workflow, token, actor, key, expected_revision)
            .await?)
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.engine.plugins().list()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(
            redact_credentials("nats://host:pw@127.0.0.1:4222,nats://tok@h2:4222,nats://h3:4222"),
            "nats://host:***@127.0.0.1:4222,nats://***@h2:4222,nats://h3:4222"
        );
        assert_eq!(redact_credentials("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
