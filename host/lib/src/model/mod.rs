//! The workflow model: ids, definitions, tokens and events.
//!
//! Pure data with validation; no I/O. Everything a user can type that ends
//! up in a NATS subject is an [`Id`], validated on construction.

mod definition;
mod diagram;
mod id;
mod soundness;
mod token;

pub use definition::{
    DefinitionError, Firing, Grants, LimitOverrides, NotFirable, PluginRef, StoredDefinition, Transition,
    WorkflowDefinition,
};
pub use diagram::{DiagramFormat, Overlay};
pub use id::{Id, IdError, MAX_ID_LEN};
pub use soundness::{DEFAULT_MAX_MARKINGS, Finding, FindingCode, Severity, SoundnessReport};
pub use token::{Event, EventKind, Metadata, Token, TokenState};
