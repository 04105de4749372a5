//! Faults under load: two hosts fire transitions (with an action and its
//! follow-up) while the stream leader of a 3-node cluster, or a single
//! file-backed server, is killed with `kill -9` and restarted, three times.
//! Afterwards nothing is lost or doubled:
//!
//! - every token a client saw created exists, live in exactly one place;
//! - every firing a client saw succeed is in the token's history, and
//!   every committed move has exactly one event;
//! - every `go` event's action ran and its follow-up `stamp` fired exactly
//!   once (a self-loop: only deduplication prevents a second one);
//! - right after a successful firing, the client reads its own write from
//!   the stream leader, whichever node it is connected to.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use cb_host::engine::{Dispatcher, DispatcherConfig, Engine, EngineConfig, FireRequest};
use cb_host::model::{Event, EventKind, Id};
use cb_host::plugin::{PluginRegistry, PluginRuntime, RuntimeConfig};
use cb_host::store::{NewToken, Store, StoreConfig, StoreReader};
use common::*;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// `go` moves a -> b; its action asks for `stamp`, a self-loop on b.
const WF: &str = r#"{ "id": "rel", "places": ["a", "b"], "initial_place": "a",
  "transitions": [
    { "id": "go", "from": ["a"], "to": "b",
      "actions": [ { "plugin": "auto-advance", "config": { "transition": "stamp" } } ] },
    { "id": "stamp", "from": ["b"], "to": "b" } ] }"#;

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Tokens whose creation was acknowledged.
    created: BTreeSet<String>,
    /// Tokens whose creation failed: they may or may not exist.
    maybe: BTreeSet<String>,
    /// Successful `go` firings: token -> event sequence.
    fired: BTreeMap<String, u64>,
    /// Firings and creations that returned an error (allowed during faults).
    errors: usize,
    /// Reads after a successful firing that did not see it.
    stale_reads: usize,
    /// Reads after a successful firing that saw it.
    fresh_reads: usize,
}

struct Host {
    engine: Engine,
    dispatcher: Dispatcher,
    _cache: tempfile::TempDir,
}

async fn host(client: async_nats::Client, config: StoreConfig) -> Host {
    let store = open_retrying(client, config).await;
    let cache = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let mut reg = PluginRegistry::new();
    reg.insert(
        rt.load_file(std::path::Path::new(cb_test_plugins::AUTO_ADVANCE))
            .unwrap(),
    );
    let engine = Engine::new(store, reg, EngineConfig::default());
    let dispatcher = Dispatcher::start(
        engine.clone(),
        DispatcherConfig {
            ack_wait: Duration::from_secs(2),
            backoff: vec![Duration::from_millis(200)],
            max_deliver: 50,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Host {
        engine,
        dispatcher,
        _cache: cache,
    }
}

/// A cluster's meta leader may still be electing when the first request
/// arrives.
async fn open_retrying(client: async_nats::Client, config: StoreConfig) -> Store {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(client.clone(), config.clone()).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "store did not open: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One host's clients: create a token, fire `go`, read it back from the
/// leader; until `stop`.
async fn load(engine: Engine, name: &'static str, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let (wf, reader) = (id("rel"), engine.store().reader());
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let tid = format!("{name}-{i}");
        i += 1;
        let new = NewToken {
            id: Some(id(&tid)),
            ..Default::default()
        };
        if engine.create_token(&wf, new).await.is_err() {
            let mut s = seen.lock().await;
            s.maybe.insert(tid);
            s.errors += 1;
            // Back off while the servers are out, instead of spinning.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        seen.lock().await.created.insert(tid.clone());
        match engine
            .fire(FireRequest::new(wf.clone(), id(&tid), id("go")))
            .await
        {
            Ok(fired) => {
                let read = reader.get_token_from_leader(&wf, &id(&tid)).await;
                let mut s = seen.lock().await;
                s.fired.insert(tid, fired.event_sequence);
                match read {
                    Ok(t) if t.revision >= fired.token.revision => s.fresh_reads += 1,
                    Ok(_) => s.stale_reads += 1,
                    Err(_) => s.errors += 1,
                }
            }
            Err(_) => {
                seen.lock().await.errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Waits until the clients have had `more` more successful firings: the
/// load really runs (before a fault, and again after one).
async fn progress(seen: &Arc<Mutex<Seen>>, more: usize) {
    let start = seen.lock().await.fired.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().await.fired.len() < start + more {
        assert!(Instant::now() < deadline, "no progress: firings stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two hosts' clients running `load` until [`Load::finish`], which stops
/// them, waits for every action, and checks every invariant.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the clients of `h1` and `h2`; returns once they are firing.
    async fn start(h1: &Host, h2: &Host) -> Load {
        let (stop, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Seen::default())),
        );
        let clients = [("h1", h1), ("h2", h2)]
            .into_iter()
            .map(|(name, h)| tokio::spawn(load(h.engine.clone(), name, stop.clone(), seen.clone())))
            .collect();
        progress(&seen, 30).await;
        Load { stop, seen, clients }
    }

    /// Stops the clients, waits until every action ran, checks; returns
    /// what the clients saw and the number of tokens checked.
    async fn finish(self, admin: &async_nats::Client, store: &Store) -> (Seen, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
        actions_drained(admin).await;
        replicas_caught_up(admin).await;
        let seen = std::mem::take(&mut *self.seen.lock().await);
        let checked = check(store, &seen).await;
        (seen, checked)
    }
}

/// Waits (bounded) until every action event was processed and acked.
async fn actions_drained(client: &async_nats::Client) {
    cb_test_support::wait_consumer_idle(client, "CB_TEST", "cb-actions", Duration::from_secs(120)).await;
}

/// Waits (bounded) until every replica of a clustered stream is current
/// and has no operations left to apply: `check` reads with Direct Get,
/// which any replica may serve (a no-op on a single server).
async fn replicas_caught_up(client: &async_nats::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = jetstream::new(client.clone())
            .get_stream("CB_TEST")
            .await
            .unwrap();
        let info = s.info().await.unwrap();
        let Some(cluster) = info.cluster.as_ref().filter(|c| !c.replicas.is_empty()) else {
            return;
        };
        if cluster.leader.is_some()
            && cluster
                .replicas
                .iter()
                .all(|r| r.current && r.lag.unwrap_or(0) == 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not catch up: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A token's history once it has the event of `revision` (the state read
/// from the leader). A replica that reported itself caught up may still be
/// applying the last entries for a moment; a read that stays behind past
/// the deadline is returned as it is, for the checks to report.
async fn history_at(reader: &StoreReader, wf: &Id, t: &str, revision: u64) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = reader.history(wf, &id(t), None, 100).await.unwrap().items;
        if events.last().and_then(|e| e.revision) == Some(revision) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks every invariant; returns the number of tokens checked.
async fn check(store: &Store, seen: &Seen) -> usize {
    let (wf, reader) = (id("rel"), store.reader());
    // Every live token, from the listings of both places.
    let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for place in ["a", "b"] {
        for t in reader.list_place_all(&wf, &id(place)).await.unwrap() {
            live.entry(t.id.to_string()).or_default().push(place.to_string());
        }
    }
    for (t, places) in &live {
        assert_eq!(places.len(), 1, "{t} is live in {places:?}");
    }
    for t in &seen.created {
        assert!(live.contains_key(t), "{t} was created (acknowledged) but is lost");
    }
    for t in live.keys() {
        assert!(
            seen.created.contains(t) || seen.maybe.contains(t),
            "{t} exists but no client created it"
        );
    }
    let mut checked = 0;
    for (t, places) in &live {
        let token = reader.get_token_from_leader(&wf, &id(t)).await.unwrap();
        assert_eq!(token.place.as_str(), places[0], "{t}: get and list disagree");
        let events = history_at(&reader, &wf, t, token.revision).await;
        let of = |name: &str| -> Vec<u64> {
            events
                .iter()
                .filter(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == name))
                .map(|e| e.sequence)
                .collect()
        };
        let (go, stamp) = (of("go"), of("stamp"));
        assert!(go.len() <= 1, "{t}: go committed {} times", go.len());
        assert_eq!(
            stamp.len(),
            go.len(),
            "{t}: go {go:?} but stamp {stamp:?}; its history: {:?}",
            events.iter().map(|e| (e.sequence, &e.kind)).collect::<Vec<_>>()
        );
        assert_eq!(
            token.place == "b",
            go.len() == 1,
            "{t} in {} with go {go:?}",
            token.place
        );
        if let Some(seq) = seen.fired.get(t) {
            assert_eq!(go, [*seq], "{t}: the acknowledged firing's event");
        }
        // The state is the newest event's: every committed move has its event.
        let last = events.last().expect("a token has its created event");
        assert_eq!(
            last.revision,
            Some(token.revision),
            "{t}: state and history disagree"
        );
        checked += 1;
    }
    for t in seen.fired.keys() {
        assert!(live.contains_key(t), "{t} was fired (acknowledged) but is lost");
    }
    assert_eq!(seen.stale_reads, 0, "reads after a firing missed it");
    checked
}

async fn stream_leader(client: &async_nats::Client) -> Option<String> {
    let mut s = jetstream::new(client.clone()).get_stream("CB_TEST").await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// Waits until the stream has a leader other than `old`, with every replica
/// current (`all_current`) if asked.
async fn wait_leader(client: &async_nats::Client, old: Option<&str>, all_current: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = async {
            let mut s = jetstream::new(client.clone()).get_stream("CB_TEST").await.ok()?;
            let info = s.info().await.ok()?;
            let cluster = info.cluster.as_ref()?;
            let leader = cluster.leader.clone()?;
            if old == Some(leader.as_str()) {
                return None;
            }
            if all_current && (cluster.replicas.len() != 2 || cluster.replicas.iter().any(|r| !r.current)) {
                return None;
            }
            Some(leader)
        }
        .await;
        if let Some(l) = ok {
            return l;
        }
        assert!(Instant::now() < deadline, "no stream leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_cluster_loses_nothing_when_its_stream_leader_is_killed_three_times() {
    let mut cluster = cb_test_support::Cluster::start();
    let urls = cluster.urls();
    let config = config().with_replicas(3);
    let admin = connect_all(&urls).await;
    let h1 = host(connect_all(&urls).await, config.clone()).await;
    apply(h1.engine.store(), WF).await;
    let h2 = host(connect_all(&urls).await, config.clone()).await;
    wait_leader(&admin, None, true).await;

    let load = Load::start(&h1, &h2).await;
    let mut kills = 0;
    for round in 0..3 {
        let leader = stream_leader(&admin).await.expect("a leader");
        let node = cluster.node_named(&leader).expect("leader is one of ours");
        node.kill();
        kills += 1;
        let new = wait_leader(&admin, Some(&leader), false).await;
        progress(&load.seen, 30).await;
        cluster.node_named(&leader).unwrap().restart();
        wait_leader(&admin, None, true).await;
        progress(&load.seen, 30).await;
        eprintln!("round {round}: killed leader {leader}, new leader {new}, old node back and current");
    }
    let (seen, checked) = load.finish(&admin, h1.engine.store()).await;
    eprintln!(
        "cluster: {kills} leader kills survived; {checked} tokens checked; {} acknowledged firings, \
         {} read back from the leader; {} calls failed during faults; lost: 0",
        seen.fired.len(),
        seen.fresh_reads,
        seen.errors
    );
    assert!(seen.fired.len() >= 180 && checked >= seen.fired.len());
    h1.dispatcher.shutdown().await;
    h2.dispatcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_server_killed_and_restarted_three_times_loses_nothing() {
    let mut server = cb_test_support::NatsServer::start();
    let url = server.url();
    let admin = connect(&url).await;
    let h1 = host(connect(&url).await, config()).await;
    apply(h1.engine.store(), WF).await;
    let h2 = host(connect(&url).await, config()).await;

    let load = Load::start(&h1, &h2).await;
    for _ in 0..3 {
        server.kill();
        server.restart();
        // The hosts reconnect on their own: no new clients, engines or
        // dispatchers.
        progress(&load.seen, 30).await;
    }
    let (seen, checked) = load.finish(&admin, h1.engine.store()).await;
    eprintln!(
        "single server: 3 kill -9 + restarts survived; {checked} tokens checked; {} acknowledged firings; \
         {} calls failed during faults; lost: 0",
        seen.fired.len(),
        seen.errors
    );
    assert!(seen.fired.len() >= 120);
    h1.dispatcher.shutdown().await;
    h2.dispatcher.shutdown().await;
}
