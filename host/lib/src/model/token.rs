//! Tokens and the events that record what happened to them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Id;

/// String-keyed token metadata (owner, parent, correlation ids...).
pub type Metadata = BTreeMap<String, String>;

/// A token: one case moving through a workflow.
///
/// `revision`, `updated_at` and `subject` come from the stored message (its
/// stream sequence, server timestamp and subject), never from the payload, so
/// they cannot disagree with what the stream holds. `place` and the ids come
/// from the subject for the same reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Token {
    /// Unique within its workflow.
    pub id: Id,
    /// The workflow it belongs to.
    pub workflow_id: Id,
    /// The definition version (stream sequence) the token started on; it is
    /// fired against that version for its whole life.
    pub definition_version: u64,
    /// Its first place (in the definition's order): the one place of a
    /// sequential workflow's token.
    pub place: Id,
    /// Every place it is marked in, in the definition's order (one for a
    /// sequential workflow; several after a parallel split).
    #[serde(default)]
    pub marking: Vec<Id>,
    /// Application data, any JSON value.
    pub data: serde_json::Value,
    /// String-keyed metadata.
    pub metadata: Metadata,
    /// When the token was created (server time of its first state).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When this state was stored (server time), or for a token returned by a
    /// write, the host's clock when the write was acknowledged.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Stream sequence of this state: the compare-and-swap handle for the
    /// next write.
    pub revision: u64,
    /// Subject the state is stored on.
    pub subject: String,
}

/// A token's state as recorded in a transition event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct TokenState {
    /// The pinned definition version.
    pub definition_version: u64,
    /// Data after the move.
    pub data: serde_json::Value,
    /// Metadata after the move.
    #[serde(default)]
    pub metadata: Metadata,
    /// When the token was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The marking the firing left (for one that completed the token, the
    /// marking it ended in), unless that is the event's `to` alone. See
    /// [`EventKind::marking_after`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marking: Option<Vec<Id>>,
}

/// What an event records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub enum EventKind {
    /// The token moved along a transition.
    Transition {
        /// The transition fired.
        transition: Id,
        /// The (first) place it consumed a mark from.
        from: Id,
        /// The (first) place it marked; `from` for a transition that marks
        /// nothing.
        to: Id,
        /// Every mark it consumed, unless that is `from` alone (absent:
        /// `[from]`). See [`EventKind::consumed`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumed: Option<Vec<Id>>,
        /// Every place it marked, unless that is `to` alone (absent:
        /// `[to]`; empty for a transition that marks nothing). See
        /// [`EventKind::produced`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        produced: Option<Vec<Id>>,
        /// The marks its cancel (reset) arcs cleared.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cancelled: Vec<Id>,
        /// The token completed with this firing (its marking became empty or
        /// final): its place subjects hold tombstones now.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        completed: bool,
        /// Who fired it, as the caller said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// The caller's input to the guards.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        input: serde_json::Value,
        /// The token's state after the move, so the audit trail holds it
        /// and actions run against exactly this state (the token subject
        /// itself keeps only the latest).
        state: TokenState,
    },
    /// The token was created.
    Created {
        /// Its first place.
        place: Id,
        /// The definition version it is pinned to.
        definition_version: u64,
        /// Who created it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
        /// Its first data (absent in events stored before it was kept
        /// here), so the audit trail, and a retried keyed create, have it.
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        data: serde_json::Value,
        /// Its first metadata.
        #[serde(default, skip_serializing_if = "Metadata::is_empty")]
        metadata: Metadata,
    },
    /// Data or metadata changed in place.
    Updated {
        /// Who changed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// The token finished and was removed from its place.
    Completed {
        /// The place it finished in.
        place: Id,
        /// Its final data, kept here because the token subject now holds
        /// only a tombstone.
        data: serde_json::Value,
        /// Its final metadata.
        metadata: Metadata,
        /// Who completed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
    /// An action failed after its last attempt.
    ActionFailed {
        /// The transition whose action failed.
        transition: Id,
        /// The action plugin.
        plugin: Id,
        /// Stream sequence of the transition event the action ran for.
        event_sequence: u64,
        /// Attempts made.
        attempts: u64,
        /// The last error.
        error: String,
    },
}

/// One entry of a token's history, read from its event subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Event {
    /// The workflow.
    pub workflow_id: Id,
    /// The token.
    pub token_id: Id,
    /// The token revision this event started from (the CAS-checked one);
    /// `0` for creation and for events that do not change the token.
    pub from_revision: u64,
    /// The token revision this event produced, if it changed the token.
    /// Derived: the state is stored immediately before its event in the same
    /// atomic batch, so it is `sequence - 1`.
    pub revision: Option<u64>,
    /// Stream sequence of the event: its idempotency key.
    pub sequence: u64,
    /// Server time the event was stored.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Token {
    /// Its marking: `marking`, or `[place]` for a token read without one.
    pub fn marks(&self) -> Vec<Id> {
        if self.marking.is_empty() {
            vec![self.place.clone()]
        } else {
            self.marking.clone()
        }
    }
}

impl EventKind {
    /// Whether this event is stored right after a token write in the same
    /// batch (so `revision = sequence - 1`).
    pub fn follows_token_write(&self) -> bool {
        !matches!(self, EventKind::ActionFailed { .. })
    }

    /// For a transition event, every mark it consumed.
    pub fn consumed(&self) -> Option<Vec<Id>> {
        match self {
            EventKind::Transition { from, consumed, .. } => {
                Some(consumed.clone().unwrap_or_else(|| vec![from.clone()]))
            }
            _ => None,
        }
    }

    /// For a transition event, every place it marked.
    pub fn produced(&self) -> Option<Vec<Id>> {
        match self {
            EventKind::Transition { to, produced, .. } => {
                Some(produced.clone().unwrap_or_else(|| vec![to.clone()]))
            }
            _ => None,
        }
    }

    /// For a transition event, the marking it left the token in (for one
    /// that completed the token, the marking it ended in).
    pub fn marking_after(&self) -> Option<Vec<Id>> {
        match self {
            EventKind::Transition { to, state, .. } => {
                Some(state.marking.clone().unwrap_or_else(|| vec![to.clone()]))
            }
            _ => None,
        }
    }
}
