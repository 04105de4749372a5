//! The original NATS storage work's timing test, published: five scenarios
//! against real JetStream, each checked, with p50/p99 per operation.
//!
//! ```sh
//! cargo run --release --example nats_timing_test                 # starts a local nats-server
//! cargo run --release --example nats_timing_test -- --nats-url nats://127.0.0.1:4222
//! ```
//!
//! Scenarios: (1) basic create/retrieve of workflows and tokens; (2) a
//! rapid stress test, every token retrieved immediately after its creation;
//! (3) operations with event tracking: each operation's event is read back
//! from the token's history; (4) place queries before and after moves; (5)
//! transition timing with the events they record. Exits non-zero on any
//! failure. Without `--nats-url` it starts `nats-server` (from
//! `NATS_SERVER_BIN` or PATH; `make setup` installs one) on a free port with
//! a temporary store.

#[path = "../host/bench/benches/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use cb_host::engine::{Engine, EngineConfig, FireRequest};
use cb_host::model::{EventKind, Id, WorkflowDefinition};
use cb_host::plugin::PluginRegistry;
use cb_host::store::{NewToken, Store, StoreConfig};
use serde_json::json;

const WORKFLOW: &str = r#"{
  "id": "timing", "name": "timing test",
  "places": ["draft", "review", "done"], "initial_place": "draft",
  "transitions": [
    { "id": "submit", "from": ["draft"], "to": "review" },
    { "id": "approve", "from": ["review"], "to": "done" },
    { "id": "reopen", "from": ["review", "done"], "to": "draft" }
  ] }"#;

fn id(s: &str) -> Id {
    Id::new(s).expect("valid id")
}

/// Latencies per operation, in first-recorded order.
#[derive(Default)]
struct Timings(BTreeMap<String, (usize, Vec<Duration>)>);

impl Timings {
    async fn time<T, F: Future<Output = anyhow::Result<T>>>(&mut self, op: &str, f: F) -> anyhow::Result<T> {
        let s = Instant::now();
        let out = f.await.with_context(|| op.to_string())?;
        let order = self.0.len();
        self.0
            .entry(op.to_string())
            .or_insert((order, Vec::new()))
            .1
            .push(s.elapsed());
        Ok(out)
    }

    fn print(self) {
        let mut rows: Vec<_> = self.0.into_iter().collect();
        rows.sort_by_key(|(_, (order, _))| *order);
        println!("\n| operation | n | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|");
        for (op, (_, lat)) in rows {
            let total = lat.iter().sum();
            let r = common::summarize("timing", &op, common::Role::Ours, &op, lat, total);
            println!(
                "| {op} | {} | {:.3} | {:.3} |",
                r.ops,
                r.p50_us / 1e3,
                r.p99_us / 1e3
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut tokens = 200usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nats-url" => url = Some(args.next().context("--nats-url needs a URL")?),
            "--tokens" => tokens = args.next().context("--tokens needs a number")?.parse()?,
            "-h" | "--help" => {
                println!("nats_timing_test [--nats-url URL] [--tokens N (stress test size, default 200)]");
                return Ok(());
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    let _server;
    let url = match url {
        Some(u) => u,
        None => {
            let s = cb_test_support::NatsServer::start();
            let u = s.url();
            _server = s;
            u
        }
    };
    println!("nats_timing_test against {url}");
    let client = async_nats::connect(&url).await?;
    // A stream of its own, so the counts below are exact on any server.
    let stream = format!("CB_TIMING_{}", std::process::id());
    let store = Store::open(
        client.clone(),
        StoreConfig::development()
            .with_stream(&stream)
            .with_prefix(format!("cbt{}", std::process::id())),
    )
    .await?;
    let engine = Engine::new(store.clone(), PluginRegistry::new(), EngineConfig::default());
    let mut t = Timings::default();
    let scenarios: [(&str, Scenario); 5] = [
        ("basic create/retrieve", basic),
        ("rapid stress (create, then retrieve at once)", stress),
        ("operations with event tracking", events),
        ("place queries before and after moves", places),
        ("transition timing", transitions),
    ];
    let mut passed = 0;
    let started = Instant::now();
    for (i, (name, run)) in scenarios.iter().enumerate() {
        let s = Instant::now();
        match run(&engine, &mut t, tokens).await {
            Ok(note) => {
                passed += 1;
                println!(
                    "[{}/5] ok   {name} ({:.0} ms) {note}",
                    i + 1,
                    s.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => println!("[{}/5] FAIL {name}: {e:#}", i + 1),
        }
    }
    t.print();
    println!(
        "\nscenarios: {passed}/5 passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Leave the server as it was.
    let _ = async_nats::jetstream::new(client).delete_stream(&stream).await;
    if passed != scenarios.len() {
        std::process::exit(1);
    }
    Ok(())
}

/// A scenario's run: a note for its result line, or why it failed.
type Run<'a> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<String>> + 'a>>;
type Scenario = for<'a> fn(&'a Engine, &'a mut Timings, usize) -> Run<'a>;

fn basic<'a>(e: &'a Engine, t: &'a mut Timings, _: usize) -> Run<'a> {
    Box::pin(async move {
        let def = WorkflowDefinition::parse(WORKFLOW.as_bytes())?;
        let w = e.store().writer();
        let stored = t
            .time("workflow create", async { Ok(w.put_definition(&def).await?) })
            .await?;
        let r = e.store().reader();
        for _ in 0..20 {
            let got = t
                .time("workflow retrieve", async {
                    Ok(r.get_definition(&def.id).await?)
                })
                .await?;
            ensure!(
                got.version == stored.version && got.definition == def,
                "workflow read back differs"
            );
        }
        for i in 0..20 {
            let data = json!({"n": i, "title": format!("token {i}")});
            let created = t
                .time("token create", async {
                    Ok(e.create_token(
                        &def.id,
                        NewToken {
                            id: Some(id(&format!("basic{i}"))),
                            data: data.clone(),
                            ..Default::default()
                        },
                    )
                    .await?)
                })
                .await?;
            let got = t
                .time("token retrieve", async {
                    Ok(r.get_token(&def.id, &created.token.id).await?)
                })
                .await?;
            ensure!(
                got.data == data && got.place == "draft" && got.revision == created.token.revision,
                "token {i} read back differs: {got:?}"
            );
        }
        Ok("20 tokens, 20 workflow reads".into())
    })
}

fn stress<'a>(e: &'a Engine, t: &'a mut Timings, n: usize) -> Run<'a> {
    Box::pin(async move {
        let wf = id("timing");
        let r = e.store().reader();
        let mut ok = 0;
        for i in 0..n {
            let created = t
                .time("stress: create", async {
                    Ok(e.create_token(
                        &wf,
                        NewToken {
                            id: Some(id(&format!("stress{i}"))),
                            data: json!({"i": i}),
                            ..Default::default()
                        },
                    )
                    .await?)
                })
                .await?;
            let got = t
                .time("stress: immediate retrieve", async {
                    Ok(r.get_token(&wf, &created.token.id).await?)
                })
                .await?;
            if got.revision == created.token.revision && got.data == json!({"i": i}) {
                ok += 1;
            }
        }
        let rate = 100.0 * ok as f64 / n as f64;
        ensure!(ok == n, "immediate retrieval succeeded for {ok}/{n} ({rate:.1}%)");
        Ok(format!("immediate retrieval {ok}/{n} ({rate:.0}%)"))
    })
}

fn events<'a>(e: &'a Engine, t: &'a mut Timings, _: usize) -> Run<'a> {
    Box::pin(async move {
        let wf = id("timing");
        let r = e.store().reader();
        let mut checked = 0;
        for i in 0..10 {
            let tid = id(&format!("ev{i}"));
            let created = e
                .create_token(
                    &wf,
                    NewToken {
                        id: Some(tid.clone()),
                        ..Default::default()
                    },
                )
                .await?;
            let mut req = FireRequest::new(wf.clone(), tid.clone(), id("submit"));
            req.actor = Some("timing".into());
            let fired = e.fire(req).await?;
            let updated = e.update(&wf, &tid, Some(json!({"note": i})), None, None).await?;
            let completed = e.complete(&wf, &tid, None).await?;
            let history = t
                .time("event history read", async {
                    Ok(r.history(&wf, &tid, None, 100).await?)
                })
                .await?
                .items;
            let kinds: Vec<&str> = history
                .iter()
                .map(|ev| match &ev.kind {
                    EventKind::Created { .. } => "created",
                    EventKind::Transition { .. } => "transition",
                    EventKind::Updated { .. } => "updated",
                    EventKind::Completed { .. } => "completed",
                    _ => "other",
                })
                .collect();
            ensure!(
                kinds == ["created", "transition", "updated", "completed"],
                "token {tid}: events {kinds:?}"
            );
            let seqs: Vec<u64> = history.iter().map(|ev| ev.sequence).collect();
            ensure!(
                seqs[0] == created.event_sequence && seqs[1] == fired.event_sequence && seqs[3] == completed,
                "token {tid}: event sequences {seqs:?} differ from the writes'"
            );
            ensure!(
                history[2].revision == Some(updated.revision),
                "token {tid}: update event revision"
            );
            checked += history.len();
        }
        Ok(format!("{checked} events observed for 40 operations"))
    })
}

fn places<'a>(e: &'a Engine, t: &'a mut Timings, _: usize) -> Run<'a> {
    Box::pin(async move {
        // A workflow of its own: the places hold exactly these tokens.
        let def = WorkflowDefinition::parse(WORKFLOW.replace("\"timing\"", "\"places\"").as_bytes())?;
        e.store().writer().put_definition(&def).await?;
        let r = e.store().reader();
        for i in 0..50 {
            e.create_token(
                &def.id,
                NewToken {
                    id: Some(id(&format!("p{i}"))),
                    ..Default::default()
                },
            )
            .await?;
        }
        let count = async |t: &mut Timings, place: &str| -> anyhow::Result<usize> {
            let op = format!("list place ({place})");
            Ok(
                t.time(&op, async { Ok(r.list_place_all(&def.id, &id(place)).await?) })
                    .await?
                    .len(),
            )
        };
        let before = (count(t, "draft").await?, count(t, "review").await?);
        ensure!(before == (50, 0), "before moves: draft/review = {before:?}");
        for i in 0..20 {
            e.fire(FireRequest::new(
                def.id.clone(),
                id(&format!("p{i}")),
                id("submit"),
            ))
            .await?;
        }
        let after = (count(t, "draft").await?, count(t, "review").await?);
        ensure!(after == (30, 20), "after 20 moves: draft/review = {after:?}");
        Ok(format!("draft/review {before:?} -> {after:?}"))
    })
}

fn transitions<'a>(e: &'a Engine, t: &'a mut Timings, _: usize) -> Run<'a> {
    Box::pin(async move {
        let wf = id("timing");
        let r = e.store().reader();
        e.create_token(
            &wf,
            NewToken {
                id: Some(id("walker")),
                ..Default::default()
            },
        )
        .await?;
        let cycle = [
            ("submit", "draft", "review"),
            ("approve", "review", "done"),
            ("reopen", "done", "draft"),
        ];
        let mut fired = Vec::new();
        for round in 0..30 {
            let (tr, from, to) = cycle[round % 3];
            let f = t
                .time("transition fire", async {
                    Ok(e.fire(FireRequest::new(wf.clone(), id("walker"), id(tr))).await?)
                })
                .await?;
            ensure!(
                f.from == from && f.token.place == to,
                "{tr}: {from} -> {}",
                f.token.place
            );
            fired.push((f.event_sequence, tr, from, to));
        }
        // Every transition left its event, in order, with its places.
        let history = r.history(&wf, &id("walker"), None, 1000).await?.items;
        let moves: Vec<_> = history
            .iter()
            .filter_map(|ev| match &ev.kind {
                EventKind::Transition {
                    transition, from, to, ..
                } => Some((ev.sequence, transition.as_str(), from.as_str(), to.as_str())),
                _ => None,
            })
            .collect();
        ensure!(moves == fired, "events differ from the firings");
        Ok(format!("{} transitions, each with its event", fired.len()))
    })
}
