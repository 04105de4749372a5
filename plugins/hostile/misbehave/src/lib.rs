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
//! - `huge-details`, `huge-message`, `huge-code`: denies with that field
//!   `bytes` long (default 40 MB; details are `[0,0,...]`), straight from
//!   guest memory.
//! - `bad-code`: denies with a code that is not an id (`a.b c`).
//! - `deep-details`: denies with details nested `depth` deep (default 100).
//! - `empty-lines`: logs `lines` empty lines (default 1,000,000).
//! - `println-flood`: `println!`s `lines` short lines (default 1,000,000):
//!   stdout must keep accepting them (a closed stdout panics the guest).
//! - `read-other`: reads token `token` of workflow `workflow`; denies with
//!   code `read-refused` and the error, or `read-allowed` with its place.
//! - `list-other`: lists place `place` of workflow `workflow`, the same way.
//! - `log-deny`: logs `marker` once, then denies with code `logged`: a
//!   test counts the evaluations by the lines.
//! - anything else: allow.

use std::io::Write;

use cb_sdk::bindings::circuit_breaker::plugin::types as wit;
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
            "log-deny" => {
                log::info(ctx.config["marker"].as_str().unwrap_or("evaluated"));
                deny("logged").message("denied after logging").into()
            }
            "bad-code" => deny("a.b c").message("a code that would break a subject").into(),
            "deep-details" => {
                let depth = ctx.config["depth"].as_u64().unwrap_or(100);
                let mut v = cb_sdk::json!(0);
                for _ in 0..depth {
                    v = cb_sdk::json!([v]);
                }
                Decision::Deny(cb_sdk::Denial {
                    code: "deep".into(),
                    message: "deeply nested details".into(),
                    details: v,
                })
            }
            "empty-lines" => {
                for _ in 0..ctx.config["lines"].as_u64().unwrap_or(1_000_000) {
                    log::info("");
                }
                Decision::Allow
            }
            "println-flood" => {
                for i in 0..ctx.config["lines"].as_u64().unwrap_or(1_000_000) {
                    println!("{}", i % 10);
                }
                Decision::Allow
            }
            "read-other" => {
                let wf = ctx.config["workflow"].as_str().unwrap_or("other");
                let t = ctx.config["token"].as_str().unwrap_or("t1");
                match reader::get_token(wf, t) {
                    Ok(t) => deny("read-allowed").message(t.place).into(),
                    Err(e) => deny("read-refused").message(e.to_string()).into(),
                }
            }
            "list-other" => {
                let wf = ctx.config["workflow"].as_str().unwrap_or("other");
                let place = ctx.config["place"].as_str().unwrap_or("a");
                match reader::list_place(wf, place, None, 100) {
                    Ok(p) => deny("read-allowed")
                        .message(format!("{} tokens", p.0.len()))
                        .into(),
                    Err(e) => deny("read-refused").message(e.to_string()).into(),
                }
            }
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

/// The export: the huge-output cases build the WIT denial straight from
/// guest memory (the SDK would serialize a JSON value, needing memory for
/// two copies); everything else goes through the SDK.
struct Export;

impl cb_sdk::bindings::Guest for Export {
    fn evaluate(ctx: wit::GuardContext) -> wit::Decision {
        let config: cb_sdk::Value = cb_sdk::serde_json::from_str(&ctx.config).unwrap_or_default();
        let bytes = config["bytes"].as_u64().unwrap_or(40_000_000) as usize;
        let denial = |code: String, message: String, details: String| {
            wit::Decision::Deny(wit::Denial {
                code,
                message,
                details,
            })
        };
        match config["do"].as_str().unwrap_or("") {
            "huge-details" => {
                let mut d = String::with_capacity(bytes + 2);
                d.push('[');
                while d.len() + 2 < bytes {
                    d.push_str("0,");
                }
                d.push_str("0]");
                denial("huge".into(), "huge details".into(), d)
            }
            "huge-message" => denial("huge".into(), "m".repeat(bytes), "null".into()),
            "huge-code" => denial("c".repeat(bytes), "huge code".into(), "null".into()),
            _ => cb_sdk::__private::evaluate::<Misbehave>(ctx),
        }
    }
}

cb_sdk::bindings::__export_world!(Export with_types_in cb_sdk::bindings);
