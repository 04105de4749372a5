//! The sandboxed plugin runtime: guards and actions are WebAssembly
//! components built against `wit/`, run on wasmtime with nothing granted
//! and every call bounded in time, fuel and memory.
//!
//! - [`PluginRuntime`]: one engine per host, pooling allocator (with an
//!   on-demand fallback), epoch ticker, compile cache keyed by digest and
//!   engine compatibility hash.
//! - [`Plugin`]: a loaded component (`InstancePre`); each call gets a fresh
//!   store and instance.
//! - [`PluginRegistry`]: plugins by name, loaded from files or directories.

mod bindings;
mod error;
mod limits;
mod registry;
mod runtime;
mod state;

pub use error::PluginError;
pub use limits::{PluginLimits, RuntimeConfig, default_cache_dir};
pub use registry::{PluginInfo, PluginRegistry};
pub(crate) use runtime::GuardArgs;
pub use runtime::{
    ActionInput, Decision, GuardInput, Inspection, LoadSource, LogLevel, LogLine, Outcome, Plugin,
    PluginRuntime, TransitionRequest, World,
};
