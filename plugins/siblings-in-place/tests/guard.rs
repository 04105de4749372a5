//! siblings-in-place's own tests: the guard reads other tokens through
//! `token-reader`, served here by the harness's fixture store.

use std::sync::OnceLock;

use cb_harness::WorkflowDefinition;
use cb_harness::{Harness, TokenFixture};
use serde_json::{Value, json};

fn guard() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

fn workflow() -> WorkflowDefinition {
    WorkflowDefinition::parse(
        json!({"id": "wf", "places": ["open", "review", "done"], "initial_place": "open",
               "transitions": [{"id": "close", "from": ["open", "review"], "to": "done"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn token(v: Value) -> TokenFixture {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn every_pending_sibling_is_reported_with_its_place() {
    let (message, details) = guard()
        .call()
        .config(json!({"place": "done"}))
        .fixture_workflow(workflow())
        .fixture_token(token(
            json!({"id": "a", "place": "open", "metadata": {"parent": "p"}}),
        ))
        .fixture_token(token(
            json!({"id": "b", "place": "review", "metadata": {"parent": "p"}}),
        ))
        .fixture_token(token(
            json!({"id": "c", "place": "done", "metadata": {"parent": "p"}}),
        ))
        .fixture_token(token(
            json!({"id": "x", "place": "open", "metadata": {"parent": "other"}}),
        ))
        .token(token(
            json!({"id": "a", "place": "open", "metadata": {"parent": "p"}}),
        ))
        .assert_denies("siblings-pending")
        .await;
    assert!(message.starts_with("1 sibling"), "{message}");
    assert_eq!(details["pending"], json!([{"id": "b", "place": "review"}]));
}

#[tokio::test]
async fn the_last_sibling_may_close_and_the_key_is_configurable() {
    guard()
        .call()
        .config(json!({"place": "done", "key": "order"}))
        .fixture_workflow(workflow())
        .fixture_token(token(
            json!({"id": "a", "place": "done", "metadata": {"order": "o1"}}),
        ))
        .fixture_token(token(
            json!({"id": "b", "place": "open", "metadata": {"parent": "o1"}}),
        ))
        .token(token(
            json!({"id": "c", "place": "open", "metadata": {"order": "o1"}}),
        ))
        .assert_allows()
        .await;
}

#[tokio::test]
async fn an_unknown_workflow_is_a_read_failure_not_an_allow() {
    guard()
        .call()
        .config(json!({"place": "done"}))
        .token(token(json!({"id": "a", "metadata": {"parent": "p"}})))
        .assert_denies("read-failed")
        .await;
}
