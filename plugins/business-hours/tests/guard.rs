//! business-hours' own tests: the guest's clock is the firing time, so
//! each case fixes it.

use std::sync::OnceLock;

use cb_harness::Harness;
use serde_json::json;
use time::macros::datetime;

fn guard() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::build_crate(env!("CARGO_MANIFEST_DIR")).expect("build the plugin"))
}

#[tokio::test]
async fn open_from_start_to_end_hour_on_weekdays() {
    let config = json!({"start_hour": 9, "end_hour": 17});
    // 2026-11-23 is a Monday.
    for at in [
        datetime!(2026-11-23 09:00 UTC),
        datetime!(2026-11-27 16:59:59 UTC),
    ] {
        guard()
            .call()
            .config(config.clone())
            .fired_at(at)
            .assert_allows()
            .await;
    }
    for at in [
        datetime!(2026-11-23 08:59:59 UTC),
        datetime!(2026-11-23 17:00 UTC),
        datetime!(2026-11-29 12:00 UTC),
    ] {
        guard()
            .call()
            .config(config.clone())
            .fired_at(at)
            .assert_denies("outside-business-hours")
            .await;
    }
}

#[tokio::test]
async fn days_and_offsets_are_honoured() {
    // Sunday 23:30 UTC is Monday 09:30 at UTC+10.
    guard()
        .call()
        .config(json!({"utc_offset_minutes": 600}))
        .fired_at(datetime!(2026-11-22 23:30 UTC))
        .assert_allows()
        .await;
    // Saturday only.
    guard()
        .call()
        .config(json!({"days": [6]}))
        .fired_at(datetime!(2026-11-23 10:00 UTC))
        .assert_denies("outside-business-hours")
        .await;
    guard()
        .call()
        .config(json!({"days": [6]}))
        .fired_at(datetime!(2026-11-28 10:00 UTC))
        .assert_allows()
        .await;
}
