//! Action `audit-log`: writes one log line per transition event into the
//! host's logs. Config: `{"level": "info"}` (`debug`, `info`, `warn`).

use cb_sdk::{Action, ActionContext, log};

struct AuditLog;

impl Action for AuditLog {
    fn run(ctx: ActionContext) -> Result<(), String> {
        let line = format!(
            "audit: {}/{} {} -> {} by {} via {} (event {}, revision {})",
            ctx.token.workflow_id,
            ctx.token.id,
            ctx.from,
            ctx.to,
            ctx.actor.as_deref().unwrap_or("-"),
            ctx.transition.id,
            ctx.event_sequence,
            ctx.token.revision,
        );
        match ctx.config["level"].as_str().unwrap_or("info") {
            "debug" => log::debug(&line),
            "warn" => log::warn(&line),
            _ => log::info(&line),
        }
        Ok(())
    }
}

cb_sdk::export_action!(AuditLog);
