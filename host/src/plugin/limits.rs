//! Per-call limits and runtime configuration.

use std::path::PathBuf;
use std::time::Duration;

/// Limits applied to every call of a plugin. Each breach ends the call with
/// a typed [`PluginError`](super::PluginError) naming the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Wall-clock deadline for one call, host calls included.
    #[serde(with = "millis")]
    pub deadline: Duration,
    /// Fuel (roughly, wasm instructions) for one call.
    pub fuel: u64,
    /// Largest linear memory, in bytes.
    pub memory_bytes: usize,
    /// Bytes of data the host may hand the plugin through `token-reader` in
    /// one call (tokens, pages, workflows), so a plugin cannot make the host
    /// buffer unbounded data.
    pub host_data_bytes: usize,
    /// Bytes of log output (the `log` import plus stdout/stderr) kept per
    /// call; the rest is dropped.
    pub log_bytes: usize,
    /// Follow-up transition requests an action may make per call.
    pub max_requests: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            deadline: Duration::from_millis(200),
            // A backstop: the deadline binds first for normal code (a tight
            // loop burns ~10^9 units in well under a second here).
            fuel: 10_000_000_000,
            memory_bytes: 64 << 20,
            host_data_bytes: 4 << 20,
            log_bytes: 64 << 10,
            max_requests: 16,
        }
    }
}

mod millis {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms: u64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

/// How the plugin runtime is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Limits for plugins that do not override them.
    pub default_limits: PluginLimits,
    /// Plugin calls that may run at once; also sizes the pooling allocator.
    /// Further calls wait for a slot.
    pub max_concurrent_calls: usize,
    /// Largest memory any plugin may be given (sizes the pool's slots);
    /// per-plugin limits above it are clamped.
    pub max_memory_bytes: usize,
    /// Where compiled components are cached (`None` disables the cache).
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of wall-clock deadlines.
    pub epoch_tick: Duration,
    /// Wasm stack size, in bytes; deeper recursion is a `StackOverflow`.
    pub max_wasm_stack: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default_limits: PluginLimits::default(),
            max_concurrent_calls: 64,
            max_memory_bytes: 64 << 20,
            cache_dir: default_cache_dir(),
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 512 << 10,
        }
    }
}

/// `$XDG_CACHE_HOME/circuit-breaker/components`, or
/// `~/.cache/circuit-breaker/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("circuit-breaker").join("components"))
}
