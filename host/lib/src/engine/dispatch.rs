//! Actions, run from the transition events.
//!
//! A durable pull consumer with explicit acks over
//! `{prefix}.workflows.*.events.transitions.*` is the one consumer this
//! host creates. Every host shares it, so each event is processed by one
//! host at a time; an event is acked only after all of its transition's
//! actions succeeded and their follow-up firings were made. A failed action
//! (or a host that dies) means redelivery after a backoff; after the last
//! attempt an `action_failed` event is recorded for the token and the
//! message is acked.
//!
//! Follow-up firings are exactly-once per event: each carries an
//! idempotency key (`Nats-Msg-Id`) derived from the event sequence, the
//! action's index and the request's index, and the first request on the
//! event's own token also expects the revision the action saw.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{Engine, FireError, FireRequest};
use crate::model::{EventKind, Id, Token};
use crate::plugin::{ActionInput, World};
use crate::store::{Delivery, FeedConfig, StoreError};

/// Dispatcher settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// Durable consumer name, shared by every host on the stream.
    pub consumer: String,
    /// Deliveries of one event before its failure is recorded.
    pub max_deliver: i64,
    /// How long a host may hold an event before it is redelivered (to
    /// another host, if this one died).
    pub ack_wait: Duration,
    /// Waits before redelivery after a failed attempt, by attempt.
    pub backoff: Vec<Duration>,
    /// Events processed at once by this host.
    pub concurrency: usize,
    /// Test seam (feature `testing`): after the follow-up firings of an
    /// event's first delivery, behave as if the host died before acking (the
    /// event is delivered again after the first backoff).
    #[cfg(feature = "testing")]
    pub fault_skip_first_ack: bool,
}

impl DispatcherConfig {
    /// The longest an event may go on being delivered: every delivery held
    /// for the ack wait (its host died) and followed by the longest backoff.
    pub fn redelivery_span(&self) -> Duration {
        let longest = self.backoff.iter().max().copied().unwrap_or_default();
        (self.ack_wait + longest) * self.max_deliver.max(1) as u32
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            consumer: "cb-actions".into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            backoff: vec![
                Duration::from_millis(500),
                Duration::from_secs(2),
                Duration::from_secs(10),
                Duration::from_secs(30),
            ],
            concurrency: 16,
            #[cfg(feature = "testing")]
            fault_skip_first_ack: false,
        }
    }
}

/// A running dispatcher. [`shutdown`](Self::shutdown) stops pulling and
/// waits for the events in progress.
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Creates (or binds to) the durable consumer and starts processing.
    ///
    /// Refused ([`StoreError::Configuration`]) when the store forgets
    /// idempotency keys sooner than an event may come back: a follow-up
    /// firing is exactly-once only while its key is remembered.
    pub async fn start(engine: Engine, config: DispatcherConfig) -> Result<Dispatcher, StoreError> {
        let span = config.redelivery_span();
        if let Some(ttl) = engine.store().config().idempotency_ttl
            && ttl < span
        {
            return Err(StoreError::Configuration(format!(
                "idempotency keys are kept {ttl:?}, but an action event may be delivered again for up to \
                 {span:?} ({} deliveries, {:?} ack wait, backoff {:?}): follow-up firings would not be \
                 exactly-once. Raise StoreConfig::idempotency_ttl or lower the dispatcher's max_deliver/ack_wait",
                config.max_deliver, config.ack_wait, config.backoff
            )));
        }
        let feed = engine
            .store()
            .action_feed(&FeedConfig {
                consumer: config.consumer.clone(),
                ack_wait: config.ack_wait,
                max_ack_pending: (config.concurrency * 4).max(64) as i64,
            })
            .await?;
        let (stop, mut stopped) = watch::channel(false);
        let config = Arc::new(config);
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
            let mut running = JoinSet::new();
            'outer: loop {
                let mut deliveries = match feed.deliveries().await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "action consumer unavailable; retrying");
                        tokio::select! {
                            _ = stopped.changed() => break 'outer,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = stopped.changed() => break 'outer,
                        next = deliveries.next() => next,
                    };
                    let Some(delivery) = next else { break };
                    let permit = slots.clone().acquire_owned().await.expect("never closed");
                    let (engine, config) = (engine.clone(), config.clone());
                    running.spawn(async move {
                        handle(&engine, &config, delivery).await;
                        drop(permit);
                    });
                    while running.try_join_next().is_some() {}
                }
            }
            while running.join_next().await.is_some() {}
        });
        Ok(Dispatcher { stop, task })
    }

    /// Stops taking events and waits for those in progress to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What became of one delivery.
enum Outcome {
    Done,
    Retry(String),
    Failed { plugin: Id, error: String },
}

/// The wait before the next delivery after failed attempt `delivered`.
fn backoff(config: &DispatcherConfig, delivered: i64) -> Duration {
    config
        .backoff
        .get((delivered as usize).saturating_sub(1))
        .or(config.backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

async fn handle(engine: &Engine, config: &DispatcherConfig, delivery: Delivery) {
    let (seq, delivered) = (delivery.sequence, delivery.delivered);
    let event = match delivery.event() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(seq, error = %e, "undecodable transition event; terminating it");
            let _ = delivery.terminate().await;
            return;
        }
    };
    // One span per delivery: a retried delivery is a span of its own, and
    // each ends when its attempt does.
    let span = tracing::info_span!(
        "action",
        otel.name = "action",
        otel.kind = "consumer",
        workflow = %event.workflow_id,
        token = %event.token_id,
        event_sequence = i64::try_from(seq).unwrap_or(i64::MAX),
        delivered,
        outcome = tracing::field::Empty,
    );
    crate::trace::set_remote_parent(&span, delivery.traceparent());
    let outcome = run_actions(engine, &event, seq, delivered)
        .instrument(span.clone())
        .await;
    span.record(
        "outcome",
        match &outcome {
            Outcome::Done => "done",
            Outcome::Retry(_) => "retry",
            Outcome::Failed { .. } => "failed",
        },
    );
    let result = match outcome {
        #[cfg(feature = "testing")]
        Outcome::Done if config.fault_skip_first_ack && delivered == 1 => {
            tracing::warn!(seq, "test fault: not acking the first delivery");
            // Deliver again after the first backoff, as if the host had died.
            delivery.retry_after(backoff(config, 1)).await
        }
        Outcome::Done => delivery.ack().await,
        Outcome::Retry(reason) if delivered < config.max_deliver => {
            let delay = backoff(config, delivered);
            tracing::warn!(seq, delivered, ?delay, %reason, "action attempt failed; will retry");
            delivery.retry_after(delay).await
        }
        Outcome::Failed { plugin, error } if delivered < config.max_deliver => {
            let delay = backoff(config, delivered);
            tracing::warn!(seq, delivered, ?delay, %plugin, %error, "action failed; will retry");
            delivery.retry_after(delay).await
        }
        Outcome::Retry(reason) => {
            settle_failure(config, &delivery, engine, &event, "<dispatcher>", &reason).await
        }
        Outcome::Failed { plugin, error } => {
            settle_failure(config, &delivery, engine, &event, plugin.as_str(), &error).await
        }
    };
    if let Err(e) = result {
        // The event will be delivered again; follow-ups are idempotent.
        tracing::warn!(seq, error = %e, "could not settle an action event");
    }
}

/// After the last attempt: the failure is recorded on the token, and only
/// then the event acknowledged. A failure that cannot be recorded is not
/// acknowledged: the event comes back, and recording is tried again.
async fn settle_failure(
    config: &DispatcherConfig,
    delivery: &Delivery,
    engine: &Engine,
    event: &crate::model::Event,
    plugin: &str,
    error: &str,
) -> Result<(), StoreError> {
    match record_failure(
        engine,
        event,
        delivery.sequence,
        delivery.delivered,
        plugin,
        error,
    )
    .await
    {
        Ok(()) => {
            crate::metrics::action_failure();
            delivery.ack().await
        }
        Err(e) => {
            let delay = backoff(config, delivery.delivered);
            tracing::error!(seq = delivery.sequence, error = %e, ?delay, "could not record the action failure; the event will come back");
            delivery.retry_after(delay).await
        }
    }
}

async fn record_failure(
    engine: &Engine,
    event: &crate::model::Event,
    seq: u64,
    attempts: i64,
    plugin: &str,
    error: &str,
) -> Result<(), StoreError> {
    let EventKind::Transition { transition, .. } = &event.kind else {
        return Ok(());
    };
    let kind = EventKind::ActionFailed {
        transition: transition.clone(),
        plugin: Id::new(plugin).unwrap_or_else(|_| Id::new("dispatcher").expect("valid")),
        event_sequence: seq,
        attempts: attempts as u64,
        error: error.to_string(),
    };
    tracing::error!(seq, workflow = %event.workflow_id, token = %event.token_id, plugin, error, "action failed for good");
    engine
        .writer()
        .append_event(&event.workflow_id, &event.token_id, kind)
        .await
        .map(|_| ())
}

async fn run_actions(engine: &Engine, event: &crate::model::Event, seq: u64, delivered: i64) -> Outcome {
    let EventKind::Transition {
        transition,
        from,
        to,
        actor,
        input,
        state,
        cancelled,
        ..
    } = &event.kind
    else {
        return Outcome::Done;
    };
    let def = match engine
        .definition(&event.workflow_id, state.definition_version)
        .await
    {
        Ok(d) => d,
        Err(StoreError::NotFound(m)) => {
            tracing::error!(seq, error = %m, "transition event for an unknown definition; skipping its actions");
            return Outcome::Done;
        }
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let Some(t) = def.definition.transition(transition.as_str()) else {
        return Outcome::Done;
    };
    if t.actions.is_empty() {
        return Outcome::Done;
    }
    let marking = event.kind.marking_after().unwrap_or_default();
    let token = Token {
        id: event.token_id.clone(),
        workflow_id: event.workflow_id.clone(),
        definition_version: state.definition_version,
        place: marking.first().unwrap_or(to).clone(),
        marking,
        data: state.data.clone(),
        metadata: state.metadata.clone(),
        created_at: state.created_at,
        updated_at: event.time,
        revision: seq - 1,
        subject: String::new(),
    };
    let registry = engine.plugins();
    let mut all_requests = Vec::new();
    for (ai, action) in t.actions.iter().enumerate() {
        if engine.is_loading(action.plugin.as_str()) {
            return Outcome::Retry(format!("plugin `{}` is still loading", action.plugin));
        }
        let plugin = match registry.resolve(action.plugin.as_str(), action.digest.as_deref(), World::Action) {
            Ok(p) => p.for_ref(action),
            Err(e) => {
                return Outcome::Failed {
                    plugin: action.plugin.clone(),
                    error: e.to_string(),
                };
            }
        };
        let input = ActionInput {
            event_sequence: seq,
            token: token.clone(),
            transition: t.clone(),
            from: from.clone(),
            to: to.clone(),
            consumed: event.kind.consumed().unwrap_or_default(),
            produced: event.kind.produced().unwrap_or_default(),
            cancelled: cancelled.clone(),
            actor: actor.clone(),
            input: input.clone(),
            config: action.config.clone(),
            fired_at: event.time,
        };
        match plugin.run_action(&input, engine.source()).await {
            Ok(out) => all_requests.push((ai, action.plugin.clone(), out.value)),
            Err(e) => {
                tracing::debug!(seq, delivered, plugin = %action.plugin, error = %e, "action attempt failed");
                return Outcome::Failed {
                    plugin: action.plugin.clone(),
                    error: e.to_string(),
                };
            }
        }
    }
    let mut own_token_expected = Some(seq - 1);
    for (ai, plugin, requests) in all_requests {
        for (ri, r) in requests.into_iter().enumerate() {
            let same = r.workflow_id == event.workflow_id && r.token_id == event.token_id;
            let req = FireRequest {
                workflow: r.workflow_id,
                token: r.token_id,
                transition: r.transition,
                input: r.input,
                actor: Some(format!("action:{plugin}")),
                expected_revision: if same { own_token_expected.take() } else { None },
                idempotency_key: Some(format!("cb-action-{seq}-{ai}-{ri}")),
            };
            let result = engine.fire(req.clone()).await;
            // A conflict on the revision this event left the token at: the
            // token moved on (an earlier delivery's follow-up, another
            // firing), or the read behind it lagged the event itself, as a
            // stream leader elected a moment ago may. Only the first settles
            // the event; the second is retried. (`NotEnabled` needs no such
            // check: `fire` compares the expected revision before the place,
            // so it refuses only a token read at this event's revision.)
            if let (Err(FireError::Conflict { .. }), Some(expected)) = (&result, req.expected_revision) {
                match engine
                    .store()
                    .reader()
                    .get_token_from_leader(&req.workflow, &req.token)
                    .await
                {
                    Ok(t) if t.revision < expected => {
                        return Outcome::Retry(format!(
                            "token {} read at revision {}, behind its event {seq}",
                            req.token, t.revision
                        ));
                    }
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Outcome::Retry(e.to_string()),
                }
            }
            match result {
                Ok(_) => {}
                // Already applied by an earlier delivery, or the token moved
                // on since the action ran: nothing more to do.
                Err(
                    FireError::Duplicate { .. } | FireError::Conflict { .. } | FireError::NotEnabled { .. },
                ) => {
                    tracing::debug!(seq, token = %req.token, transition = %req.transition, "follow-up already applied or superseded");
                }
                // Not known to be done: deliver again (the follow-up's key
                // finds the firing if it was made).
                Err(FireError::Unavailable(e) | FireError::Indeterminate(e)) => {
                    return Outcome::Retry(e.to_string());
                }
                Err(e @ FireError::Plugin(crate::plugin::PluginError::Loading { .. })) => {
                    return Outcome::Retry(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(seq, token = %req.token, transition = %req.transition, error = %e, "follow-up firing refused");
                }
            }
        }
    }
    Outcome::Done
}
