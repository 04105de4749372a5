//! Circuit Breaker: a workflow host whose transition guards and actions are
//! sandboxed WebAssembly components and whose state lives in NATS JetStream.
//!
//! # Layout
//! - [`model`]: ids, workflow definitions, tokens and events; pure data with
//!   validation.
//! - [`store`]: the JetStream storage layer, split into a read-only
//!   [`StoreReader`](store::StoreReader) and a [`StoreWriter`](store::StoreWriter)
//!   that commits every token write as a compare-and-swap inside an atomic
//!   batch.

//! - [`plugin`]: the sandboxed wasmtime runtime for guard and action
//!   components.
//! - [`engine`]: firing through guards, and actions from the event log.
//! - [`api`]: the NATS service API and its client.
//! - [`Host`]: all of the above behind one builder, for embedding.

#![warn(missing_docs)]

pub mod api;
pub mod engine;
pub mod harness;
mod host;
pub mod model;
pub mod plugin;
pub mod store;

pub use host::{Host, HostBuilder, HostError, Serving, connect, redact_credentials};
