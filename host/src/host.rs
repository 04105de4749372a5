//! [`Host`]: the embeddable host — storage, plugins, engine, and optionally
//! the service API and the action dispatcher — behind one builder.

use std::path::PathBuf;

use crate::engine::{
    Dispatcher, DispatcherConfig, Enabled, Engine, EngineConfig, FireError, FireRequest, Fired,
};
use crate::model::{DefinitionError, Event, Id, Metadata, StoredDefinition, Token, WorkflowDefinition};
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
}

/// Builds a [`Host`].
#[derive(Debug, Default)]
pub struct HostBuilder {
    client: Option<async_nats::Client>,
    url: Option<String>,
    store: Option<StoreConfig>,
    runtime: Option<RuntimeConfig>,
    engine: EngineConfig,
    plugin_dirs: Vec<PathBuf>,
}

impl HostBuilder {
    /// Use this NATS connection.
    pub fn client(mut self, client: async_nats::Client) -> Self {
        self.client = Some(client);
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

    /// Connects, opens the store (checking the server and the stream), and
    /// loads the plugins.
    pub async fn build(self) -> Result<Host, HostError> {
        let client = match (self.client, self.url) {
            (Some(c), _) => c,
            (None, Some(url)) => connect(&url).await?,
            (None, None) => return Err(HostError::Connect("no NATS client or URL given".into())),
        };
        let store = Store::open(client.clone(), self.store.unwrap_or_default()).await?;
        let runtime = PluginRuntime::new(self.runtime.unwrap_or_default())?;
        let mut registry = PluginRegistry::new();
        for dir in &self.plugin_dirs {
            let loaded = registry.load_dir(&runtime, dir)?;
            for p in loaded {
                tracing::info!(plugin = %p.name, digest = %p.digest, world = %p.world, "plugin loaded");
            }
        }
        let engine = Engine::new(store, registry, self.engine);
        Ok(Host {
            client,
            engine,
            runtime,
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
    let mut options = async_nats::ConnectOptions::new().name("cb-host");
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

/// An embeddable Circuit Breaker host. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Host {
    client: async_nats::Client,
    engine: Engine,
    runtime: PluginRuntime,
}

impl Host {
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

    /// Stores a definition (a no-op if unchanged); returns the stored version.
    pub async fn apply_workflow(&self, def: &WorkflowDefinition) -> Result<StoredDefinition, HostError> {
        let stored = self.engine.store().writer().put_definition(def).await?;
        tracing::info!(workflow = %def.id, version = stored.version, "workflow applied");
        Ok(stored)
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
        Ok(self
            .engine
            .create_token(
                workflow,
                NewToken {
                    id,
                    data,
                    metadata,
                    actor,
                },
            )
            .await?
            .token)
    }

    /// The workflow of a token: `workflow` if given, else looked up.
    pub async fn resolve_workflow(&self, workflow: Option<&Id>, token: &Id) -> Result<Id, HostError> {
        match workflow {
            Some(w) => Ok(w.clone()),
            None => Ok(self.engine.store().reader().find_token(token).await?.workflow_id),
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
        let reader = self.engine.store().reader();
        let def = reader.get_definition(workflow).await?;
        if !def.definition.has_place(place.as_str()) {
            return Err(StoreError::NotFound(crate::store::Missing::Place {
                workflow: workflow.clone(),
                place: place.clone(),
            })
            .into());
        }
        Ok(reader.list_place(workflow, place, cursor, limit).await?)
    }

    /// One page of a token's history (also of a completed token).
    pub async fn history(
        &self,
        workflow: Option<&Id>,
        token: &Id,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Event>, HostError> {
        let workflow = match workflow {
            Some(w) => w.clone(),
            None => self.engine.store().reader().token_workflow(token).await?,
        };
        Ok(self
            .engine
            .store()
            .reader()
            .history(&workflow, token, cursor, limit)
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
        let workflow = self.resolve_workflow(workflow, token).await?;
        Ok(self.engine.complete(&workflow, token, actor).await?)
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.engine.plugins().list()
    }

    /// Starts the service API and the action dispatcher.
    pub async fn serve(&self, dispatcher: DispatcherConfig) -> Result<Serving, HostError> {
        let service = crate::api::start_service(self.clone()).await?;
        let dispatcher = Dispatcher::start(self.engine.clone(), dispatcher).await?;
        Ok(Serving { service, dispatcher })
    }
}

/// The service API and the dispatcher, running.
#[derive(Debug)]
pub struct Serving {
    service: crate::api::Service,
    dispatcher: Dispatcher,
}

impl Serving {
    /// Graceful stop: no new requests or events; those in progress finish.
    pub async fn shutdown(self) {
        self.service.stop().await;
        self.dispatcher.shutdown().await;
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
