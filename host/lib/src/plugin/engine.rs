//! [`PluginRuntime`]: the wasmtime engine (pooling allocator sized from the
//! configuration, with fallbacks), the plugin threads, and loading:
//! compiling (or the cached artifact), linking, and finding the world.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{action, guard, v0_1};
use super::cache::CompileCache;
use super::call::{Plugin, Pre};
use super::sandbox;
use super::state::CallState;
use super::ticker::Ticker;
use super::{Inspection, LoadSource, PluginError, RuntimeConfig, World};

pub(super) struct Shared {
    pub(super) engine: Engine,
    pub(super) config: RuntimeConfig,
    linker: Linker<CallState>,
    /// Calls in progress (also bounds the pool's instances).
    pub(super) slots: Arc<Semaphore>,
    /// Compilations in progress, for [`PluginRuntime::load_file_async`].
    compiling: Semaphore,
    cache: CompileCache,
    pub(super) ticker: Arc<Ticker>,
    pooling: bool,
    compiles: AtomicU64,
    /// The plugin threads (`None`: calls run in the caller's task).
    pub(super) threads: Option<tokio::runtime::Runtime>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker.stop();
        if let Some(rt) = self.threads.take() {
            // May be dropped inside an async context, where a blocking
            // shutdown would panic; calls in flight hold their own clone.
            rt.shutdown_background();
        }
    }
}

/// The plugin runtime: one wasmtime [`Engine`] for the host, a linker with
/// WASI (nothing granted) and the plugin imports, a pooling allocator, an
/// epoch ticker, the plugin threads, and a compile cache. Cloning is cheap.
#[derive(Clone)]
pub struct PluginRuntime {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("pooling", &self.shared.pooling)
            .field("cache_dir", &self.shared.config.cache_dir)
            .finish()
    }
}

/// How instances are allocated, best first: [`PluginRuntime::new`] takes
/// the first the host supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allocation {
    /// Pooling, resetting only dirtied pages (needs PAGEMAP_SCAN).
    PoolingPagemap,
    /// Pooling, resetting memories with madvise.
    Pooling,
    /// Fresh allocations (when the address space is too small for a pool).
    OnDemand,
}

/// Bytes of a linear memory kept resident between calls (with PAGEMAP_SCAN,
/// only those a call dirtied are reset). A Rust guard touches 1-2 MiB.
const KEEP_RESIDENT: usize = 4 << 20;

fn engine_config(config: &RuntimeConfig, mode: Allocation) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.consume_fuel(true);
    c.max_wasm_stack(config.max_wasm_stack);
    // Linear memories are reserved up to the largest allowed size, not the
    // 4 GiB default, so many instances fit the address space.
    let reservation = (config.max_memory_bytes as u64).next_power_of_two().max(1 << 20);
    c.memory_reservation(reservation);
    c.memory_guard_size(64 << 10);
    c.memory_reservation_for_growth(0);
    if mode != Allocation::OnDemand {
        let n = config.max_concurrent_calls.max(1) as u32;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_memory_size(config.max_memory_bytes)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(16);
        if mode == Allocation::PoolingPagemap {
            // Reusing a slot: PAGEMAP_SCAN (Linux >= 6.7) finds the pages a
            // call dirtied and they are reset by memset, instead of an
            // madvise of the whole memory (a TLB shootdown on every call)
            // followed by page faults on the next: guard calls take less
            // than half the time. Dirty pages above the resident size are
            // still returned to the OS, which bounds the pool's memory.
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT.min(config.max_memory_bytes))
                .table_keep_resident(64 << 10);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

fn runtime_error(reason: impl ToString) -> PluginError {
    PluginError::Io {
        plugin: "<runtime>".into(),
        reason: reason.to_string(),
    }
}

/// The plugin threads: a small runtime of its own, at a lower scheduling
/// priority, so a guest spinning to its deadline competes with other
/// guests, not with the host's async work.
fn plugin_threads(config: &RuntimeConfig) -> Result<Option<tokio::runtime::Runtime>, PluginError> {
    if config.plugin_threads == 0 {
        return Ok(None);
    }
    let nice = config.plugin_thread_nice;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.plugin_threads)
        .thread_name("cb-plugin")
        .enable_all()
        .on_thread_start(move || {
            if nice != 0 {
                // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes
                // the calling thread's niceness on Linux; no memory is
                // touched. Best effort: a refusal leaves the default.
                #[cfg(target_os = "linux")]
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                }
            }
        })
        .build()
        .map(Some)
        .map_err(|e| runtime_error(format!("cannot start the plugin threads: {e}")))
}

impl PluginRuntime {
    /// Builds the engine. Tries the pooling allocator sized from `config`
    /// and falls back to on-demand allocation when the address space is too
    /// small for the pool (logged).
    pub fn new(config: RuntimeConfig) -> Result<Self, PluginError> {
        let mut engine = None;
        for mode in [
            Allocation::PoolingPagemap,
            Allocation::Pooling,
            Allocation::OnDemand,
        ] {
            match Engine::new(&engine_config(&config, mode)) {
                Ok(e) => {
                    tracing::debug!(?mode, "wasm engine ready");
                    engine = Some((e, mode));
                    break;
                }
                Err(e) if mode == Allocation::OnDemand => {
                    return Err(runtime_error(format!("cannot create the wasm engine: {e}")));
                }
                Err(e) if mode == Allocation::Pooling => {
                    tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "PAGEMAP_SCAN unavailable; pooling with madvise resets")
                }
            }
        }
        let (engine, mode) = engine.expect("on-demand allocation either works or returned");
        let linker = sandbox::base_linker(&engine)?;
        let ticker = Arc::new(Ticker::new());
        {
            let (engine, ticker, tick) = (engine.clone(), ticker.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("cb-epoch".into())
                .spawn(move || ticker.run(&engine, tick))
                .map_err(runtime_error)?;
        }
        Ok(PluginRuntime {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
                compiling: Semaphore::new(config.compile_concurrency.max(1)),
                cache: CompileCache::new(config.cache_dir.clone(), &engine),
                threads: plugin_threads(&config)?,
                engine,
                config,
                linker,
                ticker,
                pooling: mode != Allocation::OnDemand,
                compiles: AtomicU64::new(0),
            }),
        })
    }

    /// Whether the pooling allocator is in use (false after the fallback).
    pub fn is_pooling(&self) -> bool {
        self.shared.pooling
    }

    /// How many components this runtime has compiled (cache misses).
    pub fn compile_count(&self) -> u64 {
        self.shared.compiles.load(Ordering::Relaxed)
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Loads the plugin in `path`, named after the file stem. Compiling
    /// blocks the calling thread (seconds for a Python or JS component): in
    /// async code use [`load_file_async`](Self::load_file_async).
    pub fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|e| PluginError::Io {
            plugin: name.clone(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        self.load(&name, &bytes)
    }

    /// [`load_file`](Self::load_file) on a blocking thread, at most
    /// [`RuntimeConfig::compile_concurrency`] at once: several plugins load
    /// in parallel, and memory while compiling stays bounded.
    ///
    /// The blocking thread is the plugin threads' own, at their
    /// [niceness](RuntimeConfig::plugin_thread_nice): compiling is
    /// background work like running guests. At the host's priority a
    /// plugin loaded while the host serves (seconds of compiling for a
    /// Python or JS one) would take the CPU from the guests of every
    /// firing, whose wall-clock deadlines would then measure the wait.
    pub async fn load_file_async(&self, path: &Path) -> Result<Plugin, PluginError> {
        let _permit = self
            .shared
            .compiling
            .acquire()
            .await
            .expect("semaphore is never closed");
        let (rt, path) = (self.clone(), path.to_path_buf());
        let load = move || rt.load_file(&path);
        let task = match self.shared.threads.as_ref() {
            Some(threads) => threads.spawn_blocking(load),
            None => tokio::task::spawn_blocking(load),
        };
        task.await
            .map_err(|e| runtime_error(format!("loading a plugin panicked: {e}")))?
    }

    /// Loads a plugin from component bytes: checks it is a component,
    /// compiles it (or loads the cached artifact), and checks that it
    /// targets the guard or action world.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let digest = digest_of(bytes);
        check_header(bytes).map_err(|reason| PluginError::InvalidComponent {
            plugin: name.to_string(),
            reason,
        })?;
        let started = Instant::now();
        let (component, source) = self.compile_cached(name, &digest, bytes)?;
        let load_time = started.elapsed();
        let world = detect_world(&self.shared.engine, name, &component)?;
        let pre = sandbox::instantiate_pre(&self.shared.linker, &self.shared.engine, name, &component)?;
        // The current interface first; a component built against 0.1
        // types its export with the 0.1 records.
        let pre = match world {
            World::Guard => match guard::GuardPre::new(pre.clone()) {
                Ok(p) => Pre::Guard(p),
                Err(e) => Pre::GuardV0_1(v0_1::guard::GuardPre::new(pre).map_err(|_| {
                    PluginError::IncompatibleInterface {
                        plugin: name.to_string(),
                        missing: vec![format!("export `evaluate` of the guard world: {e:#}")],
                    }
                })?),
            },
            World::Action => match action::ActionPre::new(pre.clone()) {
                Ok(p) => Pre::Action(p),
                Err(e) => Pre::ActionV0_1(v0_1::action::ActionPre::new(pre).map_err(|_| {
                    PluginError::IncompatibleInterface {
                        plugin: name.to_string(),
                        missing: vec![format!("export `run` of the action world: {e:#}")],
                    }
                })?),
            },
        };
        tracing::debug!(plugin = name, %digest, %world, ?source, ?load_time, "plugin loaded");
        crate::metrics::plugin_loaded(name, load_time);
        Ok(Plugin::new(
            self.clone(),
            name,
            digest,
            world,
            source,
            load_time,
            bytes.len(),
            pre,
        ))
    }

    fn compile_cached(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, LoadSource), PluginError> {
        let engine = &self.shared.engine;
        if let Some(c) = self.shared.cache.load(engine, digest) {
            return Ok((c, LoadSource::Cache));
        }
        // One compile per artifact in this process: a second load of the
        // same plugin (another runtime, another directory) waits for the
        // first and then reads the cache, instead of compiling it again.
        let _compiling = self.shared.cache.path(digest).map(compile_lock);
        if let Some(c) = self.shared.cache.load(engine, digest) {
            return Ok((c, LoadSource::Cache));
        }
        let component = Component::new(engine, bytes).map_err(|e| PluginError::InvalidComponent {
            plugin: name.to_string(),
            reason: format!("{e:#}"),
        })?;
        self.shared.compiles.fetch_add(1, Ordering::Relaxed);
        self.shared.cache.store(digest, &component);
        Ok((component, LoadSource::Compiled))
    }

    /// Describes a component without running it.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<Inspection, PluginError> {
        let digest = digest_of(bytes);
        check_header(bytes).map_err(|reason| PluginError::InvalidComponent {
            plugin: name.to_string(),
            reason,
        })?;
        let (component, _) = self.compile_cached(name, &digest, bytes)?;
        let ty = component.component_type();
        let engine = &self.shared.engine;
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        let mut wit_versions: Vec<String> = imports
            .iter()
            .filter_map(|i| i.strip_prefix("circuit-breaker:plugin/"))
            .filter_map(|i| i.split_once('@').map(|(_, v)| v.to_string()))
            .collect();
        wit_versions.sort();
        wit_versions.dedup();
        let (world, problem) = match self.load(name, bytes) {
            Ok(p) => (Some(p.world()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Inspection {
            name: name.to_string(),
            digest,
            size: bytes.len(),
            world,
            problem,
            imports,
            exports,
            wit_versions,
        })
    }
}

/// The artifacts being compiled in this process, and a signal when one is
/// done.
fn compiling() -> &'static (
    std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
    std::sync::Condvar,
) {
    static STATE: std::sync::OnceLock<(
        std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
        std::sync::Condvar,
    )> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default)
}

/// Held while `path`'s artifact is compiled (see `compile_cached`); waits
/// while another thread compiles it.
fn compile_lock(path: std::path::PathBuf) -> CompileGuard {
    let (set, done) = compiling();
    let mut busy = set.lock().unwrap_or_else(|e| e.into_inner());
    while busy.contains(&path) {
        busy = done.wait(busy).unwrap_or_else(|e| e.into_inner());
    }
    busy.insert(path.clone());
    CompileGuard(path)
}

struct CompileGuard(std::path::PathBuf);

impl Drop for CompileGuard {
    fn drop(&mut self) {
        let (set, done) = compiling();
        set.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
        done.notify_all();
    }
}

/// A plugin's identity: `sha256:<hex>` of its component bytes (what a
/// definition's `digest` pins).
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Refuses what is obviously not a component before compiling.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header)".into());
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "a core WebAssembly module, not a component: build for the wasm32-wasip2 target, \
                                         or wrap it with `wasm-tools component new`"
                .into(),
        ),
        other => Err(format!("unknown WebAssembly version/layer {other:02x?}")),
    }
}

/// The world from the component's exports.
fn detect_world(engine: &Engine, name: &str, component: &Component) -> Result<World, PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    match (
        exports.iter().any(|e| e == "evaluate"),
        exports.iter().any(|e| e == "run"),
    ) {
        (true, false) => Ok(World::Guard),
        (false, true) => Ok(World::Action),
        (true, true) => Err(PluginError::IncompatibleInterface {
            plugin: name.to_string(),
            missing: vec!["one world: the component exports both `evaluate` and `run`".into()],
        }),
        (false, false) => Err(PluginError::IncompatibleInterface {
            plugin: name.to_string(),
            missing: vec![format!(
                "export `evaluate` (guard world) or `run` (action world) of circuit-breaker:plugin@0.2.0 (or 0.1.x); it exports {exports:?}"
            )],
        }),
    }
}
