//! The read-only half of the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::{self, message::StreamMessage, stream::DirectGetErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::direct::{self, DirectRefusal};
use super::subjects::Subjects;
use super::{Missing, StoreConfig, StoreError};
use crate::model::{Event, EventKind, Id, Metadata, StoredDefinition, Token, WorkflowDefinition};

/// Header marking a tombstone (KV convention: the subject's value is gone).
pub(crate) const KV_OPERATION: &str = "KV-Operation";

/// What every store handle shares. The NATS client is reachable only
/// inside the store: a reader hands out reads, never its connection.
pub(super) struct Shared {
    pub(super) client: async_nats::Client,
    pub(super) stream: jetstream::stream::Stream,
    pub(super) subjects: Subjects,
    pub(super) config: StoreConfig,
    /// The server's `max_payload`, checked before every write.
    pub(super) max_payload: usize,
    /// Test seams: commits whose answer is lost on purpose.
    #[cfg(feature = "testing")]
    pub(super) faults: super::group::Faults,
}

/// The stored body of a token state. Ids, place, revision and time are not
/// in it: they come from the subject and the message info.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    pub(crate) definition_version: u64,
    pub(crate) data: serde_json::Value,
    #[serde(default)]
    pub(crate) metadata: Metadata,
    /// Absent on the first state: creation time is then that message's own
    /// timestamp. Later states carry it forward.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub(crate) created_at: Option<OffsetDateTime>,
    /// The whole marking, when it has more than one place (else the
    /// subject's place is it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) marking: Vec<Id>,
}

/// The stored body of an event.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EventBody {
    pub(crate) workflow_id: Id,
    pub(crate) token_id: Id,
    #[serde(default)]
    pub(crate) from_revision: u64,
    #[serde(flatten)]
    pub(crate) kind: EventKind,
}

/// The stored body of an idempotency record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyRecordBody {
    pub(crate) key: String,
    pub(crate) op: String,
    pub(crate) request: String,
    pub(crate) token: Id,
}

/// An idempotency key's record: which write holds the key. The record is
/// stored last in its write's batch, right after the write's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Its stream sequence; the write's event is at `sequence - 1`.
    pub sequence: u64,
    /// The key.
    pub key: String,
    /// What kind of write it keys.
    pub op: String,
    /// The digest of the request it keyed.
    pub request: String,
    /// The token written (the workflow, for an apply).
    pub token: Id,
}

/// One page of a listing. Pass `next` back as the cursor for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Page<T> {
    /// The items, in stream order.
    pub items: Vec<T>,
    /// Cursor of the next page, `None` at the end.
    pub next: Option<u64>,
}

/// Read-only access to workflows, tokens and history.
///
/// Every read is a Direct Get (served by any replica, no consumer) or, for
/// read-your-writes, a leader `STREAM.MSG.GET`. Nothing here can publish,
/// ack, or create a consumer: this is the only store handle plugins are given.
#[derive(Clone)]
pub struct StoreReader {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("stream", &self.shared.config.stream)
            .field("prefix", &self.shared.config.prefix)
            .finish()
    }
}

fn map_direct(
    op: &str,
    e: async_nats::jetstream::stream::DirectGetError,
    missing: impl FnOnce() -> Missing,
    timeout: std::time::Duration,
) -> StoreError {
    match e.kind() {
        DirectGetErrorKind::NotFound => StoreError::NotFound(missing()),
        DirectGetErrorKind::TimedOut => StoreError::Timeout {
            operation: op.into(),
            timeout_ms: timeout.as_millis() as u64,
        },
        // 503: no responders (a new or moving stream whose Direct Get
        // responders are not subscribed yet, or JetStream not ready):
        // transient, so retried.
        DirectGetErrorKind::ErrorResponse(code, desc) if code.as_u16() == 503 => {
            StoreError::unavailable(op, format!("{desc} (503)"))
        }
        DirectGetErrorKind::ErrorResponse(code, desc) => StoreError::Server {
            operation: op.into(),
            code: code.as_u16(),
            err_code: 0,
            description: desc,
        },
        _ => StoreError::unavailable(op, e),
    }
}

pub(crate) fn is_tombstone(msg: &StreamMessage) -> bool {
    msg.headers
        .get(KV_OPERATION)
        .is_some_and(|v| matches!(v.as_str(), "PURGE" | "DEL"))
}

impl StoreReader {
    pub(crate) fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// The subject a token's state has in `place`.
    pub(crate) fn token_subject(&self, workflow: &Id, place: &Id, token: &Id) -> String {
        self.shared.subjects.token(workflow, place, token)
    }

    /// The server's `max_payload`: the most one message (and so one get)
    /// can weigh.
    pub(crate) fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    /// Runs a read with the configured retries for transient failures.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let policy = self.shared.config.retry;
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e)
                    if (e.is_transient() || matches!(e, StoreError::Timeout { .. }))
                        && attempt < policy.attempts =>
                {
                    tracing::debug!(error = %e, attempt, "read failed; retrying");
                    tokio::time::sleep(policy.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn last_for(
        &self,
        op: &str,
        subject: String,
        missing: impl Fn() -> Missing,
    ) -> Result<StreamMessage, StoreError> {
        let timeout = self.shared.config.request_timeout;
        self.retry(|| async {
            match tokio::time::timeout(
                timeout,
                self.shared.stream.direct_get_last_for_subject(subject.clone()),
            )
            .await
            {
                Err(_) => Err(StoreError::Timeout {
                    operation: op.into(),
                    timeout_ms: timeout.as_millis() as u64,
                }),
                Ok(r) => r.map_err(|e| map_direct(op, e, &missing, timeout)),
            }
        })
        .await
    }

    /// The latest definition of `workflow`.
    pub async fn get_definition(&self, workflow: &Id) -> Result<StoredDefinition, StoreError> {
        let subject = self.shared.subjects.definition(workflow);
        let msg = self
            .last_for("get definition", subject, || Missing::Workflow(workflow.clone()))
            .await?;
        decode_definition(&msg)
    }

    /// Version `version` (a stream sequence) of `workflow`'s definition.
    pub async fn get_definition_version(
        &self,
        workflow: &Id,
        version: u64,
    ) -> Result<StoredDefinition, StoreError> {
        let timeout = self.shared.config.request_timeout;
        let missing = || Missing::WorkflowVersion(workflow.clone(), version);
        let direct = self
            .retry(|| async {
                match tokio::time::timeout(timeout, self.shared.stream.direct_get(version)).await {
                    Err(_) => Err(StoreError::Timeout {
                        operation: "get definition version".into(),
                        timeout_ms: timeout.as_millis() as u64,
                    }),
                    Ok(r) => r.map_err(|e| map_direct("get definition version", e, missing, timeout)),
                }
            })
            .await;
        // A version is asked for because a token or event names it, so it
        // exists: a miss from a Direct Get replica that lags (a node that
        // just rejoined) is confirmed with the leader.
        let msg = match direct {
            Err(StoreError::NotFound(_)) if self.may_lag() => {
                self.sequence_from_leader(version, missing).await?
            }
            other => other?,
        };
        if msg.subject.as_str() != self.shared.subjects.definition(workflow) {
            return Err(StoreError::NotFound(missing()));
        }
        decode_definition(&msg)
    }

    /// Whether a Direct Get may be answered by a replica behind the leader
    /// (the stream has more than one replica).
    pub(crate) fn may_lag(&self) -> bool {
        self.shared.config.replicas > 1
    }

    /// The message at `seq`, from the stream leader (`STREAM.MSG.GET`).
    async fn sequence_from_leader(
        &self,
        seq: u64,
        missing: impl Fn() -> Missing,
    ) -> Result<async_nats::jetstream::message::StreamMessage, StoreError> {
        use async_nats::jetstream::stream::RawMessageErrorKind as K;
        let timeout = self.shared.config.request_timeout;
        self.retry(|| async {
            match tokio::time::timeout(timeout, self.shared.stream.get_raw_message(seq)).await {
                Err(_) => Err(StoreError::Timeout {
                    operation: "get message (leader)".into(),
                    timeout_ms: timeout.as_millis() as u64,
                }),
                Ok(Ok(m)) => Ok(m),
                Ok(Err(e)) => match e.kind() {
                    K::NoMessageFound => Err(StoreError::NotFound(missing())),
                    _ => Err(StoreError::unavailable("get message (leader)", e)),
                },
            }
        })
        .await
    }

    /// The record of idempotency key `key` in `workflow`, if the key was
    /// used within its time-to-live. On a replicated stream a miss is
    /// confirmed with the leader (a replica may not have the record yet).
    pub async fn key_record(&self, workflow: &Id, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let subject = self.shared.subjects.key_record(workflow, key);
        let missing = || Missing::Workflow(workflow.clone());
        let msg = match self.last_for("get key record", subject.clone(), missing).await {
            Ok(m) => Some(m),
            Err(StoreError::NotFound(_)) if self.may_lag() => {
                use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
                match self.shared.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(m) => Some(m),
                    Err(e) if e.kind() == K::NoMessageFound => None,
                    Err(e) => return Err(StoreError::unavailable("get key record (leader)", e)),
                }
            }
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let Some(msg) = msg else { return Ok(None) };
        let body: KeyRecordBody = serde_json::from_slice(&msg.payload)
            .map_err(|e| StoreError::corrupt(&msg.subject, msg.sequence, e))?;
        Ok(Some(KeyRecord {
            sequence: msg.sequence,
            key: body.key,
            op: body.op,
            request: body.request,
            token: body.token,
        }))
    }

    /// The event stored at `sequence` (from the stream leader): how a
    /// keyed write's original outcome is read back.
    pub async fn event_at(&self, sequence: u64) -> Result<Event, StoreError> {
        let msg = self
            .sequence_from_leader(sequence, || Missing::Token {
                workflow: None,
                token: Id::new("event").expect("valid"),
            })
            .await?;
        decode_event(&msg)
    }

    /// The latest definition of every workflow, ordered by id.
    pub async fn list_workflows(&self) -> Result<Vec<StoredDefinition>, StoreError> {
        let filter = self.shared.subjects.all_definitions();
        let latest = self.last_per_subject(&filter).await?;
        let mut out: Vec<StoredDefinition> =
            latest.iter().map(decode_definition).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.definition.id.cmp(&b.definition.id));
        Ok(out)
    }

    /// Every stored version of `workflow`, oldest first.
    pub async fn definition_versions(&self, workflow: &Id) -> Result<Vec<StoredDefinition>, StoreError> {
        let filter = self.shared.subjects.definition(workflow);
        let mut out = Vec::new();
        let mut cursor = Some(1);
        while let Some(seq) = cursor {
            let (msgs, next) = self.next_page(&filter, seq, self.shared.config.page_size).await?;
            for m in &msgs {
                out.push(decode_definition(m)?);
            }
            cursor = next;
        }
        if out.is_empty() {
            return Err(StoreError::NotFound(Missing::Workflow(workflow.clone())));
        }
        Ok(out)
    }

    /// The live token `token` of `workflow`, wherever it is: one wildcard
    /// Direct Get (`last_by_subj` on `...places.*.tokens.{token}`), whose
    /// answer is the newest message by stream sequence.
    pub async fn get_token(&self, workflow: &Id, token: &Id) -> Result<Token, StoreError> {
        let subject = self.shared.subjects.token_any_place(workflow, token);
        let missing = || Missing::Token {
            workflow: Some(workflow.clone()),
            token: token.clone(),
        };
        let msg = self.last_for("get token", subject.clone(), missing).await?;
        match self.decode_token(&msg)? {
            Some(t) => Ok(t),
            None => self.gather(&subject, missing).await,
        }
    }

    /// A token whose newest place message is a tombstone: completed, or (a
    /// firing whose last place message cleared a mark) live in another
    /// place. One `multi_last` over its place subjects tells.
    async fn gather(&self, filter: &str, missing: impl Fn() -> Missing) -> Result<Token, StoreError> {
        let newest = self.last_per_subject(filter).await?;
        let live = newest
            .iter()
            .filter(|m| !is_tombstone(m))
            .max_by_key(|m| m.sequence);
        match live {
            Some(m) => self
                .decode_token(m)?
                .ok_or_else(|| StoreError::NotFound(missing())),
            None => Err(StoreError::NotFound(missing())),
        }
    }

    /// Like [`get_token`](Self::get_token), but read from the stream leader
    /// (`STREAM.MSG.GET`), so a caller always sees its own completed writes
    /// even on a cluster where a Direct Get replica may lag.
    pub async fn get_token_from_leader(&self, workflow: &Id, token: &Id) -> Result<Token, StoreError> {
        let subject = self.shared.subjects.token_any_place(workflow, token);
        let missing = || Missing::Token {
            workflow: Some(workflow.clone()),
            token: token.clone(),
        };
        let timeout = self.shared.config.request_timeout;
        let msg = self
            .retry(|| async {
                use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
                match tokio::time::timeout(
                    timeout,
                    self.shared.stream.get_last_raw_message_by_subject(&subject),
                )
                .await
                {
                    Err(_) => Err(StoreError::Timeout {
                        operation: "get token (leader)".into(),
                        timeout_ms: timeout.as_millis() as u64,
                    }),
                    Ok(Ok(m)) => Ok(m),
                    Ok(Err(e)) => match e.kind() {
                        K::NoMessageFound => Err(StoreError::NotFound(missing())),
                        _ => Err(StoreError::unavailable("get token (leader)", e)),
                    },
                }
            })
            .await?;
        match self.decode_token(&msg)? {
            Some(t) => Ok(t),
            None => self.gather(&subject, missing).await,
        }
    }

    /// The live token `token` in any workflow. Token ids generated by the
    /// host are unique across workflows; for caller-chosen ids that repeat
    /// across workflows, the most recently written one is returned.
    pub async fn find_token(&self, token: &Id) -> Result<Token, StoreError> {
        let subject = self.shared.subjects.token_anywhere(token);
        let missing = || Missing::Token {
            workflow: None,
            token: token.clone(),
        };
        let msg = self.last_for("find token", subject.clone(), missing).await?;
        match self.decode_token(&msg)? {
            Some(t) => Ok(t),
            None => self.gather(&subject, missing).await,
        }
    }

    /// The workflow a token belongs (or belonged) to, found from its newest
    /// event: one wildcard Direct Get, which also finds completed tokens.
    pub async fn token_workflow(&self, token: &Id) -> Result<Id, StoreError> {
        let subject = self.shared.subjects.token_events_anywhere(token);
        let missing = || Missing::Token {
            workflow: None,
            token: token.clone(),
        };
        let msg = self.last_for("find token workflow", subject, missing).await?;
        decode_event(&msg).map(|e| e.workflow_id)
    }

    /// One page of the tokens in `place`, in stream order. Start with
    /// `cursor = None`; pass the returned `next` for the following page.
    ///
    /// Every token subject holds exactly one message (rollup), so a
    /// `next_by_subj` batch over `...places.{place}.tokens.*` visits each
    /// token once; tombstones (tokens that moved on) are skipped.
    pub async fn list_place(
        &self,
        workflow: &Id,
        place: &Id,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Token>, StoreError> {
        self.list_place_bounded(workflow, place, cursor, limit, usize::MAX)
            .await
    }

    /// [`list_place`](Self::list_place), the page also cut by size: the
    /// server is asked for at most `max_bytes` (stored bytes: payload and
    /// subject), and the page ends before the token that would pass it
    /// (the cursor resumes there). The first token is returned even when it
    /// alone is larger, so a listing always makes progress.
    pub async fn list_place_bounded(
        &self,
        workflow: &Id,
        place: &Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page<Token>, StoreError> {
        let filter = self.shared.subjects.place(workflow, place);
        let limit = limit.max(1);
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut bytes = 0usize;
        let mut next = Some(cursor.unwrap_or(1));
        // Tombstones take room in a batch but are not tokens: keep reading
        // until the page holds `limit` tokens (or `max_bytes`) or the place
        // ends, so a page is full unless it is the last (as the in-memory
        // source does).
        'pages: while let Some(seq) = next
            && items.len() < limit
            && bytes < max_bytes
        {
            let room = (max_bytes != usize::MAX).then(|| max_bytes - bytes);
            let (msgs, after) = self
                .next_page_bounded(&filter, seq, limit - items.len(), room)
                .await?;
            next = after;
            for m in &msgs {
                let size = stored_size(m);
                if !items.is_empty() && bytes.saturating_add(size) > max_bytes {
                    next = Some(m.sequence);
                    break 'pages;
                }
                bytes = bytes.saturating_add(size);
                if let Some(t) = self.decode_token(m)? {
                    items.push(t);
                }
            }
        }
        Ok(Page { items, next })
    }

    /// Every token in `place`. Pages internally and keeps, per token
    /// subject, only its newest message: a token that left and came back
    /// while the pages were read appears once, at its newest state, and a
    /// state with a newer tombstone on its subject is never shown.
    pub async fn list_place_all(&self, workflow: &Id, place: &Id) -> Result<Vec<Token>, StoreError> {
        let filter = self.shared.subjects.place(workflow, place);
        let mut newest: BTreeMap<String, StreamMessage> = BTreeMap::new();
        let mut cursor = Some(1);
        while let Some(seq) = cursor {
            let (msgs, next) = self.next_page(&filter, seq, self.shared.config.page_size).await?;
            for m in msgs {
                newest.insert(m.subject.to_string(), m);
            }
            cursor = next;
        }
        let mut out = Vec::with_capacity(newest.len());
        for m in newest.values() {
            if let Some(t) = self.decode_token(m)? {
                out.push(t);
            }
        }
        out.sort_by_key(|t| t.revision);
        Ok(out)
    }

    /// One page of `token`'s history (transition and lifecycle events),
    /// oldest first. A bounded read of the token's own event subjects.
    pub async fn history(
        &self,
        workflow: &Id,
        token: &Id,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Event>, StoreError> {
        self.history_bounded(workflow, token, cursor, limit, usize::MAX)
            .await
    }

    /// [`history`](Self::history), the page also cut at about `max_bytes`
    /// of stored events (the first is returned whatever its size).
    pub async fn history_bounded(
        &self,
        workflow: &Id,
        token: &Id,
        cursor: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page<Event>, StoreError> {
        let filter = self.shared.subjects.token_events(workflow, token);
        let room = (max_bytes != usize::MAX).then_some(max_bytes);
        let (msgs, mut next) = self
            .next_page_bounded(&filter, cursor.unwrap_or(1), limit.max(1), room)
            .await?;
        let mut items = Vec::with_capacity(msgs.len());
        let mut bytes = 0usize;
        for m in &msgs {
            let size = stored_size(m);
            if !items.is_empty() && bytes.saturating_add(size) > max_bytes {
                next = Some(m.sequence);
                break;
            }
            bytes = bytes.saturating_add(size);
            items.push(decode_event(m)?);
        }
        Ok(Page { items, next })
    }

    /// `next_by_subj` + `batch` from `seq`: the messages, and the cursor of
    /// the next page when more match.
    async fn next_page(
        &self,
        filter: &str,
        seq: u64,
        limit: usize,
    ) -> Result<(Vec<StreamMessage>, Option<u64>), StoreError> {
        self.next_page_bounded(filter, seq, limit, None).await
    }

    /// [`next_page`](Self::next_page) asking the server for at most
    /// `max_bytes` (Direct Get's `max_bytes`), when given.
    async fn next_page_bounded(
        &self,
        filter: &str,
        seq: u64,
        limit: usize,
        max_bytes: Option<usize>,
    ) -> Result<(Vec<StreamMessage>, Option<u64>), StoreError> {
        let mut body = json!({ "seq": seq, "next_by_subj": filter, "batch": limit });
        if let Some(max) = max_bytes {
            body["max_bytes"] = json!(max.max(1));
        }
        let timeout = self.shared.config.request_timeout;
        let page = self
            .retry(|| direct::batch_get(&self.shared.client, &self.shared.config.stream, &body, timeout))
            .await?
            .map_err(|DirectRefusal::TooManyResults| StoreError::Server {
                operation: "list".into(),
                code: 413,
                err_code: 0,
                description: "too many results".into(),
            })?;
        let next = match (page.num_pending, page.messages.last()) {
            (Some(0), _) | (_, None) => None,
            (_, Some(last)) => Some(last.sequence + 1),
        };
        Ok((page.messages, next))
    }

    /// The newest message of every subject matching `filter`: one
    /// `multi_last` request when at most 1024 subjects match, else a scan
    /// with `next_by_subj` keeping the highest sequence per subject.
    async fn last_per_subject(&self, filter: &str) -> Result<Vec<StreamMessage>, StoreError> {
        let timeout = self.shared.config.request_timeout;
        let body = json!({ "multi_last": [filter], "batch": 1024 });
        let first = self
            .retry(|| direct::batch_get(&self.shared.client, &self.shared.config.stream, &body, timeout))
            .await?;
        if let Ok(page) = first
            && page.num_pending.unwrap_or(0) == 0
        {
            return Ok(page.messages);
        }
        let mut latest: BTreeMap<String, StreamMessage> = BTreeMap::new();
        let mut cursor = Some(1);
        while let Some(seq) = cursor {
            let (msgs, next) = self.next_page(filter, seq, self.shared.config.page_size).await?;
            for m in msgs {
                latest.insert(m.subject.to_string(), m);
            }
            cursor = next;
        }
        let mut out: Vec<StreamMessage> = latest.into_values().collect();
        out.sort_by_key(|m| m.sequence);
        Ok(out)
    }

    /// A token from its stored message; `None` for a tombstone.
    pub(crate) fn decode_token(&self, msg: &StreamMessage) -> Result<Option<Token>, StoreError> {
        if is_tombstone(msg) {
            return Ok(None);
        }
        let (workflow_id, place, id) = self
            .shared
            .subjects
            .parse_token(&msg.subject)
            .ok_or_else(|| StoreError::corrupt(&msg.subject, msg.sequence, "not a token subject"))?;
        let body: TokenBody = serde_json::from_slice(&msg.payload)
            .map_err(|e| StoreError::corrupt(&msg.subject, msg.sequence, e))?;
        let offset: u64 = msg
            .headers
            .get(super::writer::REVISION_OFFSET)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0);
        let marking = if body.marking.is_empty() {
            vec![place]
        } else {
            body.marking
        };
        Ok(Some(Token {
            id,
            workflow_id,
            definition_version: body.definition_version,
            place: marking[0].clone(),
            marking,
            data: body.data,
            metadata: body.metadata,
            created_at: body.created_at.unwrap_or(msg.time),
            updated_at: msg.time,
            revision: msg.sequence + offset,
            subject: msg.subject.to_string(),
        }))
    }
}

/// What a stored message weighs in a byte-bounded page: its payload and
/// subject (headers are the store's own and small).
pub(crate) fn stored_size(msg: &StreamMessage) -> usize {
    msg.payload.len() + msg.subject.len()
}

pub(crate) fn decode_definition(msg: &StreamMessage) -> Result<StoredDefinition, StoreError> {
    let definition: WorkflowDefinition = serde_json::from_slice(&msg.payload)
        .map_err(|e| StoreError::corrupt(&msg.subject, msg.sequence, e))?;
    Ok(StoredDefinition {
        version: msg.sequence,
        stored_at: msg.time,
        definition,
    })
}

/// An event from its stored message.
pub(crate) fn decode_event(msg: &StreamMessage) -> Result<Event, StoreError> {
    decode_event_payload(&msg.payload, msg.sequence, msg.time).map_err(|e| match e {
        StoreError::Corrupt { sequence, reason, .. } => StoreError::Corrupt {
            subject: msg.subject.to_string(),
            sequence,
            reason,
        },
        other => other,
    })
}

/// An event from its payload, stream sequence and stored time (consumers
/// get those from the message info).
pub(crate) fn decode_event_payload(
    payload: &[u8],
    sequence: u64,
    time: OffsetDateTime,
) -> Result<Event, StoreError> {
    let body: EventBody =
        serde_json::from_slice(payload).map_err(|e| StoreError::corrupt("", sequence, e))?;
    Ok(Event {
        workflow_id: body.workflow_id,
        token_id: body.token_id,
        from_revision: body.from_revision,
        revision: body.kind.follows_token_write().then(|| sequence - 1),
        sequence,
        time,
        kind: body.kind,
    })
}
