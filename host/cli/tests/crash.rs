//! Host crashes: `kill -9` of a `cb-host serve` process while it runs
//! actions, and while it serves firings; another host finishes the work,
//! nothing lost, nothing doubled.

use std::time::{Duration, Instant};

use cb_host::Host;
use cb_host::engine::FireRequest;
use cb_host::model::{EventKind, Id};
use cb_host::store::StoreConfig;
use cb_test_support::NatsServer;
use serde_json::json;

mod support;

use support::{plugin_dir, spawn_serve};

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn serve(url: &str, plugins: &std::path::Path) -> support::Serve {
    spawn_serve(url, plugins, &["--action-ack-wait-ms", "1500"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_actions_leaves_nothing_lost_or_doubled() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let mut a = serve(&url, plugins.path());
    let _b = serve(&url, plugins.path());
    // A client of our own (no dispatcher): creates and fires.
    let client = Host::builder()
        .nats_url(&url)
        .store(StoreConfig::development())
        .plugin_dir(plugins.path())
        .build()
        .await
        .unwrap();
    let wf = id("expense-approval");
    // Wait until the hosts applied the definition and bound the consumer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let js = async_nats::jetstream::new(client.client().clone());
        let ready = match js.get_stream("CIRCUIT_BREAKER").await {
            Ok(s) => s
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("cb-actions")
                .await
                .is_ok(),
            Err(_) => false,
        } && client.get_workflow(&wf, None).await.is_ok();
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "hosts did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = 60;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = client
            .create_token(
                &wf,
                Some(id(&format!("c{i}"))),
                json!({"amount": 10, "owner": "ana"}),
                Default::default(),
                None,
            )
            .await
            .unwrap();
        client
            .fire(FireRequest::new(wf.clone(), t.id.clone(), id("submit")))
            .await
            .unwrap();
        ids.push(t.id);
    }
    for (i, t) in ids.iter().enumerate() {
        client
            .fire(FireRequest::new(wf.clone(), t.clone(), id("approve")))
            .await
            .unwrap();
        if i == n / 2 {
            a.kill9(); // while events are flowing
        }
    }
    // Host B finishes everything, including what A held when it died.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut unpaid = None;
        for t in &ids {
            let tok = client.get_token(Some(&wf), t).await.unwrap();
            if tok.place != "paid" {
                unpaid = Some(tok);
                break;
            }
        }
        let Some(tok) = unpaid else { break };
        if Instant::now() >= deadline {
            let h = client.history(Some(&wf), &tok.id, None, 100).await.unwrap();
            panic!(
                "token {} still in `{}` after the crash; history: {:#?}",
                tok.id, tok.place, h.items
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in &ids {
        let h = client.history(Some(&wf), t, None, 100).await.unwrap();
        let pays = h
            .items
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == "pay"))
            .count();
        assert_eq!(pays, 1, "{t}: pay fired {pays} times");
        assert!(
            !h.items
                .iter()
                .any(|e| matches!(e.kind, EventKind::ActionFailed { .. })),
            "{t}: an action failed"
        );
    }
}

/// Waits (bounded) until every action event was processed and acked.
async fn actions_drained(client: &async_nats::Client) {
    cb_test_support::wait_consumer_idle(client, "CIRCUIT_BREAKER", "cb-actions", Duration::from_secs(120))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_while_serving_firings_loses_and_doubles_nothing() {
    use cb_host::api::ApiClient;
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use tokio::sync::Mutex;

    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let mut a = serve(&url, plugins.path());
    let _b = serve(&url, plugins.path());
    let u = url.clone();
    tokio::task::spawn_blocking(move || support::wait_service(&u))
        .await
        .unwrap();
    let nats = async_nats::connect(&url).await.unwrap();
    // Requests are spread over both hosts' service (one queue group).
    let api = ApiClient::new(nats.clone(), "cb", Duration::from_secs(3));

    #[derive(Default)]
    struct Seen {
        created: BTreeSet<String>,
        maybe: BTreeSet<String>,
        approved: BTreeMap<String, u64>,
        errors: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (api, seen, stop) = (api.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = format!("w{w}-{i}");
                i += 1;
                let create =
                    json!({"workflow": "expense-approval", "id": t, "data": {"amount": 10, "owner": "ana"}});
                if api.call::<_, Value>("token.create", &create).await.is_err() {
                    let mut s = seen.lock().await;
                    s.maybe.insert(t);
                    s.errors += 1;
                    continue;
                }
                seen.lock().await.created.insert(t.clone());
                for transition in ["submit", "approve"] {
                    match api
                        .call::<_, Value>("token.fire", &json!({"id": t, "transition": transition}))
                        .await
                    {
                        Ok(fired) if transition == "approve" => {
                            let seq = fired["event_sequence"].as_u64().expect("event_sequence");
                            seen.lock().await.approved.insert(t.clone(), seq);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            seen.lock().await.errors += 1;
                            break;
                        }
                    }
                }
            }
        }));
    }
    let approved = async |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.lock().await.approved.len() < n {
            assert!(Instant::now() < deadline, "firings stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    approved(30).await;
    a.kill9(); // while firings (and their actions) are in flight
    let at_kill = seen.lock().await.approved.len();
    approved(at_kill + 40).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    actions_drained(&nats).await;

    let client = Host::builder()
        .nats_url(&url)
        .store(StoreConfig::development())
        .plugin_dir(plugins.path())
        .build()
        .await
        .unwrap();
    let wf = id("expense-approval");
    let seen = seen.lock().await;
    let reader = client.engine().store().reader();
    let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for place in ["draft", "submitted", "approved", "rejected", "paid"] {
        for tok in reader.list_place_all(&wf, &id(place)).await.unwrap() {
            listed
                .entry(tok.id.to_string())
                .or_default()
                .push(place.to_string());
        }
    }
    let mut checked = 0;
    for t in seen.created.iter().chain(seen.maybe.iter()) {
        let token = match client.get_token(Some(&wf), &id(t)).await {
            Ok(tok) => tok,
            Err(_) if seen.maybe.contains(t) => continue, // never created
            Err(e) => panic!("{t} was created (acknowledged) but is lost: {e}"),
        };
        let h = client.history(Some(&wf), &id(t), None, 100).await.unwrap().items;
        let count = |name: &str| -> Vec<u64> {
            h.iter()
                .filter(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == name))
                .map(|e| e.sequence)
                .collect()
        };
        let (approve, pay) = (count("approve"), count("pay"));
        assert!(
            approve.len() <= 1 && count("submit").len() <= 1,
            "{t}: doubled firing"
        );
        assert_eq!(
            pay.len(),
            approve.len(),
            "{t}: approved {approve:?}, paid {pay:?}"
        );
        if let Some(seq) = seen.approved.get(t) {
            assert_eq!(approve, [*seq], "{t}: the acknowledged approval");
            assert_eq!(token.place, "paid", "{t}");
        }
        assert!(
            !h.iter().any(|e| matches!(e.kind, EventKind::ActionFailed { .. })),
            "{t}: an action failed"
        );
        // Live in exactly one place: the one `get` reports.
        assert_eq!(
            listed.get(t.as_str()).map(Vec::as_slice),
            Some([token.place.to_string()].as_slice()),
            "{t}: listed in the wrong places"
        );
        checked += 1;
    }
    eprintln!(
        "host kill -9 while serving firings: {checked} tokens checked, {} approvals acknowledged \
         ({at_kill} before the kill), {} calls failed, lost: 0, doubled: 0",
        seen.approved.len(),
        seen.errors
    );
}

/// How the requests reach a host: the NATS service API or the HTTP API
/// (the same keys, carried in the body or in `Idempotency-Key`).
#[derive(Clone)]
enum Via {
    Nats(cb_host::api::ApiClient),
    Http { client: reqwest::Client, base: String },
}

impl Via {
    async fn create(&self, i: usize) -> Result<serde_json::Value, String> {
        let data = json!({"amount": 10, "owner": "ana"});
        match self {
            Via::Nats(api) => api
                .call(
                    "token.create",
                    &json!({"workflow": "expense-approval", "id": format!("r{i}"), "data": data,
                            "idempotency_key": format!("create-{i}")}),
                )
                .await
                .map_err(|e| e.to_string()),
            Via::Http { client, base } => {
                let req = client
                    .post(format!("{base}/v1/workflows/expense-approval/tokens"))
                    .header("Idempotency-Key", format!("create-{i}"))
                    .json(&json!({"id": format!("r{i}"), "data": data}));
                http_answer(req, reqwest::StatusCode::CREATED).await
            }
        }
    }

    async fn fire(&self, i: usize) -> Result<serde_json::Value, String> {
        match self {
            Via::Nats(api) => api
                .call(
                    "token.fire",
                    &json!({"id": format!("r{i}"), "transition": "submit",
                            "idempotency_key": format!("submit-{i}")}),
                )
                .await
                .map_err(|e| e.to_string()),
            Via::Http { client, base } => {
                let req = client
                    .post(format!("{base}/v1/tokens/r{i}/transitions/submit"))
                    .header("Idempotency-Key", format!("submit-{i}"))
                    .json(&json!({}));
                http_answer(req, reqwest::StatusCode::OK).await
            }
        }
    }

    async fn complete(&self, i: usize) -> Result<serde_json::Value, String> {
        match self {
            Via::Nats(api) => api
                .call(
                    "token.complete",
                    &json!({"id": format!("r{i}"), "idempotency_key": format!("complete-{i}")}),
                )
                .await
                .map_err(|e| e.to_string()),
            Via::Http { client, base } => {
                let req = client
                    .post(format!("{base}/v1/tokens/r{i}/complete"))
                    .header("Idempotency-Key", format!("complete-{i}"))
                    .json(&json!({}));
                http_answer(req, reqwest::StatusCode::OK).await
            }
        }
    }
}

/// The body of an answer with status `want`; anything else (including a
/// connection cut by the kill) is an error.
async fn http_answer(
    req: reqwest::RequestBuilder,
    want: reqwest::StatusCode,
) -> Result<serde_json::Value, String> {
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if status != want {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// A host serving on `url`, with its HTTP API on a free loopback port when
/// `http`; waits until it answers, and says how to reach it.
async fn reachable_host(url: &str, plugins: &std::path::Path, http: bool) -> (support::Serve, Via) {
    let addr = http.then(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    });
    let mut extra = vec!["--action-ack-wait-ms", "1500"];
    if let Some(a) = &addr {
        extra.extend(["--http", a.as_str()]);
    }
    let host = spawn_serve(url, plugins, &extra);
    let u = url.to_string();
    tokio::task::spawn_blocking(move || support::wait_service(&u))
        .await
        .unwrap();
    let via = match addr {
        None => {
            let nats = async_nats::connect(url).await.unwrap();
            Via::Nats(cb_host::api::ApiClient::new(nats, "cb", Duration::from_secs(3)))
        }
        Some(a) => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let base = format!("http://{a}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(client.get(format!("{base}/v1/stats")).send().await, Ok(r) if r.status().is_success())
            {
                assert!(
                    Instant::now() < deadline,
                    "the HTTP API on {base} did not come up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Via::Http { client, base }
        }
    };
    (host, via)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_their_host_dies_are_retried_with_their_keys_to_one_outcome() {
    retried_with_keys_to_one_outcome(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_cut_off_by_a_host_kill_are_retried_with_idempotency_keys_to_their_original_answers() {
    retried_with_keys_to_one_outcome(true).await
}

/// 24 create-fire-complete runs against one host, `kill -9` with requests
/// in flight, then every request retried with its key against another:
/// each answer a first attempt got is given again, and each request
/// happened exactly once.
async fn retried_with_keys_to_one_outcome(http: bool) {
    use serde_json::Value;
    use std::sync::Arc;
    use tokio::sync::Mutex;

    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let (mut a, via) = reachable_host(&url, plugins.path(), http).await;
    // What each request's first attempt answered (create, fire, complete),
    // if it did.
    type Answer = (Option<Value>, Option<Value>, Option<Value>);
    type Answers = Vec<Answer>;
    let first: Arc<Mutex<Answers>> = Arc::new(Mutex::new(vec![(None, None, None); 24]));
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (via, first) = (via.clone(), first.clone());
            tokio::spawn(async move {
                let Ok(c) = via.create(i).await else {
                    return;
                };
                first.lock().await[i].0 = Some(c);
                let Ok(f) = via.fire(i).await else {
                    return;
                };
                first.lock().await[i].1 = Some(f);
                if let Ok(d) = via.complete(i).await {
                    first.lock().await[i].2 = Some(d);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Kill the host with requests in flight, once some firings have been
    // answered (so their retries have an original answer to give again).
    while first.lock().await.iter().filter(|(_, f, _)| f.is_some()).count() < 4 {
        assert!(Instant::now() < deadline, "no firings answered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let answered = first.lock().await.clone();
    let unanswered = answered
        .iter()
        .filter(|(c, f, d)| c.is_none() || f.is_none() || d.is_none())
        .count();

    // Another host; every request retried with its key.
    let (_b, via) = reachable_host(&url, plugins.path(), http).await;
    let client = Host::builder()
        .nats_url(&url)
        .store(StoreConfig::development())
        .plugin_dir(plugins.path())
        .build()
        .await
        .unwrap();
    let wf = id("expense-approval");
    for (i, (c0, f0, d0)) in answered.iter().enumerate() {
        let c = via.create(i).await.unwrap_or_else(|e| panic!("r{i} create: {e}"));
        if let Some(c0) = c0 {
            assert_eq!(
                (&c["id"], &c["revision"]),
                (&c0["id"], &c0["revision"]),
                "r{i}: the original create"
            );
        }
        let f = via.fire(i).await.unwrap_or_else(|e| panic!("r{i} fire: {e}"));
        if let Some(f0) = f0 {
            assert_eq!(
                f["event_sequence"], f0["event_sequence"],
                "r{i}: the original firing"
            );
        }
        let d = via
            .complete(i)
            .await
            .unwrap_or_else(|e| panic!("r{i} complete: {e}"));
        if let Some(d0) = d0 {
            assert_eq!(
                d["event_sequence"], d0["event_sequence"],
                "r{i}: the original completion"
            );
        }
        let h = client
            .history(Some(&wf), &id(&format!("r{i}")), None, 100)
            .await
            .unwrap()
            .items;
        let created = h
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Created { .. }))
            .count();
        let submits = h
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == "submit"))
            .count();
        let completed = h
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Completed { .. }))
            .count();
        assert_eq!(
            (created, submits, completed),
            (1, 1, 1),
            "r{i}: each request happened once"
        );
        assert_eq!(f["token"]["place"], "submitted");
        assert!(f["event_sequence"].as_u64().is_some_and(|s| s > 0), "r{i}: {f}");
    }
    let firsts = |n: fn(&Answer) -> bool| answered.iter().filter(|a| n(a)).count();
    eprintln!(
        "{unanswered} of 24 create-fire-complete runs were cut off by kill -9 ({}); every retry found its one outcome \
         and gave again the {} creates, {} firings and {} completions answered before the kill",
        if http { "HTTP" } else { "NATS" },
        firsts(|a| a.0.is_some()),
        firsts(|a| a.1.is_some()),
        firsts(|a| a.2.is_some()),
    );
}
