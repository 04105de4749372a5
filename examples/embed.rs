//! Embedding the Circuit Breaker host in your own Rust program.
//!
//! ```sh
//! make plugins                                  # builds target/plugins/*.wasm
//! nats-server -js &                             # or any NATS >= 2.12 with JetStream
//! cargo run --example embed -- nats://127.0.0.1:4222
//! ```
//!
//! Builds a [`Host`] against a NATS server, applies a workflow, creates a
//! token, fires a transition through its guards, and shows a denial.

use cb_host::engine::FireRequest;
use cb_host::model::{Id, WorkflowDefinition};
use cb_host::store::StoreConfig;
use cb_host::{Host, HostError};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    // One server: one replica. For a cluster use StoreConfig::production().
    let host = Host::builder()
        .nats_url(&url)
        .store(StoreConfig::development().with_stream("CB_EMBED_EXAMPLE"))
        .plugin_dir("target/plugins")
        .build()
        .await?;

    let def = WorkflowDefinition::parse(include_bytes!("workflows/expense-approval.json"))?;
    let stored = host.apply_workflow(&def).await?;
    println!("workflow {} at version {}", def.id, stored.version);

    let wf = Id::new("expense-approval")?;
    let token = host
        .create_token(
            &wf,
            None,
            json!({"amount": 80, "owner": "ana"}),
            Default::default(),
            None,
        )
        .await?;
    println!("created {} in {}", token.id, token.place);

    let fired = host
        .fire(FireRequest::new(wf.clone(), token.id.clone(), Id::new("submit")?))
        .await?;
    println!(
        "fired submit: {} -> {} (revision {})",
        fired.from, fired.token.place, fired.token.revision
    );

    let pricey = host
        .create_token(&wf, None, json!({"amount": 99999}), Default::default(), None)
        .await?;
    match host
        .fire(FireRequest::new(wf, pricey.id, Id::new("submit")?))
        .await
    {
        Err(HostError::Fire(e)) => println!("as expected: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
