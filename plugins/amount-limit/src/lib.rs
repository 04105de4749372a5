//! Guard `amount-limit`: allows a firing only when `data.amount` is a number
//! no greater than `config.max`.
//!
//! Config: `{"max": 1000}`. Deny codes: `bad-config` (no numeric `max`),
//! `amount-missing` (no numeric `data.amount`), `amount-over-limit`.

use cb_sdk::{Decision, Guard, GuardContext, deny};

struct AmountLimit;

impl Guard for AmountLimit {
    fn evaluate(ctx: GuardContext) -> Decision {
        let Some(max) = ctx.config["max"].as_f64() else {
            return deny("bad-config").message("config needs a numeric `max`").into();
        };
        let Some(amount) = ctx.token.data["amount"].as_f64() else {
            return deny("amount-missing")
                .message("the token has no numeric `amount`")
                .into();
        };
        if amount > max {
            return deny("amount-over-limit")
                .message(format!("amount {amount} exceeds the limit of {max}"))
                .detail("amount", amount)
                .detail("max", max)
                .into();
        }
        Decision::Allow
    }
}

cb_sdk::export_guard!(AmountLimit);
