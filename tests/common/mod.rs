//! Shared helpers for the integration tests: a real server per test.

#![allow(dead_code, unreachable_pub)]

use async_nats::jetstream;
use cb_host::model::{Id, StoredDefinition, WorkflowDefinition};
use cb_host::store::{StorageKind, Store, StoreConfig};
use cb_test_support::NatsServer;

/// A server with an opened store.
pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub store: Store,
}

pub fn config() -> StoreConfig {
    StoreConfig::development().with_stream("CB_TEST").with_replicas(1)
}

pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("connect")
}

pub async fn connect_all(urls: &[String]) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().expect("url")).collect();
    async_nats::connect(addrs).await.expect("connect")
}

pub async fn env() -> Env {
    env_with(config(), "").await
}

pub async fn env_memory() -> Env {
    env_with(config().with_storage(StorageKind::Memory), "").await
}

pub async fn env_with(config: StoreConfig, server_config: &str) -> Env {
    let server = NatsServer::start_with_config(server_config);
    let client = connect(&server.url()).await;
    let store = Store::open(client.clone(), config).await.expect("open store");
    Env {
        server,
        client,
        store,
    }
}

pub fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

pub const EXPENSE: &str = r#"{ "id": "expense", "name": "Expense approval",
  "places": ["draft", "submitted", "approved", "rejected", "paid"],
  "initial_place": "draft",
  "transitions": [
    { "id": "submit", "from": ["draft"], "to": "submitted" },
    { "id": "approve", "from": ["submitted"], "to": "approved" },
    { "id": "reject", "from": ["submitted"], "to": "rejected" },
    { "id": "rework", "from": ["rejected"], "to": "draft" },
    { "id": "pay", "from": ["approved"], "to": "paid" } ] }"#;

/// A two-place ping-pong workflow: tokens can move back and forth forever.
pub const PINGPONG: &str = r#"{ "id": "pingpong", "places": ["ping", "pong"], "initial_place": "ping",
  "transitions": [ { "id": "hit", "from": ["ping"], "to": "pong" },
                   { "id": "back", "from": ["pong"], "to": "ping" } ] }"#;

pub async fn apply(store: &Store, json: &str) -> StoredDefinition {
    let def = WorkflowDefinition::parse(json.as_bytes()).expect("definition");
    store.writer().put_definition(&def).await.expect("put definition")
}

/// What must not change when nothing is written: message count, last
/// sequence, and the consumers on the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamState {
    pub messages: u64,
    pub last_sequence: u64,
    pub consumers: Vec<String>,
}

pub async fn stream_state(client: &async_nats::Client, stream: &str) -> StreamState {
    use futures::TryStreamExt;
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.expect("stream");
    let info = s.info().await.expect("info").clone();
    let consumers: Vec<String> = s.consumer_names().try_collect().await.expect("consumers");
    StreamState {
        messages: info.state.messages,
        last_sequence: info.state.last_sequence,
        consumers,
    }
}

/// Messages per subject matching `filter`.
pub async fn subject_counts(
    client: &async_nats::Client,
    filter: &str,
) -> std::collections::BTreeMap<String, usize> {
    use futures::TryStreamExt;
    let js = jetstream::new(client.clone());
    let s = js.get_stream("CB_TEST").await.expect("stream");
    s.info_with_subjects(filter)
        .await
        .expect("info")
        .try_collect()
        .await
        .expect("subjects")
}
