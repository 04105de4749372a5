//! Typed plugin errors. Every variant names the plugin.

/// Why a plugin could not be loaded or a call did not return a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The call ran past its wall-clock deadline and was interrupted.
    #[error("plugin `{plugin}` timed out after {limit_ms} ms")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The deadline.
        limit_ms: u64,
    },
    /// The call used up its fuel (instructions budget).
    #[error("plugin `{plugin}` ran out of fuel ({fuel} units)")]
    OutOfFuel {
        /// The plugin.
        plugin: String,
        /// The budget.
        fuel: u64,
    },
    /// The call tried to grow linear memory past its cap.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// The cap.
        limit_bytes: usize,
    },
    /// The call overflowed the wasm stack (e.g. unbounded recursion).
    #[error("plugin `{plugin}` overflowed its stack")]
    StackOverflow {
        /// The plugin.
        plugin: String,
    },
    /// The call trapped (panic, `unreachable`, bad memory access...).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// What the runtime reported.
        message: String,
    },
    /// An action returned an error.
    #[error("plugin `{plugin}` failed: {message}")]
    Failed {
        /// The plugin.
        plugin: String,
        /// The action's error text.
        message: String,
    },
    /// Something the plugin handed the host is over its limit (a denial's
    /// message or details, an action's error, a follow-up's input): the
    /// call fails closed, and nothing of it is parsed, logged or sent.
    #[error("plugin `{plugin}` returned {what} of {size} bytes, over its limit of {limit}")]
    OutputTooLarge {
        /// The plugin.
        plugin: String,
        /// What it returned (`denial details`, `follow-up input`, ...).
        what: String,
        /// Its size (for nesting: the depth).
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// Something the plugin returned has the wrong shape (e.g. a denial
    /// code that is not an id): the call fails closed.
    #[error("plugin `{plugin}` returned an invalid {what}: {reason}")]
    InvalidOutput {
        /// The plugin.
        plugin: String,
        /// What it returned.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// The bytes are not a loadable component (empty, truncated, not Wasm,
    /// a core module).
    #[error("plugin `{plugin}` is not a valid component: {reason}")]
    InvalidComponent {
        /// The plugin (file stem).
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The component does not target the guard or action world.
    #[error("plugin `{plugin}` does not fit the plugin interface: missing {}", .missing.join(", "))]
    IncompatibleInterface {
        /// The plugin.
        plugin: String,
        /// What is missing or mismatched.
        missing: Vec<String>,
    },
    /// The plugin targets the other world than the one asked for.
    #[error("plugin `{plugin}` is a {actual} plugin, not a {expected}")]
    WrongWorld {
        /// The plugin.
        plugin: String,
        /// What the caller needed.
        expected: String,
        /// What it is.
        actual: String,
    },
    /// The plugin is still loading (compiling) and did not finish within
    /// the wait bound: try again shortly.
    #[error("plugin `{plugin}` is still loading; try again shortly")]
    Loading {
        /// The plugin.
        plugin: String,
    },
    /// No plugin loaded under that name.
    #[error("no plugin named `{plugin}` is loaded")]
    NotFound {
        /// The name asked for.
        plugin: String,
    },
    /// A definition pins a digest that the loaded plugin does not have.
    #[error("plugin `{plugin}` has digest {actual}, but the definition pins {expected}")]
    DigestMismatch {
        /// The plugin.
        plugin: String,
        /// The pinned digest.
        expected: String,
        /// The loaded plugin's digest.
        actual: String,
    },
    /// Reading a plugin file or the compile cache failed.
    #[error("plugin `{plugin}`: {reason}")]
    Io {
        /// The plugin or path.
        plugin: String,
        /// What failed.
        reason: String,
    },
}

impl PluginError {
    /// A short machine-readable kind: `timeout`, `out-of-fuel`,
    /// `memory-limit`, `stack-overflow`, `trap`, `failed`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Timeout { .. } => "timeout",
            PluginError::OutOfFuel { .. } => "out-of-fuel",
            PluginError::MemoryLimit { .. } => "memory-limit",
            PluginError::StackOverflow { .. } => "stack-overflow",
            PluginError::Trap { .. } => "trap",
            PluginError::Failed { .. } => "failed",
            PluginError::OutputTooLarge { .. } => "output-too-large",
            PluginError::InvalidOutput { .. } => "invalid-output",
            PluginError::InvalidComponent { .. } => "invalid-component",
            PluginError::IncompatibleInterface { .. } => "incompatible-interface",
            PluginError::WrongWorld { .. } => "wrong-world",
            PluginError::NotFound { .. } => "not-found",
            PluginError::Loading { .. } => "loading",
            PluginError::DigestMismatch { .. } => "digest-mismatch",
            PluginError::Io { .. } => "io",
        }
    }
}
