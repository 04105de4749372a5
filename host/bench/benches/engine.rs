//! Engine benchmarks: fire with one Rust guard (amount-limit) at 1 and 64
//! in flight next to the raw atomic batch a move is built on, and action
//! throughput with `audit-log`. `make bench`; writes
//! `target/bench/engine.json`.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use cb_host::engine::{Dispatcher, DispatcherConfig, Engine, EngineConfig, FireRequest};
use cb_host::model::{Id, WorkflowDefinition};
use cb_host::plugin::{PluginRegistry, PluginRuntime, RuntimeConfig};
use cb_host::store::{CommitStats, NewToken, Store, StoreConfig};
use common::CommitSplit;
use common::Role::{Ours, Raw};
use common::raw::{RawGroup, RawMover};
use serde_json::json;

/// Turns each of ours and the raw ceiling get at 64 in flight.
const SLICES: u32 = 8;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

const WF: &str = r#"{ "id": "bench", "places": ["ping", "pong", "a", "b"], "initial_place": "ping",
  "transitions": [
    { "id": "hit", "from": ["ping"], "to": "pong", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "back", "from": ["pong"], "to": "ping", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "go", "from": ["ping"], "to": "a", "actions": [ { "plugin": "audit-log", "config": { "level": "debug" } } ] } ] }"#;

/// A token that splits into two branches, moves each, and joins back: a
/// cycle of four firings, each touching two or three place subjects, each
/// with the same guard as `hit`/`back`.
const BRANCHES: &str = r#"{ "id": "branches", "places": ["p", "l1", "r1", "l2", "r2"], "initial_place": "p",
  "transitions": [
    { "id": "split", "from": ["p"], "split": ["l1", "r1"], "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "l", "from": ["l1"], "to": "l2", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "r", "from": ["r1"], "to": "r2", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "join", "join": ["l2", "r2"], "to": "p", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] } ] }"#;

/// The firings of one `BRANCHES` cycle, and of one `WF` ping-pong cycle.
const MULTI_CYCLE: [&str; 4] = ["split", "l", "r", "join"];
const SINGLE_CYCLE: [&str; 2] = ["hit", "back"];

/// Tokens whose one transition's guard spins until its deadline.
const SPIN: &str = r#"{ "id": "spin", "places": ["a", "b"], "initial_place": "a",
  "transitions": [ { "id": "go", "from": ["a"], "to": "b",
    "guards": [ { "plugin": "misbehave", "config": { "do": "loop" } } ] } ] }"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut b = common::Bench::new("engine", 5);
    let quick = b.quick;
    let window = if quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(4)
    };
    let n1 = if quick { 200 } else { 1500 };
    let server = cb_test_support::NatsServer::start();
    let client = async_nats::connect(server.url()).await?;
    let store = Store::open(
        client.clone(),
        StoreConfig::development()
            .with_stream("CB_BENCH_ENGINE")
            .with_storage(common::storage_kind()),
    )
    .await?;
    let cache = tempfile::tempdir()?;
    let rt = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })?;
    let mut reg = PluginRegistry::new();
    reg.insert(rt.load("amount-limit", &std::fs::read(cb_test_plugins::AMOUNT_LIMIT)?)?);
    reg.insert(rt.load("audit-log", &std::fs::read(cb_test_plugins::AUDIT_LOG)?)?);
    reg.insert(rt.load("misbehave", &std::fs::read(cb_test_plugins::MISBEHAVE)?)?);
    let engine = Engine::new(store.clone(), reg, EngineConfig::default());
    for def in [WF, SPIN, BRANCHES] {
        store
            .writer()
            .put_definition(&WorkflowDefinition::parse(def.as_bytes())?)
            .await?;
    }
    eprintln!(
        "engine benchmarks against {} ({} storage, one server)",
        server.url(),
        common::storage_name()
    );

    b.section("fire: 1 in flight");
    let mut raw_mover = RawMover::new(&client, "r1").await?;
    engine
        .create_token(
            &id("bench"),
            NewToken {
                id: Some(id("f1")),
                data: json!({"amount": 5}),
                ..Default::default()
            },
        )
        .await?;
    // Interleaved, so both see the same disk and machine state.
    let (mut lat, mut raw) = (Vec::with_capacity(n1), Vec::with_capacity(n1));
    let (mut ours_t, mut raw_t) = (Duration::ZERO, Duration::ZERO);
    let (mut ours_cpu, mut raw_cpu) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n1 {
        let cpu0 = common::cpu_time();
        let e = raw_mover.step().await?;
        let cpu1 = common::cpu_time();
        raw_cpu += cpu1 - cpu0;
        raw.push(e);
        raw_t += e;
        let t = if i % 2 == 0 { "hit" } else { "back" };
        let s = Instant::now();
        engine
            .fire(FireRequest::new(id("bench"), id("f1"), id(t)))
            .await?;
        let e = s.elapsed();
        ours_cpu += common::cpu_time() - cpu1;
        lat.push(e);
        ours_t += e;
    }
    let op = "fire with one guard, 1 in flight";
    b.record_cpu(
        op,
        Ours,
        "engine.fire: evaluate + CAS batch (token known from its last firing)",
        lat,
        ours_t,
        ours_cpu,
    );
    b.record_cpu(
        op,
        Raw,
        "the same 3-message atomic batch (no read, no guard)",
        raw,
        raw_t,
        raw_cpu,
    );

    b.section("fire: 64 in flight");
    for i in 0..64 {
        engine
            .create_token(
                &id("bench"),
                NewToken {
                    id: Some(id(&format!("m{i}"))),
                    data: json!({"amount": 5}),
                    ..Default::default()
                },
            )
            .await?;
    }
    // Ours and the raw ceiling (the same 64 moves' messages in one atomic
    // batch, nothing else) take turns in slices, so both see the same disk.
    let slice = window / SLICES;
    let mut ceiling = RawGroup::new(&client, 64, 0).await?;
    let (mut ours, mut ours_t, mut ours_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    let (mut raw, mut raw_t, mut raw_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
    // Firings so far per token: their parity says where it is.
    let mut fired = vec![0usize; 64];
    let mut commits = CommitStats::default();
    for _ in 0..SLICES {
        let cpu0 = common::cpu_time();
        let stats0 = store.writer().commit_stats();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (i, &done) in fired.iter().enumerate() {
            let engine = engine.clone();
            let mut k = done;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < slice {
                    let t = if k % 2 == 0 { "hit" } else { "back" };
                    k += 1;
                    let s = Instant::now();
                    engine
                        .fire(FireRequest::new(id("bench"), id(&format!("m{i}")), id(t)))
                        .await
                        .unwrap();
                    lat.push(s.elapsed());
                }
                (lat, k)
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let (lat, k) = task.await?;
            ours.extend(lat);
            fired[i] = k;
        }
        ours_t += t0.elapsed();
        commits += store.writer().commit_stats().since(&stats0);
        let cpu1 = common::cpu_time();
        ours_cpu += cpu1 - cpu0;
        let (lat, elapsed) = ceiling.run(slice).await?;
        raw_cpu += common::cpu_time() - cpu1;
        raw.extend(lat);
        raw_t += elapsed;
    }
    let op = "fire with one guard, 64 in flight";
    b.record_cpu(op, Ours, "engine.fire (group commit)", ours, ours_t, ours_cpu);
    b.split_last(CommitSplit::of(&commits, ours_t));
    b.record_cpu(
        op,
        Raw,
        "all 64 moves in one atomic batch (no read, no guard; ceiling, interleaved)",
        raw,
        raw_t,
        raw_cpu,
    );
    b.split_last(CommitSplit::new(
        ceiling.batches,
        ceiling.batches * 64,
        ceiling.commit_wait,
        raw_t,
    ));

    b.section("multi-place fire vs one-place fire");
    // Multi-place tokens `mp{i}` (workflow `branches`) and one-place tokens
    // `sp{i}` (workflow `bench`), fired alternately, 1 and then 64 in
    // flight: the cost of a firing that touches several place subjects
    // against the one-place firing, same run, same guard.
    for i in 0..64 {
        for (wf, name) in [("branches", format!("mp{i}")), ("bench", format!("sp{i}"))] {
            engine
                .create_token(
                    &id(wf),
                    NewToken {
                        id: Some(id(&name)),
                        data: json!({"amount": 5}),
                        ..Default::default()
                    },
                )
                .await?;
        }
    }
    let fire_as = |wf: &'static str, token: String, t: &'static str| {
        let engine = engine.clone();
        async move {
            let s = Instant::now();
            engine
                .fire(FireRequest::new(id(wf), id(&token), id(t)))
                .await
                .unwrap();
            s.elapsed()
        }
    };
    let (mut multi, mut single) = (Vec::with_capacity(n1), Vec::with_capacity(n1));
    let (mut multi_t, mut single_t) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n1 {
        let e = fire_as("branches", "mp0".into(), MULTI_CYCLE[i % 4]).await;
        multi.push(e);
        multi_t += e;
        let e = fire_as("bench", "sp0".into(), SINGLE_CYCLE[i % 2]).await;
        single.push(e);
        single_t += e;
    }
    let op = "multi-place fire, 1 in flight";
    b.record(
        op,
        Ours,
        "engine.fire on a two-branch token (split, l, r, join in turn)",
        multi,
        multi_t,
    );
    b.record(
        op,
        Raw,
        "engine.fire on a one-place token (same guard, same run, interleaved)",
        single,
        single_t,
    );
    // 64 in flight: slices of each in turn.
    let (mut multi, mut multi_t, mut single, mut single_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    let (mut multi_k, mut single_k) = (vec![0usize; 64], vec![0usize; 64]);
    for _ in 0..SLICES {
        for (wf, prefix, cycle, done, lat, total) in [
            (
                "branches",
                "mp",
                &MULTI_CYCLE[..],
                &mut multi_k,
                &mut multi,
                &mut multi_t,
            ),
            (
                "bench",
                "sp",
                &SINGLE_CYCLE[..],
                &mut single_k,
                &mut single,
                &mut single_t,
            ),
        ] {
            let t0 = Instant::now();
            let tasks: Vec<_> = done
                .iter()
                .enumerate()
                .map(|(i, &k)| {
                    let engine = engine.clone();
                    let cycle: Vec<&'static str> = cycle.to_vec();
                    tokio::spawn(async move {
                        let (mut k, mut lat) = (k, Vec::new());
                        while t0.elapsed() < slice {
                            let s = Instant::now();
                            engine
                                .fire(FireRequest::new(
                                    id(wf),
                                    id(&format!("{prefix}{i}")),
                                    id(cycle[k % cycle.len()]),
                                ))
                                .await
                                .unwrap();
                            k += 1;
                            lat.push(s.elapsed());
                        }
                        (lat, k)
                    })
                })
                .collect();
            for (i, task) in tasks.into_iter().enumerate() {
                let (l, k) = task.await?;
                lat.extend(l);
                done[i] = k;
            }
            *total += t0.elapsed();
        }
    }
    let op = "multi-place fire, 64 in flight";
    b.record(
        op,
        Ours,
        "engine.fire on two-branch tokens (group commit)",
        multi,
        multi_t,
    );
    b.record(
        op,
        Raw,
        "engine.fire on one-place tokens (same guard, slices in turn)",
        single,
        single_t,
    );

    b.section("token get while every plugin slot spins to its deadline");
    let slots = RuntimeConfig::default().max_concurrent_calls;
    for i in 0..slots {
        engine
            .create_token(
                &id("spin"),
                NewToken {
                    id: Some(id(&format!("s{i}"))),
                    ..Default::default()
                },
            )
            .await?;
    }
    let reader = store.reader();
    let gets = if quick { 300 } else { 3000 };
    let get = async |n: usize| -> anyhow::Result<(Vec<Duration>, Duration)> {
        let mut lat = Vec::with_capacity(n);
        let t0 = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            reader.get_token(&id("bench"), &id("f1")).await?;
            lat.push(s.elapsed());
        }
        Ok((lat, t0.elapsed()))
    };
    let (idle, idle_t) = get(gets).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spun = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spinners: Vec<_> = (0..slots)
        .map(|i| {
            let (engine, stop, spun) = (engine.clone(), stop.clone(), spun.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = engine
                        .fire(FireRequest::new(id("spin"), id(&format!("s{i}")), id("go")))
                        .await;
                    assert!(
                        matches!(&r, Err(cb_host::engine::FireError::Plugin(e)) if e.kind() == "timeout"),
                        "{r:?}"
                    );
                    spun.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Measure once the first guests reached their deadline: every slot is
    // taken from then on.
    while spun.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (busy, busy_t) = get(gets).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.await?;
    }
    let op = "token get while every plugin slot spins to its deadline";
    b.record(
        op,
        Ours,
        &format!("reader.get_token, {slots} guests spinning to their 200 ms deadline"),
        busy,
        busy_t,
    );
    b.record(
        op,
        Raw,
        "the same get, no guest running (same run, just before)",
        idle,
        idle_t,
    );

    b.section("actions: audit-log events drained by the dispatcher");
    let events = if quick { 300 } else { 3000 };
    let tasks: Vec<_> = (0..events)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .create_token(
                        &id("bench"),
                        NewToken {
                            id: Some(id(&format!("a{i}"))),
                            ..Default::default()
                        },
                    )
                    .await?;
                engine
                    .fire(FireRequest::new(id("bench"), id(&format!("a{i}")), id("go")))
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let t0 = Instant::now();
    let dispatcher = Dispatcher::start(
        engine.clone(),
        DispatcherConfig {
            concurrency: 32,
            ..Default::default()
        },
    )
    .await?;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("CB_BENCH_ENGINE").await?;
    loop {
        let mut c: jetstream::consumer::PullConsumer = stream
            .get_consumer("cb-actions")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = c.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.ack_floor.stream_sequence > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t0.elapsed();
    dispatcher.shutdown().await;
    // All transition events (the ping-pong ones have no actions) pass the
    // dispatcher; report the events with actions.
    b.record(
        "actions: events drained, 32 in progress",
        Ours,
        "dispatcher running audit-log (mean per event)",
        vec![elapsed / events as u32; events],
        elapsed,
    );
    b.save()
}
