//! Storage benchmarks, each next to the raw async-nats operation it is built
//! on, measured in the same run against the same server.
//!
//! `make bench` (or `make bench-quick`). Starts its own file-backed
//! `nats-server` unless `CB_BENCH_NATS_URL` is set. Prints a Markdown table
//! and writes `target/bench/storage.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use cb_host::model::{Id, StoredDefinition, Token, WorkflowDefinition};
use cb_host::store::{Move, NewToken, Store, StoreConfig};
use serde_json::json;

const STREAM: &str = "CB_BENCH";

struct Row {
    name: String,
    ops: usize,
    p50_us: f64,
    p99_us: f64,
    per_sec: f64,
}

fn row(name: impl Into<String>, mut lat: Vec<Duration>, elapsed: Duration) -> Row {
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e6
    };
    let r = Row {
        name: name.into(),
        ops: lat.len(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
    };
    eprintln!(
        "  {:<48} p50 {:>9.1} µs  p99 {:>9.1} µs  {:>9.0}/s",
        r.name, r.p50_us, r.p99_us, r.per_sec
    );
    r
}

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

const PINGPONG: &str = r#"{ "id": "bench", "places": ["ping", "pong"], "initial_place": "ping",
  "transitions": [ { "id": "hit", "from": ["ping"], "to": "pong" },
                   { "id": "back", "from": ["pong"], "to": "ping" } ] }"#;

struct Bench {
    quick: bool,
    store: Store,
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    def: Arc<StoredDefinition>,
}

impl Bench {
    fn iterations(&self, full: usize) -> usize {
        if self.quick { (full / 10).max(50) } else { full }
    }

    fn window(&self) -> Duration {
        if self.quick {
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

    async fn create_tokens(&self, prefix: &str, n: usize) -> Vec<Token> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let (w, d) = (self.store.writer(), self.def.clone());
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("CB_BENCH_QUICK").is_some();
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
        "storage benchmarks against {url} (file storage, one server){}",
        if quick { ", quick" } else { "" }
    );
    let client = async_nats::connect(&url).await?;
    let mut config = StoreConfig::development().with_stream(STREAM).with_replicas(1);
    if std::env::var_os("CB_BENCH_NO_TTL").is_some() {
        config.tombstone_ttl = None;
    }
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let store = Store::open(client.clone(), config).await?;
    let def = Arc::new(
        store
            .writer()
            .put_definition(&WorkflowDefinition::parse(PINGPONG.as_bytes())?)
            .await?,
    );
    let stream = jetstream::new(client.clone()).get_stream(STREAM).await?;
    let b = Bench {
        quick,
        store,
        client,
        stream,
        def,
    };
    let mut rows = Vec::new();
    if run("get") {
        eprintln!("[get] token and workflow get");
        bench_get(&b, &mut rows).await?;
    }
    if run("create") {
        eprintln!("[create] token create");
        bench_create(&b, &mut rows).await?;
    }
    if run("move") {
        eprintln!("[move] moves at 1, 8, 64 in flight");
        bench_move(&b, &mut rows).await?;
    }
    if run("list") {
        eprintln!("[list] list a place of 1,000 tokens");
        bench_list(&b, &mut rows).await?;
    }
    print_report(&rows)?;
    Ok(())
}

/// Token get vs the raw wildcard Direct Get it is built on, interleaved so
/// both see the same server and machine state.
async fn bench_get(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let tokens = b.create_tokens("g", 100).await;
    let n = b.iterations(10_000);
    let reader = b.store.reader();
    let (mut raw, mut ours, mut wf) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut raw_t, mut ours_t, mut wf_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let tid = &tokens[i % tokens.len()].id;
        let s = Instant::now();
        b.stream
            .direct_get_last_for_subject(format!("cb.workflows.bench.places.*.tokens.{tid}"))
            .await?;
        let e = s.elapsed();
        raw.push(e);
        raw_t += e;
        let s = Instant::now();
        reader.get_token(&id("bench"), tid).await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;
        let s = Instant::now();
        reader.get_definition(&id("bench")).await?;
        let e = s.elapsed();
        wf.push(e);
        wf_t += e;
    }
    rows.push(row("raw Direct Get (wildcard last_by_subj)", raw, raw_t));
    rows.push(row("token get", ours, ours_t));
    rows.push(row("workflow get", wf, wf_t));
    Ok(())
}

async fn bench_create(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = b.iterations(3000);
    let js = jetstream::new(b.client.clone());
    let (mut lat, t0) = (Vec::with_capacity(n), Instant::now());
    for i in 0..n {
        let s = Instant::now();
        let mut h = HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", "0");
        h.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            format!("cb.workflows.raw.places.*.tokens.c{i}").as_str(),
        );
        js.publish_with_headers(
            format!("cb.workflows.raw.places.ping.tokens.c{i}"),
            h,
            Bytes::from_static(b"{}"),
        )
        .await?
        .await?;
        lat.push(s.elapsed());
    }
    rows.push(row("raw CAS publish, 1 in flight", lat, t0.elapsed()));
    let (mut lat, t0) = (Vec::with_capacity(n), Instant::now());
    let writer = b.store.writer();
    for i in 0..n {
        let s = Instant::now();
        writer
            .create_token(
                &b.def,
                NewToken {
                    id: Some(id(&format!("c{i}"))),
                    ..Default::default()
                },
            )
            .await?;
        lat.push(s.elapsed());
    }
    rows.push(row(
        "create (atomic batch: state + event), 1 in flight",
        lat,
        t0.elapsed(),
    ));
    let n64 = b.iterations(20_000);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (writer, def) = (b.store.writer(), b.def.clone());
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
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    rows.push(row("create, 64 in flight (group commit)", lat, t0.elapsed()));
    Ok(())
}

async fn bench_move(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let js = jetstream::new(b.client.clone());
    let levels: Vec<usize> = std::env::var("CB_BENCH_MOVE_C")
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 8, 64]);
    for c in levels {
        // Raw baseline: one atomic batch per move, the same three messages.
        let mut toks = Vec::new();
        for i in 0..c {
            let tid = format!("raw{c}x{i}");
            let mut h = HeaderMap::new();
            h.insert("Nats-Expected-Last-Subject-Sequence", "0");
            h.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                format!("cb.workflows.raw.places.*.tokens.{tid}").as_str(),
            );
            let ack = js
                .publish_with_headers(
                    format!("cb.workflows.raw.places.ping.tokens.{tid}"),
                    h,
                    "{}".into(),
                )
                .await?
                .await?;
            toks.push((tid, "ping".to_string(), ack.sequence));
        }
        let window = b.window();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (tid, place, seq) in toks {
            let client = b.client.clone();
            tasks.push(tokio::spawn(async move {
                raw_mover(client, tid, place, seq, window).await
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        rows.push(row(
            format!("raw atomic batch per move, {c} in flight"),
            lat,
            t0.elapsed(),
        ));
        if c > 1 {
            let (lat, elapsed) = raw_group(&b.client, c, window).await?;
            rows.push(row(
                format!("raw atomic batch of {c} moves, 1 batch in flight"),
                lat,
                elapsed,
            ));
        }

        let toks = b.create_tokens(&format!("m{c}x"), c).await;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for mut t in toks {
            let (writer, def) = (b.store.writer(), b.def.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < window {
                    let to = if t.place == "ping" { "pong" } else { "ping" };
                    let s = Instant::now();
                    let m = Move {
                        transition: id("hit"),
                        to: id(to),
                        actor: None,
                        input: json!(null),
                        data: None,
                        msg_id: None,
                    };
                    t = writer.move_token(&def.definition, &t, m).await.unwrap().token;
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        rows.push(row(
            format!("move (group commit), {c} in flight"),
            lat,
            t0.elapsed(),
        ));
    }
    Ok(())
}

async fn bench_list(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // A workflow of its own, so the place holds exactly 1,000 tokens.
    let def = WorkflowDefinition::parse(PINGPONG.replace("\"bench\"", "\"listing\"").as_bytes())?;
    let def = Arc::new(b.store.writer().put_definition(&def).await?);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (w, d) = (b.store.writer(), def.clone());
        tasks.push(tokio::spawn(async move {
            w.create_token(
                &d,
                NewToken {
                    id: Some(id(&format!("l{i}"))),
                    ..Default::default()
                },
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let reader = b.store.reader();
    let n = b.iterations(300);
    let filter = "cb.workflows.listing.places.ping.tokens.*";
    let (mut raw, mut ours, mut raw_t, mut ours_t) = (Vec::new(), Vec::new(), Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let s = Instant::now();
        let got = raw_multi_last(&b.client, filter).await?;
        let e = s.elapsed();
        raw.push(e);
        raw_t += e;
        anyhow::ensure!(got == 1000, "multi_last returned {got}");
        let s = Instant::now();
        let got = reader.list_place_all(&id("listing"), &id("ping")).await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;
        anyhow::ensure!(got.len() == 1000, "listing returned {}", got.len());
    }
    rows.push(row("raw multi_last, 1,000 subjects", raw, raw_t));
    rows.push(row("list place (1,000 tokens)", ours, ours_t));
    Ok(())
}

/// Moves one token back and forth with one raw atomic batch per move:
/// tombstone with CAS, new state, event.
async fn raw_mover(
    client: async_nats::Client,
    tid: String,
    mut place: String,
    mut seq: u64,
    window: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < window {
        let to = if place == "ping" { "pong" } else { "ping" };
        let s = Instant::now();
        let batch = format!("raw-{tid}-{n}");
        n += 1;
        let mut h1 = HeaderMap::new();
        h1.insert("Nats-Batch-Id", batch.as_str());
        h1.insert("Nats-Batch-Sequence", "1");
        h1.insert("KV-Operation", "PURGE");
        h1.insert("Nats-Rollup", "sub");
        h1.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
        h1.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            format!("cb.workflows.raw.places.*.tokens.{tid}").as_str(),
        );
        client
            .publish_with_headers(
                format!("cb.workflows.raw.places.{place}.tokens.{tid}"),
                h1,
                Bytes::new(),
            )
            .await?;
        let mut h2 = HeaderMap::new();
        h2.insert("Nats-Batch-Id", batch.as_str());
        h2.insert("Nats-Batch-Sequence", "2");
        h2.insert("Nats-Rollup", "sub");
        client
            .publish_with_headers(
                format!("cb.workflows.raw.places.{to}.tokens.{tid}"),
                h2,
                "{}".into(),
            )
            .await?;
        let mut h3 = HeaderMap::new();
        h3.insert("Nats-Batch-Id", batch.as_str());
        h3.insert("Nats-Batch-Sequence", "3");
        h3.insert("Nats-Batch-Commit", "1");
        let reply = client
            .request_with_headers(
                format!("cb.workflows.raw.events.transitions.{tid}"),
                h3,
                "{}".into(),
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        let last = v["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("batch failed: {v}"))?;
        seq = last - 1;
        place = to.to_string();
        lat.push(s.elapsed());
    }
    Ok(lat)
}

/// The raw limit of group commit: `c` tokens moved together in one atomic
/// batch per round (3 messages each), one batch in flight, with no queueing
/// or bookkeeping. Latency is per batch; throughput is moves/s.
async fn raw_group(
    client: &async_nats::Client,
    c: usize,
    window: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let js = jetstream::new(client.clone());
    let mut toks = Vec::new();
    for i in 0..c {
        let tid = format!("rawg{c}x{i}");
        let ack = js
            .publish(format!("cb.workflows.raw.places.ping.tokens.{tid}"), "{}".into())
            .await?
            .await?;
        toks.push((tid, "ping", ack.sequence));
    }
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut moves = 0usize;
    let mut n = 0u64;
    while t0.elapsed() < window {
        let s = Instant::now();
        let batch = format!("rawg-{c}-{n}");
        n += 1;
        let mut seqno = 0;
        let total = toks.len() * 3;
        let mut reply = None;
        for (tid, place, seq) in &toks {
            let to = if *place == "ping" { "pong" } else { "ping" };
            for k in 0..3 {
                seqno += 1;
                let mut h = HeaderMap::new();
                h.insert("Nats-Batch-Id", batch.as_str());
                h.insert("Nats-Batch-Sequence", seqno.to_string().as_str());
                let subject = match k {
                    0 => {
                        h.insert("KV-Operation", "PURGE");
                        h.insert("Nats-Rollup", "sub");
                        h.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
                        h.insert(
                            "Nats-Expected-Last-Subject-Sequence-Subject",
                            format!("cb.workflows.raw.places.*.tokens.{tid}").as_str(),
                        );
                        format!("cb.workflows.raw.places.{place}.tokens.{tid}")
                    }
                    1 => format!("cb.workflows.raw.places.{to}.tokens.{tid}"),
                    _ => format!("cb.workflows.raw.events.transitions.{tid}"),
                };
                let payload: Bytes = if k == 0 { Bytes::new() } else { "{}".into() };
                if seqno == total {
                    h.insert("Nats-Batch-Commit", "1");
                    reply = Some(client.request_with_headers(subject, h, payload).await?);
                } else {
                    client.publish_with_headers(subject, h, payload).await?;
                }
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.expect("commit").payload)?;
        let last = v["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("batch failed: {v}"))?;
        let first = last + 1 - total as u64;
        for (i, (_, place, seq)) in toks.iter_mut().enumerate() {
            *place = if *place == "ping" { "pong" } else { "ping" };
            *seq = first + 3 * i as u64 + 1;
        }
        moves += c;
        lat.push(s.elapsed());
    }
    let elapsed = t0.elapsed();
    // Report one latency sample per move so ops/s counts moves.
    let per_batch = lat.clone();
    let mut out = Vec::with_capacity(moves);
    for l in per_batch {
        out.extend(std::iter::repeat_n(l, c));
    }
    Ok((out, elapsed))
}

/// One raw `multi_last` request; returns the number of messages received.
async fn raw_multi_last(client: &async_nats::Client, filter: &str) -> anyhow::Result<usize> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    let body = serde_json::to_vec(&json!({ "multi_last": [filter], "batch": 1024 }))?;
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{STREAM}"), inbox, body.into())
        .await?;
    let mut n = 0;
    while let Some(m) = sub.next().await {
        match m.status {
            None => n += 1,
            Some(_) => break,
        }
    }
    Ok(n)
}

fn print_report(rows: &[Row]) -> anyhow::Result<()> {
    println!("| operation | ops | p50 µs | p99 µs | ops/s |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} |",
            r.name, r.ops, r.p50_us, r.p99_us, r.per_sec
        );
    }
    let json: Vec<_> = rows
        .iter()
        .map(|r| json!({"name": r.name, "ops": r.ops, "p50_us": r.p50_us, "p99_us": r.p99_us, "per_sec": r.per_sec}))
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("storage.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!("saved {}", dir.join("storage.json").display());
    Ok(())
}
