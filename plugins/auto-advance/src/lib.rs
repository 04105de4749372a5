//! Action `auto-advance`: after a transition, asks the host to fire a
//! follow-up transition on the same token (guards and CAS apply).
//!
//! Config: `{"transition": "pay", "input": {...}}` (`input` optional).

use cb_sdk::{Action, ActionContext, Value, log, transitions};

struct AutoAdvance;

impl Action for AutoAdvance {
    fn run(ctx: ActionContext) -> Result<(), String> {
        let next = ctx.config["transition"]
            .as_str()
            .ok_or("config needs `transition`")?;
        let input = ctx.config.get("input").cloned().unwrap_or(Value::Null);
        transitions::request(&ctx.token.workflow_id, &ctx.token.id, next, &input)
            .map_err(|e| e.to_string())?;
        log::info(&format!(
            "token {} requested {next} after event {}",
            ctx.token.id, ctx.event_sequence
        ));
        Ok(())
    }
}

cb_sdk::export_action!(AutoAdvance);
