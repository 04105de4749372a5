//! Plugin runtime benchmarks: guard evaluate on a fresh instance (pooling +
//! `InstancePre`), compile vs cached load, and evaluate with a
//! `token-reader` call. `make bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cb_host::model::{Id, StoredDefinition, Token, Transition, WorkflowDefinition};
use cb_host::plugin::{Decision, GuardInput, PluginRuntime, RuntimeConfig};
use cb_host::store::{MemorySource, TokenSource};
use serde_json::json;
use time::OffsetDateTime;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn report(name: &str, mut lat: Vec<Duration>) -> serde_json::Value {
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_secs_f64() * 1e6;
    let total: Duration = lat.iter().sum();
    let per_sec = lat.len() as f64 / total.as_secs_f64();
    eprintln!(
        "  {name:<52} p50 {:>9.1} µs  p99 {:>9.1} µs  {:>9.0}/s",
        pct(0.5),
        pct(0.99),
        per_sec
    );
    json!({"name": name, "ops": lat.len(), "p50_us": pct(0.5), "p99_us": pct(0.99), "per_sec": per_sec})
}

fn token(i: u64) -> Token {
    let now = OffsetDateTime::now_utc();
    Token {
        id: id(&format!("t{i}")),
        workflow_id: id("orders"),
        definition_version: 1,
        place: id("open"),
        data: json!({"amount": 10, "owner": "ana"}),
        metadata: [("parent".to_string(), "p".to_string())].into(),
        created_at: now,
        updated_at: now,
        revision: i + 1,
        subject: String::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("CB_BENCH_QUICK").is_some();
    let n = if quick { 2_000 } else { 20_000 };
    let cache = tempfile::tempdir()?;
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let rt = PluginRuntime::new(config.clone())?;
    eprintln!("plugin benchmarks (pooling allocator: {})", rt.is_pooling());
    let mut rows = Vec::new();

    eprintln!("[load] compile vs cached load");
    let bytes = std::fs::read(cb_test_plugins::AMOUNT_LIMIT)?;
    let (mut compile, mut cached) = (Vec::new(), Vec::new());
    for i in 0..if quick { 3 } else { 10 } {
        let dir = tempfile::tempdir()?;
        let fresh = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..config.clone()
        })?;
        let s = Instant::now();
        fresh.load("amount-limit", &bytes)?;
        compile.push(s.elapsed());
        let again = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..config.clone()
        })?;
        let s = Instant::now();
        let p = again.load("amount-limit", &bytes)?;
        cached.push(s.elapsed());
        assert_eq!(again.compile_count(), 0, "run {i}: cached load compiled");
        drop(p);
    }
    rows.push(report("load amount-limit: compile (107 KB component)", compile));
    rows.push(report("load amount-limit: cached artifact", cached));

    eprintln!("[evaluate] fresh store + instance per call");
    let guard = rt.load("amount-limit", &bytes)?;
    let empty: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
    let transition = Transition {
        id: id("t"),
        from: vec![id("open")],
        to: id("done"),
        guards: vec![],
        actions: vec![],
    };
    let input = |i: u64| GuardInput {
        token: token(i),
        transition: transition.clone(),
        config: json!({"max": 100}),
        input: serde_json::Value::Null,
        actor: None,
        fired_at: OffsetDateTime::now_utc(),
    };
    for _ in 0..500 {
        guard.evaluate(&input(0), empty.clone()).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let inp = input(i);
        let s = Instant::now();
        let out = guard.evaluate(&inp, empty.clone()).await?;
        lat.push(s.elapsed());
        assert_eq!(out.value, Decision::Allow);
    }
    rows.push(report("guard evaluate (amount-limit), fresh instance", lat));

    eprintln!("[evaluate] with token-reader calls");
    let source = MemorySource::new();
    let def = WorkflowDefinition::parse(
        br#"{"id":"orders","places":["open","done"],"initial_place":"open",
             "transitions":[{"id":"t","from":["open"],"to":"done"}]}"#,
    )?;
    source.insert_definition(StoredDefinition {
        version: 1,
        stored_at: OffsetDateTime::now_utc(),
        definition: def,
    });
    for i in 0..10 {
        source.insert_token(token(i));
    }
    let source: Arc<dyn TokenSource> = Arc::new(source);
    let siblings = rt.load_file(std::path::Path::new(cb_test_plugins::SIBLINGS_IN_PLACE))?;
    let mut lat = Vec::with_capacity(n / 4);
    for i in 0..(n / 4) as u64 {
        let inp = GuardInput {
            config: json!({"place": "done"}),
            ..input(i % 10)
        };
        let s = Instant::now();
        siblings.evaluate(&inp, source.clone()).await?;
        lat.push(s.elapsed());
    }
    rows.push(report("guard evaluate (siblings-in-place: 3 reader calls)", lat));

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("plugins.json"), serde_json::to_string_pretty(&rows)?)?;
    println!("| operation | ops | p50 µs | p99 µs | ops/s |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} |",
            r["name"].as_str().unwrap(),
            r["ops"],
            r["p50_us"].as_f64().unwrap(),
            r["p99_us"].as_f64().unwrap(),
            r["per_sec"].as_f64().unwrap()
        );
    }
    Ok(())
}
