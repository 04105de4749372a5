//! The workflow model: ids, definitions, tokens and events.
//!
//! Pure data with validation; no I/O. Everything a user can type that ends
//! up in a NATS subject is an [`Id`], validated on construction.

mod definition;
mod id;
mod token;

pub use definition::{DefinitionError, PluginRef, StoredDefinition, Transition, WorkflowDefinition};
pub use id::{Id, IdError, MAX_ID_LEN};
pub use token::{Event, EventKind, Metadata, Token, TokenState};
