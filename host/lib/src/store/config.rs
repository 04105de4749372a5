//! Storage configuration and its presets.

use std::time::Duration;

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// On disk: survives server restarts. The default.
    File,
    /// In memory: fast, lost when the server stops. Tests and benchmarks.
    Memory,
}

/// Bounded retries for failures that are known to have stored nothing
/// (no responders, "temporarily unavailable", too many batches in flight)
/// and for reads. A write that timed out is never retried blindly: it may
/// have been applied, so the caller gets [`StoreError::Timeout`] and re-reads.
///
/// [`StoreError::Timeout`]: super::StoreError::Timeout
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Upper bound on one wait.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// How the store talks to JetStream.
///
/// Start from a preset ([`development`](Self::development),
/// [`production`](Self::production),
/// [`high_throughput`](Self::high_throughput)) and adjust fields.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// JetStream stream name.
    pub stream: String,
    /// Subject prefix: everything lives under `{prefix}.workflows.>`. One or
    /// more dot-separated tokens of `[A-Za-z0-9_-]`.
    pub prefix: String,
    /// Stream replicas: 1 for one server, 3 for a cluster. `0` follows the
    /// server: 3 when it is in a cluster of 3 or more, else 1 (logged when
    /// the store opens). More than the server can give is refused with
    /// [`StoreError::Configuration`](super::StoreError::Configuration).
    pub replicas: usize,
    /// File or memory storage.
    pub storage: StorageKind,
    /// Deadline for one request to the server (a get, a batch commit).
    pub request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Most token writes coalesced into one atomic batch (each write is 2-3
    /// messages; the server accepts at most 1000 per batch). Measured here:
    /// 64-128 gives the best moves/s on a file-backed stream.
    pub max_group_writes: usize,
    /// Time-to-live of the tombstone left on a place subject when a token
    /// moves out or completes. `None` keeps tombstones forever; a TTL keeps
    /// place listings short for places with a long past. A completed token's
    /// id becomes reusable once its tombstone expires.
    pub tombstone_ttl: Option<Duration>,
    /// Time-to-live of events (history). `None` keeps the full audit trail.
    pub event_ttl: Option<Duration>,
    /// Window in which `Nats-Msg-Id` duplicates are dropped by the server.
    pub duplicate_window: Duration,
    /// How long an idempotency key is remembered (the time-to-live of its
    /// record). A retry with the same key within it gets the original
    /// outcome; after it, the key is free again. Must cover how long the
    /// action dispatcher may deliver an event again (checked when it
    /// starts). `None` keeps records forever.
    pub idempotency_ttl: Option<Duration>,
    /// Messages fetched per page when listing places and history.
    pub page_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::production()
    }
}

impl StoreConfig {
    /// One local server: short timeouts so mistakes surface fast.
    pub fn development() -> Self {
        StoreConfig {
            stream: "CIRCUIT_BREAKER".into(),
            prefix: "cb".into(),
            replicas: 1,
            storage: StorageKind::File,
            request_timeout: Duration::from_secs(2),
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
            },
            max_group_writes: 128,
            tombstone_ttl: Some(Duration::from_secs(24 * 3600)),
            event_ttl: None,
            duplicate_window: Duration::from_secs(120),
            idempotency_ttl: Some(Duration::from_secs(24 * 3600)),
            page_size: 1000,
        }
    }

    /// A cluster in production: three replicas, patient timeouts and more
    /// retries to ride out a leader election.
    pub fn production() -> Self {
        StoreConfig {
            replicas: 3,
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                attempts: 6,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
            },
            ..Self::development()
        }
    }

    /// Many concurrent firings: production settings with the largest
    /// measured-good group size.
    pub fn high_throughput() -> Self {
        StoreConfig {
            max_group_writes: 128,
            page_size: 1000,
            ..Self::production()
        }
    }

    /// Sets the stream name.
    pub fn with_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Sets the subject prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the replica count.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the storage kind.
    pub fn with_storage(mut self, storage: StorageKind) -> Self {
        self.storage = storage;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = StoreConfig::development().retry;
        assert_eq!(p.backoff(1), Duration::from_millis(20));
        assert_eq!(p.backoff(2), Duration::from_millis(40));
        assert_eq!(p.backoff(10), Duration::from_millis(200));
        assert_eq!(p.backoff(100), Duration::from_millis(200));
    }
}
