//! Host crashes: `kill -9` of a `cb-host serve` process while it runs
//! actions; another host finishes the work, nothing lost, nothing doubled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cb_host::Host;
use cb_host::engine::FireRequest;
use cb_host::model::{EventKind, Id};
use cb_host::store::StoreConfig;
use cb_test_support::NatsServer;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_cb-host");

fn id(s: &str) -> Id {
    Id::new(s).unwrap()
}

fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in cb_test_plugins::ALL {
        if ["amount-limit", "require-fields", "auto-advance", "audit-log"].contains(name) {
            std::fs::copy(path, dir.path().join(format!("{name}.wasm"))).unwrap();
        }
    }
    dir
}

/// A `cb-host serve` process, killed and reaped on drop.
struct Serve(Child);

impl Serve {
    /// `kill -9`.
    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(url: &str, plugins: &Path) -> Serve {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    Command::new(BIN)
        .args([
            "--nats-url",
            url,
            "serve",
            "--replicas",
            "1",
            "--action-ack-wait-ms",
            "1500",
            "--plugins",
        ])
        .arg(plugins)
        .arg("--definitions")
        .arg(root.join("examples/workflows"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Serve)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_actions_leaves_nothing_lost_or_doubled() {
    let server = NatsServer::start();
    let url = server.url();
    let plugins = plugin_dir();
    let mut a = serve(&url, plugins.path());
    let _b = serve(&url, plugins.path());
    // A client of our own (no dispatcher): creates and fires.
    let client = Host::builder()
        .nats_url(&url)
        .store(StoreConfig::development())
        .plugin_dir(plugins.path())
        .build()
        .await
        .unwrap();
    let wf = id("expense-approval");
    // Wait until the hosts applied the definition and bound the consumer.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let js = async_nats::jetstream::new(client.client().clone());
        let ready = match js.get_stream("CIRCUIT_BREAKER").await {
            Ok(s) => s
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("cb-actions")
                .await
                .is_ok(),
            Err(_) => false,
        } && client.get_workflow(&wf, None).await.is_ok();
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "hosts did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = 60;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = client
            .create_token(
                &wf,
                Some(id(&format!("c{i}"))),
                json!({"amount": 10, "owner": "ana"}),
                Default::default(),
                None,
            )
            .await
            .unwrap();
        client
            .fire(FireRequest::new(wf.clone(), t.id.clone(), id("submit")))
            .await
            .unwrap();
        ids.push(t.id);
    }
    for (i, t) in ids.iter().enumerate() {
        client
            .fire(FireRequest::new(wf.clone(), t.clone(), id("approve")))
            .await
            .unwrap();
        if i == n / 2 {
            a.kill9(); // while events are flowing
        }
    }
    // Host B finishes everything, including what A held when it died.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut unpaid = None;
        for t in &ids {
            let tok = client.get_token(Some(&wf), t).await.unwrap();
            if tok.place != "paid" {
                unpaid = Some(tok);
                break;
            }
        }
        let Some(tok) = unpaid else { break };
        if Instant::now() >= deadline {
            let h = client.history(Some(&wf), &tok.id, None, 100).await.unwrap();
            panic!(
                "token {} still in `{}` after the crash; history: {:#?}",
                tok.id, tok.place, h.items
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in &ids {
        let h = client.history(Some(&wf), t, None, 100).await.unwrap();
        let pays = h
            .items
            .iter()
            .filter(|e| matches!(&e.kind, EventKind::Transition { transition, .. } if transition == "pay"))
            .count();
        assert_eq!(pays, 1, "{t}: pay fired {pays} times");
        assert!(
            !h.items
                .iter()
                .any(|e| matches!(e.kind, EventKind::ActionFailed { .. })),
            "{t}: an action failed"
        );
    }
}
