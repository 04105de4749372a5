//! [`Plugin`]: a loaded component and the path of one call: a fresh store
//! and instance on the plugin threads, every limit enforced, and what the
//! guest returns checked against the limits before the host uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Fuel a call may spend in the caller's task before it yields and moves
/// to the plugin threads (about 0.1 ms of guest code here; the example
/// Rust guards use 11,000-20,000).
const INLINE_FUEL: u64 = 100_000;

/// A plugin whose last call took longer than this starts its next call on
/// the plugin threads. Fuel does not meter everything a call costs: a
/// Python guard spends 0.3M fuel but ~2 ms, most of it instantiating
/// (tables, copy-on-write faults), all of which would hold the caller's
/// async worker.
const INLINE_BUDGET: Duration = Duration::from_micros(250);

use time::OffsetDateTime;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpCtx;

use super::bindings::{self, action, guard, v0_1};
use super::compat;
use super::engine::PluginRuntime;
use super::output::LogSink;
use super::sandbox::{self, DenyHttp};
use super::state::{self, CallState, Caller, MemoryLimiter, Scope};
use super::{
    ActionInput, Decision, GuardArgs, GuardInput, LoadSource, Outcome, PluginError, PluginLimits,
    TransitionRequest, World,
};
use crate::model::{Grants, Id, PluginRef};
use crate::store::TokenSource;
use crate::text::{escape_bounded, json_depth};

/// A linked component, by world and interface version.
pub(super) enum Pre {
    Guard(guard::GuardPre<CallState>),
    Action(action::ActionPre<CallState>),
    /// Built against `circuit-breaker:plugin@0.1` (see `compat.rs`).
    GuardV0_1(v0_1::guard::GuardPre<CallState>),
    /// Built against `circuit-breaker:plugin@0.1`.
    ActionV0_1(v0_1::action::ActionPre<CallState>),
}

/// A loaded plugin: compiled, linked and ready to instantiate. Each call
/// gets a fresh `Store` and instance, so nothing leaks between calls and a
/// trapped instance is never re-entered.
///
/// A `Plugin` carries the limits and grants its calls run under; a
/// definition's plugin reference adjusts both for its own use
/// ([`Plugin::for_ref`]).
#[derive(Clone)]
pub struct Plugin {
    runtime: PluginRuntime,
    caller: Arc<Caller>,
    world: World,
    source: LoadSource,
    load_time: Duration,
    size: usize,
    pre: Arc<Pre>,
    /// How long the last call took, in µs (shared by every clone): decides
    /// whether the next one starts in the caller's task.
    last_call_us: Arc<AtomicU64>,
    limits: PluginLimits,
    grants: Arc<Grants>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.caller.name)
            .field("digest", &self.caller.digest)
            .field("world", &self.world)
            .finish()
    }
}

/// What a call runs: the world's export with its context.
enum Job {
    Guard(bindings::types::GuardContext),
    Action(bindings::types::ActionContext),
}

/// What the export returned, checked against the limits.
enum Returned {
    Guard(Decision),
    Action(Vec<TransitionRequest>),
}

/// Aborts the call's task if the caller stops waiting for it (a guest
/// then stops at its next yield instead of running to its deadline).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Plugin {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        runtime: PluginRuntime,
        name: &str,
        digest: String,
        world: World,
        source: LoadSource,
        load_time: Duration,
        size: usize,
        pre: Pre,
    ) -> Self {
        let limits = runtime.shared.config.default_limits;
        Plugin {
            runtime,
            caller: Arc::new(Caller {
                name: name.to_string(),
                digest,
            }),
            world,
            source,
            load_time,
            size,
            pre: Arc::new(pre),
            last_call_us: Arc::default(),
            limits,
            grants: Arc::default(),
        }
    }

    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.caller.name
    }

    /// `sha256:<hex>` of the component bytes: the plugin's identity.
    pub fn digest(&self) -> &str {
        &self.caller.digest
    }

    /// The world it targets.
    pub fn world(&self) -> World {
        self.world
    }

    /// Whether it was compiled or loaded from the cache.
    pub fn load_source(&self) -> LoadSource {
        self.source
    }

    /// How long loading took (compile or deserialize, link checks excluded).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Size of the component file in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The limits its calls run under.
    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// What its calls may reach beyond the workflow they run for.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The same plugin with other limits (memory clamped to the runtime's
    /// maximum).
    pub fn with_limits(mut self, mut limits: PluginLimits) -> Self {
        limits.memory_bytes = limits
            .memory_bytes
            .min(self.runtime.shared.config.max_memory_bytes);
        self.limits = limits;
        self
    }

    /// The same plugin with these grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = Arc::new(grants);
        self
    }

    /// The plugin as `r` uses it: the host's default limits with `r`'s
    /// overrides (checked against the host's maxima when the definition was
    /// applied; clamped here all the same), and `r`'s grants.
    pub fn for_ref(&self, r: &PluginRef) -> Self {
        let mut p = self.clone();
        if !r.limits.is_empty() {
            let config = &self.runtime.shared.config;
            let mut max = config.max_limits;
            max.memory_bytes = max.memory_bytes.min(config.max_memory_bytes);
            let mut l = config.default_limits.with_overrides(&r.limits);
            l.deadline = l.deadline.min(max.deadline);
            l.fuel = l.fuel.min(max.fuel);
            l.memory_bytes = l.memory_bytes.min(max.memory_bytes);
            l.host_data_bytes = l.host_data_bytes.min(max.host_data_bytes);
            l.log_bytes = l.log_bytes.min(max.log_bytes);
            l.max_requests = l.max_requests.min(max.max_requests);
            l.code_bytes = l.code_bytes.min(max.code_bytes);
            l.message_bytes = l.message_bytes.min(max.message_bytes);
            l.details_bytes = l.details_bytes.min(max.details_bytes);
            l.details_depth = l.details_depth.min(max.details_depth);
            l.error_bytes = l.error_bytes.min(max.error_bytes);
            l.input_bytes = l.input_bytes.min(max.input_bytes);
            p.limits = l;
        }
        if !r.grants.is_empty() {
            p.grants = Arc::new(r.grants.clone());
        }
        p
    }

    fn new_store(
        &self,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: &[u8],
        workflow: Id,
        action: bool,
    ) -> Store<CallState> {
        let limits = self.limits;
        let since_epoch = Duration::from_nanos(
            (fired_at - OffsetDateTime::UNIX_EPOCH)
                .whole_nanoseconds()
                .clamp(0, u64::MAX as i128) as u64,
        );
        let sink = Arc::new(std::sync::Mutex::new(LogSink::new(
            self.caller.clone(),
            limits.log_bytes,
        )));
        let mut seed_material = self.caller.digest.as_bytes().to_vec();
        seed_material.extend_from_slice(seed);
        let state = CallState {
            wasi: sandbox::wasi_ctx(&sink, since_epoch, &seed_material),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_hooks: DenyHttp,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            caller: self.caller.clone(),
            source,
            scope: Scope {
                workflow,
                grants: self.grants.clone(),
            },
            limits,
            data_budget: limits.host_data_bytes,
            sink,
            requests: action.then(Vec::new),
            violation: None,
            deadline: Instant::now() + limits.deadline,
        };
        let mut store = Store::new(&self.runtime.shared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(limits.fuel).expect("fuel is enabled");
        // Fuel also bounds how long a call runs before its first yield
        // (about a millisecond of guest code at most, where an epoch tick
        // could be a whole 5 ms): see `call_inner`.
        store
            .fuel_async_yield_interval(Some(INLINE_FUEL))
            .expect("fuel is enabled");
        // Every epoch tick the guest yields its thread to the other calls
        // (a busy loop holds a thread for at most one tick), and at the
        // deadline it traps.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |ctx| {
            Ok(if Instant::now() >= ctx.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store
    }

    /// Classifies a failed call from the store's own records first (a
    /// refused memory grow may surface as an `unreachable` trap or as an
    /// error that is not a `Trap`), then from the trap code.
    fn classify(&self, store: &Store<CallState>, err: wasmtime::Error) -> PluginError {
        let plugin = self.caller.name.clone();
        if store.data().limiter.refused.is_some() {
            return PluginError::MemoryLimit {
                plugin,
                limit_bytes: self.limits.memory_bytes,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout {
                plugin,
                limit_ms: self.limits.deadline.as_millis() as u64,
            },
            Some(Trap::OutOfFuel) => PluginError::OutOfFuel {
                plugin,
                fuel: self.limits.fuel,
            },
            Some(Trap::StackOverflow) => PluginError::StackOverflow { plugin },
            _ => PluginError::Trap {
                plugin,
                message: escape_bounded(&format!("{err:#}"), 4096),
            },
        }
    }

    fn too_large(&self, what: &str, size: usize, limit: usize) -> Result<(), PluginError> {
        if size > limit {
            return Err(PluginError::OutputTooLarge {
                plugin: self.caller.name.clone(),
                what: what.into(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// A guest's decision, checked: code, message and details within their
    /// limits (sizes first, then the details' depth, and only then parsed).
    fn decision(&self, d: bindings::types::Decision) -> Result<Decision, PluginError> {
        let d = match d {
            bindings::types::Decision::Allow => return Ok(Decision::Allow),
            bindings::types::Decision::Deny(d) => d,
        };
        let l = &self.limits;
        self.too_large("denial code", d.code.len(), l.code_bytes)?;
        self.too_large("denial message", d.message.len(), l.message_bytes)?;
        self.too_large("denial details", d.details.len(), l.details_bytes)?;
        if let Err(e) = Id::new(d.code.as_str()) {
            return Err(PluginError::InvalidOutput {
                plugin: self.caller.name.clone(),
                what: "denial code".into(),
                reason: e.to_string(),
            });
        }
        let depth = json_depth(&d.details);
        if depth > l.details_depth {
            return Err(PluginError::InvalidOutput {
                plugin: self.caller.name.clone(),
                what: "denial details".into(),
                reason: format!("nested {depth} deep, more than the limit of {}", l.details_depth),
            });
        }
        let details = if d.details.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&d.details).unwrap_or(serde_json::Value::String(d.details))
        };
        Ok(Decision::Deny {
            code: d.code,
            message: d.message,
            details,
        })
    }

    /// Runs `job` on the plugin threads (or in this task when the runtime
    /// has none), holding one of the runtime's call slots.
    /// [`call_inner`](Self::call_inner), counted in the metrics.
    async fn call(
        &self,
        job: Job,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: String,
        workflow: Id,
    ) -> Result<Outcome<Returned>, PluginError> {
        let started = std::time::Instant::now();
        let world = self.world.to_string();
        let span = tracing::info_span!(
            "plugin",
            otel.name = %format_args!("{world} {}", self.caller.name),
            plugin = %self.caller.name,
            digest = %self.caller.digest,
            world = %world,
            fuel = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let r = self
            .call_inner(job, source, fired_at, seed, workflow)
            .instrument(span.clone())
            .await;
        let took = match &r {
            Ok(o) => o.duration,
            Err(_) => started.elapsed(),
        };
        self.last_call_us.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match &r {
            Ok(o) => {
                crate::metrics::plugin_call(&self.caller.name, &world, took, o.fuel_used, None);
                span.record("fuel", i64::try_from(o.fuel_used).unwrap_or(i64::MAX));
                span.record("outcome", "ok");
            }
            Err(e) => {
                crate::metrics::plugin_call(&self.caller.name, &world, took, 0, Some(e.kind()));
                span.record("outcome", e.kind());
            }
        }
        r
    }

    async fn call_inner(
        &self,
        job: Job,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: String,
        workflow: Id,
    ) -> Result<Outcome<Returned>, PluginError> {
        let expected = match job {
            Job::Guard(_) => World::Guard,
            Job::Action(_) => World::Action,
        };
        if expected != self.world {
            return Err(PluginError::WrongWorld {
                plugin: self.caller.name.clone(),
                expected: expected.to_string(),
                actual: self.world.to_string(),
            });
        }
        let slot = self
            .runtime
            .shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let me = self.clone();
        let mut run = Box::pin(async move {
            let out = me.execute(job, source, fired_at, seed, workflow).await;
            drop(slot);
            out
        });
        let Some(threads) = self.runtime.shared.threads.as_ref() else {
            return run.await;
        };
        // A call starts in the caller's task: most finish within their
        // first [`INLINE_FUEL`], and a hand-off to another thread and back
        // costs more than such a call (~40 µs against ~20 here). A call that
        // yields first (its inline fuel spent, an epoch tick, or a host call
        // that waits on NATS) moves, with the rest of its run, to the plugin
        // threads, where it competes with other guests, not with the host's
        // async work: a guest holds an async worker for about 0.1 ms of its
        // code at most (an epoch tick, 5 ms, held it up to fifty times
        // longer, which 64 guests spinning at once turned into 7 ms reads).
        // A plugin whose last call was long (over [`INLINE_BUDGET`]) starts
        // on the plugin threads at once: what fuel does not meter
        // (instantiating a large component) would hold the worker too.
        let long = Duration::from_micros(self.last_call_us.load(Ordering::Relaxed)) > INLINE_BUDGET;
        if !long {
            let inline = std::future::poll_fn(|cx| match run.as_mut().poll(cx) {
                Poll::Ready(out) => Poll::Ready(Some(out)),
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            if let Some(out) = inline {
                return out;
            }
        }
        let task = threads.spawn(run);
        let _abort = AbortOnDrop(task.abort_handle());
        task.await.map_err(|e| PluginError::Trap {
            plugin: self.caller.name.clone(),
            message: format!("the call's task ended: {e}"),
        })?
    }

    async fn execute(
        self,
        job: Job,
        source: Arc<dyn TokenSource>,
        fired_at: OffsetDateTime,
        seed: String,
        workflow: Id,
    ) -> Result<Outcome<Returned>, PluginError> {
        let _ticking = self.runtime.shared.ticker.enter();
        let started = Instant::now();
        let action = matches!(job, Job::Action(_));
        let mut store = self.new_store(source, fired_at, seed.as_bytes(), workflow, action);
        // Epochs stop guest code; this timeout also bounds time spent in
        // async host calls, where epochs do not fire.
        let deadline = self.limits.deadline + self.runtime.shared.config.epoch_tick * 2;
        let run = async {
            match (&*self.pre, job) {
                (Pre::Guard(pre), Job::Guard(ctx)) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let d = instance.call_evaluate(&mut store, &ctx).await?;
                    Ok(Ok(d))
                }
                (Pre::Action(pre), Job::Action(ctx)) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let r = instance.call_run(&mut store, &ctx).await?;
                    Ok(Err(r))
                }
                (Pre::GuardV0_1(pre), Job::Guard(ctx)) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let d = instance
                        .call_evaluate(&mut store, &compat::guard_context(ctx))
                        .await?;
                    Ok(Ok(compat::decision(d)))
                }
                (Pre::ActionV0_1(pre), Job::Action(ctx)) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let r = instance
                        .call_run(&mut store, &compat::action_context(ctx))
                        .await?;
                    Ok(Err(r))
                }
                _ => unreachable!("world checked"),
            }
        };
        let result: Result<wasmtime::Result<Result<_, _>>, _> = tokio::time::timeout(deadline, run).await;
        let duration = started.elapsed();
        let fuel_used = self.limits.fuel - store.get_fuel().unwrap_or(0);
        let memory_bytes = store.data().limiter.peak;
        let logs = store
            .data()
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
        let raw = match result {
            Err(_) => Err(PluginError::Timeout {
                plugin: self.caller.name.clone(),
                limit_ms: self.limits.deadline.as_millis() as u64,
            }),
            Ok(Err(e)) => Err(self.classify(&store, e)),
            Ok(Ok(v)) => Ok(v),
        };
        let state = store.data_mut();
        if let Some(v) = state.violation.take() {
            return Err(v);
        }
        let requests = state.requests.take().unwrap_or_default();
        let value = match raw? {
            Ok(decision) => Returned::Guard(self.decision(decision)?),
            Err(Ok(())) => Returned::Action(requests),
            Err(Err(message)) => {
                self.too_large("action error", message.len(), self.limits.error_bytes)?;
                // Escaped: it is logged and recorded for people.
                return Err(PluginError::Failed {
                    plugin: self.caller.name.clone(),
                    message: escape_bounded(&message, self.limits.error_bytes),
                });
            }
        };
        Ok(Outcome {
            value,
            logs,
            fuel_used,
            memory_bytes,
            duration,
        })
    }

    /// Evaluates a guard. `source` serves its `token-reader` import.
    pub async fn evaluate(
        &self,
        input: &GuardInput,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Decision>, PluginError> {
        let args = GuardArgs {
            token: &input.token,
            transition: &input.transition,
            config: &input.config,
            input: &input.input,
            actor: &input.actor,
            fired_at: input.fired_at,
        };
        self.evaluate_with(args, source).await
    }

    /// [`Plugin::evaluate`] from borrowed parts: the engine's path, which
    /// would otherwise copy the token and the transition for every guard.
    pub(crate) async fn evaluate_with(
        &self,
        input: GuardArgs<'_>,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Decision>, PluginError> {
        let ctx = bindings::types::GuardContext {
            token: state::wit_token(input.token),
            transition: state::wit_transition(input.transition),
            config: input.config.to_string(),
            input: input.input.to_string(),
            actor: input.actor.clone(),
            fired_at: state::timestamp(input.fired_at),
        };
        let seed = format!(
            "{}|{}|{}|{}",
            input.token.workflow_id, input.token.id, input.token.revision, input.transition.id
        );
        let out = self
            .call(
                Job::Guard(ctx),
                source,
                input.fired_at,
                seed,
                input.token.workflow_id.clone(),
            )
            .await?;
        let Returned::Guard(decision) = out.value else {
            unreachable!("a guard job returns a decision")
        };
        Ok(Outcome {
            value: decision,
            logs: out.logs,
            fuel_used: out.fuel_used,
            memory_bytes: out.memory_bytes,
            duration: out.duration,
        })
    }

    /// Runs an action; returns the follow-up firings it requested (to be
    /// fired by the caller only when the action succeeded).
    pub async fn run_action(
        &self,
        input: &ActionInput,
        source: Arc<dyn TokenSource>,
    ) -> Result<Outcome<Vec<TransitionRequest>>, PluginError> {
        let ctx = bindings::types::ActionContext {
            event_sequence: input.event_sequence,
            token: state::wit_token(&input.token),
            transition: state::wit_transition(&input.transition),
            from: input.from.to_string(),
            to: input.to.to_string(),
            consumed: input.consumed.iter().map(Id::to_string).collect(),
            produced: input.produced.iter().map(Id::to_string).collect(),
            cancelled: input.cancelled.iter().map(Id::to_string).collect(),
            actor: input.actor.clone(),
            input: input.input.to_string(),
            config: input.config.to_string(),
            fired_at: state::timestamp(input.fired_at),
        };
        let seed = format!("event|{}", input.event_sequence);
        let out = self
            .call(
                Job::Action(ctx),
                source,
                input.fired_at,
                seed,
                input.token.workflow_id.clone(),
            )
            .await?;
        let Returned::Action(requests) = out.value else {
            unreachable!("an action job returns requests")
        };
        Ok(Outcome {
            value: requests,
            logs: out.logs,
            fuel_used: out.fuel_used,
            memory_bytes: out.memory_bytes,
            duration: out.duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{Id, Token, Transition};
    use crate::plugin::RuntimeConfig;
    use crate::store::MemorySource;
    use std::sync::atomic::Ordering;

    fn guard_input(config: serde_json::Value) -> GuardInput {
        let id = |s: &str| Id::new(s).unwrap();
        let now = OffsetDateTime::now_utc();
        GuardInput {
            token: Token {
                id: id("t1"),
                workflow_id: id("wf"),
                definition_version: 1,
                place: id("a"),
                marking: vec![id("a")],
                data: serde_json::json!({}),
                metadata: Default::default(),
                created_at: now,
                updated_at: now,
                revision: 1,
                subject: "cb.workflows.wf.places.a.tokens.t1".into(),
            },
            transition: Transition::simple(id("go"), vec![id("a")], id("b")),
            config,
            input: serde_json::Value::Null,
            actor: None,
            fired_at: now,
        }
    }

    /// An idle ticker parks; the next call wakes it, so a guest that never
    /// returns is still stopped at its deadline. Were the ticker left
    /// parked, the loop would hold its worker; the outer timeout, driven by
    /// the other worker, then stops it by hand and fails the test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_ticker_wakes_for_the_next_call_and_its_deadline_holds() {
        let cache = tempfile::tempdir().unwrap();
        let rt = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            epoch_tick: Duration::from_millis(1),
            ..Default::default()
        })
        .unwrap();
        let looping = rt
            .load_file(Path::new(cb_test_plugins::MISBEHAVE))
            .unwrap()
            .with_limits(PluginLimits {
                deadline: Duration::from_millis(50),
                fuel: u64::MAX / 2,
                ..Default::default()
            });
        let ticker = rt.shared.ticker.clone();
        for round in 0..2 {
            let parked_by = Instant::now() + Duration::from_secs(10);
            while !ticker.parked.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < parked_by,
                    "round {round}: the idle ticker never parked"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let source: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
            let input = guard_input(serde_json::json!({ "do": "loop" }));
            let mut call = {
                let looping = looping.clone();
                tokio::spawn(async move { looping.evaluate(&input, source).await })
            };
            let e = match tokio::time::timeout(Duration::from_secs(10), &mut call).await {
                Ok(done) => done.unwrap().unwrap_err(),
                Err(_) => {
                    // Stop the guest by hand so the runtime can shut down.
                    for _ in 0..1000 {
                        rt.shared.engine.increment_epoch();
                    }
                    let _ = call.await;
                    panic!("round {round}: the deadline did not stop the loop: the ticker stayed parked");
                }
            };
            assert!(matches!(e, PluginError::Timeout { limit_ms: 50, .. }), "{e}");
            assert_eq!(ticker.active.load(Ordering::SeqCst), 0, "the call is over");
        }
    }
}
