//! What the binary's integration tests share: the `cb-host` path, a plugin
//! directory, `cb-host serve` processes, CLI runs, and the stream's state.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cb-host");

pub(crate) fn root() -> PathBuf {
    // host/cli -> the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// A plugin directory with the plugins the example workflow uses.
pub(crate) fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in cb_test_plugins::ALL {
        if ["amount-limit", "require-fields", "auto-advance", "audit-log"].contains(name) {
            std::fs::copy(path, dir.path().join(format!("{name}.wasm"))).unwrap();
        }
    }
    dir
}

/// Runs a client command against `url`.
pub(crate) fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--nats-url")
        .arg(url)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A `cb-host serve` process, killed and reaped on drop.
pub(crate) struct Serve(pub(crate) Child);

impl Serve {
    /// `kill -9`.
    pub(crate) fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cb-host serve` on `url` with the example workflows, one replica
/// and `extra` flags; does not wait for it.
pub(crate) fn spawn_serve(url: &str, plugins: &Path, extra: &[&str]) -> Serve {
    spawn_serve_env(url, plugins, extra, &[])
}

/// [`spawn_serve`] with environment variables set for the process.
pub(crate) fn spawn_serve_env(url: &str, plugins: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
    Command::new(BIN)
        .args(["--nats-url", url, "serve", "--replicas", "1"])
        .args(extra)
        .envs(env.iter().copied())
        .arg("--plugins")
        .arg(plugins)
        .arg("--definitions")
        .arg(root().join("examples/workflows"))
        .env(
            "RUST_LOG",
            std::env::var("CB_TEST_SERVE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        // CB_TEST_SERVE_LOG=info (a RUST_LOG filter) shows the hosts' logs.
        .stderr(if std::env::var_os("CB_TEST_SERVE_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .map(Serve)
        .unwrap()
}

/// Starts `cb-host serve` and waits until its service answers.
pub(crate) fn serve_with(url: &str, plugins: &Path) -> Serve {
    let s = spawn_serve(url, plugins, &[]);
    wait_service(url);
    s
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Whether the service answers `$SRV.PING` on `url` within 500 ms.
pub(crate) fn service_answers(url: &str) -> bool {
    block_on(async {
        let Ok(c) = cb_host::connect(url).await else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                Duration::from_millis(500),
                c.request("$SRV.PING.circuit-breaker", "".into()),
            )
            .await,
            Ok(Ok(_))
        )
    })
}

/// Waits (up to a minute) until the service answers on `url`.
pub(crate) fn wait_service(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !service_answers(url) {
        assert!(Instant::now() < deadline, "service did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Message count and last sequence of the host's stream.
pub(crate) fn stream_state(url: &str) -> (u64, u64) {
    block_on(async {
        let c = cb_host::connect(url).await.unwrap();
        let mut s = async_nats::jetstream::new(c)
            .get_stream("CIRCUIT_BREAKER")
            .await
            .unwrap();
        let info = s.info().await.unwrap();
        (info.state.messages, info.state.last_sequence)
    })
}
