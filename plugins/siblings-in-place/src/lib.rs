//! Guard `siblings-in-place`: a join. Allows a firing only when every other
//! token of the workflow that shares this token's parent (the metadata key
//! `parent`, or `config.key`) sits in `config.place`. Reads other tokens
//! through the read-only `token-reader` import.
//!
//! Config: `{"place": "done", "key": "parent"}`. Deny codes: `bad-config`,
//! `no-parent`, `siblings-pending` (details: `{"pending": [{"id", "place"}]}`),
//! `read-failed`.

use cb_sdk::{Decision, Guard, GuardContext, deny, json, reader};

struct SiblingsInPlace;

impl Guard for SiblingsInPlace {
    fn evaluate(ctx: GuardContext) -> Decision {
        let Some(target) = ctx.config["place"].as_str() else {
            return deny("bad-config").message("config needs `place`").into();
        };
        let key = ctx.config["key"].as_str().unwrap_or("parent");
        let Some(parent) = ctx.token.metadata.get(key) else {
            return deny("no-parent")
                .message(format!("the token has no `{key}` metadata"))
                .into();
        };
        let wf = &ctx.token.workflow_id;
        let workflow = match reader::get_workflow(wf) {
            Ok(w) => w,
            Err(e) => return deny("read-failed").message(e.to_string()).into(),
        };
        let mut pending = Vec::new();
        for place in workflow.places.iter().filter(|p| p.as_str() != target) {
            let tokens = match reader::list_place_all(wf, place) {
                Ok(t) => t,
                Err(e) => return deny("read-failed").message(e.to_string()).into(),
            };
            for t in tokens {
                if t.id != ctx.token.id && t.metadata.get(key) == Some(parent) {
                    pending.push(json!({"id": t.id, "place": t.place}));
                }
            }
        }
        if pending.is_empty() {
            return Decision::Allow;
        }
        deny("siblings-pending")
            .message(format!("{} sibling(s) are not in `{target}` yet", pending.len()))
            .detail("pending", pending)
            .into()
    }
}

cb_sdk::export_guard!(SiblingsInPlace);
