//! OpenTelemetry traces: a caller's W3C `traceparent` (an HTTP header or a
//! NATS request header) becomes the parent of the request's span, and the
//! chain request -> firing -> guard -> commit -> action stays under that
//! trace id, including when the action runs on another host. Spans are
//! captured with the SDK's in-memory exporter behind the same
//! `tracing-opentelemetry` layer the binary installs.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cb_host::api::HttpConfig;
use cb_host::model::WorkflowDefinition;
use cb_host::plugin::RuntimeConfig;
use cb_host::{Host, ServeConfig};
use cb_test_support::NatsServer;
use common::*;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{
    IdGenerator, InMemorySpanExporter, RandomIdGenerator, SdkTracerProvider, SpanData,
};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt;

/// `go` is guarded and its action asks for `on`: one request gives a
/// guard call, two commits and an action that fires again.
const FLOW: &str = r#"{ "id": "traced", "places": ["a", "b", "c"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b",
      "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ],
      "actions": [ { "plugin": "auto-advance", "config": { "transition": "on" } } ] },
    { "id": "on", "from": ["b"], "to": "c" } ] }"#;

/// The process-wide exporter (a test binary has one global subscriber).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = cb_host::otel_layer(provider.tracer("cb-host-test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber");
        exporter
    })
}

fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

/// Waits (bounded) until the trace has a span named `name` whose parent is
/// `parent`, and returns it.
async fn wait_span(trace: TraceId, name: &str, parent: SpanId) -> SpanData {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = spans_of(trace);
        if let Some(s) = spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == parent)
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no span `{name}` under {parent} in trace {trace}; have: {:?}",
            spans
                .iter()
                .map(|s| (s.name.to_string(), s.span_context.span_id(), s.parent_span_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

struct Hosts {
    _server: NatsServer,
    /// Serves HTTP only: it fires, but runs no actions.
    front: Host,
    /// Serves the NATS API and runs the actions.
    back: Host,
    raw: async_nats::Client,
    _dirs: Vec<tempfile::TempDir>,
}

async fn host(url: &str, plugins: &std::path::Path, cache: &std::path::Path) -> Host {
    Host::builder()
        .nats_url(url)
        .store(config())
        .runtime(RuntimeConfig {
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        })
        .plugin_dir(plugins)
        .build()
        .await
        .unwrap()
}

async fn hosts() -> Hosts {
    exporter();
    let server = NatsServer::start();
    let url = server.url();
    let plugins = tempfile::tempdir().unwrap();
    for (name, path) in cb_test_plugins::ALL {
        if ["auto-advance", "amount-limit"].contains(name) {
            std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let front = host(&url, plugins.path(), cache.path()).await;
    let back = host(&url, plugins.path(), cache.path()).await;
    front
        .apply_workflow(&WorkflowDefinition::parse(FLOW.as_bytes()).unwrap())
        .await
        .unwrap();
    let raw = connect(&url).await;
    Hosts {
        _server: server,
        front,
        back,
        raw,
        _dirs: vec![plugins, cache],
    }
}

/// A fresh remote parent: a trace id and span id no one else uses.
fn remote_parent() -> (TraceId, SpanId, String) {
    let ids = RandomIdGenerator::default();
    let (trace, span) = (ids.new_trace_id(), ids.new_span_id());
    (trace, span, format!("00-{trace}-{span}-01"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_traces_through_firing_guard_commit_and_an_action_on_another_host() {
    let h = hosts().await;
    let http = cb_host::api::serve_http(
        &h.front,
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let serving = cb_host::serve(&h.back, ServeConfig::default()).await.unwrap();
    let base = format!("http://{}", http.local_addr());
    let client = reqwest::Client::new();
    let token: Value = client
        .post(format!("{base}/v1/workflows/traced/tokens"))
        .json(&json!({ "data": { "amount": 40 } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = token["id"].as_str().unwrap();

    let (trace, parent, traceparent) = remote_parent();
    let r = client
        .post(format!("{base}/v1/tokens/{id}/transitions/go"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let http_span = wait_span(trace, "POST /v1/tokens/{id}/transitions/{transition}", parent).await;
    assert_eq!(
        attr(&http_span, "http.response.status_code").as_deref(),
        Some("200")
    );
    let request = wait_span(trace, "token.fire", http_span.span_context.span_id()).await;
    assert_eq!(attr(&request, "transport").as_deref(), Some("http"));
    assert_eq!(attr(&request, "code").as_deref(), Some("ok"));
    let fire = wait_span(trace, "fire go", request.span_context.span_id()).await;
    assert_eq!(attr(&fire, "outcome").as_deref(), Some("fired"));
    assert_eq!(attr(&fire, "token").as_deref(), Some(id));
    let guard = wait_span(trace, "guard amount-limit", fire.span_context.span_id()).await;
    assert_eq!(attr(&guard, "outcome").as_deref(), Some("ok"));
    assert!(attr(&guard, "fuel").unwrap().parse::<i64>().unwrap() > 0);
    assert!(attr(&guard, "digest").unwrap().starts_with("sha256:"));
    wait_span(trace, "commit", fire.span_context.span_id()).await;
    // The front host runs no dispatcher: the action ran on the back host,
    // which learned the trace from the stored event's header.
    let action = wait_span(trace, "action", fire.span_context.span_id()).await;
    assert_eq!(attr(&action, "outcome").as_deref(), Some("done"));
    assert_eq!(attr(&action, "delivered").as_deref(), Some("1"));
    wait_span(trace, "action auto-advance", action.span_context.span_id()).await;
    let follow_up = wait_span(trace, "fire on", action.span_context.span_id()).await;
    assert_eq!(attr(&follow_up, "outcome").as_deref(), Some("fired"));
    wait_span(trace, "commit", follow_up.span_context.span_id()).await;

    http.stop().await;
    serving.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_request_header_joins_the_trace_and_a_bad_one_starts_a_new_one() {
    let h = hosts().await;
    let serving = cb_host::serve(&h.back, ServeConfig::default()).await.unwrap();
    let create = |id: &str| {
        serde_json::to_vec(&json!({ "workflow": "traced", "id": id, "data": { "amount": 500 } })).unwrap()
    };
    let ask = |endpoint: &str, body: Vec<u8>, traceparent: &str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", traceparent);
        h.raw
            .request_with_headers(format!("cb.api.{endpoint}"), headers, body.into())
    };

    // A denied firing: the guard's verdict and the outcome are on the spans.
    let (trace, parent, traceparent) = remote_parent();
    let r = ask("token.create", create("t-nats"), &traceparent).await.unwrap();
    assert!(r.headers.is_none(), "{:?}", String::from_utf8_lossy(&r.payload));
    let created = wait_span(trace, "token.create", parent).await;
    assert_eq!(attr(&created, "transport").as_deref(), Some("nats"));
    wait_span(trace, "commit", created.span_context.span_id()).await;

    let fire =
        serde_json::to_vec(&json!({ "workflow": "traced", "id": "t-nats", "transition": "go" })).unwrap();
    let (trace, parent, traceparent) = remote_parent();
    let r = ask("token.fire", fire.clone(), &traceparent).await.unwrap();
    assert!(r.headers.is_some(), "the guard denies 500 > 100");
    let request = wait_span(trace, "token.fire", parent).await;
    assert_eq!(attr(&request, "code").as_deref(), Some("denied"));
    let firing = wait_span(trace, "fire go", request.span_context.span_id()).await;
    assert_eq!(attr(&firing, "outcome").as_deref(), Some("denied"));
    wait_span(trace, "guard amount-limit", firing.span_context.span_id()).await;
    assert!(
        spans_of(trace).iter().all(|s| s.name != "commit"),
        "a denied firing commits nothing"
    );

    // A malformed header is ignored: the request is answered and traced
    // as a root of its own.
    let before = exporter().get_finished_spans().unwrap().len();
    let r = ask("token.fire", fire, "00-not-a-trace-context").await.unwrap();
    assert!(r.headers.is_some());
    let spans = exporter().get_finished_spans().unwrap();
    let fresh = spans[before.min(spans.len())..]
        .iter()
        .find(|s| s.name == "token.fire" && attr(s, "transport").as_deref() == Some("nats"))
        .expect("the request was traced");
    assert_eq!(fresh.parent_span_id, SpanId::INVALID);
    serving.shutdown().await;
}
