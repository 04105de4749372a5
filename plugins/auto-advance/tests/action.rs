//! auto-advance's own tests: the follow-up requests it makes, checked
//! exactly, and its failure without config.

use std::sync::OnceLock;

use cb_harness::TransitionRequest;
use cb_harness::{Harness, TokenFixture};
use serde_json::json;

fn action() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

#[tokio::test]
async fn requests_the_configured_transition_with_its_input() {
    let token: TokenFixture = serde_json::from_value(json!({"id": "t7", "workflow_id": "orders"})).unwrap();
    let logs = action()
        .call()
        .config(json!({"transition": "ship", "input": {"carrier": "dhl"}}))
        .token(token)
        .event_sequence(99)
        .assert_requests(&[serde_json::from_value::<TransitionRequest>(json!({
            "workflow_id": "orders", "token_id": "t7", "transition": "ship", "input": {"carrier": "dhl"}
        }))
        .unwrap()])
        .await;
    assert_eq!(logs, ["token t7 requested ship after event 99"]);
}

#[tokio::test]
async fn without_a_transition_in_config_it_fails_and_requests_nothing() {
    let message = action().call().config(json!({})).assert_error("failed").await;
    assert!(message.contains("config needs `transition`"), "{message}");
}
