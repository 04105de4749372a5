//! Components built against `circuit-breaker:plugin@0.1.x`, before
//! markings, still load and run: the host links the 0.1 interfaces next to
//! the current ones and converts at the boundary. Such a component sees a
//! token's first place (not its marking), a transition's inputs as `from`
//! and its first output as `to`, and an action's first consumed and
//! produced place, which is everything a sequential workflow has.

use super::bindings::{self as now, v0_1 as old};
use super::state::CallState;

fn timestamp(t: now::types::Timestamp) -> old::types::Timestamp {
    old::types::Timestamp {
        seconds: t.seconds,
        nanoseconds: t.nanoseconds,
    }
}

fn token(t: now::types::Token) -> old::types::Token {
    old::types::Token {
        id: t.id,
        workflow_id: t.workflow_id,
        definition_version: t.definition_version,
        place: t.place,
        data: t.data,
        metadata: t.metadata,
        revision: t.revision,
        created_at: timestamp(t.created_at),
        updated_at: timestamp(t.updated_at),
    }
}

fn transition(t: now::types::TransitionInfo) -> old::types::TransitionInfo {
    let from = if t.join.is_empty() { t.from } else { t.join };
    let to =
        t.to.or_else(|| t.split.first().cloned())
            .or_else(|| from.first().cloned())
            .unwrap_or_default();
    old::types::TransitionInfo { id: t.id, from, to }
}

fn error(e: now::types::Error) -> old::types::Error {
    match e {
        now::types::Error::NotFound(m) => old::types::Error::NotFound(m),
        now::types::Error::Invalid(m) => old::types::Error::Invalid(m),
        now::types::Error::Unavailable(m) => old::types::Error::Unavailable(m),
        now::types::Error::Limit(m) => old::types::Error::Limit(m),
    }
}

/// The guard context as a 0.1 guard takes it.
pub(super) fn guard_context(c: now::types::GuardContext) -> old::types::GuardContext {
    old::types::GuardContext {
        token: token(c.token),
        transition: transition(c.transition),
        config: c.config,
        input: c.input,
        actor: c.actor,
        fired_at: timestamp(c.fired_at),
    }
}

/// The action context as a 0.1 action takes it.
pub(super) fn action_context(c: now::types::ActionContext) -> old::types::ActionContext {
    old::types::ActionContext {
        event_sequence: c.event_sequence,
        token: token(c.token),
        transition: transition(c.transition),
        from: c.from,
        to: c.to,
        actor: c.actor,
        input: c.input,
        config: c.config,
        fired_at: timestamp(c.fired_at),
    }
}

/// A 0.1 guard's answer, in current terms (checked the same way after).
pub(super) fn decision(d: old::types::Decision) -> now::types::Decision {
    match d {
        old::types::Decision::Allow => now::types::Decision::Allow,
        old::types::Decision::Deny(d) => now::types::Decision::Deny(now::types::Denial {
            code: d.code,
            message: d.message,
            details: d.details,
        }),
    }
}

impl old::types::Host for CallState {}

impl old::token_reader::Host for CallState {
    async fn get_token(
        &mut self,
        workflow_id: String,
        token_id: String,
    ) -> Result<old::types::Token, old::types::Error> {
        now::token_reader::Host::get_token(self, workflow_id, token_id)
            .await
            .map(token)
            .map_err(error)
    }

    async fn list_place(
        &mut self,
        workflow_id: String,
        place: String,
        cursor: Option<u64>,
        limit: u32,
    ) -> Result<old::types::TokenPage, old::types::Error> {
        let page = now::token_reader::Host::list_place(self, workflow_id, place, cursor, limit)
            .await
            .map_err(error)?;
        Ok(old::types::TokenPage {
            tokens: page.tokens.into_iter().map(token).collect(),
            next: page.next,
        })
    }

    async fn get_workflow(&mut self, workflow_id: String) -> Result<old::types::Workflow, old::types::Error> {
        let w = now::token_reader::Host::get_workflow(self, workflow_id)
            .await
            .map_err(error)?;
        Ok(old::types::Workflow {
            id: w.id,
            name: w.name,
            version: w.version,
            places: w.places,
            initial_place: w.initial_place,
            transitions: w.transitions.into_iter().map(transition).collect(),
        })
    }
}

impl old::transitions::Host for CallState {
    async fn request(
        &mut self,
        workflow_id: String,
        token_id: String,
        transition: String,
        input: String,
    ) -> Result<(), old::types::Error> {
        now::transitions::Host::request(self, workflow_id, token_id, transition, input)
            .await
            .map_err(error)
    }
}

impl old::log::Host for CallState {
    async fn log(&mut self, level: old::log::Level, message: String) {
        let level = match level {
            old::log::Level::Trace => now::log::Level::Trace,
            old::log::Level::Debug => now::log::Level::Debug,
            old::log::Level::Info => now::log::Level::Info,
            old::log::Level::Warn => now::log::Level::Warn,
            old::log::Level::Error => now::log::Level::Error,
        };
        now::log::Host::log(self, level, message).await
    }
}
