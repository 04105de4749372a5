//! Storage benchmarks, each next to its baselines measured in the same run
//! against the same server: the raw async-nats operation it is built on,
//! and the original storage work's strategy (token lookup by reading every
//! version through an ephemeral AckNone consumer; place listing through an
//! ordered LastPerSubject consumer; create as publish, stamp, publish again).
//!
//! `make bench` (or `make bench-quick`). Starts its own file-backed
//! `nats-server` unless `CB_BENCH_NATS_URL` is set. Arguments pick sections
//! (`get create move list`); writes `target/bench/storage.json`.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use bytes::Bytes;
use cb_host::model::{Id, StoredDefinition, Token, WorkflowDefinition};
use cb_host::store::{CommitStats, Move, NewToken, Store, StoreConfig, StoreWriter};
use common::CommitSplit;
use common::Role::{Original, Ours, Raw};
use common::raw::{RawGroup, RawMover};
use futures::StreamExt;
use serde_json::json;
use time::OffsetDateTime;

const STREAM: &str = "CB_BENCH";

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

const PINGPONG: &str = r#"{ "id": "bench", "places": ["ping", "pong"], "initial_place": "ping",
  "transitions": [ { "id": "hit", "from": ["ping"], "to": "pong" },
                   { "id": "back", "from": ["pong"], "to": "ping" } ] }"#;

struct Ctx {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    def: Arc<StoredDefinition>,
}

fn iterations(b: &common::Bench, full: usize) -> usize {
    if b.quick { (full / 10).max(5) } else { full }
}

/// Turns each of ours and the raw ceiling get in an interleaved comparison.
const SLICES: u32 = 8;

fn window(b: &common::Bench) -> Duration {
    if b.quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(
            std::env::var("CB_BENCH_WINDOW")
                .ok()
                .and_then(|w| w.parse().ok())
                .unwrap_or(4),
        )
    }
}

/// Creates `n` tokens of `def` concurrently (group commit).
async fn create_tokens(store: &Store, def: &Arc<StoredDefinition>, prefix: &str, n: usize) -> Vec<Token> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (w, d) = (store.writer(), def.clone());
        let tid = id(&format!("{prefix}{i}"));
        tasks.push(tokio::spawn(async move {
            w.create_token(
                &d,
                NewToken {
                    id: Some(tid),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .token
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn ping_pong(t: &Token) -> Move {
    let (transition, to) = if t.place == "ping" {
        ("hit", "pong")
    } else {
        ("back", "ping")
    };
    Move {
        transition: id(transition),
        to: id(to),
        actor: None,
        input: json!(null),
        data: None,
        msg_id: None,
        idempotency: None,
    }
}

async fn move_once(w: &StoreWriter, def: &StoredDefinition, t: Token) -> Token {
    let m = ping_pong(&t);
    w.move_token(&def.definition, &t, m).await.unwrap().token
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let sections = ["get", "create", "move", "list"]
        .iter()
        .filter(|s| run(s))
        .count();
    let mut b = common::Bench::new("storage", sections);
    let _server;
    let url = match std::env::var("CB_BENCH_NATS_URL") {
        Ok(u) => u,
        Err(_) => {
            let s = cb_test_support::NatsServer::start();
            let u = s.url();
            _server = s;
            u
        }
    };
    eprintln!(
        "storage benchmarks against {url} ({} storage, one server){}",
        common::storage_name(),
        if b.quick { ", quick" } else { "" }
    );
    let client = async_nats::connect(&url).await?;
    let mut config = StoreConfig::development()
        .with_stream(STREAM)
        .with_replicas(1)
        .with_storage(common::storage_kind());
    if std::env::var_os("CB_BENCH_NO_TTL").is_some() {
        config.tombstone_ttl = None;
    }
    let store = Store::open(client.clone(), config).await?;
    let def = Arc::new(
        store
            .writer()
            .put_definition(&WorkflowDefinition::parse(PINGPONG.as_bytes())?)
            .await?,
    );
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await?;
    let c = Ctx {
        store,
        client,
        js,
        stream,
        def,
    };
    if run("get") {
        b.section("get: token (1 and 10,000 prior transitions) and workflow");
        bench_get(&mut b, &c).await?;
    }
    if run("create") {
        b.section("create: 1 and 64 in flight");
        bench_create(&mut b, &c).await?;
    }
    if run("move") {
        b.section("move: 1, 8, 64, 256 in flight");
        bench_move(&mut b, &c).await?;
    }
    if run("list") {
        b.section("list: a place of 100 and of 10,000 tokens");
        bench_list(&mut b, &c).await?;
    }
    b.save()
}

/// The original's token version: the whole token, stamped with its time.
fn original_version(tid: &str, n: u64) -> Bytes {
    serde_json::to_vec(&json!({
        "id": tid, "workflow_id": "orig", "place": if n.is_multiple_of(2) { "ping" } else { "pong" },
        "data": {}, "revision": n,
        "updated_at": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
    }))
    .unwrap()
    .into()
}

/// The original's lookup: an ephemeral AckNone consumer over every version
/// of the token's subject, keeping the newest by timestamp.
async fn original_get(c: &Ctx, filter: String) -> anyhow::Result<serde_json::Value> {
    let consumer: jetstream::consumer::PullConsumer = c
        .stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let name = consumer.cached_info().name.clone();
    let (mut got, mut newest): (usize, Option<(OffsetDateTime, serde_json::Value)>) = (0, None);
    while got < pending {
        let mut batch = consumer.fetch().max_messages(1000).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
            let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
            let at = OffsetDateTime::parse(
                v["updated_at"].as_str().unwrap_or_default(),
                &time::format_description::well_known::Rfc3339,
            )?;
            if newest.as_ref().is_none_or(|(n, _)| at >= *n) {
                newest = Some((at, v));
            }
        }
    }
    // Not timed by the caller's intent, but the server must not pile up
    // consumers during the run.
    let _ = c.stream.delete_consumer(&name).await;
    newest
        .map(|(_, v)| v)
        .ok_or_else(|| anyhow::anyhow!("no versions"))
}

/// Token get vs the raw wildcard Direct Get it is built on and the
/// original's consumer scan, interleaved so all see the same server and
/// machine state; for a token with 1 and with 10,000 prior transitions.
async fn bench_get(b: &mut common::Bench, c: &Ctx) -> anyhow::Result<()> {
    let reader = c.store.reader();
    let w = c.store.writer();
    for prior in [1usize, if b.quick { 1_000 } else { 10_000 }] {
        // Ours: real moves. The original's: that many versions on one subject.
        let mut tok = create_tokens(&c.store, &c.def, &format!("g{prior}x"), 1)
            .await
            .remove(0);
        for _ in 0..prior {
            tok = move_once(&w, &c.def, tok).await;
        }
        let otid = format!("og{prior}");
        // Pipelined, but never more acks outstanding than async-nats allows
        // (it applies backpressure at its in-flight limit).
        let mut acks = Vec::new();
        for n in 0..=prior as u64 {
            acks.push(
                c.js.publish(
                    format!("cb.workflows.orig.places.all.tokens.{otid}"),
                    original_version(&otid, n),
                )
                .await?,
            );
            if acks.len() == 1000 {
                for a in acks.drain(..) {
                    a.await?;
                }
            }
        }
        for a in acks {
            a.await?;
        }
        let n = iterations(b, if prior == 1 { 5_000 } else { 1_000 });
        let n_orig = iterations(b, if prior == 1 { 1_000 } else { 50 });
        let (mut raw, mut ours, mut orig) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_t, mut ours_t, mut orig_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for i in 0..n {
            let s = Instant::now();
            c.stream
                .direct_get_last_for_subject(format!("cb.workflows.bench.places.*.tokens.{}", tok.id))
                .await?;
            let e = s.elapsed();
            raw.push(e);
            raw_t += e;
            let s = Instant::now();
            let got = reader.get_token(&id("bench"), &tok.id).await?;
            let e = s.elapsed();
            ours.push(e);
            ours_t += e;
            anyhow::ensure!(got.revision == tok.revision, "stale read");
            if i < n_orig {
                let s = Instant::now();
                let v = original_get(c, format!("cb.workflows.orig.places.*.tokens.{otid}")).await?;
                let e = s.elapsed();
                orig.push(e);
                orig_t += e;
                anyhow::ensure!(
                    v["revision"] == prior as u64,
                    "original lookup found {}",
                    v["revision"]
                );
            }
        }
        let op = format!(
            "token get, {prior} prior transition{}",
            if prior == 1 { "" } else { "s" }
        );
        b.record(&op, Ours, "reader.get_token", ours, ours_t);
        b.record(&op, Raw, "Direct Get, wildcard last_by_subj", raw, raw_t);
        b.record(
            &op,
            Original,
            "ephemeral AckNone consumer, newest by time",
            orig,
            orig_t,
        );
    }
    let n = iterations(b, 5_000);
    let (mut raw, mut ours, mut raw_t, mut ours_t) = (Vec::new(), Vec::new(), Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let s = Instant::now();
        c.stream
            .direct_get_last_for_subject("cb.workflows.bench.definition")
            .await?;
        let e = s.elapsed();
        raw.push(e);
        raw_t += e;
        let s = Instant::now();
        reader.get_definition(&id("bench")).await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;
    }
    b.record("workflow get", Ours, "reader.get_definition", ours, ours_t);
    b.record("workflow get", Raw, "Direct Get last_by_subj", raw, raw_t);
    Ok(())
}

async fn bench_create(b: &mut common::Bench, c: &Ctx) -> anyhow::Result<()> {
    let n = iterations(b, 2000);
    let writer = c.store.writer();
    let (mut raw, mut ours, mut orig) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_t, mut ours_t, mut orig_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let s = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", "0");
        h.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            format!("cb.workflows.raw.places.*.tokens.c{i}").as_str(),
        );
        c.js.publish_with_headers(
            format!("cb.workflows.raw.places.ping.tokens.c{i}"),
            h,
            Bytes::from_static(b"{}"),
        )
        .await?
        .await?;
        let e = s.elapsed();
        raw.push(e);
        raw_t += e;

        let s = Instant::now();
        writer
            .create_token(
                &c.def,
                NewToken {
                    id: Some(id(&format!("c{i}"))),
                    ..Default::default()
                },
            )
            .await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;

        // The original: publish, stamp the token with its sequence and
        // time, publish again.
        let s = Instant::now();
        let subject = format!("cb.workflows.orig.places.ping.tokens.oc{i}");
        let ack =
            c.js.publish(subject.clone(), original_version("x", 0))
                .await?
                .await?;
        let mut v: serde_json::Value = serde_json::from_slice(&original_version("x", 0))?;
        v["revision"] = ack.sequence.into();
        v["created_at"] = v["updated_at"].clone();
        c.js.publish(subject, serde_json::to_vec(&v)?.into())
            .await?
            .await?;
        let e = s.elapsed();
        orig.push(e);
        orig_t += e;
    }
    let op = "token create, 1 in flight";
    b.record(op, Ours, "create (atomic batch: state + event)", ours, ours_t);
    b.record(op, Raw, "CAS publish (state only)", raw, raw_t);
    b.record(op, Original, "publish, stamp, publish again", orig, orig_t);

    let n64 = iterations(b, 20_000);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (writer, def) = (c.store.writer(), c.def.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..n64).step_by(64) {
                let s = Instant::now();
                writer
                    .create_token(
                        &def,
                        NewToken {
                            id: Some(id(&format!("cc{i}"))),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let lat = common::join_latencies(tasks).await?;
    b.record(
        "token create, 64 in flight",
        Ours,
        "create (group commit)",
        lat,
        t0.elapsed(),
    );
    Ok(())
}

async fn bench_move(b: &mut common::Bench, c: &Ctx) -> anyhow::Result<()> {
    let levels: Vec<usize> = std::env::var("CB_BENCH_MOVE_C")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 8, 64, 256]);
    let window = window(b);
    for (round, n) in levels.into_iter().enumerate() {
        let op = format!("token move, {n} in flight");
        // Ours and the raw group-commit ceiling take turns in slices, so
        // both see the same disk: its fsync latency drifts a lot here.
        let slices = if n > 1 { SLICES } else { 1 };
        let slice = window / slices;
        let mut raw_group = if n > 1 {
            Some(RawGroup::new(&c.client, n, round).await?)
        } else {
            None
        };
        let mut toks = create_tokens(&c.store, &c.def, &format!("m{n}r{round}x"), n).await;
        let (mut ours, mut ours_t, mut ours_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
        let (mut ceiling, mut ceiling_t, mut ceiling_cpu) = (Vec::new(), Duration::ZERO, Duration::ZERO);
        let mut commits = CommitStats::default();
        for _ in 0..slices {
            let cpu0 = common::cpu_time();
            let stats0 = c.store.writer().commit_stats();
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for mut t in toks.drain(..) {
                let (writer, def) = (c.store.writer(), c.def.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while t0.elapsed() < slice {
                        let s = Instant::now();
                        t = move_once(&writer, &def, t).await;
                        lat.push(s.elapsed());
                    }
                    (t, lat)
                }));
            }
            for task in tasks {
                let (t, lat) = task.await?;
                toks.push(t);
                ours.extend(lat);
            }
            ours_t += t0.elapsed();
            ours_cpu += common::cpu_time() - cpu0;
            commits += c.store.writer().commit_stats().since(&stats0);
            if let Some(raw) = raw_group.as_mut() {
                let cpu0 = common::cpu_time();
                let (lat, elapsed) = raw.run(slice).await?;
                ceiling_cpu += common::cpu_time() - cpu0;
                ceiling.extend(lat);
                ceiling_t += elapsed;
            }
        }
        b.record_cpu(&op, Ours, "move_token (group commit)", ours, ours_t, ours_cpu);
        if n > 1 {
            b.split_last(CommitSplit::of(&commits, ours_t));
        }

        // Raw: one atomic batch per move, the same three messages.
        let mut movers = Vec::new();
        for i in 0..n {
            movers.push(RawMover::new(&c.client, &format!("raw{n}r{round}x{i}")).await?);
        }
        let cpu0 = common::cpu_time();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for mut mover in movers {
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < window {
                    lat.push(mover.step().await?);
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let elapsed = t0.elapsed();
        let cpu = common::cpu_time() - cpu0;
        b.record_cpu(&op, Raw, "one atomic batch per move", lat, elapsed, cpu);
        if n > 1 {
            b.record_cpu(
                &op,
                Raw,
                &format!("all {n} moves in one atomic batch (group-commit ceiling, interleaved)"),
                ceiling,
                ceiling_t,
                ceiling_cpu,
            );
            if let Some(raw) = &raw_group {
                b.split_last(CommitSplit::new(
                    raw.batches,
                    raw.batches * n as u64,
                    raw.commit_wait,
                    ceiling_t,
                ));
            }
        }
    }
    Ok(())
}

async fn bench_list(b: &mut common::Bench, c: &Ctx) -> anyhow::Result<()> {
    let reader = c.store.reader();
    let page = StoreConfig::development().page_size;
    for size in [100usize, if b.quick { 2_000 } else { 10_000 }] {
        // A workflow of its own, so the place holds exactly `size` tokens.
        let wf = format!("listing{size}");
        let def = WorkflowDefinition::parse(PINGPONG.replace("\"bench\"", &format!("\"{wf}\"")).as_bytes())?;
        let def = Arc::new(c.store.writer().put_definition(&def).await?);
        create_tokens(&c.store, &def, "l", size).await;
        let n = iterations(b, if size == 100 { 1_000 } else { 30 });
        let filter = format!("cb.workflows.{wf}.places.ping.tokens.*");
        let (mut raw, mut ours, mut orig) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_t, mut ours_t, mut orig_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..n {
            let s = Instant::now();
            let got = raw_next_all(&c.client, &filter, page).await?;
            let e = s.elapsed();
            raw.push(e);
            raw_t += e;
            anyhow::ensure!(got == size, "raw listing returned {got}");

            let s = Instant::now();
            let got = reader.list_place_all(&id(&wf), &id("ping")).await?;
            let e = s.elapsed();
            ours.push(e);
            ours_t += e;
            anyhow::ensure!(got.len() == size, "listing returned {}", got.len());

            let s = Instant::now();
            let got = original_list(c, &filter).await?;
            let e = s.elapsed();
            orig.push(e);
            orig_t += e;
            anyhow::ensure!(got == size, "ordered consumer returned {got}");
        }
        let op = format!("list a place of {size} tokens");
        b.record(&op, Ours, "reader.list_place_all", ours, ours_t);
        b.record(&op, Raw, "next_by_subj Direct Get batches", raw, raw_t);
        b.record(&op, Original, "ordered LastPerSubject consumer", orig, orig_t);
    }
    Ok(())
}

/// The original's listing: an ordered consumer delivering the last message
/// per subject; parses each token. Returns how many it read.
async fn original_list(c: &Ctx, filter: &str) -> anyhow::Result<usize> {
    let consumer = c
        .stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let name = consumer.cached_info().name.clone();
    if consumer.cached_info().num_pending == 0 {
        let _ = c.stream.delete_consumer(&name).await;
        return Ok(0);
    }
    let mut messages = consumer.messages().await?;
    let mut seen = std::collections::HashSet::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let _: serde_json::Value = serde_json::from_slice(&m.payload)?;
        seen.insert(m.subject.to_string());
        if m.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    // Ephemeral consumers linger until their inactivity threshold; the
    // original would pile them up, the benchmark must not (the stream caps
    // its consumers).
    drop(messages);
    let _ = c.stream.delete_consumer(&name).await;
    Ok(seen.len())
}

/// The raw form of a place listing: batched Direct Gets with
/// `next_by_subj`, page after page, counting the messages.
async fn raw_next_all(client: &async_nats::Client, filter: &str, page: usize) -> anyhow::Result<usize> {
    let (mut n, mut seq) = (0, 1u64);
    loop {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await?;
        let body = serde_json::to_vec(&json!({ "seq": seq, "next_by_subj": filter, "batch": page }))?;
        client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{STREAM}"), inbox, body.into())
            .await?;
        let mut got = 0;
        while let Some(m) = sub.next().await {
            if m.status.is_some() {
                break;
            }
            got += 1;
            let last: u64 = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Sequence"))
                .and_then(|v| v.as_str().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no Nats-Sequence"))?;
            seq = last + 1;
        }
        n += got;
        if got < page {
            return Ok(n);
        }
    }
}
