//! Human-readable and JSON output.

use cb_host::api::{CompleteReply, EnabledReply, HostStats};
use cb_host::engine::Fired;
use cb_host::model::{Event, EventKind, StoredDefinition, Token};
use cb_host::plugin::{Inspection, PluginInfo};
use serde::Serialize;

/// Where command results go: text for people, `--json` for scripts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) json: bool,
}

fn ts(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Out {
    fn json<T: Serialize>(&self, v: &T) -> bool {
        if self.json {
            println!("{}", serde_json::to_string(v).expect("serializable"));
        }
        self.json
    }

    pub(crate) fn error(&self, e: &anyhow::Error) {
        use cb_host::api::ApiError;
        match e.downcast_ref::<ApiError>() {
            Some(ApiError::Service(info)) => {
                eprintln!("error ({}): {}", info.code, info.message);
                for d in &info.denials {
                    eprintln!("  - {} ({}): {}", d.plugin, d.code, d.message);
                    if !d.details.is_null() {
                        eprintln!("    details: {}", d.details);
                    }
                }
            }
            _ => eprintln!("error: {e:#}"),
        }
    }

    pub(crate) fn definition(&self, d: &StoredDefinition) {
        if self.json(d) {
            return;
        }
        let def = &d.definition;
        println!(
            "workflow {} \"{}\" version {} (stored {})",
            def.id,
            def.name,
            d.version,
            ts(d.stored_at)
        );
        println!(
            "  places: {}",
            def.places
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  initial place: {}", def.initial_place);
        for t in &def.transitions {
            let guards = t.guards.iter().map(|g| g.plugin.to_string()).collect::<Vec<_>>();
            let actions = t.actions.iter().map(|g| g.plugin.to_string()).collect::<Vec<_>>();
            print!("  {}: {}", t.id, t.arcs());
            if !guards.is_empty() {
                print!("  guards: {}", guards.join(", "));
            }
            if !actions.is_empty() {
                print!("  actions: {}", actions.join(", "));
            }
            println!();
        }
    }

    pub(crate) fn definitions(&self, list: &[StoredDefinition]) {
        if self.json(&list) {
            return;
        }
        if list.is_empty() {
            println!("no workflows");
        }
        for d in list {
            println!(
                "{:<24} version {:<8} {} places, {} transitions  \"{}\"",
                d.definition.id.to_string(),
                d.version,
                d.definition.places.len(),
                d.definition.transitions.len(),
                d.definition.name
            );
        }
    }

    pub(crate) fn token(&self, t: &Token) {
        if self.json(t) {
            return;
        }
        println!(
            "token {} (workflow {}) in {}, revision {}",
            t.id,
            t.workflow_id,
            places(&t.marks()),
            t.revision
        );
        println!("  data:     {}", t.data);
        if !t.metadata.is_empty() {
            println!(
                "  metadata: {}",
                serde_json::to_string(&t.metadata).unwrap_or_default()
            );
        }
        println!(
            "  created {}, updated {}, definition version {}",
            ts(t.created_at),
            ts(t.updated_at),
            t.definition_version
        );
    }

    pub(crate) fn tokens(&self, list: &[Token]) {
        if self.json(&list) {
            return;
        }
        if list.is_empty() {
            println!("no tokens");
        }
        for t in list {
            println!(
                "{:<28} {:<14} rev {:<8} {}",
                t.id.to_string(),
                t.marks().iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","),
                t.revision,
                t.data
            );
        }
    }

    pub(crate) fn fired(&self, f: &Fired) {
        if self.json(f) {
            return;
        }
        let mut now = places(&f.token.marking);
        if f.completed {
            now = format!("{now} (completed)");
        }
        println!(
            "fired {}: token {} {} -> {} (revision {}, event {})",
            f.transition, f.token.id, f.from, now, f.token.revision, f.event_sequence
        );
    }

    pub(crate) fn enabled(&self, r: &EnabledReply) {
        if self.json(r) {
            return;
        }
        println!("token {} in {}:", r.token.id, places(&r.token.marks()));
        if r.transitions.is_empty() {
            println!("  no transitions from this place");
        }
        for t in &r.transitions {
            if t.enabled {
                println!("  [can fire]  {} -> {}", t.transition, t.to);
            } else {
                println!("  [blocked]   {} -> {}", t.transition, t.to);
                for d in &t.denials {
                    println!("      {} ({}): {}", d.plugin, d.code, d.message);
                }
                if let Some(e) = &t.error {
                    println!("      guard error: {e}");
                }
            }
        }
    }

    pub(crate) fn history(&self, events: &[Event]) {
        if self.json(&events) {
            return;
        }
        for e in events {
            let what = describe(e);
            println!("{:>8}  {}  {what}", e.sequence, ts(e.time));
        }
    }

    pub(crate) fn completed(&self, token: &str, r: &CompleteReply) {
        if self.json(r) {
            return;
        }
        println!("token {token} completed (event {})", r.event_sequence);
    }

    pub(crate) fn stats(&self, s: &HostStats) {
        if self.json(s) {
            return;
        }
        let c = &s.commits;
        println!(
            "token writes: {} in {} atomic batches ({:.1} per batch, {} messages); \
             mean wait on the server {:.2} ms",
            c.writes, c.batches, c.writes_per_batch, c.messages, c.mean_commit_ms
        );
    }

    pub(crate) fn plugins(&self, list: &[PluginInfo]) {
        if self.json(&list) {
            return;
        }
        if list.is_empty() {
            println!("no plugins loaded");
        }
        for p in list {
            println!(
                "{:<20} {:<7} {:>8} bytes  {}",
                p.name,
                p.world.to_string(),
                p.size,
                p.digest
            );
        }
    }

    pub(crate) fn inspection(&self, i: &Inspection) {
        if self.json(i) {
            return;
        }
        println!("plugin {}", i.name);
        println!("  digest:  {}", i.digest);
        println!("  size:    {} bytes", i.size);
        match (&i.world, &i.problem) {
            (Some(w), _) => println!(
                "  world:   {w} (circuit-breaker:plugin@{})",
                i.wit_versions.join(", ")
            ),
            (None, Some(p)) => println!("  world:   none: {p}"),
            _ => {}
        }
        println!("  exports: {}", i.exports.join(", "));
        println!("  imports:");
        for imp in &i.imports {
            println!("    {imp}");
        }
    }
}

impl Out {
    pub(crate) fn applied(&self, a: &cb_host::Applied) {
        if self.json(a) {
            return;
        }
        self.definition(&a.stored);
        findings(&a.warnings);
    }

    pub(crate) fn soundness(
        &self,
        def: &cb_host::model::WorkflowDefinition,
        r: &cb_host::model::SoundnessReport,
    ) {
        if self.json(r) {
            return;
        }
        let (errors, warnings) = (r.errors().count(), r.warnings().count());
        println!(
            "{}: {} ({} markings explored{}); {errors} error(s), {warnings} warning(s)",
            def.id,
            if r.is_sound() { "sound" } else { "not sound" },
            r.markings,
            if r.complete { "" } else { " (stopped at the bound)" }
        );
        findings(&r.findings);
    }
}

/// Each finding on its own lines, with the run that leads to it.
pub(crate) fn findings(list: &[cb_host::model::Finding]) {
    for f in list {
        let kind = match f.severity {
            cb_host::model::Severity::Error => "error",
            cb_host::model::Severity::Warning => "warning",
        };
        println!("  {kind} [{}]: {}", f.code.as_str(), f.message);
        if !f.trace.is_empty() {
            let run = f
                .trace
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(" -> ");
            println!("      run: {run}");
        }
    }
}

/// One line saying what an event records (the CLI's `token history` and
/// the demo share it).
pub(crate) fn describe(e: &Event) -> String {
    let by = |actor: &Option<String>| actor.as_deref().map(|a| format!(" by {a}")).unwrap_or_default();
    match &e.kind {
        EventKind::Transition {
            transition,
            actor,
            cancelled,
            completed,
            ..
        } => {
            let join = |v: Vec<cb_host::model::Id>, sep: &str| {
                v.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(sep)
            };
            let consumed = join(e.kind.consumed().unwrap_or_default(), " + ");
            let produced = e.kind.produced().unwrap_or_default();
            let mut line = format!(
                "{transition}: {consumed} -> {}",
                if produced.is_empty() {
                    "(nothing)".into()
                } else {
                    join(produced, " + ")
                }
            );
            if !cancelled.is_empty() {
                line.push_str(&format!(", cancelled {}", join(cancelled.clone(), " + ")));
            }
            if *completed {
                line.push_str(", completed");
            }
            line.push_str(&by(actor));
            line
        }
        EventKind::Created { place, actor, .. } => format!("created in {place}{}", by(actor)),
        EventKind::Updated { actor } => format!("data updated{}", by(actor)),
        EventKind::Completed { place, actor, .. } => format!("completed in {place}{}", by(actor)),
        EventKind::ActionFailed {
            plugin,
            error,
            attempts,
            ..
        } => {
            format!("action {plugin} failed after {attempts} attempts: {error}")
        }
    }
}

/// `` `a` `` or `` `a`, `b` ``.
fn places(marking: &[cb_host::model::Id]) -> String {
    marking
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
