//! Guard `amount-limit`: allows a firing only when `data.amount` is a number
//! no greater than `config.max` and/or greater than `config.above`. Two
//! transitions from one place with `{"max": 1000}` and `{"above": 1000}`
//! make an exclusive choice on the amount.
//!
//! Config: `{"max": 1000}`, `{"above": 1000}` or both. Deny codes:
//! `bad-config` (neither a numeric `max` nor `above`), `amount-missing` (no
//! numeric `data.amount`), `amount-over-limit`, `amount-not-above`.

use cb_sdk::{Decision, Guard, GuardContext, deny};

struct AmountLimit;

impl Guard for AmountLimit {
    fn evaluate(ctx: GuardContext) -> Decision {
        let max = ctx.config["max"].as_f64();
        let above = ctx.config["above"].as_f64();
        if max.is_none() && above.is_none() {
            return deny("bad-config")
                .message("config needs a numeric `max` or `above`")
                .into();
        }
        let Some(amount) = ctx.token.data["amount"].as_f64() else {
            return deny("amount-missing")
                .message("the token has no numeric `amount`")
                .into();
        };
        if let Some(max) = max
            && amount > max
        {
            return deny("amount-over-limit")
                .message(format!("amount {amount} exceeds the limit of {max}"))
                .detail("amount", amount)
                .detail("max", max)
                .into();
        }
        if let Some(above) = above
            && amount <= above
        {
            return deny("amount-not-above")
                .message(format!("amount {amount} is not above {above}"))
                .detail("amount", amount)
                .detail("above", above)
                .into();
        }
        Decision::Allow
    }
}

cb_sdk::export_guard!(AmountLimit);
