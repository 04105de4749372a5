//! The storage layer against a real nats-server.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream;
use cb_host::model::{EventKind, Id, Token, WorkflowDefinition};
use cb_host::store::{Missing, Move, NewToken, Store, StoreError, StoreReader};
use common::*;
use serde_json::json;

fn mv(transition: &str, to: &str) -> Move {
    Move {
        transition: id(transition),
        to: id(to),
        actor: Some("test".into()),
        input: json!(null),
        data: None,
        msg_id: None,
        idempotency: None,
    }
}

/// The raw stored message behind a token, read from the stream leader.
async fn raw(client: &async_nats::Client, seq: u64) -> jetstream::message::StreamMessage {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("CB_TEST").await.unwrap();
    stream.get_raw_message(seq).await.unwrap()
}

#[tokio::test]
async fn round_trip_of_every_operation_with_true_metadata() {
    let env = env().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());

    // Definitions: stored, versioned, idempotent on re-apply.
    let v1 = apply(&env.store, EXPENSE).await;
    let again = apply(&env.store, EXPENSE).await;
    assert_eq!(
        again.version, v1.version,
        "applying the same definition writes nothing"
    );
    assert_eq!(reader.get_definition(&id("expense")).await.unwrap(), v1);
    assert_eq!(
        reader
            .get_definition_version(&id("expense"), v1.version)
            .await
            .unwrap(),
        v1
    );
    let mut changed = v1.definition.clone();
    changed.name = "Expense approval v2".into();
    let v2 = writer.put_definition(&changed).await.unwrap();
    assert!(v2.version > v1.version);
    assert_eq!(
        reader
            .get_definition(&id("expense"))
            .await
            .unwrap()
            .definition
            .name,
        "Expense approval v2"
    );
    assert_eq!(
        reader
            .get_definition_version(&id("expense"), v1.version)
            .await
            .unwrap(),
        v1
    );
    let versions = reader.definition_versions(&id("expense")).await.unwrap();
    assert_eq!(
        versions.iter().map(|d| d.version).collect::<Vec<_>>(),
        vec![v1.version, v2.version]
    );
    apply(&env.store, PINGPONG).await;
    let all = reader.list_workflows().await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.definition.id.as_str()).collect::<Vec<_>>(),
        ["expense", "pingpong"]
    );
    assert_eq!(all[0].version, v2.version, "listing shows the latest version");

    // Create: pinned to the current version, in the initial place.
    let created = writer
        .create_token(
            &v2,
            NewToken {
                id: Some(id("t1")),
                data: json!({"amount": 10}),
                metadata: [("owner".to_string(), "ana".to_string())].into(),
                actor: Some("ana".into()),
                idempotency: None,
            },
        )
        .await
        .unwrap();
    let t = reader.get_token(&id("expense"), &id("t1")).await.unwrap();
    assert_eq!(t.place, "draft");
    assert_eq!(t.definition_version, v2.version);
    assert_eq!(t.revision, created.token.revision);
    assert_eq!(t.data, json!({"amount": 10}));
    assert_eq!(t.metadata["owner"], "ana");
    // Metadata is the stored message's own.
    let m = raw(&env.client, t.revision).await;
    assert_eq!(m.subject.as_str(), t.subject);
    assert_eq!(t.subject, "cb.workflows.expense.places.draft.tokens.t1");
    assert_eq!(m.time, t.updated_at);
    assert_eq!(
        t.created_at, t.updated_at,
        "created_at of a first state is its own timestamp"
    );
    let ev = raw(&env.client, created.event_sequence).await;
    assert_eq!(ev.subject.as_str(), "cb.workflows.expense.events.lifecycle.t1");

    // Update in place.
    let updated = writer
        .update_token(&t, Some(json!({"amount": 20})), None, None)
        .await
        .unwrap();
    let t2 = reader.get_token(&id("expense"), &id("t1")).await.unwrap();
    assert_eq!(t2.revision, updated.token.revision);
    assert_eq!(t2.data, json!({"amount": 20}));
    assert_eq!(t2.created_at, t.created_at, "created_at carries forward");
    assert_eq!(t2.metadata, t.metadata);

    // Move.
    let moved = writer
        .move_token(&v2.definition, &t2, mv("submit", "submitted"))
        .await
        .unwrap();
    let t3 = reader.get_token(&id("expense"), &id("t1")).await.unwrap();
    assert_eq!(t3.place, "submitted");
    assert_eq!(t3.revision, moved.token.revision);
    assert_eq!(raw(&env.client, t3.revision).await.subject.as_str(), t3.subject);
    assert_eq!(t3.created_at, t.created_at);
    assert_eq!(reader.find_token(&id("t1")).await.unwrap(), t3);
    assert_eq!(
        reader
            .get_token_from_leader(&id("expense"), &id("t1"))
            .await
            .unwrap(),
        t3
    );

    // History: created, updated, transition; each event's revision exists
    // and is the state it recorded.
    let h = reader
        .history(&id("expense"), &id("t1"), None, 100)
        .await
        .unwrap();
    assert_eq!(h.next, None);
    assert_eq!(h.items.len(), 3);
    assert!(matches!(h.items[0].kind, EventKind::Created { ref place, .. } if place == "draft"));
    assert!(matches!(h.items[1].kind, EventKind::Updated { .. }));
    match &h.items[2].kind {
        EventKind::Transition {
            transition,
            from,
            to,
            actor,
            ..
        } => {
            assert_eq!(
                (transition.as_str(), from.as_str(), to.as_str()),
                ("submit", "draft", "submitted")
            );
            assert_eq!(actor.as_deref(), Some("test"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.items[0].revision, Some(t.revision));
    assert_eq!(h.items[1].revision, Some(t2.revision));
    assert_eq!(h.items[2].revision, Some(t3.revision));
    assert_eq!(h.items[2].from_revision, t2.revision);
    assert_eq!(h.items[2].sequence, moved.event_sequence);
    for e in &h.items {
        assert_eq!(raw(&env.client, e.sequence).await.time, e.time);
    }

    // Complete: gone from get and listings, final data in the event.
    let done = writer.complete_token(&t3, Some("ana".into())).await.unwrap();
    assert!(matches!(
        reader.get_token(&id("expense"), &id("t1")).await,
        Err(StoreError::NotFound(Missing::Token { .. }))
    ));
    assert!(
        reader
            .list_place_all(&id("expense"), &id("submitted"))
            .await
            .unwrap()
            .is_empty()
    );
    let h = reader
        .history(&id("expense"), &id("t1"), None, 100)
        .await
        .unwrap();
    let last = h.items.last().unwrap();
    assert_eq!(last.sequence, done);
    assert!(matches!(&last.kind, EventKind::Completed { data, .. } if data == &json!({"amount": 20})));
}

#[tokio::test]
async fn after_a_move_only_the_new_place_lists_the_token() {
    let env = env().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = apply(&env.store, EXPENSE).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        let c = writer
            .create_token(
                &def,
                NewToken {
                    id: Some(id(&format!("t{i}"))),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        tokens.push(c.token);
    }
    let moved = writer
        .move_token(&def.definition, &tokens[2], mv("submit", "submitted"))
        .await
        .unwrap();
    let draft: Vec<String> = reader
        .list_place_all(&id("expense"), &id("draft"))
        .await
        .unwrap()
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(draft, ["t0", "t1", "t3", "t4"]);
    let submitted = reader
        .list_place_all(&id("expense"), &id("submitted"))
        .await
        .unwrap();
    assert_eq!(submitted.len(), 1);
    assert_eq!(
        submitted[0],
        reader.get_token(&id("expense"), &id("t2")).await.unwrap()
    );
    assert_eq!(submitted[0].revision, moved.token.revision);
    // A self-loop in place keeps one message on the subject.
    let back = writer
        .move_token(&def.definition, &moved.token, mv("noop", "submitted"))
        .await
        .unwrap();
    let submitted = reader
        .list_place_all(&id("expense"), &id("submitted"))
        .await
        .unwrap();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].revision, back.token.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_movers_of_one_token_have_exactly_one_winner_per_round() {
    let env = env().await;
    let reader = env.store.reader();
    let def = Arc::new(apply(&env.store, PINGPONG).await);
    let writer = env.store.writer();
    writer
        .create_token(
            &def,
            NewToken {
                id: Some(id("ball")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for round in 0..50 {
        let observed = reader.get_token(&id("pingpong"), &id("ball")).await.unwrap();
        let to = if observed.place == "ping" { "pong" } else { "ping" };
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (w, d, t) = (env.store.writer(), def.clone(), observed.clone());
                let m = mv("hit", to);
                tokio::spawn(async move { w.move_token(&d.definition, &t, m).await })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict {
                    token,
                    expected,
                    actual,
                }) => {
                    assert_eq!(token, "ball");
                    assert_eq!(expected, observed.revision);
                    assert!(
                        actual.is_none_or(|a| a > observed.revision),
                        "round {round}: {actual:?}"
                    );
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        let now = reader.get_token(&id("pingpong"), &id("ball")).await.unwrap();
        assert_eq!(now.place, to);
    }
    let h = reader
        .history(&id("pingpong"), &id("ball"), None, 1000)
        .await
        .unwrap();
    assert_eq!(h.items.len(), 51, "one creation and exactly 50 transitions");
}

#[tokio::test]
async fn creating_an_existing_token_is_a_conflict_in_any_place() {
    let env = env().await;
    let writer = env.store.writer();
    let def = apply(&env.store, EXPENSE).await;
    let t = writer
        .create_token(
            &def,
            NewToken {
                id: Some(id("dup")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    writer
        .move_token(&def.definition, &t.token, mv("submit", "submitted"))
        .await
        .unwrap();
    let before = stream_state(&env.client, "CB_TEST").await;
    let e = writer
        .create_token(
            &def,
            NewToken {
                id: Some(id("dup")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { expected: 0, .. }), "{e}");
    assert_eq!(stream_state(&env.client, "CB_TEST").await, before);
}

#[tokio::test]
async fn a_token_with_ten_thousand_transitions_is_still_one_request_to_get() {
    // Memory storage: this test is about read cost, not durability.
    let env = env_memory().await;
    let writer = env.store.writer();
    let def = apply(&env.store, PINGPONG).await;
    let mut t = writer
        .create_token(
            &def,
            NewToken {
                id: Some(id("busy")),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .token;
    for i in 0..10_000 {
        let to = if i % 2 == 0 { "pong" } else { "ping" };
        t = writer
            .move_token(&def.definition, &t, mv("hit", to))
            .await
            .unwrap()
            .token;
    }
    // A separate connection so its counters only see the reads.
    let client = connect(&env.server.url()).await;
    let store = Store::open(
        client.clone(),
        config().with_storage(cb_host::store::StorageKind::Memory),
    )
    .await
    .unwrap();
    let reader = store.reader();
    let before = client.statistics().out_messages.load(Ordering::Relaxed);
    let got = reader.get_token(&id("pingpong"), &id("busy")).await.unwrap();
    let after = client.statistics().out_messages.load(Ordering::Relaxed);
    assert_eq!(after - before, 1, "get-by-id is one request");
    assert_eq!(got.revision, t.revision);
    assert_eq!(got.place, "ping");

    // History pages: 10,001 events in pages of 1,000.
    let mut cursor = None;
    let mut pages = 0;
    let mut seen = 0;
    let mut last_seq = 0;
    loop {
        let page = reader
            .history(&id("pingpong"), &id("busy"), cursor, 1000)
            .await
            .unwrap();
        assert!(page.items.len() <= 1000);
        for e in &page.items {
            assert!(e.sequence > last_seq, "history is in stream order");
            last_seq = e.sequence;
        }
        seen += page.items.len();
        pages += 1;
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, 10_001);
    assert!(pages >= 11, "{pages} pages");
    // No backlog of old states: each token subject holds at most its live
    // state over one old tombstone (the next move out rolls both up).
    let per_subject = subject_counts(&env.client, "cb.workflows.pingpong.places.>").await;
    assert_eq!(per_subject.len(), 2, "{per_subject:?}");
    assert!(per_subject.values().all(|&n| n <= 2), "{per_subject:?}");
    let state = stream_state(&env.client, "CB_TEST").await;
    assert!(state.messages <= 4 + 10_001 + 1, "{}", state.messages);
}

#[tokio::test]
async fn reads_never_consume() {
    let env = env().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = apply(&env.store, EXPENSE).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let t = writer
            .create_token(
                &def,
                NewToken {
                    id: Some(id(&format!("r{i}"))),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if i % 2 == 0 {
            writer
                .move_token(&def.definition, &t.token, mv("submit", "submitted"))
                .await
                .unwrap();
        }
        ids.push(t.token.id);
    }
    let before = stream_state(&env.client, "CB_TEST").await;
    assert!(before.consumers.is_empty());
    for i in 0..1000 {
        let t = reader
            .get_token(&id("expense"), &ids[i % ids.len()])
            .await
            .unwrap();
        assert_eq!(t.id, ids[i % ids.len()]);
    }
    for i in 0..100 {
        let place = if i % 2 == 0 { "draft" } else { "submitted" };
        assert_eq!(
            reader
                .list_place_all(&id("expense"), &id(place))
                .await
                .unwrap()
                .len(),
            10
        );
    }
    for _ in 0..10 {
        reader.history(&id("expense"), &ids[0], None, 10).await.unwrap();
        reader.list_workflows().await.unwrap();
        reader
            .get_token_from_leader(&id("expense"), &ids[1])
            .await
            .unwrap();
    }
    assert_eq!(stream_state(&env.client, "CB_TEST").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_past_the_multi_last_limit() {
    let env = env_memory().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = Arc::new(apply(&env.store, EXPENSE).await);
    let tasks: Vec<_> = (0..1500)
        .map(|i| {
            let (w, d) = (writer.clone(), def.clone());
            tokio::spawn(async move {
                let t = w
                    .create_token(
                        &d,
                        NewToken {
                            id: Some(id(&format!("p{i:04}"))),
                            ..Default::default()
                        },
                    )
                    .await?;
                if i % 3 == 0 {
                    w.move_token(&d.definition, &t.token, mv("submit", "submitted"))
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let draft = reader.list_place_all(&id("expense"), &id("draft")).await.unwrap();
    assert_eq!(draft.len(), 1000);
    assert!(
        draft
            .iter()
            .all(|t| t.id.as_str()[1..].parse::<u32>().unwrap() % 3 != 0)
    );
    let submitted = reader
        .list_place_all(&id("expense"), &id("submitted"))
        .await
        .unwrap();
    assert_eq!(submitted.len(), 500);
    // Small pages walk the same set.
    let mut cursor = None;
    let mut n = 0;
    loop {
        let p = reader
            .list_place(&id("expense"), &id("draft"), cursor, 128)
            .await
            .unwrap();
        n += p.items.len();
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(n, 1000);
}

/// Checks the invariants after a crash: every token is live in exactly one
/// place, and its newest event agrees with its state.
async fn assert_consistent(reader: &StoreReader, def: &WorkflowDefinition, ids: &[Id]) -> usize {
    let mut where_: HashMap<Id, Vec<Token>> = HashMap::new();
    for place in &def.places {
        for t in reader.list_place_all(&def.id, place).await.unwrap() {
            where_.entry(t.id.clone()).or_default().push(t);
        }
    }
    for tid in ids {
        let states = where_.get(tid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(states.len(), 1, "token {tid} is live in {} places", states.len());
        let t = &states[0];
        assert_eq!(&reader.get_token(&def.id, tid).await.unwrap(), t);
        let h = reader.history(&def.id, tid, None, 10_000).await.unwrap();
        let last = h.items.last().expect("history");
        assert_eq!(
            last.revision,
            Some(t.revision),
            "token {tid}: newest event records the live state"
        );
        match &last.kind {
            EventKind::Transition { to, .. } => assert_eq!(to, &t.place),
            EventKind::Created { place, .. } => assert_eq!(place, &t.place),
            other => panic!("{other:?}"),
        }
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_moves_loses_and_doubles_nothing() {
    let mut env = env().await;
    let def = Arc::new(apply(&env.store, PINGPONG).await);
    let writer = env.store.writer();
    let mut ids = Vec::new();
    for i in 0..200 {
        let t = writer
            .create_token(
                &def,
                NewToken {
                    id: Some(id(&format!("k{i}"))),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ids.push(t.token.id);
    }
    let (committed, mut progress) = tokio::sync::watch::channel(0u64);
    let committed = Arc::new(committed);
    // Each mover finishes the step it is in before stopping: a cancelled
    // caller's write may still commit, so cancelling mid-step would race
    // with the checks below.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (writer, reader, def, ids, committed, stop) = (
            env.store.writer(),
            env.store.reader(),
            def.clone(),
            ids.clone(),
            committed.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let tid = &ids[i % ids.len()];
                i += 8;
                let step = async {
                    let t = reader.get_token(&def.definition.id, tid).await?;
                    let to = if t.place == "ping" { "pong" } else { "ping" };
                    writer.move_token(&def.definition, &t, mv("hit", to)).await
                };
                match step.await {
                    Ok(_) => committed.send_modify(|n| *n += 1),
                    // A commit whose answer the kill took is unknown, never a
                    // wrong answer.
                    Err(
                        StoreError::Conflict { .. }
                        | StoreError::Timeout { .. }
                        | StoreError::Indeterminate { .. }
                        | StoreError::Unavailable { .. },
                    ) => errors += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            errors
        }));
    }
    // Let moves flow, kill the server mid-stream, restart it on the same
    // store, and let the movers (reconnecting on their own) go on.
    progress.wait_for(|&n| n >= 300).await.unwrap();
    env.server.kill();
    env.server.restart();
    let at_restart = *progress.borrow();
    progress.wait_for(|&n| n >= at_restart + 300).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let checked = assert_consistent(&env.store.reader(), &def.definition, &ids).await;
    assert_eq!(checked, 200);
}

#[tokio::test]
async fn start_up_reports_a_mismatched_stream_and_changes_nothing() {
    let server = cb_test_support::NatsServer::start();
    let client = connect(&server.url()).await;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "CB_TEST".into(),
        subjects: vec!["cb.workflows.>".into()],
        max_age: std::time::Duration::from_secs(3600),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("cb.workflows.x.definition", "user data".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let before = stream_state(&client, "CB_TEST").await;
    let config_before = js
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let e = Store::open(client.clone(), config()).await.unwrap_err();
    match &e {
        StoreError::StreamMismatch { stream, differences } => {
            assert_eq!(stream, "CB_TEST");
            let all = differences.join("\n");
            for needle in ["max_age", "allow_rollup_hdrs", "allow_atomic", "allow_msg_ttl"] {
                assert!(all.contains(needle), "{needle} missing from {all}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("nothing was changed"));
    assert_eq!(stream_state(&client, "CB_TEST").await, before);
    let config_after = js
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(config_after.max_age, config_before.max_age);
    assert!(!config_after.allow_atomic_publish);
}

#[tokio::test]
async fn start_up_against_a_compatible_stream_changes_nothing() {
    let env = env().await;
    let def = apply(&env.store, EXPENSE).await;
    env.store
        .writer()
        .create_token(&def, NewToken::default())
        .await
        .unwrap();
    let js = jetstream::new(env.client.clone());
    let before = stream_state(&env.client, "CB_TEST").await;
    let config_before = js
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    for _ in 0..2 {
        Store::open(env.client.clone(), config()).await.unwrap();
    }
    assert_eq!(stream_state(&env.client, "CB_TEST").await, before);
    let config_after = js
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        serde_json::to_value(&config_before).unwrap(),
        serde_json::to_value(&config_after).unwrap()
    );
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_and_writes_nothing() {
    // A small max_payload so the size check is cheap to reach.
    let env = env_with(config(), "max_payload: 65536\n").await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = apply(&env.store, EXPENSE).await;
    let t = writer
        .create_token(
            &def,
            NewToken {
                id: Some(id("ok")),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .token;
    let before = stream_state(&env.client, "CB_TEST").await;

    // Ids that would split or widen a subject cannot even be constructed.
    for bad in ["a.b", "*", ">", "a b", "", "ünï", &"x".repeat(10_000)] {
        assert!(Id::new(bad).is_err(), "{bad:?}");
    }
    // Invalid definitions.
    let mut invalid = def.definition.clone();
    invalid.transitions[0].to = Some(id("nowhere"));
    assert!(matches!(
        writer.put_definition(&invalid).await,
        Err(StoreError::InvalidDefinition(_))
    ));
    let mut invalid = def.definition.clone();
    invalid.places.push(id("draft"));
    assert!(matches!(
        writer.put_definition(&invalid).await,
        Err(StoreError::InvalidDefinition(_))
    ));
    // Unknown place.
    let e = writer
        .move_token(&def.definition, &t, mv("submit", "nowhere"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(Missing::Place { .. })), "{e}");
    // Oversized data, on create, move and update.
    let big = json!({ "blob": "x".repeat(70_000) });
    let e = writer
        .create_token(
            &def,
            NewToken {
                data: big.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::PayloadTooLarge { max: 65536, .. }), "{e}");
    let e = writer
        .move_token(
            &def.definition,
            &t,
            Move {
                data: Some(big.clone()),
                ..mv("submit", "submitted")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::PayloadTooLarge { .. }), "{e}");
    let e = writer.update_token(&t, Some(big), None, None).await.unwrap_err();
    assert!(matches!(e, StoreError::PayloadTooLarge { .. }), "{e}");
    // Stale revision.
    let mut stale = t.clone();
    stale.revision -= 1;
    assert!(matches!(
        writer
            .move_token(&def.definition, &stale, mv("submit", "submitted"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // Unknown workflow, token, version.
    assert!(matches!(
        reader.get_definition(&id("nope")).await,
        Err(StoreError::NotFound(Missing::Workflow(_)))
    ));
    assert!(matches!(
        reader.get_definition_version(&id("expense"), t.revision).await,
        Err(StoreError::NotFound(Missing::WorkflowVersion(..)))
    ));
    assert!(matches!(
        reader.get_token(&id("expense"), &id("nope")).await,
        Err(StoreError::NotFound(_))
    ));
    // Bad prefix and stream names.
    let e = Store::open(env.client.clone(), config().with_prefix("cb.*"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    let e = Store::open(env.client.clone(), config().with_stream("A.B"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");

    assert_eq!(
        stream_state(&env.client, "CB_TEST").await,
        before,
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_keeps_every_concurrent_write_exact() {
    let env = env().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = Arc::new(apply(&env.store, EXPENSE).await);
    let js = jetstream::new(env.client.clone());
    let last_seq = async || {
        let mut stream = js.get_stream("CB_TEST").await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    };
    let (seq0, stats0) = (last_seq().await, writer.commit_stats());
    let tasks: Vec<_> = (0..256)
        .map(|i| {
            let (w, d) = (writer.clone(), def.clone());
            tokio::spawn(async move {
                let c = w
                    .create_token(
                        &d,
                        NewToken {
                            id: Some(id(&format!("g{i}"))),
                            ..Default::default()
                        },
                    )
                    .await?;
                let m = w
                    .move_token(&d.definition, &c.token, mv("submit", "submitted"))
                    .await?;
                Ok::<_, StoreError>((c, m))
            })
        })
        .collect();
    let mut by_id = BTreeMap::new();
    let mut created = Vec::new();
    for t in tasks {
        let (c, m) = t.await.unwrap().unwrap();
        assert!(m.token.revision > c.token.revision);
        by_id.insert(m.token.id.clone(), m);
        created.push(c);
    }
    // The counters add up to what the stream stored: 512 writes, every
    // message of theirs, in batches shared by more than one write.
    let stats = writer.commit_stats().since(&stats0);
    assert_eq!(stats.writes, 512, "{stats:?}");
    assert_eq!(stats.messages, last_seq().await - seq0, "{stats:?}");
    assert!(stats.batches >= 2 && stats.batches < stats.writes, "{stats:?}");
    assert!(stats.commit_time > std::time::Duration::ZERO, "{stats:?}");
    // A refused write is not counted.
    let stale = writer
        .move_token(&def.definition, &created[0].token, mv("submit", "submitted"))
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    assert_eq!(writer.commit_stats().since(&stats0), stats);
    for (tid, m) in &by_id {
        let got = reader.get_token(&id("expense"), tid).await.unwrap();
        assert_eq!(
            got.revision, m.token.revision,
            "{tid}: returned revision is the stored one"
        );
        // `submit` has no actions: its event is history only, on the
        // subject the action feed does not deliver.
        let ev = raw(&env.client, m.event_sequence).await;
        assert_eq!(
            ev.subject.as_str(),
            format!("cb.workflows.expense.events.moves.{tid}")
        );
    }
}

#[tokio::test]
async fn a_three_node_cluster_serves_the_store_with_read_your_writes() {
    let cluster = cb_test_support::Cluster::start();
    let client = connect_all(&cluster.urls()).await;
    let store = Store::open(client.clone(), config().with_replicas(3))
        .await
        .unwrap();
    let def = apply(&store, EXPENSE).await;
    let c = store
        .writer()
        .create_token(
            &def,
            NewToken {
                id: Some(id("c1")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let m = store
        .writer()
        .move_token(&def.definition, &c.token, mv("submit", "submitted"))
        .await
        .unwrap();
    let t = store
        .reader()
        .get_token_from_leader(&id("expense"), &id("c1"))
        .await
        .unwrap();
    assert_eq!(t.revision, m.token.revision);
    assert_eq!(t.place, "submitted");
    let info = jetstream::new(client)
        .get_stream("CB_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_msg_id_is_refused_alone_and_its_group_still_commits() {
    let env = env().await;
    let (reader, writer) = (env.store.reader(), env.store.writer());
    let def = Arc::new(apply(&env.store, PINGPONG).await);
    let mut tokens = Vec::new();
    for i in 0..20 {
        let c = writer
            .create_token(
                &def,
                NewToken {
                    id: Some(id(&format!("d{i}"))),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        tokens.push(c.token);
    }
    let with_id = |key: &str| Move {
        msg_id: Some(key.to_string()),
        idempotency: None,
        ..mv("hit", "pong")
    };
    writer
        .move_token(&def.definition, &tokens[0], with_id("once"))
        .await
        .unwrap();
    // The same key again, concurrently with 19 other moves that may share
    // its batch: only the repeat is refused.
    let tasks: Vec<_> = tokens[1..]
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, t)| {
            let (w, d) = (writer.clone(), def.clone());
            let m = if i == 7 {
                with_id("once")
            } else {
                with_id(&format!("k{i}"))
            };
            tokio::spawn(async move { w.move_token(&d.definition, &t, m).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i == 7 {
            assert!(
                matches!(r, Err(StoreError::Duplicate { ref token }) if token == "d8"),
                "{r:?}"
            );
        } else {
            r.unwrap();
        }
    }
    assert_eq!(
        reader.get_token(&id("pingpong"), &id("d8")).await.unwrap().place,
        "ping",
        "nothing written"
    );
    assert_eq!(
        reader
            .list_place_all(&id("pingpong"), &id("pong"))
            .await
            .unwrap()
            .len(),
        19
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_applying_the_same_definition_at_once_all_succeed_with_one_version() {
    let env = env().await;
    let def = Arc::new(WorkflowDefinition::parse(EXPENSE.as_bytes()).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (w, d) = (env.store.writer(), def.clone());
            tokio::spawn(async move { w.put_definition(&d).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap().version);
    }
    versions.dedup();
    assert_eq!(versions.len(), 1, "{versions:?}");
    // A different definition racing the same way still gets a Conflict.
    let current = env.store.reader().get_definition(&id("expense")).await.unwrap();
    let mut a = (*def).clone();
    a.name = "A".into();
    let mut b = (*def).clone();
    b.name = "B".into();
    let (wa, wb) = (env.store.writer(), env.store.writer());
    let (ra, rb) = tokio::join!(wa.put_definition(&a), wb.put_definition(&b));
    let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert!(ok >= 1, "{ra:?} {rb:?}");
    for r in [ra, rb] {
        if let Err(e) = r {
            assert!(
                matches!(e, StoreError::Conflict { expected, .. } if expected == current.version),
                "{e}"
            );
        }
    }
}
