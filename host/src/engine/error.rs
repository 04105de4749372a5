//! Errors of firing a transition.

use serde::{Deserialize, Serialize};

use crate::model::Id;
use crate::plugin::PluginError;
use crate::store::{Missing, StoreError};

/// One guard's refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denial {
    /// The guard plugin.
    pub plugin: String,
    /// Machine-readable reason.
    pub code: String,
    /// For people.
    pub message: String,
    /// Structured details.
    pub details: serde_json::Value,
}

/// Why a firing did not happen. Nothing was written in any of these cases.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FireError {
    /// The workflow, version or token does not exist.
    #[error(transparent)]
    NotFound(Missing),
    /// The token's definition has no such transition.
    #[error("workflow `{workflow}` (version {version}) has no transition `{transition}`")]
    UnknownTransition {
        /// The workflow.
        workflow: Id,
        /// The transition asked for.
        transition: Id,
        /// The definition version the token is pinned to.
        version: u64,
    },
    /// The token is not in one of the transition's `from` places.
    #[error(
        "transition `{transition}` is not enabled for token `{token}`: it is in `{place}`, the transition fires from {from:?}"
    )]
    NotEnabled {
        /// The token.
        token: Id,
        /// The transition.
        transition: Id,
        /// Where the token is.
        place: Id,
        /// Where the transition fires from.
        from: Vec<Id>,
    },
    /// One or more guards refused; every denial is listed.
    #[error("transition `{transition}` denied: {}", .denials.iter().map(|d| format!("{} ({}): {}", d.plugin, d.code, d.message)).collect::<Vec<_>>().join("; "))]
    Denied {
        /// The transition.
        transition: Id,
        /// Every denial, in guard order.
        denials: Vec<Denial>,
    },
    /// The token kept changing under the firing (lost compare-and-swap
    /// races), or it changed since the revision the caller expected.
    #[error("token `{token}` changed concurrently ({attempts} attempt(s)); re-read and retry")]
    Conflict {
        /// The token.
        token: Id,
        /// Attempts made.
        attempts: u32,
    },
    /// A request with this idempotency key was already applied.
    #[error("token `{token}`: this firing was already applied (duplicate idempotency key)")]
    Duplicate {
        /// The token.
        token: Id,
    },
    /// A guard could not be run or failed (trap, timeout, limits, missing
    /// plugin): the transition fails closed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Bad input (oversized data, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Storage could not be reached or answered with an error; for a commit
    /// that timed out, the move may or may not have happened.
    #[error(transparent)]
    Unavailable(StoreError),
}

impl FireError {
    /// A stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FireError::NotFound(_) => "not-found",
            FireError::UnknownTransition { .. } => "unknown-transition",
            FireError::NotEnabled { .. } => "not-enabled",
            FireError::Denied { .. } => "denied",
            FireError::Conflict { .. } => "conflict",
            FireError::Duplicate { .. } => "duplicate",
            FireError::Plugin(_) => "plugin-error",
            FireError::Invalid(_) => "invalid",
            FireError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<StoreError> for FireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => FireError::NotFound(m),
            StoreError::Conflict { token, .. } => FireError::Conflict { token, attempts: 1 },
            StoreError::Duplicate { token } => FireError::Duplicate { token },
            e @ (StoreError::PayloadTooLarge { .. }
            | StoreError::InvalidId(_)
            | StoreError::InvalidDefinition(_)
            | StoreError::Invalid(_)) => FireError::Invalid(e.to_string()),
            other => FireError::Unavailable(other),
        }
    }
}
