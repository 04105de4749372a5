//! The wasmtime engine, compile cache, and the call path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

use super::bindings::{self, action, guard};
use super::state::{self, CallState, Caller, MemoryLimiter};
use super::{PluginError, PluginLimits, RuntimeConfig};
use crate::store::TokenSource;

/// The world a plugin targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Exports `evaluate`: decides whether a transition may fire.
    Guard,
    /// Exports `run`: runs after a transition committed.
    Action,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Guard => "guard",
            World::Action => "action",
        })
    }
}

/// How a component was obtained: compiled now or loaded from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled from the `.wasm` bytes (and cached, if a cache is set).
    Compiled,
    /// Deserialized from a cached artifact: no compilation.
    Cache,
}

struct Shared {
    engine: Engine,
    config: RuntimeConfig,
    linker: Linker<CallState>,
    slots: Semaphore,
    /// Hex of `Engine::precompile_compatibility_hash`, part of cache keys.
    compat: String,
    ticker: Arc<Ticker>,
    pooling: bool,
    compiles: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Idle ticks after which the epoch ticker parks until the next call.
const PARK_AFTER_TICKS: u32 = 200;

/// The epoch ticker's state. Epochs only matter while guest code runs, so
/// the ticker parks after [`PARK_AFTER_TICKS`] ticks without a call in
/// progress (an idle host does not wake up every tick), and the first call
/// wakes it. Under load it never parks, and a call costs one atomic add.
struct Ticker {
    stop: AtomicBool,
    /// Calls in progress.
    active: AtomicUsize,
    /// Set while the ticker waits on `wake`.
    parked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Ticker {
    fn new() -> Self {
        Ticker {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Runs on the `cb-epoch` thread until [`Ticker::stop`].
    fn run(&self, engine: &Engine, tick: Duration) {
        let mut idle = 0;
        while !self.stop.load(Ordering::SeqCst) {
            if self.active.load(Ordering::SeqCst) > 0 {
                idle = 0;
            } else if idle < PARK_AFTER_TICKS {
                idle += 1;
            } else {
                // `parked` is set before `active` is read again (SeqCst on
                // both sides): a call either sees it and wakes the ticker
                // under the lock, or is seen here and the ticker stays up.
                let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.parked.store(true, Ordering::SeqCst);
                let guard = self
                    .wake
                    .wait_while(guard, |_| {
                        self.active.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst)
                    })
                    .unwrap_or_else(|e| e.into_inner());
                self.parked.store(false, Ordering::SeqCst);
                drop(guard);
                idle = 0;
            }
            std::thread::sleep(tick);
            engine.increment_epoch();
        }
    }

    /// Marks a call in progress until the guard drops, waking the ticker if
    /// it parked.
    fn enter(self: &Arc<Self>) -> Ticking {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_one();
        }
        Ticking(self.clone())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_one();
    }
}

/// A call in progress, for the ticker.
struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The plugin runtime: one wasmtime [`Engine`] for the host, a linker with
/// WASI (nothing granted) and the plugin imports, a pooling allocator, an
/// epoch ticker, and a compile cache. Cloning is cheap.
#[derive(Clone)]
pub struct PluginRuntime {
    shared: Arc<Shared>,
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
                    return Err(PluginError::Io {
                        plugin: "<runtime>".into(),
                        reason: format!("cannot create the wasm engine: {e}"),
                    });
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
        let pooling = mode != Allocation::OnDemand;
        let mut linker: Linker<CallState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        action::Action::add_to_linker::<_, wasmtime::component::HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(link_error)?;
        let compat = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let ticker = Arc::new(Ticker::new());
        {
            let (engine, ticker, tick) = (engine.clone(), ticker.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("cb-epoch".into())
                .spawn(move || ticker.run(&engine, tick))
                .map_err(|e| PluginError::Io {
                    plugin: "<runtime>".into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(PluginRuntime {
            shared: Arc::new(Shared {
                slots: Semaphore::new(config.max_concurrent_calls.max(1)),
                engine,
                config,
                linker,
                compat,
                ticker,
                pooling,
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

    /// Loads the plugin in `path`, named after the file stem.
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

    /// Loads a plugin from component bytes: checks it is a component,
    /// compiles it (or loads the cached artifact), and checks that it
    /// targets the guard or action world.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let invalid = |reason: String| PluginError::InvalidComponent {
            plugin: name.to_string(),
            reason,
        };
        check_header(bytes).map_err(invalid)?;
        let started = Instant::now();
        let (component, source) = self.compile_cached(name, &digest, bytes)?;
        let load_time = started.elapsed();
        let world = detect_world(&self.shared.engine, name, &component)?;
        let pre = self.shared.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::IncompatibleInterface {
                plugin: name.to_string(),
                missing: vec![format!("{e:#}")],
            }
        })?;
        let pre =
            match world {
                World::Guard => {
                    Pre::Guard(
                        guard::GuardPre::new(pre).map_err(|e| PluginError::IncompatibleInterface {
                            plugin: name.to_string(),
                            missing: vec![format!("export `evaluate` of the guard world: {e:#}")],
                        })?,
                    )
                }
                World::Action => Pre::Action(action::ActionPre::new(pre).map_err(|e| {
                    PluginError::IncompatibleInterface {
                        plugin: name.to_string(),
                        missing: vec![format!("export `run` of the action world: {e:#}")],
                    }
                })?),
            };
        tracing::debug!(plugin = name, %digest, %world, ?source, ?load_time, "plugin loaded");
        Ok(Plugin {
            runtime: self.clone(),
            caller: Arc::new(Caller {
                name: name.to_string(),
                digest: digest.clone(),
            }),
            world,
            source,
            load_time,
            size: bytes.len(),
            pre: Arc::new(pre),
            limits: self.shared.config.default_limits,
        })
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.shared.config.cache_dir.as_ref()?;
        let hex = digest.trim_start_matches("sha256:");
        Some(dir.join(format!("{hex}-{}.cwasm", self.shared.compat)))
    }

    fn compile_cached(
        &self,
        name: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, LoadSource), PluginError> {
        let engine = &self.shared.engine;
        if let Some(path) = self.cache_path(digest)
            && path.exists()
        {
            // SAFETY: the artifact was written by this program's own
            // `Component::serialize` for an engine with the same
            // compatibility hash (part of the file name), under a digest of
            // the exact source bytes. A corrupt or foreign file fails
            // wasmtime's header checks and is recompiled below.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, LoadSource::Cache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| PluginError::InvalidComponent {
            plugin: name.to_string(),
            reason: format!("{e:#}"),
        })?;
        self.shared.compiles.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = self.cache_path(digest)
            && let Err(e) = write_cache(&path, &component)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled component");
        }
        Ok((component, LoadSource::Compiled))
    }
}

fn write_cache(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename: a reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn link_error(e: wasmtime::Error) -> PluginError {
    PluginError::Io {
        plugin: "<runtime>".into(),
        reason: format!("linking the plugin interface failed: {e}"),
    }
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

/// What `plugin inspect` shows: the component's identity and interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inspection {
    /// Name (file stem).
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: usize,
    /// The world it targets, when it fits one.
    pub world: Option<World>,
    /// Why it does not load, when it does not.
    pub problem: Option<String>,
    /// Imported interfaces (e.g. `circuit-breaker:plugin/token-reader@0.1.0`).
    pub imports: Vec<String>,
    /// Exports (e.g. `evaluate`).
    pub exports: Vec<String>,
    /// Versions of the `circuit-breaker:plugin` package it imports.
    pub wit_versions: Vec<String>,
}

impl PluginRuntime {
    /// Describes a component without running it.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<Inspection, PluginError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
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
                "export `evaluate` (guard world) or `run` (action world) of circuit-breaker:plugin@0.1.0; it exports {exports:?}"
            )],
        }),
    }
}

enum Pre {
    Guard(guard::GuardPre<CallState>),
    Action(action::ActionPre<CallState>),
}

/// A loaded plugin: compiled, linked and ready to instantiate. Each call
/// gets a fresh `Store` and instance, so nothing leaks between calls and a
/// trapped instance is never re-entered.
#[derive(Clone)]
pub struct Plugin {
    runtime: PluginRuntime,
    caller: Arc<Caller>,
    world: World,
    source: LoadSource,
    load_time: Duration,
    size: usize,
    pre: Arc<Pre>,
    limits: PluginLimits,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.caller.name)
            .field("digest", &self.caller.digest)
            .field("world", &self.world)
            .finish()
    }
}

/// A guard's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Decision {
    /// The transition may fire.
    Allow,
    /// It may not.
    Deny {
        /// Machine-readable reason.
        code: String,
        /// For people.
        message: String,
        /// Structured details.
        details: serde_json::Value,
    },
}

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info (also guest stdout).
    Info,
    /// Warn (also guest stderr).
    Warn,
    /// Error.
    Error,
}

/// A line a plugin logged during a call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A follow-up firing an action asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransitionRequest {
    /// The workflow.
    pub workflow_id: crate::model::Id,
    /// The token.
    pub token_id: crate::model::Id,
    /// The transition to fire.
    pub transition: crate::model::Id,
    /// Input for the transition's guards.
    pub input: serde_json::Value,
}

/// What a guard is asked.
#[derive(Debug, Clone)]
pub struct GuardInput {
    /// The token to move.
    pub token: crate::model::Token,
    /// The transition.
    pub transition: crate::model::Transition,
    /// The guard's config from the definition.
    pub config: serde_json::Value,
    /// The caller's input.
    pub input: serde_json::Value,
    /// Who fires.
    pub actor: Option<String>,
    /// The firing time: the plugin's clock reads it, and with the token
    /// it seeds the plugin's randomness.
    pub fired_at: OffsetDateTime,
}

/// A [`GuardInput`] borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardArgs<'a> {
    pub(crate) token: &'a crate::model::Token,
    pub(crate) transition: &'a crate::model::Transition,
    pub(crate) config: &'a serde_json::Value,
    pub(crate) input: &'a serde_json::Value,
    pub(crate) actor: &'a Option<String>,
    pub(crate) fired_at: OffsetDateTime,
}

/// What an action runs with.
#[derive(Debug, Clone)]
pub struct ActionInput {
    /// Sequence of the transition event (idempotency key).
    pub event_sequence: u64,
    /// The token after the move.
    pub token: crate::model::Token,
    /// The transition.
    pub transition: crate::model::Transition,
    /// Where the token came from.
    pub from: crate::model::Id,
    /// Where it went.
    pub to: crate::model::Id,
    /// Who fired.
    pub actor: Option<String>,
    /// The caller's input.
    pub input: serde_json::Value,
    /// The action's config.
    pub config: serde_json::Value,
    /// When the transition committed.
    pub fired_at: OffsetDateTime,
}

/// The result of a call, with what the plugin logged.
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    /// The guard's decision, or the action's requests.
    pub value: T,
    /// Log lines (the `log` import, stdout, stderr), up to the log budget.
    pub logs: Vec<LogLine>,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Wall time of the call, instantiation included.
    pub duration: Duration,
}

/// A clock stuck at the firing's time.
struct FixedClock(Duration);

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.as_nanos() as u64
    }
}

/// The plugin's randomness: SplitMix64 seeded from a SHA-256 of the
/// plugin digest and the firing, so the same firing always sees the same
/// numbers. Not cryptographic, on purpose: guards must be reproducible.
struct SeededRng(u64);

impl SeededRng {
    fn new(seed: &[u8]) -> Self {
        let h = Sha256::digest(seed);
        SeededRng(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl rand_core_wasi::TryRng for SeededRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.next() as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, buf: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl Plugin {
    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.caller.name
    }

    /// `sha256:<hex>` of the component bytes: the plugin's identity.
    pub fn digest(&self) -> &str {
        &self.caller.digest
    }

    /// The world it targets.
    pub fn world(&self) -> World {
        self.world
    }

    /// Whether it was compiled or loaded from the cache.
    pub fn load_source(&self) -> LoadSource {
        self.source
    }

    /// How long loading took (compile or deserialize, link checks excluded).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Size of the component file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The limits its calls run under.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// The same plugin with other limits (memory clamped to the runtime's
    /// maximum).
    pub fn with_limits(mut self, mut limits: PluginLimits) -> Self {
        limits.memory_bytes = limits
            .memory_bytes
            .min(self.runtime.shared.config.max_memory_bytes);
        self.limits = limits;
        self
    }

    fn new_store(
        &self,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: &[u8],
        action: bool,
    ) -> Store<CallState> {
        let limits = self.limits;
        let since_epoch = Duration::from_nanos(
            (fired_at - OffsetDateTime::UNIX_EPOCH)
                .whole_nanoseconds()
                .clamp(0, u64::MAX as i128) as u64,
        );
        let stdout = MemoryOutputPipe::new(limits.log_bytes);
        let stderr = MemoryOutputPipe::new(limits.log_bytes);
        let mut seed_material = self.caller.digest.as_bytes().to_vec();
        seed_material.extend_from_slice(seed);
        let mut rng = SeededRng::new(&seed_material);
        let insecure_seed = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        // Nothing granted: no preopened dirs, env, args, network or name
        // lookups. Output is captured; clocks and randomness are fixed.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedClock(since_epoch))
            .monotonic_clock(FixedClock(since_epoch))
            .secure_random(SeededRng(rng.next()))
            .insecure_random(SeededRng(rng.next()))
            .insecure_random_seed(insecure_seed)
            .allow_ip_name_lookup(false)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max: limits.memory_bytes,
                refused: None,
            },
            caller: self.caller.clone(),
            source,
            limits,
            data_budget: limits.host_data_bytes,
            log_budget: limits.log_bytes,
            logs: Vec::new(),
            stdout,
            stderr,
            requests: action.then(Vec::new),
            deadline: Instant::now() + limits.deadline,
        };
        let mut store = Store::new(&self.runtime.shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        let tick = self.runtime.shared.config.epoch_tick.as_nanos().max(1);
        let ticks = limits.deadline.as_nanos().div_ceil(tick) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Classifies a failed call from the store's own records first (a
    /// refused memory grow may surface as an `unreachable` trap or as an
    /// error that is not a `Trap`), then from the trap code.
    fn classify(&self, store: &Store<CallState>, err: wasmtime::Error) -> PluginError {
        let plugin = self.caller.name.clone();
        if store.data().limiter.refused.is_some() {
            return PluginError::MemoryLimit {
                plugin,
                limit_bytes: self.limits.memory_bytes,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout {
                plugin,
                limit_ms: self.limits.deadline.as_millis() as u64,
            },
            Some(Trap::OutOfFuel) => PluginError::OutOfFuel {
                plugin,
                fuel: self.limits.fuel,
            },
            Some(Trap::StackOverflow) => PluginError::StackOverflow { plugin },
            _ => PluginError::Trap {
                plugin,
                message: format!("{err:#}"),
            },
        }
    }

    async fn run_call<T>(
        &self,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: &[u8],
        world: World,
        call: impl AsyncFnOnce(&Pre, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Result<Outcome<(T, Option<Vec<TransitionRequest>>)>, PluginError> {
        if world != self.world {
            return Err(PluginError::WrongWorld {
                plugin: self.caller.name.clone(),
                expected: world.to_string(),
                actual: self.world.to_string(),
            });
        }
        let _slot = self
            .runtime
            .shared
            .slots
            .acquire()
            .await
            .expect("semaphore is never closed");
        let _ticking = self.runtime.shared.ticker.enter();
        let started = Instant::now();
        let mut store = self.new_store(source, fired_at, seed, world == World::Action);
        // Epoch interruption stops guest code; the timeout also bounds time
        // spent in async host calls, where epochs do not fire.
        let deadline = self.limits.deadline + self.runtime.shared.config.epoch_tick * 2;
        let result = tokio::time::timeout(deadline, call(&self.pre, &mut store)).await;
        let duration = started.elapsed();
        store.data_mut().drain_output();
        let result = match result {
            Err(_) => Err(PluginError::Timeout {
                plugin: self.caller.name.clone(),
                limit_ms: self.limits.deadline.as_millis() as u64,
            }),
            Ok(Err(e)) => Err(self.classify(&store, e)),
            Ok(Ok(v)) => Ok(v),
        };
        let fuel_used = self.limits.fuel - store.get_fuel().unwrap_or(0);
        let state = store.data_mut();
        let logs = std::mem::take(&mut state.logs);
        let requests = state.requests.take();
        let value = result?;
        Ok(Outcome {
            value: (value, requests),
            logs,
            fuel_used,
            duration,
        })
    }

    /// Evaluates a guard. `source` serves its `token-reader` import.
    pub async fn evaluate(
        &self,
        input: &GuardInput,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Decision>, PluginError> {
        let args = GuardArgs {
            token: &input.token,
            transition: &input.transition,
            config: &input.config,
            input: &input.input,
            actor: &input.actor,
            fired_at: input.fired_at,
        };
        self.evaluate_with(args, source).await
    }

    /// [`Plugin::evaluate`] from borrowed parts: the engine's path, which
    /// would otherwise copy the token and the transition for every guard.
    pub(crate) async fn evaluate_with(
        &self,
        input: GuardArgs<'_>,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Decision>, PluginError> {
        let ctx = bindings::types::GuardContext {
            token: state::wit_token(input.token),
            transition: state::wit_transition(input.transition),
            config: input.config.to_string(),
            input: input.input.to_string(),
            actor: input.actor.clone(),
            fired_at: state::timestamp(input.fired_at),
        };
        let seed = format!(
            "{}|{}|{}|{}",
            input.token.workflow_id, input.token.id, input.token.revision, input.transition.id
        );
        let out = self
            .run_call(
                source,
                input.fired_at,
                seed.as_bytes(),
                World::Guard,
                async |pre, store| {
                    let Pre::Guard(pre) = pre else {
                        unreachable!("world checked")
                    };
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.call_evaluate(&mut *store, &ctx).await
                },
            )
            .await?;
        let decision = match out.value.0 {
            bindings::types::Decision::Allow => Decision::Allow,
            bindings::types::Decision::Deny(d) => Decision::Deny {
                code: d.code,
                message: d.message,
                details: serde_json::from_str(&d.details).unwrap_or(serde_json::Value::String(d.details)),
            },
        };
        Ok(Outcome {
            value: decision,
            logs: out.logs,
            fuel_used: out.fuel_used,
            duration: out.duration,
        })
    }

    /// Runs an action; returns the follow-up firings it requested (to be
    /// fired by the caller only when the action succeeded).
    pub async fn run_action(
        &self,
        input: &ActionInput,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Vec<TransitionRequest>>, PluginError> {
        let ctx = bindings::types::ActionContext {
            event_sequence: input.event_sequence,
            token: state::wit_token(&input.token),
            transition: state::wit_transition(&input.transition),
            from: input.from.to_string(),
            to: input.to.to_string(),
            actor: input.actor.clone(),
            input: input.input.to_string(),
            config: input.config.to_string(),
            fired_at: state::timestamp(input.fired_at),
        };
        let seed = format!("event|{}", input.event_sequence);
        let out = self
            .run_call(
                source,
                input.fired_at,
                seed.as_bytes(),
                World::Action,
                async |pre, store| {
                    let Pre::Action(pre) = pre else {
                        unreachable!("world checked")
                    };
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.call_run(&mut *store, &ctx).await
                },
            )
            .await?;
        let (result, requests) = out.value;
        if let Err(message) = result {
            return Err(PluginError::Failed {
                plugin: self.caller.name.clone(),
                message,
            });
        }
        Ok(Outcome {
            value: requests.unwrap_or_default(),
            logs: out.logs,
            fuel_used: out.fuel_used,
            duration: out.duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Id, Token, Transition};
    use crate::store::MemorySource;

    fn guard_input(config: serde_json::Value) -> GuardInput {
        let id = |s: &str| Id::new(s).unwrap();
        let now = OffsetDateTime::now_utc();
        GuardInput {
            token: Token {
                id: id("t1"),
                workflow_id: id("wf"),
                definition_version: 1,
                place: id("a"),
                data: serde_json::json!({}),
                metadata: Default::default(),
                created_at: now,
                updated_at: now,
                revision: 1,
                subject: "cb.workflows.wf.places.a.tokens.t1".into(),
            },
            transition: Transition {
                id: id("go"),
                from: vec![id("a")],
                to: id("b"),
                guards: vec![],
                actions: vec![],
            },
            config,
            input: serde_json::Value::Null,
            actor: None,
            fired_at: now,
        }
    }

    /// An idle ticker parks; the next call wakes it, so a guest that never
    /// returns is still stopped at its deadline. Were the ticker left
    /// parked, the loop would hold its worker; the outer timeout, driven by
    /// the other worker, then stops it by hand and fails the test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_ticker_wakes_for_the_next_call_and_its_deadline_holds() {
        let cache = tempfile::tempdir().unwrap();
        let rt = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            epoch_tick: Duration::from_millis(1),
            ..Default::default()
        })
        .unwrap();
        let looping = rt
            .load_file(Path::new(cb_test_plugins::MISBEHAVE))
            .unwrap()
            .with_limits(PluginLimits {
                deadline: Duration::from_millis(50),
                fuel: u64::MAX / 2,
                ..Default::default()
            });
        let ticker = rt.shared.ticker.clone();
        for round in 0..2 {
            let parked_by = Instant::now() + Duration::from_secs(10);
            while !ticker.parked.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < parked_by,
                    "round {round}: the idle ticker never parked"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let source: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
            let input = guard_input(serde_json::json!({ "do": "loop" }));
            let mut call = {
                let looping = looping.clone();
                tokio::spawn(async move { looping.evaluate(&input, source).await })
            };
            let e = match tokio::time::timeout(Duration::from_secs(10), &mut call).await {
                Ok(done) => done.unwrap().unwrap_err(),
                Err(_) => {
                    // Stop the guest by hand so the runtime can shut down.
                    for _ in 0..1000 {
                        rt.shared.engine.increment_epoch();
                    }
                    let _ = call.await;
                    panic!("round {round}: the deadline did not stop the loop: the ticker stayed parked");
                }
            };
            assert!(matches!(e, PluginError::Timeout { limit_ms: 50, .. }), "{e}");
            assert_eq!(ticker.active.load(Ordering::SeqCst), 0, "the call is over");
        }
    }
}
