//! The writing half of the store: definitions, token creates, moves,
//! updates and completions, every token write a compare-and-swap inside an
//! atomic batch, batches grouped by the committer (see `group`).

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::header::{
    HeaderName, HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID, NATS_MESSAGE_TTL,
    NATS_ROLLUP,
};
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use time::OffsetDateTime;

use super::direct::OutMessage;
use super::group::{CommitStats, Committer};
use super::reader::{EventBody, KV_OPERATION, Shared, StoreReader, TokenBody};
use super::subjects::EventStream;
use super::{Missing, StoreError};
use crate::model::{EventKind, Id, Metadata, StoredDefinition, Token, TokenState, WorkflowDefinition};

/// Room left in `max_payload` for the batch headers added at send time.
const BATCH_HEADER_ROOM: usize = 128;

// Header names as constants: `HeaderMap::insert` with a `&str` validates the
// name, matches it against the standard names and copies it, per message.
const KV_OPERATION_HEADER: HeaderName = HeaderName::from_static(KV_OPERATION);
const CAS_SUBJECT: HeaderName = HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject");

/// A token to create.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Its id; `None` generates one.
    pub id: Option<Id>,
    /// Initial data.
    pub data: serde_json::Value,
    /// Initial metadata.
    pub metadata: Metadata,
    /// Who creates it (recorded in the event).
    pub actor: Option<String>,
}

/// A move of a token along a transition.
#[derive(Debug, Clone)]
pub struct Move {
    /// The transition fired.
    pub transition: Id,
    /// The destination place.
    pub to: Id,
    /// Who fired it.
    pub actor: Option<String>,
    /// The caller's input, recorded in the event.
    pub input: serde_json::Value,
    /// Replacement data for the token, if the firing changes it.
    pub data: Option<serde_json::Value>,
    /// `Nats-Msg-Id` for the transition event: a second move with the same
    /// id inside the server's duplicate window is refused as
    /// [`StoreError::Duplicate`] and writes nothing. Used for follow-up
    /// firings requested by actions, which may be re-run.
    pub msg_id: Option<String>,
}

/// The outcome of a committed write.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The token as written. `revision` is exact; `updated_at` is the host's
    /// clock at acknowledgement (the server's stamp is returned by reads).
    pub token: Token,
    /// Stream sequence of the event recorded with the write.
    pub event_sequence: u64,
}

/// Creates, moves, updates and completes tokens; stores definitions.
///
/// Cloning is cheap; all clones share one committer that coalesces the
/// writes in flight into one atomic batch (group commit).
#[derive(Clone)]
pub struct StoreWriter {
    reader: StoreReader,
    committer: Arc<Committer>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("reader", &self.reader)
            .finish()
    }
}

impl StoreWriter {
    pub(crate) fn start(reader: StoreReader) -> Self {
        let committer = Arc::new(Committer::start(reader.shared.clone()));
        StoreWriter { reader, committer }
    }

    /// The reader over the same stream.
    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    fn shared(&self) -> &Shared {
        &self.reader.shared
    }

    /// Counters of the atomic batches this writer (and its clones) committed
    /// since the store opened: writes per batch and time spent waiting on
    /// the server. Take two and subtract ([`CommitStats::since`]).
    pub fn commit_stats(&self) -> CommitStats {
        self.committer.stats()
    }

    /// Stores `def` as a new version unless it equals the latest version, in
    /// which case the latest is returned and nothing is written (applying the
    /// same file twice is a no-op). Validated first. Compare-and-swap on the
    /// definition subject: a concurrent apply gives `Conflict`.
    pub async fn put_definition(&self, def: &WorkflowDefinition) -> Result<StoredDefinition, StoreError> {
        def.validate()?;
        let latest = match self.reader.get_definition(&def.id).await {
            Ok(latest) if &latest.definition == def => return Ok(latest),
            Ok(latest) => latest.version,
            Err(StoreError::NotFound(_)) => 0,
            Err(e) => return Err(e),
        };
        let subject = self.shared().subjects.definition(&def.id);
        let payload = Bytes::from(serde_json::to_vec(def).expect("definition serializes"));
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(latest));
        self.check_size(
            || format!("definition `{}`", def.id),
            &subject,
            &headers,
            &payload,
        )?;
        let js = async_nats::jetstream::new(self.shared().client.clone());
        let timeout = self.shared().config.request_timeout;
        let op = "put definition";
        let ack = tokio::time::timeout(timeout, async {
            js.publish_with_headers(subject, headers, payload).await?.await
        })
        .await
        .map_err(|_| StoreError::Timeout {
            operation: op.into(),
            timeout_ms: timeout.as_millis() as u64,
        })?;
        let ack = match ack {
            Ok(ack) => ack,
            // Another writer stored a version first. Several hosts applying
            // the same files at start-up race here: if the winner stored
            // this very definition, the apply succeeded.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                return match self.reader.get_definition(&def.id).await {
                    Ok(now) if &now.definition == def => Ok(now),
                    Ok(now) => Err(StoreError::Conflict {
                        token: def.id.clone(),
                        expected: latest,
                        actual: Some(now.version),
                    }),
                    Err(e) => Err(e),
                };
            }
            Err(e) if e.kind() == PublishErrorKind::TimedOut => {
                return Err(StoreError::Timeout {
                    operation: op.into(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Err(e) => return Err(StoreError::unavailable(op, e)),
        };
        // Read back from the leader: the stored timestamp is the version's.
        let msg = self
            .shared()
            .stream
            .get_raw_message(ack.sequence)
            .await
            .map_err(|e| StoreError::unavailable(op, e))?;
        super::reader::decode_definition(&msg)
    }

    /// Creates a token in the definition's initial place, pinned to that
    /// definition version. Fails with `Conflict { expected: 0 }` if a token
    /// with this id is live in any place of the workflow.
    pub async fn create_token(&self, def: &StoredDefinition, new: NewToken) -> Result<Committed, StoreError> {
        let wf = &def.definition.id;
        let id = new.id.unwrap_or_else(Id::generate);
        let place = def.definition.initial_place.clone();
        let subject = self.shared().subjects.token(wf, &place, &id);
        let body = TokenBody {
            definition_version: def.version,
            data: new.data,
            metadata: new.metadata,
            created_at: None,
        };
        let state = self.state_message(&subject, wf, &id, Some(0), &body)?;
        let event = self.event_message(
            wf,
            &id,
            EventStream::Lifecycle,
            0,
            EventKind::Created {
                place: place.clone(),
                definition_version: def.version,
                actor: new.actor,
            },
        )?;
        let first = self.submit(wf, &id, 0, vec![state, event]).await?;
        let now = OffsetDateTime::now_utc();
        Ok(Committed {
            token: Token {
                id,
                workflow_id: wf.clone(),
                definition_version: def.version,
                place,
                data: body.data,
                metadata: body.metadata,
                created_at: now,
                updated_at: now,
                revision: first,
                subject,
            },
            event_sequence: first + 1,
        })
    }

    /// Moves `token` (as read, at `token.revision`) to `mv.to`, recording a
    /// transition event, in one atomic batch: a tombstone with the CAS check
    /// on the old place, the new state on the new place, the event. `def`
    /// must be the token's pinned definition: `mv.to` must be one of its
    /// places.
    pub async fn move_token(
        &self,
        def: &WorkflowDefinition,
        token: &Token,
        mv: Move,
    ) -> Result<Committed, StoreError> {
        if !def.has_place(mv.to.as_str()) {
            return Err(StoreError::NotFound(Missing::Place {
                workflow: def.id.clone(),
                place: mv.to.clone(),
            }));
        }
        let wf = &token.workflow_id;
        let new_subject = self.shared().subjects.token(wf, &mv.to, &token.id);
        let body = TokenBody {
            definition_version: token.definition_version,
            data: mv.data.unwrap_or_else(|| token.data.clone()),
            metadata: token.metadata.clone(),
            created_at: Some(token.created_at),
        };
        let mut messages = Vec::with_capacity(3);
        let same_place = mv.to == token.place;
        if !same_place {
            messages.push(self.tombstone(&token.subject, wf, &token.id, token.revision)?);
        }
        // In a move the CAS is on the tombstone (the batch may not check a
        // subject twice); a self-loop checks on the state itself.
        let cas = if same_place { Some(token.revision) } else { None };
        messages.push(self.state_message(&new_subject, wf, &token.id, cas, &body)?);
        let state = TokenState {
            definition_version: body.definition_version,
            data: body.data.clone(),
            metadata: body.metadata.clone(),
            created_at: token.created_at,
        };
        let mut event = self.event_message(
            wf,
            &token.id,
            EventStream::Transitions,
            token.revision,
            EventKind::Transition {
                transition: mv.transition,
                from: token.place.clone(),
                to: mv.to.clone(),
                actor: mv.actor,
                input: mv.input,
                state,
            },
        )?;
        if let Some(id) = &mv.msg_id {
            event.headers.insert(NATS_MESSAGE_ID, id.as_str());
        }
        messages.push(event);
        let n = messages.len() as u64;
        let first = self.submit(wf, &token.id, token.revision, messages).await?;
        let now = OffsetDateTime::now_utc();
        Ok(Committed {
            token: Token {
                id: token.id.clone(),
                workflow_id: wf.clone(),
                definition_version: token.definition_version,
                place: mv.to,
                data: body.data,
                metadata: body.metadata,
                created_at: token.created_at,
                updated_at: now,
                revision: first + n - 2,
                subject: new_subject,
            },
            event_sequence: first + n - 1,
        })
    }

    /// Replaces `token`'s data and/or metadata in place (CAS on
    /// `token.revision`), recording an `updated` lifecycle event.
    pub async fn update_token(
        &self,
        token: &Token,
        data: Option<serde_json::Value>,
        metadata: Option<Metadata>,
        actor: Option<String>,
    ) -> Result<Committed, StoreError> {
        let wf = &token.workflow_id;
        let body = TokenBody {
            definition_version: token.definition_version,
            data: data.unwrap_or_else(|| token.data.clone()),
            metadata: metadata.unwrap_or_else(|| token.metadata.clone()),
            created_at: Some(token.created_at),
        };
        let state = self.state_message(&token.subject, wf, &token.id, Some(token.revision), &body)?;
        let event = self.event_message(
            wf,
            &token.id,
            EventStream::Lifecycle,
            token.revision,
            EventKind::Updated { actor },
        )?;
        let first = self
            .submit(wf, &token.id, token.revision, vec![state, event])
            .await?;
        Ok(Committed {
            token: Token {
                data: body.data,
                metadata: body.metadata,
                updated_at: OffsetDateTime::now_utc(),
                revision: first,
                ..token.clone()
            },
            event_sequence: first + 1,
        })
    }

    /// Completes `token`: its place subject gets a tombstone (CAS on
    /// `token.revision`) and a `completed` event keeps its final data.
    /// Returns the event's sequence.
    pub async fn complete_token(&self, token: &Token, actor: Option<String>) -> Result<u64, StoreError> {
        let wf = &token.workflow_id;
        let tomb = self.tombstone(&token.subject, wf, &token.id, token.revision)?;
        let event = self.event_message(
            wf,
            &token.id,
            EventStream::Lifecycle,
            token.revision,
            EventKind::Completed {
                place: token.place.clone(),
                data: token.data.clone(),
                metadata: token.metadata.clone(),
                actor,
            },
        )?;
        let first = self
            .submit(wf, &token.id, token.revision, vec![tomb, event])
            .await?;
        Ok(first + 1)
    }

    /// Appends an event that changes no token (e.g. an action's final
    /// failure) to the token's lifecycle subject. Returns its sequence.
    pub async fn append_event(&self, workflow: &Id, token: &Id, kind: EventKind) -> Result<u64, StoreError> {
        let m = self.event_message(workflow, token, EventStream::Lifecycle, 0, kind)?;
        let js = async_nats::jetstream::new(self.shared().client.clone());
        let timeout = self.shared().config.request_timeout;
        let op = "append event";
        let ack = tokio::time::timeout(timeout, async {
            js.publish_with_headers(m.subject, m.headers, m.payload)
                .await?
                .await
        })
        .await
        .map_err(|_| StoreError::Timeout {
            operation: op.into(),
            timeout_ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| StoreError::unavailable(op, e))?;
        Ok(ack.sequence)
    }

    /// Commits a token write (with the others in flight) and returns the
    /// stream sequence of its first message.
    async fn submit(
        &self,
        wf: &Id,
        token: &Id,
        expected: u64,
        messages: Vec<OutMessage>,
    ) -> Result<u64, StoreError> {
        self.committer
            .submit(format!("{wf}.{token}"), token.clone(), expected, messages)
            .await
    }

    fn cas_headers(&self, wf: &Id, token: &Id, expected: u64, h: &mut HeaderMap) {
        h.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(expected));
        h.insert(CAS_SUBJECT, self.shared().subjects.token_any_place(wf, token));
    }

    fn state_message(
        &self,
        subject: &str,
        wf: &Id,
        token: &Id,
        cas: Option<u64>,
        body: &TokenBody,
    ) -> Result<OutMessage, StoreError> {
        let mut headers = HeaderMap::new();
        if cas.is_some_and(|expected| expected > 0) {
            // Rewriting the state on its own subject (update, self-loop):
            // the rollup purges the state it replaces. A state written to
            // another subject (create, move) needs none: that subject holds
            // nothing live, at most an old tombstone of this token, which
            // readers skip and the next move out (or its TTL) removes.
            // Skipping it saves one purge per move, the server's largest
            // per-message cost.
            headers.insert(NATS_ROLLUP, "sub");
        }
        if let Some(expected) = cas {
            self.cas_headers(wf, token, expected, &mut headers);
        }
        let payload = Bytes::from(serde_json::to_vec(body).expect("token serializes"));
        self.check_size(|| format!("token `{token}`"), subject, &headers, &payload)?;
        Ok(OutMessage {
            subject: subject.into(),
            headers,
            payload,
        })
    }

    fn tombstone(&self, subject: &str, wf: &Id, token: &Id, expected: u64) -> Result<OutMessage, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION_HEADER, "PURGE");
        headers.insert(NATS_ROLLUP, "sub");
        if let Some(ttl) = self.shared().config.tombstone_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl_value(ttl));
        }
        self.cas_headers(wf, token, expected, &mut headers);
        Ok(OutMessage {
            subject: subject.into(),
            headers,
            payload: Bytes::new(),
        })
    }

    fn event_message(
        &self,
        wf: &Id,
        token: &Id,
        stream: EventStream,
        from_revision: u64,
        kind: EventKind,
    ) -> Result<OutMessage, StoreError> {
        let subject = self.shared().subjects.event(wf, stream, token);
        let mut headers = HeaderMap::new();
        if let Some(ttl) = self.shared().config.event_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl_value(ttl));
        }
        let body = EventBody {
            workflow_id: wf.clone(),
            token_id: token.clone(),
            from_revision,
            kind,
        };
        let payload = Bytes::from(serde_json::to_vec(&body).expect("event serializes"));
        self.check_size(
            || format!("event for token `{token}`"),
            &subject,
            &headers,
            &payload,
        )?;
        Ok(OutMessage {
            subject,
            headers,
            payload,
        })
    }

    /// Refuses a message the server would reject for size, before anything
    /// of its batch is sent.
    /// `what` names the message in the error; built only when it is too big.
    fn check_size(
        &self,
        what: impl FnOnce() -> String,
        subject: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) -> Result<(), StoreError> {
        let header_len: usize = headers
            .iter()
            .map(|(k, vs)| {
                vs.iter()
                    .map(|v| AsRef::<str>::as_ref(k).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum::<usize>()
            + 12;
        let size = payload.len() + header_len + subject.len() + BATCH_HEADER_ROOM;
        let max = self.shared().max_payload;
        if size > max {
            return Err(StoreError::PayloadTooLarge {
                what: what(),
                size,
                max,
            });
        }
        Ok(())
    }
}

/// `Nats-TTL` value: whole seconds, at least the server's minimum of 1 s.
fn ttl_value(ttl: std::time::Duration) -> String {
    format!("{}s", ttl.as_secs().max(1))
}
