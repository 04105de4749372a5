//! The action feed: the one durable consumer the host creates, over the
//! transition events, with explicit acks. Real message processing (the
//! actions after a transition) is the one place where consuming is right;
//! storage queries never get near it.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures::StreamExt;
use time::OffsetDateTime;

use super::reader::decode_event_payload;
use super::{Store, StoreError};
use crate::model::Event;

/// How the action feed's durable consumer is set up. Every host on the
/// stream shares it, so each event is with one host at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// Durable consumer name.
    pub consumer: String,
    /// How long a host may hold an event before it is delivered again (to
    /// another host, if this one died).
    pub ack_wait: Duration,
    /// Events delivered and not yet acknowledged, over all hosts.
    pub max_ack_pending: i64,
}

/// The durable consumer over `{prefix}.workflows.*.events.transitions.*`.
pub struct ActionFeed {
    consumer: PullConsumer,
}

impl std::fmt::Debug for ActionFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionFeed").finish_non_exhaustive()
    }
}

/// One delivery of a transition event.
pub struct Delivery {
    msg: async_nats::jetstream::Message,
    /// Stream sequence of the event: the actions' idempotency key.
    pub sequence: u64,
    /// Deliveries so far, this one included (1 = first).
    pub delivered: i64,
    /// When the server stored the event: the same on every delivery.
    pub stored_at: OffsetDateTime,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("sequence", &self.sequence)
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl Delivery {
    /// The event, with its stored sequence and time.
    pub fn event(&self) -> Result<Event, StoreError> {
        decode_event_payload(&self.msg.payload, self.sequence, self.stored_at)
    }

    /// The trace context of the firing that stored the event (its
    /// `traceparent` header), if it had one.
    pub fn traceparent(&self) -> Option<&str> {
        self.msg
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::trace::TRACEPARENT))
            .map(|v| v.as_str())
    }

    /// Done with: acknowledged and confirmed by the server, so it is not
    /// delivered again.
    pub async fn ack(&self) -> Result<(), StoreError> {
        self.msg
            .double_ack()
            .await
            .map_err(|e| StoreError::unavailable("ack action event", e))
    }

    /// Not done: deliver it again after `delay`.
    pub async fn retry_after(&self, delay: Duration) -> Result<(), StoreError> {
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| StoreError::unavailable("nak action event", e))
    }

    /// Never deliver it again (it cannot be processed, e.g. undecodable).
    pub async fn terminate(&self) -> Result<(), StoreError> {
        self.msg
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| StoreError::unavailable("terminate action event", e))
    }
}

/// Deliveries as they come; errors of the consumer stream are logged and
/// skipped.
pub struct Deliveries {
    stream: pull::Stream,
}

impl Deliveries {
    /// The next delivery, or `None` when the consumer stream ended (the
    /// caller asks the feed for a new one).
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.stream.next().await? {
                Ok(msg) => match msg.info() {
                    Ok(info) => {
                        let (sequence, delivered, stored_at) =
                            (info.stream_sequence, info.delivered, info.published);
                        // Events still to deliver after this one: the
                        // dispatcher's lag, as of this delivery.
                        crate::metrics::action_delivery(delivered as u64, info.pending);
                        return Some(Delivery {
                            msg,
                            sequence,
                            delivered,
                            stored_at,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "action event without metadata; terminating it");
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                },
                Err(e) => tracing::debug!(error = %e, "action feed stream error"),
            }
        }
    }
}

impl ActionFeed {
    /// Pulls deliveries.
    pub async fn deliveries(&self) -> Result<Deliveries, StoreError> {
        let stream = self
            .consumer
            .messages()
            .await
            .map_err(|e| StoreError::unavailable("action feed", e))?;
        Ok(Deliveries { stream })
    }
}

impl Store {
    /// Creates (or binds to, and brings up to date) the action feed's
    /// durable consumer. It delivers each event until it is acknowledged or
    /// terminated: the dispatcher decides when an event has failed for good
    /// and records that before acknowledging, so no failure is lost to a
    /// delivery limit.
    pub async fn action_feed(&self, config: &FeedConfig) -> Result<ActionFeed, StoreError> {
        let shared = &self.writer.reader().shared;
        let want = pull::Config {
            durable_name: Some(config.consumer.clone()),
            description: Some("Circuit Breaker action dispatcher".into()),
            filter_subject: shared.subjects.all_transition_events(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: config.ack_wait,
            max_deliver: -1,
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        };
        let op = "create action consumer";
        let consumer: PullConsumer = match shared.stream.get_consumer(&config.consumer).await {
            Ok(mut c) => {
                let have = c
                    .info()
                    .await
                    .map_err(|e| StoreError::unavailable(op, e))?
                    .config
                    .clone();
                if have.max_deliver != want.max_deliver
                    || have.ack_wait != want.ack_wait
                    || have.max_ack_pending != want.max_ack_pending
                {
                    // The host's own consumer, not user data: brought up to
                    // date (deliveries and acks are kept).
                    tracing::info!(consumer = %config.consumer, "updating the action consumer's settings");
                    shared
                        .stream
                        .update_consumer(want)
                        .await
                        .map_err(|e| StoreError::unavailable(op, e))?
                } else {
                    c
                }
            }
            Err(_) => shared
                .stream
                .get_or_create_consumer(&config.consumer, want)
                .await
                .map_err(|e| StoreError::unavailable(op, e))?,
        };
        Ok(ActionFeed { consumer })
    }
}
