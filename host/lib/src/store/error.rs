//! The storage layer's typed errors.

use crate::model::{DefinitionError, Id, IdError};

/// What was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// No definition stored for this workflow.
    #[error("workflow `{0}` not found")]
    Workflow(Id),
    /// No such version of the workflow's definition.
    #[error("workflow `{0}` has no version {1}")]
    WorkflowVersion(Id, u64),
    /// No live token with this id (never created, or completed).
    #[error("token `{token}` not found{}", .workflow.as_ref().map(|w| format!(" in workflow `{w}`")).unwrap_or_default())]
    Token {
        /// The workflow searched, if one was given.
        workflow: Option<Id>,
        /// The token id.
        token: Id,
    },
    /// The definition has no such place.
    #[error("workflow `{workflow}` has no place `{place}`")]
    Place {
        /// The workflow.
        workflow: Id,
        /// The place asked for.
        place: Id,
    },
}

/// Errors from the storage layer. Callers match on what they can act on:
/// `Conflict` means re-read and retry; `Unavailable` means the server could
/// not be reached and nothing was stored; `Indeterminate` (and `Timeout`,
/// for reads) means the outcome is unknown; the rest are final for the
/// given input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Nothing stored under that id.
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// Compare-and-swap lost: the token changed since `expected` was read.
    /// Nothing was written.
    #[error("conflict on token `{token}`: expected revision {expected}, found {}", .actual.map(|a| a.to_string()).unwrap_or_else(|| "a newer one".into()))]
    Conflict {
        /// The token.
        token: Id,
        /// The revision the write was based on (0 = must not exist).
        expected: u64,
        /// The token's current revision, when the server said.
        actual: Option<u64>,
    },
    /// A write carried a `Nats-Msg-Id` the server has already stored within
    /// its duplicate window: the same request was applied before. Nothing
    /// was written.
    #[error("duplicate write for token `{token}`: this request was already applied")]
    Duplicate {
        /// The token.
        token: Id,
    },
    /// An id is not subject-safe.
    #[error("invalid id: {0}")]
    InvalidId(#[from] IdError),
    /// A definition failed validation.
    #[error(transparent)]
    InvalidDefinition(#[from] DefinitionError),
    /// Any other refused input (e.g. a transition's place does not exist).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A message would exceed the server's `max_payload`.
    #[error("{what} is {size} bytes, more than the server's max_payload of {max} bytes")]
    PayloadTooLarge {
        /// What was being stored.
        what: String,
        /// Its encoded size including headers.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The server is older than this project requires.
    #[error(
        "nats-server {version} is too old: Circuit Breaker needs {required} or newer (atomic batches, per-message TTL, wildcard CAS)"
    )]
    ServerTooOld {
        /// What the server reported.
        version: String,
        /// The minimum.
        required: String,
    },
    /// The server runs without JetStream.
    #[error("JetStream is not enabled on the server (start nats-server with -js)")]
    JetStreamDisabled,
    /// The stream exists with a configuration this host cannot use safely.
    /// Nothing was changed.
    #[error("stream `{stream}` exists but its configuration does not match: {}; nothing was changed. Fix the stream (e.g. `nats stream edit`) or use another stream name", .differences.join("; "))]
    StreamMismatch {
        /// The stream.
        stream: String,
        /// One line per difference.
        differences: Vec<String>,
    },
    /// A write's commit left and its outcome could not be learned (no
    /// answer, the connection lost, an answer that is not one), nor read
    /// back from the stream: it may or may not have been stored. Never sent
    /// again blindly; retry with the same idempotency key to get the
    /// original outcome if it was.
    #[error(
        "{operation}: the outcome is unknown: {reason} (it may or may not have been stored; retry with the same idempotency key)"
    )]
    Indeterminate {
        /// What was attempted.
        operation: String,
        /// Why it is unknown.
        reason: String,
    },
    /// A create found a live token with this id: nothing was written.
    #[error("token `{token}` already exists in workflow `{workflow}`{}", .revision.map(|r| format!(" (revision {r})")).unwrap_or_default())]
    Exists {
        /// The workflow.
        workflow: Id,
        /// The token.
        token: Id,
        /// Its current revision, when the server said.
        revision: Option<u64>,
    },
    /// The configuration asks for something the server cannot give (e.g.
    /// more stream replicas than it has nodes). Nothing was changed.
    #[error("{0}")]
    Configuration(String),
    /// An idempotency key was used before with a different request.
    #[error("idempotency key {key:?} was used before for a different request ({earlier})")]
    KeyReused {
        /// The key.
        key: String,
        /// What the key was first used for.
        earlier: String,
    },
    /// No answer within the request timeout. For a write, it may or may not
    /// have been applied: re-read before retrying.
    #[error(
        "{operation} timed out after {timeout_ms} ms (a write may or may not have been applied; re-read before retrying)"
    )]
    Timeout {
        /// What was attempted.
        operation: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The server could not be reached or refused for a transient reason
    /// after the configured retries.
    #[error("{operation}: JetStream unavailable: {reason}")]
    Unavailable {
        /// What was attempted.
        operation: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the request with an API error.
    #[error("{operation}: server error {err_code} ({code}): {description}")]
    Server {
        /// What was attempted.
        operation: String,
        /// HTTP-like status.
        code: u16,
        /// JetStream error code.
        err_code: u64,
        /// The server's text.
        description: String,
    },
    /// A stored message could not be decoded.
    #[error("message {sequence} on `{subject}` is corrupt: {reason}")]
    Corrupt {
        /// Its subject.
        subject: String,
        /// Its sequence.
        sequence: u64,
        /// What failed.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same request may succeed (it stored nothing).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub(crate) fn unavailable(operation: impl Into<String>, reason: impl ToString) -> Self {
        StoreError::Unavailable {
            operation: operation.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn corrupt(subject: &str, sequence: u64, reason: impl ToString) -> Self {
        StoreError::Corrupt {
            subject: subject.into(),
            sequence,
            reason: reason.to_string(),
        }
    }
}
