//! The plugin test harness: from the CLI and from Rust, with no NATS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cb_harness::{Harness, build_component};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cb-host");

fn root() -> PathBuf {
    // host/cli -> the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
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
    h.call()
        .config(json!({"max": 10}))
        .data(json!({"amount": 5}))
        .assert_allows()
        .await;
    let (message, details) = h
        .call()
        .config(json!({"max": 10}))
        .data(json!({"amount": 50}))
        .assert_denies("amount-over-limit")
        .await;
    assert!(message.contains("exceeds"), "{message}");
    assert_eq!(details["amount"], 50.0);
    let bad = Harness::load(Path::new(plugin("misbehave"))).unwrap();
    let text = bad
        .call()
        .config(json!({"do": "trap"}))
        .assert_error("trap")
        .await;
    assert!(text.contains("misbehave"), "the error names the plugin: {text}");

    // The assertions really check: each wrong expectation panics.
    let h = std::sync::Arc::new(h);
    let wrong: Vec<tokio::task::JoinHandle<()>> = vec![
        {
            let h = h.clone();
            tokio::spawn(async move {
                h.call()
                    .config(json!({"max": 10}))
                    .data(json!({"amount": 50}))
                    .assert_allows()
                    .await
            })
        },
        {
            let h = h.clone();
            tokio::spawn(async move {
                h.call()
                    .config(json!({"max": 10}))
                    .data(json!({"amount": 50}))
                    .assert_denies("other-code")
                    .await;
            })
        },
        {
            let h = h.clone();
            tokio::spawn(async move {
                h.call()
                    .config(json!({"max": 10}))
                    .data(json!({"amount": 5}))
                    .assert_error("timeout")
                    .await;
            })
        },
    ];
    for (i, w) in wrong.into_iter().enumerate() {
        assert!(w.await.is_err(), "wrong expectation {i} must panic");
    }
}

#[tokio::test]
async fn the_harness_builds_a_plugin_crate_itself() {
    // Into the target dir the test plugins were built in (by cb-test-plugins'
    // build script, before any test ran), so only the final step reruns.
    let wasm = build_component(
        &root().join("plugins").join("amount-limit"),
        Some(&root().join("target").join("wasm")),
    )
    .unwrap();
    assert!(
        wasm.ends_with("wasm32-wasip2/release/amount_limit.wasm"),
        "{}",
        wasm.display()
    );
    let h = Harness::load(&wasm).unwrap();
    assert_eq!(h.plugin().world(), cb_host::plugin::World::Guard);
    h.call()
        .config(json!({"max": 1}))
        .data(json!({"amount": 2}))
        .assert_denies("amount-over-limit")
        .await;

    // The CLI takes the crate's directory as well.
    let out = Command::new(BIN)
        .args(["plugin", "test"])
        .arg(root().join("plugins").join("amount-limit"))
        .arg(root().join("plugins").join("amount-limit").join("cases"))
        .env("CB_HARNESS_TARGET_DIR", root().join("target").join("wasm"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with(" passed, 0 failed\n"), "{text}");

    // Not a crate: a typed error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let err = Harness::build_crate(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no Cargo.toml"), "{err}");
    // A crate that does not compile: cargo's error is in the message.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("src")).unwrap();
    std::fs::write(
        broken.join("Cargo.toml"),
        "[package]\nname = \"broken\"\nedition = \"2024\"\n[lib]\ncrate-type = [\"cdylib\"]\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(broken.join("src/lib.rs"), "fn f() -> u32 { \"no\" }").unwrap();
    let err = build_component(&broken, Some(&dir.path().join("target"))).unwrap_err();
    assert!(err.to_string().contains("mismatched types"), "{err}");
}

/// The opposite of an expectation: what the harness must report as a
/// failure when the plugin does what the original expects.
fn wrong(expect: &Value) -> Value {
    if expect == "allow" {
        return json!({"deny": {"code": "never-this-code"}});
    }
    if expect.get("deny").is_some() {
        return json!("allow");
    }
    if let Some(kind) = expect.get("error") {
        return json!({"error": if kind == "timeout" { "trap" } else { "timeout" }});
    }
    let mut ok = expect.clone();
    ok["ok"]["logs"] = json!(["a line no plugin writes"]);
    ok
}

#[test]
fn every_example_plugin_fails_deliberately_wrong_expectations() {
    for name in [
        "amount-limit",
        "require-fields",
        "siblings-in-place",
        "business-hours",
        "auto-advance",
        "audit-log",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut total = 0;
        for entry in std::fs::read_dir(root().join("plugins").join(name).join("cases")).unwrap() {
            let path = entry.unwrap().path();
            let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for case in file["cases"].as_array_mut().unwrap() {
                case["expect"] = wrong(&case["expect"]);
                total += 1;
            }
            std::fs::write(dir.path().join(path.file_name().unwrap()), file.to_string()).unwrap();
        }
        assert!(total > 0, "{name} has no cases");
        let out = plugin_test(&[plugin(name), dir.path().to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{name}:\n{text}");
        assert_eq!(
            text.lines().last().unwrap(),
            format!("0 passed, {total} failed"),
            "{name}:\n{text}"
        );
        assert_eq!(text.matches("FAIL").count(), total, "{name}:\n{text}");
        assert_eq!(
            text.matches("expected: ").count(),
            total,
            "a diff per case:\n{text}"
        );
    }
}
