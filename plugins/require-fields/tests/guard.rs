//! require-fields' own tests, run on the built component with the host's
//! harness (production runtime and limits, no NATS).

use std::sync::OnceLock;

use cb_harness::Harness;
use serde_json::json;

fn guard() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

#[tokio::test]
async fn present_fields_pass_and_falsy_values_count_as_present() {
    guard()
        .call()
        .config(json!({"fields": ["/amount", "/owner", "/flag"]}))
        .data(json!({"amount": 0, "owner": "", "flag": false}))
        .assert_allows()
        .await;
}

#[tokio::test]
async fn every_missing_field_is_listed() {
    let (message, details) = guard()
        .call()
        .config(json!({"fields": ["/amount", "/owner", "/meta/cost_center"]}))
        .data(json!({"owner": null, "meta": {}}))
        .assert_denies("missing-fields")
        .await;
    assert_eq!(
        details["missing"],
        json!(["/amount", "/owner", "/meta/cost_center"]),
        "{message}"
    );
}

#[tokio::test]
async fn a_config_without_fields_is_reported() {
    guard()
        .call()
        .config(json!({"fields": "amount"}))
        .data(json!({"amount": 1}))
        .assert_denies("bad-config")
        .await;
}
