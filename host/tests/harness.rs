//! The plugin test harness: from the CLI and from Rust, with no NATS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cb_host::harness::Harness;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cb-host");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn plugin(name: &str) -> &'static str {
    cb_test_plugins::ALL.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Runs `cb-host plugin test` with no nats-server reachable: PATH holds
/// only the system directories and NATS_SERVER_BIN is unset.
fn plugin_test(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["plugin", "test"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn every_example_plugin_passes_its_case_files_without_nats() {
    assert!(
        Command::new("sh")
            .args(["-c", "PATH=/usr/bin:/bin command -v nats-server"])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    );
    for name in [
        "amount-limit",
        "require-fields",
        "siblings-in-place",
        "business-hours",
        "auto-advance",
        "audit-log",
    ] {
        let cases = root().join("plugins").join(name).join("cases");
        let out = plugin_test(&[plugin(name), cases.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = text.lines().last().unwrap();
        assert!(
            last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
            "{name}: {last}"
        );
    }
}

#[test]
fn wrong_expectations_fail_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.json");
    std::fs::write(
        &file,
        json!({
            "config": {"max": 10},
            "cases": [
                {"name": "right", "token": {"data": {"amount": 1}}, "expect": "allow"},
                {"name": "wrong decision", "token": {"data": {"amount": 50}}, "expect": "allow"},
                {"name": "wrong code", "token": {"data": {"amount": 50}}, "expect": {"deny": {"code": "nope"}}},
                {"name": "wrong message", "token": {"data": {"amount": 50}},
                 "expect": {"deny": {"code": "amount-over-limit", "message": "no such text"}}},
                {"name": "wrong error", "token": {"data": {"amount": 1}}, "expect": {"error": "timeout"}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = plugin_test(&[plugin("amount-limit"), file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().last().unwrap(), "1 passed, 4 failed", "{text}");
    assert!(text.contains("FAIL") && text.contains("wrong decision"));
    assert!(text.contains("expected: \"allow\""), "{text}");
    assert!(text.contains("actual:   {\"deny\""), "{text}");

    // --filter and --json.
    let out = plugin_test(&[
        "--json",
        plugin("amount-limit"),
        file.to_str().unwrap(),
        "--filter",
        "wrong code",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], 0);
    assert_eq!(report["failed"], 1);
    assert_eq!(report["cases"][0]["name"], "wrong code");
    assert_eq!(report["cases"][0]["actual"]["deny"]["code"], "amount-over-limit");

    // A malformed case file names the bad field.
    std::fs::write(
        &file,
        r#"{"cases": [{"name": "x", "expect": "allow", "tokn": {}}]}"#,
    )
    .unwrap();
    let out = plugin_test(&[plugin("amount-limit"), file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cases[0].tokn"));
}

#[test]
fn a_looping_guard_is_a_timeout_in_the_harness_as_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loop.json");
    std::fs::write(
        &file,
        json!({"cases": [
            {"name": "loops", "config": {"do": "loop"}, "limits": {"deadline": 50}, "expect": {"error": "timeout"}},
            {"name": "traps", "config": {"do": "trap"}, "expect": {"error": "trap"}},
            {"name": "no files", "config": {"do": "file"}, "expect": {"deny": {"code": "escape-blocked"}}}
        ]})
        .to_string(),
    )
    .unwrap();
    let out = plugin_test(&[plugin("misbehave"), file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().last().unwrap(), "3 passed, 0 failed");
}

#[tokio::test]
async fn the_rust_api_asserts_for_cargo_test() {
    let h = Harness::load(Path::new(plugin("amount-limit"))).unwrap();
    h.assert_allows(json!({"amount": 5}), json!({"max": 10})).await;
    h.assert_denies(json!({"amount": 50}), json!({"max": 10}), "amount-over-limit")
        .await;
    let bad = Harness::load(Path::new(plugin("misbehave"))).unwrap();
    bad.assert_error(json!({}), json!({"do": "trap"}), "trap").await;
    // The assertions really check.
    let h2 = Harness::load(Path::new(plugin("amount-limit"))).unwrap();
    let caught =
        tokio::spawn(async move { h2.assert_allows(json!({"amount": 50}), json!({"max": 10})).await }).await;
    assert!(caught.is_err(), "assert_allows must panic on a denial");
}
