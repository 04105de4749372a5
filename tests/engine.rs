//! The engine: firing through real guard plugins against a real
//! nats-server, and actions from the event log.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use cb_host::engine::{Dispatcher, DispatcherConfig, Engine, EngineConfig, FireError, FireRequest};
use cb_host::model::{EventKind, Id, WorkflowDefinition};
use cb_host::plugin::{PluginError, PluginLimits, PluginRegistry, PluginRuntime, RuntimeConfig};
use cb_host::store::{NewToken, Store, StoreReader};
use common::*;
use serde_json::json;

const EXPENSE_GUARDED: &str = r#"{ "id": "expense", "places": ["draft", "submitted", "approved", "paid", "stuck"],
  "initial_place": "draft",
  "transitions": [
    { "id": "submit", "from": ["draft"], "to": "submitted",
      "guards": [ { "plugin": "require-fields", "config": { "fields": ["/amount", "/owner"] } },
                  { "plugin": "amount-limit", "config": { "max": 1000 } } ] },
    { "id": "approve", "from": ["submitted"], "to": "approved",
      "actions": [ { "plugin": "auto-advance", "config": { "transition": "pay" } } ] },
    { "id": "pay", "from": ["approved"], "to": "paid" },
    { "id": "loop", "from": ["draft"], "to": "stuck",
      "guards": [ { "plugin": "misbehave", "config": { "do": "loop" } } ] },
    { "id": "trap", "from": ["draft"], "to": "stuck",
      "guards": [ { "plugin": "misbehave", "config": { "do": "trap" } } ] },
    { "id": "broken", "from": ["paid"], "to": "stuck",
      "actions": [ { "plugin": "auto-advance", "config": {} } ] },
    { "id": "finish", "from": ["paid"], "to": "paid",
      "actions": [ { "plugin": "auto-advance", "config": {} } ] } ] }"#;

fn registry() -> (PluginRegistry, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let mut reg = PluginRegistry::new();
    for (name, path) in cb_test_plugins::ALL {
        if *name == "wrong-world" {
            continue;
        }
        let mut p = rt.load_file(std::path::Path::new(path)).unwrap();
        if *name == "misbehave" {
            p = p.with_limits(PluginLimits {
                deadline: Duration::from_millis(100),
                ..Default::default()
            });
        }
        reg.insert(p);
    }
    (reg, cache)
}

struct EngineEnv {
    env: Env,
    engine: Engine,
    _cache: tempfile::TempDir,
}

async fn engine_env() -> EngineEnv {
    let env = env().await;
    apply(&env.store, EXPENSE_GUARDED).await;
    let (reg, cache) = registry();
    let engine = Engine::new(env.store.clone(), reg, EngineConfig::default());
    EngineEnv {
        env,
        engine,
        _cache: cache,
    }
}

fn fire(token: &str, transition: &str) -> FireRequest {
    FireRequest {
        actor: Some("test".into()),
        ..FireRequest::new(id("expense"), id(token), id(transition))
    }
}

async fn create(engine: &Engine, token: &str, data: serde_json::Value) {
    engine
        .create_token(
            &id("expense"),
            NewToken {
                id: Some(id(token)),
                data,
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn guards_allow_or_deny_with_every_denial_and_denials_write_nothing() {
    let e = engine_env().await;
    create(&e.engine, "ok", json!({"amount": 500, "owner": "ana"})).await;
    create(&e.engine, "bad", json!({"amount": 5000})).await;

    let fired = e.engine.fire(fire("ok", "submit")).await.unwrap();
    assert_eq!(fired.token.place, "submitted");
    assert_eq!(fired.from, "draft");
    let got = e
        .env
        .store
        .reader()
        .get_token(&id("expense"), &id("ok"))
        .await
        .unwrap();
    assert_eq!(got.revision, fired.token.revision);

    let before = stream_state(&e.env.client, "CB_TEST").await;
    match e.engine.fire(fire("bad", "submit")).await {
        Err(FireError::Denied { transition, denials }) => {
            assert_eq!(transition, "submit");
            assert_eq!(denials.len(), 2, "{denials:?}");
            assert_eq!(
                (denials[0].plugin.as_str(), denials[0].code.as_str()),
                ("require-fields", "missing-fields")
            );
            assert_eq!(denials[0].details, json!({"missing": ["/owner"]}));
            assert_eq!(
                (denials[1].plugin.as_str(), denials[1].code.as_str()),
                ("amount-limit", "amount-over-limit")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stream_state(&e.env.client, "CB_TEST").await,
        before,
        "a denial wrote something"
    );
    assert_eq!(
        e.env
            .store
            .reader()
            .get_token(&id("expense"), &id("bad"))
            .await
            .unwrap()
            .place,
        "draft"
    );

    // Typed errors for the rest.
    assert!(
        matches!(e.engine.fire(fire("ok", "submit")).await, Err(FireError::NotEnabled { marking, .. }) if marking == ["submitted"])
    );
    assert!(matches!(
        e.engine.fire(fire("ok", "nope")).await,
        Err(FireError::UnknownTransition { .. })
    ));
    assert!(matches!(
        e.engine.fire(fire("ghost", "submit")).await,
        Err(FireError::NotFound(_))
    ));
    assert_eq!(stream_state(&e.env.client, "CB_TEST").await, before);

    // What a UI needs: which transitions can fire, and why not.
    let (token, enabled) = e.engine.enabled(&id("expense"), &id("bad")).await.unwrap();
    assert_eq!(token.place, "draft");
    let submit = enabled.iter().find(|x| x.transition == "submit").unwrap();
    assert!(!submit.enabled);
    assert_eq!(submit.denials.len(), 2);
    let looping = enabled.iter().find(|x| x.transition == "loop").unwrap();
    assert!(!looping.enabled && looping.error.as_deref().unwrap().contains("timed out"));
}

#[tokio::test]
async fn a_guard_that_times_out_or_traps_fails_closed_naming_the_plugin() {
    let e = engine_env().await;
    create(&e.engine, "t", json!({})).await;
    let before = stream_state(&e.env.client, "CB_TEST").await;
    match e.engine.fire(fire("t", "loop")).await {
        Err(FireError::Plugin(PluginError::Timeout { plugin, limit_ms })) => {
            assert_eq!(plugin, "misbehave");
            assert_eq!(limit_ms, 100);
        }
        other => panic!("{other:?}"),
    }
    match e.engine.fire(fire("t", "trap")).await {
        Err(err @ FireError::Plugin(PluginError::Trap { .. })) => {
            assert!(err.to_string().contains("misbehave"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stream_state(&e.env.client, "CB_TEST").await, before);
    assert_eq!(
        e.env
            .store
            .reader()
            .get_token(&id("expense"), &id("t"))
            .await
            .unwrap()
            .place,
        "draft"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_sixteen_concurrent_firings_exactly_one_wins() {
    let e = engine_env().await;
    let client2 = connect(&e.env.server.url()).await;
    let store2 = Store::open(client2, config()).await.unwrap();
    let (reg2, _c2) = registry();
    let engine2 = Engine::new(store2, reg2, EngineConfig::default());
    for round in 0..5 {
        let tid = format!("race{round}");
        create(&e.engine, &tid, json!({"amount": 1, "owner": "ana"})).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let engine = if i % 2 == 0 {
                    e.engine.clone()
                } else {
                    engine2.clone()
                };
                let req = fire(&tid, "submit");
                tokio::spawn(async move { engine.fire(req).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(FireError::Conflict { .. } | FireError::NotEnabled { .. }) => {}
                Err(other) => panic!("round {round}: {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        let h = e
            .env
            .store
            .reader()
            .history(&id("expense"), &id(&tid), None, 100)
            .await
            .unwrap();
        let moves = h
            .items
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Transition { .. }))
            .count();
        assert_eq!(moves, 1, "round {round}: exactly one transition event");
    }
}

/// Engine A remembers the tokens it wrote and fires from that memory; when
/// engine B changed a token meanwhile, A must neither refuse on its stale
/// copy nor commit on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cached_token_never_causes_a_wrong_refusal_or_a_wrong_write() {
    let e = engine_env().await;
    let client2 = connect(&e.env.server.url()).await;
    let store2 = Store::open(client2, config()).await.unwrap();
    let (reg2, _c2) = registry();
    let b = Engine::new(store2, reg2, EngineConfig::default());
    let a = &e.engine;

    // A created it (cached in draft); B submitted it: A's approve must fire.
    create(a, "moved", json!({"amount": 5, "owner": "ana"})).await;
    b.fire(fire("moved", "submit")).await.unwrap();
    let fired = a.fire(fire("moved", "approve")).await.unwrap();
    assert_eq!(fired.from, "submitted");

    // A created it with an amount over the limit (cached, a denial); B
    // lowered the amount: A's submit must be allowed.
    create(a, "lowered", json!({"amount": 5000, "owner": "ana"})).await;
    b.update(
        &id("expense"),
        &id("lowered"),
        Some(json!({"amount": 50, "owner": "ana"})),
        None,
        None,
    )
    .await
    .unwrap();
    let fired = a.fire(fire("lowered", "submit")).await.unwrap();
    assert_eq!(fired.token.data["amount"], 50, "guards saw the current data");

    // A created it (allowed from its copy); B raised the amount over the
    // limit: A's submit must be denied, not committed on the stale copy.
    create(a, "raised", json!({"amount": 5, "owner": "ana"})).await;
    b.update(
        &id("expense"),
        &id("raised"),
        Some(json!({"amount": 5000, "owner": "ana"})),
        None,
        None,
    )
    .await
    .unwrap();
    match a.fire(fire("raised", "submit")).await {
        Err(FireError::Denied { denials, .. }) => assert_eq!(denials[0].code, "amount-over-limit"),
        other => panic!("expected a denial on the current data, got {other:?}"),
    }

    // B completed it: A gets "not found", not a write.
    create(a, "gone", json!({"amount": 5, "owner": "ana"})).await;
    b.complete(&id("expense"), &id("gone"), None).await.unwrap();
    assert!(matches!(
        a.fire(fire("gone", "submit")).await,
        Err(FireError::NotFound(_))
    ));
    let reader = e.env.store.reader();
    assert_eq!(transitions_of(&reader, "raised", "submit").await, 0);
    assert_eq!(transitions_of(&reader, "gone", "submit").await, 0);
}

/// Transition events of `token` for `transition`.
async fn transitions_of(reader: &StoreReader, token: &str, transition: &str) -> usize {
    let h = reader
        .history(&id("expense"), &id(token), None, 1000)
        .await
        .unwrap();
    h.items
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Transition { transition: t, .. } if t == transition))
        .count()
}

/// Waits (bounded) until every action event was processed and acked.
async fn wait_actions_done(client: &async_nats::Client) {
    cb_test_support::wait_consumer_idle(client, "CB_TEST", "cb-actions", Duration::from_secs(30)).await;
}

/// `go` moves a -> b and its action asks for `bounce`, a self-loop on b
/// that is always enabled: only deduplication stops a redelivered action
/// from firing it twice.
const BOUNCE: &str = r#"{ "id": "expense", "places": ["a", "b"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b",
      "actions": [ { "plugin": "auto-advance", "config": { "transition": "bounce" } } ] },
    { "id": "bounce", "from": ["b"], "to": "b" } ] }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_advance_fires_the_follow_up_exactly_once_even_when_redelivered() {
    let env = env().await;
    apply(&env.store, BOUNCE).await;
    let (reg, _cache) = registry();
    let engine = Engine::new(env.store.clone(), reg, EngineConfig::default());
    // The fault hook makes every first delivery "fail" after its follow-up
    // firings were made: the event is redelivered and the action runs again.
    let faulty = DispatcherConfig {
        backoff: vec![Duration::from_millis(20)],
        fault_skip_first_ack: true,
        ..Default::default()
    };
    let dispatcher = Dispatcher::start(engine.clone(), faulty).await.unwrap();
    for i in 0..5 {
        let tid = format!("adv{i}");
        create(&engine, &tid, json!({})).await;
        engine.fire(fire(&tid, "go")).await.unwrap();
    }
    wait_actions_done(&env.client).await;
    let reader = env.store.reader();
    for i in 0..5 {
        let tid = format!("adv{i}");
        assert_eq!(transitions_of(&reader, &tid, "go").await, 1);
        assert_eq!(
            transitions_of(&reader, &tid, "bounce").await,
            1,
            "{tid}: bounce fired exactly once"
        );
    }
    // Each go event was delivered twice.
    let js = jetstream::new(env.client.clone());
    let mut c: jetstream::consumer::PullConsumer = js
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .get_consumer("cb-actions")
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    assert!(info.delivered.consumer_sequence >= 10, "{info:?}");
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_advance_moves_the_token_on() {
    let e = engine_env().await;
    let dispatcher = Dispatcher::start(e.engine.clone(), DispatcherConfig::default())
        .await
        .unwrap();
    create(&e.engine, "p", json!({"amount": 10, "owner": "ana"})).await;
    e.engine.fire(fire("p", "submit")).await.unwrap();
    e.engine.fire(fire("p", "approve")).await.unwrap();
    wait_actions_done(&e.env.client).await;
    let reader = e.env.store.reader();
    let t = reader.get_token(&id("expense"), &id("p")).await.unwrap();
    assert_eq!(t.place, "paid");
    let h = reader.history(&id("expense"), &id("p"), None, 100).await.unwrap();
    let pay = h
        .items
        .iter()
        .find(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == "pay"))
        .unwrap();
    assert!(matches!(&pay.kind, EventKind::Transition { actor: Some(a), .. } if a == "action:auto-advance"));
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_is_retried_then_recorded_as_failed() {
    let e = engine_env().await;
    let config = DispatcherConfig {
        max_deliver: 3,
        backoff: vec![Duration::from_millis(10)],
        ..Default::default()
    };
    let dispatcher = Dispatcher::start(e.engine.clone(), config).await.unwrap();
    create(&e.engine, "f", json!({"amount": 10, "owner": "ana"})).await;
    for t in ["submit", "approve"] {
        e.engine.fire(fire("f", t)).await.unwrap();
    }
    wait_actions_done(&e.env.client).await;
    // `finish` has an action with a broken config: it fails every time.
    e.engine.fire(fire("f", "finish")).await.unwrap();
    wait_actions_done(&e.env.client).await;
    let h = e
        .env
        .store
        .reader()
        .history(&id("expense"), &id("f"), None, 100)
        .await
        .unwrap();
    let failures: Vec<_> = h
        .items
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ActionFailed {
                plugin,
                attempts,
                error,
                transition,
                ..
            } => Some((
                plugin.to_string(),
                *attempts,
                error.clone(),
                transition.to_string(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "auto-advance");
    assert_eq!(failures[0].1, 3);
    assert!(
        failures[0].2.contains("config needs `transition`"),
        "{}",
        failures[0].2
    );
    assert_eq!(failures[0].3, "finish");
    dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_firing_gives_success_or_a_typed_error_never_a_wrong_answer() {
    let mut e = engine_env().await;
    let n = 60;
    for i in 0..n {
        create(&e.engine, &format!("r{i}"), json!({"amount": 10, "owner": "ana"})).await;
    }
    let (go, mut started) = tokio::sync::watch::channel(0usize);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (engine, go) = (e.engine.clone(), go.clone());
            tokio::spawn(async move {
                go.send_modify(|n| *n += 1);
                engine.fire(fire(&format!("r{i}"), "submit")).await
            })
        })
        .collect();
    started.wait_for(|&s| s >= n / 2).await.unwrap();
    e.env.server.kill();
    e.env.server.restart();
    let mut ok = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(f) => ok.push((i, f.token.revision)),
            // Indeterminate: the commit left and no answer came before the
            // kill; whether it landed is what the checks below read.
            Err(
                FireError::Unavailable(_)
                | FireError::Indeterminate(_)
                | FireError::Conflict { .. }
                | FireError::NotEnabled { .. },
            ) => {}
            Err(other) => panic!("r{i}: unexpected {other}"),
        }
    }
    let reader = e.env.store.reader();
    let def = WorkflowDefinition::parse(EXPENSE_GUARDED.as_bytes()).unwrap();
    let mut live = std::collections::HashMap::<Id, usize>::new();
    for place in &def.places {
        for t in reader.list_place_all(&id("expense"), place).await.unwrap() {
            *live.entry(t.id).or_default() += 1;
        }
    }
    for i in 0..n {
        let tid = id(&format!("r{i}"));
        assert_eq!(live.get(&tid), Some(&1), "{tid} live in exactly one place");
        let t = reader.get_token(&id("expense"), &tid).await.unwrap();
        let submits = transitions_of(&reader, tid.as_str(), "submit").await;
        assert_eq!(
            submits,
            usize::from(t.place == "submitted"),
            "{tid}: a committed move has its event"
        );
    }
    for (i, revision) in ok {
        let t = reader
            .get_token(&id("expense"), &id(&format!("r{i}")))
            .await
            .unwrap();
        assert_eq!(t.place, "submitted", "r{i}: a reported success is stored");
        assert_eq!(t.revision, revision);
    }
}
