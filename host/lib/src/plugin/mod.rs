//! The sandboxed plugin runtime: guards and actions are WebAssembly
//! components built against `wit/`, run on wasmtime with nothing granted,
//! every call bounded in time, fuel, memory and output, on threads of their
//! own so a guest never holds the host's async work.
//!
//! - [`PluginRuntime`] (`engine.rs`): one engine per host, pooling
//!   allocator (with an on-demand fallback), the plugin threads, loading.
//! - `sandbox.rs`: what a component is linked against (WASI with nothing
//!   granted, `wasi:http` refusing every request, trapping stubs for other
//!   WASI imports) and each call's WASI context.
//! - `cache.rs`: compiled components on disk, keyed by digest and engine.
//! - `ticker.rs`: the epoch ticker that interrupts guests.
//! - [`Plugin`] (`call.rs`): a loaded component and the call path; each call
//!   gets a fresh store and instance.
//! - `state.rs`: the host side of the plugin imports (`token-reader`,
//!   `transitions`, `log`), scoped and charged per call.
//! - `compat.rs`: components built against `circuit-breaker:plugin@0.1`.
//! - `output.rs`: the call's log budget and the bounds on plugin text.
//! - [`PluginRegistry`]: plugins by name, loaded from files or directories.

mod bindings;
mod cache;
mod call;
mod compat;
mod engine;
mod error;
mod limits;
mod output;
mod registry;
mod sandbox;
mod state;
mod ticker;
mod types;

pub use call::Plugin;
pub use engine::{PluginRuntime, digest_of};
pub use error::PluginError;
pub use limits::{LOG_LINE_COST, MAX_LOG_LINE, PluginLimits, RuntimeConfig, default_cache_dir};
pub use registry::{PluginInfo, PluginRegistry};
pub(crate) use types::GuardArgs;
pub use types::{
    ActionInput, Decision, GuardInput, Inspection, LoadSource, LogLevel, LogLine, Outcome, TransitionRequest,
    World,
};
