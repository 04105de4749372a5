//! Raw JetStream requests that async-nats 0.51 does not wrap: batched Direct
//! Get (`next_by_subj` + `batch`, `multi_last`) and atomic batch publish.
//!
//! Both are plain request/reply exchanges on the JetStream API subjects; see
//! ADR-31 (batched direct get) and ADR-50 (atomic batch publish).

use std::time::Duration;

use async_nats::header::{HeaderValue, NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::jetstream::message::StreamMessage;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use super::StoreError;

/// Status code of the message ending a batched direct get.
const EOB: u16 = 204;

/// One page of a batched Direct Get.
#[derive(Debug, Default)]
pub(crate) struct DirectPage {
    /// Messages in ascending stream sequence.
    pub(crate) messages: Vec<StreamMessage>,
    /// Matching messages after this page (`Nats-Num-Pending`), when sent.
    pub(crate) num_pending: Option<u64>,
    /// Sequence of the last message returned (`Nats-Last-Sequence`).
    pub(crate) last_sequence: Option<u64>,
}

/// The outcome of a batched get the server refused with a status.
#[derive(Debug)]
pub(crate) enum DirectRefusal {
    /// 413: the filter matches more subjects than `multi_last` allows (1024).
    TooManyResults,
}

/// Sends a batched Direct Get (`body` is the JSON request) and collects the
/// response messages until the end-of-batch status.
///
/// A 404 means "no messages" and yields an empty page.
pub(crate) async fn batch_get(
    client: &Client,
    stream: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<Result<DirectPage, DirectRefusal>, StoreError> {
    let op = "batched direct get";
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| StoreError::unavailable(op, e))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(serde_json::to_vec(body).expect("json")),
        )
        .await
        .map_err(|e| StoreError::unavailable(op, e))?;
    let mut page = DirectPage::default();
    loop {
        let msg = match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(StoreError::unavailable(op, "subscription closed")),
            Err(_) => {
                return Err(StoreError::Timeout {
                    operation: op.into(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
        };
        match msg.status.map(|s| s.as_u16()) {
            None => {
                let m = StreamMessage::try_from(msg)
                    .map_err(|e| StoreError::unavailable(op, format!("malformed response: {e}")))?;
                page.messages.push(m);
            }
            Some(EOB) => {
                let h = msg.headers.as_ref();
                page.num_pending = header_u64(h, "Nats-Num-Pending");
                page.last_sequence = header_u64(h, "Nats-Last-Sequence");
                return Ok(Ok(page));
            }
            Some(404) => return Ok(Ok(page)),
            Some(413) => return Ok(Err(DirectRefusal::TooManyResults)),
            Some(503) => {
                return Err(StoreError::unavailable(
                    op,
                    "no responders (is the stream there?)",
                ));
            }
            Some(408) => {
                return Err(StoreError::Timeout {
                    operation: op.into(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            Some(code) => {
                return Err(StoreError::Server {
                    operation: op.into(),
                    code,
                    err_code: 0,
                    description: msg.description.unwrap_or_default(),
                });
            }
        }
    }
}

fn header_u64(h: Option<&HeaderMap>, name: &str) -> Option<u64> {
    h?.get(name)?.as_str().parse().ok()
}

/// One message of an atomic batch.
#[derive(Debug, Clone)]
pub(crate) struct OutMessage {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// A JetStream API error body.
#[derive(Debug, Deserialize)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) err_code: u64,
    #[serde(default)]
    pub(crate) description: String,
}

#[derive(Debug, Deserialize)]
struct CommitReply {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    count: Option<u64>,
}

/// A committed batch: the sequence of its last message and how many it
/// stored. The batch's messages are stored contiguously, so message `i`
/// (0-based) of `n` has sequence `last - (n - 1 - i)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Committed {
    pub(crate) last_sequence: u64,
    pub(crate) count: u64,
}

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// The server answered with an API error; nothing was stored.
    Api(ApiError),
    /// No answer in time: the batch may or may not have been committed.
    Timeout,
    /// Could not send the commit, or no responders: nothing was stored.
    Transport(String),
    /// The commit left, and what came back (a lost connection, an answer
    /// that is not a PubAck) does not say whether it was stored.
    Indeterminate(String),
}

/// Publishes `messages` as one atomic batch (ADR-50): all are stored, or
/// none. Messages `1..n-1` go without a reply subject (no ack to wait for);
/// the last carries `Nats-Batch-Commit: 1` and is a request whose reply is
/// the batch's PubAck or error.
pub(crate) async fn publish_batch(
    client: &Client,
    batch_id: &str,
    messages: Vec<OutMessage>,
    timeout: Duration,
) -> Result<Committed, BatchError> {
    let n = messages.len();
    debug_assert!(n > 0);
    let mut messages = messages.into_iter();
    for seq in 1..n {
        stage(client, batch_id, seq, messages.next().expect("n messages")).await?;
    }
    commit(client, batch_id, n, messages.next().expect("n > 0"), timeout).await
}

/// Sends message `seq` (1-based) of batch `batch_id` without committing it.
/// Nothing comes back: a lost or refused message shows at the commit.
pub(crate) async fn stage(
    client: &Client,
    batch_id: &str,
    seq: usize,
    m: OutMessage,
) -> Result<(), BatchError> {
    let mut headers = m.headers;
    headers.insert(NATS_BATCH_ID, batch_id);
    headers.insert(NATS_BATCH_SEQUENCE, HeaderValue::from(seq));
    client
        .publish_with_headers(m.subject, headers, m.payload)
        .await
        .map_err(|e| BatchError::Transport(e.to_string()))
}

/// Sends the last message (`seq` = the batch's size) of batch `batch_id`
/// with `Nats-Batch-Commit` and waits for the outcome of the whole batch.
pub(crate) async fn commit(
    client: &Client,
    batch_id: &str,
    seq: usize,
    m: OutMessage,
    timeout: Duration,
) -> Result<Committed, BatchError> {
    let mut headers = m.headers;
    headers.insert(NATS_BATCH_ID, batch_id);
    headers.insert(NATS_BATCH_SEQUENCE, HeaderValue::from(seq));
    headers.insert(NATS_BATCH_COMMIT, "1");
    let request = client.request_with_headers(m.subject, headers, m.payload);
    let reply = match tokio::time::timeout(timeout, request).await {
        Err(_) => return Err(BatchError::Timeout),
        Ok(Err(e)) => {
            return match e.kind() {
                async_nats::RequestErrorKind::TimedOut => Err(BatchError::Timeout),
                // Nobody took the commit: nothing stored.
                async_nats::RequestErrorKind::NoResponders => Err(BatchError::Transport(e.to_string())),
                // The request may have left before the connection failed.
                _ => Err(BatchError::Indeterminate(e.to_string())),
            };
        }
        Ok(Ok(r)) => r,
    };
    if let Some(status) = reply.status
        && status.as_u16() == 503
    {
        return Err(BatchError::Transport(
            "no responders: the stream is not reachable".into(),
        ));
    }
    let parsed: CommitReply = serde_json::from_slice(&reply.payload).map_err(|e| {
        BatchError::Indeterminate(format!(
            "unexpected commit reply {:?}: {e}",
            String::from_utf8_lossy(&reply.payload[..reply.payload.len().min(200)])
        ))
    })?;
    if let Some(err) = parsed.error {
        return Err(BatchError::Api(err));
    }
    match (parsed.seq, parsed.count) {
        (Some(last_sequence), Some(count)) => Ok(Committed { last_sequence, count }),
        (Some(last_sequence), None) if seq == 1 => Ok(Committed {
            last_sequence,
            count: 1,
        }),
        _ => Err(BatchError::Indeterminate(format!(
            "commit reply lacks seq/count: {:?}",
            String::from_utf8_lossy(&reply.payload[..reply.payload.len().min(200)])
        ))),
    }
}
