//! audit-log's own tests: one line per event, at the configured level,
//! and no follow-up requests.

use std::sync::OnceLock;

use cb_harness::{Harness, TokenFixture};
use serde_json::json;

fn action() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

#[tokio::test]
async fn logs_one_line_describing_the_move_and_requests_nothing() {
    let token: TokenFixture =
        serde_json::from_value(json!({"id": "t1", "workflow_id": "expense", "revision": 4})).unwrap();
    let logs = action()
        .call()
        .config(json!({"level": "warn"}))
        .token(token)
        .actor("ana")
        .event_sequence(12)
        .assert_requests(&[])
        .await;
    assert_eq!(
        logs,
        ["audit: expense/t1 from -> to by ana via t (event 12, revision 4)"]
    );
}

#[tokio::test]
async fn without_an_actor_it_logs_a_dash() {
    let logs = action().call().assert_requests(&[]).await;
    assert_eq!(logs.len(), 1);
    assert!(logs[0].contains(" by - via "), "{}", logs[0]);
}
