//! Test-only guard that misbehaves as its config says (`{"do": "..."}`), to
//! prove the sandbox and the limits. Never use outside tests.
//!
//! - `loop`: spins forever (deadline / fuel).
//! - `memory`: allocates without bound (memory limit).
//! - `recursion`: recurses without bound (stack overflow).
//! - `trap`: panics.
//! - `output`: writes megabytes to stdout and stderr (capture cap).
//! - `log-flood`: calls `log` a million times (log budget).
//! - `read-huge`: reads a place over and over (host data cap).
//! - `file`, `env`, `socket`, `dns`: try to escape; deny with code
//!   `escape-blocked` and the error, or allow if the escape worked.
//! - `random`: denies with the first random bytes and the clock, so a test
//!   can check both are fixed per firing.
//! - `remember`: denies with what a static and a heap buffer held when the
//!   call began (`seen`), then marks both: a call must never see an earlier
//!   call's marks (instances, and their reused memory, start fresh).
//! - anything else: allow.

use std::io::Write;

use cb_sdk::{Decision, Guard, GuardContext, deny, log, reader};

struct Misbehave;

static MARK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64, acc: &mut Vec<u64>) -> u64 {
    acc.push(n);
    let r = recurse(std::hint::black_box(n + 1), acc);
    std::hint::black_box(r + n)
}

fn blocked(what: &str, result: Result<String, String>) -> Decision {
    match result {
        Ok(got) => {
            log::error(&format!("ESCAPED via {what}: {got}"));
            Decision::Allow
        }
        Err(e) => deny("escape-blocked").message(format!("{what}: {e}")).into(),
    }
}

impl Guard for Misbehave {
    fn evaluate(ctx: GuardContext) -> Decision {
        match ctx.config["do"].as_str().unwrap_or("") {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let mut acc = Vec::new();
                let r = recurse(0, &mut acc);
                deny("unreachable").detail("r", r).into()
            }
            "trap" => panic!("misbehave: deliberate panic"),
            "output" => {
                let chunk = "x".repeat(64 * 1024);
                for _ in 0..64 {
                    let _ = writeln!(std::io::stdout(), "{chunk}");
                    let _ = writeln!(std::io::stderr(), "{chunk}");
                }
                Decision::Allow
            }
            "log-flood" => {
                for i in 0..1_000_000 {
                    log::info(&format!("flood line {i}"));
                }
                Decision::Allow
            }
            "read-huge" => {
                let wf = ctx.token.workflow_id.clone();
                for _ in 0..100_000 {
                    if let Err(e) = reader::list_place(&wf, &ctx.token.place, None, 1000) {
                        return deny("read-refused").message(e.to_string()).into();
                    }
                }
                Decision::Allow
            }
            "file" => blocked(
                "file",
                std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string()),
            ),
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<String> = std::env::args().collect();
                let dirs = std::fs::read_dir("/").map(|d| d.count()).unwrap_or(0);
                if vars.is_empty() && args.is_empty() && dirs == 0 {
                    deny("escape-blocked").message("no env, no args, no files").into()
                } else {
                    blocked("env", Ok(format!("env {vars:?} args {args:?} dirs {dirs}")))
                }
            }
            "socket" => blocked(
                "socket",
                std::net::TcpStream::connect("127.0.0.1:4222")
                    .map(|_| "connected".into())
                    .map_err(|e| e.to_string()),
            ),
            "dns" => blocked(
                "dns",
                std::net::ToSocketAddrs::to_socket_addrs("localhost:80")
                    .map(|a| format!("{:?}", a.collect::<Vec<_>>()))
                    .map_err(|e| e.to_string()),
            ),
            "random" => {
                let mut map = std::collections::HashMap::new();
                map.insert(1u8, 1u8);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let hasher = std::collections::hash_map::RandomState::new();
                let h = std::hash::BuildHasher::hash_one(&hasher, 42u64);
                deny("random").detail("now_nanos", now).detail("hash", h).into()
            }
            "remember" => {
                let before = MARK.swap(0xC0FFEE, std::sync::atomic::Ordering::Relaxed);
                // A fresh heap block: whatever an earlier call left in the
                // same memory must not show through. Raw allocation and
                // volatile reads: this plugin inspects memory on purpose.
                let layout = std::alloc::Layout::from_size_align(4096 * 8, 8).expect("layout");
                let dirty = unsafe {
                    let p = std::alloc::alloc(layout) as *mut u64;
                    let mut dirty = 0;
                    for i in 0..4096 {
                        if std::ptr::read_volatile(p.add(i)) == 0xBADC0DE {
                            dirty += 1;
                        }
                        std::ptr::write_volatile(p.add(i), 0xBADC0DE);
                    }
                    dirty
                };
                deny("remember")
                    .detail("seen", before)
                    .detail("dirty_words", dirty)
                    .into()
            }
            _ => Decision::Allow,
        }
    }
}

cb_sdk::export_guard!(Misbehave);
