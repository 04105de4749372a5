//! Multi-place tokens under concurrency and faults, against real
//! nats-server: a join raced by its two branches from two hosts, `kill -9`
//! of the server in the middle of split and join firings, listings read
//! while branches move, and a stream written in the layout from before
//! markings (single-place tokens) read and fired unchanged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use cb_host::engine::{Engine, EngineConfig, FireError, FireRequest};
use cb_host::model::{Event, EventKind, Id, WorkflowDefinition};
use cb_host::plugin::PluginRegistry;
use cb_host::store::{NewToken, Store, StoreError, StoreReader};
use common::*;
use tokio::sync::{Mutex, watch};

/// Legal and finance review in parallel, approval once both are done;
/// `archive` consumes the last mark (the case then completes).
const REVIEW: &str = r#"{ "id": "review",
  "places": ["submitted", "legal", "finance", "legal_ok", "finance_ok", "approved"],
  "initial_place": "submitted",
  "transitions": [
    { "id": "start", "from": ["submitted"], "split": ["legal", "finance"] },
    { "id": "legal_done", "from": ["legal"], "to": "legal_ok" },
    { "id": "finance_done", "from": ["finance"], "to": "finance_ok" },
    { "id": "approve", "join": ["legal_ok", "finance_ok"], "to": "approved" },
    { "id": "archive", "from": ["approved"] } ] }"#;

/// Two branches of six steps each, then a join.
const LANES: &str = r#"{ "id": "lanes",
  "places": ["s", "l1", "l2", "l3", "l4", "l5", "l6", "r1", "r2", "r3", "r4", "r5", "r6", "end"],
  "initial_place": "s",
  "final": ["end"],
  "transitions": [
    { "id": "split", "from": ["s"], "split": ["l1", "r1"] },
    { "id": "l1", "from": ["l1"], "to": "l2" }, { "id": "l2", "from": ["l2"], "to": "l3" },
    { "id": "l3", "from": ["l3"], "to": "l4" }, { "id": "l4", "from": ["l4"], "to": "l5" },
    { "id": "l5", "from": ["l5"], "to": "l6" },
    { "id": "r1", "from": ["r1"], "to": "r2" }, { "id": "r2", "from": ["r2"], "to": "r3" },
    { "id": "r3", "from": ["r3"], "to": "r4" }, { "id": "r4", "from": ["r4"], "to": "r5" },
    { "id": "r5", "from": ["r5"], "to": "r6" },
    { "id": "join", "join": ["l6", "r6"], "to": "end" } ] }"#;

fn engine(store: Store) -> Engine {
    Engine::new(store, PluginRegistry::new(), EngineConfig::default())
}

async fn engine_on(url: &str) -> Engine {
    engine(Store::open(connect(url).await, config()).await.unwrap())
}

fn fire_req(wf: &str, token: &str, transition: &str) -> FireRequest {
    FireRequest::new(id(wf), id(token), id(transition))
}

fn sorted(ids: &[Id]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    v.sort();
    v
}

/// The marking `events` lead to from `initial`, checking that every
/// firing consumed marks the case had and never marked a place twice;
/// and how often each transition fired.
fn replay(initial: &Id, events: &[Event]) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut marking = BTreeSet::from([initial.to_string()]);
    let mut fired = BTreeMap::new();
    for e in events {
        if let EventKind::Transition {
            transition,
            from,
            to,
            consumed,
            produced,
            cancelled,
            ..
        } = &e.kind
        {
            *fired.entry(transition.to_string()).or_default() += 1;
            for c in consumed.as_deref().unwrap_or(std::slice::from_ref(from)) {
                assert!(
                    marking.remove(c.as_str()),
                    "{}: `{transition}` consumed `{c}`, not marked in {marking:?}",
                    e.token_id
                );
            }
            for c in cancelled {
                marking.remove(c.as_str());
            }
            for p in produced.as_deref().unwrap_or(std::slice::from_ref(to)) {
                assert!(
                    marking.insert(p.to_string()),
                    "{}: `{transition}` marked `{p}` twice",
                    e.token_id
                );
            }
        }
    }
    (marking, fired)
}

/// Every place's listing, as token -> places it is listed in.
async fn listings(reader: &StoreReader, def: &WorkflowDefinition) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for place in &def.places {
        let mut cursor = None;
        loop {
            let page = reader.list_place(&def.id, place, cursor, 1000).await.unwrap();
            for t in page.items {
                out.entry(t.id.to_string()).or_default().insert(place.to_string());
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    out
}

/// One branch's last step, then the join (`false` when the other branch
/// was not done yet, or the other host's join won).
async fn finish_branch(engine: Engine, token: String, branch: &'static str) -> bool {
    engine.fire(fire_req("review", &token, branch)).await.unwrap();
    match engine.fire(fire_req("review", &token, "approve")).await {
        Ok(_) => true,
        Err(FireError::NotEnabled { .. }) => false,
        Err(e) => panic!("approve on {token}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_raced_by_its_two_branches_from_two_hosts_fires_exactly_once() {
    let server = cb_test_support::NatsServer::start();
    let (h1, h2) = (engine_on(&server.url()).await, engine_on(&server.url()).await);
    let stored = apply(h1.store(), REVIEW).await;
    let reader = h1.store().reader();
    let (mut first_host_joined, rounds) = (0, 50);
    for round in 0..rounds {
        let token = format!("race-{round}");
        let new = NewToken {
            id: Some(id(&token)),
            ..Default::default()
        };
        h1.create_token(&id("review"), new).await.unwrap();
        h2.fire(fire_req("review", &token, "start")).await.unwrap();
        let a = tokio::spawn(finish_branch(h1.clone(), token.clone(), "legal_done"));
        let b = tokio::spawn(finish_branch(h2.clone(), token.clone(), "finance_done"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(
            a ^ b,
            "round {round}: exactly one join (host 1: {a}, host 2: {b})"
        );
        first_host_joined += a as usize;

        let t = reader.get_token(&id("review"), &id(&token)).await.unwrap();
        assert_eq!(sorted(&t.marks()), ["approved"], "round {round}");
        let events = reader
            .history(&id("review"), &id(&token), None, 100)
            .await
            .unwrap()
            .items;
        let (marking, fired) = replay(&stored.definition.initial_place, &events);
        assert_eq!(marking, BTreeSet::from(["approved".to_string()]), "round {round}");
        assert_eq!(fired.values().sum::<usize>(), 4, "round {round}: {fired:?}");
        assert!(fired.values().all(|n| *n == 1), "round {round}: {fired:?}");
        let listed = listings(&reader, &stored.definition).await;
        assert_eq!(listed[&token], BTreeSet::from(["approved".to_string()]));
    }
    eprintln!("{rounds} rounds: the join fired once each, {first_host_joined} times from host 1");
}

/// What the clients of the fault test saw.
#[derive(Default)]
struct Seen {
    /// Tokens whose creation was acknowledged.
    created: BTreeSet<String>,
    /// Tokens whose creation failed: they may or may not exist.
    maybe: BTreeSet<String>,
    /// Acknowledged firings: (token, transition) -> event sequence.
    fired: BTreeMap<(String, String), u64>,
    /// Calls that failed (allowed while the server is down).
    errors: usize,
}

struct Clients {
    seen: Mutex<Seen>,
    acked: watch::Sender<usize>,
}

impl Clients {
    async fn fire(&self, engine: &Engine, token: &str, transition: &str) -> bool {
        match engine.fire(fire_req("review", token, transition)).await {
            Ok(f) => {
                self.seen
                    .lock()
                    .await
                    .fired
                    .insert((token.into(), transition.into()), f.event_sequence);
                self.acked.send_modify(|n| *n += 1);
                true
            }
            Err(_) => {
                self.seen.lock().await.errors += 1;
                false
            }
        }
    }

    /// One case through split, both branches at once, join.
    async fn case(&self, engine: &Engine, token: &str) {
        let new = NewToken {
            id: Some(id(token)),
            ..Default::default()
        };
        if engine.create_token(&id("review"), new).await.is_err() {
            let mut s = self.seen.lock().await;
            s.maybe.insert(token.into());
            s.errors += 1;
            return;
        }
        self.seen.lock().await.created.insert(token.into());
        if !self.fire(engine, token, "start").await {
            return;
        }
        let (a, b) = tokio::join!(
            self.fire(engine, token, "legal_done"),
            self.fire(engine, token, "finance_done")
        );
        if a && b {
            self.fire(engine, token, "approve").await;
        }
    }

    /// Waits until `more` more firings were acknowledged.
    async fn progress(&self, more: usize) {
        let mut rx = self.acked.subscribe();
        let target = *rx.borrow() + more;
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|n| *n >= target))
            .await
            .expect("no progress: firings stalled")
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_split_and_join_firings_leaves_every_marking_and_its_events_agreeing() {
    let mut server = cb_test_support::NatsServer::start();
    let url = server.url();
    let h1 = engine_on(&url).await;
    let stored = apply(h1.store(), REVIEW).await;
    let h2 = engine_on(&url).await;
    let clients = Arc::new(Clients {
        seen: Mutex::new(Seen::default()),
        acked: watch::channel(0).0,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (name, engine) in [("h1", h1.clone()), ("h2", h2.clone())] {
        for lane in 0..4 {
            let (clients, stop, engine) = (clients.clone(), stop.clone(), engine.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    clients.case(&engine, &format!("{name}-{lane}-{i}")).await;
                    i += 1;
                }
            }));
        }
    }
    clients.progress(40).await;
    for _ in 0..2 {
        server.kill();
        server.restart();
        // The engines reconnect on their own.
        clients.progress(40).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let seen = std::mem::take(&mut *clients.seen.lock().await);
    let reader = h1.store().reader();
    let listed = listings(&reader, &stored.definition).await;
    let (mut checked, mut complete) = (0, 0);
    for token in seen.created.iter().chain(&seen.maybe) {
        let events = match reader.history(&id("review"), &id(token), None, 100).await {
            Ok(page) => page.items,
            Err(StoreError::NotFound(_)) => Vec::new(),
            Err(e) => panic!("{token}: {e}"),
        };
        if events.is_empty() {
            assert!(
                seen.maybe.contains(token),
                "{token}: an acknowledged creation has no events"
            );
            continue;
        }
        checked += 1;
        let (marking, fired) = replay(&stored.definition.initial_place, &events);
        assert!(
            fired.values().all(|n| *n == 1),
            "{token}: a firing doubled: {fired:?}"
        );
        let got = match reader.get_token(&id("review"), &id(token)).await {
            Ok(t) => t.marks().iter().map(|p| p.to_string()).collect(),
            Err(StoreError::NotFound(_)) => BTreeSet::new(),
            Err(e) => panic!("{token}: {e}"),
        };
        assert_eq!(
            got, marking,
            "{token}: the marking read is the one its events lead to"
        );
        assert_eq!(
            listed.get(token).cloned().unwrap_or_default(),
            marking,
            "{token}: listed exactly where it is marked"
        );
        complete += (marking == BTreeSet::from(["approved".to_string()])) as usize;
        for ((t, transition), seq) in &seen.fired {
            if t == token {
                assert!(
                    events.iter().any(|e| e.sequence == *seq
                        && matches!(&e.kind, EventKind::Transition { transition: x, .. } if x.as_str() == transition.as_str())),
                    "{token}: acknowledged `{transition}` (event {seq}) is not in its history"
                );
            }
        }
    }
    eprintln!(
        "2 kill -9 + restarts: {checked} cases checked ({complete} joined), {} acknowledged firings, \
         {} calls failed during faults; lost or doubled: 0",
        seen.fired.len(),
        seen.errors
    );
    assert!(complete >= 10 && seen.fired.len() >= 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_a_place_while_branches_move_never_shows_a_stale_mark() {
    let server = cb_test_support::NatsServer::start();
    let engine = engine_on(&server.url()).await;
    let stored = apply(engine.store(), LANES).await;
    let def = stored.definition.clone();
    let tokens: Vec<String> = (0..6).map(|i| format!("lane-{i}")).collect();
    // The newest revision each token's movers saw acknowledged.
    let confirmed: Arc<BTreeMap<String, AtomicU64>> =
        Arc::new(tokens.iter().map(|t| (t.clone(), AtomicU64::new(0))).collect());
    for t in &tokens {
        let new = NewToken {
            id: Some(id(t)),
            ..Default::default()
        };
        engine.create_token(&id("lanes"), new).await.unwrap();
        let f = engine
            .fire(FireRequest::new(id("lanes"), id(t), id("split")))
            .await
            .unwrap();
        confirmed[t].fetch_max(f.token.revision, Ordering::SeqCst);
    }
    let mut movers = Vec::new();
    for t in &tokens {
        for side in ["l", "r"] {
            let (engine, t, confirmed) = (engine.clone(), t.clone(), confirmed.clone());
            movers.push(tokio::spawn(async move {
                for step in 1..=5 {
                    let f = engine
                        .fire(FireRequest::new(
                            id("lanes"),
                            id(&t),
                            id(&format!("{side}{step}")),
                        ))
                        .await
                        .unwrap();
                    confirmed[&t].fetch_max(f.token.revision, Ordering::SeqCst);
                }
            }));
        }
    }
    let reader = engine.store().reader();
    let (mut lists, mut seen_listed) = (0, 0);
    while movers.iter().any(|m| !m.is_finished()) {
        for place in &def.places {
            let before: BTreeMap<String, u64> = confirmed
                .iter()
                .map(|(t, r)| (t.clone(), r.load(Ordering::SeqCst)))
                .collect();
            let page = reader.list_place(&def.id, place, None, 1000).await.unwrap();
            lists += 1;
            for t in page.items {
                seen_listed += 1;
                assert!(
                    t.marks().contains(place),
                    "{}: listed in `{place}` with marking {:?}",
                    t.id,
                    t.marks()
                );
                assert!(
                    t.revision >= before[t.id.as_str()],
                    "{}: listed in `{place}` at revision {}, older than the {} acknowledged before the listing",
                    t.id,
                    t.revision,
                    before[t.id.as_str()]
                );
            }
        }
    }
    for m in movers {
        m.await.unwrap();
    }
    let listed = listings(&reader, &def).await;
    for t in &tokens {
        assert_eq!(
            listed[t],
            BTreeSet::from(["l6".to_string(), "r6".to_string()]),
            "{t}: both lanes at their end"
        );
        let got = reader.get_token(&def.id, &id(t)).await.unwrap();
        assert_eq!(got.revision, confirmed[t].load(Ordering::SeqCst));
        assert!(
            engine
                .fire(FireRequest::new(id("lanes"), id(t), id("join")))
                .await
                .unwrap()
                .completed
        );
    }
    eprintln!("{lists} listings during the moves, {seen_listed} listed tokens, none stale");
    assert!(lists > 0);
}

/// The messages the host wrote before tokens had a marking: a definition
/// with only `from`/`to`, a token created in `a` and moved to `b` (a
/// tombstone in `a`, the state in `b`), and their events, published
/// here byte for byte as that code wrote them.
async fn write_old_layout(client: &async_nats::Client) {
    let js = async_nats::jetstream::new(client.clone());
    let publish = async |subject: &str, headers: HeaderMap, body: &str| {
        js.publish_with_headers(subject.to_string(), headers, body.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    let def = r#"{"id":"legacy","name":"Before markings","places":["a","b","c"],"initial_place":"a","transitions":[{"id":"go","from":["a"],"to":"b"},{"id":"on","from":["b"],"to":"c"},{"id":"back","from":["b","c"],"to":"a"}]}"#;
    publish("cb.workflows.legacy.definition", HeaderMap::new(), def).await;
    let created = publish(
        "cb.workflows.legacy.places.a.tokens.old-1",
        HeaderMap::new(),
        r#"{"definition_version":1,"data":{"amount":7},"metadata":{"team":"ops"}}"#,
    )
    .await;
    publish(
        "cb.workflows.legacy.events.lifecycle.old-1",
        HeaderMap::new(),
        r#"{"workflow_id":"legacy","token_id":"old-1","from_revision":0,"kind":"created","place":"a","definition_version":1}"#,
    )
    .await;
    let mut tomb = HeaderMap::new();
    tomb.insert("KV-Operation", "PURGE");
    tomb.insert("Nats-Rollup", "sub");
    publish("cb.workflows.legacy.places.a.tokens.old-1", tomb, "").await;
    publish(
        "cb.workflows.legacy.places.b.tokens.old-1",
        HeaderMap::new(),
        r#"{"definition_version":1,"data":{"amount":7},"metadata":{"team":"ops"},"created_at":"2026-11-01T10:00:00Z"}"#,
    )
    .await;
    publish(
        "cb.workflows.legacy.events.transitions.old-1",
        HeaderMap::new(),
        &format!(
            r#"{{"workflow_id":"legacy","token_id":"old-1","from_revision":{created},"kind":"transition","transition":"go","from":"a","to":"b","state":{{"definition_version":1,"data":{{"amount":7}},"metadata":{{"team":"ops"}},"created_at":"2026-11-01T10:00:00Z"}}}}"#
        ),
    )
    .await;
}

#[tokio::test]
async fn tokens_and_definitions_from_before_markings_read_and_fire_unchanged() {
    let env = env().await;
    write_old_layout(&env.client).await;
    let engine = engine(env.store.clone());
    let reader = env.store.reader();
    let (wf, tok) = (id("legacy"), id("old-1"));

    let def = reader.get_definition(&wf).await.unwrap();
    assert_eq!(def.version, 1);
    assert!(def.definition.final_places.is_empty());
    let t = reader.get_token(&wf, &tok).await.unwrap();
    assert_eq!(
        (t.place.as_str(), sorted(&t.marks())),
        ("b", vec!["b".to_string()])
    );
    assert_eq!(t.data["amount"], 7);
    assert_eq!(t.metadata["team"], "ops");
    assert_eq!(reader.find_token(&tok).await.unwrap().revision, t.revision);
    let listed = listings(&reader, &def.definition).await;
    assert_eq!(listed[&tok.to_string()], BTreeSet::from(["b".to_string()]));
    let history = reader.history(&wf, &tok, None, 10).await.unwrap().items;
    assert_eq!(history.len(), 2);
    let (marking, _) = replay(&def.definition.initial_place, &history);
    assert_eq!(marking, BTreeSet::from(["b".to_string()]));

    // It fires as before: `on` moves b -> c, `back` from either.
    let (_, enabled) = engine.enabled(&wf, &tok).await.unwrap();
    let open: BTreeSet<String> = enabled
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.transition.to_string())
        .collect();
    assert_eq!(open, BTreeSet::from(["back".to_string(), "on".to_string()]));
    let f = engine
        .fire(FireRequest::new(wf.clone(), tok.clone(), id("on")))
        .await
        .unwrap();
    assert_eq!((f.from.as_str(), f.token.place.as_str()), ("b", "c"));
    assert_eq!(f.token.data["amount"], 7);
    let f = engine
        .fire(FireRequest::new(wf.clone(), tok.clone(), id("back")))
        .await
        .unwrap();
    assert_eq!(f.token.place, "a");
    let t = reader.get_token(&wf, &tok).await.unwrap();
    assert_eq!(
        (sorted(&t.marks()), t.revision),
        (vec!["a".to_string()], f.token.revision)
    );
    assert_eq!(t.created_at, f.token.created_at);
    let history = reader.history(&wf, &tok, None, 10).await.unwrap().items;
    assert_eq!(history.len(), 4);
    assert_eq!(
        replay(&def.definition.initial_place, &history).0,
        BTreeSet::from(["a".to_string()])
    );
    let listed = listings(&reader, &def.definition).await;
    assert_eq!(listed[&tok.to_string()], BTreeSet::from(["a".to_string()]));

    // A new token on the old definition behaves the same.
    let new = engine.create_token(&wf, NewToken::default()).await.unwrap();
    let f = engine
        .fire(FireRequest::new(wf.clone(), new.token.id.clone(), id("go")))
        .await
        .unwrap();
    assert_eq!(f.token.marks(), vec![id("b")]);
}
