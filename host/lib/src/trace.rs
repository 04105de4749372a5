//! W3C trace context at the host's edges.
//!
//! The host's spans are plain `tracing` spans (`api.request`, `fire`,
//! `plugin`, `commit`, `action`); whoever installs the subscriber decides
//! whether they go anywhere (the `cb-host` binary exports them over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set). What needs OpenTelemetry
//! itself is the context that crosses a process boundary: a caller's
//! `traceparent` (an HTTP or NATS request header) becomes the parent of
//! the request's span, and the firing's context is stored as a
//! `traceparent` header on its transition event, so the action run for that
//! event, on whichever host and however much later, joins the same trace.
//!
//! With the `otel` feature off, or no OpenTelemetry layer in the
//! subscriber, both directions are no-ops: nothing is read and nothing is
//! stored.

/// The header that carries the context, on HTTP requests, NATS requests and
/// transition events alike.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` accepted (version 00 is 55 bytes; later
/// versions may append fields). Anything longer is ignored, not parsed.
const MAX_TRACEPARENT: usize = 256;

#[cfg(feature = "otel")]
mod imp {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{MAX_TRACEPARENT, TRACEPARENT};

    /// The current span's context as a `traceparent` value, if it is part
    /// of a sampled or unsampled OpenTelemetry trace.
    pub(crate) fn current_traceparent() -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    /// Makes the trace `traceparent` names the parent of `span` (which must
    /// not have been entered yet). A missing, oversized or malformed value
    /// leaves `span` a root: a caller's bad header never fails a request.
    pub(crate) fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
        let Some(value) = traceparent.filter(|v| v.len() <= MAX_TRACEPARENT) else {
            return;
        };
        let carrier = HashMap::from([(TRACEPARENT.to_string(), value.trim().to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }

    /// The OpenTelemetry layer for the host's spans, configured as the
    /// `cb-host` binary installs it: every `cb_host` span at info and
    /// above, and warnings and errors as events on the span they happened
    /// in. Info-level log lines are left out of the trace (each firing's
    /// log line says what its `fire` span's attributes already say), and so
    /// are the layer's per-poll extras: activating the OpenTelemetry
    /// context on every poll of an instrumented future (the host reads a
    /// span's context from the span itself, never from the ambient one),
    /// `busy_ns`/`idle_ns` timings (two clock reads per poll) and thread
    /// attributes (meaningless on a work-stealing runtime): the first two
    /// run on every poll, not once per span. `make bench` measures what
    /// tracing still costs per firing.
    pub fn otel_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
        let host = Targets::new().with_target("cb_host", tracing::Level::INFO);
        let spans_and_warnings = filter_fn(|m| m.is_span() || *m.level() <= tracing::Level::WARN);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(host.and(spans_and_warnings))
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    pub(crate) fn current_traceparent() -> Option<String> {
        None
    }

    pub(crate) fn set_remote_parent(_span: &tracing::Span, _traceparent: Option<&str>) {
        let _ = super::MAX_TRACEPARENT;
    }
}

#[cfg(feature = "otel")]
pub use imp::otel_layer;
pub(crate) use imp::{current_traceparent, set_remote_parent};
