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

#![warn(missing_docs)]

pub mod engine;
pub mod model;
pub mod plugin;
pub mod store;
