//! Request and response bodies of the service API.

use serde::{Deserialize, Serialize};

use crate::engine::{Denial, Enabled, FireError};
use crate::host::HostError;
use crate::model::{Id, Metadata, Token};
use crate::plugin::PluginError;
use crate::store::{Missing, StoreError};

/// Endpoint names, relative to `{prefix}.api.`.
pub const ENDPOINTS: &[&str] = &[
    "workflow.apply",
    "workflow.get",
    "workflow.list",
    "token.create",
    "token.get",
    "token.list",
    "token.history",
    "token.fire",
    "token.enabled",
    "token.complete",
    "plugin.list",
    "host.stats",
];

/// `workflow.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowGet {
    /// The workflow.
    pub id: Id,
    /// A version; the latest when absent.
    #[serde(default)]
    pub version: Option<u64>,
}

/// `token.create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// The workflow.
    pub workflow: Id,
    /// The token id; generated when absent.
    #[serde(default)]
    pub id: Option<Id>,
    /// Initial data.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Initial metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Who creates it.
    #[serde(default)]
    pub actor: Option<String>,
}

/// `token.get`, `token.enabled`, `token.complete`: a token by id, in a
/// workflow or (when `workflow` is absent) wherever it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRef {
    /// The workflow, if known.
    #[serde(default)]
    pub workflow: Option<Id>,
    /// The token.
    pub id: Id,
    /// Who acts (for `complete`).
    #[serde(default)]
    pub actor: Option<String>,
}

/// `token.list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    /// The workflow.
    pub workflow: Id,
    /// The place.
    pub place: Id,
    /// Cursor from the previous page.
    #[serde(default)]
    pub cursor: Option<u64>,
    /// Page size (at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `token.history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenHistory {
    /// The workflow, if known.
    #[serde(default)]
    pub workflow: Option<Id>,
    /// The token.
    pub id: Id,
    /// Cursor from the previous page.
    #[serde(default)]
    pub cursor: Option<u64>,
    /// Page size (at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `token.fire`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFire {
    /// The workflow, if known.
    #[serde(default)]
    pub workflow: Option<Id>,
    /// The token.
    pub id: Id,
    /// The transition.
    pub transition: Id,
    /// Input for the guards.
    #[serde(default)]
    pub input: serde_json::Value,
    /// Who fires.
    #[serde(default)]
    pub actor: Option<String>,
}

/// `token.enabled` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnabledReply {
    /// The token.
    pub token: Token,
    /// Each transition from its place.
    pub transitions: Vec<Enabled>,
}

/// `token.complete` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteReply {
    /// Sequence of the `completed` event.
    pub event_sequence: u64,
}

/// `host.stats` reply: what this host did since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// The token writes it committed (group commit).
    pub commits: CommitCounters,
}

/// [`crate::store::CommitStats`] on the wire, times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitCounters {
    /// Atomic batches the server stored.
    pub batches: u64,
    /// Token writes in them (creates, moves, updates, completions).
    pub writes: u64,
    /// Messages in them.
    pub messages: u64,
    /// Mean writes per batch.
    pub writes_per_batch: f64,
    /// Total time the batches waited on the server, in ms.
    pub commit_ms: f64,
    /// Mean time a batch waited on the server, in ms.
    pub mean_commit_ms: f64,
}

impl From<crate::store::CommitStats> for CommitCounters {
    fn from(s: crate::store::CommitStats) -> Self {
        CommitCounters {
            batches: s.batches,
            writes: s.writes,
            messages: s.messages,
            writes_per_batch: s.writes_per_batch(),
            commit_ms: s.commit_time.as_secs_f64() * 1e3,
            mean_commit_ms: s.mean_commit_time().as_secs_f64() * 1e3,
        }
    }
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// A typed error on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable kind: `invalid`, `not-found`, `unknown-transition`,
    /// `not-enabled`, `denied`, `conflict`, `duplicate`, `plugin-error`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Every denial, for `denied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
}

impl ErrorInfo {
    /// The numeric code sent in `Nats-Service-Error-Code`.
    pub fn status(&self) -> usize {
        match self.code.as_str() {
            "invalid" | "unknown-transition" => 400,
            "not-found" => 404,
            "conflict" | "duplicate" => 409,
            "not-enabled" => 412,
            "denied" => 422,
            "plugin-error" => 500,
            "unavailable" => 503,
            _ => 500,
        }
    }

    pub(crate) fn new(code: &str, message: impl ToString) -> Self {
        ErrorInfo {
            code: code.into(),
            message: message.to_string(),
            denials: Vec::new(),
        }
    }
}

impl From<&StoreError> for ErrorInfo {
    fn from(e: &StoreError) -> Self {
        let code = match e {
            StoreError::NotFound(_) => "not-found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Duplicate { .. } => "duplicate",
            StoreError::InvalidId(_)
            | StoreError::InvalidDefinition(_)
            | StoreError::Invalid(_)
            | StoreError::PayloadTooLarge { .. } => "invalid",
            _ => "unavailable",
        };
        ErrorInfo::new(code, e)
    }
}

impl From<&FireError> for ErrorInfo {
    fn from(e: &FireError) -> Self {
        let mut info = ErrorInfo::new(e.kind(), e);
        if let FireError::Denied { denials, .. } = e {
            info.denials = denials.clone();
        }
        info
    }
}

impl From<&PluginError> for ErrorInfo {
    fn from(e: &PluginError) -> Self {
        let code = match e {
            PluginError::NotFound { .. } => "not-found",
            PluginError::InvalidComponent { .. } | PluginError::IncompatibleInterface { .. } => "invalid",
            _ => "plugin-error",
        };
        ErrorInfo::new(code, e)
    }
}

impl From<&HostError> for ErrorInfo {
    fn from(e: &HostError) -> Self {
        match e {
            HostError::Store(s) => s.into(),
            HostError::Fire(f) => f.into(),
            HostError::Plugin(p) => p.into(),
            HostError::Definition(_) => ErrorInfo::new("invalid", e),
            HostError::Connect(_) | HostError::Io(_) => ErrorInfo::new("unavailable", e),
        }
    }
}

impl From<Missing> for ErrorInfo {
    fn from(m: Missing) -> Self {
        ErrorInfo::new("not-found", m)
    }
}
