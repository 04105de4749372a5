//! Test-only action that misbehaves as its config says (`{"do": "..."}`),
//! to prove the host bounds what actions hand back. Never use outside tests.
//!
//! - `huge-error`: fails with an error text `bytes` long (default 1 MB).
//! - `huge-input`: requests a follow-up (`transition`, default `next`) on
//!   its own token with an input `bytes` long (default 1 MB).
//! - `fire-other`: requests `transition` on token `token` of workflow
//!   `workflow`, and logs what the host answered.
//! - `read-other`: reads token `token` of workflow `workflow` and logs the
//!   outcome; then succeeds.
//! - anything else: succeeds with no requests.

use cb_sdk::{Action, ActionContext, Value, json, log, reader, transitions};

struct MisbehaveAction;

impl Action for MisbehaveAction {
    fn run(ctx: ActionContext) -> Result<(), String> {
        let c = &ctx.config;
        let bytes = c["bytes"].as_u64().unwrap_or(1_000_000) as usize;
        let s = |k: &str, d: &str| c[k].as_str().unwrap_or(d).to_string();
        match c["do"].as_str().unwrap_or("") {
            "huge-error" => Err("e".repeat(bytes)),
            "huge-input" => {
                let input = json!({ "blob": "i".repeat(bytes) });
                let answer = transitions::request(
                    &ctx.token.workflow_id,
                    &ctx.token.id,
                    &s("transition", "next"),
                    &input,
                );
                log::warn(&format!("huge input answered: {answer:?}"));
                Ok(())
            }
            "fire-other" => {
                let answer = transitions::request(
                    &s("workflow", "other"),
                    &s("token", "t1"),
                    &s("transition", "next"),
                    &Value::Null,
                );
                log::info(&format!("fire-other answered: {answer:?}"));
                Ok(())
            }
            "read-other" => {
                let answer = reader::get_token(&s("workflow", "other"), &s("token", "t1"));
                log::info(&format!("read-other answered: {:?}", answer.map(|t| t.place)));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

cb_sdk::export_action!(MisbehaveAction);
