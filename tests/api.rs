//! The service API's boundary, tried as an outside client would: every
//! request gets a typed answer that fits `max_payload`, bodies are parsed
//! strictly, pages are cut by bytes, and every write can be retried safely
//! with an idempotency key, even when the outcome of the first attempt was
//! lost.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use cb_host::api::{ApiClient, ApiConfig, ApiError, ENDPOINTS, TokenFire};
use cb_host::engine::{Dispatcher, DispatcherConfig, FireError, FireRequest};
use cb_host::model::{EventKind, Token, WorkflowDefinition};
use cb_host::plugin::RuntimeConfig;
use cb_host::store::{CommitFault, StoreConfig, StoreError};
use cb_host::{ApplyOptions, Host, HostError, ServeConfig, Serving};
use cb_test_support::NatsServer;
use common::*;
use serde_json::{Value, json};

const FLOW: &str = r#"{ "id": "flow", "places": ["a", "b", "c"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b" },
    { "id": "on", "from": ["b"], "to": "c" },
    { "id": "again", "from": ["b", "c"], "to": "b" },
    { "id": "slow", "from": ["a"], "to": "b",
      "guards": [ { "plugin": "misbehave", "config": { "do": "loop" }, "limits": { "deadline": 300 } } ] } ] }"#;

/// `go` moves a -> b and its action asks for `bounce`, a self-loop that is
/// always enabled: only the follow-up's key stops a second firing.
const BOUNCE: &str = r#"{ "id": "bounce", "places": ["a", "b"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b",
      "actions": [ { "plugin": "auto-advance", "config": { "transition": "bounce" } } ] },
    { "id": "bounce", "from": ["b"], "to": "b" } ] }"#;

struct Target {
    server: NatsServer,
    host: Host,
    serving: Option<Serving>,
    api: ApiClient,
    raw: async_nats::Client,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Target {
    async fn start(store: StoreConfig, serve: ServeConfig) -> Target {
        let server = NatsServer::start();
        let url = server.url();
        let plugins = tempfile::tempdir().unwrap();
        for (name, path) in cb_test_plugins::ALL {
            if ["misbehave", "auto-advance", "amount-limit"].contains(name) {
                std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
            }
        }
        let cache = tempfile::tempdir().unwrap();
        let host = Host::builder()
            .nats_url(&url)
            .store(store)
            .runtime(RuntimeConfig {
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            })
            .plugin_dir(plugins.path())
            .build()
            .await
            .unwrap();
        for d in [FLOW, BOUNCE] {
            host.apply_workflow(&WorkflowDefinition::parse(d.as_bytes()).unwrap())
                .await
                .unwrap();
        }
        let serving = cb_host::serve(&host, serve).await.unwrap();
        let raw = connect(&url).await;
        let api = ApiClient::new(raw.clone(), "cb", Duration::from_secs(5));
        Target {
            server,
            host,
            serving: Some(serving),
            api,
            raw,
            _dirs: (plugins, cache),
        }
    }

    async fn default() -> Target {
        Target::start(config(), ServeConfig::default()).await
    }

    /// A raw request: the reply's error code header (if any) and body.
    async fn request(&self, endpoint: &str, body: impl Into<bytes::Bytes>) -> (Option<String>, Value) {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            self.raw.request(format!("cb.api.{endpoint}"), body.into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{endpoint}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert!(r.payload.len() <= self.raw.server_info().max_payload);
        let code = r.headers.as_ref().and_then(|h| {
            let text = h
                .get("Nats-Service-Error")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            assert!(
                !text.contains('\r') && !text.contains('\n') && text.len() <= 512,
                "{endpoint}: header text {text:?}"
            );
            h.get("Nats-Service-Error-Code").map(|v| v.as_str().to_string())
        });
        let body = serde_json::from_slice(&r.payload)
            .unwrap_or_else(|e| panic!("{endpoint}: reply is not JSON: {e}"));
        (code, body)
    }

    async fn create_keyed(&self, token: &str, key: &str, data: Value) -> Result<Token, ApiError> {
        self.api
            .call(
                "token.create",
                &json!({ "workflow": "flow", "id": token, "data": data, "idempotency_key": key }),
            )
            .await
    }

    async fn fire(&self, token: &str, transition: &str, key: Option<&str>) -> Result<Value, ApiError> {
        self.api
            .call(
                "token.fire",
                &TokenFire {
                    workflow: Some(id("flow")),
                    id: id(token),
                    transition: id(transition),
                    input: Value::Null,
                    actor: None,
                    expected_revision: None,
                    idempotency_key: key.map(str::to_string),
                },
            )
            .await
    }

    async fn transitions(&self, wf: &str, token: &str, transition: &str) -> usize {
        self.host
            .history(Some(&id(wf)), &id(token), None, 1000)
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::Transition { transition: t, .. } if t == transition))
            .count()
    }

    async fn stop(mut self) {
        if let Some(s) = self.serving.take() {
            s.shutdown().await;
        }
        drop(self.server);
    }
}

fn service_error(r: Result<Value, ApiError>) -> cb_host::api::ErrorInfo {
    match r {
        Err(ApiError::Service(info)) => info,
        other => panic!("expected a typed error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_control_characters_huge_echoes_and_junk_with_a_typed_error() {
    let t = Target::default().await;
    t.host
        .create_token(&id("flow"), Some(id("t1")), json!({}), Default::default(), None)
        .await
        .unwrap();
    let before = stream_state(&t.raw, "CB_TEST").await;
    let no_args = ["workflow.list", "plugin.list", "host.stats"];
    let huge_name = "n".repeat(300_000);
    let mut tried = 0;
    for ep in ENDPOINTS {
        let mut bodies: Vec<Vec<u8>> = vec![
            // A field name with a CR LF in it (a JSON escape): it is quoted
            // into the error text, which must not reach a header as it is.
            br#"{"bo\r\ngus": 1}"#.to_vec(),
            br#"{"x\u0000y": 1}"#.to_vec(),
            format!(r#"{{"{huge_name}": 1}}"#).into_bytes(),
        ];
        if no_args.contains(ep) {
            bodies.push(br#"{"a": 1}"#.to_vec());
            bodies.push(vec![b'#'; 1_000_000]);
            bodies.push(b"null".to_vec());
        }
        for body in bodies {
            tried += 1;
            let (code, reply) = t.request(ep, body.clone()).await;
            assert_eq!(
                code.as_deref(),
                Some("400"),
                "{ep} {}: {reply}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
            assert_eq!(reply["error"]["code"], "invalid", "{ep}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(
                message.len() <= 4096,
                "{ep}: a bounded message ({} bytes)",
                message.len()
            );
        }
    }
    // Arguments-less endpoints take an empty body or {}.
    for ep in no_args {
        for body in ["", "{}", " \n"] {
            let (code, _) = t.request(ep, body.to_string()).await;
            assert_eq!(code, None, "{ep} {body:?}");
        }
    }
    // Trailing data is not ignored.
    for (ep, body) in [
        ("token.create", r#"{"workflow":"flow"} }{ junk"#.to_string()),
        ("token.get", r#"{"id":"t1"} {"id":"t2"}"#.to_string()),
        ("workflow.apply", format!("{FLOW} junk")),
        ("workflow.apply", format!(r#"{{"definition": {FLOW}}} x"#)),
    ] {
        tried += 1;
        let (code, reply) = t.request(ep, body).await;
        assert_eq!(code.as_deref(), Some("400"), "{ep}: {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains("data after"),
            "{ep}: {reply}"
        );
    }
    assert_eq!(
        stream_state(&t.raw, "CB_TEST").await,
        before,
        "nothing was written"
    );
    assert!(tried > 40, "{tried}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_and_a_history_of_large_tokens_are_listed_page_by_page() {
    let t = Target::default().await;
    let blob = "x".repeat(600_000);
    for i in 0..3 {
        t.host
            .create_token(
                &id("flow"),
                Some(id(&format!("big{i}"))),
                json!({ "blob": blob }),
                Default::default(),
                None,
            )
            .await
            .unwrap();
    }
    // Each page fits a reply; together they hold every token, once.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    let mut pages = 0;
    loop {
        let (code, page) = t
            .request(
                "token.list",
                json!({ "workflow": "flow", "place": "a", "cursor": cursor }).to_string(),
            )
            .await;
        assert_eq!(code, None, "{page}");
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_u64() {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages < 10);
    }
    assert_eq!(seen, ["big0", "big1", "big2"]);
    assert!(pages >= 3, "600 KB tokens take a page each ({pages} pages)");
    // The same for a history whose events carry the token's state.
    for tr in ["go", "again", "on", "again"] {
        t.fire("big0", tr, None).await.unwrap();
    }
    let mut events = 0;
    let mut cursor: Option<u64> = None;
    loop {
        let (code, page) = t
            .request(
                "token.history",
                json!({ "id": "big0", "cursor": cursor }).to_string(),
            )
            .await;
        assert_eq!(code, None, "{page}");
        events += page["items"].as_array().unwrap().len();
        match page["next"].as_u64() {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(events, 5, "created and four transitions");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_returns_the_original_outcome() {
    let t = Target::default().await;
    // Create: the same token twice; without a key the second is a
    // `duplicate` naming it.
    let a = t.create_keyed("k1", "create-1", json!({"n": 1})).await.unwrap();
    let b = t.create_keyed("k1", "create-1", json!({"n": 1})).await.unwrap();
    assert_eq!((&a.id, a.revision, &a.data), (&b.id, b.revision, &b.data));
    let e = service_error(
        t.api
            .call("token.create", &json!({ "workflow": "flow", "id": "k1" }))
            .await,
    );
    assert_eq!(e.code, "duplicate", "{}", e.message);
    assert!(e.message.contains("`k1`"), "{}", e.message);
    assert_eq!(e.revision, Some(a.revision));
    // The same key with another request is refused.
    let e = service_error(
        t.create_keyed("k1", "create-1", json!({"n": 2}))
            .await
            .map(|t| serde_json::to_value(t).unwrap()),
    );
    assert_eq!(e.code, "invalid", "{}", e.message);
    // Fire: the retry returns the same firing, the token fired once.
    let f1 = t.fire("k1", "go", Some("fire-1")).await.unwrap();
    let f2 = t.fire("k1", "go", Some("fire-1")).await.unwrap();
    assert_eq!(f1["event_sequence"], f2["event_sequence"]);
    assert_eq!(f1["token"]["revision"], f2["token"]["revision"]);
    assert_eq!(f2["token"]["place"], "b");
    assert_eq!(t.transitions("flow", "k1", "go").await, 1);
    // A firing with expected_revision.
    let now = f1["token"]["revision"].as_u64().unwrap();
    let e = service_error(
        t.api
            .call(
                "token.fire",
                &json!({ "id": "k1", "transition": "on", "expected_revision": now - 1 }),
            )
            .await,
    );
    assert_eq!(e.code, "conflict", "{}", e.message);
    // Complete.
    let c1: Value = t
        .api
        .call(
            "token.complete",
            &json!({ "id": "k1", "idempotency_key": "done-1" }),
        )
        .await
        .unwrap();
    let c2: Value = t
        .api
        .call(
            "token.complete",
            &json!({ "id": "k1", "idempotency_key": "done-1" }),
        )
        .await
        .unwrap();
    assert_eq!(c1, c2);
    // A firing retried after its token completed (the first attempt's
    // answer lost, say) still finds its one outcome, though no live token
    // names its workflow any more (the request names none).
    let f3: Value = t
        .api
        .call(
            "token.fire",
            &json!({ "id": "k1", "transition": "go", "idempotency_key": "fire-1" }),
        )
        .await
        .unwrap();
    assert_eq!(f1["event_sequence"], f3["event_sequence"]);
    assert_eq!(t.transitions("flow", "k1", "go").await, 1);
    // Apply.
    let changed = FLOW.replace(
        r#""id": "on", "from": ["b"]"#,
        r#""id": "on", "from": ["b", "a"]"#,
    );
    let body = format!(r#"{{"definition": {changed}, "idempotency_key": "apply-1"}}"#);
    let (code, v1) = t.request("workflow.apply", body.clone()).await;
    assert_eq!(code, None, "{v1}");
    let (_, v2) = t.request("workflow.apply", body).await;
    assert_eq!(v1["version"], v2["version"]);
    // The key may come in the Idempotency-Key header instead.
    let mut h = HeaderMap::new();
    h.insert("Idempotency-Key", "hdr-1");
    let body = json!({ "workflow": "flow", "id": "k2" }).to_string();
    let r1 = t
        .raw
        .request_with_headers("cb.api.token.create", h.clone(), body.clone().into())
        .await
        .unwrap();
    let r2 = t
        .raw
        .request_with_headers("cb.api.token.create", h, body.into())
        .await
        .unwrap();
    assert!(r2.headers.is_none(), "{}", String::from_utf8_lossy(&r2.payload));
    let (t1, t2): (Token, Token) = (
        serde_json::from_slice(&r1.payload).unwrap(),
        serde_json::from_slice(&r2.payload).unwrap(),
    );
    assert_eq!((&t1.id, t1.revision), (&t2.id, t2.revision));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_workflow_reaches_the_live_token_of_a_reused_id() {
    // Ids are unique within a workflow, not across them: `dup` lives in
    // `flow` while a `dup` of `bounce`, created and completed later, holds
    // the id's newest event. Requests that name no workflow act on the
    // live one.
    let t = Target::start(StoreConfig::development(), ServeConfig::default()).await;
    let call = |endpoint: &'static str, body: Value| {
        let api = t.api.clone();
        async move { api.call::<_, Value>(endpoint, &body).await }
    };
    call("token.create", json!({ "workflow": "flow", "id": "dup" }))
        .await
        .unwrap();
    call("token.create", json!({ "workflow": "bounce", "id": "dup" }))
        .await
        .unwrap();
    call("token.complete", json!({ "workflow": "bounce", "id": "dup" }))
        .await
        .unwrap();
    let history = call("token.history", json!({ "id": "dup" })).await.unwrap();
    let items = history["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{history}");
    assert!(
        items.iter().all(|e| e["workflow_id"] == "flow"),
        "the live token's history: {history}"
    );
    call("token.complete", json!({ "id": "dup" }))
        .await
        .expect("the live token in flow completes");
    let e = service_error(call("token.get", json!({ "workflow": "flow", "id": "dup" })).await);
    assert_eq!(e.code, "not-found", "{}", e.message);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_resolved_or_reported_as_indeterminate_never_as_a_conflict() {
    let t = Target::default().await;
    let store = t.host.engine().store().clone();
    t.host
        .create_token(&id("flow"), Some(id("i1")), json!({}), Default::default(), None)
        .await
        .unwrap();
    // The commit is stored but its answer lost: the writer reads the
    // outcome back from the stream.
    store.inject_commit_fault(CommitFault::LoseReply, 1);
    let fired = t
        .host
        .fire(FireRequest::new(id("flow"), id("i1"), id("go")))
        .await
        .unwrap();
    assert_eq!(fired.token.place, "b");
    assert_eq!(t.transitions("flow", "i1", "go").await, 1);
    let h = t
        .host
        .history(Some(&id("flow")), &id("i1"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        h.items.last().unwrap().sequence,
        fired.event_sequence,
        "the true sequence"
    );
    // A create whose answer is lost, too.
    store.inject_commit_fault(CommitFault::LoseReply, 1);
    let made = t
        .host
        .create_token(
            &id("flow"),
            Some(id("i2")),
            json!({"n": 2}),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        t.host
            .get_token(Some(&id("flow")), &id("i2"))
            .await
            .unwrap()
            .revision,
        made.revision
    );
    // The commit never reached the server: nothing tells the writer, which
    // says so (indeterminate, over the API: unavailable + indeterminate),
    // and a retry with the same key then fires once.
    store.inject_commit_fault(CommitFault::LoseCommit, 1);
    let e = service_error(t.fire("i1", "on", Some("lost-1")).await);
    assert_eq!(e.code, "unavailable", "{}", e.message);
    assert!(e.indeterminate, "{e:?}");
    let retry = t.fire("i1", "on", Some("lost-1")).await.unwrap();
    assert_eq!(retry["token"]["place"], "c");
    let again = t.fire("i1", "on", Some("lost-1")).await.unwrap();
    assert_eq!(retry["event_sequence"], again["event_sequence"]);
    assert_eq!(t.transitions("flow", "i1", "on").await, 1);
    match t
        .host
        .fire(FireRequest::new(id("flow"), id("i1"), id("on")))
        .await
    {
        Err(HostError::Fire(FireError::NotEnabled { .. })) => {}
        other => panic!("{other:?}"),
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_admission_limit_is_answered_busy_at_once() {
    let t = Target::start(
        config(),
        ServeConfig {
            api: ApiConfig { max_in_flight: 2 },
            ..Default::default()
        },
    )
    .await;
    for i in 0..16 {
        t.host
            .create_token(
                &id("flow"),
                Some(id(&format!("s{i}"))),
                json!({}),
                Default::default(),
                None,
            )
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let api = t.api.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let r: Result<Value, ApiError> = api
                    .call(
                        "token.fire",
                        &json!({ "id": format!("s{i}"), "transition": "slow" }),
                    )
                    .await;
                (r, started.elapsed())
            })
        })
        .collect();
    let (mut busy, mut slow) = (0, 0);
    for task in tasks {
        let (r, took) = task.await.unwrap();
        let e = service_error(r);
        match e.code.as_str() {
            "busy" => {
                busy += 1;
                assert!(took < Duration::from_millis(300), "a busy answer waited {took:?}");
            }
            "plugin-error" => slow += 1,
            other => panic!("{other}: {}", e.message),
        }
    }
    assert!(busy >= 10, "{busy} busy, {slow} run");
    assert!(slow >= 2, "{busy} busy, {slow} run");
    // And the host still answers.
    let (code, _) = t.request("token.get", json!({"id": "s0"}).to_string()).await;
    assert_eq!(code, None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_definition_that_cannot_run_listing_every_problem() {
    let t = Target::default().await;
    let def = WorkflowDefinition::parse(
        br#"{ "id": "bad", "places": ["a", "b"], "initial_place": "a", "transitions": [
        { "id": "t1", "from": ["a"], "to": "b", "guards": [ { "plugin": "not-deployed" } ] },
        { "id": "t2", "from": ["a"], "to": "b", "guards": [ { "plugin": "auto-advance" } ] },
        { "id": "t3", "from": ["a"], "to": "b", "actions": [ { "plugin": "auto-advance",
            "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000" } ] },
        { "id": "t4", "from": ["a"], "to": "b", "guards": [ { "plugin": "amount-limit",
            "limits": { "memory_bytes": 1073741824 } } ] } ] }"#,
    )
    .unwrap();
    let before = stream_state(&t.raw, "CB_TEST").await;
    match t.host.apply_workflow(&def).await {
        Err(HostError::Unrunnable { problems, .. }) => {
            assert_eq!(problems.len(), 4, "{problems:#?}");
            assert!(
                problems[0].starts_with("transitions[0].guards[0]: no plugin named `not-deployed`"),
                "{problems:?}"
            );
            assert!(
                problems[1].contains("is a action plugin, not a guard"),
                "{problems:?}"
            );
            assert!(problems[2].contains("the definition pins"), "{problems:?}");
            assert!(problems[3].contains("limits.memory_bytes"), "{problems:?}");
        }
        other => panic!("{other:?}"),
    }
    // Over the API, the same, as `invalid`.
    let (code, reply) = t
        .request("workflow.apply", serde_json::to_vec(&def).unwrap())
        .await;
    assert_eq!(code.as_deref(), Some("400"));
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-deployed"),
        "{reply}"
    );
    assert_eq!(stream_state(&t.raw, "CB_TEST").await, before);
    // Allowing missing plugins leaves the other problems.
    match t
        .host
        .apply_workflow_with(
            &def,
            &ApplyOptions {
                allow_missing_plugins: true,
                ..Default::default()
            },
        )
        .await
    {
        Err(HostError::Unrunnable { problems, .. }) => assert_eq!(problems.len(), 3, "{problems:?}"),
        other => panic!("{other:?}"),
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_fires_once_when_its_event_comes_back_after_the_dedupe_window() {
    // A 1 s duplicate window, and an event delivered again 2 s later:
    // Nats-Msg-Id would have forgotten the follow-up; its key record has not.
    let store = StoreConfig {
        duplicate_window: Duration::from_secs(1),
        ..config()
    };
    let t = Target::start(
        store,
        ServeConfig {
            dispatcher: DispatcherConfig {
                backoff: vec![Duration::from_secs(2)],
                ack_wait: Duration::from_secs(5),
                fault_skip_first_ack: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    for i in 0..3 {
        t.host
            .create_token(
                &id("bounce"),
                Some(id(&format!("b{i}"))),
                json!({}),
                Default::default(),
                None,
            )
            .await
            .unwrap();
        t.host
            .fire(FireRequest::new(id("bounce"), id(&format!("b{i}")), id("go")))
            .await
            .unwrap();
    }
    cb_test_support::wait_consumer_idle(&t.raw, "CB_TEST", "cb-actions", Duration::from_secs(60)).await;
    for i in 0..3 {
        assert_eq!(
            t.transitions("bounce", &format!("b{i}"), "bounce").await,
            1,
            "b{i}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn the_dispatcher_refuses_to_start_when_keys_are_forgotten_before_events_come_back() {
    let store = StoreConfig {
        idempotency_ttl: Some(Duration::from_secs(10)),
        ..config()
    };
    let env = env_with(store, "").await;
    let engine = cb_host::engine::Engine::new(
        env.store.clone(),
        cb_host::plugin::PluginRegistry::new(),
        Default::default(),
    );
    match Dispatcher::start(engine, DispatcherConfig::default()).await {
        Err(StoreError::Configuration(m)) => assert!(m.contains("idempotency_ttl"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_store_asking_for_more_replicas_than_the_server_has_is_a_configuration_error() {
    let server = NatsServer::start();
    let client = connect(&server.url()).await;
    match cb_host::store::Store::open(client.clone(), config().with_replicas(3)).await {
        Err(StoreError::Configuration(m)) => assert!(m.contains("replicas"), "{m}"),
        other => panic!("{other:?}"),
    }
    // `0` follows the server: one replica here.
    let store = cb_host::store::Store::open(client, config().with_replicas(0))
        .await
        .unwrap();
    assert_eq!(store.config().replicas, 1);
}
