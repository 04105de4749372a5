//! The service API, which is what users call: create and fire through
//! `cb.api.*` (an `ApiClient` on a connection of its own) at 1 and 64 in
//! flight, next to the same operations in-process on the same host, in
//! the same run (interleaved at 1 in flight, in alternating slices at 64).
//! `make bench`; writes `target/bench/api.json`.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cb_host::api::ApiClient;
use cb_host::engine::FireRequest;
use cb_host::model::{Id, WorkflowDefinition};
use cb_host::plugin::RuntimeConfig;
use cb_host::store::StoreConfig;
use cb_host::{Host, ServeConfig};
use common::Role::{Ours, Raw};
use serde_json::{Value, json};

const SLICES: u32 = 8;

const WF: &str = r#"{ "id": "bench", "places": ["ping", "pong"], "initial_place": "ping",
  "transitions": [
    { "id": "hit", "from": ["ping"], "to": "pong", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] },
    { "id": "back", "from": ["pong"], "to": "ping", "guards": [ { "plugin": "amount-limit", "config": { "max": 100 } } ] } ] }"#;

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn transition(k: usize) -> &'static str {
    if k.is_multiple_of(2) { "hit" } else { "back" }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut b = common::Bench::new("api", 4);
    let quick = b.quick;
    let n1 = if quick { 200 } else { 1500 };
    let window = if quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(4)
    };
    let server = cb_test_support::NatsServer::start();
    let plugins = tempfile::tempdir()?;
    std::fs::copy(
        cb_test_plugins::AMOUNT_LIMIT,
        plugins.path().join("amount-limit.wasm"),
    )?;
    let cache = tempfile::tempdir()?;
    let host = Host::builder()
        .nats_url(server.url())
        .store(
            StoreConfig::development()
                .with_stream("CB_BENCH_API")
                .with_storage(common::storage_kind()),
        )
        .runtime(RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        })
        .plugin_dir(plugins.path())
        .build()
        .await?;
    host.apply_workflow(&WorkflowDefinition::parse(WF.as_bytes())?)
        .await?;
    let serving = cb_host::serve(&host, ServeConfig::default()).await?;
    let api = ApiClient::new(
        async_nats::connect(server.url()).await?,
        "cb",
        Duration::from_secs(10),
    );
    eprintln!(
        "service API benchmarks against {} ({} storage)",
        server.url(),
        common::storage_name()
    );
    let data = json!({"amount": 5});

    b.section("create: 1 in flight");
    let (mut ours, mut ours_t, mut inproc, mut inproc_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    for i in 0..n1 {
        let s = Instant::now();
        let _: Value = api
            .call(
                "token.create",
                &json!({"workflow": "bench", "id": format!("c{i}"), "data": data}),
            )
            .await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;
        let s = Instant::now();
        host.create_token(
            &id("bench"),
            Some(id(&format!("d{i}"))),
            data.clone(),
            Default::default(),
            None,
        )
        .await?;
        let e = s.elapsed();
        inproc.push(e);
        inproc_t += e;
    }
    let op = "token create via the service API, 1 in flight";
    b.record(
        op,
        Ours,
        "token.create over NATS (ApiClient, its own connection)",
        ours,
        ours_t,
    );
    b.record(
        op,
        Raw,
        "host.create_token in-process (same run, interleaved)",
        inproc,
        inproc_t,
    );

    b.section("fire: 1 in flight");
    host.create_token(
        &id("bench"),
        Some(id("f1")),
        data.clone(),
        Default::default(),
        None,
    )
    .await?;
    host.create_token(
        &id("bench"),
        Some(id("g1")),
        data.clone(),
        Default::default(),
        None,
    )
    .await?;
    let (mut ours, mut ours_t, mut inproc, mut inproc_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    for i in 0..n1 {
        let s = Instant::now();
        let _: Value = api
            .call(
                "token.fire",
                &json!({"workflow": "bench", "id": "f1", "transition": transition(i)}),
            )
            .await?;
        let e = s.elapsed();
        ours.push(e);
        ours_t += e;
        let s = Instant::now();
        host.fire(FireRequest::new(id("bench"), id("g1"), id(transition(i))))
            .await?;
        let e = s.elapsed();
        inproc.push(e);
        inproc_t += e;
    }
    let op = "fire with one guard via the service API, 1 in flight";
    b.record(
        op,
        Ours,
        "token.fire over NATS (ApiClient, its own connection)",
        ours,
        ours_t,
    );
    b.record(
        op,
        Raw,
        "host.fire in-process (same run, interleaved)",
        inproc,
        inproc_t,
    );

    b.section("fire: 64 in flight");
    for i in 0..64 {
        for p in ["a", "b"] {
            host.create_token(
                &id("bench"),
                Some(id(&format!("{p}{i}"))),
                data.clone(),
                Default::default(),
                None,
            )
            .await?;
        }
    }
    let slice = window / SLICES;
    let (mut ours, mut ours_t, mut inproc, mut inproc_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    let mut fired_api = vec![0usize; 64];
    let mut fired_host = vec![0usize; 64];
    for _ in 0..SLICES {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (api, mut k) = (api.clone(), fired_api[i]);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while t0.elapsed() < slice {
                        let s = Instant::now();
                        let r: Result<Value, _> = api
                            .call(
                                "token.fire",
                                &json!({"workflow": "bench", "id": format!("a{i}"), "transition": transition(k)}),
                            )
                            .await;
                        r.expect("fire over the API");
                        k += 1;
                        lat.push(s.elapsed());
                    }
                    (lat, k)
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (lat, k) = t.await?;
            ours.extend(lat);
            fired_api[i] = k;
        }
        ours_t += t0.elapsed();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (host, mut k) = (host.clone(), fired_host[i]);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while t0.elapsed() < slice {
                        let s = Instant::now();
                        host.fire(FireRequest::new(
                            id("bench"),
                            id(&format!("b{i}")),
                            id(transition(k)),
                        ))
                        .await
                        .expect("fire in-process");
                        k += 1;
                        lat.push(s.elapsed());
                    }
                    (lat, k)
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (lat, k) = t.await?;
            inproc.extend(lat);
            fired_host[i] = k;
        }
        inproc_t += t0.elapsed();
    }
    let op = "fire with one guard via the service API, 64 in flight";
    b.record(
        op,
        Ours,
        "token.fire over NATS (ApiClient, its own connection)",
        ours,
        ours_t,
    );
    b.record(
        op,
        Raw,
        "host.fire in-process (same run, in alternating slices)",
        inproc,
        inproc_t,
    );
    b.section("create: 64 in flight");
    let (mut ours, mut ours_t, mut inproc, mut inproc_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    let mut made = 0usize;
    for slice_no in 0..SLICES {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (api, data) = (api.clone(), data.clone());
                tokio::spawn(async move {
                    let (mut lat, mut k) = (Vec::new(), 0usize);
                    while t0.elapsed() < slice {
                        let s = Instant::now();
                        let r: Result<Value, _> = api
                            .call(
                                "token.create",
                                &json!({"workflow": "bench", "id": format!("n{slice_no}-{i}-{k}"), "data": data}),
                            )
                            .await;
                        r.expect("create over the API");
                        k += 1;
                        lat.push(s.elapsed());
                    }
                    lat
                })
            })
            .collect();
        for t in tasks {
            let lat = t.await?;
            made += lat.len();
            ours.extend(lat);
        }
        ours_t += t0.elapsed();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (host, data) = (host.clone(), data.clone());
                tokio::spawn(async move {
                    let (mut lat, mut k) = (Vec::new(), 0usize);
                    while t0.elapsed() < slice {
                        let s = Instant::now();
                        host.create_token(
                            &id("bench"),
                            Some(id(&format!("h{slice_no}-{i}-{k}"))),
                            data.clone(),
                            Default::default(),
                            None,
                        )
                        .await
                        .expect("create in-process");
                        k += 1;
                        lat.push(s.elapsed());
                    }
                    lat
                })
            })
            .collect();
        for t in tasks {
            inproc.extend(t.await?);
        }
        inproc_t += t0.elapsed();
    }
    eprintln!("{made} tokens created over the API");
    let op = "token create via the service API, 64 in flight";
    b.record(
        op,
        Ours,
        "token.create over NATS (ApiClient, its own connection)",
        ours,
        ours_t,
    );
    b.record(
        op,
        Raw,
        "host.create_token in-process (same run, in alternating slices)",
        inproc,
        inproc_t,
    );
    serving.shutdown().await;
    b.save()
}
