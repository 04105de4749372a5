//! amount-limit's own tests. `cargo test` builds this crate for
//! wasm32-wasip2 and runs the component with the host's harness: the
//! production runtime and limits, no NATS.

use std::sync::OnceLock;

use cb_harness::Harness;
use serde_json::json;

fn guard() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

#[tokio::test]
async fn amounts_up_to_the_limit_pass() {
    for amount in [json!(0), json!(999.99), json!(1000)] {
        guard()
            .call()
            .config(json!({"max": 1000}))
            .data(json!({ "amount": amount }))
            .assert_allows()
            .await;
    }
}

#[tokio::test]
async fn amounts_over_the_limit_are_denied_with_the_figures() {
    let (message, details) = guard()
        .call()
        .config(json!({"max": 1000}))
        .data(json!({"amount": 1500}))
        .assert_denies("amount-over-limit")
        .await;
    assert_eq!(message, "amount 1500 exceeds the limit of 1000");
    assert_eq!(details, json!({"amount": 1500.0, "max": 1000.0}));
}

#[tokio::test]
async fn a_missing_or_non_numeric_amount_is_denied() {
    for data in [json!({}), json!({"amount": "12"}), json!({"amount": null})] {
        guard()
            .call()
            .config(json!({"max": 1000}))
            .data(data)
            .assert_denies("amount-missing")
            .await;
    }
}

#[tokio::test]
async fn a_bad_config_is_reported_not_allowed() {
    for config in [json!(null), json!({}), json!({"max": "1000"})] {
        guard()
            .call()
            .config(config)
            .data(json!({"amount": 1}))
            .assert_denies("bad-config")
            .await;
    }
}
