//! What every benchmark shares: percentiles, rows tagged with the baseline
//! they are compared to, a progress line, and the JSON each bench writes to
//! `target/bench/<bench>.json` for `benches/report.rs` to merge.

#![allow(dead_code)] // each bench uses a different part

pub mod raw;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The benches run on the allocator `cb-host` runs on (see its `main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Who a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Circuit Breaker's own operation.
    Ours,
    /// The raw async-nats operation it is built on.
    Raw,
    /// The original storage work's strategy, reimplemented as a baseline.
    Original,
}

/// One measured operation. Rows with the same `op` are compared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The benchmark binary (`storage`, `plugins`, `engine`).
    pub bench: String,
    /// The operation being compared, e.g. `token get`.
    pub op: String,
    /// Ours, raw or the original's strategy.
    pub role: Role,
    /// What exactly was run.
    pub what: String,
    /// Samples.
    pub ops: usize,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// Operations per second over the measured wall time.
    pub per_sec: f64,
    /// CPU time of this process (the client: nats-server excluded) per
    /// operation, in µs, where measured. On a machine whose disk sets the
    /// throughput, this is the cost the code under test controls.
    #[serde(default)]
    pub cpu_us: Option<f64>,
    /// Where a group-committed row's time went, where measured.
    #[serde(default)]
    pub commit: Option<CommitSplit>,
}

/// A period of group commits (one batch committing at a time), per batch:
/// how long its commit waited on the server, and how long passed between
/// commits, when the writers were preparing the next batch. The server's
/// share is the disk and nats-server; the rest is the client's turn.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CommitSplit {
    pub writes_per_batch: f64,
    pub server_ms: f64,
    pub between_ms: f64,
}

impl CommitSplit {
    /// A writer's counters over a period of `elapsed`.
    pub fn of(stats: &cb_host::store::CommitStats, elapsed: Duration) -> Option<CommitSplit> {
        Self::new(stats.batches, stats.writes, stats.commit_time, elapsed)
    }

    /// `batches` batches of `writes` writes in all over `elapsed`, their
    /// commits waiting `server` in all.
    pub fn new(batches: u64, writes: u64, server: Duration, elapsed: Duration) -> Option<CommitSplit> {
        (batches > 0).then(|| {
            let n = batches as f64;
            CommitSplit {
                writes_per_batch: writes as f64 / n,
                server_ms: server.as_secs_f64() * 1e3 / n,
                between_ms: elapsed.saturating_sub(server).as_secs_f64() * 1e3 / n,
            }
        })
    }
}

/// Rows of one bench, with a progress line per section on stderr.
pub struct Bench {
    name: &'static str,
    pub quick: bool,
    sections: usize,
    done: usize,
    started: Instant,
    pub rows: Vec<Row>,
}

impl Bench {
    pub fn new(name: &'static str, sections: usize) -> Bench {
        Bench {
            name,
            quick: std::env::var_os("CB_BENCH_QUICK").is_some(),
            sections,
            done: 0,
            started: Instant::now(),
            rows: Vec::new(),
        }
    }

    /// Announces the next section: `[storage 3/7 +12.4s] moves, 64 in flight`.
    pub fn section(&mut self, what: &str) {
        self.done += 1;
        eprintln!(
            "[{} {}/{} +{:.1}s] {what}",
            self.name,
            self.done,
            self.sections,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Records latencies measured over `elapsed` wall time (throughput is
    /// samples / elapsed, so concurrent samples count).
    pub fn record(&mut self, op: &str, role: Role, what: &str, lat: Vec<Duration>, elapsed: Duration) {
        self.push(summarize(self.name, op, role, what, lat, elapsed));
    }

    /// [`Bench::record`], with the process CPU time `cpu` the samples took.
    pub fn record_cpu(
        &mut self,
        op: &str,
        role: Role,
        what: &str,
        lat: Vec<Duration>,
        elapsed: Duration,
        cpu: Duration,
    ) {
        let mut r = summarize(self.name, op, role, what, lat, elapsed);
        r.cpu_us = Some(cpu.as_secs_f64() * 1e6 / r.ops as f64);
        self.push(r);
    }

    /// Attaches `split` to the row recorded last, and prints it.
    pub fn split_last(&mut self, split: Option<CommitSplit>) {
        let (Some(split), Some(row)) = (split, self.rows.last_mut()) else {
            return;
        };
        eprintln!(
            "             per batch: {:.1} writes, {:.2} ms waiting on the server, {:.2} ms between commits",
            split.writes_per_batch, split.server_ms, split.between_ms
        );
        row.commit = Some(split);
    }

    fn push(&mut self, r: Row) {
        let cpu = r
            .cpu_us
            .map(|c| format!("  cpu {c:>6.1} µs/op"))
            .unwrap_or_default();
        eprintln!(
            "    {:<8} {:<58} p50 {:>9.1} µs  p99 {:>9.1} µs  {:>9.0}/s{cpu}",
            format!("{:?}", r.role).to_lowercase(),
            r.what,
            r.p50_us,
            r.p99_us,
            r.per_sec
        );
        self.rows.push(r);
    }

    /// Writes `target/bench/<name>.json`.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = bench_dir();
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{}.json", self.name));
        std::fs::write(&file, serde_json::to_string_pretty(&self.rows)?)?;
        eprintln!(
            "[{}] done in {:.1}s, saved {}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            file.display()
        );
        Ok(())
    }
}

/// CPU time (user + system, all threads) this process has used so far.
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Every latency the concurrent `tasks` measured.
pub async fn join_latencies(
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    Ok(lat)
}

/// The stream storage for the storage and engine benches: file, or memory
/// with `CB_BENCH_MEMORY` set (the disk out of the way, to see CPU costs).
pub fn storage_kind() -> cb_host::store::StorageKind {
    if std::env::var_os("CB_BENCH_MEMORY").is_some() {
        cb_host::store::StorageKind::Memory
    } else {
        cb_host::store::StorageKind::File
    }
}

/// `file` or `memory`, for the benches' first line.
pub fn storage_name() -> &'static str {
    match storage_kind() {
        cb_host::store::StorageKind::File => "file",
        cb_host::store::StorageKind::Memory => "memory",
    }
}

pub fn bench_dir() -> PathBuf {
    // host/bench -> the repository root's target/.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join("bench")
}

pub fn summarize(
    bench: &str,
    op: &str,
    role: Role,
    what: &str,
    mut lat: Vec<Duration>,
    elapsed: Duration,
) -> Row {
    assert!(!lat.is_empty(), "{op}: no samples");
    lat.sort();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1e6
    };
    Row {
        bench: bench.into(),
        op: op.into(),
        role,
        what: what.into(),
        ops: lat.len(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        cpu_us: None,
        commit: None,
    }
}
