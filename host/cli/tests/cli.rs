//! The real `cb-host` binary against a real nats-server.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cb_test_support::NatsServer;
use serde_json::Value;

mod support;

use support::{BIN, cli, plugin_dir, root, serve_with, wait_service};

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn every_cli_command_round_trips_with_json_output() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let _serve = serve_with(&url, plugins.path());

    let list = json_of(&cli(&url, &["--json", "workflow", "list"]));
    assert_eq!(list[0]["definition"]["id"], "expense-approval");
    let got = json_of(&cli(&url, &["--json", "workflow", "get", "expense-approval"]));
    assert_eq!(got["version"], list[0]["version"]);
    let file = root().join("examples/workflows/expense-approval.json");
    let applied = json_of(&cli(
        &url,
        &["--json", "workflow", "apply", file.to_str().unwrap()],
    ));
    assert_eq!(applied["version"], list[0]["version"], "re-applying is a no-op");

    let t = json_of(&cli(
        &url,
        &[
            "--json",
            "token",
            "create",
            "expense-approval",
            "--id",
            "e1",
            "--data",
            r#"{"amount": 100, "owner": "ana"}"#,
            "--metadata",
            r#"{"team": "x"}"#,
        ],
    ));
    for key in [
        "id",
        "workflow_id",
        "place",
        "data",
        "metadata",
        "revision",
        "created_at",
        "updated_at",
    ] {
        assert!(t.get(key).is_some(), "token JSON lacks {key}: {t}");
    }
    assert_eq!(t["place"], "draft");
    assert_eq!(t["metadata"]["team"], "x");
    let g = json_of(&cli(&url, &["--json", "token", "get", "e1"]));
    assert_eq!(g["revision"], t["revision"]);

    let en = json_of(&cli(&url, &["--json", "token", "enabled", "e1"]));
    assert_eq!(en["transitions"][0]["transition"], "submit");
    assert_eq!(en["transitions"][0]["enabled"], true);

    let f = json_of(&cli(
        &url,
        &[
            "--json",
            "token",
            "fire",
            "e1",
            "submit",
            "--input",
            r#"{"note": "hi"}"#,
        ],
    ));
    assert_eq!(f["token"]["place"], "submitted");
    let f = json_of(&cli(&url, &["--json", "token", "fire", "e1", "approve"]));
    assert_eq!(f["token"]["place"], "approved");

    // The dispatcher's auto-advance moves it to `paid`.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = json_of(&cli(&url, &["--json", "token", "get", "e1"]));
        if g["place"] == "paid" {
            break;
        }
        assert!(Instant::now() < deadline, "auto-advance did not run: {g}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = json_of(&cli(
        &url,
        &["--json", "token", "list", "expense-approval", "--place", "paid"],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let h = json_of(&cli(&url, &["--json", "token", "history", "e1"]));
    let kinds: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "transition", "transition", "transition"]);
    let done = json_of(&cli(&url, &["--json", "token", "complete", "e1"]));
    assert!(done["event_sequence"].as_u64().unwrap() > 0);
    let plugins = json_of(&cli(&url, &["--json", "plugin", "list"]));
    assert_eq!(plugins.as_array().unwrap().len(), 4);
    // Five token writes: the create, submit, approve, the action's `pay`
    // and the completion (a redelivered action's duplicate is refused,
    // and a refused write is not counted).
    let stats = json_of(&cli(&url, &["--json", "stats"]));
    let commits = &stats["commits"];
    assert_eq!(commits["writes"], 5, "{stats}");
    let batches = commits["batches"].as_u64().unwrap();
    assert!((1..=5).contains(&batches), "{stats}");
    assert!(commits["mean_commit_ms"].as_f64().unwrap() > 0.0, "{stats}");

    // Human output reads well too.
    let out = cli(&url, &["token", "history", "e1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pay: approved -> paid") && text.contains("completed in paid"),
        "{text}"
    );
    let out = cli(&url, &["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("token writes: 5 in "), "{text}");
}

#[test]
fn bad_input_and_refusals_get_their_exit_codes_and_messages() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let _serve = serve_with(&url, plugins.path());
    json_of(&cli(
        &url,
        &[
            "--json",
            "token",
            "create",
            "expense-approval",
            "--id",
            "big",
            "--data",
            r#"{"amount": 5000}"#,
        ],
    ));

    let out = cli(&url, &["token", "fire", "big", "submit"]);
    assert_eq!(out.status.code(), Some(3), "denied exits 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("require-fields (missing-fields)") && err.contains("amount-limit (amount-over-limit)"),
        "{err}"
    );

    let out = cli(&url, &["--json", "token", "fire", "big", "submit"]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["error"]["code"], "denied");
    assert_eq!(body["error"]["denials"].as_array().unwrap().len(), 2);

    assert_eq!(
        cli(&url, &["token", "get", "nope"]).status.code(),
        Some(5),
        "not found exits 5"
    );
    assert_eq!(
        cli(&url, &["token", "fire", "big", "nope"]).status.code(),
        Some(5),
        "unknown transition exits 5"
    );
    assert_eq!(
        cli(&url, &["token", "fire", "big", "approve"]).status.code(),
        Some(4),
        "not enabled exits 4"
    );
    for args in [
        vec!["frobnicate"],
        vec!["token", "get", "a.b"],
        vec!["token", "get", "*"],
        vec!["token", "create", "expense-approval", "--data", "{not json"],
        vec!["token", "fire", "big", "submit", "--input", "[1,"],
    ] {
        let out = cli(&url, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
    let bad_def = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad_def.path(),
        r#"{"id": "x", "places": ["a"], "initial_place": "b", "transitions": []}"#,
    )
    .unwrap();
    let out = cli(&url, &["workflow", "apply", bad_def.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initial place"));
    // A client with no server to talk to fails clearly.
    let out = Command::new(BIN)
        .args(["--data-dir", "/nonexistent", "token", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats.url"));
}

#[test]
fn the_service_api_is_discoverable_and_errors_are_typed() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let _serve = serve_with(&url, plugins.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(&url).await.unwrap();
        let info = c.request("$SRV.INFO.circuit-breaker", "".into()).await.unwrap();
        let info: Value = serde_json::from_slice(&info.payload).unwrap();
        let subjects: Vec<&str> = info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["subject"].as_str().unwrap())
            .collect();
        for ep in cb_host::api::ENDPOINTS {
            assert!(
                subjects.contains(&format!("cb.api.{ep}").as_str()),
                "{ep} missing from {subjects:?}"
            );
        }
        let cases: [(&str, &str, &str, &str); 5] = [
            ("token.get", r#"{"id": "ghost"}"#, "404", "not-found"),
            ("token.get", r#"{"id": "a.b"}"#, "400", "invalid"),
            ("token.get", "{nope", "400", "invalid"),
            (
                "workflow.apply",
                r#"{"id": "w", "places": [], "initial_place": "a", "transitions": []}"#,
                "400",
                "invalid",
            ),
            (
                "token.create",
                r#"{"workflow": "expense-approval", "data": {"amount": 1}, "bogus": 1}"#,
                "400",
                "invalid",
            ),
        ];
        for (ep, body, status, code) in cases {
            let r = c
                .request(format!("cb.api.{ep}"), body.to_string().into())
                .await
                .unwrap();
            let h = r
                .headers
                .as_ref()
                .unwrap_or_else(|| panic!("{ep} {body}: no error headers"));
            assert_eq!(
                h.get("Nats-Service-Error-Code").unwrap().as_str(),
                status,
                "{ep} {body}"
            );
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["error"]["code"], code, "{ep} {body}: {v}");
        }
    });
}

#[test]
fn the_stats_names_are_the_subjects_and_replicas_follow_the_server() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    // --nats-url without --replicas against one server: one replica.
    let _serve = support::Serve(
        Command::new(BIN)
            .args(["--nats-url", &url, "serve"])
            .arg("--plugins")
            .arg(plugins.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_service(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(&url).await.unwrap();
        let stats = c.request("$SRV.STATS.circuit-breaker", "".into()).await.unwrap();
        let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
        for e in stats["endpoints"].as_array().unwrap() {
            assert_eq!(e["name"], e["subject"], "{e}");
        }
        let mut s = async_nats::jetstream::new(c)
            .get_stream("CIRCUIT_BREAKER")
            .await
            .unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 1);
    });
    // More replicas than the server has: refused, naming the flag; not an
    // outage.
    let out = Command::new(BIN)
        .args([
            "--nats-url",
            &url,
            "serve",
            "--stream",
            "OTHER",
            "--replicas",
            "3",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--replicas") && !err.contains("unavailable"),
        "{err}"
    );
}

#[test]
fn keyed_cli_writes_can_be_repeated() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let _serve = serve_with(&url, plugins.path());
    let data = r#"{"amount": 5, "owner": "ana"}"#;
    let create = [
        "--json",
        "token",
        "create",
        "expense-approval",
        "--id",
        "k1",
        "--data",
        data,
        "--idempotency-key",
        "c1",
    ];
    let a = json_of(&cli(&url, &create));
    let b = json_of(&cli(&url, &create));
    assert_eq!((&a["id"], &a["revision"]), (&b["id"], &b["revision"]));
    let out = cli(&url, &["token", "create", "expense-approval", "--id", "k1"]);
    assert_eq!(out.status.code(), Some(4), "a duplicate is exit 4");
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate"));
    let fire = [
        "--json",
        "token",
        "fire",
        "k1",
        "submit",
        "--idempotency-key",
        "f1",
    ];
    let f1 = json_of(&cli(&url, &fire));
    let f2 = json_of(&cli(&url, &fire));
    assert_eq!(f1["event_sequence"], f2["event_sequence"]);
    let stale = (f1["token"]["revision"].as_u64().unwrap() - 1).to_string();
    let out = cli(&url, &["token", "fire", "k1", "approve", "--if-revision", &stale]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_answers_while_big_plugins_compile_and_a_firing_waits_for_them() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = tempfile::tempdir().unwrap();
    for (path, name) in [
        (cb_test_plugins::PY_AMOUNT_LIMIT, "py-amount-limit"),
        (cb_test_plugins::JS_REQUIRE_FIELDS, "js-require-fields"),
    ] {
        std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
    }
    let defs = tempfile::tempdir().unwrap();
    std::fs::write(
        defs.path().join("py.json"),
        r#"{"id": "py", "places": ["a", "b"], "initial_place": "a", "transitions": [
            {"id": "go", "from": ["a"], "to": "b", "guards": [{"plugin": "py-amount-limit", "config": {"max": 10}},
                                                               {"plugin": "js-require-fields", "config": {"fields": ["/amount"]}}]}]}"#,
    )
    .unwrap();
    // An empty compile cache: the 18 MB Python and 12 MB JavaScript
    // components compile for seconds after the host starts.
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let _serve = support::Serve(
        Command::new(BIN)
            .args(["--nats-url", &url, "serve", "--replicas", "1"])
            .arg("--plugins")
            .arg(plugins.path())
            .arg("--definitions")
            .arg(defs.path())
            .env("XDG_CACHE_HOME", cache.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_service(&url);
    let answered = started.elapsed();
    let listed = json_of(&cli(&url, &["--json", "plugin", "list"]));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "answered after {answered:?}, before the plugins loaded"
    );
    json_of(&cli(
        &url,
        &[
            "--json",
            "token",
            "create",
            "py",
            "--id",
            "p1",
            "--data",
            r#"{"amount": 5}"#,
        ],
    ));
    // The firing waits for both plugins to finish compiling, up to the
    // engine's bound; past it the answer is `unavailable` ("still
    // loading"), which a client retries (on a loaded machine compiling
    // both can take longer than the bound).
    let deadline = Instant::now() + Duration::from_secs(300);
    let fired = loop {
        let out = cli(
            &url,
            &["--json", "--timeout-ms", "120000", "token", "fire", "p1", "go"],
        );
        if out.status.success() {
            break json_of(&out);
        }
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            said.contains("\"unavailable\"") && said.contains("still loading"),
            "only `unavailable` (loading) may come before the plugins loaded: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(Instant::now() < deadline, "the plugins never loaded");
    };
    assert_eq!(fired["token"]["place"], "b");
    eprintln!(
        "serve answered after {answered:?}; the firing that needed the plugins took {:?} in all",
        started.elapsed()
    );
}

/// Whether a nats-server whose command line mentions `needle` is alive.
fn process_with(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains("nats-server") && cmd.contains(needle)
    })
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve_embedded(data: &Path, plugins: &Path) -> Child {
    let url_file = data.join("nats.url");
    let _ = std::fs::remove_file(&url_file);
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--plugins"])
        .arg(plugins)
        .arg("--definitions")
        .arg(root().join("examples/workflows"))
        .arg("--nats-server-bin")
        .arg(cb_test_support::nats_server_bin())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("nats.url", || url_file.exists());
    let url = std::fs::read_to_string(&url_file).unwrap();
    wait_service(&url);
    child
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_child(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cb-host did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_embedded_default_stops_cleanly_and_keeps_its_data() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugin_dir();
    let marker = data.path().to_str().unwrap().to_string();
    let child = serve_embedded(data.path(), plugins.path());
    assert!(process_with(&marker), "embedded nats-server runs");
    // Client commands find the server through <data-dir>/nats.url.
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--json", "token", "create", "expense-approval", "--id", "keep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // SIGTERM: graceful, exit 0, no nats-server left.
    sigterm(&child);
    assert_eq!(wait_child(child).code(), Some(0));
    assert!(!process_with(&marker), "nats-server left behind after SIGTERM");
    // A second start sees the first one's data.
    let child = serve_embedded(data.path(), plugins.path());
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--json", "token", "get", "keep"])
        .output()
        .unwrap();
    assert_eq!(json_of(&out)["id"], "keep");
    sigterm(&child);
    assert_eq!(wait_child(child).code(), Some(0));
    assert!(!process_with(&marker));
}

#[test]
fn kill_9_of_serve_takes_the_embedded_server_with_it() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugin_dir();
    let marker = data.path().to_str().unwrap().to_string();
    let mut child = serve_embedded(data.path(), plugins.path());
    assert!(process_with(&marker));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_until("the orphaned nats-server to die", || !process_with(&marker));
}

#[test]
fn workflow_check_and_diagram_judge_and_draw_the_net() {
    let po = root().join("examples/workflows/purchase-order.json");
    let po = po.to_str().unwrap();
    // Both work from a file, without NATS (the URL points nowhere).
    let nowhere = "nats://127.0.0.1:1";
    let out = cli(nowhere, &["workflow", "check", po]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sound"), "{text}");
    let report = json_of(&cli(nowhere, &["--json", "workflow", "check", po]));
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "error"),
        "{report}"
    );

    // A net with a transition that can never fire and a place never marked.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        r#"{ "id": "broken", "places": ["a", "b", "c", "d"], "initial_place": "a", "final": ["b"],
             "transitions": [ { "id": "go", "from": ["a"], "to": "b" },
                              { "id": "never", "join": ["c", "d"], "to": "b" } ] }"#,
    )
    .unwrap();
    let out = cli(nowhere, &["workflow", "check", broken.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("never") && text.contains("dead-transition"),
        "{text}"
    );
    assert!(text.contains("unreachable-place"), "{text}");

    let mermaid = cli(nowhere, &["workflow", "diagram", po]);
    let m = String::from_utf8_lossy(&mermaid.stdout);
    assert!(mermaid.status.success() && m.starts_with("flowchart"), "{m}");
    for name in [
        "legal_review",
        "finance_review",
        "approve",
        "require-fields",
        "auto-advance",
    ] {
        assert!(m.contains(name), "mermaid lacks {name}: {m}");
    }
    let dot = cli(nowhere, &["workflow", "diagram", po, "--format", "dot"]);
    let d = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.status.success() && d.starts_with("digraph"), "{d}");
    assert!(d.contains("shape=circle") && d.contains("style=dashed"), "{d}");

    // A stored workflow: apply, split a token, draw its marking and the
    // live counts.
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let _serve = serve_with(&url, plugins.path());
    json_of(&cli(
        &url,
        &[
            "--json",
            "token",
            "create",
            "purchase-order",
            "--id",
            "po1",
            "--data",
            r#"{"amount": 100, "supplier": "acme"}"#,
        ],
    ));
    let f = json_of(&cli(&url, &["--json", "token", "fire", "po1", "submit"]));
    assert_eq!(
        f["token"]["marking"],
        serde_json::json!(["legal_review", "finance_review"]),
        "{f}"
    );
    let marked = cli(&url, &["workflow", "diagram", "purchase-order", "--token", "po1"]);
    let m = String::from_utf8_lossy(&marked.stdout);
    assert!(
        marked.status.success(),
        "{}",
        String::from_utf8_lossy(&marked.stderr)
    );
    let counts = cli(&url, &["workflow", "diagram", "purchase-order"]);
    let c = String::from_utf8_lossy(&counts.stdout);
    assert!(
        counts.status.success(),
        "{}",
        String::from_utf8_lossy(&counts.stderr)
    );
    assert_ne!(m, c, "a token's marking and the counts are drawn differently");
    let initial = String::from_utf8_lossy(&mermaid.stdout).to_string();
    assert_ne!(m, initial, "the token's marking is not the initial one");
}

#[test]
fn plugin_precompile_fills_the_cache_and_workflow_pin_pins_each_build() {
    let plugins = plugin_dir();
    let cache = tempfile::tempdir().unwrap();
    let precompile = |dir: &Path| {
        Command::new(BIN)
            .args(["--json", "plugin", "precompile"])
            .arg(dir)
            .env("XDG_CACHE_HOME", cache.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = json_of(&precompile(plugins.path()));
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(first.iter().all(|p| p["compiled"] == true), "{first:?}");
    // Deployed with the same cache, nothing compiles again.
    let again = json_of(&precompile(plugins.path()));
    assert!(
        again.as_array().unwrap().iter().all(|p| p["compiled"] == false),
        "{again}"
    );
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("evil.wasm"), b"\0asm junk").unwrap();
    let out = precompile(broken.path());
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("evil"), "{said}");

    // Pin: every reference gets the digest of the build in the directory.
    let defs = tempfile::tempdir().unwrap();
    let file = defs.path().join("expense.json");
    std::fs::copy(root().join("examples/workflows/expense-approval.json"), &file).unwrap();
    let nowhere = "nats://127.0.0.1:1";
    let args = |write: bool| {
        let mut a = vec![
            "workflow".to_string(),
            "pin".into(),
            file.display().to_string(),
            "--plugins".into(),
            plugins.path().display().to_string(),
        ];
        if write {
            a.push("--write".into());
        }
        a
    };
    let printed = cli(
        nowhere,
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let def: Value = serde_json::from_slice(&printed.stdout).unwrap();
    let digest_of = |name: &str| {
        cb_host::plugin::digest_of(&std::fs::read(plugins.path().join(format!("{name}.wasm"))).unwrap())
    };
    let mut pinned = 0;
    for t in def["transitions"].as_array().unwrap() {
        for r in t["guards"]
            .as_array()
            .into_iter()
            .chain(t["actions"].as_array())
            .flatten()
        {
            assert_eq!(r["digest"], digest_of(r["plugin"].as_str().unwrap()), "{r}");
            pinned += 1;
        }
    }
    assert!(pinned >= 2, "{def}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(root().join("examples/workflows/expense-approval.json")).unwrap(),
        "without --write the file is left alone"
    );
    let out = cli(
        nowhere,
        &args(true).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, def, "--write stores what was printed");
    // A missing build is an error naming it.
    std::fs::remove_file(plugins.path().join("amount-limit.wasm")).unwrap();
    let out = cli(
        nowhere,
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("amount-limit"));
}

/// A stand-in OTLP/HTTP collector: answers every POST with 200 and keeps
/// each request's path and body. (A test fixture on a loopback socket; the
/// exporter under test is the real OTLP client.)
struct Collector {
    addr: std::net::SocketAddr,
    received: Received,
}

/// Each export request's path and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

impl Collector {
    fn start() -> Collector {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut length = 0;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).unwrap();
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        keep.lock().unwrap().push((path, body));
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                            .unwrap();
                    }
                });
            }
        });
        Collector { addr, received }
    }

    /// Whether some export request to `path` contains every one of `needles`.
    fn got(&self, path: &str, needles: &[&[u8]]) -> bool {
        self.received
            .lock()
            .unwrap()
            .iter()
            .any(|(p, body)| p == path && needles.iter().all(|n| body.windows(n.len()).any(|w| w == *n)))
    }
}

#[test]
fn serve_exports_spans_over_otlp_when_the_standard_variables_ask() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let collector = Collector::start();
    let endpoint = format!("http://{}", collector.addr);
    let _serve = support::spawn_serve_env(
        &url,
        plugins.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "cb-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    wait_service(&url);
    // A request that carries a trace context: its span is exported under
    // that trace id (raw bytes in the protobuf body).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let c = cb_host::connect(&url).await.unwrap();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").as_str());
            let r = c
                .request_with_headers("cb.api.workflow.list", headers, "{}".into())
                .await
                .unwrap();
            assert!(r.headers.is_none(), "{}", String::from_utf8_lossy(&r.payload));
        });
    wait_until("the span reached the collector", || {
        collector.got("/v1/traces", &[&trace_bytes, b"workflow.list", b"cb-under-test"])
    });
}
