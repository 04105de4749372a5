//! Prometheus metrics of everything a host does, in one process-wide
//! registry (as the `metrics` facade or a `prometheus::default_registry`
//! would be): the engine, plugin runtime, group committer, dispatcher and
//! API record into it, and [`render`] writes the text exposition that
//! `/metrics` serves.
//!
//! Names follow the Prometheus conventions (`cb_` prefix, base units in
//! the name: `_seconds`, counters `_total`). Labels are bounded: workflow,
//! transition and plugin names come from applied definitions and loaded
//! plugins, outcomes and error kinds from fixed sets; never a token id or
//! a caller's text.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Firing {
    pub(crate) workflow: String,
    pub(crate) transition: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginCall {
    pub(crate) plugin: String,
    /// `guard` or `action`.
    pub(crate) world: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginFailure {
    pub(crate) plugin: String,
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginName {
    pub(crate) plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ApiRequest {
    /// An endpoint of [`ENDPOINTS`](crate::api::ENDPOINTS).
    pub(crate) endpoint: String,
    /// `ok` or an error code.
    pub(crate) code: String,
    /// `nats` or `http`.
    pub(crate) transport: String,
}

type Hist<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 100 µs to ~3.3 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Compile times from 10 ms to ~80 s.
fn compile() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Every metric, registered once.
pub(crate) struct Metrics {
    pub(crate) firings: Family<Firing, Counter>,
    pub(crate) firing_seconds: Hist<Outcome>,
    pub(crate) plugin_call_seconds: Hist<PluginCall>,
    pub(crate) plugin_fuel: Family<PluginCall, Counter>,
    pub(crate) plugin_errors: Family<PluginFailure, Counter>,
    pub(crate) plugin_load_seconds: Hist<PluginName>,
    pub(crate) commit_batches: Counter,
    pub(crate) commit_writes: Counter,
    pub(crate) commit_batch_writes: Histogram,
    pub(crate) commit_server_wait_seconds: Histogram,
    pub(crate) action_deliveries: Counter,
    pub(crate) action_redeliveries: Counter,
    pub(crate) action_failures: Counter,
    pub(crate) action_pending: Gauge,
    pub(crate) api_requests: Family<ApiRequest, Counter>,
    pub(crate) api_in_flight: Gauge,
    pub(crate) api_busy: Counter,
    registry: Registry,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

static RECORDING: AtomicBool = AtomicBool::new(true);

/// The process's metrics.
pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// Turns recording on or off for the whole process (on by default).
///
/// An embedder that does not serve [`render`]'s output can save the label
/// lookups each firing, plugin call, commit and request costs (a few
/// hundred nanoseconds in all, next to milliseconds of storage); the
/// benchmark switches it to measure exactly that. Off, counters and
/// histograms stop moving and keep what they had; gauges (requests in
/// flight) stay true, so turning it back on does not leave them off by
/// the requests that straddled the switch.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Whether [`set_recording`] left recording on.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            firings: Family::default(),
            firing_seconds: Family::new_with_constructor(latency),
            plugin_call_seconds: Family::new_with_constructor(latency),
            plugin_fuel: Family::default(),
            plugin_errors: Family::default(),
            plugin_load_seconds: Family::new_with_constructor(compile),
            commit_batches: Counter::default(),
            commit_writes: Counter::default(),
            commit_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            commit_server_wait_seconds: latency(),
            action_deliveries: Counter::default(),
            action_redeliveries: Counter::default(),
            action_failures: Counter::default(),
            action_pending: Gauge::default(),
            api_requests: Family::default(),
            api_in_flight: Gauge::default(),
            api_busy: Counter::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::with_prefix("cb");
        r.register(
            "firings",
            "Firings by workflow, transition and outcome (fired, denied, not-enabled, conflict, ...)",
            m.firings.clone(),
        );
        r.register_with_unit(
            "firing_duration",
            "Time to answer a firing, guards and commit included, by outcome",
            Unit::Seconds,
            m.firing_seconds.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Time of one guard or action call, by plugin",
            Unit::Seconds,
            m.plugin_call_seconds.clone(),
        );
        r.register(
            "plugin_fuel",
            "Fuel (wasm instructions, roughly) consumed by plugin calls, by plugin",
            m.plugin_fuel.clone(),
        );
        r.register(
            "plugin_errors",
            "Plugin calls that failed, by plugin and kind (timeout, fuel, memory, trap, ...)",
            m.plugin_errors.clone(),
        );
        r.register_with_unit(
            "plugin_load_duration",
            "Time to load a plugin (compile, or read the compile cache), by plugin",
            Unit::Seconds,
            m.plugin_load_seconds.clone(),
        );
        r.register(
            "commit_batches",
            "Atomic batches the group committer sent",
            m.commit_batches.clone(),
        );
        r.register(
            "commit_writes",
            "Token and definition writes committed",
            m.commit_writes.clone(),
        );
        r.register(
            "commit_batch_writes",
            "Writes per committed batch",
            m.commit_batch_writes.clone(),
        );
        r.register_with_unit(
            "commit_server_wait",
            "Time a batch's commit waited on the server",
            Unit::Seconds,
            m.commit_server_wait_seconds.clone(),
        );
        r.register(
            "action_deliveries",
            "Action events delivered to the dispatcher (redeliveries included)",
            m.action_deliveries.clone(),
        );
        r.register(
            "action_redeliveries",
            "Action events delivered again (an earlier attempt failed or was not acked)",
            m.action_redeliveries.clone(),
        );
        r.register(
            "action_failures",
            "Action events that ran out of attempts (recorded as action_failed)",
            m.action_failures.clone(),
        );
        r.register(
            "action_pending",
            "Action events not yet delivered, as the last delivery saw it (dispatcher lag)",
            m.action_pending.clone(),
        );
        r.register(
            "api_requests",
            "API requests answered, by endpoint, code and transport",
            m.api_requests.clone(),
        );
        r.register(
            "api_requests_in_flight",
            "API requests in progress",
            m.api_in_flight.clone(),
        );
        r.register(
            "api_busy",
            "API requests refused at once as busy (admission limit)",
            m.api_busy.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

/// The process's metrics in the OpenMetrics text format ([`CONTENT_TYPE`]),
/// which Prometheus scrapes.
pub fn render() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics().registry)
        .expect("writing to a String cannot fail");
    out
}

/// Records one firing's outcome and time.
pub(crate) fn firing(workflow: &str, transition: &str, outcome: &str, took: Duration) {
    if !recording() {
        return;
    }
    let m = metrics();
    m.firings
        .get_or_create(&Firing {
            workflow: workflow.into(),
            transition: transition.into(),
            outcome: outcome.into(),
        })
        .inc();
    m.firing_seconds
        .get_or_create(&Outcome {
            outcome: outcome.into(),
        })
        .observe(took.as_secs_f64());
}

/// Records one plugin call.
pub(crate) fn plugin_call(plugin: &str, world: &str, took: Duration, fuel: u64, error: Option<&str>) {
    if !recording() {
        return;
    }
    let m = metrics();
    let labels = PluginCall {
        plugin: plugin.into(),
        world: world.into(),
    };
    m.plugin_call_seconds
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    m.plugin_fuel.get_or_create(&labels).inc_by(fuel);
    if let Some(kind) = error {
        m.plugin_errors
            .get_or_create(&PluginFailure {
                plugin: plugin.into(),
                kind: kind.into(),
            })
            .inc();
    }
}

/// Records one plugin load.
pub(crate) fn plugin_loaded(plugin: &str, took: Duration) {
    if !recording() {
        return;
    }
    metrics()
        .plugin_load_seconds
        .get_or_create(&PluginName {
            plugin: plugin.into(),
        })
        .observe(took.as_secs_f64());
}

/// Records one committed batch.
pub(crate) fn commit(writes: usize, server_wait: Duration) {
    if !recording() {
        return;
    }
    let m = metrics();
    m.commit_batches.inc();
    m.commit_writes.inc_by(writes as u64);
    m.commit_batch_writes.observe(writes as f64);
    m.commit_server_wait_seconds.observe(server_wait.as_secs_f64());
}

/// Records a request refused as `busy`.
pub(crate) fn api_busy(endpoint: &str, transport: &str) {
    if !recording() {
        return;
    }
    metrics().api_busy.inc();
    api_request(endpoint, "busy", transport);
}

/// Records an action event the dispatcher gave up on.
pub(crate) fn action_failure() {
    if recording() {
        metrics().action_failures.inc();
    }
}

/// Records one delivery of an action event, and the events still to
/// deliver after it.
pub(crate) fn action_delivery(delivered: u64, pending: u64) {
    if !recording() {
        return;
    }
    let m = metrics();
    m.action_deliveries.inc();
    if delivered > 1 {
        m.action_redeliveries.inc();
    }
    m.action_pending.set(pending as i64);
}

/// Records one API answer.
pub(crate) fn api_request(endpoint: &str, code: &str, transport: &str) {
    if !recording() {
        return;
    }
    metrics()
        .api_requests
        .get_or_create(&ApiRequest {
            endpoint: endpoint.into(),
            code: code.into(),
            transport: transport.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_units_and_totals() {
        firing("wf-unit", "go", "fired", Duration::from_millis(3));
        plugin_call(
            "p-unit",
            "guard",
            Duration::from_micros(20),
            1234,
            Some("timeout"),
        );
        let text = render();
        for line in [
            "cb_firings_total{workflow=\"wf-unit\",transition=\"go\",outcome=\"fired\"} 1",
            "cb_plugin_fuel_total{plugin=\"p-unit\",world=\"guard\"} 1234",
            "cb_plugin_errors_total{plugin=\"p-unit\",kind=\"timeout\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        assert!(
            text.contains("# UNIT cb_firing_duration_seconds seconds"),
            "{text}"
        );
        assert!(text.contains("cb_firing_duration_seconds_bucket{"), "{text}");

        // Off, nothing moves and what was recorded stays; on again, it
        // counts from there. (In this test: the switch is process-wide.)
        set_recording(false);
        firing("wf-unit", "go", "fired", Duration::from_millis(3));
        api_busy("token.fire", "http");
        assert!(!recording());
        let off = render();
        assert!(
            off.contains("cb_firings_total{workflow=\"wf-unit\",transition=\"go\",outcome=\"fired\"} 1"),
            "{off}"
        );
        assert!(!off.contains("code=\"busy\""), "{off}");
        set_recording(true);
        firing("wf-unit", "go", "fired", Duration::from_millis(3));
        let on = render();
        assert!(
            on.contains("cb_firings_total{workflow=\"wf-unit\",transition=\"go\",outcome=\"fired\"} 2"),
            "{on}"
        );
    }
}
