//! Errors of firing a transition.

use serde::{Deserialize, Serialize};

use crate::model::Id;
use crate::plugin::PluginError;
use crate::store::{Missing, StoreError};
use crate::text::escape_bounded;

fn list(places: &[Id]) -> String {
    places
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How much of a denial's message the text of [`FireError::Denied`] (and so
/// a log line or an error header) carries.
pub const DENIAL_TEXT_IN_ERRORS: usize = 256;

/// One guard's refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
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

/// Why a firing did not happen. Nothing was written, except perhaps for
/// [`FireError::Indeterminate`]: its outcome is unknown.
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
    /// The token's marking does not enable the transition: it is not in
    /// one of its `from` places (or not in every `join` place).
    #[error(
        "transition `{transition}` is not enabled for token `{token}`: it is marked in {}, the transition fires from {} of {}",
        list(.marking), if *.join { "every one" } else { "any one" }, list(.from)
    )]
    NotEnabled {
        /// The token.
        token: Id,
        /// The transition.
        transition: Id,
        /// The transition's input places.
        from: Vec<Id>,
        /// Every place the token is marked in.
        marking: Vec<Id>,
        /// The inputs form an AND-join (all needed).
        join: bool,
    },
    /// Firing would mark a place the token stays marked in: two marks in
    /// one place, which a 1-safe net never has.
    #[error(
        "transition `{transition}` would mark `{place}` twice for token `{token}` (the net is not 1-safe there)"
    )]
    Unsafe {
        /// The token.
        token: Id,
        /// The transition.
        transition: Id,
        /// The place.
        place: Id,
    },
    /// One or more guards refused; every denial is listed.
    /// Its text carries each denial's message cut to
    /// [`DENIAL_TEXT_IN_ERRORS`] bytes and escaped (plugin text goes into
    /// log lines and error headers); `denials` has them whole.
    #[error("transition `{transition}` denied: {}", .denials.iter().map(|d| format!("{} ({}): {}", d.plugin, d.code, escape_bounded(&d.message, DENIAL_TEXT_IN_ERRORS))).collect::<Vec<_>>().join("; "))]
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
    /// Storage could not be reached or answered with an error; nothing was
    /// written.
    #[error(transparent)]
    Unavailable(StoreError),
    /// The commit left and its outcome could not be learned: the firing may
    /// or may not have happened. Retry with the same idempotency key to get
    /// its outcome if it did.
    #[error(transparent)]
    Indeterminate(StoreError),
}

impl FireError {
    /// A stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FireError::NotFound(_) => "not-found",
            FireError::UnknownTransition { .. } => "unknown-transition",
            FireError::NotEnabled { .. } | FireError::Unsafe { .. } => "not-enabled",
            FireError::Denied { .. } => "denied",
            FireError::Conflict { .. } => "conflict",
            FireError::Duplicate { .. } => "duplicate",
            FireError::Plugin(PluginError::Loading { .. }) => "unavailable",
            FireError::Plugin(_) => "plugin-error",
            FireError::Invalid(_) => "invalid",
            FireError::Unavailable(_) | FireError::Indeterminate(_) => "unavailable",
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
            | StoreError::KeyReused { .. }
            | StoreError::Invalid(_)) => FireError::Invalid(e.to_string()),
            e @ StoreError::Indeterminate { .. } => FireError::Indeterminate(e),
            other => FireError::Unavailable(other),
        }
    }
}
