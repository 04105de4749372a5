//! Merges the rows every benchmark saved under `target/bench/` into one
//! report: a Markdown table (printed, and saved as `report.md`) where each
//! operation is followed by its baselines from the same run, and
//! `report.json`. Run by `make bench` after the benchmarks.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;

use common::{Role, Row};

const BENCHES: &[&str] = &["storage", "engine", "plugins"]; // report order

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
        serde_json::to_string_pretty(&serde_json::json!({ "machine": machine, "rows": rows }))?,
    )?;
    eprintln!("saved {} and report.json", dir.join("report.md").display());
    Ok(())
}

fn nats_version() -> Option<String> {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    let out = std::process::Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
