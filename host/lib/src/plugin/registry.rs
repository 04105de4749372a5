//! Plugins by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{LoadSource, Plugin, PluginError, PluginRuntime, World};

/// What `plugin list` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PluginInfo {
    /// Name (file stem).
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Guard or action.
    pub world: World,
    /// Component size in bytes.
    pub size: usize,
}

/// The loaded plugins, by name.
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    plugins: BTreeMap<String, Plugin>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a plugin under its name.
    pub fn insert(&mut self, plugin: Plugin) {
        self.plugins.insert(plugin.name().to_string(), plugin);
    }

    /// The `*.wasm` files in `dir` (not recursive), in name order.
    pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, PluginError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PluginError::Io {
            plugin: dir.display().to_string(),
            reason: format!("cannot read plugin directory: {e}"),
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Loads every `*.wasm` file in `dir` (not recursive), in name order,
    /// on this thread. Stops at the first plugin that fails to load: a host
    /// should not run with half its plugins.
    pub fn load_dir(&mut self, runtime: &PluginRuntime, dir: &Path) -> Result<Vec<PluginInfo>, PluginError> {
        let mut loaded = Vec::new();
        for path in Self::plugin_files(dir)? {
            let plugin = runtime.load_file(&path)?;
            loaded.push(info(&plugin));
            self.insert(plugin);
        }
        Ok(loaded)
    }

    /// [`load_dir`](Self::load_dir) with the plugins compiled in parallel on
    /// the blocking pool ([`PluginRuntime::load_file_async`]), each logged
    /// with its size, load time and whether it came from the cache. Fails
    /// with the first error in name order; nothing is inserted then.
    pub async fn load_dir_async(
        &mut self,
        runtime: &PluginRuntime,
        dir: &Path,
    ) -> Result<Vec<PluginInfo>, PluginError> {
        let paths = Self::plugin_files(dir)?;
        let loads = paths.iter().map(|p| runtime.load_file_async(p));
        let plugins = futures::future::join_all(loads)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut loaded = Vec::new();
        for plugin in plugins {
            tracing::info!(
                plugin = %plugin.name(),
                digest = %plugin.digest(),
                world = %plugin.world(),
                size = plugin.size(),
                load_ms = format!("{:.1}", plugin.load_time().as_secs_f64() * 1e3),
                compiled = plugin.load_source() == LoadSource::Compiled,
                "plugin loaded"
            );
            loaded.push(info(&plugin));
            self.insert(plugin);
        }
        Ok(loaded)
    }

    /// The plugin `name`.
    pub fn get(&self, name: &str) -> Result<&Plugin, PluginError> {
        self.plugins.get(name).ok_or_else(|| PluginError::NotFound {
            plugin: name.to_string(),
        })
    }

    /// The plugin `name`, checked against a definition's digest pin and the
    /// world it is used as.
    pub fn resolve(&self, name: &str, digest: Option<&str>, world: World) -> Result<&Plugin, PluginError> {
        let plugin = self.get(name)?;
        if let Some(expected) = digest
            && expected != plugin.digest()
        {
            return Err(PluginError::DigestMismatch {
                plugin: name.to_string(),
                expected: expected.to_string(),
                actual: plugin.digest().to_string(),
            });
        }
        if plugin.world() != world {
            return Err(PluginError::WrongWorld {
                plugin: name.to_string(),
                expected: world.to_string(),
                actual: plugin.world().to_string(),
            });
        }
        Ok(plugin)
    }

    /// Every loaded plugin, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.plugins.values().map(info).collect()
    }
}

fn info(p: &Plugin) -> PluginInfo {
    PluginInfo {
        name: p.name().to_string(),
        digest: p.digest().to_string(),
        world: p.world(),
        size: p.size(),
    }
}
