//! The per-call store state and the host side of the plugin imports.
//!
//! A [`CallState`] is created for one call and dropped with its `Store`. It
//! holds the WASI context (nothing granted), the memory limiter, and a
//! [`TokenSource`]: a read-only trait object. Nothing in it can write to
//! storage, so no plugin can, whatever it calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{log, token_reader, transitions, types};
use super::{LogLevel, LogLine, PluginLimits, TransitionRequest};
use crate::model::{Id, StoredDefinition, Token};
use crate::store::{StoreError, TokenSource};

/// Who is being called, for logs and errors.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) digest: String,
}

/// Caps linear memory and records a refused grow, so the error can be
/// classified as `MemoryLimit` whatever trap the guest turns it into.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    pub(crate) refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.refused = Some(desired);
            return Ok(false);
        }
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
    pub(crate) limiter: MemoryLimiter,
    pub(crate) caller: Arc<Caller>,
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) limits: PluginLimits,
    /// Bytes of host data still allowed this call.
    pub(crate) data_budget: usize,
    /// Bytes of log still allowed this call.
    pub(crate) log_budget: usize,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    /// `Some` for actions: the follow-up firings requested so far.
    pub(crate) requests: Option<Vec<TransitionRequest>>,
    /// When the call's deadline passes; host calls are bounded by it.
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

impl CallState {
    pub(crate) fn push_log(&mut self, level: LogLevel, message: String) {
        let len = message.len();
        if len > self.log_budget {
            self.log_budget = 0;
            return;
        }
        self.log_budget -= len;
        let (plugin, digest) = (&self.caller.name, &self.caller.digest);
        match level {
            LogLevel::Trace => tracing::trace!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Info => tracing::info!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "cb::plugin", plugin, digest, "{message}"),
            LogLevel::Error => tracing::error!(target: "cb::plugin", plugin, digest, "{message}"),
        }
        self.logs.push(LogLine { level, message });
    }

    /// Moves captured stdout/stderr into the log, line by line.
    pub(crate) fn drain_output(&mut self) {
        for (pipe, level) in [
            (self.stdout.contents(), LogLevel::Info),
            (self.stderr.contents(), LogLevel::Warn),
        ] {
            let text = String::from_utf8_lossy(&pipe).into_owned();
            for line in text.lines().filter(|l| !l.is_empty()) {
                self.push_log(level, line.to_string());
            }
        }
    }

    /// Charges `bytes` of host data to the call's budget.
    fn charge(&mut self, bytes: usize) -> Result<(), types::Error> {
        if bytes > self.data_budget {
            self.data_budget = 0;
            return Err(types::Error::Limit(format!(
                "host data for this call exceeds {} bytes",
                self.limits.host_data_bytes
            )));
        }
        self.data_budget -= bytes;
        Ok(())
    }

    /// Time left before the call's deadline, for bounding host calls (epoch
    /// interruption does not fire while the guest waits on the host).
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
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
        data: t.data.to_string(),
        metadata: t.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        revision: t.revision,
        created_at: timestamp(t.created_at),
        updated_at: timestamp(t.updated_at),
    }
}

pub(crate) fn wit_transition(t: &crate::model::Transition) -> types::TransitionInfo {
    types::TransitionInfo {
        id: t.id.to_string(),
        from: t.from.iter().map(Id::to_string).collect(),
        to: t.to.to_string(),
    }
}

fn wit_workflow(d: &StoredDefinition) -> types::Workflow {
    types::Workflow {
        id: d.definition.id.to_string(),
        name: d.definition.name.clone(),
        version: d.version,
        places: d.definition.places.iter().map(Id::to_string).collect(),
        initial_place: d.definition.initial_place.to_string(),
        transitions: d.definition.transitions.iter().map(wit_transition).collect(),
    }
}

fn token_size(t: &types::Token) -> usize {
    t.id.len()
        + t.workflow_id.len()
        + t.place.len()
        + t.data.len()
        + t.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + 64
}

impl types::Host for CallState {}

impl token_reader::Host for CallState {
    async fn get_token(
        &mut self,
        workflow_id: String,
        token_id: String,
    ) -> Result<types::Token, types::Error> {
        let (wf, tok) = (id(workflow_id, "workflow id")?, id(token_id, "token id")?);
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
        let limit = (limit as usize).clamp(1, 1000);
        let (source, remaining) = (self.source.clone(), self.remaining());
        let page = bounded(remaining, source.list_place(&wf, &place, cursor, limit)).await?;
        let tokens: Vec<types::Token> = page.items.iter().map(wit_token).collect();
        self.charge(tokens.iter().map(token_size).sum())?;
        Ok(types::TokenPage {
            tokens,
            next: page.next,
        })
    }

    async fn get_workflow(&mut self, workflow_id: String) -> Result<types::Workflow, types::Error> {
        let wf = id(workflow_id, "workflow id")?;
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
        let max = self.limits.max_requests;
        let Some(requests) = self.requests.as_mut() else {
            return Err(types::Error::Invalid(
                "only actions may request transitions".into(),
            ));
        };
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
        self.push_log(level, message);
    }
}
