//! `cb-host demo`: the mission in one command.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use cb_host::engine::{FireError, FireRequest};
use cb_host::model::Id;
use cb_host::store::StoreConfig;
use cb_host::{Host, HostError};
use clap::Args;
use futures::TryStreamExt;
use serde_json::json;

use crate::embedded::EmbeddedNats;
use crate::output::{Out, describe};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Plugin directory (`make plugins` fills target/plugins).
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Workflow definitions to apply.
    #[arg(long, default_value = "examples/workflows")]
    workflows: PathBuf,
    /// The nats-server to start when no --nats-url is given.
    #[arg(long, env = "CB_NATS_SERVER_BIN", default_value = "nats-server")]
    nats_server_bin: PathBuf,
    /// Reads made for the read-only proof.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
}

struct Steps {
    n: usize,
    started: Instant,
}

impl Steps {
    fn step(&mut self, title: &str) -> Instant {
        self.n += 1;
        println!("\n== {}. {title}", self.n);
        Instant::now()
    }

    fn done(&self, t: Instant) {
        println!("   ({:.1} ms)", t.elapsed().as_secs_f64() * 1e3);
    }
}

/// Where the demo's host logs go (its narration is on stdout).
pub(crate) fn log_file() -> PathBuf {
    std::env::temp_dir().join("cb-host-demo.log")
}

pub(crate) fn run(nats_url: &Option<String>, args: &DemoArgs, _out: Out) -> anyhow::Result<()> {
    if !args.plugins.is_dir() {
        bail!(
            "no plugin directory {}: run `make plugins` (or `make demo`) first",
            args.plugins.display()
        );
    }
    let mut steps = Steps {
        n: 0,
        started: Instant::now(),
    };
    println!("Circuit Breaker demo: WebAssembly guards and actions, state in NATS JetStream.");
    if std::env::var_os("RUST_LOG").is_none() {
        println!("(the host's log goes to {})", log_file().display());
    }
    let data = tempfile::Builder::new().prefix("cb-demo-").tempdir()?;
    let t = steps.step("Start NATS");
    let mut embedded = None;
    let url = match nats_url {
        Some(u) => {
            println!("   using {u}");
            u.clone()
        }
        None => {
            let e = EmbeddedNats::start(&args.nats_server_bin, data.path())?;
            println!(
                "   started a local nats-server with JetStream at {} (data in {})",
                e.url(),
                data.path().display()
            );
            let u = e.url().to_string();
            embedded = Some(e);
            u
        }
    };
    steps.done(t);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(demo(&url, args, &mut steps));
    drop(rt);
    if let Some(e) = embedded.as_mut() {
        e.stop();
    }
    result?;
    println!(
        "\nDemo finished in {:.2} s.",
        steps.started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn demo(url: &str, args: &DemoArgs, steps: &mut Steps) -> anyhow::Result<()> {
    let id = |s: &str| Id::new(s).expect("valid id");
    let store = StoreConfig::development().with_stream("CB_DEMO");
    let t = steps.step("Load plugins (sandboxed WebAssembly components)");
    let host = Host::builder()
        .nats_url(url)
        .store(store)
        .plugin_dir(&args.plugins)
        .build()
        .await?;
    for p in host.plugins() {
        println!("   {:<18} {:<6} {}", p.name, p.world.to_string(), &p.digest[..23]);
    }
    steps.done(t);

    let t = steps.step("Apply workflow definitions");
    for d in host.apply_dir(&args.workflows).await? {
        println!(
            "   {} \"{}\" version {}: {} places, {} transitions",
            d.definition.id,
            d.definition.name,
            d.version,
            d.definition.places.len(),
            d.definition.transitions.len()
        );
    }
    steps.done(t);
    let serving = cb_host::serve(&host, Default::default()).await?;
    let wf = id("expense-approval");

    let t = steps.step("Create tokens");
    let good = host
        .create_token(
            &wf,
            None,
            json!({"amount": 120, "owner": "ana", "note": "team lunch"}),
            Default::default(),
            Some("ana".into()),
        )
        .await?;
    let bad = host
        .create_token(
            &wf,
            None,
            json!({"amount": 5000}),
            Default::default(),
            Some("bob".into()),
        )
        .await?;
    println!("   {} in `{}` with {}", good.id, good.place, good.data);
    println!("   {} in `{}` with {}", bad.id, bad.place, bad.data);
    steps.done(t);

    let t = steps.step("Fire `submit` (guards: require-fields, amount-limit)");
    let f = host
        .fire(FireRequest::new(wf.clone(), good.id.clone(), id("submit")))
        .await?;
    println!(
        "   allowed: {} {} -> {} (revision {})",
        f.token.id, f.from, f.token.place, f.token.revision
    );
    match host
        .fire(FireRequest::new(wf.clone(), bad.id.clone(), id("submit")))
        .await
    {
        Err(HostError::Fire(FireError::Denied { denials, .. })) => {
            println!("   denied:  {} stays in `draft`; every guard's reason:", bad.id);
            for d in denials {
                println!("      - {} ({}): {}", d.plugin, d.code, d.message);
            }
        }
        other => bail!("expected a denial, got {other:?}"),
    }
    steps.done(t);

    let t = steps.step("Fire `approve`: the auto-advance action then fires `pay`");
    host.fire(FireRequest::new(wf.clone(), good.id.clone(), id("approve")))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let paid = loop {
        let tok = host.get_token(Some(&wf), &good.id).await?;
        if tok.place == "paid" {
            break tok;
        }
        if Instant::now() > deadline {
            bail!("the action did not move {} to `paid` within 10 s", good.id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "   {} is now in `{}` (revision {}), moved by the action",
        paid.id, paid.place, paid.revision
    );
    steps.done(t);

    let t = steps.step("List every place");
    let def = host.get_workflow(&wf, None).await?;
    for place in &def.definition.places {
        let page = host.list_tokens(&wf, place, None, 1000).await?;
        let ids: Vec<String> = page.items.iter().map(|t| t.id.to_string()).collect();
        println!(
            "   {:<10} {}",
            place.to_string(),
            if ids.is_empty() {
                "-".into()
            } else {
                ids.join(", ")
            }
        );
    }
    steps.done(t);

    let t = steps.step(&format!("History of {}", good.id));
    let h = host.history(Some(&wf), &good.id, None, 100).await?;
    for e in &h.items {
        println!("   {:>4}  {}", e.sequence, describe(e));
    }
    steps.done(t);

    purchase_orders(&host, steps).await?;

    let t = steps.step(&format!(
        "Reads consume nothing: {} gets and {} listings",
        args.reads,
        args.reads / 10
    ));
    let js = jetstream::new(host.client().clone());
    let state = |js: jetstream::Context| async move {
        let mut s = js.get_stream("CB_DEMO").await?;
        let info = s.info().await?.clone();
        let consumers: Vec<String> = s.consumer_names().try_collect().await?;
        anyhow::Ok((info.state.messages, info.state.last_sequence, consumers))
    };
    let before = state(js.clone()).await?;
    let reads = Instant::now();
    for _ in 0..args.reads {
        host.get_token(Some(&wf), &good.id).await?;
    }
    for _ in 0..args.reads / 10 {
        host.list_tokens(&wf, &id("draft"), None, 1000).await?;
    }
    let per_read = reads.elapsed().as_secs_f64() * 1e6 / (args.reads + args.reads / 10) as f64;
    let after = state(js).await?;
    println!(
        "   before: {} messages, last sequence {}, consumers {:?}",
        before.0, before.1, before.2
    );
    println!(
        "   after:  {} messages, last sequence {}, consumers {:?}",
        after.0, after.1, after.2
    );
    println!("   ({per_read:.0} µs per read; the only consumer is the action dispatcher's)");
    if before != after {
        bail!("reads changed the stream");
    }
    steps.done(t);
    serving.shutdown().await;
    Ok::<_, anyhow::Error>(()).context("demo")
}

/// The Petri-net part: a parallel split, a join, a cancellation.
async fn purchase_orders(host: &Host, steps: &mut Steps) -> anyhow::Result<()> {
    let id = |s: &str| Id::new(s).expect("valid id");
    let wf = id("purchase-order");
    let fire =
        |token: &Id, transition: &str| host.fire(FireRequest::new(wf.clone(), token.clone(), id(transition)));
    let marking = |t: &cb_host::model::Token| {
        t.marking
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    };

    let t = steps.step("Purchase orders: `submit` splits each into a legal and a finance review");
    let small = host
        .create_token(
            &wf,
            None,
            json!({"amount": 1200, "supplier": "acme"}),
            Default::default(),
            None,
        )
        .await?;
    let large = host
        .create_token(
            &wf,
            None,
            json!({"amount": 90000, "supplier": "globex"}),
            Default::default(),
            None,
        )
        .await?;
    for po in [&small, &large] {
        let f = fire(&po.id, "submit").await?;
        println!("   {} ({}) is marked in {}", po.id, po.data, marking(&f.token));
    }
    steps.done(t);

    let t =
        steps.step("Both reviews approve the small order: the join fires once, its action places the order");
    fire(&small.id, "legal_approve").await?;
    let f = fire(&small.id, "finance_approve").await?;
    println!("   {} is marked in {}", small.id, marking(&f.token));
    let f = fire(&small.id, "approve").await?;
    println!(
        "   `approve` joined them: {} is in {}",
        small.id,
        marking(&f.token)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match host.get_token(Some(&wf), &small.id).await {
            Err(HostError::Store(cb_host::store::StoreError::NotFound(_))) => break,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(t) => bail!(
                "the action did not complete {} within 10 s (it is in {:?})",
                small.id,
                t.marking
            ),
            Err(e) => return Err(e.into()),
        }
    }
    println!("   `place_order` reached the final place `ordered`: the case is complete");
    steps.done(t);

    let t = steps.step("Finance refuses the large order; rejecting it cancels the open legal review");
    match fire(&large.id, "finance_approve").await {
        Err(HostError::Fire(FireError::Denied { denials, .. })) => {
            println!("   finance_approve denied: {}", denials[0].message);
        }
        other => bail!("expected a denial, got {other:?}"),
    }
    fire(&large.id, "finance_reject").await?;
    let h = host.history(Some(&wf), &large.id, None, 100).await?;
    for e in &h.items {
        println!("   {:>4}  {}", e.sequence, describe(e));
    }
    steps.done(t);
    Ok(())
}
