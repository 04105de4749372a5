//! Idempotency keys: a retry with the same key gets the original outcome,
//! read back from the stream, instead of writing again, however long after
//! (within the key's time-to-live) and whichever host handled the first.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{FireError, Fired};
use crate::model::{EventKind, Id, Token};
use crate::store::{Idempotency, KeyRecord, StoreError, StoreReader};

/// The digest of a request's content: the same key with another request is
/// refused, not answered with the first request's outcome.
pub(crate) fn keyed(key: &str, op: &str, request: &impl Serialize) -> Idempotency {
    let body = serde_json::to_vec(request).expect("requests serialize");
    Idempotency {
        key: key.to_string(),
        op: op.to_string(),
        request: hex::encode(&Sha256::digest(&body)[..16]),
    }
}

/// `record` checked against the request it is looked up for.
pub(crate) fn check(record: &KeyRecord, want: &Idempotency) -> Result<(), StoreError> {
    if record.op != want.op || record.request != want.request {
        return Err(StoreError::KeyReused {
            key: want.key.clone(),
            earlier: format!("{} of `{}`", record.op, record.token),
        });
    }
    Ok(())
}

fn unexpected(record: &KeyRecord, what: &str) -> StoreError {
    StoreError::corrupt(
        "",
        record.sequence - 1,
        format!("the event before key record {} is not {what}", record.sequence),
    )
}

/// The firing a key's record holds, as it was answered.
pub(crate) async fn replay_fire(reader: &StoreReader, record: &KeyRecord) -> Result<Fired, FireError> {
    let event = reader.event_at(record.sequence - 1).await?;
    let marking = event.kind.marking_after().unwrap_or_default();
    let EventKind::Transition {
        transition,
        from,
        to,
        state,
        completed,
        ..
    } = event.kind
    else {
        return Err(unexpected(record, "a transition").into());
    };
    let place = marking.first().cloned().unwrap_or(to);
    let subject = reader.token_subject(&event.workflow_id, &place, &event.token_id);
    Ok(Fired {
        token: Token {
            id: event.token_id,
            workflow_id: event.workflow_id,
            definition_version: state.definition_version,
            place,
            marking,
            data: state.data,
            metadata: state.metadata,
            created_at: state.created_at,
            updated_at: event.time,
            revision: event.sequence - 1,
            subject,
        },
        from,
        transition,
        event_sequence: event.sequence,
        attempts: 1,
        completed,
    })
}

/// The token a key's create made, as it was answered.
pub(crate) async fn replay_create(
    reader: &StoreReader,
    record: &KeyRecord,
) -> Result<(Token, u64), StoreError> {
    let event = reader.event_at(record.sequence - 1).await?;
    let EventKind::Created {
        place,
        definition_version,
        data,
        metadata,
        ..
    } = event.kind
    else {
        return Err(unexpected(record, "a creation"));
    };
    let subject = reader.token_subject(&event.workflow_id, &place, &event.token_id);
    Ok((
        Token {
            id: event.token_id,
            workflow_id: event.workflow_id,
            definition_version,
            marking: vec![place.clone()],
            place,
            data,
            metadata,
            created_at: event.time,
            updated_at: event.time,
            revision: event.sequence - 1,
            subject,
        },
        event.sequence,
    ))
}

/// The `completed` event of a key's complete.
pub(crate) async fn replay_complete(reader: &StoreReader, record: &KeyRecord) -> Result<u64, StoreError> {
    let event = reader.event_at(record.sequence - 1).await?;
    match event.kind {
        EventKind::Completed { .. } => Ok(event.sequence),
        _ => Err(unexpected(record, "a completion")),
    }
}

/// What a fire request is, for its digest (everything but the key).
#[derive(Serialize)]
pub(crate) struct FireDigest<'a> {
    pub(crate) workflow: &'a Id,
    pub(crate) token: &'a Id,
    pub(crate) transition: &'a Id,
    pub(crate) input: &'a serde_json::Value,
    pub(crate) actor: &'a Option<String>,
    pub(crate) expected_revision: Option<u64>,
}

/// The key of a create, over everything the create says.
pub(crate) fn keyed_create(
    key: &str,
    workflow: &Id,
    id: Option<&Id>,
    data: &serde_json::Value,
    metadata: &crate::model::Metadata,
    actor: &Option<String>,
) -> Idempotency {
    #[derive(Serialize)]
    struct Digest<'a> {
        workflow: &'a Id,
        id: Option<&'a Id>,
        data: &'a serde_json::Value,
        metadata: &'a crate::model::Metadata,
        actor: &'a Option<String>,
    }
    keyed(
        key,
        "create",
        &Digest {
            workflow,
            id,
            data,
            metadata,
            actor,
        },
    )
}

/// The key of an apply, over the definition.
pub(crate) fn keyed_apply(key: &str, def: &crate::model::WorkflowDefinition) -> Idempotency {
    keyed(key, "apply", def)
}
