//! JetStream storage: one Limits stream holding definitions, token states
//! and events, split by capability into a [`StoreReader`] and a
//! [`StoreWriter`].
//!
//! Layout (see `subjects.rs` and the README):
//! - `{prefix}.workflows.{wf}.definition`: one message per definition
//!   version; the version is its stream sequence.
//! - `{prefix}.workflows.{wf}.places.{place}.tokens.{token}`: exactly one
//!   message per subject (`Nats-Rollup: sub`): the token's state, or a
//!   tombstone (`KV-Operation: PURGE`) once it moved on or completed.
//! - `{prefix}.workflows.{wf}.events.{transitions|lifecycle}.{token}`: the
//!   audit trail.
//!
//! Every token write carries `Nats-Expected-Last-Subject-Sequence` scoped to
//! `...places.*.tokens.{token}`, and is part of an atomic batch with its
//! event. The writer groups concurrent writes into one batch (group commit).

mod config;
mod direct;
mod error;
mod group;
mod memory;
mod reader;
mod source;
mod stream;
mod subjects;
mod writer;

use std::sync::Arc;

pub use config::{RetryPolicy, StorageKind, StoreConfig};
pub use error::{Missing, StoreError};
pub use group::CommitStats;
pub use memory::MemorySource;
pub(crate) use reader::decode_event_payload;
pub use reader::{Page, StoreReader};
pub use source::{BoxFuture, TokenSource};
pub use writer::{Committed, Move, NewToken, StoreWriter};

/// An opened store: the stream is verified and the committer is running.
#[derive(Debug, Clone)]
pub struct Store {
    writer: StoreWriter,
}

impl Store {
    /// Checks the server (version >= 2.12, JetStream on), creates the stream
    /// if it is absent or verifies it if present, and starts the committer.
    ///
    /// Never deletes, purges or rewrites anything: an existing stream whose
    /// configuration would break the storage contract is reported as
    /// [`StoreError::StreamMismatch`] and left as it is.
    pub async fn open(client: async_nats::Client, config: StoreConfig) -> Result<Store, StoreError> {
        subjects::Subjects::validate_prefix(&config.prefix).map_err(StoreError::Invalid)?;
        if config.stream.is_empty() || config.stream.contains(['.', '*', '>', ' ', '\t']) {
            return Err(StoreError::Invalid(format!(
                "stream name {:?} is not a valid JetStream name",
                config.stream
            )));
        }
        // The server's INFO (version, max_payload) is only known once
        // connected; a client built with `retry_on_initial_connect` may not
        // be yet. A flush round trip waits for that.
        client
            .flush()
            .await
            .map_err(|e| StoreError::unavailable("connect", e))?;
        stream::check_server(&client)?;
        let info = client.server_info();
        if !info.jetstream {
            return Err(StoreError::JetStreamDisabled);
        }
        let subjects = subjects::Subjects::new(&config.prefix);
        let js = async_nats::jetstream::new(client.clone());
        let mut stream = stream::ensure(&js, &config, &subjects).await?;
        if config.replicas > 1 {
            wait_for_leader(&mut stream, config.request_timeout * 4).await?;
        }
        let shared = Arc::new(reader::Shared {
            client,
            stream,
            subjects,
            max_payload: info.max_payload,
            config,
        });
        let reader = StoreReader { shared };
        Ok(Store {
            writer: StoreWriter::start(reader),
        })
    }

    /// A read-only handle.
    pub fn reader(&self) -> StoreReader {
        self.writer.reader().clone()
    }

    /// A writing handle (also reads through [`StoreWriter::reader`]).
    pub fn writer(&self) -> StoreWriter {
        self.writer.clone()
    }

    /// The stream handle (for the action dispatcher's consumer).
    pub(crate) fn stream(&self) -> &async_nats::jetstream::stream::Stream {
        &self.writer.reader().shared.stream
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        self.writer.reader().config()
    }
}

/// A replicated stream just created (or moving) has no leader for a moment,
/// and Direct Gets get "no responders" until it has: wait for one, bounded.
async fn wait_for_leader(
    stream: &mut async_nats::jetstream::stream::Stream,
    limit: std::time::Duration,
) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        let leader = match stream.info().await {
            Ok(info) => info.cluster.as_ref().and_then(|c| c.leader.clone()),
            Err(_) => None,
        };
        if leader.is_some() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::unavailable(
                "open",
                format!("the stream has no leader after {limit:?}"),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}
