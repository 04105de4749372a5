//! The service API, which is what users call: create and fire through
//! `cb.api.*` (an `ApiClient` on a connection of its own) and fire over the
//! HTTP API (a keep-alive reqwest client) at 1 and 64 in flight, next to
//! the same operations in-process on the same host, in the same run
//! (interleaved at 1 in flight, in alternating slices at 64); and fire over
//! NATS at 64 in flight with metrics recording and OpenTelemetry tracing on
//! (every span exported through the SDK's batch processor) against both
//! off, in slices in ABBA order.
//! `make bench`; writes `target/bench/api.json`.

#[path = "common/mod.rs"]
mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use cb_host::api::ApiClient;
use cb_host::engine::FireRequest;
use cb_host::model::{Id, WorkflowDefinition};
use cb_host::plugin::RuntimeConfig;
use cb_host::store::StoreConfig;
use cb_host::{Host, ServeConfig};
use common::Role::{Ours, Raw};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{Value, json};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, reload};

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

/// Runs `op(i, k)` from 64 tasks, each for `slice`, `k` counting on from
/// `counts[i]`; returns every latency and the wall time.
async fn slice64<F, Fut>(slice: Duration, counts: &mut [usize], op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (op, mut k) = (op.clone(), counts[i]);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < slice {
                    let s = Instant::now();
                    op(i, k).await;
                    k += 1;
                    lat.push(s.elapsed());
                }
                (lat, k)
            })
        })
        .collect();
    let mut all = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (lat, k) = t.await.expect("a bench task");
        all.extend(lat);
        counts[i] = k;
    }
    (all, t0.elapsed())
}

/// Counts the spans it is given and drops them: what tracing costs the
/// host (spans built and handed to the batch processor) without an
/// exporter's encoding and sending, which happen on the processor's own
/// thread and depend on the collector. (The SDK's in-memory exporter
/// would add cloning and a growing buffer that no deployment has.)
#[derive(Debug, Clone, Default)]
struct CountingExporter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl CountingExporter {
    fn take(&self) -> usize {
        self.0.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0
            .fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Tracing off: the host's spans are disabled at their callsites.
fn tracing_off() -> Targets {
    Targets::new()
}

/// Tracing on: every `cb_host` span, as the binary exports them.
fn tracing_on() -> Targets {
    Targets::new().with_target("cb_host", tracing::Level::INFO)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The same layer the binary installs, behind a filter the tracing
    // section switches; off everywhere else. Spans go through the SDK's
    // batch processor (its own thread) to an exporter that counts them.
    let spans = CountingExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(spans.clone())
        .build();
    let (filter, tracing_switch) = reload::Layer::new(tracing_off());
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(cb_host::otel_layer(provider.tracer("cb-bench")).with_filter(filter)),
    )?;
    let mut b = common::Bench::new("api", 5);
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
    let http = cb_host::api::serve_http(
        &host,
        cb_host::api::HttpConfig {
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        },
    )
    .await?;
    let base = format!("http://{}", http.local_addr());
    let web = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
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
    host.create_token(
        &id("bench"),
        Some(id("h1")),
        data.clone(),
        Default::default(),
        None,
    )
    .await?;
    let (mut ours, mut ours_t, mut inproc, mut inproc_t) =
        (Vec::new(), Duration::ZERO, Vec::new(), Duration::ZERO);
    let (mut over_http, mut over_http_t) = (Vec::new(), Duration::ZERO);
    // The transport alone: a request of the same size to a responder that
    // echoes it, each on a connection of its own to the same server, as the
    // ApiClient and the host are. What the service API adds to a firing is
    // ours minus in-process minus this.
    let (mut echo, mut echo_t) = (Vec::new(), Duration::ZERO);
    let echo_client = async_nats::connect(server.url()).await?;
    let responder = async_nats::connect(server.url()).await?;
    let mut echo_sub = responder.subscribe("bench.echo").await?;
    // The server has the subscription once the flush's PING is answered.
    responder.flush().await?;
    let echo_task = tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(m) = echo_sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let echo_body = bytes::Bytes::from(serde_json::to_vec(
        &json!({"workflow": "bench", "id": "f1", "transition": "back"}),
    )?);
    for i in 0..n1 {
        let s = Instant::now();
        echo_client.request("bench.echo", echo_body.clone()).await?;
        let e = s.elapsed();
        echo.push(e);
        echo_t += e;
        let s = Instant::now();
        let r = web
            .post(format!("{base}/v1/tokens/h1/transitions/{}", transition(i)))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "fire over HTTP: {}", r.status());
        r.bytes().await?;
        let e = s.elapsed();
        over_http.push(e);
        over_http_t += e;
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
        inproc.clone(),
        inproc_t,
    );
    b.record(
        op,
        Raw,
        "transport only: raw async-nats request/reply echo of the request (same run, interleaved)",
        echo,
        echo_t,
    );
    echo_task.abort();
    let op = "fire with one guard via the HTTP API, 1 in flight";
    b.record(
        op,
        Ours,
        "POST /v1/tokens/{id}/transitions/{t} (reqwest, keep-alive)",
        over_http,
        over_http_t,
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
    let (mut over_http, mut over_http_t) = (Vec::new(), Duration::ZERO);
    let mut fired_api = vec![0usize; 64];
    let mut fired_http = vec![0usize; 64];
    let mut fired_host = vec![0usize; 64];
    for i in 0..64 {
        host.create_token(
            &id("bench"),
            Some(id(&format!("w{i}"))),
            data.clone(),
            Default::default(),
            None,
        )
        .await?;
    }
    let over_nats = |prefix: &'static str| {
        let api = api.clone();
        move |i: usize, k: usize| {
            let api = api.clone();
            async move {
                let r: Result<Value, _> = api
                    .call(
                        "token.fire",
                        &json!({"workflow": "bench", "id": format!("{prefix}{i}"), "transition": transition(k)}),
                    )
                    .await;
                r.expect("fire over the API");
            }
        }
    };
    for _ in 0..SLICES {
        let (lat, t) = slice64(slice, &mut fired_api, over_nats("a")).await;
        ours.extend(lat);
        ours_t += t;
        let (web, base) = (web.clone(), base.clone());
        let (lat, t) = slice64(slice, &mut fired_http, move |i, k| {
            let (web, base) = (web.clone(), base.clone());
            async move {
                let r = web
                    .post(format!("{base}/v1/tokens/w{i}/transitions/{}", transition(k)))
                    .send()
                    .await
                    .expect("fire over HTTP");
                assert_eq!(r.status(), 200, "fire over HTTP");
                r.bytes().await.expect("an HTTP reply");
            }
        })
        .await;
        over_http.extend(lat);
        over_http_t += t;
        let h = host.clone();
        let (lat, t) = slice64(slice, &mut fired_host, move |i, k| {
            let h = h.clone();
            async move {
                h.fire(FireRequest::new(
                    id("bench"),
                    id(&format!("b{i}")),
                    id(transition(k)),
                ))
                .await
                .expect("fire in-process");
            }
        })
        .await;
        inproc.extend(lat);
        inproc_t += t;
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
        inproc.clone(),
        inproc_t,
    );
    let op = "fire with one guard via the HTTP API, 64 in flight";
    b.record(
        op,
        Ours,
        "POST /v1/tokens/{id}/transitions/{t} (reqwest, keep-alive, up to 64 connections)",
        over_http,
        over_http_t,
    );
    b.record(
        op,
        Raw,
        "host.fire in-process (same run, in alternating slices)",
        inproc,
        inproc_t,
    );

    b.section("fire: 64 in flight, metrics and tracing on and off");
    // The NATS API path (request, firing, guard and commit spans; the
    // request, firing, plugin call and commit metrics), on tokens of its
    // own; switched per slice, in ABBA order so a drift of the disk over
    // the section weighs on every arm alike. The
    // batch processor exports on its own thread as spans fill a batch, as
    // in the binary.
    // The process's CPU time per firing is measured alongside: the client
    // and the host share this process (nats-server does not), so the
    // difference between on and off is what metrics and tracing cost,
    // whatever the disk lets the throughput be.
    // Four arms: both on, tracing only, metrics only, both off, in the
    // order 0 1 2 3 3 2 1 0 ..., so each part's cost shows on its own.
    let arms = [(true, true), (true, false), (false, true), (false, false)];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 4];
    let mut wall = [Duration::ZERO; 4];
    let mut cpu = [Duration::ZERO; 4];
    let mut exported = 0usize;
    let mut fired = fired_api.clone();
    for k in 0..4 * SLICES as usize {
        let arm = match std::env::var("CB_BENCH_ARM").ok().and_then(|a| a.parse().ok()) {
            Some(a) => a,
            None if (k / 4).is_multiple_of(2) => k % 4,
            None => 3 - k % 4,
        };
        let (tracing, metrics) = arms[arm];
        tracing_switch.reload(if tracing { tracing_on() } else { tracing_off() })?;
        cb_host::metrics::set_recording(metrics);
        let cpu0 = common::cpu_time();
        let (l, t) = slice64(slice / 2, &mut fired, over_nats("a")).await;
        if tracing {
            // The slice's spans reach the exporter inside its CPU time.
            let _ = provider.force_flush();
        }
        cpu[arm] += common::cpu_time() - cpu0;
        lat[arm].extend(l);
        wall[arm] += t;
        exported += spans.take();
    }
    cb_host::metrics::set_recording(true);
    eprintln!(
        "{exported} spans exported while tracing was on ({:.1} per firing)",
        exported as f64 / (lat[0].len() + lat[1].len()).max(1) as f64
    );
    let op = "fire via the service API with metrics and tracing, 64 in flight";
    let whats = [
        (
            Ours,
            "metrics and tracing on: every span through the OTel batch processor",
        ),
        (Ours, "tracing on, metrics off"),
        (Ours, "metrics on, tracing off"),
        (Raw, "metrics and tracing off (same run, four arms in ABBA order)"),
    ];
    for (arm, (role, what)) in whats.into_iter().enumerate() {
        // `CB_BENCH_ARM=N` runs one arm only (to profile it); the others
        // have nothing to record.
        let l = std::mem::take(&mut lat[arm]);
        if !l.is_empty() {
            b.record_cpu(op, role, what, l, wall[arm], cpu[arm]);
        }
    }

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
    http.stop().await;
    let _ = provider.shutdown();
    b.save()
}
