//! The plugin runtime's public types: what a call is given and returns.

use std::time::Duration;

use time::OffsetDateTime;

use crate::model::{Id, Token, Transition};

/// The world a plugin targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
    pub workflow_id: Id,
    /// The token.
    pub token_id: Id,
    /// The transition to fire.
    pub transition: Id,
    /// Input for the transition's guards.
    pub input: serde_json::Value,
}

/// What a guard is asked.
#[derive(Debug, Clone)]
pub struct GuardInput {
    /// The token to move.
    pub token: Token,
    /// The transition.
    pub transition: Transition,
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
    pub(crate) token: &'a Token,
    pub(crate) transition: &'a Transition,
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
    pub token: Token,
    /// The transition.
    pub transition: Transition,
    /// Where the token came from.
    pub from: Id,
    /// Where it went.
    pub to: Id,
    /// Every mark the firing consumed.
    pub consumed: Vec<Id>,
    /// Every place it marked.
    pub produced: Vec<Id>,
    /// The marks its cancel arcs cleared.
    pub cancelled: Vec<Id>,
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
    /// The most linear memory the call's instance had (all its memories).
    pub memory_bytes: usize,
    /// Wall time of the call, instantiation included.
    pub duration: Duration,
}
