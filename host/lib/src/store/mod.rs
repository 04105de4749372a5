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
mod feed;
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
pub use feed::{ActionFeed, Deliveries, Delivery, FeedConfig};
#[cfg(feature = "testing")]
pub use group::CommitFault;
pub use group::CommitStats;
pub use memory::MemorySource;
pub use reader::{KeyRecord, Page, StoreReader};
pub use source::{BoxFuture, TokenSource};
pub use writer::{Committed, FireMarks, Idempotency, Move, NewToken, StoreWriter};

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
        let mut config = config;
        if config.replicas == 0 {
            config.replicas = replicas_for(&info);
            tracing::info!(
                replicas = config.replicas,
                cluster = info.cluster.as_deref().unwrap_or("none"),
                servers = info.connect_urls.len().max(1),
                "stream replicas follow the server"
            );
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
            #[cfg(feature = "testing")]
            faults: Default::default(),
        });
        Ok(Store {
            writer: StoreWriter::new(shared),
        })
    }

    /// A read-only handle.
    pub fn reader(&self) -> StoreReader {
        self.writer.reader().clone()
    }

    /// A read-only handle on the same stream through another NATS
    /// connection (e.g. one for plugin reads alone).
    pub async fn reader_on(&self, client: async_nats::Client) -> Result<StoreReader, StoreError> {
        let have = &self.writer.reader().shared;
        client
            .flush()
            .await
            .map_err(|e| StoreError::unavailable("connect", e))?;
        let js = async_nats::jetstream::new(client.clone());
        let stream = js
            .get_stream(&have.config.stream)
            .await
            .map_err(|e| StoreError::unavailable("open stream", e))?;
        Ok(StoreReader {
            shared: Arc::new(reader::Shared {
                max_payload: client.server_info().max_payload,
                client,
                stream,
                subjects: have.subjects.clone(),
                config: have.config.clone(),
                #[cfg(feature = "testing")]
                faults: Default::default(),
            }),
        })
    }

    /// A writing handle (also reads through [`StoreWriter::reader`]).
    pub fn writer(&self) -> StoreWriter {
        self.writer.clone()
    }

    /// Test seam (feature `testing`): the next `times` commits of this
    /// store's writer lose their answer as `fault` says.
    #[cfg(feature = "testing")]
    pub fn inject_commit_fault(&self, fault: CommitFault, times: usize) {
        self.writer.reader().shared.faults.inject(fault, times);
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        self.writer.reader().config()
    }
}

/// The replicas a stream on this server should have: 3 in a cluster of 3
/// or more (the servers it gossips to its clients), else 1.
fn replicas_for(info: &async_nats::ServerInfo) -> usize {
    let servers = info.connect_urls.len();
    if info.cluster.is_some() && servers >= 3 {
        3
    } else {
        1
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
