//! The in-memory fixture source (plugin test harness) and the JetStream
//! reader (production) answer the same reads the same way.

mod common;

use std::sync::Arc;

use cb_host::store::{MemorySource, Missing, NewToken, StoreError, TokenSource};
use common::*;

/// Every read plugins can make, against one source, as comparable values.
async fn observe(source: &dyn TokenSource) -> Vec<String> {
    let mut seen = Vec::new();
    for t in ["a", "b", "c", "ghost"] {
        seen.push(format!(
            "{:?}",
            source
                .get_token(&id("expense"), &id(t))
                .await
                .map(|t| (t.id, t.place, t.revision, t.data))
        ));
    }
    for place in ["draft", "submitted", "paid"] {
        let mut cursor = None;
        loop {
            let page = source
                .list_place(&id("expense"), &id(place), cursor, 2, usize::MAX)
                .await
                .unwrap();
            seen.push(format!(
                "{place}: {:?}",
                page.items
                    .iter()
                    .map(|t| (t.id.to_string(), t.revision))
                    .collect::<Vec<_>>()
            ));
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    seen.push(format!(
        "{:?}",
        source.get_definition(&id("expense")).await.map(|d| d.version)
    ));
    match source.get_definition(&id("nope")).await {
        Err(StoreError::NotFound(Missing::Workflow(w))) => seen.push(format!("missing workflow {w}")),
        other => seen.push(format!("unexpected {other:?}")),
    }
    match source.get_token(&id("expense"), &id("ghost")).await {
        Err(StoreError::NotFound(Missing::Token { token, .. })) => {
            seen.push(format!("missing token {token}"))
        }
        other => seen.push(format!("unexpected {other:?}")),
    }
    seen
}

#[tokio::test]
async fn memory_and_jetstream_sources_agree() {
    let env = env().await;
    let def = apply(&env.store, EXPENSE).await;
    let writer = env.store.writer();
    for (i, t) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let c = writer
            .create_token(
                &def,
                NewToken {
                    id: Some(id(t)),
                    data: serde_json::json!({"n": i}),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if i % 2 == 1 {
            writer
                .move_token(
                    &def.definition,
                    &c.token,
                    cb_host::store::Move {
                        transition: id("submit"),
                        to: id("submitted"),
                        actor: None,
                        input: serde_json::Value::Null,
                        data: None,
                        msg_id: None,
                        idempotency: None,
                    },
                )
                .await
                .unwrap();
        }
    }
    let reader = env.store.reader();
    // The same state, loaded into memory from what JetStream holds.
    let memory = MemorySource::new();
    memory.insert_definition(reader.get_definition(&id("expense")).await.unwrap());
    for place in ["draft", "submitted"] {
        for t in reader.list_place_all(&id("expense"), &id(place)).await.unwrap() {
            memory.insert_token(t);
        }
    }
    let jetstream: Arc<dyn TokenSource> = Arc::new(reader);
    let a = observe(jetstream.as_ref()).await;
    let b = observe(&memory).await;
    assert_eq!(a, b);
    assert!(
        a.iter().any(|l| l.starts_with("draft: ") && l.contains("\"a\"")),
        "{a:?}"
    );
}
