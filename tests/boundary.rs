//! The boundary between the sandbox and the host: whatever a plugin does,
//! the host keeps answering, stays small, logs within budget, keeps its
//! NATS connections, and lets a plugin reach only its own workflow.
//!
//! Each test runs a real host (in-process, with its service API) against a
//! real nats-server, with hostile guards and actions from
//! `plugins/hostile/`, and a separate client calling the service API as an
//! outside caller would.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cb_host::api::{ApiClient, ApiError, TokenFire, TokenRef};
use cb_host::engine::{DispatcherConfig, FireError, FireRequest};
use cb_host::model::{EventKind, Token, WorkflowDefinition};
use cb_host::plugin::{LOG_LINE_COST, RuntimeConfig};
use cb_host::{Host, HostError, Serving};
use cb_test_support::NatsServer;
use common::*;
use serde_json::{Value, json};

/// Every host log line of the whole test binary, as the binary's
/// subscriber formats it: what an operator's log file would get.
fn host_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct W;
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                host_log().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // As the binary logs: events only, not the spans around them
        // (spans go to the trace exporter).
        use tracing_subscriber::Layer;
        use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| W)
                    .with_filter(EnvFilter::new("info").and(filter_fn(|m| m.is_event()))),
            )
            .try_init();
        Mutex::new(Vec::new())
    })
}

/// The log lines so far that contain `needle`.
fn log_lines_with(needle: &str) -> Vec<String> {
    let log = host_log().lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

const DEFINITIONS: &[&str] = &[
    r#"{ "id": "spin", "places": ["a", "b"], "initial_place": "a", "transitions": [
        { "id": "go", "from": ["a"], "to": "b",
          "guards": [{ "plugin": "misbehave", "config": { "do": "loop" } }] } ] }"#,
    r#"{ "id": "plain", "places": ["a", "b"], "initial_place": "a", "transitions": [
        { "id": "go", "from": ["a"], "to": "b" }, { "id": "back", "from": ["b"], "to": "a" } ] }"#,
    r#"{ "id": "loud", "places": ["a", "b"], "initial_place": "a", "transitions": [
        { "id": "details", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "huge-details" }, "limits": { "deadline": 3000 } }] },
        { "id": "message", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "huge-message", "bytes": 400000 }, "limits": { "deadline": 3000 } }] },
        { "id": "code", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "huge-code", "bytes": 1000 } }] },
        { "id": "badcode", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "bad-code" } }] },
        { "id": "deep", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "deep-details" } }] },
        { "id": "empty", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "empty-lines" } }] },
        { "id": "println", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "println-flood" } }] },
        { "id": "once", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave", "config": { "do": "log-deny", "marker": "evaluated-once-marker" } }] } ] }"#,
    r#"{ "id": "act", "places": ["a", "b", "c"], "initial_place": "a", "transitions": [
        { "id": "err", "from": ["a"], "to": "b", "actions": [{ "plugin": "misbehave-action", "config": { "do": "huge-error" } }] },
        { "id": "input", "from": ["a"], "to": "b", "actions": [{ "plugin": "misbehave-action", "config": { "do": "huge-input", "transition": "next" } }] },
        { "id": "fireother", "from": ["a"], "to": "b", "actions": [{ "plugin": "misbehave-action",
            "config": { "do": "fire-other", "workflow": "plain", "token": "p1", "transition": "go" } }] },
        { "id": "fireother-granted", "from": ["a"], "to": "b", "actions": [{ "plugin": "misbehave-action",
            "config": { "do": "fire-other", "workflow": "plain", "token": "p2", "transition": "go" },
            "grants": { "fire": ["plain"] } }] },
        { "id": "next", "from": ["b"], "to": "c" } ] }"#,
    r#"{ "id": "reader", "places": ["a", "b"], "initial_place": "a", "transitions": [
        { "id": "other", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave",
            "config": { "do": "read-other", "workflow": "plain", "token": "p1" } }] },
        { "id": "other-granted", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave",
            "config": { "do": "read-other", "workflow": "plain", "token": "p1" }, "grants": { "read": ["plain"] } }] },
        { "id": "list", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave",
            "config": { "do": "list-other", "workflow": "plain", "place": "a" } }] },
        { "id": "list-granted", "from": ["a"], "to": "b", "guards": [{ "plugin": "misbehave",
            "config": { "do": "list-other", "workflow": "plain", "place": "a" }, "grants": { "read": ["plain"] } }] } ] }"#,
    r#"{ "id": "bulk", "places": ["big"], "initial_place": "big", "transitions": [
        { "id": "scan", "from": ["big"], "to": "big", "guards": [{ "plugin": "misbehave", "config": { "do": "read-huge" }, "limits": { "deadline": 10000 } }] } ] }"#,
];

/// A host with the hostile plugins, its service API, and a client of
/// that API on a connection of its own.
struct Target {
    server: NatsServer,
    host: Host,
    serving: Option<Serving>,
    api: ApiClient,
    disconnects: Arc<AtomicUsize>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// A connection that counts its disconnections.
async fn counted(url: &str, name: &str, count: Arc<AtomicUsize>) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(move |e| {
            let count = count.clone();
            async move {
                if matches!(
                    e,
                    async_nats::Event::Disconnected | async_nats::Event::SlowConsumer(_)
                ) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .connect(url)
        .await
        .unwrap()
}

impl Target {
    async fn start(dispatcher: DispatcherConfig) -> Target {
        host_log();
        let server = NatsServer::start();
        let url = server.url();
        let plugins = tempfile::tempdir().unwrap();
        for (name, path) in cb_test_plugins::ALL {
            if ["misbehave", "misbehave-action"].contains(name) {
                std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
            }
        }
        let cache = tempfile::tempdir().unwrap();
        let disconnects = Arc::new(AtomicUsize::new(0));
        let host = Host::builder()
            .client(counted(&url, "host", disconnects.clone()).await)
            .plugin_client(counted(&url, "host-plugin-reads", disconnects.clone()).await)
            .store(config())
            .runtime(RuntimeConfig {
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            })
            .plugin_dir(plugins.path())
            .build()
            .await
            .unwrap();
        for d in DEFINITIONS {
            host.apply_workflow(&WorkflowDefinition::parse(d.as_bytes()).unwrap())
                .await
                .unwrap();
        }
        let serving = cb_host::serve(
            &host,
            cb_host::ServeConfig {
                dispatcher,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let api = ApiClient::new(connect(&url).await, "cb", Duration::from_secs(5));
        Target {
            server,
            host,
            serving: Some(serving),
            api,
            disconnects,
            _dirs: (plugins, cache),
        }
    }

    async fn create(&self, wf: &str, token: &str, data: Value) -> Token {
        self.host
            .create_token(&id(wf), Some(id(token)), data, Default::default(), None)
            .await
            .unwrap()
    }

    async fn fire(&self, wf: &str, token: &str, transition: &str) -> Result<Value, ApiError> {
        self.api
            .call(
                "token.fire",
                &TokenFire {
                    workflow: Some(id(wf)),
                    id: id(token),
                    transition: id(transition),
                    input: Value::Null,
                    actor: None,
                    expected_revision: None,
                    idempotency_key: None,
                },
            )
            .await
    }

    async fn get(&self, wf: &str, token: &str) -> Result<Token, ApiError> {
        self.api
            .call(
                "token.get",
                &TokenRef {
                    workflow: Some(id(wf)),
                    id: id(token),
                    actor: None,
                    idempotency_key: None,
                    expected_revision: None,
                },
            )
            .await
    }

    async fn stream(&self) -> StreamState {
        stream_state(self.host.client(), "CB_TEST").await
    }

    /// What every hostile case must leave: the host answers a read and
    /// its peak RSS stays under a generous ceiling.
    async fn still_well(&self, wf: &str, token: &str) {
        self.get(wf, token).await.unwrap();
        let peak = peak_rss_bytes();
        assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
    }

    async fn stop(mut self) {
        if let Some(s) = self.serving.take() {
            s.shutdown().await;
        }
        assert_eq!(
            self.disconnects.load(Ordering::SeqCst),
            0,
            "a host connection was dropped; server log:\n{}",
            self.server.log()
        );
    }
}

/// The service's error code and message for a refused request.
fn refusal(r: Result<Value, ApiError>) -> (String, String) {
    match r {
        Err(ApiError::Service(info)) => (info.code, info.message),
        other => panic!("expected a typed refusal, got {other:?}"),
    }
}

/// Peak resident memory of this process (the host runs in it), from /proc.
fn peak_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_spinning_on_every_slot_do_not_hold_up_reads_and_firings() {
    let t = Target::start(DispatcherConfig::default()).await;
    let slots = RuntimeConfig::default().max_concurrent_calls;
    for i in 0..slots {
        t.create("spin", &format!("s{i}"), json!({})).await;
    }
    t.create("plain", "p1", json!({})).await;
    let idle: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            let s = Instant::now();
            t.get("plain", "p1").await.unwrap();
            v.push(s.elapsed());
        }
        v
    };
    let before = t.stream().await;

    // Every plugin slot taken by a guest spinning to its 200 ms deadline,
    // over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let timeouts = Arc::new(AtomicUsize::new(0));
    let spinners: Vec<_> = (0..slots)
        .map(|i| {
            let (host, stop, timeouts) = (t.host.clone(), stop.clone(), timeouts.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let req = FireRequest::new(id("spin"), id(&format!("s{i}")), id("go"));
                    match host.fire(req).await {
                        Err(HostError::Fire(FireError::Plugin(e))) if e.kind() == "timeout" => {
                            timeouts.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("a spinning guard: {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Measure once the first round of guests has run to its deadline:
    // from then on every slot is taken again and again.
    while timeouts.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut busy = Vec::new();
    let mut fired = 0;
    for round in 0..40 {
        let s = Instant::now();
        t.get("plain", "p1").await.unwrap();
        busy.push(s.elapsed());
        if round % 2 == 0 {
            let tr = if fired % 2 == 0 { "go" } else { "back" };
            t.fire("plain", "p1", tr).await.unwrap();
            fired += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for s in spinners {
        s.await.unwrap();
    }
    assert!(
        timeouts.load(Ordering::SeqCst) >= slots,
        "every slot spun to its deadline"
    );
    let after = t.stream().await;
    assert_eq!(
        after.last_sequence - before.last_sequence,
        fired * 3,
        "only the plain firings wrote (tombstone, state and event each); the spinning guards stored nothing"
    );
    eprintln!(
        "token get over the API: idle p50 {:?} p99 {:?}; with {slots} guests spinning p50 {:?} p99 {:?} ({} timeouts)",
        percentile(idle.clone(), 0.5),
        percentile(idle, 0.99),
        percentile(busy.clone(), 0.5),
        percentile(busy, 0.99),
        timeouts.load(Ordering::SeqCst)
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_plugin_output_fails_closed_with_a_typed_answer_and_the_host_stays_small() {
    let t = Target::start(DispatcherConfig::default()).await;
    for i in 0..8 {
        t.create("loud", &format!("l{i}"), json!({})).await;
    }
    let before = t.stream().await;
    // Two 40 MB denial details at once: each was ~1 GB of host memory once
    // parsed.
    let (a, b) = tokio::join!(t.fire("loud", "l0", "details"), t.fire("loud", "l1", "details"));
    for r in [a, b] {
        let (code, message) = refusal(r);
        assert_eq!(code, "plugin-error", "{message}");
        assert!(
            message.contains("denial details of 400000") && message.contains("over its limit of 16384"),
            "{message}"
        );
    }
    for (transition, says) in [
        (
            "message",
            "denial message of 400000 bytes, over its limit of 4096",
        ),
        ("code", "denial code of 1000 bytes, over its limit of 128"),
        ("badcode", "invalid denial code"),
        (
            "deep",
            "invalid denial details: nested 100 deep, more than the limit of 32",
        ),
    ] {
        let (code, message) = refusal(t.fire("loud", "l2", transition).await);
        assert_eq!(code, "plugin-error", "{transition}: {message}");
        assert!(message.contains(says), "{transition}: {message}");
        assert!(message.len() < 512, "{transition}: a bounded message");
    }
    assert_eq!(t.stream().await, before, "failed firings stored nothing");
    // The firing log lines stayed bounded too.
    for line in log_lines_with("outcome=\"plugin-error\"") {
        assert!(line.len() < 2048, "a firing log line of {} bytes", line.len());
    }
    let peak = peak_rss_bytes();
    eprintln!("peak RSS of the host process: {} MiB", peak >> 20);
    assert!(peak < 512 << 20, "peak RSS {} MiB", peak >> 20);
    t.get("loud", "l3").await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_floods_stay_within_the_call_budget_and_stdout_keeps_accepting() {
    let t = Target::start(DispatcherConfig::default()).await;
    t.create("loud", "f1", json!({})).await;
    t.create("loud", "f2", json!({})).await;
    let budget = RuntimeConfig::default().default_limits.log_bytes;
    for (token, transition) in [("f1", "empty"), ("f2", "println")] {
        let before = host_log().lock().unwrap().len();
        let r = t.fire("loud", token, transition).await;
        // A million lines take longer than the deadline: a timeout, or the
        // guard allowed; never a guest panic from a closed stdout.
        match &r {
            Ok(_) => {}
            Err(ApiError::Service(info)) => {
                assert_eq!(info.code, "plugin-error", "{}", info.message);
                assert!(
                    info.message.contains("timed out"),
                    "{transition}: {}",
                    info.message
                );
            }
            Err(e) => panic!("{transition}: {e}"),
        }
        let log = host_log().lock().unwrap()[before..].to_vec();
        let plugin_bytes: usize = String::from_utf8_lossy(&log)
            .lines()
            .filter(|l| l.contains("cb::plugin"))
            .map(|l| l.len() + 1)
            .sum();
        assert!(
            plugin_bytes <= budget + LOG_LINE_COST,
            "{transition}: {plugin_bytes} bytes of plugin log for one call, budget {budget}"
        );
        assert!(
            plugin_bytes > 0,
            "{transition}: the lines within budget are logged"
        );
    }
    t.still_well("loud", "f1").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_action_output_is_a_recorded_failure_and_fires_nothing() {
    let t = Target::start(DispatcherConfig {
        backoff: vec![Duration::from_millis(50)],
        max_deliver: 2,
        ..Default::default()
    })
    .await;
    t.create("act", "e1", json!({})).await;
    t.create("act", "i1", json!({})).await;
    t.fire("act", "e1", "err").await.unwrap();
    t.fire("act", "i1", "input").await.unwrap();
    cb_test_support::wait_consumer_idle(t.host.client(), "CB_TEST", "cb-actions", Duration::from_secs(30))
        .await;
    for (token, says) in [
        ("e1", "action error of 1000000 bytes, over its limit of 4096"),
        ("i1", "follow-up input of 1000011 bytes, over its limit of 16384"),
    ] {
        let h = t
            .host
            .history(Some(&id("act")), &id(token), None, 100)
            .await
            .unwrap();
        let failed: Vec<String> = h
            .items
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ActionFailed { error, .. } => Some(error.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 1, "{token}: one recorded failure: {h:?}");
        assert!(failed[0].contains(says), "{token}: {}", failed[0]);
        assert!(failed[0].len() < 512, "{token}: bounded");
    }
    assert_eq!(
        t.get("act", "i1").await.unwrap().place,
        "b",
        "the oversized follow-up did not fire"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_reach_only_their_own_workflow_unless_a_definition_grants_more() {
    let t = Target::start(DispatcherConfig::default()).await;
    t.create("plain", "p1", json!({})).await;
    t.create("plain", "p2", json!({})).await;
    for i in 0..4 {
        t.create("reader", &format!("r{i}"), json!({})).await;
    }
    let before = t.stream().await;
    for (token, transition, code, says) in [
        ("r0", "other", "read-refused", "not found"),
        ("r1", "other-granted", "read-allowed", "a"),
        ("r2", "list", "read-refused", "not found"),
        ("r3", "list-granted", "read-allowed", "2 tokens"),
    ] {
        let (c, message) = refusal(t.fire("reader", token, transition).await);
        assert_eq!(c, "denied", "{transition}: {message}");
        match t
            .host
            .fire(FireRequest::new(id("reader"), id(token), id(transition)))
            .await
        {
            Err(HostError::Fire(FireError::Denied { denials, .. })) => {
                assert_eq!(denials[0].code, code, "{transition}");
                assert!(
                    denials[0].message.contains(says),
                    "{transition}: {}",
                    denials[0].message
                );
            }
            other => panic!("{transition}: {other:?}"),
        }
    }
    assert_eq!(t.stream().await, before, "refused reads stored nothing");
    t.create("act", "o1", json!({})).await;
    t.create("act", "o2", json!({})).await;
    t.fire("act", "o1", "fireother").await.unwrap();
    t.fire("act", "o2", "fireother-granted").await.unwrap();
    cb_test_support::wait_consumer_idle(t.host.client(), "CB_TEST", "cb-actions", Duration::from_secs(30))
        .await;
    assert_eq!(
        t.get("plain", "p1").await.unwrap().place,
        "a",
        "no grant: not fired"
    );
    assert_eq!(t.get("plain", "p2").await.unwrap().place, "b", "granted: fired");
    let refused = log_lines_with("outside this action's scope");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("p1") && l.contains("misbehave-action")),
        "the refusal is in the action's log: {refused:?}"
    );
    t.still_well("plain", "p1").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_an_unchanged_token_is_evaluated_once() {
    let t = Target::start(DispatcherConfig::default()).await;
    // Created through the engine: the token is in its cache, so the firing
    // reads nothing first and checks its refusal against a fresh read.
    t.create("loud", "once", json!({})).await;
    let before = log_lines_with("evaluated-once-marker").len();
    let (code, _) = refusal(t.fire("loud", "once", "once").await);
    assert_eq!(code, "denied");
    assert_eq!(
        log_lines_with("evaluated-once-marker").len() - before,
        1,
        "the guard ran once"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_large_tokens_in_parallel_firings_keeps_the_host_connections_up() {
    let t = Target::start(DispatcherConfig::default()).await;
    // 60 tokens of 600 KB: 36 MB in the place the guard lists again and
    // again, from 8 firings at once.
    let blob = "x".repeat(600_000);
    let creates: Vec<_> = (0..60)
        .map(|i| {
            let (host, blob) = (t.host.clone(), blob.clone());
            tokio::spawn(async move {
                host.create_token(
                    &id("bulk"),
                    Some(id(&format!("big{i}"))),
                    json!({ "blob": blob }),
                    Default::default(),
                    None,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for c in creates {
        c.await.unwrap();
    }
    let before = t.stream().await;
    let firings: Vec<_> = (0..8)
        .map(|i| {
            let api = t.api.clone();
            tokio::spawn(async move {
                api.call::<_, Value>(
                    "token.fire",
                    &TokenFire {
                        workflow: Some(id("bulk")),
                        id: id(&format!("big{i}")),
                        transition: id("scan"),
                        input: Value::Null,
                        actor: None,
                        expected_revision: None,
                        idempotency_key: None,
                    },
                )
                .await
            })
        })
        .collect();
    for f in firings {
        let (code, message) = refusal(f.await.unwrap());
        // The guard is stopped by its host-data budget, not by the host.
        assert_eq!(code, "denied", "{message}");
        assert!(message.contains("read-refused"), "{message}");
    }
    // The host answers, on the same connections, and stored nothing.
    assert_eq!(t.get("bulk", "big0").await.unwrap().place, "big");
    assert_eq!(t.stream().await, before, "denied firings stored nothing");
    t.still_well("bulk", "big1").await;
    t.stop().await;
}
