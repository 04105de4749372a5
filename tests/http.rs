//! The HTTP API with a real HTTP client (reqwest) against a real host and
//! nats-server: every endpoint, HTTP's conventions (ETag / If-Match,
//! Idempotency-Key, problem+json, Link pagination, body limits,
//! Retry-After), the same answers as the NATS service API, and
//! Prometheus metrics that count exactly what happened. Every response
//! read here is also validated against the OpenAPI document.

mod common;

use std::time::Duration;

use cb_host::api::{ApiClient, ApiError, HttpConfig, HttpServer};
use cb_host::model::WorkflowDefinition;
use cb_host::plugin::RuntimeConfig;
use cb_host::{Host, ServeConfig, Serving};
use cb_test_support::NatsServer;
use common::*;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH, LINK, LOCATION, RETRY_AFTER};
use serde_json::{Value, json};

const FLOW: &str = r#"{ "id": "flow", "places": ["a", "b", "c"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b",
      "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "on", "from": ["b"], "to": "c" },
    { "id": "slow", "from": ["c"], "to": "a",
      "guards": [ { "plugin": "misbehave", "config": { "do": "loop" }, "limits": { "deadline": 400 } } ] } ] }"#;

struct Target {
    _server: NatsServer,
    host: Host,
    serving: Option<Serving>,
    http: Option<HttpServer>,
    base: String,
    client: reqwest::Client,
    nats: ApiClient,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Target {
    async fn start(config: HttpConfig) -> Target {
        let server = NatsServer::start();
        let plugins = tempfile::tempdir().unwrap();
        for (name, path) in cb_test_plugins::ALL {
            if ["misbehave", "amount-limit"].contains(name) {
                std::fs::copy(path, plugins.path().join(format!("{name}.wasm"))).unwrap();
            }
        }
        let cache = tempfile::tempdir().unwrap();
        let host = Host::builder()
            .nats_url(server.url())
            .store(config_store())
            .runtime(RuntimeConfig {
                cache_dir: Some(cache.path().to_path_buf()),
                ..Default::default()
            })
            .plugin_dir(plugins.path())
            .build()
            .await
            .unwrap();
        host.apply_workflow(&WorkflowDefinition::parse(FLOW.as_bytes()).unwrap())
            .await
            .unwrap();
        let serving = cb_host::serve(&host, ServeConfig::default()).await.unwrap();
        let http = cb_host::api::serve_http(
            &host,
            HttpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..config
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", http.local_addr());
        let nats = ApiClient::new(connect(&server.url()).await, "cb", Duration::from_secs(5));
        Target {
            _server: server,
            host,
            serving: Some(serving),
            http: Some(http),
            base,
            client: reqwest::Client::new(),
            nats,
            _dirs: (plugins, cache),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        if let Some(h) = self.http.take() {
            h.stop().await;
        }
        if let Some(s) = self.serving.take() {
            s.shutdown().await;
        }
    }
}

fn config_store() -> cb_host::store::StoreConfig {
    config()
}

/// The OpenAPI document the host serves.
static SPEC: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| serde_json::from_str(&cb_host::api::openapi_json()).unwrap());

/// Checks a response against the document: some operation on a path
/// template matching `path` declares `status` with this content type, and
/// the body is valid against its schema.
fn conforms(path: &str, status: StatusCode, content_type: &str, body: &Value) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let matches = |template: &str| {
        let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
        t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
    };
    let paths = SPEC["paths"].as_object().unwrap();
    let fallback = status == StatusCode::NOT_FOUND
        && body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no such resource"));
    if fallback || !paths.keys().any(|t| matches(t)) {
        return; // not a route (here): the fallback's 404
    }
    let mut declared = Vec::new();
    for (template, ops) in paths.iter().filter(|(t, _)| matches(t)) {
        for (method, op) in ops.as_object().unwrap() {
            let Some(content) = op["responses"][status.as_str()]["content"].as_object() else {
                continue;
            };
            let Some(media) = content.get(content_type) else {
                continue;
            };
            let root = json!({ "components": SPEC["components"], "allOf": [media["schema"]] });
            let validator = jsonschema::draft202012::new(&root).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(body)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            if errors.is_empty() {
                return;
            }
            declared.push(format!("{method} {template}: {errors:?}"));
        }
    }
    panic!(
        "{path} answered {status} ({content_type}) {body}, which the OpenAPI document does not allow: {declared:?}"
    );
}

/// Status, headers and JSON body of a response, checked against the
/// OpenAPI document.
async fn read(r: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let (status, headers) = (r.status(), r.headers().clone());
    let path = r.url().path().to_string();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    if path != "/metrics" && path.starts_with("/v1/") {
        conforms(&path, status, &content_type, &body);
    }
    (status, headers, body)
}

/// A problem+json answer with `status` and `code`; returns its body.
async fn problem(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let (s, h, body) = read(r).await;
    assert_eq!(s, status, "{body}");
    assert_eq!(h[CONTENT_TYPE], "application/problem+json", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert_eq!(
        body["type"],
        format!("urn:circuit-breaker:error:{code}"),
        "{body}"
    );
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    body
}

fn etag(h: &reqwest::header::HeaderMap) -> u64 {
    h[ETAG].to_str().unwrap().trim_matches('"').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_round_trips_with_http_conventions() {
    let t = Target::start(HttpConfig::default()).await;
    let c = &t.client;

    // Workflows.
    let (s, _, list) = read(c.get(t.url("/v1/workflows")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["definition"]["id"], "flow");
    let (s, _, wf) = read(c.get(t.url("/v1/workflows/flow?version=1")).send().await.unwrap()).await;
    assert_eq!(
        (s, wf["version"].as_u64()),
        (StatusCode::OK, list[0]["version"].as_u64())
    );
    let mut other: Value = serde_json::from_str(FLOW).unwrap();
    other["id"] = json!("flow2");
    let (s, _, applied) = read(
        c.put(t.url("/v1/workflows/flow2"))
            .header("Idempotency-Key", "apply-1")
            .json(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{applied}");
    assert_eq!(applied["definition"]["id"], "flow2");
    let r = c
        .put(t.url("/v1/workflows/elsewhere"))
        .json(&other)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid").await;

    // Create: 201, ETag, Location; the same token over NATS.
    let r = c
        .post(t.url("/v1/workflows/flow/tokens"))
        .json(&json!({ "id": "h1", "data": { "amount": 5 } }))
        .send()
        .await
        .unwrap();
    let (s, h, created) = read(r).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(h[LOCATION], "/v1/tokens/h1");
    assert_eq!(etag(&h), created["revision"].as_u64().unwrap());
    let (s, h, got) = read(c.get(t.url("/v1/tokens/h1")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(etag(&h), got["revision"].as_u64().unwrap());
    let over_nats: Value = t.nats.call("token.get", &json!({ "id": "h1" })).await.unwrap();
    assert_eq!(got, over_nats, "HTTP and NATS answer alike");

    // Enabled, with each guard's verdict.
    let (s, _, en) = read(c.get(t.url("/v1/tokens/h1/transitions")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(en["transitions"][0]["transition"], "go");
    assert_eq!(en["transitions"][0]["enabled"], true);

    // Fire with If-Match: stale -> 412 with the current revision; current
    // -> 200 and the new ETag.
    let rev = etag(&h);
    let r = c
        .post(t.url("/v1/tokens/h1/transitions/go"))
        .header(IF_MATCH, format!("\"{}\"", rev + 1000))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::PRECONDITION_FAILED, "conflict").await;
    assert_eq!(p["revision"], rev, "{p}");
    let fire = || {
        c.post(t.url("/v1/tokens/h1/transitions/go"))
            .header(IF_MATCH, format!("\"{rev}\""))
            .header("Idempotency-Key", "\"fire-h1\"")
            .json(&json!({ "input": { "note": "hi" }, "actor": "ana" }))
    };
    let (s, h, fired) = read(fire().send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{fired}");
    assert_eq!(fired["token"]["place"], "b");
    assert_eq!(etag(&h), fired["token"]["revision"].as_u64().unwrap());
    // The same key again: the original firing, not a conflict.
    let (s, _, again) = read(fire().send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["event_sequence"], fired["event_sequence"]);

    // A page of one, with a Link to the next.
    c.post(t.url("/v1/workflows/flow/tokens"))
        .json(&json!({ "id": "h2", "data": { "amount": 5 } }))
        .send()
        .await
        .unwrap();
    c.post(t.url("/v1/tokens/h2/transitions/go"))
        .send()
        .await
        .unwrap();
    let (s, h, page) = read(
        c.get(t.url("/v1/workflows/flow/places/b/tokens?limit=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let link = h[LINK].to_str().unwrap().to_string();
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .map(|(u, rest)| {
            assert_eq!(rest, "; rel=\"next\"");
            u.to_string()
        })
        .unwrap();
    assert!(next.contains("limit=1") && next.contains("cursor="), "{next}");
    let (_, h, page2) = read(c.get(t.url(&next)).send().await.unwrap()).await;
    let ids: Vec<&str> = [&page, &page2]
        .iter()
        .map(|p| p["items"][0]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1", "h2"]);
    assert!(h.get(LINK).is_none(), "no Link past the last page");

    // History.
    let (s, _, hist) = read(c.get(t.url("/v1/tokens/h1/history")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = hist["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "transition"]);

    // Complete with If-Match.
    let r = c
        .post(t.url("/v1/tokens/h1/complete"))
        .header(IF_MATCH, "\"1\"")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PRECONDITION_FAILED, "conflict").await;
    let rev = fired["token"]["revision"].as_u64().unwrap();
    let (s, _, done) = read(
        c.post(t.url("/v1/tokens/h1/complete"))
            .header(IF_MATCH, format!("\"{rev}\""))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert!(done["event_sequence"].as_u64().unwrap() > rev);

    // Plugins and stats.
    let (s, _, plugins) = read(c.get(t.url("/v1/plugins")).send().await.unwrap()).await;
    assert_eq!((s, plugins.as_array().unwrap().len()), (StatusCode::OK, 2));
    let (s, _, stats) = read(c.get(t.url("/v1/stats")).send().await.unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(stats["commits"]["writes"].as_u64().unwrap() >= 5, "{stats}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_is_problem_json_and_the_same_as_over_nats() {
    let t = Target::start(HttpConfig {
        max_body: 64 << 10,
        max_in_flight: 1,
        ..Default::default()
    })
    .await;
    let c = &t.client;
    for (id, amount) in [("e1", 5), ("big", 500)] {
        let r = c
            .post(t.url("/v1/workflows/flow/tokens"))
            .json(&json!({ "id": id, "data": { "amount": amount } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // (HTTP request, the same request over NATS, status, code)
    let cases: Vec<(reqwest::RequestBuilder, &str, Value, StatusCode, &str)> = vec![
        (
            c.get(t.url("/v1/tokens/nope")),
            "token.get",
            json!({ "id": "nope" }),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            c.get(t.url("/v1/tokens/a.b")),
            "token.get",
            json!({ "id": "a.b" }),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
        (
            c.post(t.url("/v1/tokens/e1/transitions/on")),
            "token.fire",
            json!({ "id": "e1", "transition": "on" }),
            StatusCode::PRECONDITION_FAILED,
            "not-enabled",
        ),
        (
            c.post(t.url("/v1/tokens/e1/transitions/fly")),
            "token.fire",
            json!({ "id": "e1", "transition": "fly" }),
            StatusCode::BAD_REQUEST,
            "unknown-transition",
        ),
        (
            c.post(t.url("/v1/tokens/big/transitions/go")),
            "token.fire",
            json!({ "id": "big", "transition": "go" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "denied",
        ),
        (
            c.post(t.url("/v1/workflows/flow/tokens"))
                .json(&json!({ "id": "e1" })),
            "token.create",
            json!({ "workflow": "flow", "id": "e1" }),
            StatusCode::CONFLICT,
            "duplicate",
        ),
        (
            c.post(t.url("/v1/workflows/flow/tokens"))
                .json(&json!({ "id": "x", "color": "red" })),
            "token.create",
            json!({ "workflow": "flow", "id": "x", "color": "red" }),
            StatusCode::BAD_REQUEST,
            "invalid",
        ),
    ];
    for (http, endpoint, nats_req, status, code) in cases {
        let p = problem(http.send().await.unwrap(), status, code).await;
        match t.nats.call::<_, Value>(endpoint, &nats_req).await {
            Err(ApiError::Service(info)) => {
                assert_eq!(
                    (info.code.as_str(), info.message.as_str()),
                    (code, p["detail"].as_str().unwrap())
                );
                assert_eq!(
                    serde_json::to_value(&info.denials).unwrap(),
                    p.get("denials").cloned().unwrap_or(json!([]))
                );
                assert_eq!(info.status(), status.as_u16() as usize);
            }
            other => panic!("{endpoint}: {other:?}"),
        }
    }
    // HTTP-only refusals: trailing data, a body over the limit, an unknown
    // query parameter, an unknown route, a bad If-Match.
    let r = c
        .post(t.url("/v1/workflows/flow/tokens"))
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"id": "y"} }{ junk"#)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid").await;
    let huge = json!({ "id": "z", "data": { "blob": "x".repeat(100 << 10) } });
    let r = c
        .post(t.url("/v1/workflows/flow/tokens"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PAYLOAD_TOO_LARGE, "invalid").await;
    let r = c.get(t.url("/v1/tokens/e1?colour=red")).send().await.unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid").await;
    let r = c.get(t.url("/v2/nothing")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;
    let r = c
        .post(t.url("/v1/tokens/e1/transitions/go"))
        .header(IF_MATCH, "W/\"3\"")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid").await;
    // Nothing of that stored a token.
    let r = c.get(t.url("/v1/tokens/z")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;

    // Busy: one request in progress (a guard spinning to its deadline),
    // the next is answered 503 at once, with Retry-After. The slow firing
    // itself may be the one refused, when a probe held the only slot as it
    // arrived: then it is sent again.
    c.post(t.url("/v1/tokens/e1/transitions/go"))
        .send()
        .await
        .unwrap();
    c.post(t.url("/v1/tokens/e1/transitions/on"))
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut busy = None;
    while busy.is_none() {
        assert!(std::time::Instant::now() < deadline, "never saw `busy`");
        let slow = tokio::spawn(c.post(t.url("/v1/tokens/e1/transitions/slow")).send());
        while !slow.is_finished() {
            let r = c.get(t.url("/v1/plugins")).send().await.unwrap();
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                busy = Some(r);
                break;
            }
        }
        let slow = slow.await.unwrap().unwrap();
        match slow.status() {
            StatusCode::INTERNAL_SERVER_ERROR => {
                problem(slow, StatusCode::INTERNAL_SERVER_ERROR, "plugin-error").await;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                problem(slow, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
            }
            other => panic!("the slow firing answered {other}"),
        }
    }
    let r = busy.unwrap();
    assert_eq!(r.headers()[RETRY_AFTER], "1");
    problem(r, StatusCode::SERVICE_UNAVAILABLE, "busy").await;
    t.stop().await;
}

/// The value of one sample line of the exposition, 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_firings_made() {
    let t = Target::start(HttpConfig::default()).await;
    let c = &t.client;
    let scrape = async || {
        let r = c.get(t.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        r.text().await.unwrap()
    };
    let fired = "cb_firings_total{workflow=\"metered\",transition=\"go\",outcome=\"fired\"}";
    let denied = "cb_firings_total{workflow=\"metered\",transition=\"go\",outcome=\"denied\"}";
    let created = "cb_api_requests_total{endpoint=\"token.create\",code=\"ok\",transport=\"http\"}";
    let nats_get = "cb_api_requests_total{endpoint=\"token.get\",code=\"not-found\",transport=\"nats\"}";
    let guard_calls = "cb_plugin_call_duration_seconds_count{plugin=\"amount-limit\",world=\"guard\"}";
    let mut def: Value = serde_json::from_str(FLOW).unwrap();
    def["id"] = json!("metered");
    let r = c
        .put(t.url("/v1/workflows/metered"))
        .json(&def)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let before = scrape().await;
    for (i, amount) in [5, 6, 7, 500].iter().enumerate() {
        let r = c
            .post(t.url("/v1/workflows/metered/tokens"))
            .json(&json!({ "id": format!("m{i}"), "data": { "amount": amount } }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        c.post(t.url(&format!("/v1/tokens/m{i}/transitions/go")))
            .send()
            .await
            .unwrap();
    }
    let _ = t
        .nats
        .call::<_, Value>("token.get", &json!({ "id": "nope" }))
        .await;
    let after = scrape().await;
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(delta(fired), 3.0, "{after}");
    assert_eq!(delta(denied), 1.0, "{after}");
    assert_eq!(delta(created), 4.0, "{after}");
    assert_eq!(delta(nats_get), 1.0, "{after}");
    assert!(delta(guard_calls) >= 4.0, "{after}");
    for family in [
        "cb_firing_duration_seconds_bucket",
        "cb_commit_batches_total",
        "cb_commit_server_wait_seconds_count",
        "cb_plugin_fuel_total",
        "cb_plugin_load_duration_seconds_count",
        "cb_api_requests_in_flight",
    ] {
        assert!(after.contains(family), "{family} missing:\n{after}");
    }
    assert!(!after.contains("m0"), "no token id in any label");

    // A metrics-only listener serves nothing else.
    let only = cb_host::api::serve_http(
        &t.host,
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", only.local_addr());
    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{base}/v1/workflows")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;
    only.stop().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_checked_in() {
    let t = Target::start(HttpConfig::default()).await;
    let r = t.client.get(t.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let served = r.text().await.unwrap();
    assert_eq!(served, cb_host::api::openapi_json());
    let checked_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("CB_BLESS").is_some() {
        std::fs::write(&checked_in, &served).unwrap();
    }
    let file = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        file == served,
        "docs/openapi.json is not the document the host serves; regenerate it with \
         `CB_BLESS=1 cargo test --test http the_openapi_document` and commit it"
    );
    t.stop().await;
}
