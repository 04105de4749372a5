//! Group commit: token writes in flight together share one atomic batch.
//!
//! On a file-backed stream every atomic batch pays a fixed cost on the
//! server (a staging store created, synced and removed, all in the stream's
//! one processing goroutine), so one batch per write caps a stream at a few
//! hundred writes a second. The [`Committer`] task coalesces the writes that
//! are in flight into one batch, with one batch committing at a time, and
//! hides everything it can behind that commit:
//!
//! - **Streaming.** A write's messages are sent to the server as soon as the
//!   write arrives, into the *open* batch, while the previous batch is still
//!   committing; the server stages them meanwhile. When the previous commit
//!   comes back, only the last message (with `Nats-Batch-Commit`) is left to
//!   send. The last message of the open batch is held back for that.
//! - **Gathering.** When a commit comes back, its callers are woken and most
//!   of them write again at once. Before committing the open batch the
//!   committer yields until a yield brings no new write, so the next batch
//!   is as large as the last instead of alternating small and large. No
//!   timers: no added latency without concurrency.
//! - **Direct commits.** A caller that finds the committer idle (nothing
//!   open, nothing committing, and its last [`LONE_GROUPS`] batches single
//!   writes) commits its own write from its own task: one writer at a time
//!   pays no hand-off to the committer task and back (two task wake-ups,
//!   ~90 µs here). Writers that arrive one by one under load (each after
//!   its own guard call) do not qualify, so they still share batches.
//!
//! Correctness does not rest on any of this: every token write carries its
//! compare-and-swap, checked by the server at commit against the stream as
//! it is then. A batch the server refuses stores nothing; a stale CAS (or a
//! duplicate `Nats-Msg-Id`) in a group is isolated by splitting the group in
//! halves until the failing write is alone, so the others still commit.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};

use super::StoreError;
use super::direct::{self, BatchError, Committed, OutMessage};
use super::reader::Shared;
use crate::model::Id;

/// Server limit on messages per atomic batch.
const MAX_BATCH_MESSAGES: usize = 1000;
/// Queue depth in front of the committer; callers wait when it is full.
const QUEUE_DEPTH: usize = 8192;
/// Writes the committer holds back (their token is in the open batch, or
/// it is full) before it stops taking more from the queue: past this, the
/// queue fills and callers wait, so the committer's memory is bounded.
const MAX_DEFERRED: usize = 4096;
/// Consecutive single-write batches after which an idle committer lets a
/// lone writer commit directly.
const LONE_GROUPS: u32 = 8;

/// One write: its messages and who to tell.
struct WriteOp {
    /// `{workflow}.{token}`, and for a write with an idempotency key its
    /// record's subject: at most one write per key per batch (the server
    /// rejects two rollups of one token with 10111, and a second check of a
    /// subject written earlier in the batch with 10164).
    keys: Vec<String>,
    workflow: Id,
    token: Id,
    expected: u64,
    /// Index in `messages` of the write's event (of its state, for a
    /// create): the message that tells, when a commit's answer is lost,
    /// whether the batch was stored (see [`resolve`]).
    probe: usize,
    /// Kept until the outcome: sent again if the batch is split or retried.
    messages: Vec<OutMessage>,
    /// A copy made by the caller, for the committer to send as it is: the
    /// copying is spread over the callers' tasks instead of adding to the
    /// committer's, which is one task for the whole stream.
    fresh: Vec<OutMessage>,
    /// Attempts made (a transient refusal is retried, later, outside the
    /// committer).
    attempt: u32,
    /// Receives the sequence of the op's first message.
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// A token write, as the writer hands it to the committer.
pub(super) struct Write {
    pub(super) workflow: Id,
    pub(super) token: Id,
    /// The revision the write expects (0: the token must not exist).
    pub(super) expected: u64,
    /// The messages, the token's event among them.
    pub(super) messages: Vec<OutMessage>,
    /// Index of the event in `messages` (of the state, for a create).
    pub(super) probe: usize,
    /// The subject of the write's idempotency record, if it has one.
    pub(super) record: Option<String>,
}

/// Counters of the batches a store's writer committed, since it opened.
///
/// Group commit's behaviour depends on the load: how many writes share a
/// batch and how long a commit takes decide throughput, and neither shows
/// from the outside. Two snapshots bracket a period: their difference says
/// how many writes each batch held, how long each commit waited on the
/// server, and (with one batch committing at a time) how much of the
/// period the writers spent between commits. The fields are separate
/// counters: a snapshot taken while batches commit may be one batch apart
/// between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Atomic batches the server stored.
    pub batches: u64,
    /// Token writes in those batches (creates, moves, updates, completions).
    pub writes: u64,
    /// Messages in those batches.
    pub messages: u64,
    /// Total time those batches waited on the server: from sending a
    /// batch's commit to its acknowledgement (for a batch sent whole, from
    /// its first message).
    pub commit_time: Duration,
}

impl CommitStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CommitStats) -> CommitStats {
        CommitStats {
            batches: self.batches.saturating_sub(earlier.batches),
            writes: self.writes.saturating_sub(earlier.writes),
            messages: self.messages.saturating_sub(earlier.messages),
            commit_time: self.commit_time.saturating_sub(earlier.commit_time),
        }
    }

    /// Mean time a commit waited on the server (zero without batches).
    pub fn mean_commit_time(&self) -> Duration {
        match self.batches {
            0 => Duration::ZERO,
            // Past u32::MAX batches `Duration / u32` would need a clamped
            // divisor; nanoseconds divide exactly at any count.
            n => Duration::from_nanos(
                u64::try_from(self.commit_time.as_nanos() / u128::from(n)).unwrap_or(u64::MAX),
            ),
        }
    }

    /// Mean writes per batch (0 without batches).
    pub fn writes_per_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.writes as f64 / self.batches as f64
        }
    }
}

/// Sums periods (e.g. the slices of a benchmark).
impl std::ops::AddAssign for CommitStats {
    fn add_assign(&mut self, other: CommitStats) {
        self.batches += other.batches;
        self.writes += other.writes;
        self.messages += other.messages;
        self.commit_time += other.commit_time;
    }
}

/// [`CommitStats`] as the committer and direct committers update them.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    messages: AtomicU64,
    commit_nanos: AtomicU64,
}

impl Counters {
    fn record(&self, writes: usize, messages: u64, waited: Duration) {
        crate::metrics::commit(writes, waited);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        self.messages.fetch_add(messages, Ordering::Relaxed);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.commit_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            commit_time: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// The callers' side of the committer.
pub(super) struct Committer {
    queue: mpsc::Sender<WriteOp>,
    pipe: Arc<Pipe>,
    shared: Arc<Shared>,
}

/// What the callers and the committer task share.
struct Pipe {
    /// Held while a batch is committing: one batch in flight at a time.
    inflight: Arc<tokio::sync::Mutex<()>>,
    /// Set by the idle committer when a caller may commit directly.
    direct: AtomicBool,
    stats: Counters,
    /// Where a write refused for a transient reason goes back in after its
    /// backoff (weak: the committer stops when the writers are gone).
    requeue: mpsc::WeakSender<WriteOp>,
}

impl Committer {
    /// Starts the committer task for `shared`'s stream.
    pub(super) fn start(shared: Arc<Shared>) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let pipe = Arc::new(Pipe {
            inflight: Arc::new(tokio::sync::Mutex::new(())),
            direct: AtomicBool::new(true),
            stats: Counters::default(),
            requeue: queue.downgrade(),
        });
        tokio::spawn(run(shared.clone(), pipe.clone(), rx));
        Committer { queue, pipe, shared }
    }

    /// Commits `write` (with whatever else is in flight) and returns the
    /// stream sequence of its first message.
    pub(super) async fn submit(&self, write: Write) -> Result<u64, StoreError> {
        let (done, rx) = oneshot::channel();
        let mut keys = vec![format!("{}.{}", write.workflow, write.token)];
        keys.extend(write.record);
        let mut op = WriteOp {
            keys,
            workflow: write.workflow,
            token: write.token,
            expected: write.expected,
            probe: write.probe,
            messages: write.messages,
            fresh: Vec::new(),
            attempt: 0,
            done,
        };
        let direct = if self.pipe.direct.load(Ordering::Acquire) {
            self.pipe.inflight.try_lock().ok()
        } else {
            None
        };
        match direct {
            // Dropped with this future if the caller gives up: the committer
            // never waits on a commit nobody drives.
            Some(_inflight) => commit_group(&self.shared, &self.pipe, vec![op], None).await,
            None => {
                op.fresh = op.messages.clone();
                self.queue
                    .send(op)
                    .await
                    .map_err(|_| StoreError::unavailable("write", "the committer has stopped"))?
            }
        }
        rx.await
            .map_err(|_| StoreError::unavailable("write", "the committer has stopped"))?
    }

    /// The counters so far.
    pub(super) fn stats(&self) -> CommitStats {
        self.pipe.stats.snapshot()
    }
}

static BATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

fn batch_id() -> String {
    // Unique per process and batch; the random part separates hosts.
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| Id::generate().as_str()[10..].to_string());
    format!("cb-{host}-{}", BATCH_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The batch being filled: its writes' messages are on their way to the
/// server already, except the last one, held back to carry the commit.
struct Open {
    id: String,
    ops: Vec<WriteOp>,
    keys: HashSet<String>,
    /// Messages sent so far (the sequence of the last one sent).
    sent: usize,
    held: Option<OutMessage>,
    /// A message could not be sent: commit from scratch instead.
    broken: bool,
}

impl Open {
    fn new() -> Self {
        Open {
            id: batch_id(),
            ops: Vec::new(),
            keys: HashSet::new(),
            sent: 0,
            held: None,
            broken: false,
        }
    }

    fn messages(&self) -> usize {
        self.sent + usize::from(self.held.is_some())
    }

    fn accepts(&self, op: &WriteOp, max_writes: usize) -> bool {
        self.ops.len() < max_writes
            && self.messages() + op.messages.len() <= MAX_BATCH_MESSAGES
            && !op.keys.iter().any(|k| self.keys.contains(k))
    }

    /// Sends `op`'s messages (but the last) into this batch. The op keeps
    /// its own copies, to be sent again if the batch has to be split.
    async fn push(&mut self, shared: &Shared, mut op: WriteOp) {
        let mut fresh = std::mem::take(&mut op.fresh);
        let last = fresh.pop().expect("a write has messages");
        for m in self.held.take().into_iter().chain(fresh) {
            self.sent += 1;
            if !self.broken
                && let Err(e) = direct::stage(&shared.client, &self.id, self.sent, m).await
            {
                tracing::debug!(error = ?e, "staging a batch message failed; the batch will be re-sent");
                self.broken = true;
            }
        }
        self.held = Some(last);
        self.keys.extend(op.keys.iter().cloned());
        self.ops.push(op);
    }
}

type CommitFuture = Pin<Box<dyn Future<Output = Result<Committed, BatchError>> + Send>>;

/// A batch whose commit has been sent.
struct InFlight {
    reply: CommitFuture,
    sent: Instant,
    batch: String,
    ops: Vec<WriteOp>,
    _inflight: OwnedMutexGuard<()>,
}

enum Event {
    Committed(Result<Committed, BatchError>),
    Op(Option<WriteOp>),
}

/// The committer task: streams arriving writes into the open batch and
/// commits it whenever no other batch is committing.
async fn run(shared: Arc<Shared>, pipe: Arc<Pipe>, mut rx: mpsc::Receiver<WriteOp>) {
    let max_writes = shared.config.max_group_writes.max(1);
    let mut open = Open::new();
    // Writes that cannot join the open batch (full, or their token is in it).
    let mut deferred: VecDeque<WriteOp> = VecDeque::new();
    let mut inflight: Option<InFlight> = None;
    // Consecutive single-write batches (a lone writer), capped.
    let mut lone = LONE_GROUPS;
    let mut closed = false;
    loop {
        while deferred.front().is_some_and(|op| open.accepts(op, max_writes)) {
            let op = deferred.pop_front().expect("front");
            open.push(&shared, op).await;
        }
        if inflight.is_none() && !open.ops.is_empty() {
            gather(&shared, &mut rx, &mut open, &mut deferred, max_writes).await;
            let guard = pipe.inflight.clone().lock_owned().await;
            let batch = std::mem::replace(&mut open, Open::new());
            lone = if batch.ops.len() == 1 {
                (lone + 1).min(LONE_GROUPS)
            } else {
                0
            };
            match batch.held {
                Some(last) if !batch.broken => {
                    let (shared, id, seq) = (shared.clone(), batch.id.clone(), batch.sent + 1);
                    let timeout = shared.config.request_timeout;
                    inflight = Some(InFlight {
                        sent: Instant::now(),
                        reply: Box::pin(async move {
                            let commit = direct::commit(&shared.client, &id, seq, last, timeout);
                            with_faults(&shared, commit).await
                        }),
                        batch: batch.id,
                        ops: batch.ops,
                        _inflight: guard,
                    });
                }
                _ => commit_group(&shared, &pipe, batch.ops, None).await,
            }
            continue;
        }
        let event = match inflight.as_mut() {
            Some(f) => {
                tokio::select! {
                    biased;
                    r = &mut f.reply => Event::Committed(r),
                    op = rx.recv(), if !closed && deferred.len() < MAX_DEFERRED => Event::Op(op),
                }
            }
            None if closed && deferred.is_empty() => return,
            None if !deferred.is_empty() => continue,
            None => {
                // Idle: the next single writer may commit on its own.
                pipe.direct.store(lone >= LONE_GROUPS, Ordering::Release);
                let op = rx.recv().await;
                pipe.direct.store(false, Ordering::Release);
                Event::Op(op)
            }
        };
        match event {
            Event::Committed(result) => {
                let f = inflight.take().expect("in flight");
                let waited = f.sent.elapsed();
                let attempt = Attempt {
                    result,
                    waited,
                    batch: f.batch,
                };
                commit_group(&shared, &pipe, f.ops, Some(attempt)).await;
            }
            Event::Op(Some(op)) => add(&shared, &mut open, &mut deferred, op, max_writes).await,
            Event::Op(None) => closed = true,
        }
    }
}

async fn add(
    shared: &Shared,
    open: &mut Open,
    deferred: &mut VecDeque<WriteOp>,
    op: WriteOp,
    max_writes: usize,
) {
    if deferred.is_empty() && open.accepts(&op, max_writes) {
        open.push(shared, op).await;
    } else {
        deferred.push_back(op);
    }
}

/// Takes in what is queued before a commit. The callers of the previous
/// batch were woken when it committed and are still preparing their next
/// writes: yielding lets them enqueue. Stops as soon as a yield brings
/// nothing new, or the batch is full.
async fn gather(
    shared: &Shared,
    rx: &mut mpsc::Receiver<WriteOp>,
    open: &mut Open,
    deferred: &mut VecDeque<WriteOp>,
    max_writes: usize,
) {
    let mut yielded = false;
    loop {
        let before = open.ops.len() + deferred.len();
        while deferred.is_empty()
            && let Ok(op) = rx.try_recv()
        {
            add(shared, open, deferred, op, max_writes).await;
        }
        if !deferred.is_empty() || (yielded && open.ops.len() + deferred.len() == before) {
            return;
        }
        yielded = true;
        tokio::task::yield_now().await;
    }
}

/// How a test makes a commit's answer get lost (feature `testing`).
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFault {
    /// The commit is sent and stored; its answer is dropped.
    LoseReply,
    /// The commit is never sent (nothing is stored); the writer is told its
    /// answer was lost.
    LoseCommit,
}

/// Pending injected faults.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
pub(super) struct Faults {
    lose_reply: AtomicU64,
    lose_commit: AtomicU64,
}

#[cfg(feature = "testing")]
impl Faults {
    pub(super) fn inject(&self, fault: CommitFault, times: usize) {
        let counter = match fault {
            CommitFault::LoseReply => &self.lose_reply,
            CommitFault::LoseCommit => &self.lose_commit,
        };
        counter.store(times as u64, Ordering::SeqCst);
    }

    fn take(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Runs `commit` (which sends a batch's commit and waits for its answer),
/// or loses its answer when a test asked for that.
async fn with_faults(
    _shared: &Shared,
    commit: impl Future<Output = Result<Committed, BatchError>>,
) -> Result<Committed, BatchError> {
    #[cfg(feature = "testing")]
    {
        if Faults::take(&_shared.faults.lose_commit) {
            return Err(BatchError::Indeterminate(
                "test: the commit was never sent".into(),
            ));
        }
        if Faults::take(&_shared.faults.lose_reply) {
            let _ = commit.await;
            return Err(BatchError::Indeterminate(
                "test: the commit's answer was dropped".into(),
            ));
        }
    }
    commit.await
}

/// One commit of a group: what came back, how long it waited on the
/// server, and the batch id it was sent under.
struct Attempt {
    result: Result<Committed, BatchError>,
    waited: Duration,
    batch: String,
}

/// Commits a group from scratch (or settles `first`, the outcome of its
/// streamed commit); on a CAS conflict or a duplicate message id, splits it
/// in halves until the failing write is alone (the server names neither
/// which write failed), so the others still commit.
///
/// A commit whose answer was lost is resolved from the stream ([`resolve`])
/// and never sent again blindly: it may have been stored. A group refused
/// for a transient reason (nothing stored) goes back into the queue after
/// its backoff, outside the committer, so no other writer waits on it.
async fn commit_group(shared: &Shared, pipe: &Pipe, group: Vec<WriteOp>, first: Option<Attempt>) {
    let mut work = vec![(group, first)];
    while let Some((group, attempt)) = work.pop() {
        let attempt = match attempt {
            Some(a) => a,
            None => send(shared, &group).await,
        };
        let outcome = match attempt.result {
            Ok(c) => Ok(c),
            Err(e) => match classify(e, shared.config.request_timeout) {
                Failure::Indeterminate(reason) => match resolve(shared, &group, &attempt.batch).await {
                    Resolution::Landed(c) => {
                        tracing::debug!(batch = %attempt.batch, %reason, "commit answer lost; the batch was stored");
                        Ok(c)
                    }
                    // The first write's revision has another successor: the
                    // batch was refused, nothing of it stored.
                    Resolution::Refused => Err(Failure::Conflict(None)),
                    Resolution::Unknown => Err(Failure::Indeterminate(reason)),
                },
                f => Err(f),
            },
        };
        match outcome {
            Ok(committed) => {
                let total: u64 = group.iter().map(|op| op.messages.len() as u64).sum();
                if committed.count != total {
                    let e = StoreError::Indeterminate {
                        operation: "commit".into(),
                        reason: format!("server stored {} of {total} messages", committed.count),
                    };
                    for op in group {
                        let _ = op.done.send(Err(e.clone()));
                    }
                    continue;
                }
                pipe.stats.record(group.len(), total, attempt.waited);
                let mut seq = committed.last_sequence + 1 - total;
                for op in group {
                    let n = op.messages.len() as u64;
                    let _ = op.done.send(Ok(seq));
                    seq += n;
                }
            }
            Err(Failure::Duplicate) if group.len() == 1 => {
                let op = group.into_iter().next().expect("one");
                let _ = op.done.send(Err(StoreError::Duplicate { token: op.token }));
            }
            Err(Failure::Conflict(actual)) if group.len() == 1 => {
                let op = group.into_iter().next().expect("one");
                let _ = op.done.send(Err(StoreError::Conflict {
                    token: op.token,
                    expected: op.expected,
                    actual,
                }));
            }
            Err(Failure::Conflict(_) | Failure::Duplicate) => {
                let mut first = group;
                let second = first.split_off(first.len() / 2);
                work.push((second, None));
                work.push((first, None));
            }
            Err(Failure::Transient(e)) => {
                for op in group {
                    retry_later(shared, pipe, op, e.clone());
                }
            }
            Err(Failure::Indeterminate(reason)) => {
                let e = StoreError::Indeterminate {
                    operation: "commit".into(),
                    reason,
                };
                for op in group {
                    let _ = op.done.send(Err(e.clone()));
                }
            }
            Err(Failure::Other(e)) => {
                for op in group {
                    let _ = op.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Puts `op` back into the queue after its backoff, or fails it with `e`
/// once its attempts are used up.
fn retry_later(shared: &Shared, pipe: &Pipe, mut op: WriteOp, e: StoreError) {
    let policy = shared.config.retry;
    op.attempt += 1;
    if op.attempt >= policy.attempts {
        let _ = op.done.send(Err(e));
        return;
    }
    let Some(queue) = pipe.requeue.upgrade() else {
        let _ = op.done.send(Err(e));
        return;
    };
    tracing::debug!(error = %e, attempt = op.attempt, "write not stored; retrying after a backoff");
    let delay = policy.backoff(op.attempt);
    op.fresh = op.messages.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Err(mpsc::error::SendError(op)) = queue.send(op).await {
            let _ = op.done.send(Err(e));
        }
    });
}

/// Why a batch did not commit.
enum Failure {
    Conflict(Option<u64>),
    /// A `Nats-Msg-Id` in the group was seen before (10201).
    Duplicate,
    /// Nothing stored; sending again may succeed.
    Transient(StoreError),
    /// It may or may not have been stored.
    Indeterminate(String),
    Other(StoreError),
}

/// JetStream error codes meaning "nothing stored, try again": expected-seq
/// check temporarily unavailable (10163), a checked subject still in
/// process by an earlier proposal on a replicated stream (10164: for these
/// batches, which check each subject once, not a stale CAS: a stale one is
/// 10071 with the actual sequence, and a retry tells them apart), batch
/// missing a sequence (10175) or incomplete (10176), too many batches in
/// flight (10210).
const TRANSIENT_CODES: [u64; 5] = [10163, 10164, 10175, 10176, 10210];

fn classify(e: BatchError, timeout: Duration) -> Failure {
    match e {
        BatchError::Api(e) if e.err_code == 10071 => {
            let actual = e
                .description
                .rsplit(':')
                .next()
                .and_then(|n| n.trim().parse().ok());
            Failure::Conflict(actual)
        }
        BatchError::Api(e) if e.err_code == 10201 => Failure::Duplicate,
        BatchError::Api(e) if TRANSIENT_CODES.contains(&e.err_code) || e.code == 503 => Failure::Transient(
            StoreError::unavailable("commit", format!("{} ({})", e.description, e.err_code)),
        ),
        BatchError::Api(e) => Failure::Other(StoreError::Server {
            operation: "commit".into(),
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        }),
        BatchError::Timeout => Failure::Indeterminate(format!(
            "no answer to the commit within {} ms",
            timeout.as_millis()
        )),
        BatchError::Indeterminate(reason) => Failure::Indeterminate(reason),
        BatchError::Transport(reason) => Failure::Transient(StoreError::unavailable("commit", reason)),
    }
}

/// Sends the group as one batch, whole, under a fresh batch id.
async fn send(shared: &Shared, group: &[WriteOp]) -> Attempt {
    let messages = group.iter().flat_map(|op| op.messages.iter().cloned()).collect();
    let batch = batch_id();
    let sent = Instant::now();
    let publish = direct::publish_batch(&shared.client, &batch, messages, shared.config.request_timeout);
    let result = with_faults(shared, publish).await;
    Attempt {
        result,
        waited: sent.elapsed(),
        batch,
    }
}

/// What the stream says of a batch whose commit's answer was lost.
enum Resolution {
    /// Stored, at these sequences.
    Landed(Committed),
    /// Refused: nothing of it is, or ever will be, stored.
    Refused,
    /// Not (yet) visible: it may still be stored, or never.
    Unknown,
}

/// Stored messages keep their `Nats-Batch-Id`, and a batch is stored whole
/// or not at all, so one write of the group tells for all of them. For the
/// first write: if it expected revision `r > 0`, the first event after the
/// one stored with `r` (at `r + 1`) on its token's event subjects that came
/// in a batch is the successor's (the CAS admits one): ours means the batch
/// landed, another means it was refused. For a create, the token's live state: ours means it landed.
/// Anything else (nothing yet, the server unreachable) is unknown.
async fn resolve(shared: &Shared, group: &[WriteOp], batch: &str) -> Resolution {
    let op = &group[0];
    let total: u64 = group.iter().map(|op| op.messages.len() as u64).sum();
    let timeout = shared.config.request_timeout;
    let found: Option<(u64, bool)> = if op.expected > 0 {
        let filter = shared.subjects.token_events(&op.workflow, &op.token);
        // Revision `r` is a state whose own event, stored with it, is at
        // `r + 1`: the successor's event comes after that.
        let body = serde_json::json!({ "seq": op.expected + 2, "next_by_subj": filter, "batch": 16 });
        match direct::batch_get(&shared.client, &shared.config.stream, &body, timeout).await {
            Ok(Ok(page)) => page
                .messages
                .iter()
                .find_map(|m| batch_of(m).map(|b| (m.sequence, b == batch))),
            _ => return Resolution::Unknown,
        }
    } else {
        let subject = shared.subjects.token_any_place(&op.workflow, &op.token);
        match tokio::time::timeout(timeout, shared.stream.get_last_raw_message_by_subject(&subject)).await {
            Ok(Ok(m)) => batch_of(&m).map(|b| (m.sequence, b == batch)),
            _ => return Resolution::Unknown,
        }
    };
    match found {
        Some((seq, true)) => {
            let first = seq - op.probe as u64;
            Resolution::Landed(Committed {
                last_sequence: first + total - 1,
                count: total,
            })
        }
        Some((_, false)) if op.expected > 0 => Resolution::Refused,
        _ => Resolution::Unknown,
    }
}

fn batch_of(m: &async_nats::jetstream::message::StreamMessage) -> Option<&str> {
    m.headers
        .get(async_nats::header::NATS_BATCH_ID)
        .map(|v| v.as_str())
}
