//! Resident memory over many plugin calls. A test binary of its own: RSS
//! is per process, and other tests running alongside would skew it.

use std::sync::Arc;
use std::time::Duration;

use cb_host::model::{Id, Token, Transition};
use cb_host::plugin::{Decision, GuardInput, Plugin, PluginLimits, PluginRuntime, RuntimeConfig};
use cb_host::store::{MemorySource, TokenSource};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

async fn call(p: &Plugin, config: Value) -> Result<Decision, cb_host::plugin::PluginError> {
    let now = OffsetDateTime::now_utc();
    let token = Token {
        id: id("t"),
        workflow_id: id("w"),
        definition_version: 1,
        place: id("p"),
        marking: vec![id("p").clone()],
        data: json!({"amount": 1}),
        metadata: Default::default(),
        created_at: now,
        updated_at: now,
        revision: 1,
        subject: String::new(),
    };
    let input = GuardInput {
        token,
        transition: Transition::simple(id("t"), vec![id("p")], id("p")),
        config,
        input: Value::Null,
        actor: None,
        fired_at: now,
    };
    let source: Arc<dyn TokenSource> = Arc::new(MemorySource::new());
    p.evaluate(&input, source).await.map(|o| o.value)
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_calls_do_not_grow_memory_or_exhaust_the_pool() {
    let cache = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let limits = PluginLimits {
        deadline: Duration::from_millis(50),
        memory_bytes: 16 << 20,
        ..Default::default()
    };
    let bad = rt
        .load_file(std::path::Path::new(cb_test_plugins::MISBEHAVE))
        .unwrap()
        .with_limits(limits);
    let good = rt
        .load_file(std::path::Path::new(cb_test_plugins::AMOUNT_LIMIT))
        .unwrap();
    let modes = ["trap", "memory", "recursion", "loop", "file", "output"];
    let run = async |n: usize| {
        for i in 0..n {
            if i % 2 == 0 {
                assert_eq!(call(&good, json!({"max": 2})).await.unwrap(), Decision::Allow);
            } else {
                let mode = modes[(i / 2) % modes.len()];
                let r = call(&bad, json!({ "do": mode })).await;
                assert!(r.is_err() || matches!(mode, "file" | "output"), "{mode}: {r:?}");
            }
        }
    };
    run(100).await; // warm up: pools, caches, allocator arenas
    let before = rss_bytes();
    run(1000).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB over 1,000 calls",
        grown >> 20
    );
}
