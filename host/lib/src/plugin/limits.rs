//! Per-call limits and runtime configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::model::LimitOverrides;

/// Limits applied to every call of a plugin. Each breach ends the call with
/// a typed [`PluginError`](super::PluginError) naming the plugin.
///
/// Two kinds: what a call may *use* (time, fuel, memory, host data, log
/// output, follow-up requests) and what it may *hand back* (a denial's code,
/// message and details, an action's error, a follow-up's input). Everything
/// a plugin returns is untrusted bytes: its size is checked against these
/// before the host parses, copies, logs or sends it, and a call over one of
/// them fails closed with [`PluginError::OutputTooLarge`](super::PluginError::OutputTooLarge).
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
    /// one call (tokens, pages, workflows). Charged before the host fetches:
    /// a listing asks the server for at most what is left.
    pub host_data_bytes: usize,
    /// Bytes of log output (the `log` import, stdout and stderr together)
    /// per call, each line costing [`LOG_LINE_COST`] on top of its text;
    /// past the budget the rest is dropped.
    pub log_bytes: usize,
    /// Follow-up transition requests an action may make per call.
    pub max_requests: usize,
    /// Longest denial code (also: only `A-Z a-z 0-9 _ -`, as an id).
    pub code_bytes: usize,
    /// Longest denial message.
    pub message_bytes: usize,
    /// Longest denial details (JSON text).
    pub details_bytes: usize,
    /// Deepest nesting of denial details.
    pub details_depth: usize,
    /// Longest error text an action may return.
    pub error_bytes: usize,
    /// Longest input (JSON text) of one follow-up request.
    pub input_bytes: usize,
}

/// What one log line costs against [`PluginLimits::log_bytes`] on top of its
/// text: at least what the host's log adds to it (time, level, target,
/// plugin name and digest), so a flood of empty lines is not free.
pub const LOG_LINE_COST: usize = 256;

/// Longest single log line kept (longer lines are cut, marked with `...`).
pub const MAX_LOG_LINE: usize = 2048;

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
            code_bytes: 128,
            message_bytes: 4 << 10,
            details_bytes: 16 << 10,
            details_depth: 32,
            error_bytes: 4 << 10,
            input_bytes: 16 << 10,
        }
    }
}

impl PluginLimits {
    /// The most a definition may ask for with [`LimitOverrides`], unless
    /// the host is configured otherwise ([`RuntimeConfig::max_limits`]).
    pub fn maxima() -> Self {
        PluginLimits {
            deadline: Duration::from_secs(10),
            fuel: 1_000_000_000_000,
            memory_bytes: 256 << 20,
            host_data_bytes: 64 << 20,
            log_bytes: 1 << 20,
            max_requests: 256,
            code_bytes: 128,
            message_bytes: 64 << 10,
            details_bytes: 256 << 10,
            details_depth: 64,
            error_bytes: 64 << 10,
            input_bytes: 256 << 10,
        }
    }

    /// These limits with `o`'s fields in place of their own.
    pub fn with_overrides(mut self, o: &LimitOverrides) -> Self {
        if let Some(ms) = o.deadline {
            self.deadline = Duration::from_millis(ms);
        }
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        take!(
            fuel,
            memory_bytes,
            host_data_bytes,
            log_bytes,
            max_requests,
            code_bytes,
            message_bytes,
            details_bytes,
            details_depth,
            error_bytes,
            input_bytes
        );
        self
    }

    /// Every field of `self` over its counterpart in `max`, named, as
    /// `limits.<field> is N, more than the host's maximum of M`.
    pub fn over(&self, max: &PluginLimits) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, v: u128, m: u128| {
            if v > m {
                out.push(format!(
                    "limits.{name} is {v}, more than the host's maximum of {m}"
                ));
            }
        };
        check("deadline", self.deadline.as_millis(), max.deadline.as_millis());
        check("fuel", self.fuel.into(), max.fuel.into());
        macro_rules! sizes {
            ($($f:ident),*) => { $( check(stringify!($f), self.$f as u128, max.$f as u128); )* };
        }
        sizes!(
            memory_bytes,
            host_data_bytes,
            log_bytes,
            max_requests,
            code_bytes,
            message_bytes,
            details_bytes,
            details_depth,
            error_bytes,
            input_bytes
        );
        out
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
    /// The most a definition's `limits` may ask for. Memory is further
    /// capped by [`max_memory_bytes`](Self::max_memory_bytes).
    pub max_limits: PluginLimits,
    /// Plugin calls that may run at once; also sizes the pooling allocator.
    /// Further calls wait for a slot.
    pub max_concurrent_calls: usize,
    /// Largest memory any plugin may be given (sizes the pool's slots);
    /// per-plugin limits above it are clamped.
    pub max_memory_bytes: usize,
    /// Where compiled components are cached (`None` disables the cache).
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of wall-clock deadlines, and the longest
    /// a guest runs before it yields its thread to the other calls.
    pub epoch_tick: Duration,
    /// Wasm stack size, in bytes; deeper recursion is a `StackOverflow`.
    pub max_wasm_stack: usize,
    /// Threads that run guest code. Plugin calls run on their own threads,
    /// never on the caller's async workers, so guests spinning to their
    /// deadline cannot hold up the API, the committer or the NATS client.
    /// `0` runs calls in the caller's task instead (they still yield every
    /// [`epoch_tick`](Self::epoch_tick)).
    pub plugin_threads: usize,
    /// Scheduling niceness of the plugin threads (Linux, best effort): under
    /// contention the host's own work and the NATS server get the CPU first.
    pub plugin_thread_nice: i32,
    /// Components compiled at once while loading (compiling a Python or JS
    /// component takes seconds and hundreds of MB; this bounds both).
    pub compile_concurrency: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            default_limits: PluginLimits::default(),
            max_limits: PluginLimits::maxima(),
            max_concurrent_calls: 64,
            max_memory_bytes: 64 << 20,
            cache_dir: default_cache_dir(),
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 512 << 10,
            plugin_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            plugin_thread_nice: 19,
            compile_concurrency: 2,
        }
    }
}

impl RuntimeConfig {
    /// The problems with `o` on this host: every limit over its maximum
    /// (memory also over [`max_memory_bytes`](Self::max_memory_bytes)).
    pub fn check_overrides(&self, o: &LimitOverrides) -> Vec<String> {
        let mut max = self.max_limits;
        max.memory_bytes = max.memory_bytes.min(self.max_memory_bytes);
        self.default_limits.with_overrides(o).over(&max)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_fields_and_are_checked_against_the_maxima() {
        let o = LimitOverrides {
            deadline: Some(500),
            memory_bytes: Some(128 << 20),
            details_bytes: Some(1 << 30),
            ..Default::default()
        };
        let l = PluginLimits::default().with_overrides(&o);
        assert_eq!(l.deadline, Duration::from_millis(500));
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.fuel, PluginLimits::default().fuel);
        let problems = RuntimeConfig::default().check_overrides(&o);
        // 128 MiB is over the pool's 64 MiB slots; 1 GiB details over 256 KiB.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("limits.memory_bytes"), "{problems:?}");
        assert!(problems[1].contains("limits.details_bytes"), "{problems:?}");
        assert!(
            RuntimeConfig::default()
                .check_overrides(&LimitOverrides::default())
                .is_empty()
        );
    }
}
