//! Hostile input through the CLI and the service API: every input gets a
//! clear typed error, the host process stays up, and the stream is
//! unchanged (same message count and last sequence).

mod support;

use std::process::Output;

use cb_test_support::NatsServer;
use serde_json::{Value, json};
use support::{BIN, cli, plugin_dir, serve_with, service_answers, stream_state};

/// Ids that would split or widen a subject, or are just unreasonable.
fn hostile_ids() -> Vec<String> {
    vec![
        "a.b".into(),
        "a*".into(),
        "*".into(),
        ">".into(),
        "a>".into(),
        "a b".into(),
        " lead".into(),
        "tab\there".into(),
        "new\nline".into(),
        "ünïcødé".into(),
        "emoji🙂".into(),
        "".into(),
        "$SYS".into(),
        "x".repeat(129),
        "y".repeat(10_000),
    ]
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Checks exit code `code` and a message mentioning `says`; collects what
/// is wrong so one run shows every problem.
fn expect(failures: &mut Vec<String>, o: &Output, code: i32, says: &str, what: &str) {
    let err = stderr(o);
    let short = &err[..err.len().min(300)];
    if o.status.code() != Some(code) {
        failures.push(format!(
            "{what}: exit {:?}, wanted {code}: {short}",
            o.status.code()
        ));
    } else if !err.to_lowercase().contains(&says.to_lowercase()) {
        failures.push(format!("{what}: the message should say `{says}`: {short}"));
    }
}

/// A server, a `cb-host serve` on it with the example workflow, and one
/// token `t1` in `draft`: what the hostile input is thrown at.
struct Target {
    _server: NatsServer,
    _plugins: tempfile::TempDir,
    url: String,
    serve: support::Serve,
}

impl Target {
    fn start() -> Target {
        let server = NatsServer::start();
        let url = server.url();
        let plugins = plugin_dir();
        let serve = serve_with(&url, plugins.path());
        let data = r#"{"amount": 5, "owner": "ana"}"#;
        let ok = cli(
            &url,
            &[
                "token",
                "create",
                "expense-approval",
                "--id",
                "t1",
                "--data",
                data,
            ],
        );
        assert!(ok.status.success(), "{}", stderr(&ok));
        Target {
            _server: server,
            _plugins: plugins,
            url,
            serve,
        }
    }
}

#[test]
fn hostile_cli_input_gets_typed_errors_and_leaves_the_stream_unchanged() {
    let target = Target::start();
    let (url, mut serve) = (target.url.clone(), target.serve);
    let before = stream_state(&url);
    let mut tried = 0;
    let mut failures = Vec::new();

    // Ids, wherever an id goes.
    for bad in hostile_ids() {
        let bad = bad.as_str();
        let shown = &bad[..bad.len().min(20)];
        for args in [
            vec!["token", "get", bad],
            vec!["token", "get", "t1", "--workflow", bad],
            vec!["token", "create", "expense-approval", "--id", bad],
            vec!["token", "create", bad],
            vec!["token", "fire", "t1", bad],
            vec!["token", "fire", bad, "submit"],
            vec!["token", "history", bad],
            vec!["token", "enabled", bad],
            vec!["token", "complete", bad],
            vec!["token", "list", bad, "--place", "draft"],
            vec!["token", "list", "expense-approval", "--place", bad],
            vec!["workflow", "get", bad],
        ] {
            tried += 1;
            expect(
                &mut failures,
                &cli(&url, &args),
                2,
                "id ",
                &format!("{:?} with id {shown:?}", &args[..2]),
            );
        }
    }

    // JSON: invalid, nested 10,000 deep, larger than the server's max
    // payload (from a file: the OS caps one argument at 128 KiB).
    let dir = tempfile::tempdir().unwrap();
    let deep = nested(10_000);
    let huge = format!(r#"{{"blob": "{}"}}"#, "z".repeat(1_100_000));
    // Fits in a request, but not in a stored message with its headers.
    let big = format!(r#"{{"blob": "{}"}}"#, "z".repeat(1_048_576 - 200));
    let at = |name: &str, text: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        format!("@{}", f.display())
    };
    let (huge, big, deep_file) = (
        at("huge.json", &huge),
        at("big.json", &big),
        at("deep.json", &deep),
    );
    for (data, says) in [
        ("{not json", "json"),
        ("", "json"),
        ("[1,", "json"),
        (deep.as_str(), "recursion"),
        (deep_file.as_str(), "recursion"),
        (huge.as_str(), "nothing was sent"),
        (big.as_str(), "max_payload"),
        ("@/nonexistent/file.json", "cannot read"),
    ] {
        for args in [
            vec!["token", "create", "expense-approval", "--data", data],
            vec!["token", "fire", "t1", "submit", "--input", data],
        ] {
            tried += 1;
            expect(
                &mut failures,
                &cli(&url, &args),
                2,
                says,
                &format!("{:?} with {}", &args[..2], &data[..data.len().min(40)]),
            );
        }
    }

    // Definitions.
    let defs: Vec<(&str, String, &str)> = vec![
        ("unknown place", r#"{"id": "w", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "nowhere"}]}"#.into(), "nowhere"),
        ("unknown from place", r#"{"id": "w", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["ghost"], "to": "a"}]}"#.into(), "ghost"),
        ("unknown initial place", r#"{"id": "w", "places": ["a"], "initial_place": "b", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}"#.into(), "initial place"),
        ("duplicate places", r#"{"id": "w", "places": ["a", "a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}"#.into(), "more than once"),
        ("duplicate transitions", r#"{"id": "w", "places": ["a", "b"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "b"}, {"id": "t", "from": ["b"], "to": "a"}]}"#.into(), "more than once"),
        ("no transitions", r#"{"id": "w", "places": ["a"], "initial_place": "a", "transitions": []}"#.into(), "transition"),
        ("empty from", r#"{"id": "w", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": [], "to": "a"}]}"#.into(), "from"),
        ("dotted id", r#"{"id": "w.x", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}"#.into(), "id"),
        ("wildcard place", r#"{"id": "w", "places": ["a", "*"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}"#.into(), "place"),
        ("unknown field", r#"{"id": "w", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a", "gaurds": []}]}"#.into(), "gaurds"),
        ("not JSON", "places: [a]".into(), "json"),
        ("nested 10,000 deep", nested(10_000), "invalid definition"),
        ("empty file", String::new(), "json"),
    ];
    for (what, body, says) in &defs {
        let file = dir.path().join("def.json");
        std::fs::write(&file, body).unwrap();
        tried += 1;
        expect(
            &mut failures,
            &cli(&url, &["workflow", "apply", file.to_str().unwrap()]),
            2,
            says,
            &format!("definition with {what}"),
        );
    }

    // Firing an unknown transition is "not found"; so is an unknown token.
    tried += 2;
    expect(
        &mut failures,
        &cli(&url, &["token", "fire", "t1", "levitate"]),
        5,
        "levitate",
        "unknown transition",
    );
    expect(
        &mut failures,
        &cli(&url, &["token", "fire", "ghost", "submit"]),
        5,
        "ghost",
        "unknown token",
    );

    // Plugin files: empty, truncated, not Wasm, a core module, the wrong world.
    let good = std::fs::read(cb_test_plugins::AMOUNT_LIMIT).unwrap();
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not a valid component"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not a valid component",
        ),
        (
            "not wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a valid component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core webassembly module",
        ),
        (
            "wrong world",
            std::fs::read(cb_test_plugins::WRONG_WORLD).unwrap(),
            "evaluate",
        ),
    ];
    for (what, bytes, says) in &files {
        let file = dir.path().join("plugin.wasm");
        std::fs::write(&file, bytes).unwrap();
        tried += 2;
        let out = std::process::Command::new(BIN)
            .args(["plugin", "inspect"])
            .arg(&file)
            .output()
            .unwrap();
        expect(
            &mut failures,
            &out,
            2,
            says,
            &format!("plugin inspect of a {what} file"),
        );
        // A second host given this plugin refuses to start, naming it; the
        // running host is not disturbed.
        let bad_dir = tempfile::tempdir().unwrap();
        std::fs::write(bad_dir.path().join("evil.wasm"), bytes).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["--nats-url", &url, "serve", "--replicas", "1", "--plugins"])
            .arg(bad_dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        expect(
            &mut failures,
            &out,
            1,
            "evil",
            &format!("serve with a {what} plugin"),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {tried}:\n{}",
        failures.len(),
        failures.join("\n")
    );

    assert!(serve.is_running(), "the host process died");
    assert!(service_answers(&url), "the host stopped answering");
    assert_eq!(stream_state(&url), before, "the stream changed");
    // The host still works.
    let got = cli(&url, &["--json", "token", "get", "t1"]);
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["place"], "draft");
    // Cycles are not hostile: rework loops are ordinary workflows, so a
    // cyclic definition is stored (after the unchanged-stream check).
    let cyclic = dir.path().join("cyclic.json");
    std::fs::write(
        &cyclic,
        r#"{"id": "loop", "places": ["a", "b"], "initial_place": "a",
            "transitions": [{"id": "go", "from": ["a"], "to": "b"}, {"id": "back", "from": ["b"], "to": "a"}]}"#,
    )
    .unwrap();
    let out = cli(&url, &["workflow", "apply", cyclic.to_str().unwrap()]);
    assert!(out.status.success(), "a cyclic definition: {}", stderr(&out));
    assert!(tried > 200, "{tried} inputs");
    eprintln!("{tried} hostile CLI inputs, each refused with a typed error; stream unchanged");
}

#[test]
fn hostile_api_requests_get_typed_errors_and_leave_the_stream_unchanged() {
    let target = Target::start();
    let (url, mut serve) = (target.url.clone(), target.serve);
    let before = stream_state(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tried = rt.block_on(async {
        let c = async_nats::connect(&url).await.unwrap();
        let max = c.server_info().max_payload;
        let mut tried = 0;
        let mut bodies: Vec<(String, String)> = Vec::new();
        for ep in cb_host::api::ENDPOINTS {
            for body in ["", "{nope", "null", "[]", "42", "\"str\"", r#"{"bogus": 1}"#] {
                bodies.push((ep.to_string(), body.to_string()));
            }
            bodies.push((ep.to_string(), nested(10_000)));
            bodies.push((ep.to_string(), format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000))));
        }
        for bad in hostile_ids() {
            let v = Value::String(bad);
            for (ep, body) in [
                ("token.get", json!({"id": v})),
                ("token.get", json!({"id": "t1", "workflow": v})),
                ("token.create", json!({"workflow": "expense-approval", "id": v})),
                ("token.create", json!({"workflow": v})),
                ("token.fire", json!({"id": "t1", "transition": v})),
                ("token.fire", json!({"id": v, "transition": "submit"})),
                ("token.history", json!({"id": v})),
                ("token.enabled", json!({"id": v})),
                ("token.complete", json!({"id": v})),
                ("token.list", json!({"workflow": v, "place": "draft"})),
                ("token.list", json!({"workflow": "expense-approval", "place": v})),
                ("workflow.get", json!({"id": v})),
            ] {
                bodies.push((ep.to_string(), body.to_string()));
            }
        }
        for def in [
            json!({"id": "w", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "b"}]}),
            json!({"id": "w", "places": ["a", "a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}),
            json!({"id": "w", "places": ["a"], "initial_place": "a", "transitions": []}),
            json!({"id": "w>", "places": ["a"], "initial_place": "a", "transitions": [{"id": "t", "from": ["a"], "to": "a"}]}),
        ] {
            bodies.push(("workflow.apply".into(), def.to_string()));
        }
        // Just under the server's max payload: NATS delivers it, the store
        // refuses it (the token would not fit in one message with its
        // headers).
        let near = json!({"workflow": "expense-approval", "data": {"blob": "z".repeat(max - 200)}}).to_string();
        assert!(near.len() < max);
        bodies.push(("token.create".into(), near));

        for (ep, body) in &bodies {
            tried += 1;
            let takes_no_input = ["workflow.list", "plugin.list", "host.stats"].contains(&ep.as_str());
            let r = c
                .request(format!("cb.api.{ep}"), body.clone().into())
                .await
                .unwrap_or_else(|e| panic!("{ep}: no reply: {e}"));
            if takes_no_input && r.headers.is_none() {
                continue; // ignores its body; what matters is that it answered
            }
            let h = r.headers.as_ref().unwrap_or_else(|| {
                panic!(
                    "{ep} {}: accepted: {}",
                    &body[..body.len().min(80)],
                    String::from_utf8_lossy(&r.payload)
                )
            });
            let status = h.get("Nats-Service-Error-Code").map(|v| v.as_str().to_string());
            assert!(
                matches!(status.as_deref(), Some("400") | Some("404")),
                "{ep} {}: status {status:?}",
                &body[..body.len().min(80)]
            );
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            assert!(
                v["error"]["code"].is_string() && !v["error"]["message"].as_str().unwrap_or("").is_empty(),
                "{ep}: {v}"
            );
        }

        // Over the max payload: the client refuses to send it at all.
        tried += 1;
        let over = vec![b'x'; max + 1];
        assert!(c.request("cb.api.token.create", over.into()).await.is_err());
        tried
    });
    assert!(serve.is_running(), "the host process died");
    assert!(service_answers(&url), "the host stopped answering");
    assert_eq!(stream_state(&url), before, "the stream changed");
    assert!(tried > 250, "{tried} requests");
    eprintln!("{tried} hostile API requests, each refused with a typed error; stream unchanged");
}

/// The README's restricted-users configuration, verbatim in spirit: the
/// host uses its stream and serves the API; clients get only the API.
const USERS: &str = r#"
authorization {
  users = [
    { user: cb-host, password: hostpw, permissions: {
        publish: ["cb.workflows.>", "$JS.API.>", "$JS.ACK.CIRCUIT_BREAKER.>", "$SRV.>"],
        subscribe: ["cb.api.>", "$SRV.>", "_INBOX.>"],
        allow_responses: true } },
    { user: client, password: clientpw, permissions: {
        publish: ["cb.api.>", "$SRV.>"],
        subscribe: ["_INBOX.>"] } }
  ]
}
"#;

#[test]
fn a_restricted_host_user_serves_and_an_api_only_client_cannot_touch_the_stream() {
    let server = NatsServer::start_with_config(USERS);
    let host_url = format!("nats://cb-host:hostpw@127.0.0.1:{}", server.port());
    let client_url = format!("nats://client:clientpw@127.0.0.1:{}", server.port());
    let plugins = plugin_dir();
    let mut serve = support::spawn_serve(&host_url, plugins.path(), &[]);
    support::wait_service(&client_url);

    // The client does everything through the API.
    let out = cli(
        &client_url,
        &[
            "--json",
            "token",
            "create",
            "expense-approval",
            "--id",
            "t1",
            "--data",
            r#"{"amount": 5, "owner": "ana"}"#,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&client_url, &["--json", "token", "fire", "t1", "submit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&client_url, &["--json", "token", "get", "t1"]);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["place"], "submitted");

    // Directly, it can neither write state nor reach JetStream.
    let before = stream_state(&host_url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cb_host::connect(&client_url).await.unwrap();
        let js = async_nats::jetstream::new(c.clone());
        let forged = js
            .publish(
                "cb.workflows.expense-approval.places.paid.tokens.t1",
                r#"{"forged": true}"#.into(),
            )
            .await;
        let acked = match forged {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "a client wrote to the stream");
        for api in [
            "$JS.API.STREAM.PURGE.CIRCUIT_BREAKER",
            "$JS.API.STREAM.DELETE.CIRCUIT_BREAKER",
            "$JS.API.STREAM.INFO.CIRCUIT_BREAKER",
        ] {
            let r = tokio::time::timeout(std::time::Duration::from_secs(2), c.request(api, "".into())).await;
            assert!(!matches!(r, Ok(Ok(_))), "{api} answered a client");
        }
    });
    assert_eq!(stream_state(&host_url), before, "the stream changed");
    assert!(serve.is_running());
    let out = cli(&client_url, &["--json", "token", "get", "t1"]);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["place"], "submitted", "state untouched: {t}");
}
