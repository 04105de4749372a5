//! Circuit Breaker: a workflow host whose transition guards and actions are
//! sandboxed WebAssembly components and whose state lives in NATS JetStream.
//!
//! This is the library an embedder depends on; the `cb-host` binary, the
//! plugin test harness (`cb-harness`) and the benchmarks are crates of
//! their own.
//!
//! # Layout
//! - [`model`]: ids, workflow definitions, tokens and events; pure data with
//!   validation.
//! - [`store`]: the JetStream storage layer, split into a read-only
//!   [`StoreReader`](store::StoreReader) and a [`StoreWriter`](store::StoreWriter)
//!   that commits every token write as a compare-and-swap inside an atomic
//!   batch, plus the action feed (the one durable consumer).
//! - [`plugin`]: the sandboxed wasmtime runtime for guard and action
//!   components.
//! - [`engine`]: firing through guards, and actions from the action feed.
//! - [`Host`]: all of the above behind one builder, for embedding.
//! - [`api`]: the NATS service API over a [`Host`] ([`serve`]), and its
//!   client.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cb_host::engine::FireRequest;
//! use cb_host::model::Id;
//! use cb_host::store::StoreConfig;
//!
//! let host = cb_host::Host::builder()
//!     .nats_url("nats://127.0.0.1:4222")
//!     .store(StoreConfig::development())
//!     .plugin_dir("target/plugins")
//!     .build()
//!     .await?;
//! let wf = Id::new("expense-approval")?;
//! let token = host
//!     .create_token(&wf, None, serde_json::json!({"amount": 80}), Default::default(), None)
//!     .await?;
//! host.fire(FireRequest::new(wf, token.id, Id::new("submit")?)).await?;
//! let serving = cb_host::serve(&host, cb_host::ServeConfig::default()).await?;
//! serving.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![deny(unreachable_pub)]

pub mod api;
pub mod engine;
mod host;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod store;
mod text;
mod trace;

pub use api::{ServeConfig, Serving, serve};
pub use host::{Applied, ApplyOptions, Host, HostBuilder, HostError, connect, redact_credentials};
#[cfg(feature = "otel")]
pub use trace::otel_layer;
