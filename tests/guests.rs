//! Guards and actions written in Python (componentize-py) and JavaScript
//! (componentize-js, with its default `wasi:http` import), built by the
//! mainstream tools from `plugins/python` and `plugins/js`, loaded as they
//! come and behaving like the Rust ones: through the runtime directly, and
//! through real firings of a real host.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cb_host::engine::{DispatcherConfig, FireError, FireRequest};
use cb_host::model::{StoredDefinition, Token, Transition, WorkflowDefinition};
use cb_host::plugin::{Decision, GuardInput, PluginError, PluginRuntime, RuntimeConfig, World};
use cb_host::store::{MemorySource, TokenSource};
use cb_host::{Host, HostError, ServeConfig};
use cb_test_support::NatsServer;
use common::*;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// The host's default compile cache, shared with the `plugin test` runs of
/// `make test` (which points `XDG_CACHE_HOME` into `target/`): compiling
/// an 18 MB Python component takes seconds, and the cache is keyed by
/// digest and engine, so sharing it is safe (writes are atomic renames).
fn cache_dir() -> std::path::PathBuf {
    cb_host::plugin::default_cache_dir()
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("cb-compile-cache"))
}

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache_dir()),
        ..Default::default()
    })
    .unwrap()
}

fn token(id_: &str, data: Value) -> Token {
    let now = OffsetDateTime::now_utc();
    Token {
        id: id(id_),
        workflow_id: id("orders"),
        definition_version: 1,
        place: id("open"),
        marking: vec![id("open").clone()],
        data,
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
        revision: 7,
        subject: String::new(),
    }
}

fn input(data: Value, config: Value) -> GuardInput {
    GuardInput {
        token: token("t1", data),
        transition: Transition::simple(id("approve"), vec![id("open")], id("done")),
        config,
        input: Value::Null,
        actor: None,
        fired_at: OffsetDateTime::now_utc(),
    }
}

fn deny(d: Decision) -> (String, String, Value) {
    match d {
        Decision::Deny {
            code,
            message,
            details,
        } => (code, message, details),
        Decision::Allow => panic!("expected a denial"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_guards_decide_read_and_deny_with_details() {
    let rt = runtime();
    let py = rt.load_file(Path::new(cb_test_plugins::PY_AMOUNT_LIMIT)).unwrap();
    let js = rt
        .load_file(Path::new(cb_test_plugins::JS_REQUIRE_FIELDS))
        .unwrap();
    assert_eq!((py.world(), js.world()), (World::Guard, World::Guard));
    let empty: Arc<dyn TokenSource> = Arc::new(MemorySource::new());

    // Python: allow, deny with details.
    let ok = py
        .evaluate(&input(json!({"amount": 5}), json!({"max": 10})), empty.clone())
        .await
        .unwrap();
    assert_eq!(ok.value, Decision::Allow);
    let (code, _, details) = deny(
        py.evaluate(&input(json!({"amount": 50}), json!({"max": 10})), empty.clone())
            .await
            .unwrap()
            .value,
    );
    assert_eq!(code, "amount-over-limit");
    assert_eq!(details, json!({"max": 10, "amount": 50}));
    // Python reading other tokens through token-reader.
    let source = MemorySource::new();
    for (i, amount) in [400, 500].iter().enumerate() {
        source.insert_token(Token {
            place: id("approved"),
            revision: 100 + i as u64,
            ..token(&format!("o{i}"), json!({"amount": amount, "owner": "ana"}))
        });
    }
    let source: Arc<dyn TokenSource> = Arc::new(source);
    let (code, _, details) = deny(
        py.evaluate(
            &input(
                json!({"amount": 200, "owner": "ana"}),
                json!({"max": 1000, "budget_place": "approved"}),
            ),
            source.clone(),
        )
        .await
        .unwrap()
        .value,
    );
    assert_eq!(code, "over-budget");
    assert_eq!(details["spent"], 900);

    // JavaScript: allow, deny listing every missing field, a token-reader call.
    let ok = js
        .evaluate(
            &input(json!({"a": 1, "b": {"c": 2}}), json!({"fields": ["/a", "/b/c"]})),
            empty.clone(),
        )
        .await
        .unwrap();
    assert_eq!(ok.value, Decision::Allow);
    let (code, _, details) = deny(
        js.evaluate(
            &input(json!({"a": 1}), json!({"fields": ["/a", "/b/c", "/d"]})),
            empty.clone(),
        )
        .await
        .unwrap()
        .value,
    );
    assert_eq!(code, "missing-fields");
    assert_eq!(details["missing"], json!(["/b/c", "/d"]));
    let wf = MemorySource::new();
    wf.insert_definition(StoredDefinition {
        version: 1,
        stored_at: OffsetDateTime::UNIX_EPOCH,
        definition: WorkflowDefinition::parse(
            br#"{"id": "orders", "name": "Orders", "places": ["open", "done"], "initial_place": "open",
                 "transitions": [{"id": "approve", "from": ["open"], "to": "done"}]}"#,
        )
        .unwrap(),
    });
    let (code, _, details) = deny(
        js.evaluate(
            &input(json!({}), json!({"fields": ["/x"], "check_workflow": true})),
            Arc::new(wf),
        )
        .await
        .unwrap()
        .value,
    );
    assert_eq!(code, "missing-fields");
    assert_eq!(details["workflow_name"], "Orders", "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_busy_loop_and_a_javascript_memory_bomb_stop_at_their_limits() {
    let rt = runtime();
    let empty: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
    let spin = rt.load_file(Path::new(cb_test_plugins::PY_SPIN)).unwrap();
    let started = std::time::Instant::now();
    let e = spin
        .evaluate(&input(json!({}), json!({})), empty.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::Timeout { limit_ms: 200, .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let hog = rt.load_file(Path::new(cb_test_plugins::JS_HOG)).unwrap();
    let e = hog
        .evaluate(&input(json!({}), json!({})), empty)
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::MemoryLimit { .. }), "{e}");
}

const WF: &str = r#"{ "id": "guests", "places": ["draft", "checked", "approved", "paid"], "initial_place": "draft",
  "transitions": [
    { "id": "check", "from": ["draft"], "to": "checked",
      "guards": [ { "plugin": "js-require-fields", "config": { "fields": ["/amount", "/owner"] } } ],
      "actions": [ { "plugin": "js-auto-advance", "config": { "transition": "approve" } } ] },
    { "id": "approve", "from": ["checked"], "to": "approved",
      "guards": [ { "plugin": "py-amount-limit", "config": { "max": 100 } } ],
      "actions": [ { "plugin": "py-auto-advance", "config": { "transition": "pay" } } ] },
    { "id": "pay", "from": ["approved"], "to": "paid" } ] }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_firings_run_python_and_javascript_guards_and_actions() {
    let server = NatsServer::start();
    let plugins = tempfile::tempdir().unwrap();
    for (name, path) in cb_test_plugins::GUESTS {
        if [
            "py-amount-limit",
            "py-auto-advance",
            "js-require-fields",
            "js-auto-advance",
        ]
        .contains(name)
        {
            std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
        }
    }
    let host = Host::builder()
        .nats_url(server.url())
        .store(config())
        .runtime(RuntimeConfig {
            cache_dir: Some(cache_dir()),
            ..Default::default()
        })
        .plugin_dir(plugins.path())
        .build()
        .await
        .unwrap();
    host.apply_workflow(&WorkflowDefinition::parse(WF.as_bytes()).unwrap())
        .await
        .unwrap();
    let serving = cb_host::serve(
        &host,
        ServeConfig {
            dispatcher: DispatcherConfig {
                backoff: vec![Duration::from_millis(100)],
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let wf = id("guests");
    let fire = |t: &str, tr: &str| FireRequest::new(wf.clone(), id(t), id(tr));
    host.create_token(
        &wf,
        Some(id("g1")),
        json!({"amount": 50, "owner": "ana"}),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    host.create_token(
        &wf,
        Some(id("g2")),
        json!({"amount": 500}),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    // JavaScript guard: allows g1 (its JavaScript action then asks for
    // `approve`), denies g2 naming the missing field.
    host.fire(fire("g1", "check")).await.unwrap();
    match host.fire(fire("g2", "check")).await {
        Err(HostError::Fire(FireError::Denied { denials, .. })) => {
            assert_eq!(denials[0].plugin, "js-require-fields");
            assert_eq!(denials[0].details["missing"], json!(["/owner"]));
        }
        other => panic!("{other:?}"),
    }
    // The JavaScript action's follow-up passes the Python guard; the
    // Python action's follow-up pays.
    cb_test_support::wait_consumer_idle(host.client(), "CB_TEST", "cb-actions", Duration::from_secs(60))
        .await;
    let g1 = host.get_token(Some(&wf), &id("g1")).await.unwrap();
    assert_eq!(
        g1.place, "paid",
        "js-auto-advance fired `approve`, py-auto-advance `pay`"
    );
    let h = host.history(Some(&wf), &id("g1"), None, 100).await.unwrap();
    let by = |name: &str| {
        h.items
            .iter()
            .find_map(|e| match &e.kind {
                cb_host::model::EventKind::Transition {
                    transition,
                    actor,
                    input,
                    ..
                } if transition == name => Some((actor.clone(), input.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("a {name} event"))
    };
    let approve = by("approve");
    assert_eq!(approve.0.as_deref(), Some("action:js-auto-advance"));
    assert_eq!(approve.1["by"], "js-auto-advance");
    assert_eq!(approve.1["produced"], json!(["checked"]));
    let pay = by("pay");
    assert_eq!(pay.0.as_deref(), Some("action:py-auto-advance"));
    assert_eq!(pay.1["by"], "py-auto-advance");
    serving.shutdown().await;
}

/// A firing that needs a plugin still compiling waits for it up to
/// `EngineConfig::plugin_load_wait`, then fails as `unavailable` ("plugin
/// loading"): nothing is stored, and the same firing works once it loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_past_its_wait_for_a_loading_plugin_is_unavailable_and_stores_nothing() {
    let server = NatsServer::start();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(
        cb_test_plugins::PY_AMOUNT_LIMIT,
        plugins.path().join("py-amount-limit.wasm"),
    )
    .unwrap();
    // An empty cache: the Python component compiles for seconds.
    let cache = tempfile::tempdir().unwrap();
    let host = Host::builder()
        .nats_url(server.url())
        .store(config())
        .runtime(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        })
        .engine(cb_host::engine::EngineConfig {
            plugin_load_wait: Duration::from_millis(100),
            ..Default::default()
        })
        .plugin_dir(plugins.path())
        .load_plugins_in_background(true)
        .build()
        .await
        .unwrap();
    let def = r#"{ "id": "slow", "places": ["a", "b"], "initial_place": "a",
      "transitions": [ { "id": "go", "from": ["a"], "to": "b",
        "guards": [ { "plugin": "py-amount-limit", "config": { "max": 10 } } ] } ] }"#;
    host.apply_workflow(&WorkflowDefinition::parse(def.as_bytes()).unwrap())
        .await
        .expect("a plugin still loading is not a missing one");
    let wf = id("slow");
    let t = host
        .create_token(&wf, None, json!({"amount": 5}), Default::default(), None)
        .await
        .unwrap();
    let before = stream_state(host.client(), "CB_TEST").await;
    match host
        .fire(FireRequest::new(wf.clone(), t.id.clone(), id("go")))
        .await
    {
        Err(HostError::Fire(e @ FireError::Plugin(PluginError::Loading { .. }))) => {
            assert_eq!(e.kind(), "unavailable");
            let info = cb_host::api::ErrorInfo::from(&e);
            assert_eq!((info.code.as_str(), info.status()), ("unavailable", 503));
            assert!(e.to_string().contains("loading"), "{e}");
        }
        other => panic!("expected `unavailable` (plugin loading): {other:?}"),
    }
    assert_eq!(
        stream_state(host.client(), "CB_TEST").await,
        before,
        "nothing stored"
    );
    host.plugins_loaded().await.unwrap();
    let fired = host.fire(FireRequest::new(wf, t.id, id("go"))).await.unwrap();
    assert_eq!(fired.token.place, "b");
}
