//! Merges the rows every benchmark saved under `target/bench/` into one
//! report: a Markdown table (printed, and saved as `report.md`) where each
//! operation is followed by its baselines from the same run, then the speed
//! goals the issues set, each checked against its same-run baseline, and
//! `report.json`. Run by `make bench` after the benchmarks; it prints the
//! verdicts and exits 0 either way.
//!
//! Run by `make bench` after the benchmarks.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;

use common::{CommitSplit, Role, Row};

const BENCHES: &[&str] = &["storage", "engine", "api", "plugins"]; // report order

fn main() -> anyhow::Result<()> {
    let dir = common::bench_dir();
    let mut rows: Vec<Row> = Vec::new();
    for b in BENCHES {
        let file = dir.join(format!("{b}.json"));
        match std::fs::read(&file) {
            Ok(bytes) => rows.extend(serde_json::from_slice::<Vec<Row>>(&bytes)?),
            Err(_) => eprintln!("report: no {} (bench `{b}` not run)", file.display()),
        }
    }
    anyhow::ensure!(!rows.is_empty(), "no benchmark results in {}", dir.display());

    let mut md = String::new();
    writeln!(
        md,
        "| operation | implementation | p50 µs | p99 µs | ops/s | p50 vs ours | client CPU µs/op |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|")?;
    // Operations in first-seen order; within one, ours first.
    let mut ops: Vec<&str> = Vec::new();
    for r in &rows {
        if !ops.contains(&r.op.as_str()) {
            ops.push(&r.op);
        }
    }
    for op in ops {
        let mut group: Vec<&Row> = rows.iter().filter(|r| r.op == op).collect();
        group.sort_by_key(|r| match r.role {
            Role::Ours => 0,
            Role::Raw => 1,
            Role::Original => 2,
        });
        let ours = group.iter().find(|r| r.role == Role::Ours).map(|r| r.p50_us);
        for (i, r) in group.iter().enumerate() {
            let who = match r.role {
                Role::Ours => format!("**ours**: {}", r.what),
                Role::Raw => format!("raw: {}", r.what),
                Role::Original => format!("original's: {}", r.what),
            };
            let ratio = match (r.role, ours) {
                (Role::Ours, _) | (_, None) => String::new(),
                (_, Some(o)) => format!("{:.2}×", r.p50_us / o),
            };
            let cpu = r.cpu_us.map(|c| format!("{c:.1}")).unwrap_or_default();
            writeln!(
                md,
                "| {} | {who} | {:.0} | {:.0} | {:.0} | {ratio} | {cpu} |",
                if i == 0 { op } else { "" },
                r.p50_us,
                r.p99_us,
                r.per_sec
            )?;
        }
    }
    let splits: Vec<(&Row, CommitSplit)> = rows.iter().filter_map(|r| Some((r, r.commit?))).collect();
    if !splits.is_empty() {
        writeln!(
            md,
            "\nGroup commit, per batch (one batch commits at a time: what the server's wait \
             leaves is the writers' turn, when they prepare the next batch):\n"
        )?;
        writeln!(
            md,
            "| operation | implementation | writes | waiting on the server ms | between commits ms |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|")?;
        for (r, c) in splits {
            let who = match r.role {
                Role::Ours => "**ours**",
                _ => "raw ceiling",
            };
            writeln!(
                md,
                "| {} | {who} | {:.1} | {:.2} | {:.2} |",
                r.op, c.writes_per_batch, c.server_ms, c.between_ms
            )?;
        }
    }
    let floors = check_floors(&rows);
    writeln!(md, "\n{}", floors_table(&floors))?;
    let machine = format!(
        "{} cores, {}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH,
        nats_version().unwrap_or_else(|| "nats-server version unknown".into()),
    );
    writeln!(
        md,
        "\n\"p50 vs ours\" is the baseline's median over ours: above 1 means the baseline is slower. \
         \"client CPU\" is the benchmark process's CPU time (all threads, nats-server excluded) per \
         operation, where measured. Machine: {machine}."
    )?;
    println!("{md}");
    std::fs::write(dir.join("report.md"), &md)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "machine": machine, "rows": rows, "floors": floors }),
        )?,
    )?;
    eprintln!("saved {} and report.json", dir.join("report.md").display());
    Ok(())
}

fn nats_version() -> Option<String> {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let out = std::process::Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A speed goal set by an issue, checked against a baseline measured in
/// the same run (the disk of a shared VM moves absolute throughputs 3x in
/// an afternoon; a same-run ratio does not move with it). CPU-bound rows
/// are the only absolute goals.
struct Floor {
    issue: u32,
    op: &'static str,
    /// Which row of `op` is ours (a substring of its `what`).
    ours: &'static str,
    rule: Rule,
}

enum Rule {
    /// Ours' p50 at most `factor` times the raw row's p50.
    RatioOf { raw: &'static str, factor: f64 },
    /// Ours' p99 at most `factor` times the raw row's p99.
    P99RatioOf { raw: &'static str, factor: f64 },
    /// Ours' throughput at least `factor` times the raw row's.
    ThroughputOf { raw: &'static str, factor: f64 },
    /// Ours' p50 at most the raw row's p50 plus `plus_us`.
    PlusOf { raw: &'static str, plus_us: f64 },
    /// Ours' p50 and p99 at most these (CPU-bound rows only).
    Latency { p50_us: f64, p99_us: f64 },
    /// Ours' p50 at most this (CPU-bound rows only).
    P50 { p50_us: f64 },
    /// Ours' process CPU time per operation at most `factor` times the raw
    /// row's: a cost the disk does not move.
    CpuOf { raw: &'static str, factor: f64 },
}

/// A CPU-bound goal on a guest row: p50 at most `p50_us`.
const fn guest(issue: u32, op: &'static str, ours: &'static str, p50_us: f64) -> Floor {
    Floor {
        issue,
        op,
        ours,
        rule: Rule::P50 { p50_us },
    }
}

/// Issue 2's read goal: a token get costs at most 1.1x the raw Direct Get,
/// however long the token's history.
const fn token_get(op: &'static str) -> Floor {
    Floor {
        issue: 2,
        op,
        ours: "reader.get_token",
        rule: Rule::RatioOf {
            raw: "Direct Get",
            factor: 1.1,
        },
    }
}

const FLOORS: &[Floor] = &[
    token_get("token get, 1 prior transition"),
    token_get("token get, 10000 prior transitions"),
    Floor {
        issue: 2,
        op: "token move, 64 in flight",
        ours: "move_token",
        rule: Rule::ThroughputOf {
            raw: "all 64 moves in one atomic batch",
            factor: 0.9,
        },
    },
    Floor {
        issue: 3,
        op: "guard evaluate (amount-limit)",
        ours: "fresh store + instance from InstancePre",
        rule: Rule::Latency {
            p50_us: 20.0,
            p99_us: 50.0,
        },
    },
    Floor {
        issue: 4,
        op: "fire with one guard, 1 in flight",
        ours: "engine.fire",
        rule: Rule::PlusOf {
            raw: "the same 3-message atomic batch",
            plus_us: 100.0,
        },
    },
    Floor {
        issue: 4,
        op: "fire with one guard, 64 in flight",
        ours: "engine.fire",
        rule: Rule::ThroughputOf {
            raw: "all 64 moves in one atomic batch",
            factor: 0.9,
        },
    },
    Floor {
        issue: 22,
        op: "multi-place fire, 1 in flight",
        ours: "two-branch token",
        rule: Rule::RatioOf {
            raw: "one-place token",
            factor: 1.3,
        },
    },
    Floor {
        issue: 22,
        op: "multi-place fire, 64 in flight",
        ours: "two-branch tokens",
        rule: Rule::ThroughputOf {
            raw: "one-place tokens",
            factor: 1.0 / 1.3,
        },
    },
    Floor {
        issue: 18,
        op: "token get while every plugin slot spins to its deadline",
        ours: "guests spinning",
        rule: Rule::P99RatioOf {
            raw: "no guest running",
            factor: 2.0,
        },
    },
    guest(
        21,
        "Python guard (py-amount-limit): evaluate",
        "fresh instance",
        1000.0,
    ),
    guest(
        21,
        "JavaScript guard (js-require-fields): evaluate",
        "fresh instance",
        1000.0,
    ),
    guest(
        21,
        "Python guard (py-amount-limit): cached load",
        "cached artifact",
        100_000.0,
    ),
    guest(
        21,
        "JavaScript guard (js-require-fields): cached load",
        "cached artifact",
        100_000.0,
    ),
    Floor {
        issue: 19,
        op: "token create via the service API, 1 in flight",
        ours: "token.create over NATS",
        rule: Rule::PlusOf {
            raw: "in-process",
            plus_us: 300.0,
        },
    },
    Floor {
        issue: 19,
        op: "token create via the service API, 64 in flight",
        ours: "token.create over NATS",
        rule: Rule::ThroughputOf {
            raw: "in-process",
            factor: 0.8,
        },
    },
    Floor {
        issue: 19,
        op: "fire with one guard via the service API, 1 in flight",
        ours: "token.fire over NATS",
        rule: Rule::PlusOf {
            raw: "in-process",
            plus_us: 300.0,
        },
    },
    Floor {
        issue: 19,
        op: "fire with one guard via the service API, 64 in flight",
        ours: "token.fire over NATS",
        rule: Rule::ThroughputOf {
            raw: "in-process",
            factor: 0.8,
        },
    },
    Floor {
        issue: 23,
        op: "fire via the service API with metrics and tracing, 64 in flight",
        ours: "metrics and tracing on",
        rule: Rule::ThroughputOf {
            raw: "metrics and tracing off",
            factor: 0.95,
        },
    },
    Floor {
        issue: 23,
        op: "fire via the service API with metrics and tracing, 64 in flight",
        ours: "metrics and tracing on",
        rule: Rule::CpuOf {
            raw: "metrics and tracing off",
            factor: 1.05,
        },
    },
];

/// One goal checked against this run.
#[derive(serde::Serialize)]
struct Checked {
    issue: u32,
    op: &'static str,
    floor: String,
    measured: String,
    baseline: String,
    /// `met`, `not met`, or `not measured`.
    verdict: &'static str,
}

fn find<'a>(rows: &'a [Row], op: &str, role: Role, what: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.op == op && r.role == role && r.what.contains(what))
}

impl Rule {
    fn describe(&self) -> String {
        match self {
            Rule::RatioOf { factor, .. } => format!("p50 <= {factor}x raw"),
            Rule::P99RatioOf { factor, .. } => format!("p99 <= {factor}x baseline"),
            Rule::ThroughputOf { factor, .. } => format!(">= {factor:.2}x the raw ceiling"),
            Rule::PlusOf { plus_us, .. } => format!("p50 <= raw + {plus_us:.0} µs"),
            Rule::Latency { p50_us, p99_us } => format!("p50 <= {p50_us:.0} µs, p99 <= {p99_us:.0} µs"),
            Rule::P50 { p50_us } => format!("p50 <= {p50_us:.0} µs"),
            Rule::CpuOf { factor, .. } => format!("CPU per op <= {factor:.2}x baseline"),
        }
    }
}

fn check_floors(rows: &[Row]) -> Vec<Checked> {
    FLOORS.iter().map(|f| check(rows, f)).collect()
}

fn check(rows: &[Row], f: &Floor) -> Checked {
    let mut out = Checked {
        issue: f.issue,
        op: f.op,
        floor: f.rule.describe(),
        measured: String::new(),
        baseline: String::new(),
        verdict: "not measured",
    };
    let Some(o) = find(rows, f.op, Role::Ours, f.ours) else {
        return out;
    };
    let raw_of = |what| find(rows, f.op, Role::Raw, what);
    let met = match f.rule {
        Rule::RatioOf { raw, factor } => {
            out.measured = format!("p50 {:.0} µs", o.p50_us);
            let Some(r) = raw_of(raw) else {
                return out;
            };
            out.baseline = format!("raw p50 {:.0} µs (ours {:.2}x)", r.p50_us, o.p50_us / r.p50_us);
            o.p50_us <= factor * r.p50_us
        }
        Rule::P99RatioOf { raw, factor } => {
            out.measured = format!("p99 {:.0} µs", o.p99_us);
            let Some(r) = raw_of(raw) else {
                return out;
            };
            out.baseline = format!(
                "baseline p99 {:.0} µs (ours {:.2}x)",
                r.p99_us,
                o.p99_us / r.p99_us
            );
            o.p99_us <= factor * r.p99_us
        }
        Rule::ThroughputOf { raw, factor } => {
            out.measured = format!("{:.0}/s", o.per_sec);
            let Some(r) = raw_of(raw) else {
                return out;
            };
            out.baseline = format!(
                "raw ceiling {:.0}/s (ours {:.2}x)",
                r.per_sec,
                o.per_sec / r.per_sec
            );
            o.per_sec >= factor * r.per_sec
        }
        Rule::PlusOf { raw, plus_us } => {
            out.measured = format!("p50 {:.0} µs", o.p50_us);
            let Some(r) = raw_of(raw) else {
                return out;
            };
            out.baseline = format!("raw p50 {:.0} µs (ours +{:.0} µs)", r.p50_us, o.p50_us - r.p50_us);
            o.p50_us <= r.p50_us + plus_us
        }
        Rule::Latency { p50_us, p99_us } => {
            out.measured = format!("p50 {:.0} µs, p99 {:.0} µs", o.p50_us, o.p99_us);
            o.p50_us <= p50_us && o.p99_us <= p99_us
        }
        Rule::P50 { p50_us } => {
            out.measured = format!("p50 {:.0} µs", o.p50_us);
            o.p50_us <= p50_us
        }
        Rule::CpuOf { raw, factor } => {
            let (Some(oc), Some(rc)) = (o.cpu_us, raw_of(raw).and_then(|r| r.cpu_us)) else {
                return out;
            };
            out.measured = format!("{oc:.1} µs CPU/op");
            out.baseline = format!("{rc:.1} µs CPU/op (ours {:.3}x)", oc / rc);
            oc <= factor * rc
        }
    };
    out.verdict = if met { "met" } else { "not met" };
    out
}

fn floors_table(floors: &[Checked]) -> String {
    let mut md = String::from(
        "| issue | goal | operation | measured | same-run baseline | verdict |\n|---|---|---|---:|---|---|\n",
    );
    for c in floors {
        let _ = writeln!(
            md,
            "| #{} | {} | {} | {} | {} | {} |",
            c.issue, c.floor, c.op, c.measured, c.baseline, c.verdict
        );
    }
    let met = floors.iter().filter(|c| c.verdict == "met").count();
    let _ = write!(
        md,
        "\n{met} of {} goals met. Each is checked against its baseline measured in the same run \
         (the CPU-bound plugin rows are the only absolute ones){}.",
        floors.len(),
        if std::env::var_os("CB_BENCH_MEMORY").is_some() {
            "; this run used a memory-backed stream (CB_BENCH_MEMORY)"
        } else {
            ""
        }
    );
    md
}
