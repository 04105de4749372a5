//! What plugins read through: a [`StoreReader`] (on a NATS connection of
//! its own when the host has one) behind a gate on the bytes in flight.
//!
//! Every plugin call's reads are charged against its own budget before
//! they are fetched (`plugin/state.rs`); this bounds the sum over calls.
//! A connection whose client falls behind the server by more than the
//! server's `max_pending` (64 MiB by default) is dropped as a slow
//! consumer, and with it every request on it. Plugin reads in flight never
//! ask for more than [`ReadGate::DEFAULT_BYTES`] together, so they cannot
//! get a connection dropped, and with a connection of their own a stall in
//! them cannot reach the API's.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::model::{Id, StoredDefinition, Token};
use crate::store::{BoxFuture, Page, StoreError, StoreReader, TokenSource};

/// Permits are counted in KiB.
const UNIT: usize = 1024;

/// The plugins' reader: a [`StoreReader`] behind the byte gate.
pub(crate) struct PluginReads {
    reader: StoreReader,
    gate: Arc<Semaphore>,
    /// What one get may bring back at most: the server's `max_payload`.
    get_bytes: usize,
    total: usize,
}

impl PluginReads {
    /// What plugin reads may have in flight at once, together.
    pub(crate) const DEFAULT_BYTES: usize = 32 << 20;

    pub(crate) fn new(reader: StoreReader, total: usize) -> Self {
        let get_bytes = reader.max_payload();
        PluginReads {
            reader,
            gate: Arc::new(Semaphore::new(total.div_ceil(UNIT).max(1))),
            get_bytes,
            total,
        }
    }

    /// Waits until `bytes` more may be in flight (at most the whole gate).
    async fn admit(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let units = bytes.min(self.total).div_ceil(UNIT).max(1) as u32;
        self.gate
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the gate is never closed")
    }
}

impl TokenSource for PluginReads {
    fn get_token<'a>(&'a self, workflow: &'a Id, token: &'a Id) -> BoxFuture<'a, Result<Token, StoreError>> {
        Box::pin(async move {
            let _in_flight = self.admit(self.get_bytes).await;
            self.reader.get_token(workflow, token).await
        })
    }

    fn list_place<'a>(
        &'a self,
        workflow: &'a Id,
        place: &'a Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Page<Token>, StoreError>> {
        Box::pin(async move {
            // A page holds at least one token, which may be as large as a
            // message can be.
            let bytes = max_bytes.max(self.get_bytes);
            let _in_flight = self.admit(bytes).await;
            self.reader
                .list_place_bounded(workflow, place, cursor, limit, max_bytes)
                .await
        })
    }

    fn get_definition<'a>(&'a self, workflow: &'a Id) -> BoxFuture<'a, Result<StoredDefinition, StoreError>> {
        Box::pin(async move {
            let _in_flight = self.admit(self.get_bytes).await;
            self.reader.get_definition(workflow).await
        })
    }
}
