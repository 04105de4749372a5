//! Request and response bodies of the service API.

use serde::{Deserialize, Serialize};

use crate::engine::{Denial, Enabled, FireError};
use crate::host::HostError;
use crate::model::{Finding, Id, Metadata, Token};
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
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
    /// A retry with the same key (and request) returns the token as first
    /// created, instead of `duplicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `token.get`, `token.enabled`, `token.complete`: a token by id, in a
/// workflow or (when `workflow` is absent) wherever it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct TokenRef {
    /// The workflow, if known.
    #[serde(default)]
    pub workflow: Option<Id>,
    /// The token.
    pub id: Id,
    /// Who acts (for `complete`).
    #[serde(default)]
    pub actor: Option<String>,
    /// For `complete`: a retry with the same key returns the original
    /// `completed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For `complete`: complete only if the token is still at this
    /// revision (else `conflict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
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
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
    /// Fire only if the token is still at this revision (no re-read and
    /// retry): `conflict` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_revision: Option<u64>,
    /// A retry with the same key (and request) returns the original firing
    /// (same token, revision and event sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `workflow.apply` with options; the body may also be the bare definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowApply {
    /// The definition.
    pub definition: serde_json::Value,
    /// A retry with the same key returns the version first stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Store it even if plugins it names are not loaded on this host.
    #[serde(default)]
    pub allow_missing_plugins: bool,
}

/// The body of an endpoint that takes no arguments: empty, or `{}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `token.enabled` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct EnabledReply {
    /// The token.
    pub token: Token,
    /// Each transition from its place.
    pub transitions: Vec<Enabled>,
}

/// `token.complete` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct CompleteReply {
    /// Sequence of the `completed` event.
    pub event_sequence: u64,
}

/// `host.stats` reply: what this host did since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct HostStats {
    /// The token writes it committed (group commit).
    pub commits: CommitCounters,
}

/// [`crate::store::CommitStats`] on the wire, times in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct ErrorInfo {
    /// Stable kind: `invalid`, `not-found`, `unknown-transition`,
    /// `not-enabled`, `denied`, `conflict`, `duplicate`, `plugin-error`,
    /// `unavailable`, `busy`, `internal`.
    pub code: String,
    /// For people: escaped and at most [`MAX_ERROR_TEXT`] bytes (text that
    /// came from the caller or a plugin is cut with `...`).
    pub message: String,
    /// Every denial, for `denied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
    /// For `unavailable`: the write's outcome is unknown (it may have been
    /// stored). Retry with the same idempotency key: the retry returns the
    /// original outcome if it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub indeterminate: bool,
    /// For `conflict` and `duplicate`: the token's current revision, when
    /// known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// For an `invalid` definition the soundness check refused: everything
    /// it found, each with the run that shows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// The most soundness findings an error carries.
const MAX_FINDINGS: usize = 100;

/// The longest `message` an error carries.
pub const MAX_ERROR_TEXT: usize = 4096;

impl ErrorInfo {
    /// The numeric code sent in `Nats-Service-Error-Code` (and the HTTP
    /// status).
    pub fn status(&self) -> usize {
        match self.code.as_str() {
            "invalid" | "unknown-transition" => 400,
            "not-found" => 404,
            "conflict" | "duplicate" => 409,
            "not-enabled" => 412,
            "denied" => 422,
            "plugin-error" => 500,
            "unavailable" | "busy" => 503,
            _ => 500,
        }
    }

    pub(crate) fn new(code: &str, message: impl ToString) -> Self {
        ErrorInfo {
            code: code.into(),
            message: crate::text::escape_bounded(&message.to_string(), MAX_ERROR_TEXT),
            denials: Vec::new(),
            indeterminate: false,
            revision: None,
            findings: Vec::new(),
        }
    }
}

impl From<&StoreError> for ErrorInfo {
    fn from(e: &StoreError) -> Self {
        let code = match e {
            StoreError::NotFound(_) => "not-found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Duplicate { .. } | StoreError::Exists { .. } => "duplicate",
            StoreError::InvalidId(_)
            | StoreError::InvalidDefinition(_)
            | StoreError::Invalid(_)
            | StoreError::KeyReused { .. }
            | StoreError::Configuration(_)
            | StoreError::PayloadTooLarge { .. } => "invalid",
            _ => "unavailable",
        };
        let mut info = ErrorInfo::new(code, e);
        match e {
            StoreError::Indeterminate { .. } => info.indeterminate = true,
            StoreError::Conflict { actual, .. } => info.revision = *actual,
            StoreError::Exists { revision, .. } => info.revision = *revision,
            _ => {}
        }
        info
    }
}

impl From<&FireError> for ErrorInfo {
    fn from(e: &FireError) -> Self {
        let mut info = ErrorInfo::new(e.kind(), e);
        match e {
            FireError::Denied { denials, .. } => info.denials = denials.clone(),
            FireError::Indeterminate(_) => info.indeterminate = true,
            _ => {}
        }
        info
    }
}

impl From<&PluginError> for ErrorInfo {
    fn from(e: &PluginError) -> Self {
        let code = match e {
            PluginError::NotFound { .. } => "not-found",
            PluginError::Loading { .. } => "unavailable",
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
            HostError::Unsound { findings, .. } => ErrorInfo {
                findings: findings.iter().take(MAX_FINDINGS).cloned().collect(),
                ..ErrorInfo::new("invalid", e)
            },
            HostError::Definition(_) | HostError::Unrunnable { .. } => ErrorInfo::new("invalid", e),
            HostError::Connect(_) | HostError::Io(_) => ErrorInfo::new("unavailable", e),
        }
    }
}

impl From<Missing> for ErrorInfo {
    fn from(m: Missing) -> Self {
        ErrorInfo::new("not-found", m)
    }
}
