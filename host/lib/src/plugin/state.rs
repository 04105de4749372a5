//! The per-call store state and the host side of the plugin imports.
//!
//! A [`CallState`] is created for one call and dropped with its `Store`. It
//! holds the WASI context (nothing granted), the memory limiter, the call's
//! [`Scope`] and a [`TokenSource`]: a read-only trait object. Nothing in it
//! can write to storage, so no plugin can, whatever it calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::{log, token_reader, transitions, types};
use super::output::SharedSink;
use super::sandbox::DenyHttp;
use super::{LogLevel, PluginError, PluginLimits, TransitionRequest};
use crate::model::{Grants, Id, StoredDefinition, Token};
use crate::store::{Missing, StoreError, TokenSource};

/// Who is being called, for logs and errors.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) digest: String,
}

impl Caller {
    /// `sha256:` and the first 12 hex digits: enough to tell builds apart
    /// in a log line without 64 digits on every line.
    pub(crate) fn short_digest(&self) -> &str {
        &self.digest[..self.digest.len().min(19)]
    }
}

/// What one call may reach: the workflow it runs for, plus what its plugin
/// reference grants. Reads outside it are `not-found` (they do not reveal
/// whether the workflow exists); follow-ups outside it are refused.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) workflow: Id,
    pub(crate) grants: Arc<Grants>,
}

impl Scope {
    fn reads(&self, wf: &Id) -> bool {
        *wf == self.workflow || self.grants.read.contains(wf)
    }

    fn fires(&self, wf: &Id) -> bool {
        *wf == self.workflow || self.grants.fire.contains(wf)
    }
}

/// Caps linear memory and records a refused grow, so the error can be
/// classified as `MemoryLimit` whatever trap the guest turns it into.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    pub(crate) refused: Option<usize>,
    /// The largest total linear memory the call was given.
    pub(crate) peak: usize,
    total: usize,
}

impl MemoryLimiter {
    pub(crate) fn new(max: usize) -> Self {
        MemoryLimiter {
            max,
            refused: None,
            peak: 0,
            total: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.total = self.total + desired - current;
        self.peak = self.peak.max(self.total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any
        // real plugin and bounds a table-growth bomb.
        Ok(desired <= 100_000)
    }
}

/// Everything one call can reach.
pub(crate) struct CallState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: DenyHttp,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) caller: Arc<Caller>,
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) scope: Scope,
    pub(crate) limits: PluginLimits,
    /// Bytes of host data still allowed this call.
    pub(crate) data_budget: usize,
    /// The call's log (shared with its stdout and stderr).
    pub(crate) sink: SharedSink,
    /// `Some` for actions: the follow-up firings requested so far.
    pub(crate) requests: Option<Vec<TransitionRequest>>,
    /// The first thing the plugin handed the host that broke a limit (e.g.
    /// an oversized follow-up input): the call fails with it even if the
    /// guest ignores the error it was given.
    pub(crate) violation: Option<PluginError>,
    /// When the call's deadline passes; host calls are bounded by it, and
    /// the epoch callback traps the guest at it.
    pub(crate) deadline: Instant,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl CallState {
    /// Charges `bytes` of host data to the call's budget.
    fn charge(&mut self, bytes: usize) -> Result<(), types::Error> {
        if bytes > self.data_budget {
            self.data_budget = 0;
            return Err(self.over_budget());
        }
        self.data_budget -= bytes;
        Ok(())
    }

    /// The error of a reader call once the data budget is spent: given at
    /// once, without asking storage.
    fn over_budget(&self) -> types::Error {
        types::Error::Limit(format!(
            "host data for this call exceeds {} bytes",
            self.limits.host_data_bytes
        ))
    }

    /// Time left before the call's deadline, for bounding host calls (epoch
    /// interruption does not fire while the guest waits on the host).
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn violate(&mut self, e: PluginError) {
        self.violation.get_or_insert(e);
    }
}

/// Runs a storage read within `remaining`, mapping errors for the guest.
/// (A free function: the future must not borrow the non-`Sync` state.)
async fn bounded<T>(
    remaining: Duration,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, types::Error> {
    match tokio::time::timeout(remaining, fut).await {
        Ok(r) => r.map_err(store_error),
        Err(_) => Err(types::Error::Unavailable(
            "storage did not answer before the call's deadline".into(),
        )),
    }
}

fn store_error(e: StoreError) -> types::Error {
    match e {
        StoreError::NotFound(m) => types::Error::NotFound(m.to_string()),
        StoreError::InvalidId(e) => types::Error::Invalid(e.to_string()),
        e @ (StoreError::Invalid(_) | StoreError::InvalidDefinition(_)) => {
            types::Error::Invalid(e.to_string())
        }
        other => types::Error::Unavailable(other.to_string()),
    }
}

fn id(s: String, what: &str) -> Result<Id, types::Error> {
    Id::new(s).map_err(|e| types::Error::Invalid(format!("{what}: {e}")))
}

fn not_found(m: Missing) -> types::Error {
    types::Error::NotFound(m.to_string())
}

pub(crate) fn timestamp(t: OffsetDateTime) -> types::Timestamp {
    types::Timestamp {
        seconds: t.unix_timestamp(),
        nanoseconds: t.nanosecond(),
    }
}

pub(crate) fn wit_token(t: &Token) -> types::Token {
    types::Token {
        id: t.id.to_string(),
        workflow_id: t.workflow_id.to_string(),
        definition_version: t.definition_version,
        place: t.place.to_string(),
        marking: t.marks().iter().map(Id::to_string).collect(),
        data: t.data.to_string(),
        metadata: t.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        revision: t.revision,
        created_at: timestamp(t.created_at),
        updated_at: timestamp(t.updated_at),
    }
}

pub(crate) fn wit_transition(t: &crate::model::Transition) -> types::TransitionInfo {
    let ids = |v: &[Id]| v.iter().map(Id::to_string).collect();
    types::TransitionInfo {
        id: t.id.to_string(),
        from: ids(&t.from),
        join: ids(&t.join),
        to: t.to.as_ref().map(Id::to_string),
        split: ids(&t.split),
        cancel: ids(&t.cancel),
    }
}

fn wit_workflow(d: &StoredDefinition) -> types::Workflow {
    types::Workflow {
        id: d.definition.id.to_string(),
        name: d.definition.name.clone(),
        version: d.version,
        places: d.definition.places.iter().map(Id::to_string).collect(),
        initial_place: d.definition.initial_place.to_string(),
        final_places: d.definition.final_places.iter().map(Id::to_string).collect(),
        transitions: d.definition.transitions.iter().map(wit_transition).collect(),
    }
}

/// What a token costs against the host-data budget: the bytes handed over.
fn token_size(t: &types::Token) -> usize {
    t.id.len()
        + t.workflow_id.len()
        + t.place.len()
        + t.marking.iter().map(|p| p.len() + 8).sum::<usize>()
        + t.data.len()
        + t.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + 64
}

/// The least a token costs: a get is refused without a request below it.
const MIN_TOKEN_COST: usize = 64;

impl types::Host for CallState {}

impl token_reader::Host for CallState {
    async fn get_token(
        &mut self,
        workflow_id: String,
        token_id: String,
    ) -> Result<types::Token, types::Error> {
        let (wf, tok) = (id(workflow_id, "workflow id")?, id(token_id, "token id")?);
        if !self.scope.reads(&wf) {
            return Err(not_found(Missing::Token {
                workflow: Some(wf),
                token: tok,
            }));
        }
        if self.data_budget < MIN_TOKEN_COST {
            return Err(self.over_budget());
        }
        let (source, remaining) = (self.source.clone(), self.remaining());
        let t = bounded(remaining, source.get_token(&wf, &tok)).await?;
        let t = wit_token(&t);
        self.charge(token_size(&t))?;
        Ok(t)
    }

    async fn list_place(
        &mut self,
        workflow_id: String,
        place: String,
        cursor: Option<u64>,
        limit: u32,
    ) -> Result<types::TokenPage, types::Error> {
        let (wf, place) = (id(workflow_id, "workflow id")?, id(place, "place")?);
        if !self.scope.reads(&wf) {
            return Err(not_found(Missing::Workflow(wf)));
        }
        if self.data_budget < MIN_TOKEN_COST {
            return Err(self.over_budget());
        }
        let limit = (limit as usize).clamp(1, 1000);
        // Storage is asked for at most what the budget still allows.
        let (source, remaining, max_bytes) = (self.source.clone(), self.remaining(), self.data_budget);
        let page = bounded(
            remaining,
            source.list_place(&wf, &place, cursor, limit, max_bytes),
        )
        .await?;
        // Cut the page to what fits; the cursor resumes at the first token
        // left out.
        let mut tokens = Vec::with_capacity(page.items.len());
        let mut next = page.next;
        for t in &page.items {
            let w = wit_token(t);
            let size = token_size(&w);
            if size > self.data_budget {
                if tokens.is_empty() {
                    self.data_budget = 0;
                    return Err(self.over_budget());
                }
                next = Some(t.revision);
                break;
            }
            self.data_budget -= size;
            tokens.push(w);
        }
        Ok(types::TokenPage { tokens, next })
    }

    async fn get_workflow(&mut self, workflow_id: String) -> Result<types::Workflow, types::Error> {
        let wf = id(workflow_id, "workflow id")?;
        if !self.scope.reads(&wf) {
            return Err(not_found(Missing::Workflow(wf)));
        }
        if self.data_budget < MIN_TOKEN_COST {
            return Err(self.over_budget());
        }
        let (source, remaining) = (self.source.clone(), self.remaining());
        let d = bounded(remaining, source.get_definition(&wf)).await?;
        self.charge(serde_json::to_vec(&d.definition).map(|v| v.len()).unwrap_or(0))?;
        Ok(wit_workflow(&d))
    }
}

impl transitions::Host for CallState {
    async fn request(
        &mut self,
        workflow_id: String,
        token_id: String,
        transition: String,
        input: String,
    ) -> Result<(), types::Error> {
        if self.requests.is_none() {
            return Err(types::Error::Invalid(
                "only actions may request transitions".into(),
            ));
        }
        if input.len() > self.limits.input_bytes {
            let e = PluginError::OutputTooLarge {
                plugin: self.caller.name.clone(),
                what: "follow-up input".into(),
                size: input.len(),
                limit: self.limits.input_bytes,
            };
            let msg = e.to_string();
            self.violate(e);
            return Err(types::Error::Limit(msg));
        }
        let request = TransitionRequest {
            workflow_id: id(workflow_id, "workflow id")?,
            token_id: id(token_id, "token id")?,
            transition: id(transition, "transition")?,
            input: if input.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&input)
                    .map_err(|e| types::Error::Invalid(format!("input is not JSON: {e}")))?
            },
        };
        if !self.scope.fires(&request.workflow_id) {
            let msg = format!(
                "follow-up `{}` on token `{}` refused: workflow `{}` is outside this action's scope \
                 (its own workflow is `{}`; a definition grants more with \"grants\": {{\"fire\": [...]}})",
                request.transition, request.token_id, request.workflow_id, self.scope.workflow
            );
            self.sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .line(LogLevel::Warn, &msg);
            return Err(types::Error::Invalid(msg));
        }
        let max = self.limits.max_requests;
        let requests = self.requests.as_mut().expect("checked above");
        if requests.len() >= max {
            return Err(types::Error::Limit(format!(
                "at most {max} transition requests per call"
            )));
        }
        requests.push(request);
        Ok(())
    }
}

impl log::Host for CallState {
    async fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .line(level, &message);
    }
}
