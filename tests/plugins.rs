//! The plugin runtime with real components built from `plugins/`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cb_host::model::{Token, Transition, WorkflowDefinition};
use cb_host::plugin::{
    ActionInput, Decision, GuardInput, LoadSource, Plugin, PluginError, PluginLimits, PluginRegistry,
    PluginRuntime, RuntimeConfig, World,
};
use cb_host::store::{MemorySource, NewToken, TokenSource};
use cb_test_plugins as wasm;
use common::*;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

fn runtime() -> (PluginRuntime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        // These tests compile their plugins on the test threads, in
        // parallel with each other's calls. At the default niceness a
        // guest would wait for those compiles and a wall-clock deadline
        // would measure the wait, not the guest.
        plugin_thread_nice: 0,
        ..Default::default()
    })
    .unwrap();
    (rt, cache)
}

fn load(rt: &PluginRuntime, path: &str) -> Plugin {
    rt.load_file(std::path::Path::new(path)).unwrap()
}

fn token(data: Value) -> Token {
    let now = OffsetDateTime::now_utc();
    Token {
        id: id("t1"),
        workflow_id: id("expense"),
        definition_version: 1,
        place: id("submitted"),
        marking: vec![id("submitted")],
        data,
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
        revision: 7,
        subject: "cb.workflows.expense.places.submitted.tokens.t1".into(),
    }
}

fn transition() -> Transition {
    Transition::simple(id("approve"), vec![id("submitted")], id("approved"))
}

fn guard_input(data: Value, config: Value) -> GuardInput {
    GuardInput {
        token: token(data),
        transition: transition(),
        config,
        input: Value::Null,
        actor: Some("ana".into()),
        fired_at: datetime!(2026-11-23 10:30 UTC), // a Monday
    }
}

fn empty() -> Arc<dyn TokenSource> {
    Arc::new(MemorySource::new())
}

async fn decide(p: &Plugin, data: Value, config: Value) -> Decision {
    p.evaluate(&guard_input(data, config), empty())
        .await
        .unwrap()
        .value
}

fn deny_code(d: &Decision) -> &str {
    match d {
        Decision::Deny { code, .. } => code,
        Decision::Allow => "<allow>",
    }
}

#[tokio::test]
async fn amount_limit_allows_and_denies_with_codes_and_details() {
    let (rt, _c) = runtime();
    let p = load(&rt, wasm::AMOUNT_LIMIT);
    assert_eq!(p.world(), World::Guard);
    assert!(p.digest().starts_with("sha256:") && p.digest().len() == 71);
    assert_eq!(
        decide(&p, json!({"amount": 1000}), json!({"max": 1000})).await,
        Decision::Allow
    );
    match decide(&p, json!({"amount": 1200}), json!({"max": 1000})).await {
        Decision::Deny {
            code,
            message,
            details,
        } => {
            assert_eq!(code, "amount-over-limit");
            assert_eq!(message, "amount 1200 exceeds the limit of 1000");
            assert_eq!(details, json!({"amount": 1200.0, "max": 1000.0}));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        deny_code(&decide(&p, json!({}), json!({"max": 1})).await),
        "amount-missing"
    );
    assert_eq!(
        deny_code(&decide(&p, json!({"amount": 1}), json!(null)).await),
        "bad-config"
    );
}

#[tokio::test]
async fn require_fields_lists_every_missing_field() {
    let (rt, _c) = runtime();
    let p = load(&rt, wasm::REQUIRE_FIELDS);
    let cfg = json!({"fields": ["/amount", "/owner", "/meta/cost_center"]});
    assert_eq!(
        decide(
            &p,
            json!({"amount": 5, "owner": "ana", "meta": {"cost_center": "x"}}),
            cfg.clone()
        )
        .await,
        Decision::Allow
    );
    match decide(&p, json!({"amount": 5, "owner": null}), cfg).await {
        Decision::Deny { code, details, .. } => {
            assert_eq!(code, "missing-fields");
            assert_eq!(details, json!({"missing": ["/owner", "/meta/cost_center"]}));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn business_hours_reads_the_fixed_firing_clock() {
    let (rt, _c) = runtime();
    let p = load(&rt, wasm::BUSINESS_HOURS);
    let at = |t: OffsetDateTime| GuardInput {
        fired_at: t,
        ..guard_input(json!({}), json!({}))
    };
    let d = |t| {
        let p = p.clone();
        async move { p.evaluate(&at(t), empty()).await.unwrap().value }
    };
    assert_eq!(d(datetime!(2026-11-23 10:30 UTC)).await, Decision::Allow); // Monday
    assert_eq!(
        deny_code(&d(datetime!(2026-11-23 17:00 UTC)).await),
        "outside-business-hours"
    );
    assert_eq!(
        deny_code(&d(datetime!(2026-11-28 10:30 UTC)).await),
        "outside-business-hours"
    ); // Saturday
    // An offset moves the local day: 23:30 UTC Sunday is 09:30 Monday at +10:00.
    let input = GuardInput {
        fired_at: datetime!(2026-11-22 23:30 UTC),
        ..guard_input(json!({}), json!({"utc_offset_minutes": 600}))
    };
    assert_eq!(p.evaluate(&input, empty()).await.unwrap().value, Decision::Allow);
}

#[tokio::test]
async fn actions_return_requests_and_logs() {
    let (rt, _c) = runtime();
    let advance = load(&rt, wasm::AUTO_ADVANCE);
    assert_eq!(advance.world(), World::Action);
    let input = ActionInput {
        event_sequence: 42,
        token: token(json!({})),
        transition: transition(),
        from: id("submitted"),
        to: id("approved"),
        consumed: vec![id("submitted")],
        produced: vec![id("approved")],
        cancelled: vec![],
        actor: Some("ana".into()),
        input: Value::Null,
        config: json!({"transition": "pay", "input": {"note": "auto"}}),
        fired_at: OffsetDateTime::now_utc(),
    };
    let out = advance.run_action(&input, empty()).await.unwrap();
    assert_eq!(out.value.len(), 1);
    assert_eq!(out.value[0].transition, "pay");
    assert_eq!(out.value[0].token_id, "t1");
    assert_eq!(out.value[0].input, json!({"note": "auto"}));
    assert!(
        out.logs
            .iter()
            .any(|l| l.message.contains("requested pay after event 42")),
        "{:?}",
        out.logs
    );
    let bad = ActionInput {
        config: json!({}),
        ..input.clone()
    };
    match advance.run_action(&bad, empty()).await {
        Err(PluginError::Failed { plugin, message }) => {
            assert_eq!(plugin, "auto-advance");
            assert!(message.contains("transition"));
        }
        other => panic!("{other:?}"),
    }
    let audit = load(&rt, wasm::AUDIT_LOG);
    let out = audit.run_action(&input, empty()).await.unwrap();
    assert!(out.value.is_empty());
    assert_eq!(out.logs.len(), 1);
    assert!(
        out.logs[0]
            .message
            .contains("expense/t1 submitted -> approved by ana via approve (event 42")
    );
    // A guard cannot be run as an action and vice versa.
    let guard = load(&rt, wasm::AMOUNT_LIMIT);
    assert!(matches!(
        guard.run_action(&input, empty()).await,
        Err(PluginError::WrongWorld { .. })
    ));
    assert!(matches!(
        advance
            .evaluate(&guard_input(json!({}), json!({})), empty())
            .await,
        Err(PluginError::WrongWorld { .. })
    ));
}

/// Components built against WIT 0.1.0 (before markings) load and run
/// unchanged: they see a multi-place token's first place.
#[tokio::test]
async fn components_built_against_wit_0_1_still_load_and_run() {
    let (rt, _c) = runtime();
    for path in [wasm::V0_1_AMOUNT_LIMIT, wasm::V0_1_AUTO_ADVANCE] {
        let bytes = std::fs::read(path).unwrap();
        let seen = rt.inspect("old", &bytes).unwrap();
        assert_eq!(seen.wit_versions, ["0.1.0"], "{path}: {:?}", seen.imports);
        assert!(seen.problem.is_none(), "{path}: {:?}", seen.problem);
    }
    let guard = load(&rt, wasm::V0_1_AMOUNT_LIMIT);
    assert_eq!(guard.world(), World::Guard);
    let mut split = guard_input(json!({ "amount": 50 }), json!({ "max": 100 }));
    split.token.marking = vec![id("legal"), id("finance")];
    split.token.place = id("legal");
    let d = guard.evaluate(&split, empty()).await.unwrap().value;
    assert_eq!(d, Decision::Allow);
    split.token.data = json!({ "amount": 500 });
    let d = guard.evaluate(&split, empty()).await.unwrap().value;
    assert_eq!(deny_code(&d), "amount-over-limit");

    let action = load(&rt, wasm::V0_1_AUTO_ADVANCE);
    assert_eq!(action.world(), World::Action);
    let input = ActionInput {
        event_sequence: 9,
        token: Token {
            marking: vec![id("legal"), id("finance")],
            ..token(json!({}))
        },
        transition: Transition {
            split: vec![id("legal"), id("finance")],
            to: None,
            ..transition()
        },
        from: id("submitted"),
        to: id("legal"),
        consumed: vec![id("submitted")],
        produced: vec![id("legal"), id("finance")],
        cancelled: vec![],
        actor: None,
        input: Value::Null,
        config: json!({ "transition": "legal_done" }),
        fired_at: OffsetDateTime::now_utc(),
    };
    let out = action.run_action(&input, empty()).await.unwrap();
    assert_eq!(out.value.len(), 1);
    assert_eq!(out.value[0].transition, "legal_done");
    assert_eq!(out.value[0].token_id, "t1");
}

async fn misbehave(p: &Plugin, what: &str) -> Result<Decision, PluginError> {
    p.evaluate(&guard_input(json!({}), json!({ "do": what })), empty())
        .await
        .map(|o| o.value)
}

#[tokio::test]
async fn each_hostile_plugin_gets_its_typed_error_within_its_limit_and_the_next_call_works() {
    let (rt, _c) = runtime();
    let limits = PluginLimits {
        deadline: Duration::from_millis(100),
        memory_bytes: 16 << 20,
        ..Default::default()
    };
    let bad = load(&rt, wasm::MISBEHAVE).with_limits(limits);
    let good = load(&rt, wasm::AMOUNT_LIMIT);
    let check_good = || async {
        assert_eq!(
            decide(&good, json!({"amount": 1}), json!({"max": 2})).await,
            Decision::Allow
        )
    };

    // Fuel high enough that the deadline is what stops the loop.
    let deadline_bound = bad.clone().with_limits(PluginLimits {
        fuel: u64::MAX / 2,
        ..limits
    });
    let t = Instant::now();
    let e = misbehave(&deadline_bound, "loop").await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, PluginError::Timeout { limit_ms: 100, .. }), "{e}");
    assert!(
        took < Duration::from_millis(200),
        "loop stopped after {took:?}, more than 2x the deadline"
    );
    assert_eq!(e.to_string(), "plugin `misbehave` timed out after 100 ms");
    check_good().await;

    // With a generous deadline, fuel is what stops the loop.
    let fuel_bound = bad.clone().with_limits(PluginLimits {
        deadline: Duration::from_secs(5),
        fuel: 10_000_000,
        ..limits
    });
    assert!(matches!(
        misbehave(&fuel_bound, "loop").await,
        Err(PluginError::OutOfFuel { fuel: 10_000_000, .. })
    ));
    check_good().await;

    // Each of these is stopped by its own limit; the deadline is not the
    // subject, so it is generous.
    let bad = bad.with_limits(PluginLimits {
        deadline: Duration::from_secs(5),
        ..limits
    });
    let e = misbehave(&bad, "memory").await.unwrap_err();
    assert!(
        matches!(e, PluginError::MemoryLimit { limit_bytes, .. } if limit_bytes == 16 << 20),
        "{e}"
    );
    check_good().await;

    let e = misbehave(&bad, "recursion").await.unwrap_err();
    assert!(matches!(e, PluginError::StackOverflow { .. }), "{e}");
    check_good().await;

    let e = misbehave(&bad, "trap").await.unwrap_err();
    match &e {
        PluginError::Trap { plugin, message } => {
            assert_eq!(plugin, "misbehave");
            assert!(
                message.contains("unreachable") || message.contains("wasm trap"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    check_good().await;

    // Output is captured into the log, capped by the log budget; writes
    // past it are accepted and dropped (8 MiB of them: a longer deadline).
    let out = bad
        .evaluate(&guard_input(json!({}), json!({"do": "output"})), empty())
        .await
        .unwrap();
    assert_eq!(out.value, Decision::Allow);
    let logged: usize = out.logs.iter().map(|l| l.message.len()).sum();
    assert!(logged <= limits.log_bytes, "{logged} bytes logged");
    assert!(logged > 0);
    check_good().await;

    // A log flood is bounded by the budget (and by the deadline).
    match bad
        .with_limits(limits)
        .evaluate(&guard_input(json!({}), json!({"do": "log-flood"})), empty())
        .await
    {
        Ok(out) => assert!(out.logs.iter().map(|l| l.message.len()).sum::<usize>() <= limits.log_bytes),
        Err(e) => assert!(matches!(e, PluginError::Timeout { .. }), "{e}"),
    }
    check_good().await;
}

#[tokio::test]
async fn the_sandbox_grants_nothing() {
    let (rt, _c) = runtime();
    let bad = load(&rt, wasm::MISBEHAVE);
    // Nothing survives from one call to the next, though pool slots (and
    // their memory) are reused: statics and heap start as the image has them.
    for call in 0..20 {
        match misbehave(&bad, "remember").await {
            Ok(Decision::Deny { details, .. }) => {
                assert_eq!(details["seen"], 0, "call {call} saw an earlier call's static");
                assert_eq!(
                    details["dirty_words"], 0,
                    "call {call} saw an earlier call's heap"
                );
            }
            other => panic!("remember: {other:?}"),
        }
    }
    for what in ["file", "env", "socket", "dns"] {
        match misbehave(&bad, what).await {
            Ok(Decision::Deny { code, message, .. }) => {
                assert_eq!(code, "escape-blocked", "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // Clock and randomness are fixed per firing: same input, same answer;
    // another firing time, another answer.
    let a = misbehave(&bad, "random").await.unwrap();
    let b = misbehave(&bad, "random").await.unwrap();
    assert_eq!(a, b);
    let Decision::Deny { details, .. } = &a else {
        panic!("{a:?}")
    };
    let fired = datetime!(2026-11-23 10:30 UTC).unix_timestamp_nanos() as u64;
    assert_eq!(details["now_nanos"], json!(fired));
    let later = GuardInput {
        fired_at: datetime!(2026-11-24 10:30 UTC),
        ..guard_input(json!({}), json!({"do": "random"}))
    };
    let c = bad.evaluate(&later, empty()).await.unwrap().value;
    assert_ne!(a, c);
}

#[tokio::test]
async fn host_data_is_capped_per_call() {
    let (rt, _c) = runtime();
    let source = MemorySource::new();
    let t = token(json!({"blob": "y".repeat(10_000)}));
    for i in 0..50 {
        source.insert_token(Token {
            id: id(&format!("s{i}")),
            revision: 100 + i,
            ..t.clone()
        });
    }
    let bad = load(&rt, wasm::MISBEHAVE).with_limits(PluginLimits {
        host_data_bytes: 1 << 20,
        deadline: Duration::from_secs(5),
        ..Default::default()
    });
    let out = bad
        .evaluate(
            &guard_input(json!({}), json!({"do": "read-huge"})),
            Arc::new(source),
        )
        .await
        .unwrap();
    match out.value {
        Decision::Deny { code, message, .. } => {
            assert_eq!(code, "read-refused");
            assert!(
                message.contains("limit") && message.contains("1048576"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_components_are_refused_with_clear_errors() {
    let (rt, _c) = runtime();
    let good = std::fs::read(wasm::AMOUNT_LIMIT).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        (
            "garbage",
            b"hello, I am not wasm".to_vec(),
            "not a WebAssembly binary",
        ),
        ("core", b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        ("truncated", good[..good.len() / 2].to_vec(), ""),
    ];
    for (name, bytes, needle) in cases {
        match rt.load(name, &bytes) {
            Err(PluginError::InvalidComponent { plugin, reason }) => {
                assert_eq!(plugin, name);
                assert!(reason.contains(needle), "{name}: {reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    match rt.load_file(std::path::Path::new(wasm::WRONG_WORLD)) {
        Err(e @ PluginError::IncompatibleInterface { .. }) => {
            let text = e.to_string();
            assert!(text.contains("evaluate") && text.contains("run"), "{text}");
            assert!(text.contains("hello"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let mut reg = PluginRegistry::new();
    assert!(matches!(reg.get("nope"), Err(PluginError::NotFound { .. })));
    reg.insert(load(&rt, wasm::AMOUNT_LIMIT));
    let p = reg.resolve("amount-limit", None, World::Guard).unwrap();
    assert!(matches!(
        reg.resolve("amount-limit", Some("sha256:00"), World::Guard),
        Err(PluginError::DigestMismatch { .. })
    ));
    assert!(matches!(
        reg.resolve("amount-limit", Some(p.digest()), World::Action),
        Err(PluginError::WrongWorld { .. })
    ));
}

#[tokio::test]
async fn compiled_components_are_cached_by_digest() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let first = PluginRuntime::new(config.clone()).unwrap();
    let p = load(&first, wasm::AMOUNT_LIMIT);
    assert_eq!(p.load_source(), LoadSource::Compiled);
    assert_eq!(first.compile_count(), 1);
    drop(first);

    // A restart loads the artifact: no compilation.
    let second = PluginRuntime::new(config.clone()).unwrap();
    let q = load(&second, wasm::AMOUNT_LIMIT);
    assert_eq!(q.load_source(), LoadSource::Cache);
    assert_eq!(second.compile_count(), 0);
    assert_eq!(q.digest(), p.digest());
    assert_eq!(
        decide(&q, json!({"amount": 1}), json!({"max": 2})).await,
        Decision::Allow
    );

    // A changed file (here: one more custom section) is a new digest and
    // is compiled.
    let mut bytes = std::fs::read(wasm::AMOUNT_LIMIT).unwrap();
    bytes.extend_from_slice(&[0x00, 0x05, 0x04, b'n', b'o', b't', b'e']);
    let r = second.load("amount-limit", &bytes).unwrap();
    assert_eq!(r.load_source(), LoadSource::Compiled);
    assert_ne!(r.digest(), p.digest());
    assert_eq!(second.compile_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_evaluations_succeed() {
    let (rt, _c) = runtime();
    let p = load(&rt, wasm::AMOUNT_LIMIT);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                p.evaluate(&guard_input(json!({"amount": i}), json!({"max": 31})), empty())
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let d = t.await.unwrap().unwrap().value;
        if i <= 31 {
            assert_eq!(d, Decision::Allow);
            allowed += 1;
        } else {
            assert_eq!(deny_code(&d), "amount-over-limit");
        }
    }
    assert_eq!(allowed, 32);
}

#[tokio::test]
async fn plugins_read_real_tokens_and_leave_the_stream_untouched() {
    let env = env().await;
    let (rt, _c) = runtime();
    let def: WorkflowDefinition = WorkflowDefinition::parse(
        br#"{ "id": "orders", "places": ["open", "done"], "initial_place": "open",
              "transitions": [ { "id": "finish", "from": ["open"], "to": "done" },
                               { "id": "close", "from": ["done"], "to": "done" } ] }"#,
    )
    .unwrap();
    let stored = env.store.writer().put_definition(&def).await.unwrap();
    let writer = env.store.writer();
    let mut kids = Vec::new();
    for i in 0..3 {
        let c = writer
            .create_token(
                &stored,
                NewToken {
                    id: Some(id(&format!("kid{i}"))),
                    metadata: [("parent".to_string(), "p1".to_string())].into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        kids.push(c.token);
    }
    let siblings = load(&rt, wasm::SIBLINGS_IN_PLACE);
    let source: Arc<dyn TokenSource> = Arc::new(env.store.reader());
    let ask = |t: &Token| GuardInput {
        token: t.clone(),
        transition: def.transitions[1].clone(),
        config: json!({"place": "done"}),
        input: Value::Null,
        actor: None,
        fired_at: OffsetDateTime::now_utc(),
    };
    // kid0 waits for kid1 and kid2.
    let before = stream_state(&env.client, "CB_TEST").await;
    match siblings
        .evaluate(&ask(&kids[0]), source.clone())
        .await
        .unwrap()
        .value
    {
        Decision::Deny { code, details, .. } => {
            assert_eq!(code, "siblings-pending");
            let pending: Vec<&str> = details["pending"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect();
            assert_eq!(pending, ["kid1", "kid2"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stream_state(&env.client, "CB_TEST").await,
        before,
        "reads changed the stream"
    );
    for k in &kids[1..] {
        writer
            .move_token(
                &def,
                k,
                cb_host::store::Move {
                    transition: id("finish"),
                    to: id("done"),
                    actor: None,
                    input: Value::Null,
                    data: None,
                    msg_id: None,
                    idempotency: None,
                },
            )
            .await
            .unwrap();
    }
    let before = stream_state(&env.client, "CB_TEST").await;
    assert_eq!(
        siblings
            .evaluate(&ask(&kids[0]), source.clone())
            .await
            .unwrap()
            .value,
        Decision::Allow
    );
    assert_eq!(
        stream_state(&env.client, "CB_TEST").await,
        before,
        "reads changed the stream"
    );
}
