//! The writing half of the store: definitions, token creates, moves,
//! updates and completions, every token write a compare-and-swap inside an
//! atomic batch, batches grouped by the committer (see `group`).

use std::sync::Arc;
use tracing::Instrument;

use async_nats::HeaderMap;
use async_nats::header::{
    HeaderName, HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID, NATS_MESSAGE_TTL,
    NATS_ROLLUP,
};
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use time::OffsetDateTime;

use super::direct::OutMessage;
use super::group::{CommitStats, Committer, Write};
use super::reader::{EventBody, KV_OPERATION, KeyRecordBody, Shared, StoreReader, TokenBody};
use super::subjects::EventStream;
use super::{Missing, StoreError};
use crate::model::{EventKind, Id, Metadata, StoredDefinition, Token, TokenState, WorkflowDefinition};

/// Room left in `max_payload` for the batch headers added at send time.
const BATCH_HEADER_ROOM: usize = 128;

// Header names as constants: `HeaderMap::insert` with a `&str` validates the
// name, matches it against the standard names and copies it, per message.
const KV_OPERATION_HEADER: HeaderName = HeaderName::from_static(KV_OPERATION);
const CAS_SUBJECT: HeaderName = HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject");
/// On a state: how many messages after it its batch's last place message is
/// (absent: none). The token's revision is the stored sequence plus this.
pub(crate) const REVISION_OFFSET: HeaderName = HeaderName::from_static("Cb-Revision-Offset");

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
    /// Remember this create under an idempotency key.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key on a write. The store keeps a record of it next to
/// the write, in the same atomic batch (`{prefix}.workflows.{wf}.keys.{h}`,
/// `h` a digest of the key, expecting the subject empty), for
/// [`StoreConfig::idempotency_ttl`](super::StoreConfig::idempotency_ttl):
/// a second write with the same key is refused as a conflict, and the record
/// (see [`StoreReader::key_record`]) names the write that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The caller's key.
    pub key: String,
    /// What kind of write it keys (`create`, `fire`, `complete`, `apply`).
    pub op: String,
    /// A digest of the request: the same key with another request is
    /// refused, not answered with the first request's outcome.
    pub request: String,
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
    /// [`StoreError::Duplicate`] and writes nothing.
    pub msg_id: Option<String>,
    /// Remember this move under an idempotency key (not bound to the
    /// duplicate window).
    pub idempotency: Option<Idempotency>,
}

/// A firing on a token's marking (see [`StoreWriter::fire_token`]).
#[derive(Debug, Clone)]
pub struct FireMarks {
    /// The transition fired.
    pub transition: Id,
    /// Marks it consumes.
    pub consumed: Vec<Id>,
    /// Places it marks.
    pub produced: Vec<Id>,
    /// Marks its cancel arcs clear.
    pub cancelled: Vec<Id>,
    /// The marking after it, in the definition's place order.
    pub marking: Vec<Id>,
    /// The token completes with this firing (every place tombstoned).
    pub complete: bool,
    /// Who fired it.
    pub actor: Option<String>,
    /// The caller's input, recorded in the event.
    pub input: serde_json::Value,
    /// Replacement data, if the firing changes it.
    pub data: Option<serde_json::Value>,
    /// `Nats-Msg-Id` for the event.
    pub msg_id: Option<String>,
    /// Remember it under an idempotency key.
    pub idempotency: Option<Idempotency>,
    /// The transition has actions: its event goes where the action feed
    /// delivers it (`events.transitions`). Without, it goes to
    /// `events.moves`, in the token's history all the same, and no
    /// consumer delivers (or waits for an ack of) an event with nothing to
    /// run.
    pub actions: bool,
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
    /// The writer over `shared`'s stream, with its committer task.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let committer = Arc::new(Committer::start(shared.clone()));
        StoreWriter {
            reader: StoreReader { shared },
            committer,
        }
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

    /// [`put_definition`](Self::put_definition), remembered under an
    /// idempotency key: a changed definition and its key record are one
    /// atomic batch. An unchanged definition writes nothing (and no record:
    /// applying it again is a no-op anyway).
    pub async fn put_definition_keyed(
        &self,
        def: &WorkflowDefinition,
        idempotency: &Idempotency,
    ) -> Result<StoredDefinition, StoreError> {
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
        let record = self.record_message(&def.id, &def.id, idempotency)?;
        let definition = OutMessage {
            subject,
            headers,
            payload,
        };
        let batch = format!("cb-apply-{}", Id::generate());
        let timeout = self.shared().config.request_timeout;
        let committed =
            super::direct::publish_batch(&self.shared().client, &batch, vec![definition, record], timeout)
                .await
                .map_err(|e| match e {
                    super::direct::BatchError::Api(a) if a.err_code == 10071 => StoreError::Conflict {
                        token: def.id.clone(),
                        expected: latest,
                        actual: None,
                    },
                    super::direct::BatchError::Api(a) => StoreError::Server {
                        operation: "put definition".into(),
                        code: a.code,
                        err_code: a.err_code,
                        description: a.description,
                    },
                    super::direct::BatchError::Transport(r) => StoreError::unavailable("put definition", r),
                    super::direct::BatchError::Timeout | super::direct::BatchError::Indeterminate(_) => {
                        StoreError::Indeterminate {
                            operation: "put definition".into(),
                            reason: "no answer to the commit".into(),
                        }
                    }
                })?;
        self.reader
            .get_definition_version(&def.id, committed.last_sequence - 1)
            .await
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
            marking: Vec::new(),
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
                data: body.data.clone(),
                metadata: body.metadata.clone(),
            },
        )?;
        let mut messages = vec![state, event];
        let record = self.push_record(wf, &id, new.idempotency.as_ref(), &mut messages)?;
        let first = self.submit(wf, &id, 0, messages, 0, record).await?;
        let now = OffsetDateTime::now_utc();
        Ok(Committed {
            token: Token {
                id,
                workflow_id: wf.clone(),
                definition_version: def.version,
                marking: vec![place.clone()],
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

    /// Moves `token` (as read, at `token.revision`) from its place to
    /// `mv.to`, recording a transition event, in one atomic batch: a
    /// tombstone with the CAS check on the old place, the new state on the
    /// new place, the event. `def` must be the token's pinned definition:
    /// `mv.to` must be one of its places. The one-place case of
    /// [`fire_token`](Self::fire_token).
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
        let mut marking = token.marks();
        marking.retain(|p| *p != token.place && *p != mv.to);
        marking.push(mv.to.clone());
        // A transition the definition does not name goes to the feed,
        // whose dispatcher settles it: nothing is left undelivered.
        let actions = def
            .transition(mv.transition.as_str())
            .is_none_or(|t| !t.actions.is_empty());
        let fm = FireMarks {
            transition: mv.transition,
            consumed: vec![token.place.clone()],
            produced: vec![mv.to.clone()],
            cancelled: Vec::new(),
            marking: def.ordered(&marking),
            complete: false,
            actor: mv.actor,
            input: mv.input,
            data: mv.data,
            msg_id: mv.msg_id,
            idempotency: mv.idempotency,
            actions,
        };
        self.fire_token(token, fm).await
    }

    /// Fires a transition on `token` (as read, at `token.revision`): every
    /// consumed mark removed, every produced mark added, every cancelled
    /// mark cleared, and one transition event, in one atomic batch with one
    /// compare-and-swap (on the wildcard over all of the token's place
    /// subjects, carried by the batch's first message).
    ///
    /// The batch: a message on each place of the marking before (the first
    /// on the least of them, so two firings from one marking always start
    /// on the same subject): a tombstone where the mark goes, the new state
    /// where it stays; a state on each place it gains; the event. Every
    /// state holds the whole marking (when more than one place) and, in a
    /// `Cb-Revision-Offset` header, how far the batch's last place message
    /// is: any one state tells the token's revision. With `fm.complete`, the
    /// token completes instead: every place gets a tombstone.
    pub async fn fire_token(&self, token: &Token, fm: FireMarks) -> Result<Committed, StoreError> {
        let wf = &token.workflow_id;
        let body = TokenBody {
            definition_version: token.definition_version,
            data: fm.data.unwrap_or_else(|| token.data.clone()),
            metadata: token.metadata.clone(),
            created_at: Some(token.created_at),
            marking: Vec::new(),
        };
        let after = if fm.complete {
            Vec::new()
        } else {
            fm.marking.clone()
        };
        let (mut messages, last_place) = self.place_messages(token, &after, &body, !fm.complete)?;
        let state = TokenState {
            definition_version: body.definition_version,
            data: body.data.clone(),
            metadata: body.metadata.clone(),
            created_at: token.created_at,
            marking: None,
        };
        let from = fm
            .consumed
            .first()
            .cloned()
            .unwrap_or_else(|| token.place.clone());
        let to = fm.produced.first().cloned().unwrap_or_else(|| from.clone());
        let unless = |v: &Vec<Id>, one: &Id| (v.len() != 1 || v[0] != *one).then(|| v.clone());
        let (consumed, produced) = (unless(&fm.consumed, &from), unless(&fm.produced, &to));
        // The event tells the marking after it: `to` alone, unless it says
        // otherwise.
        let state = TokenState {
            marking: (fm.marking.len() != 1 || fm.marking[0] != to).then(|| fm.marking.clone()),
            ..state
        };
        let stream = if fm.actions {
            EventStream::Transitions
        } else {
            EventStream::Moves
        };
        let mut event = self.event_message(
            wf,
            &token.id,
            stream,
            token.revision,
            EventKind::Transition {
                transition: fm.transition,
                from,
                to,
                consumed,
                produced,
                cancelled: fm.cancelled,
                completed: fm.complete,
                actor: fm.actor,
                input: fm.input,
                state,
            },
        )?;
        if let Some(id) = &fm.msg_id {
            event.headers.insert(NATS_MESSAGE_ID, id.as_str());
        }
        // The firing's trace context: the actions this event triggers join
        // the trace of the request that fired it, on any host.
        if let Some(tp) = crate::trace::current_traceparent() {
            event.headers.insert(crate::trace::TRACEPARENT, tp.as_str());
        }
        messages.push(event);
        let event_index = messages.len() - 1;
        let record = self.push_record(wf, &token.id, fm.idempotency.as_ref(), &mut messages)?;
        let first = self
            .submit(wf, &token.id, token.revision, messages, event_index, record)
            .await?;
        let now = OffsetDateTime::now_utc();
        // A completing firing answers with the marking the token ended in.
        let place = fm.marking.first().cloned().unwrap_or_else(|| token.place.clone());
        Ok(Committed {
            token: Token {
                id: token.id.clone(),
                workflow_id: wf.clone(),
                definition_version: token.definition_version,
                subject: self.shared().subjects.token(wf, &place, &token.id),
                place,
                marking: fm.marking,
                data: body.data,
                metadata: body.metadata,
                created_at: token.created_at,
                updated_at: now,
                revision: first + last_place as u64,
            },
            event_sequence: first + event_index as u64,
        })
    }

    /// The place messages of a write that takes `token`'s marking to
    /// `after` (see [`fire_token`](Self::fire_token)); and the index of the
    /// last of them. `live`: the token stays (a tombstone that ends the
    /// batch's place messages then keeps no TTL, so the revision reads give
    /// stays the one the CAS checks).
    fn place_messages(
        &self,
        token: &Token,
        after: &[Id],
        body: &TokenBody,
        live: bool,
    ) -> Result<(Vec<OutMessage>, usize), StoreError> {
        let wf = &token.workflow_id;
        let before = token.marks();
        let mut first = before.clone();
        first.sort();
        let first = first.into_iter().next().expect("a live token has a mark");
        let mut gone: Vec<&Id> = before
            .iter()
            .filter(|p| **p != first && !after.contains(p))
            .collect();
        let mut kept: Vec<&Id> = before
            .iter()
            .filter(|p| **p != first && after.contains(p))
            .collect();
        let mut added: Vec<&Id> = after.iter().filter(|p| !before.contains(p)).collect();
        gone.sort();
        kept.sort();
        added.sort();
        // (place, is a state, rewrites a live state)
        let mut plan: Vec<(&Id, bool, bool)> = vec![(&first, after.contains(&first), true)];
        plan.extend(gone.into_iter().map(|p| (p, false, true)));
        plan.extend(kept.into_iter().map(|p| (p, true, true)));
        plan.extend(added.into_iter().map(|p| (p, true, false)));
        let last = plan.len() - 1;
        let body = TokenBody {
            marking: if after.len() > 1 {
                after.to_vec()
            } else {
                Vec::new()
            },
            ..body.clone()
        };
        let mut messages = Vec::with_capacity(plan.len() + 2);
        for (i, (place, state, rewrite)) in plan.into_iter().enumerate() {
            let subject = self.shared().subjects.token(wf, place, &token.id);
            let cas = (i == 0).then_some(token.revision);
            let mut m = if state {
                self.state_message_with(&subject, wf, &token.id, cas, rewrite, &body)?
            } else {
                self.tombstone_with(&subject, wf, &token.id, cas, !(live && i == last))
            };
            if state && i < last {
                m.headers.insert(REVISION_OFFSET, HeaderValue::from(last - i));
            }
            messages.push(m);
        }
        Ok((messages, last))
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
            marking: Vec::new(),
        };
        // Every mark holds the token's state: each is rewritten.
        let marks = token.marks();
        let (mut messages, last_place) = self.place_messages(token, &marks, &body, true)?;
        messages.push(self.event_message(
            wf,
            &token.id,
            EventStream::Lifecycle,
            token.revision,
            EventKind::Updated { actor },
        )?);
        let event_index = messages.len() - 1;
        let first = self
            .submit(wf, &token.id, token.revision, messages, event_index, None)
            .await?;
        Ok(Committed {
            token: Token {
                data: body.data,
                metadata: body.metadata,
                updated_at: OffsetDateTime::now_utc(),
                revision: first + last_place as u64,
                ..token.clone()
            },
            event_sequence: first + event_index as u64,
        })
    }

    /// Completes `token`: its place subject gets a tombstone (CAS on
    /// `token.revision`) and a `completed` event keeps its final data.
    /// Returns the event's sequence.
    pub async fn complete_token(&self, token: &Token, actor: Option<String>) -> Result<u64, StoreError> {
        self.complete_token_keyed(token, actor, None).await
    }

    /// [`complete_token`](Self::complete_token), remembered under an
    /// idempotency key.
    pub async fn complete_token_keyed(
        &self,
        token: &Token,
        actor: Option<String>,
        idempotency: Option<&Idempotency>,
    ) -> Result<u64, StoreError> {
        let wf = &token.workflow_id;
        let body = TokenBody {
            definition_version: token.definition_version,
            data: token.data.clone(),
            metadata: token.metadata.clone(),
            created_at: Some(token.created_at),
            marking: Vec::new(),
        };
        let (mut messages, _) = self.place_messages(token, &[], &body, false)?;
        messages.push(self.event_message(
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
        )?);
        let event_index = messages.len() - 1;
        let record = self.push_record(wf, &token.id, idempotency, &mut messages)?;
        let first = self
            .submit(wf, &token.id, token.revision, messages, event_index, record)
            .await?;
        Ok(first + event_index as u64)
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
        probe: usize,
        record: Option<String>,
    ) -> Result<u64, StoreError> {
        let span = tracing::info_span!(
            "commit",
            workflow = %wf,
            messages = messages.len() as i64,
            revision = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let r = self
            .committer
            .submit(Write {
                workflow: wf.clone(),
                token: token.clone(),
                expected,
                messages,
                probe,
                record,
            })
            .instrument(span.clone())
            .await;
        match &r {
            Ok(seq) => span.record("revision", i64::try_from(*seq).unwrap_or(i64::MAX)),
            Err(e) => span.record("error", tracing::field::display(e)),
        };
        r
    }

    /// Appends the idempotency record of a write to its messages (last,
    /// after its event), expecting its subject empty; returns the subject.
    fn push_record(
        &self,
        wf: &Id,
        token: &Id,
        idempotency: Option<&Idempotency>,
        messages: &mut Vec<OutMessage>,
    ) -> Result<Option<String>, StoreError> {
        let Some(i) = idempotency else {
            return Ok(None);
        };
        let m = self.record_message(wf, token, i)?;
        let subject = m.subject.clone();
        messages.push(m);
        Ok(Some(subject))
    }

    fn record_message(&self, wf: &Id, token: &Id, i: &Idempotency) -> Result<OutMessage, StoreError> {
        let subject = self.shared().subjects.key_record(wf, &i.key);
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(0u64));
        if let Some(ttl) = self.shared().config.idempotency_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl_value(ttl));
        }
        let body = KeyRecordBody {
            key: i.key.clone(),
            op: i.op.clone(),
            request: i.request.clone(),
            token: token.clone(),
        };
        let payload = Bytes::from(serde_json::to_vec(&body).expect("record serializes"));
        self.check_size(
            || format!("idempotency record of token `{token}`"),
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
        let rewrite = cas.is_some_and(|expected| expected > 0);
        self.state_message_with(subject, wf, token, cas, rewrite, body)
    }

    /// A state message; `rewrite`: its subject holds the token's live state
    /// already (it gets `Nats-Rollup: sub`).
    fn state_message_with(
        &self,
        subject: &str,
        wf: &Id,
        token: &Id,
        cas: Option<u64>,
        rewrite: bool,
        body: &TokenBody,
    ) -> Result<OutMessage, StoreError> {
        let mut headers = HeaderMap::new();
        if rewrite {
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

    /// A tombstone (with the CAS check `cas`, if given; with the tombstone
    /// TTL if `ttl`).
    fn tombstone_with(&self, subject: &str, wf: &Id, token: &Id, cas: Option<u64>, ttl: bool) -> OutMessage {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION_HEADER, "PURGE");
        headers.insert(NATS_ROLLUP, "sub");
        if ttl && let Some(ttl) = self.shared().config.tombstone_ttl {
            headers.insert(NATS_MESSAGE_TTL, ttl_value(ttl));
        }
        if let Some(expected) = cas {
            self.cas_headers(wf, token, expected, &mut headers);
        }
        OutMessage {
            subject: subject.into(),
            headers,
            payload: Bytes::new(),
        }
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
