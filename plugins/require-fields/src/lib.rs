//! Guard `require-fields`: allows a firing only when every listed JSON
//! pointer is present (and not null) in the token's data.
//!
//! Config: `{"fields": ["/amount", "/owner"]}`. Deny codes: `bad-config`,
//! `missing-fields` (details: `{"missing": [...]}`).

use cb_sdk::{Decision, Guard, GuardContext, Value, deny};

struct RequireFields;

impl Guard for RequireFields {
    fn evaluate(ctx: GuardContext) -> Decision {
        let Some(fields) = ctx.config["fields"].as_array() else {
            return deny("bad-config")
                .message("config needs `fields`: a list of JSON pointers")
                .into();
        };
        let mut missing = Vec::new();
        for f in fields {
            let Some(pointer) = f.as_str() else {
                return deny("bad-config")
                    .message("every entry of `fields` must be a string")
                    .into();
            };
            if ctx.token.data.pointer(pointer).is_none_or(Value::is_null) {
                missing.push(pointer.to_string());
            }
        }
        if missing.is_empty() {
            return Decision::Allow;
        }
        deny("missing-fields")
            .message(format!("missing required fields: {}", missing.join(", ")))
            .detail("missing", missing)
            .into()
    }
}

cb_sdk::export_guard!(RequireFields);
